//! The short-lived bearer tokens every databroker call carries.
//!
//! A token is `v1.<unix seconds>.<base64url HMAC-SHA256("v1.<unix seconds>")>` under a key
//! derived from `shared_secret` (HKDF-SHA256, info [`TOKEN_KEY_INFO`]). It is accepted for
//! [`TOKEN_LIFETIME_SECS`] either side of its time, which allows for clock skew between
//! machines; clients make a fresh one for every call.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The HKDF `info` under which the token key is derived from `shared_secret`.
pub const TOKEN_KEY_INFO: &str = "portcullis-databroker-grpc";
/// How far (seconds) a token's time may be from the verifier's clock.
pub const TOKEN_LIFETIME_SECS: i64 = 60;

const VERSION: &str = "v1";

/// Issues and verifies tokens.
#[derive(Clone)]
pub struct TokenKey {
    key: [u8; 32],
}

// === impl TokenKey ===

impl TokenKey {
    pub fn new(key: [u8; 32]) -> Self {
        Self { key }
    }

    /// A token for `now_unix` (seconds).
    pub fn issue(&self, now_unix: i64) -> String {
        let payload = format!("{VERSION}.{now_unix}");
        let tag = self.mac(&payload).finalize().into_bytes();
        format!("{payload}.{}", URL_SAFE_NO_PAD.encode(tag))
    }

    /// Whether `token` is genuine and fresh at `now_unix`; the tag is compared in constant time.
    pub fn verify(&self, token: &str, now_unix: i64) -> bool {
        let Some((payload, tag)) = token.rsplit_once('.') else {
            return false;
        };
        let Some((version, time)) = payload.split_once('.') else {
            return false;
        };
        if version != VERSION {
            return false;
        }
        let Ok(time) = time.parse::<i64>() else {
            return false;
        };
        if now_unix.abs_diff(time) > TOKEN_LIFETIME_SECS as u64 {
            return false;
        }
        let Ok(tag) = URL_SAFE_NO_PAD.decode(tag) else {
            return false;
        };
        self.mac(payload).verify_slice(&tag).is_ok()
    }

    fn mac(&self, payload: &str) -> Hmac<Sha256> {
        // HMAC takes keys of any length, so this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(payload.as_bytes());
        mac
    }
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

pub(crate) fn now_unix() -> i64 {
    crate::now_millis() / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_tokens_verify_and_stale_or_forged_ones_do_not() {
        let key = TokenKey::new([1; 32]);
        let t = key.issue(1_000);
        assert!(key.verify(&t, 1_000));
        assert!(key.verify(&t, 1_060));
        assert!(key.verify(&t, 940), "allows for clock skew");
        assert!(!key.verify(&t, 1_061), "expired");
        assert!(!TokenKey::new([2; 32]).verify(&t, 1_000), "other key");
        let forged = t.replace("v1.1000.", "v1.1030.");
        assert!(!key.verify(&forged, 1_000));
        for junk in ["", "v1", "v1.x.y", "v2.1000.AAAA", "v1.1000.!!!"] {
            assert!(!key.verify(junk, 1_000), "{junk:?}");
        }
    }
}
