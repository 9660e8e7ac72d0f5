//! The cross-host handoff: after the IdP callback on the authenticate host, the session is
//! carried to the route host's `/.portcullis/callback/` in a short-lived, encrypted,
//! single-use token.
//!
//! The token is sealed with purpose [`HANDOFF_PURPOSE`] and lives [`HANDOFF_TTL_SECS`]. Single
//! use is enforced by [`ReplayGuard`], which remembers each nonce for longer than a token can
//! live; the guard is per process, so with several proxy replicas a token could be replayed
//! once per replica within its minute — it still only ever yields the same user's session, and
//! only to the browser it is bound to.
//!
//! A token names the one route host authority (`host:port`) it may be redeemed on, and the
//! [`BindingDigest`] of the browser that started the sign-in (see [`crate::binding`]): the
//! route host's callback accepts it only from a request that carries that browser's binding
//! cookie. [`Handoff::redeem`] makes every check in order; a token of the first form (without
//! authority or binding) was sealed with `portcullis-handoff` and no longer opens.

use std::time::Duration;

use moka::sync::Cache;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq as _;

use crate::{BindingDigest, Cipher};

/// AEAD purpose of handoff tokens, version 2 (bound to an authority and a browser).
pub const HANDOFF_PURPOSE: &[u8] = b"portcullis-handoff/2";
/// How long a handoff token is valid.
pub const HANDOFF_TTL_SECS: i64 = 60;

/// What a handoff token carries.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Handoff {
    /// The session to adopt on the route host.
    pub session_id: String,
    /// Where to send the browser once the cookie is set (validated again by the route host).
    pub redirect_uri: String,
    /// The route host authority (`host:port`, normalized by the caller) the token may be
    /// redeemed on.
    pub authority: String,
    /// The digest of the binding cookie of the browser the token is for.
    pub binding: BindingDigest,
    /// Unix seconds after which the token is refused.
    pub expires_at: i64,
    /// Random single-use nonce.
    pub nonce: String,
}

/// Why a route host's callback refuses a handoff token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandoffRefusal {
    /// It does not open, has expired, or is of an earlier form.
    #[error("invalid or expired handoff token")]
    Invalid,
    /// It was minted for another authority.
    #[error("handoff token presented on the wrong host")]
    WrongHost,
    /// The request lacks the binding cookie of the browser it was minted for.
    #[error("handoff token presented by another browser")]
    OtherBrowser,
    /// It was used before.
    #[error("handoff token replayed")]
    Replayed,
}

/// Remembers used handoff nonces so each token is accepted at most once.
pub struct ReplayGuard {
    used: Cache<String, ()>,
}

// === impl Handoff ===

impl Handoff {
    /// A handoff for `session_id` to the route host `authority` and the browser whose binding
    /// has digest `binding`, valid for [`HANDOFF_TTL_SECS`] from `now_unix`, with a fresh
    /// random nonce.
    pub fn new(
        session_id: impl Into<String>,
        redirect_uri: impl Into<String>,
        authority: impl Into<String>,
        binding: BindingDigest,
        now_unix: i64,
    ) -> Handoff {
        Handoff {
            session_id: session_id.into(),
            redirect_uri: redirect_uri.into(),
            authority: authority.into(),
            binding,
            expires_at: now_unix.saturating_add(HANDOFF_TTL_SECS),
            nonce: crate::random_token(16),
        }
    }

    /// Everything a route host's callback checks, in order: the token opens and is fresh at
    /// `now_unix`, names this `authority`, the request's binding cookie (`binding_cookie`)
    /// is the one it is bound to, and it was not used before. The replay guard is asked last,
    /// so that a copied link tried by another browser does not use up the token of the
    /// browser it was meant for.
    pub fn redeem(
        cipher: &Cipher,
        token: &str,
        now_unix: i64,
        authority: &str,
        binding_cookie: Option<&str>,
        replay: &ReplayGuard,
    ) -> Result<Handoff, HandoffRefusal> {
        let h: Handoff = Handoff::unseal(cipher, token, now_unix).ok_or(HandoffRefusal::Invalid)?;
        if !h.is_for(authority) {
            return Err(HandoffRefusal::WrongHost);
        }
        if !binding_cookie.is_some_and(|c| h.is_bound_to(c)) {
            return Err(HandoffRefusal::OtherBrowser);
        }
        if !replay.first_use(&h.nonce) {
            return Err(HandoffRefusal::Replayed);
        }
        Ok(h)
    }

    /// Seals the token.
    pub fn seal(&self, cipher: &Cipher) -> String {
        // A struct of strings and integers always serializes.
        cipher.seal_json(HANDOFF_PURPOSE, self).unwrap_or_default()
    }

    /// Opens a token presented on `authority`; `None` if it does not open, was minted for
    /// another authority, has expired at `now_unix`, or claims a lifetime longer than
    /// [`HANDOFF_TTL_SECS`] (so the replay guard always outlives it). The browser binding
    /// ([`Handoff::is_bound_to`]) and single use ([`ReplayGuard`]) remain to be checked;
    /// [`Handoff::redeem`] checks all.
    pub fn open(cipher: &Cipher, token: &str, now_unix: i64, authority: &str) -> Option<Handoff> {
        Handoff::unseal(cipher, token, now_unix).filter(|h| h.is_for(authority))
    }

    fn unseal(cipher: &Cipher, token: &str, now_unix: i64) -> Option<Handoff> {
        let h: Handoff = cipher.open_json(HANDOFF_PURPOSE, token)?;
        let fresh = now_unix < h.expires_at
            && h.expires_at <= now_unix.saturating_add(HANDOFF_TTL_SECS)
            && !h.nonce.is_empty()
            && !h.session_id.is_empty();
        fresh.then_some(h)
    }

    /// Whether the token names `authority` (constant time; never an empty one).
    fn is_for(&self, authority: &str) -> bool {
        !authority.is_empty() && bool::from(self.authority.as_bytes().ct_eq(authority.as_bytes()))
    }

    /// Whether `binding_cookie`, the value of the request's binding cookie, is the nonce of
    /// the browser this token was minted for (SHA-256, compared in constant time; an empty
    /// value never is).
    #[must_use]
    pub fn is_bound_to(&self, binding_cookie: &str) -> bool {
        self.binding.matches(binding_cookie)
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
    use crate::{BrowserBinding, Secret};

    const HOST: &str = "app.example:443";

    fn cipher() -> Cipher {
        Cipher::new(&Secret::from_bytes([3; 32]))
    }

    fn handoff(binding: &BrowserBinding, now: i64) -> Handoff {
        Handoff::new("sid", "https://app.example/x", HOST, binding.digest(), now)
    }

    #[test]
    fn round_trip_and_expiry() {
        let c = cipher();
        let h = handoff(&BrowserBinding::new(), 1_000);
        assert_eq!(h.expires_at, 1_060);
        let t = h.seal(&c);
        assert_eq!(Handoff::open(&c, &t, 1_000, HOST), Some(h.clone()));
        assert_eq!(Handoff::open(&c, &t, 1_059, HOST), Some(h));
        assert_eq!(Handoff::open(&c, &t, 1_060, HOST), None);
    }

    #[test]
    fn opens_only_on_the_authority_it_names() {
        let c = cipher();
        let t = handoff(&BrowserBinding::new(), 1_000).seal(&c);
        assert!(Handoff::open(&c, &t, 1_000, HOST).is_some());
        for other in [
            "app.example:1",
            "app.example:4430",
            "app.example",
            "APP.example:443",
            "app.example:443 ",
            "app.example.:443",
            "admin.example:443",
            "",
        ] {
            assert_eq!(Handoff::open(&c, &t, 1_000, other), None, "{other:?}");
        }
    }

    #[test]
    fn bound_to_the_browser_nonce_only() {
        let mine = BrowserBinding::new();
        let h = handoff(&mine, 1_000);
        assert!(h.is_bound_to(mine.cookie_value()));
        assert!(!h.is_bound_to(BrowserBinding::new().cookie_value()));
        assert!(!h.is_bound_to(""));
        // The digest is not the nonce: a request that shows the digest it read in the URL
        // as its cookie is not the bound browser.
        assert!(!h.is_bound_to(h.binding.as_str()));
        let mut longer = mine.cookie_value().to_owned();
        longer.push('A');
        assert!(!h.is_bound_to(&longer));
        assert!(!h.is_bound_to(&mine.cookie_value()[1..]));
    }

    #[test]
    fn the_binding_survives_sealing_and_cannot_be_swapped() {
        let c = cipher();
        let mine = BrowserBinding::new();
        let t = handoff(&mine, 1_000).seal(&c);
        let opened = Handoff::open(&c, &t, 1_000, HOST).expect("opens");
        assert!(opened.is_bound_to(mine.cookie_value()));
        assert!(!opened.is_bound_to(BrowserBinding::new().cookie_value()));
    }

    #[test]
    fn redeem_checks_host_browser_and_single_use_in_that_order() {
        let c = cipher();
        let g = ReplayGuard::new();
        let mine = BrowserBinding::new();
        let t = handoff(&mine, 1_000).seal(&c);
        let redeem = |authority: &str, cookie: Option<&str>| {
            Handoff::redeem(&c, &t, 1_000, authority, cookie, &g)
        };
        assert_eq!(
            Handoff::redeem(&c, "garbage", 1_000, HOST, Some(mine.cookie_value()), &g),
            Err(HandoffRefusal::Invalid)
        );
        assert_eq!(
            redeem("admin.example:443", Some(mine.cookie_value())),
            Err(HandoffRefusal::WrongHost)
        );
        assert_eq!(redeem(HOST, None), Err(HandoffRefusal::OtherBrowser));
        assert_eq!(
            redeem(HOST, Some(BrowserBinding::new().cookie_value())),
            Err(HandoffRefusal::OtherBrowser)
        );
        // The refusals above did not use the token up: the bound browser still can, once.
        let h = redeem(HOST, Some(mine.cookie_value())).expect("redeemed");
        assert_eq!(h.session_id, "sid");
        assert_eq!(
            redeem(HOST, Some(mine.cookie_value())),
            Err(HandoffRefusal::Replayed)
        );
    }

    #[test]
    fn overlong_lifetime_refused() {
        let c = cipher();
        let mut h = handoff(&BrowserBinding::new(), 1_000);
        h.expires_at = 1_000 + HANDOFF_TTL_SECS + 1;
        assert_eq!(Handoff::open(&c, &h.seal(&c), 1_000, HOST), None);
    }

    #[test]
    fn tampering_and_other_purposes_fail() {
        let c = cipher();
        let h = handoff(&BrowserBinding::new(), 1_000);
        let t = h.seal(&c);
        let raw = crate::b64url_decode(&t).unwrap();
        for i in 0..raw.len() {
            let mut m = raw.clone();
            m[i] ^= 0x10;
            assert_eq!(Handoff::open(&c, &crate::b64url(&m), 1_000, HOST), None);
        }
        for n in 0..t.len() {
            assert_eq!(Handoff::open(&c, &t[..n], 1_000, HOST), None);
        }
        let json = serde_json::to_vec(&h).unwrap();
        for purpose in [
            crate::cookie::SESSION_PURPOSE,
            crate::cookie::LOGIN_STATE_PURPOSE,
            crate::binding::SIGN_IN_FLOW_PURPOSE,
        ] {
            assert_eq!(
                Handoff::open(&c, &c.seal(purpose, &json), 1_000, HOST),
                None
            );
        }
        assert!(Handoff::open(&c, &c.seal(HANDOFF_PURPOSE, &json), 1_000, HOST).is_some());
        let other_key = Cipher::new(&Secret::from_bytes([4; 32]));
        assert_eq!(Handoff::open(&other_key, &t, 1_000, HOST), None);
    }

    #[test]
    fn tokens_of_the_first_form_do_not_open() {
        let c = cipher();
        // The first form: no authority, no binding, sealed with the first purpose.
        let first = serde_json::json!({
            "session_id": "sid",
            "redirect_uri": "https://app.example/x",
            "expires_at": 1_060,
            "nonce": "n",
        });
        let json = serde_json::to_vec(&first).unwrap();
        for purpose in [b"portcullis-handoff".as_slice(), HANDOFF_PURPOSE] {
            assert_eq!(
                Handoff::open(&c, &c.seal(purpose, &json), 1_000, HOST),
                None
            );
        }
        // The current form under the first purpose does not open either.
        let current = serde_json::to_vec(&handoff(&BrowserBinding::new(), 1_000)).unwrap();
        let t = c.seal(b"portcullis-handoff", &current);
        assert_eq!(Handoff::open(&c, &t, 1_000, HOST), None);
    }

    #[test]
    fn nonces_are_unique() {
        let b = BrowserBinding::new();
        assert_ne!(handoff(&b, 0).nonce, handoff(&b, 0).nonce);
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
