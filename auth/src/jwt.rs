//! The identity assertion: an ES256 JWT sent upstream in `jwt_assertion_header`, the JWKS that
//! verifies it, and the cache that keeps ECDSA off the request path.
//!
//! Signing is ~100x slower than a cache lookup, so [`AssertionCache`] signs once per
//! (session, audience), reuses the JWT while it has more than a minute left, and signs it again
//! in the background before that while the session keeps sending requests;
//! [`AssertionCache::signatures_on_request_path`] lets the proxy prove in its metrics that a
//! steady-state request never waits for a signature.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use base64::Engine as _;
use http::HeaderValue;
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
/// [`AssertionCache::renew_due`] signs again what has this much left or less: twice the reuse
/// margin, so that a renewal every [`ASSERTION_RENEW_INTERVAL`] is always in time.
pub const ASSERTION_RENEW_AHEAD_SECS: i64 = 2 * ASSERTION_REUSE_MARGIN_SECS;
/// How often the proxy runs [`AssertionCache::renew_due`].
pub const ASSERTION_RENEW_INTERVAL: Duration = Duration::from_secs(10);
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

/// Caches signed assertions per (session id, audience), and signs them again before they
/// expire ([`AssertionCache::renew_due`]) while their session keeps sending requests.
pub struct AssertionCache {
    cache: Cache<u64, Arc<Entry>, foldhash::quality::RandomState>,
    keys: foldhash::quality::RandomState,
    on_request: AtomicU64,
    in_background: AtomicU64,
}

/// One (session, audience) and its current assertion.
struct Entry {
    session_id: Box<str>,
    audience: Box<str>,
    /// Fingerprint of the session fields the claims were made from.
    content: u64,
    /// The claims last signed (`iat`, `exp` and `jti` change at each signature).
    claims: Mutex<IdentityClaims>,
    signed: RwLock<Signed>,
    /// When a request last asked for it, unix seconds.
    last_used: AtomicI64,
}

/// A signed JWT, ready to send.
struct Signed {
    value: HeaderValue,
    exp: i64,
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
            // An entry outlives its JWTs (it is signed again in place), and goes when no
            // request asked for it for one assertion lifetime.
            cache: Cache::builder()
                .max_capacity(max_entries)
                .time_to_idle(Duration::from_secs(ASSERTION_LIFETIME_SECS.unsigned_abs()))
                .support_invalidation_closures()
                .build_with_hasher(foldhash::quality::RandomState::default()),
            keys: foldhash::quality::RandomState::default(),
            on_request: AtomicU64::new(0),
            in_background: AtomicU64::new(0),
        }
    }

    /// The map key of (session id, audience): a keyed hash. The entry holds both, and a
    /// lookup checks them, so a collision costs a signature, never a wrong identity.
    fn key(&self, session_id: &str, audience: &str) -> u64 {
        use std::hash::BuildHasher as _;
        self.keys.hash_one((session_id, audience))
    }

    /// The assertion for (`session_id`, `audience`), as a header value: the cached one while
    /// it has more than [`ASSERTION_REUSE_MARGIN_SECS`] left at `now_unix` and was signed from
    /// the same session `content` (a fingerprint of what `make_claims` reads), otherwise a new
    /// one signed from `make_claims()`. A session whose claims changed thus gets a new assertion
    /// at its next request, with no invalidation to race against. The cache sets
    /// `iat = now_unix` and `exp = iat +` [`ASSERTION_LIFETIME_SECS`], and a fresh random `jti`.
    ///
    /// In steady state nothing is signed here: [`AssertionCache::renew_due`], run in the
    /// background, signs again before the margin is reached.
    pub fn get_or_sign(
        &self,
        signer: &AssertionSigner,
        session_id: &str,
        audience: &str,
        content: u64,
        now_unix: i64,
        make_claims: impl FnOnce() -> IdentityClaims,
    ) -> Result<HeaderValue, AuthError> {
        let key = self.key(session_id, audience);
        if let Some(entry) = self.cache.get(&key) {
            if entry.content == content
                && *entry.session_id == *session_id
                && *entry.audience == *audience
            {
                // Written once a second at most: every thread reads this line per request.
                if entry.last_used.load(Ordering::Relaxed) != now_unix {
                    entry.last_used.store(now_unix, Ordering::Relaxed);
                }
                if let Some(valid) = entry.valid_at(now_unix) {
                    return Ok(valid);
                }
                let value = entry.sign_again(signer, now_unix)?;
                self.on_request.fetch_add(1, Ordering::Relaxed);
                return Ok(value);
            }
        }
        let entry = Entry::sign(
            signer,
            session_id,
            audience,
            content,
            make_claims(),
            now_unix,
        )?;
        self.on_request.fetch_add(1, Ordering::Relaxed);
        let value = entry.current();
        self.cache.insert(key, Arc::new(entry));
        Ok(value)
    }

    /// Signs again, off the request path, every assertion that a request asked for within the
    /// last [`ASSERTION_LIFETIME_SECS`] and that has [`ASSERTION_RENEW_AHEAD_SECS`] or less
    /// left at `now_unix`; returns how many it signed. Run every
    /// [`ASSERTION_RENEW_INTERVAL`], it keeps signatures off the request path for as long as a
    /// session keeps sending requests.
    pub fn renew_due(&self, signer: &AssertionSigner, now_unix: i64) -> usize {
        let mut renewed = 0;
        for (_, entry) in self.cache.iter() {
            let used = entry.last_used.load(Ordering::Relaxed);
            let left = entry.expires_at().saturating_sub(now_unix);
            if left > ASSERTION_RENEW_AHEAD_SECS
                || now_unix.saturating_sub(used) > ASSERTION_LIFETIME_SECS
            {
                continue;
            }
            if entry.sign_again(signer, now_unix).is_ok() {
                self.in_background.fetch_add(1, Ordering::Relaxed);
                renewed += 1;
            }
        }
        renewed
    }

    /// Drops every cached assertion of `session_id` (sign-out). Not needed when a session
    /// changes: its new content fingerprint no longer matches.
    pub fn invalidate_session(&self, session_id: &str) {
        let session_id: Box<str> = session_id.into();
        // Only fails when the cache was built without invalidation closures, which it is not.
        let _ = self
            .cache
            .invalidate_entries_if(move |_, e| e.session_id == session_id);
    }

    /// Drops everything (e.g. on signing-key change).
    pub fn invalidate_all(&self) {
        self.cache.invalidate_all();
    }

    /// How many assertions this cache has signed since it was created, on the request path
    /// and in the background.
    pub fn signatures_total(&self) -> u64 {
        self.signatures_on_request_path() + self.in_background.load(Ordering::Relaxed)
    }

    /// How many of them a request waited for (a session's first request on a host, a changed
    /// session, or one idle long enough that its assertion was not renewed).
    pub fn signatures_on_request_path(&self) -> u64 {
        self.on_request.load(Ordering::Relaxed)
    }
}

// === impl Entry ===

impl Entry {
    fn sign(
        signer: &AssertionSigner,
        session_id: &str,
        audience: &str,
        content: u64,
        mut claims: IdentityClaims,
        now_unix: i64,
    ) -> Result<Entry, AuthError> {
        let signed = Signed::new(signer, &mut claims, now_unix)?;
        Ok(Entry {
            session_id: session_id.into(),
            audience: audience.into(),
            content,
            claims: Mutex::new(claims),
            signed: RwLock::new(signed),
            last_used: AtomicI64::new(now_unix),
        })
    }

    /// The current JWT while it has more than the reuse margin left.
    fn valid_at(&self, now_unix: i64) -> Option<HeaderValue> {
        let signed = self.signed.read().ok()?;
        (signed.exp.saturating_sub(now_unix) > ASSERTION_REUSE_MARGIN_SECS)
            .then(|| signed.value.clone())
    }

    fn current(&self) -> HeaderValue {
        match self.signed.read() {
            Ok(s) => s.value.clone(),
            Err(poisoned) => poisoned.into_inner().value.clone(),
        }
    }

    fn expires_at(&self) -> i64 {
        self.signed.read().map(|s| s.exp).unwrap_or(i64::MIN)
    }

    /// The same claims with a new `iat`, `exp` and `jti`, signed and put in place.
    fn sign_again(
        &self,
        signer: &AssertionSigner,
        now_unix: i64,
    ) -> Result<HeaderValue, AuthError> {
        let signed = {
            let mut claims = self
                .claims
                .lock()
                .map_err(|_| AuthError::Signing("assertion claims lock poisoned".into()))?;
            Signed::new(signer, &mut claims, now_unix)?
        };
        let value = signed.value.clone();
        if let Ok(mut current) = self.signed.write() {
            if signed.exp >= current.exp {
                *current = signed;
            }
        }
        Ok(value)
    }
}

impl Signed {
    fn new(
        signer: &AssertionSigner,
        claims: &mut IdentityClaims,
        now_unix: i64,
    ) -> Result<Signed, AuthError> {
        claims.iat = now_unix;
        claims.exp = now_unix.saturating_add(ASSERTION_LIFETIME_SECS);
        claims.jti = IdentityClaims::new_jti();
        let jwt = signer.sign(claims)?;
        let value = HeaderValue::from_maybe_shared(bytes::Bytes::from(jwt))
            .map_err(|_| AuthError::Signing("the JWT is not a header value".into()))?;
        Ok(Signed {
            value,
            exp: claims.exp,
        })
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
            .field(
                "signatures_on_request_path",
                &self.signatures_on_request_path(),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests;
