//! The bearer tokens every databroker call carries: bound to one method, usable once.
//!
//! A token is `v2.<unix seconds>.<nonce>.<tag>`: the nonce is 16 random bytes and the tag an
//! HMAC-SHA256 (both base64url) of `v2.<unix seconds>.<nonce>`, a zero byte and the gRPC
//! method path it is for (`/portcullis.databroker.v1.Databroker/Put`), under a key derived
//! from `shared_secret` (HKDF-SHA256, info [`TOKEN_KEY_INFO`]). Clients make a fresh one for
//! every call.
//!
//! A [`TokenVerifier`] accepts a token only for the method it was made for, when its time is
//! within [`TOKEN_LIFETIME_SECS`] of the verifier's clock (either side: clock skew between
//! machines), and only once: it remembers every nonce it accepted until the token could no
//! longer be fresh. So a token seen on the wire (or in a log) can neither be replayed nor
//! turned into a write. The memory of nonces is bounded ([`REPLAY_CACHE_MAX`]); when it is full
//! of nonces still fresh, calls are refused ([`TokenError::Busy`]) rather than remembered less.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The HKDF `info` under which the token key is derived from `shared_secret`.
pub const TOKEN_KEY_INFO: &str = "portcullis-databroker-grpc";
/// How far (seconds) a token's time may be from the verifier's clock.
pub const TOKEN_LIFETIME_SECS: i64 = 60;
/// How many nonces a verifier remembers at most: at about 150 bytes each, some 150 MiB when
/// full, which takes more than 16,000 calls a second for a whole token lifetime.
pub const REPLAY_CACHE_MAX: u64 = 1 << 20;

const VERSION: &str = "v2";
const NONCE_LEN: usize = 16;
const TAG_LEN: usize = 32;

/// Issues tokens (and checks their tags; [`TokenVerifier`] adds the replay check).
#[derive(Clone)]
pub struct TokenKey {
    key: [u8; 32],
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenError {
    /// Not a token of this format.
    Malformed,
    /// Its time is too far from the verifier's clock.
    Stale,
    /// The tag does not match: another key, another method, or an edited token.
    BadTag,
    /// Its nonce was accepted before.
    Replayed,
    /// The replay cache is full of fresh nonces; the call may be retried later.
    Busy,
}

/// Checks tokens for one method each and remembers their nonces.
pub struct TokenVerifier {
    key: TokenKey,
    /// Accepted nonces, each kept until its token is stale (the value: how long that is).
    seen: moka::sync::Cache<[u8; NONCE_LEN], Duration>,
    max: u64,
}

/// Each remembered nonce expires when its token stops being fresh.
struct UntilStale;

// === impl TokenKey ===

impl TokenKey {
    pub fn new(key: [u8; 32]) -> Self {
        Self { key }
    }

    /// A token for a call of `method` (the gRPC path) at `now_unix` (seconds).
    pub fn issue(&self, method: &str, now_unix: i64) -> String {
        let nonce: [u8; NONCE_LEN] = rand::random();
        self.issue_with_nonce(method, now_unix, nonce)
    }

    fn issue_with_nonce(&self, method: &str, now_unix: i64, nonce: [u8; NONCE_LEN]) -> String {
        let payload = format!("{VERSION}.{now_unix}.{}", URL_SAFE_NO_PAD.encode(nonce));
        let tag = self.mac(&payload, method).finalize().into_bytes();
        format!("{payload}.{}", URL_SAFE_NO_PAD.encode(tag))
    }

    /// The token's time and nonce when it is genuine for `method` and fresh at `now_unix`. The
    /// tag is compared in constant time. Says nothing about replays.
    fn open(
        &self,
        token: &str,
        method: &str,
        now_unix: i64,
    ) -> Result<(i64, [u8; NONCE_LEN]), TokenError> {
        let (payload, tag) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let mut parts = payload.split('.');
        let (Some(VERSION), Some(time), Some(nonce), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let time = time.parse::<i64>().map_err(|_| TokenError::Malformed)?;
        let nonce: [u8; NONCE_LEN] = URL_SAFE_NO_PAD
            .decode(nonce)
            .ok()
            .and_then(|n| n.try_into().ok())
            .ok_or(TokenError::Malformed)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .ok()
            .filter(|t| t.len() == TAG_LEN)
            .ok_or(TokenError::Malformed)?;
        if now_unix.abs_diff(time) > TOKEN_LIFETIME_SECS.unsigned_abs() {
            return Err(TokenError::Stale);
        }
        self.mac(payload, method)
            .verify_slice(&tag)
            .map_err(|_| TokenError::BadTag)?;
        Ok((time, nonce))
    }

    fn mac(&self, payload: &str, method: &str) -> Hmac<Sha256> {
        // HMAC takes keys of any length, so this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(payload.as_bytes());
        // The payload holds no zero byte, so the method cannot be shifted into it.
        mac.update(&[0]);
        mac.update(method.as_bytes());
        mac
    }
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

// === impl TokenVerifier ===

impl TokenVerifier {
    pub fn new(key: TokenKey) -> Self {
        Self::with_capacity(key, REPLAY_CACHE_MAX)
    }

    /// A verifier that remembers at most about `max` nonces.
    pub fn with_capacity(key: TokenKey, max: u64) -> Self {
        // No moka `max_capacity`: evicting a fresh nonce would let its token be replayed, so
        // the bound is kept by refusing calls instead (see `verify`).
        let seen = moka::sync::Cache::builder()
            .expire_after(UntilStale)
            .build();
        Self { key, seen, max }
    }

    /// Accepts `token` for a call of `method` at `now_unix`, once.
    pub fn verify(&self, token: &str, method: &str, now_unix: i64) -> Result<(), TokenError> {
        let (time, nonce) = self.key.open(token, method, now_unix)?;
        if self.seen.entry_count() >= self.max {
            self.seen.run_pending_tasks();
            if self.seen.entry_count() >= self.max {
                return Err(TokenError::Busy);
            }
        }
        // Fresh until `time + TOKEN_LIFETIME_SECS` on this clock; one second more for the
        // rounding of `now_unix`.
        let left =
            (time + TOKEN_LIFETIME_SECS + 1 - now_unix).clamp(1, 2 * TOKEN_LIFETIME_SECS + 1);
        let entry = self
            .seen
            .entry(nonce)
            .or_insert(Duration::from_secs(left.unsigned_abs()));
        if entry.is_fresh() {
            Ok(())
        } else {
            Err(TokenError::Replayed)
        }
    }
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("remembered", &self.seen.entry_count())
            .finish_non_exhaustive()
    }
}

// === impl UntilStale ===

impl moka::Expiry<[u8; NONCE_LEN], Duration> for UntilStale {
    fn expire_after_create(
        &self,
        _nonce: &[u8; NONCE_LEN],
        left: &Duration,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(*left)
    }
}

// === impl TokenError ===

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TokenError::Malformed => "malformed token",
            TokenError::Stale => "token outside its time window",
            TokenError::BadTag => "token not valid for this method",
            TokenError::Replayed => "token already used",
            TokenError::Busy => "too many recent calls to check for replays",
        })
    }
}

impl std::error::Error for TokenError {}

pub(crate) fn now_unix() -> i64 {
    crate::now_millis() / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    const PUT: &str = "/portcullis.databroker.v1.Databroker/Put";
    const GET: &str = "/portcullis.databroker.v1.Databroker/Get";

    fn verifier() -> TokenVerifier {
        TokenVerifier::new(TokenKey::new([1; 32]))
    }

    #[test]
    fn a_fresh_token_verifies_for_its_method_within_the_clock_skew() {
        let key = TokenKey::new([1; 32]);
        for now in [1_000, 1_060, 940] {
            let t = key.issue(PUT, 1_000);
            assert_eq!(verifier().verify(&t, PUT, now), Ok(()), "at {now}");
        }
    }

    #[test]
    fn a_token_for_one_method_is_refused_for_another() {
        let t = TokenKey::new([1; 32]).issue(GET, 1_000);
        let v = verifier();
        assert_eq!(v.verify(&t, PUT, 1_000), Err(TokenError::BadTag));
        // The refusal did not use the token up for its own method.
        assert_eq!(v.verify(&t, GET, 1_000), Ok(()));
    }

    #[test]
    fn a_token_is_usable_once() {
        let t = TokenKey::new([1; 32]).issue(PUT, 1_000);
        let v = verifier();
        assert_eq!(v.verify(&t, PUT, 1_000), Ok(()));
        assert_eq!(v.verify(&t, PUT, 1_000), Err(TokenError::Replayed));
        assert_eq!(v.verify(&t, PUT, 1_059), Err(TokenError::Replayed));
        // Each call's token has its own nonce.
        let again = TokenKey::new([1; 32]).issue(PUT, 1_000);
        assert_ne!(again, t);
        assert_eq!(v.verify(&again, PUT, 1_000), Ok(()));
    }

    #[test]
    fn stale_tokens_are_refused() {
        let t = TokenKey::new([1; 32]).issue(PUT, 1_000);
        let v = verifier();
        assert_eq!(v.verify(&t, PUT, 1_061), Err(TokenError::Stale));
        assert_eq!(v.verify(&t, PUT, 939), Err(TokenError::Stale));
        let old = TokenKey::new([1; 32]).issue(PUT, 0);
        assert_eq!(v.verify(&old, PUT, 1_000), Err(TokenError::Stale));
    }

    #[test]
    fn forged_tokens_are_refused() {
        let key = TokenKey::new([1; 32]);
        let v = verifier();
        let t = key.issue_with_nonce(PUT, 1_000, [7; NONCE_LEN]);
        let other_key = TokenKey::new([2; 32]).issue(PUT, 1_000);
        assert_eq!(v.verify(&other_key, PUT, 1_000), Err(TokenError::BadTag));
        let later = t.replace("v2.1000.", "v2.1030.");
        assert_eq!(v.verify(&later, PUT, 1_000), Err(TokenError::BadTag));
        let (payload, tag) = t.rsplit_once('.').unwrap();
        let other_nonce = payload.replace(
            &URL_SAFE_NO_PAD.encode([7; NONCE_LEN]),
            &URL_SAFE_NO_PAD.encode([8; NONCE_LEN]),
        );
        assert_eq!(
            v.verify(&format!("{other_nonce}.{tag}"), PUT, 1_000),
            Err(TokenError::BadTag)
        );
        let mut flipped = URL_SAFE_NO_PAD.decode(tag).unwrap();
        flipped[0] ^= 1;
        let flipped = format!("{payload}.{}", URL_SAFE_NO_PAD.encode(flipped));
        assert_eq!(v.verify(&flipped, PUT, 1_000), Err(TokenError::BadTag));
        // The version-1 tokens (any method, reusable) are no longer accepted.
        let v1 = t.replacen("v2.", "v1.", 1);
        assert_eq!(v.verify(&v1, PUT, 1_000), Err(TokenError::Malformed));
        for junk in [
            "",
            "v2",
            "v2.x.y.z",
            "v2.1000.AAAA.AAAA",
            "v2.1000..",
            "v2.1000.!!.!!",
        ] {
            assert_eq!(
                v.verify(junk, PUT, 1_000),
                Err(TokenError::Malformed),
                "{junk:?}"
            );
        }
        // The genuine one still works: refusals remember nothing.
        assert_eq!(v.verify(&t, PUT, 1_000), Ok(()));
    }

    #[test]
    fn a_full_replay_cache_refuses_rather_than_forgets() {
        let key = TokenKey::new([1; 32]);
        let v = TokenVerifier::with_capacity(key.clone(), 3);
        let tokens: Vec<String> = (0..3).map(|_| key.issue(PUT, 1_000)).collect();
        for t in &tokens {
            assert_eq!(v.verify(t, PUT, 1_000), Ok(()));
        }
        v.seen.run_pending_tasks();
        assert_eq!(
            v.verify(&key.issue(PUT, 1_000), PUT, 1_000),
            Err(TokenError::Busy)
        );
        // Every remembered nonce is still refused.
        for t in &tokens {
            assert_eq!(v.verify(t, PUT, 1_000), Err(TokenError::Busy));
        }
    }
}
