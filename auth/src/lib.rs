//! Portcullis authentication: everything the proxy needs to know *who* is asking.
//!
//! This crate is sans-IO except for [`oidc`], which speaks to the identity provider. It holds:
//!
//! - [`secret`]: the 32-byte keys from the configuration and HKDF sub-key derivation;
//! - [`cipher`]: AES-256-GCM sealing of cookies and tokens, bound to a purpose string;
//! - [`cookie`]: the session cookie payload, `Set-Cookie` rendering and `Cookie:` parsing;
//! - [`signed_url`]: HMAC-signed URLs between the proxy and the authenticate service;
//! - [`redirect`]: the open-redirect defence for every `redirect_uri` the proxy follows;
//! - [`jwt`]: the ES256 identity assertion sent upstream, its JWKS, and a cache so that no
//!   request pays for asymmetric crypto;
//! - [`session`]: the session record kept by the databroker;
//! - [`handoff`]: the single-use token that carries a session from the authenticate host to a
//!   route host;
//! - [`binding`]: what binds a sign-in to the browser that started it, and the login-state
//!   cookie's [`SignInFlow`];
//! - [`oidc`]: the OpenID Connect authorization-code flow (PKCE, nonce, RFC 9207 `iss`).
//!
//! A typical sign-in: the route host sets a [`BrowserBinding`] cookie and redirects to a
//! [`UrlSigner`]-signed sign-in URL that carries the binding's [`BindingDigest`]; the
//! authenticate host checks it, calls [`OidcProvider::authorize_url`] and seals the
//! [`LoginState`] with where to return in a [`SignInFlow`] cookie; on the IdP callback it opens
//! that cookie and calls [`OidcProvider::exchange`], stores the [`Session`], and redirects to
//! the route host with a sealed [`Handoff`] bound to that host and that browser; the route host
//! redeems it once ([`Handoff::redeem`], [`ReplayGuard`]) and sets its own [`SessionCookie`],
//! scoped to itself.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod binding;
pub mod cipher;
pub mod cookie;
mod error;
pub mod handoff;
pub mod jwt;
pub mod oidc;
pub mod redirect;
pub mod secret;
pub mod session;
pub mod signed_url;

pub use binding::{BindingDigest, BrowserBinding, SignInFlow, SignInReturn};
pub use cipher::Cipher;
pub use cookie::{
    find_cookie, find_cookie_bytes, strip_cookie, strip_cookies, CookieOptions, SameSite,
    SessionCookie,
};
pub use error::AuthError;
pub use handoff::{Handoff, HandoffRefusal, ReplayGuard};
pub use jwt::{AssertionCache, AssertionSigner, AssertionSlot, IdentityClaims};
pub use oidc::{LoginState, OidcConfig, OidcProvider, RefreshedTokens};
pub use redirect::validate_redirect;
pub use secret::Secret;
pub use session::Session;
pub use signed_url::UrlSigner;

/// Encodes bytes as unpadded base64url, the encoding of every token this crate emits.
pub(crate) fn b64url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes unpadded base64url; `None` on any invalid input.
pub(crate) fn b64url_decode(s: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .ok()
}

/// `n` random bytes from the OS-seeded CSPRNG, base64url-encoded.
pub(crate) fn random_token(n: usize) -> String {
    use rand::RngCore as _;
    let mut buf = vec![0u8; n];
    rand::rngs::OsRng.fill_bytes(&mut buf);
    b64url(&buf)
}
