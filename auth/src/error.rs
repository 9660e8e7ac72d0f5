//! The crate's error type.
//!
//! No variant ever carries a token, a cookie value or key material: messages name what went
//! wrong, never the secret it went wrong with, so errors can be logged and shown as-is.

/// Everything that can go wrong in authentication.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthError {
    /// A configured secret is not base64 of exactly 32 bytes.
    #[error("invalid secret: {0}")]
    InvalidSecret(&'static str),
    /// The configured signing key could not be used.
    #[error("invalid signing key: {0}")]
    InvalidSigningKey(&'static str),
    /// Signing the identity assertion failed.
    #[error("signing the identity assertion failed: {0}")]
    Signing(String),
    /// Serializing a value to seal failed.
    #[error("serialization failed: {0}")]
    Serialization(String),
    /// A signed URL lacks a signature parameter, or has one twice.
    #[error("signed URL is malformed: {0}")]
    MalformedSignedUrl(&'static str),
    /// A signed URL's signature does not match its contents.
    #[error("signed URL has an invalid signature")]
    InvalidSignature,
    /// A signed URL or token has expired.
    #[error("expired")]
    Expired,
    /// A signed URL claims to be issued in the future beyond the allowed clock skew.
    #[error("issued in the future")]
    NotYetValid,
    /// A redirect target was refused by the open-redirect defence.
    #[error("redirect refused: {0}")]
    InvalidRedirect(&'static str),
    /// The OIDC configuration is unusable (bad URL, missing endpoint).
    #[error("OIDC configuration error: {0}")]
    Configuration(String),
    /// OIDC discovery failed.
    #[error("OIDC discovery failed: {0}")]
    Discovery(String),
    /// The sign-in flow took too long: the login state has expired.
    #[error("login state expired")]
    LoginStateExpired,
    /// The `state` returned by the IdP does not match the one bound to this browser.
    #[error("state mismatch")]
    StateMismatch,
    /// The `iss` returned by the IdP (RFC 9207) is missing when required or is not the issuer.
    #[error("issuer mismatch in authorization response")]
    IssuerMismatch,
    /// The token endpoint answered without an ID token.
    #[error("token response has no ID token")]
    MissingIdToken,
    /// The ID token failed validation (signature, issuer, audience, nonce, expiry, at_hash).
    #[error("invalid ID token: {0}")]
    InvalidIdToken(String),
    /// The refresh token or authorization code was rejected (`invalid_grant`): the user must
    /// sign in again.
    #[error("grant rejected by the identity provider (invalid_grant)")]
    InvalidGrant,
    /// The token endpoint returned an OAuth error other than `invalid_grant`.
    #[error("token endpoint error: {0}")]
    TokenEndpoint(String),
    /// The IdP could not be reached or answered garbage; retrying later may succeed.
    #[error("identity provider unreachable: {0}")]
    Transport(String),
}

impl AuthError {
    /// True for failures worth retrying (network errors, IdP hiccups), false for failures that
    /// need the user to sign in again.
    pub fn is_transient(&self) -> bool {
        matches!(self, AuthError::Transport(_) | AuthError::Discovery(_))
    }
}
