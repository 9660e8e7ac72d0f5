//! The cross-host handoff: after the IdP callback on the authenticate host, the session is
//! carried to the route host's `/.portcullis/callback/` in a short-lived, encrypted,
//! single-use token.
//!
//! The token is sealed with purpose [`HANDOFF_PURPOSE`] and lives [`HANDOFF_TTL_SECS`]. Single
//! use is enforced by [`ReplayGuard`], which remembers each nonce for longer than a token can
//! live; the guard is per process, so with several proxy replicas a token could be replayed
//! once per replica within its minute — it still only ever yields the same user's session.

use std::time::Duration;

use moka::sync::Cache;
use serde::{Deserialize, Serialize};

use crate::Cipher;

/// AEAD purpose of handoff tokens.
pub const HANDOFF_PURPOSE: &[u8] = b"portcullis-handoff";
/// How long a handoff token is valid.
pub const HANDOFF_TTL_SECS: i64 = 60;

/// What a handoff token carries.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Handoff {
    /// The session to adopt on the route host.
    pub session_id: String,
    /// Where to send the browser once the cookie is set (validated again by the route host).
    pub redirect_uri: String,
    /// Unix seconds after which the token is refused.
    pub expires_at: i64,
    /// Random single-use nonce.
    pub nonce: String,
}

/// Remembers used handoff nonces so each token is accepted at most once.
pub struct ReplayGuard {
    used: Cache<String, ()>,
}

// === impl Handoff ===

impl Handoff {
    /// A handoff for `session_id` valid for [`HANDOFF_TTL_SECS`] from `now_unix`, with a fresh
    /// random nonce.
    pub fn new(
        session_id: impl Into<String>,
        redirect_uri: impl Into<String>,
        now_unix: i64,
    ) -> Handoff {
        Handoff {
            session_id: session_id.into(),
            redirect_uri: redirect_uri.into(),
            expires_at: now_unix.saturating_add(HANDOFF_TTL_SECS),
            nonce: crate::random_token(16),
        }
    }

    /// Seals the token.
    pub fn seal(&self, cipher: &Cipher) -> String {
        // A struct of strings and integers always serializes.
        cipher.seal_json(HANDOFF_PURPOSE, self).unwrap_or_default()
    }

    /// Opens a token; `None` if it does not open, has expired at `now_unix`, or claims a
    /// lifetime longer than [`HANDOFF_TTL_SECS`] (so the replay guard always outlives it).
    pub fn open(cipher: &Cipher, token: &str, now_unix: i64) -> Option<Handoff> {
        let h: Handoff = cipher.open_json(HANDOFF_PURPOSE, token)?;
        let fresh = now_unix < h.expires_at
            && h.expires_at <= now_unix.saturating_add(HANDOFF_TTL_SECS)
            && !h.nonce.is_empty()
            && !h.session_id.is_empty();
        fresh.then_some(h)
    }
}

// === impl ReplayGuard ===

impl ReplayGuard {
    /// A guard remembering nonces for twice [`HANDOFF_TTL_SECS`].
    pub fn new() -> ReplayGuard {
        ReplayGuard::with_ttl(Duration::from_secs(2 * HANDOFF_TTL_SECS.unsigned_abs()))
    }

    /// A guard remembering nonces for `ttl`, which must exceed the token lifetime. It has no
    /// size bound on purpose: evicting a live nonce would reopen it to replay, and only the
    /// authenticate service mints nonces.
    pub fn with_ttl(ttl: Duration) -> ReplayGuard {
        ReplayGuard {
            used: Cache::builder().time_to_live(ttl).build(),
        }
    }

    /// True the first time `nonce` is seen, false ever after (until it is forgotten, long after
    /// any token carrying it has expired). Atomic under concurrency.
    pub fn first_use(&self, nonce: &str) -> bool {
        // `or_insert_with` coalesces concurrent callers (one runs the closure and sees a fresh
        // entry); plain `or_insert` is a get and then an insert, which two callers can both win.
        self.used
            .entry_by_ref(nonce)
            .or_insert_with(|| ())
            .is_fresh()
    }
}

impl Default for ReplayGuard {
    fn default() -> Self {
        ReplayGuard::new()
    }
}

impl std::fmt::Debug for ReplayGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayGuard")
            .field("entries", &self.used.entry_count())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Secret;

    fn cipher() -> Cipher {
        Cipher::new(&Secret::from_bytes([3; 32]))
    }

    #[test]
    fn round_trip_and_expiry() {
        let c = cipher();
        let h = Handoff::new("sid", "https://app.example/x", 1_000);
        assert_eq!(h.expires_at, 1_060);
        let t = h.seal(&c);
        assert_eq!(Handoff::open(&c, &t, 1_000), Some(h.clone()));
        assert_eq!(Handoff::open(&c, &t, 1_059), Some(h));
        assert_eq!(Handoff::open(&c, &t, 1_060), None);
    }

    #[test]
    fn overlong_lifetime_refused() {
        let c = cipher();
        let mut h = Handoff::new("sid", "/", 1_000);
        h.expires_at = 1_000 + HANDOFF_TTL_SECS + 1;
        assert_eq!(Handoff::open(&c, &h.seal(&c), 1_000), None);
    }

    #[test]
    fn tampering_and_other_purposes_fail() {
        let c = cipher();
        let h = Handoff::new("sid", "/", 1_000);
        let t = h.seal(&c);
        let raw = crate::b64url_decode(&t).unwrap();
        for i in 0..raw.len() {
            let mut m = raw.clone();
            m[i] ^= 0x10;
            assert_eq!(Handoff::open(&c, &crate::b64url(&m), 1_000), None);
        }
        for n in 0..t.len() {
            assert_eq!(Handoff::open(&c, &t[..n], 1_000), None);
        }
        let json = serde_json::to_vec(&h).unwrap();
        let as_session = c.seal(crate::cookie::SESSION_PURPOSE, &json);
        assert_eq!(Handoff::open(&c, &as_session, 1_000), None);
        let as_state = c.seal(crate::cookie::LOGIN_STATE_PURPOSE, &json);
        assert_eq!(Handoff::open(&c, &as_state, 1_000), None);
        let other_key = Cipher::new(&Secret::from_bytes([4; 32]));
        assert_eq!(Handoff::open(&other_key, &t, 1_000), None);
    }

    #[test]
    fn nonces_are_unique() {
        assert_ne!(
            Handoff::new("s", "/", 0).nonce,
            Handoff::new("s", "/", 0).nonce
        );
    }

    #[test]
    fn replay_guard_allows_once() {
        let g = ReplayGuard::new();
        assert!(g.first_use("n1"));
        assert!(!g.first_use("n1"));
        assert!(!g.first_use("n1"));
        assert!(g.first_use("n2"));
    }

    #[test]
    fn replay_guard_is_atomic_under_contention() {
        let g = std::sync::Arc::new(ReplayGuard::new());
        let wins: usize = (0..8)
            .map(|_| {
                let g = g.clone();
                std::thread::spawn(move || g.first_use("race") as usize)
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .sum();
        assert_eq!(wins, 1);
    }
}
