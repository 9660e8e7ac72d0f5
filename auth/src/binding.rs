//! The browser binding of a sign-in: what ties a handoff to the browser that asked for it.
//!
//! Before a route host sends a browser to the authenticate host, it sets a short-lived,
//! host-only cookie (`<cookie name>_csrf`, see
//! [`CookieOptions::set_binding_cookie`](crate::CookieOptions::set_binding_cookie)) holding a
//! fresh [`BrowserBinding`] nonce. Only the nonce's SHA-256, the [`BindingDigest`], travels: in
//! the signed sign-in URL, in the login-state cookie on the authenticate host ([`SignInFlow`]),
//! and in the [`Handoff`](crate::Handoff) back to the route host, whose callback accepts the
//! handoff only from a request that carries the nonce itself
//! ([`Handoff::is_bound_to`](crate::Handoff::is_bound_to)).
//!
//! - A handoff link minted for another browser (login CSRF: an attacker's own sign-in sent to
//!   a victim) lacks that browser's cookie, so it signs nobody in.
//! - A handoff link that leaks (history, logs, a `Referer`, a redirect to the wrong port)
//!   names only the digest; whoever holds the link cannot produce the nonce, so cannot redeem
//!   it either. This is why the URL carries the digest and not the nonce.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use crate::oidc::LoginState;
use crate::{b64url, b64url_decode, Cipher};

/// AEAD purpose of the login-state cookie in its current form, a [`SignInFlow`]. Differs
/// from [`LOGIN_STATE_PURPOSE`](crate::cookie::LOGIN_STATE_PURPOSE) (a bare [`LoginState`]),
/// so a cookie of the earlier form is no sign-in in progress.
pub const SIGN_IN_FLOW_PURPOSE: &[u8] = b"portcullis-login-state/2";

/// Random bytes in a binding nonce.
const NONCE_BYTES: usize = 16;
/// Length of a nonce as the cookie holds it (base64url of [`NONCE_BYTES`], unpadded).
const NONCE_LEN: usize = 22;
/// Length of a digest as text (base64url of 32 bytes, unpadded).
const DIGEST_LEN: usize = 43;

/// The secret nonce a route host keeps in the browser's binding cookie. Never put in a URL.
#[derive(Clone, PartialEq, Eq)]
pub struct BrowserBinding {
    nonce: String,
}

/// SHA-256 of a [`BrowserBinding`] nonce, base64url: what URLs, the login state and the
/// handoff carry instead of the nonce.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(transparent)]
pub struct BindingDigest(String);

/// What the login-state cookie on the authenticate host carries while the browser is at the
/// identity provider: the OIDC flow's own state, and where and how the sign-in returns.
/// Sealed with [`SignInFlow::seal`] (purpose [`SIGN_IN_FLOW_PURPOSE`]).
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
pub struct SignInFlow {
    /// The OIDC state (CSRF state, nonce, PKCE verifier), passed to the code exchange.
    pub login: LoginState,
    /// Where the signed-in browser, or the token, goes.
    pub returns: SignInReturn,
}

/// Where a finished sign-in goes, decided from the signed sign-in URL before the IdP visit.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "to", rename_all = "snake_case")]
pub enum SignInReturn {
    /// A page of the authenticate host itself, whose own session cookie is set directly.
    AuthenticateHost {
        /// The page to return to.
        redirect_uri: String,
    },
    /// A page of a route host, reached through a handoff to that host's callback.
    RouteHost {
        /// The page to return to.
        redirect_uri: String,
        /// The route host's authority (`host:port`) the handoff is for.
        authority: String,
        /// The digest of the binding cookie the route host set before the redirect; the
        /// handoff carries it.
        binding: BindingDigest,
    },
    /// A command-line client's loopback listener, which receives the sealed session as a
    /// token (`portcullis_token`) for the route host that asked for it.
    Programmatic {
        /// The loopback URL to send the token to.
        redirect_uri: String,
        /// The scope the token is sealed for (the route host's, see
        /// [`SessionCookie::scope`](crate::SessionCookie::scope)).
        scope: String,
    },
}

// === impl BrowserBinding ===

impl BrowserBinding {
    /// A fresh nonce of 16 random bytes.
    #[allow(clippy::new_without_default)] // A default nonce would be a misleading name for a random one.
    pub fn new() -> BrowserBinding {
        BrowserBinding {
            nonce: crate::random_token(NONCE_BYTES),
        }
    }

    /// The binding an existing cookie holds, when it has the shape of one this crate mints.
    /// Lets a route host keep the browser's current binding rather than replace it, so that
    /// two tabs signing in at once do not invalidate each other's handoff.
    pub fn from_cookie(value: &str) -> Option<BrowserBinding> {
        let well_formed = value.len() == NONCE_LEN
            && b64url_decode(value).is_some_and(|b| b.len() == NONCE_BYTES);
        well_formed.then(|| BrowserBinding {
            nonce: value.to_owned(),
        })
    }

    /// The value of the binding cookie.
    pub fn cookie_value(&self) -> &str {
        &self.nonce
    }

    /// The digest that stands for this binding in URLs and tokens.
    pub fn digest(&self) -> BindingDigest {
        BindingDigest(b64url(&Sha256::digest(self.nonce.as_bytes())))
    }
}

impl std::fmt::Debug for BrowserBinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BrowserBinding(..)")
    }
}

// === impl BindingDigest ===

impl BindingDigest {
    /// A digest as a URL parameter gives it; `None` unless it is base64url of 32 bytes.
    pub fn parse(text: &str) -> Option<BindingDigest> {
        let well_formed =
            text.len() == DIGEST_LEN && b64url_decode(text).is_some_and(|b| b.len() == 32);
        well_formed.then(|| BindingDigest(text.to_owned()))
    }

    /// The digest as text, for a URL parameter.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `cookie_value` is the nonce this is the digest of. The comparison takes the
    /// same time wherever the digests differ. An empty value never matches.
    pub fn matches(&self, cookie_value: &str) -> bool {
        if cookie_value.is_empty() {
            return false;
        }
        let presented = b64url(&Sha256::digest(cookie_value.as_bytes()));
        bool::from(presented.as_bytes().ct_eq(self.0.as_bytes()))
    }
}

// === impl SignInFlow ===

impl SignInFlow {
    /// Seals the flow for the login-state cookie.
    pub fn seal(&self, cipher: &Cipher) -> String {
        // A struct of strings and integers always serializes.
        cipher
            .seal_json(SIGN_IN_FLOW_PURPOSE, self)
            .unwrap_or_default()
    }

    /// Opens a login-state cookie; `None` if it does not open or is of an earlier form. Its
    /// age is checked by the code exchange, against [`LoginState::expires_at`].
    pub fn open(cipher: &Cipher, value: &str) -> Option<SignInFlow> {
        cipher.open_json(SIGN_IN_FLOW_PURPOSE, value)
    }
}

// === impl SignInReturn ===

impl SignInReturn {
    /// The URL the sign-in returns to.
    pub fn redirect_uri(&self) -> &str {
        match self {
            SignInReturn::AuthenticateHost { redirect_uri }
            | SignInReturn::RouteHost { redirect_uri, .. }
            | SignInReturn::Programmatic { redirect_uri, .. } => redirect_uri,
        }
    }
}

#[cfg(test)]
mod tests;
