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
//!
//! The nonces are kept in one set per second of token time, and a second's set is dropped as a
//! whole once its tokens are stale: exact (no nonce is forgotten while its token is fresh, none
//! kept longer) and small: 35 bytes a nonce, where a general cache (moka) took 370.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The HKDF `info` under which the token key is derived from `shared_secret`.
pub const TOKEN_KEY_INFO: &str = "portcullis-databroker-grpc";
/// How far (seconds) a token's time may be from the verifier's clock.
pub const TOKEN_LIFETIME_SECS: i64 = 60;
/// How many nonces a verifier remembers at most (about 35 MiB): full only after more than
/// 17,000 calls a second for a whole token lifetime.
pub const REPLAY_CACHE_MAX: usize = 1 << 20;

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
    seen: Mutex<Seen>,
    max: usize,
}

/// The nonces of accepted tokens that are still fresh.
#[derive(Default)]
struct Seen {
    /// By the token's time (Unix seconds).
    by_time: BTreeMap<i64, HashSet<[u8; NONCE_LEN]>>,
    len: usize,
}

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

    /// A verifier that remembers at most `max` nonces.
    pub fn with_capacity(key: TokenKey, max: usize) -> Self {
        Self {
            key,
            seen: Mutex::new(Seen::default()),
            max,
        }
    }

    /// Accepts `token` for a call of `method` at `now_unix`, once.
    pub fn verify(&self, token: &str, method: &str, now_unix: i64) -> Result<(), TokenError> {
        let (time, nonce) = self.key.open(token, method, now_unix)?;
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.forget_stale(now_unix);
        if seen.by_time.get(&time).is_some_and(|s| s.contains(&nonce)) {
            return Err(TokenError::Replayed);
        }
        if seen.len >= self.max {
            return Err(TokenError::Busy);
        }
        seen.by_time.entry(time).or_default().insert(nonce);
        seen.len += 1;
        Ok(())
    }

    /// How many nonces are remembered.
    pub fn remembered(&self) -> usize {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).len
    }
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("remembered", &self.remembered())
            .finish_non_exhaustive()
    }
}

// === impl Seen ===

impl Seen {
    /// Drops the nonces of tokens no longer fresh at `now_unix` (their time is more than
    /// [`TOKEN_LIFETIME_SECS`] ago, so `open` refuses them before they are looked up here).
    fn forget_stale(&mut self, now_unix: i64) {
        let oldest_fresh = now_unix - TOKEN_LIFETIME_SECS;
        while let Some(entry) = self.by_time.first_entry() {
            if *entry.key() >= oldest_fresh {
                break;
            }
            self.len -= entry.remove().len();
        }
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
        assert_eq!(
            v.verify(&key.issue(PUT, 1_000), PUT, 1_000),
            Err(TokenError::Busy)
        );
        // Every remembered nonce is still refused as such.
        for t in &tokens {
            assert_eq!(v.verify(t, PUT, 1_000), Err(TokenError::Replayed));
        }
        assert_eq!(v.remembered(), 3);
    }

    #[test]
    fn nonces_are_forgotten_once_their_tokens_are_stale_and_not_before() {
        let key = TokenKey::new([1; 32]);
        let v = TokenVerifier::with_capacity(key.clone(), 3);
        let early = key.issue(PUT, 1_000);
        assert_eq!(v.verify(&early, PUT, 1_000), Ok(()));
        for _ in 0..2 {
            assert_eq!(v.verify(&key.issue(PUT, 1_030), PUT, 1_030), Ok(()));
        }
        // At 1060 the early token is fresh, so its nonce is kept: full, and a replay.
        assert_eq!(
            v.verify(&key.issue(PUT, 1_060), PUT, 1_060),
            Err(TokenError::Busy)
        );
        assert_eq!(v.verify(&early, PUT, 1_060), Err(TokenError::Replayed));
        // At 1061 it is stale: its nonce goes, and a new call fits.
        assert_eq!(v.verify(&key.issue(PUT, 1_061), PUT, 1_061), Ok(()));
        assert_eq!(v.remembered(), 3);
        assert_eq!(v.verify(&early, PUT, 1_061), Err(TokenError::Stale));
        // A token from a clock ahead is kept until it is stale on this one.
        let ahead = key.issue(PUT, 1_100);
        assert_eq!(v.verify(&ahead, PUT, 1_091), Ok(()));
        assert_eq!(v.remembered(), 2, "the 1030 nonces are gone");
        assert_eq!(v.verify(&ahead, PUT, 1_160), Err(TokenError::Replayed));
        assert_eq!(v.remembered(), 1, "only the one ahead is left");
        assert_eq!(v.verify(&ahead, PUT, 1_161), Err(TokenError::Stale));
    }
}
