//! The identity assertion: an ES256 JWT sent upstream in `jwt_assertion_header`, the JWKS that
//! verifies it, and the cache that keeps ECDSA off the request path.
//!
//! Signing is ~100x slower than a cache lookup, so [`AssertionCache`] signs once per
//! (session, audience) and reuses the JWT while it has more than a minute left;
//! [`AssertionCache::signatures_total`] lets the proxy prove that in its metrics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use moka::sync::Cache;
use p256::elliptic_curve::sec1::ToEncodedPoint as _;
use p256::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _};
use p256::SecretKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::{b64url, AuthError, Secret};

/// Lifetime of a freshly signed assertion.
pub const ASSERTION_LIFETIME_SECS: i64 = 300;
/// A cached assertion is reused while it has more than this left.
pub const ASSERTION_REUSE_MARGIN_SECS: i64 = 60;
/// HKDF info for the signing key derived from `shared_secret`.
const SIGNING_KEY_INFO: &str = "portcullis-signing-key";

/// Signs identity assertions with an EC P-256 key.
pub struct AssertionSigner {
    encoding_key: EncodingKey,
    header: Header,
    kid: String,
    jwks: String,
}

/// The claims of the identity assertion (see the contract, "Headers sent upstream").
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct IdentityClaims {
    /// Issuer: the route's host name, without port.
    pub iss: String,
    /// Audience: the route's host name, without port.
    pub aud: String,
    /// The IdP subject.
    pub sub: String,
    /// The IdP subject (Pomerium compatibility).
    pub user: String,
    /// The user's email, empty when unknown.
    pub email: String,
    /// The user's groups, `[]` when none.
    pub groups: Vec<String>,
    /// The user's display name.
    pub name: String,
    /// The session id.
    pub sid: String,
    /// Issued at, unix seconds.
    pub iat: i64,
    /// Expiry, unix seconds; at most five minutes after `iat`.
    pub exp: i64,
    /// Unique token id.
    pub jti: String,
}

/// Caches signed assertions per (session id, audience).
pub struct AssertionCache {
    /// Key: session id and audience; value: the JWT, its `exp`, and the fingerprint of the
    /// session content it was signed from.
    cache: Cache<String, (Arc<str>, i64, u64)>,
    signatures: AtomicU64,
}

// === impl AssertionSigner ===

impl AssertionSigner {
    /// Loads a PEM EC P-256 private key: SEC1 (`EC PRIVATE KEY`) or PKCS#8 (`PRIVATE KEY`),
    /// or either of those encoded once more in base64 (as environment variables often carry
    /// them).
    pub fn from_pem(pem: &str) -> Result<AssertionSigner, AuthError> {
        let trimmed = pem.trim();
        let decoded;
        let pem = if trimmed.contains("-----BEGIN") {
            trimmed
        } else {
            let compact: String = trimmed.chars().filter(|c| !c.is_whitespace()).collect();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(compact)
                .map_err(|_| AuthError::InvalidSigningKey("neither PEM nor base64 of PEM"))?;
            decoded = String::from_utf8(bytes)
                .map_err(|_| AuthError::InvalidSigningKey("base64 does not decode to PEM"))?;
            decoded.trim()
        };
        let key = if pem.contains("-----BEGIN EC PRIVATE KEY-----") {
            SecretKey::from_sec1_pem(pem)
                .map_err(|_| AuthError::InvalidSigningKey("bad SEC1 P-256 private key"))?
        } else if pem.contains("-----BEGIN PRIVATE KEY-----") {
            SecretKey::from_pkcs8_pem(pem)
                .map_err(|_| AuthError::InvalidSigningKey("bad PKCS#8 P-256 private key"))?
        } else {
            return Err(AuthError::InvalidSigningKey(
                "expected an EC PRIVATE KEY or PRIVATE KEY PEM block",
            ));
        };
        AssertionSigner::from_secret_key(&key)
    }

    /// Derives the signing key from `secret` (HKDF info `portcullis-signing-key`; if the bytes
    /// are not a valid P-256 scalar, retries with `portcullis-signing-key/1`, `/2`, ...).
    /// Every process with the same secret derives the same key.
    pub fn derive(secret: &Secret) -> Result<AssertionSigner, AuthError> {
        for counter in 0u32..64 {
            let info = if counter == 0 {
                SIGNING_KEY_INFO.to_owned()
            } else {
                format!("{SIGNING_KEY_INFO}/{counter}")
            };
            let bytes = secret.derive(&info);
            if let Ok(key) = SecretKey::from_bytes(&bytes.into()) {
                return AssertionSigner::from_secret_key(&key);
            }
        }
        Err(AuthError::InvalidSigningKey("could not derive a P-256 key"))
    }

    fn from_secret_key(key: &SecretKey) -> Result<AssertionSigner, AuthError> {
        let der = key
            .to_pkcs8_der()
            .map_err(|_| AuthError::InvalidSigningKey("PKCS#8 encoding failed"))?;
        let encoding_key = EncodingKey::from_ec_der(der.as_bytes());
        let point = key.public_key().to_encoded_point(false);
        let (x, y) = match (point.x(), point.y()) {
            (Some(x), Some(y)) => (b64url(x), b64url(y)),
            _ => return Err(AuthError::InvalidSigningKey("public key is the identity")),
        };
        // RFC 7638: the required members, lexicographic order, no whitespace.
        let thumbprint_input = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        let kid = b64url(&Sha256::digest(thumbprint_input.as_bytes()));
        let jwks = serde_json::json!({
            "keys": [{
                "kty": "EC",
                "crv": "P-256",
                "x": x,
                "y": y,
                "kid": kid,
                "alg": "ES256",
                "use": "sig",
            }]
        })
        .to_string();
        let mut header = Header::new(Algorithm::ES256);
        header.typ = Some("JWT".to_owned());
        header.kid = Some(kid.clone());
        Ok(AssertionSigner {
            encoding_key,
            header,
            kid,
            jwks,
        })
    }

    /// The key id: the RFC 7638 JWK thumbprint of the public key.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The JWKS document (`/.well-known/portcullis/jwks.json`), computed once.
    pub fn jwks_json(&self) -> &str {
        &self.jwks
    }

    /// Signs `claims` as an ES256 JWT with header `{alg: ES256, typ: JWT, kid}`. This is
    /// asymmetric crypto: go through [`AssertionCache`] on the request path.
    pub fn sign(&self, claims: &IdentityClaims) -> Result<String, AuthError> {
        jsonwebtoken::encode(&self.header, claims, &self.encoding_key)
            .map_err(|e| AuthError::Signing(e.to_string()))
    }
}

impl std::fmt::Debug for AssertionSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AssertionSigner")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

// === impl IdentityClaims ===

impl IdentityClaims {
    /// A fresh random `jti`.
    pub fn new_jti() -> String {
        crate::random_token(16)
    }
}

// === impl AssertionCache ===

impl AssertionCache {
    /// A cache of at most `max_entries` assertions.
    pub fn new(max_entries: u64) -> AssertionCache {
        AssertionCache {
            cache: Cache::builder()
                .max_capacity(max_entries)
                .time_to_live(Duration::from_secs(ASSERTION_LIFETIME_SECS.unsigned_abs()))
                .support_invalidation_closures()
                .build(),
            signatures: AtomicU64::new(0),
        }
    }

    fn key(session_id: &str, audience: &str) -> String {
        let mut k = String::with_capacity(session_id.len() + audience.len() + 1);
        k.push_str(session_id);
        k.push('\0');
        k.push_str(audience);
        k
    }

    /// The assertion for (`session_id`, `audience`): the cached one while it has more than
    /// [`ASSERTION_REUSE_MARGIN_SECS`] left at `now_unix` and was signed from the same session
    /// `content` (a fingerprint of what `make_claims` reads), otherwise a new one signed from
    /// `make_claims()`. A session whose claims changed thus gets a new assertion at its next
    /// request, with no invalidation to race against. The cache sets `iat = now_unix` and `exp = iat +`
    /// [`ASSERTION_LIFETIME_SECS`], and a random `jti` when `make_claims` left it empty.
    pub fn get_or_sign(
        &self,
        signer: &AssertionSigner,
        session_id: &str,
        audience: &str,
        content: u64,
        now_unix: i64,
        make_claims: impl FnOnce() -> IdentityClaims,
    ) -> Result<Arc<str>, AuthError> {
        let key = AssertionCache::key(session_id, audience);
        if let Some((jwt, exp, signed_from)) = self.cache.get(&key) {
            if signed_from == content && exp.saturating_sub(now_unix) > ASSERTION_REUSE_MARGIN_SECS
            {
                return Ok(jwt);
            }
        }
        let mut claims = make_claims();
        claims.iat = now_unix;
        claims.exp = now_unix.saturating_add(ASSERTION_LIFETIME_SECS);
        if claims.jti.is_empty() {
            claims.jti = IdentityClaims::new_jti();
        }
        let jwt: Arc<str> = signer.sign(&claims)?.into();
        self.signatures.fetch_add(1, Ordering::Relaxed);
        self.cache.insert(key, (jwt.clone(), claims.exp, content));
        Ok(jwt)
    }

    /// Drops every cached assertion of `session_id` (sign-out). Not needed when a session
    /// changes: its new content fingerprint no longer matches.
    pub fn invalidate_session(&self, session_id: &str) {
        let mut prefix = String::with_capacity(session_id.len() + 1);
        prefix.push_str(session_id);
        prefix.push('\0');
        // Only fails when the cache was built without invalidation closures, which it is not.
        let _ = self
            .cache
            .invalidate_entries_if(move |k, _| k.starts_with(&prefix));
    }

    /// Drops everything (e.g. on signing-key change).
    pub fn invalidate_all(&self) {
        self.cache.invalidate_all();
    }

    /// How many assertions this cache has signed since it was created.
    pub fn signatures_total(&self) -> u64 {
        self.signatures.load(Ordering::Relaxed)
    }
}

impl Default for AssertionCache {
    fn default() -> Self {
        AssertionCache::new(100_000)
    }
}

impl std::fmt::Debug for AssertionCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AssertionCache")
            .field("entries", &self.cache.entry_count())
            .field("signatures_total", &self.signatures_total())
            .finish()
    }
}

#[cfg(test)]
mod tests;
