//! The identity assertion: an ES256 JWT sent upstream in `jwt_assertion_header`, the JWKS that
//! verifies it, and the cache that keeps ECDSA off the request path.
//!
//! Signing is ~100x slower than a cache lookup, so [`AssertionCache`] signs once per
//! (session, audience), reuses the JWT while it has more than a minute left, and signs it again
//! in the background before that while the session keeps sending requests;
//! [`AssertionCache::signatures_on_request_path`] lets the proxy prove in its metrics that a
//! steady-state request never waits for a signature.
//!
//! The cache keeps an assertion's signature and the claims it chose (dates and id); the other
//! claims are the session's, which the caller holds anyway. The JWT itself (about 600 bytes) is
//! kept beside them only while requests keep asking for it: from the second request that asks
//! for it (a session seen once, such as a client that polls once a minute, would keep it for
//! nothing), until it went unused for [`ASSERTION_KEEP_JWT_SECS`]. A request that finds it not
//! kept makes it again from the signature and the session (no signing, some ten thousand
//! instructions). So a session that is busy costs a reference count per request, and one seen
//! once or gone idle a few hundred bytes.

use std::hash::BuildHasher as _;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};
use std::time::{Duration, Instant};

use base64::Engine as _;
use hashbrown::HashTable;
use http::HeaderValue;
use jsonwebtoken::{Algorithm, Header};
use p256::elliptic_curve::sec1::ToEncodedPoint as _;
use p256::pkcs8::DecodePrivateKey as _;
use p256::SecretKey;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
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
/// Over how long the proxy spreads one run's signatures ([`AssertionCache::renew_due`]'s
/// `spread`): less than the interval, so that runs never overlap.
pub const ASSERTION_RENEW_SPREAD: Duration = Duration::from_secs(8);
/// A JWT no request asked for in this long is no longer kept ready to send: only its signature
/// is ([`AssertionCache::renew_due`] drops it, so it goes within one more
/// [`ASSERTION_RENEW_INTERVAL`]).
pub const ASSERTION_KEEP_JWT_SECS: i64 = 60;

// A run sees an assertion first with at most the renewal lead left (less up to one interval),
// and may then take the whole spread to sign it: it must still be in time for the reuse margin.
const _: () = assert!(
    ASSERTION_RENEW_AHEAD_SECS
        - ASSERTION_RENEW_INTERVAL.as_secs() as i64
        - ASSERTION_RENEW_SPREAD.as_secs() as i64
        > ASSERTION_REUSE_MARGIN_SECS
);
const _: () = assert!(ASSERTION_RENEW_SPREAD.as_secs() < ASSERTION_RENEW_INTERVAL.as_secs());
/// HKDF info for the signing key derived from `shared_secret`.
const SIGNING_KEY_INFO: &str = "portcullis-signing-key";

/// Signs identity assertions with an EC P-256 key.
///
/// The key pair is prepared once, with ring, whose P-256 uses precomputed tables for the base
/// point, so a signature costs tens of microseconds. `jsonwebtoken::encode` is not used for
/// signing: it parses the PEM key again for every signature, which costs an order of magnitude
/// more. The JWT's header is the same for every assertion, so it is encoded once too.
pub struct AssertionSigner {
    key_pair: EcdsaKeyPair,
    /// `base64url({"typ":"JWT","alg":"ES256","kid":…})`.
    encoded_header: String,
    kid: String,
    jwks: String,
    /// Tests: every signature fails, as one could (an RNG failure), to check what the cache
    /// does then.
    #[cfg(test)]
    fail: bool,
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
///
/// A plain table in lock shards, of one entry per (session, route host it used), placed by the
/// hash of the session id: a lookup is one hash of the id and a read lock, with no bookkeeping
/// per read. An entry shares the session id with its caller's copy (the proxy's cached
/// session), so that a session's assertion costs its signature and little more. Not an LRU
/// cache such as moka: its per-read bookkeeping would be a large share of a session lookup when
/// many sessions take turns. Entries that no request used for an assertion lifetime go at the
/// next [`AssertionCache::renew_due`]; a sign-out drops its session's at once.
pub struct AssertionCache {
    shards: Box<[RwLock<Shard>]>,
    /// Seeded: session ids are server-minted, but nobody should be able to aim collisions.
    hasher: foldhash::quality::RandomState,
    /// Entries per shard before a new one needs [`make_room`].
    per_shard: usize,
    on_request: AtomicU64,
    in_background: AtomicU64,
}

/// Lock shards, so that the threads of a busy proxy rarely wait for one another.
const SHARDS: usize = 16;

/// One shard: assertions, by the hash of their session id.
type Shard = HashTable<Arc<Entry>>;

/// Where a caller keeps the assertion it was last given for one session (the proxy keeps one on
/// each cached session), so that the session's next request takes it from there
/// ([`AssertionCache::get_or_sign_kept`]) instead of looking it up by id: no hash of the id, no
/// shard lock, no probe of a table of every session.
///
/// It answers only what the cache would: the same audience and session content, an assertion
/// still in the cache (one the cache dropped is no longer renewed), with more than the reuse
/// margin left. It holds the assertion weakly: what the cache drops is freed, whoever kept it,
/// except the entry's own block (see [`AssertionSlot::RETAINED_BYTES`]).
#[derive(Default)]
pub struct AssertionSlot(RwLock<Weak<Entry>>);

/// One (session, audience) and its current assertion.
struct Entry {
    /// Set when the cache drops the entry: a slot that kept it no longer answers with it. The
    /// slot's weak pointer alone would not tell: a renewal or another request may still hold
    /// the entry for a moment after the cache let go of it.
    retired: AtomicBool,
    /// The session's id, the same allocation as the caller's.
    session_id: Arc<str>,
    audience: Box<str>,
    /// Fingerprint of the session fields the claims were made from.
    content: u64,
    /// The current signature, with the claims the cache gave it.
    signed: RwLock<Signed>,
    /// When a request last asked for it, unix seconds.
    last_used: AtomicI64,
}

/// What [`AssertionCache::renew_due`] asks of the sessions: for a session id and an audience,
/// the session's content fingerprint and its claims for that audience, if it knows the session.
pub type ClaimsFor<'a> = dyn Fn(&str, &str) -> Option<(u64, IdentityClaims)> + 'a;

/// Random bytes of a `jti` (base64url in the JWT).
const JTI_BYTES: usize = 16;

/// A signed assertion without its session's claims: what the cache chose (the dates and the
/// id) and the ES256 signature (r and s) over the JWT made with them
/// ([`AssertionSigner::encode`] makes it again), and that JWT while it is in use.
#[derive(Clone)]
struct Signed {
    iat: i64,
    jti: [u8; JTI_BYTES],
    signature: [u8; SIGNATURE_BYTES],
    jwt: Option<HeaderValue>,
}

/// An ES256 signature: r and s, 32 bytes each (RFC 7518, section 3.4).
const SIGNATURE_BYTES: usize = 64;

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
        let point = key.public_key().to_encoded_point(false);
        let key_pair = EcdsaKeyPair::from_private_key_and_public_key(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &key.to_bytes(),
            point.as_bytes(),
            &SystemRandom::new(),
        )
        .map_err(|_| AuthError::InvalidSigningKey("P-256 key pair rejected"))?;
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
        let header = serde_json::to_vec(&header)
            .map_err(|_| AuthError::InvalidSigningKey("JWT header encoding failed"))?;
        Ok(AssertionSigner {
            key_pair,
            encoded_header: b64url(&header),
            kid,
            jwks,
            #[cfg(test)]
            fail: false,
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
        let mut jwt = self.signing_input(claims)?;
        let signature = self.signature(&jwt)?;
        push_signature(&mut jwt, &signature);
        Ok(jwt)
    }

    /// JWS compact serialization (RFC 7515) is `header.claims.signature`, each base64url; this
    /// is `header.claims`, what the signature is over, with room left for the rest.
    fn signing_input(&self, claims: &IdentityClaims) -> Result<String, AuthError> {
        let claims = serde_json::to_vec(claims).map_err(|e| AuthError::Signing(e.to_string()))?;
        let mut jwt = String::with_capacity(self.encoded_header.len() + claims.len() * 4 / 3 + 90);
        jwt.push_str(&self.encoded_header);
        jwt.push('.');
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_string(&claims, &mut jwt);
        Ok(jwt)
    }

    fn signature(&self, signing_input: &str) -> Result<[u8; SIGNATURE_BYTES], AuthError> {
        #[cfg(test)]
        if self.fail {
            return Err(AuthError::Signing("failing on purpose".into()));
        }
        let signature = self
            .key_pair
            .sign(&SystemRandom::new(), signing_input.as_bytes())
            .map_err(|_| AuthError::Signing("ECDSA signing failed".into()))?;
        signature
            .as_ref()
            .try_into()
            .map_err(|_| AuthError::Signing("an ES256 signature is not 64 bytes".into()))
    }

    /// Dates `claims` at `now_unix` (`exp` an [`ASSERTION_LIFETIME_SECS`] later), gives them a
    /// fresh random `jti` and signs them: what the cache keeps of it (without the JWT), and the JWT.
    fn sign_fresh(
        &self,
        claims: &mut IdentityClaims,
        now_unix: i64,
    ) -> Result<(Signed, HeaderValue), AuthError> {
        let mut jti = [0u8; JTI_BYTES];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut jti);
        let stamp = Signed {
            iat: now_unix,
            jti,
            signature: [0; SIGNATURE_BYTES],
            jwt: None,
        };
        stamp.date(claims);
        let mut jwt = self.signing_input(claims)?;
        let signature = self.signature(&jwt)?;
        push_signature(&mut jwt, &signature);
        let signed = Signed { signature, ..stamp };
        Ok((signed, header_value(jwt)?))
    }

    /// The JWT that `signed` was made as: `claims`, which must be the ones it was signed from
    /// (the same session content and audience), dated and identified as it was.
    fn encode(
        &self,
        claims: &mut IdentityClaims,
        signed: &Signed,
    ) -> Result<HeaderValue, AuthError> {
        signed.date(claims);
        let mut jwt = self.signing_input(claims)?;
        push_signature(&mut jwt, &signed.signature);
        header_value(jwt)
    }
}

fn push_signature(jwt: &mut String, signature: &[u8]) {
    jwt.push('.');
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_string(signature, jwt);
}

fn header_value(jwt: String) -> Result<HeaderValue, AuthError> {
    HeaderValue::from_maybe_shared(bytes::Bytes::from(jwt))
        .map_err(|_| AuthError::Signing("the JWT is not a header value".into()))
}

impl std::fmt::Debug for AssertionSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AssertionSigner")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

// === impl AssertionCache ===

impl AssertionCache {
    /// A cache of at most about `max_entries` assertions (one per session and route host).
    pub fn new(max_entries: usize) -> AssertionCache {
        AssertionCache {
            shards: (0..SHARDS).map(|_| RwLock::new(HashTable::new())).collect(),
            hasher: foldhash::quality::RandomState::default(),
            per_shard: (max_entries / SHARDS).max(1),
            on_request: AtomicU64::new(0),
            in_background: AtomicU64::new(0),
        }
    }

    /// The hash of `session_id` and its shard, by bits from the middle of the hash: the table
    /// places by the low ones and tags by the top seven.
    fn locate(&self, session_id: &str) -> (u64, &RwLock<Shard>) {
        let hash = self.hasher.hash_one(session_id);
        let index = usize::try_from((hash >> 32) & 0xffff).unwrap_or(0) % SHARDS;
        (hash, &self.shards[index])
    }

    /// The assertion for (`session_id`, `audience`), as a header value: the cached one while
    /// it has more than [`ASSERTION_REUSE_MARGIN_SECS`] left at `now_unix` and was signed from
    /// the same session `content` (a fingerprint of what `make_claims` reads), otherwise a new
    /// one signed from `make_claims()`. A session whose claims changed thus gets a new assertion
    /// at its next request, with no invalidation to race against. The cache sets
    /// `iat = now_unix` and `exp = iat +` [`ASSERTION_LIFETIME_SECS`], and a fresh random `jti`.
    ///
    /// In steady state nothing is signed here: [`AssertionCache::renew_due`], run in the
    /// background, signs again before the margin is reached. A caller that keeps the session
    /// (and its id as an `Arc<str>`) calls [`AssertionCache::get_or_sign_kept`] instead: this
    /// one copies the id for each call.
    pub fn get_or_sign(
        &self,
        signer: &AssertionSigner,
        session_id: &str,
        audience: &str,
        content: u64,
        now_unix: i64,
        make_claims: impl FnOnce() -> IdentityClaims,
    ) -> Result<HeaderValue, AuthError> {
        // A slot of its own, dropped after, and an id of its own: the lookup, as
        // `get_or_sign_kept` would do it.
        let slot = AssertionSlot::default();
        let session_id: Arc<str> = session_id.into();
        self.get_or_sign_kept(
            &slot,
            signer,
            &session_id,
            audience,
            content,
            now_unix,
            make_claims,
        )
    }

    /// [`AssertionCache::get_or_sign`], answered from `slot` when it holds what the cache would
    /// answer with; otherwise looked up (or signed) and kept in `slot` for the next request.
    /// `slot` must be `session_id`'s own: it is not keyed by the id. A new entry shares
    /// `session_id`.
    #[allow(clippy::too_many_arguments)]
    pub fn get_or_sign_kept(
        &self,
        slot: &AssertionSlot,
        signer: &AssertionSigner,
        session_id: &Arc<str>,
        audience: &str,
        content: u64,
        now_unix: i64,
        make_claims: impl FnOnce() -> IdentityClaims,
    ) -> Result<HeaderValue, AuthError> {
        if let Some((entry, signed)) = slot.answer(audience, content, now_unix) {
            return entry.send(signer, signed, make_claims);
        }
        let is_it = |e: &Arc<Entry>| *e.session_id == **session_id && *e.audience == *audience;
        let (hash, shard) = self.locate(session_id);
        // An entry past its reuse margin is signed again with no lock held.
        let stale = {
            let map = read(shard);
            match map.find(hash, is_it).filter(|e| e.content == content) {
                Some(entry) => {
                    if let Some(valid) = entry.use_at(now_unix) {
                        slot.keep(entry);
                        let entry = Arc::clone(entry);
                        drop(map);
                        return entry.send(signer, valid, make_claims);
                    }
                    Some(Arc::clone(entry))
                }
                None => None,
            }
        };
        if let Some(entry) = stale {
            let value = entry.sign_again(signer, make_claims(), now_unix, true)?;
            self.on_request.fetch_add(1, Ordering::Relaxed);
            slot.keep(&entry);
            return Ok(value);
        }
        let (entry, value) = Entry::sign(
            signer,
            Arc::clone(session_id),
            audience,
            content,
            make_claims(),
            now_unix,
        )?;
        let entry = Arc::new(entry);
        self.on_request.fetch_add(1, Ordering::Relaxed);
        let mut map = write(shard);
        match map.find_mut(hash, is_it) {
            Some(slot) => {
                slot.retire();
                *slot = Arc::clone(&entry);
            }
            None => {
                if map.len() >= self.per_shard {
                    make_room(&mut map, now_unix);
                }
                let hasher = &self.hasher;
                map.insert_unique(hash, Arc::clone(&entry), |e| {
                    hasher.hash_one(&*e.session_id)
                });
            }
        }
        drop(map);
        slot.keep(&entry);
        Ok(value)
    }

    /// Signs again, off the request path, every assertion that a request asked for within the
    /// last [`ASSERTION_LIFETIME_SECS`] and that has [`ASSERTION_RENEW_AHEAD_SECS`] or less
    /// left at `now_unix`; returns how many it signed. Run every
    /// [`ASSERTION_RENEW_INTERVAL`], it keeps signatures off the request path for as long as a
    /// session keeps sending requests.
    ///
    /// The signatures are spread evenly over `spread`, those that expire first first. Sessions
    /// that start together (a crowd signing in, a load test) come due together, every cycle;
    /// signed back to back they would hold a CPU for as long as the crowd takes to sign (tens
    /// of microseconds each), and the requests queued behind it would wait. Each is dated when
    /// it is signed (`now_unix` plus the time since the run began). With `Duration::ZERO` they
    /// are signed at once. The run ends early, returning what it signed so far, once `stop`
    /// says so (asked before each signature and every 100 ms between them): a shutdown does
    /// not wait for the spread.
    ///
    /// `claims_for(session_id, audience)` gives the session's content fingerprint and its
    /// claims for the audience, as a request would; an assertion whose session it does not
    /// know, or whose content changed, is not renewed (its next request signs).
    pub fn renew_due(
        &self,
        signer: &AssertionSigner,
        now_unix: i64,
        spread: Duration,
        stop: &dyn Fn() -> bool,
        claims_for: &ClaimsFor<'_>,
    ) -> usize {
        // Collected under read locks, signed with none held.
        let mut due = Vec::new();
        for shard in self.shards.iter() {
            let mut idle = false;
            for entry in read(shard).iter() {
                if is_idle(entry, now_unix) {
                    idle = true;
                    continue;
                }
                entry.forget_jwt_if_unused(now_unix);
                let expires_at = entry.expires_at();
                if expires_at.saturating_sub(now_unix) <= ASSERTION_RENEW_AHEAD_SECS {
                    due.push((expires_at, Arc::clone(entry)));
                }
            }
            if idle {
                drop_idle(&mut write(shard), now_unix);
            }
        }
        due.sort_unstable_by_key(|(expires_at, _)| *expires_at);
        let began = Instant::now();
        let mut renewed = 0;
        for (turn, (_, entry)) in due.iter().enumerate() {
            let Some(elapsed) = wait_for_turn(began, spread, turn, due.len(), stop) else {
                break;
            };
            let Some((content, claims)) = claims_for(&entry.session_id, &entry.audience) else {
                continue;
            };
            if content != entry.content {
                continue;
            }
            let at = now_unix.saturating_add(i64::try_from(elapsed.as_secs()).unwrap_or(0));
            if entry.sign_again(signer, claims, at, false).is_ok() {
                self.in_background.fetch_add(1, Ordering::Relaxed);
                renewed += 1;
            }
        }
        renewed
    }

    /// Drops every cached assertion of `session_id` (sign-out), at once. Not needed when a
    /// session changes: its new content fingerprint no longer matches.
    pub fn invalidate_session(&self, session_id: &str) {
        let (hash, shard) = self.locate(session_id);
        let mut map = write(shard);
        while let Ok(found) = map.find_entry(hash, |e| *e.session_id == *session_id) {
            found.remove().0.retire();
        }
    }

    /// Drops everything (e.g. on signing-key change).
    pub fn invalidate_all(&self) {
        for shard in self.shards.iter() {
            clear(&mut write(shard));
        }
    }

    /// How many assertions are cached now.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| read(s).len()).sum()
    }

    /// Whether no assertion is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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

fn read(shard: &RwLock<Shard>) -> RwLockReadGuard<'_, Shard> {
    shard.read().unwrap_or_else(|e| e.into_inner())
}

fn write(shard: &RwLock<Shard>) -> RwLockWriteGuard<'_, Shard> {
    shard.write().unwrap_or_else(|e| e.into_inner())
}

/// Sleeps until turn `turn` of `turns`, spread evenly over `spread` from `began`; returns the
/// time since `began`, or `None` once `stop` says so (asked before the turn is taken, and at
/// least every [`STOP_CHECK_EVERY`] while waiting). A turn less than [`MIN_PACING_SLEEP`] away
/// is taken at once, so that close turns share one sleep rather than each paying for a short
/// one.
fn wait_for_turn(
    began: Instant,
    spread: Duration,
    turn: usize,
    turns: usize,
    stop: &dyn Fn() -> bool,
) -> Option<Duration> {
    let at = spread.mul_f64(turn as f64 / turns.max(1) as f64);
    loop {
        if stop() {
            return None;
        }
        let elapsed = began.elapsed();
        match at.checked_sub(elapsed) {
            Some(ahead) if ahead >= MIN_PACING_SLEEP => {
                std::thread::sleep(ahead.min(STOP_CHECK_EVERY));
            }
            _ => return Some(elapsed),
        }
    }
}

/// The shortest sleep [`wait_for_turn`] takes.
const MIN_PACING_SLEEP: Duration = Duration::from_millis(1);
/// The longest sleep [`wait_for_turn`] takes before it asks `stop` again.
const STOP_CHECK_EVERY: Duration = Duration::from_millis(100);

/// No request asked for it for one assertion lifetime: it is no longer renewed, and goes.
fn is_idle(entry: &Entry, now_unix: i64) -> bool {
    now_unix.saturating_sub(entry.last_used.load(Ordering::Relaxed)) > ASSERTION_LIFETIME_SECS
}

fn drop_idle(map: &mut Shard, now_unix: i64) {
    map.retain(|e| {
        let idle = is_idle(e, now_unix);
        if idle {
            e.retire();
        }
        !idle
    });
}

/// Drops every entry of `map`.
fn clear(map: &mut Shard) {
    for e in map.drain() {
        e.retire();
    }
}

/// A full shard: the idle entries go; if none is idle, the whole shard (its sessions are
/// signed again at their next request, as after a restart).
fn make_room(map: &mut Shard, now_unix: i64) {
    let before = map.len();
    drop_idle(map, now_unix);
    if map.len() == before {
        clear(map);
    }
}

// === impl AssertionSlot ===

impl AssertionSlot {
    /// The most a slot keeps allocated beyond its own size: the block of an entry the cache
    /// dropped (its JWT and claims are freed with it), which a weak pointer keeps until the
    /// slot is refilled or dropped. For callers that bound their memory by bytes.
    pub const RETAINED_BYTES: usize =
        std::mem::size_of::<Entry>() + 2 * std::mem::size_of::<usize>();

    /// The kept assertion, when it is what the cache would answer with (see the type).
    fn answer(&self, audience: &str, content: u64, now_unix: i64) -> Option<(Arc<Entry>, Signed)> {
        let entry = self.0.read().ok()?.upgrade()?;
        if entry.retired.load(Ordering::Acquire)
            || entry.content != content
            || *entry.audience != *audience
        {
            return None;
        }
        let signed = entry.use_at(now_unix)?;
        Some((entry, signed))
    }

    fn keep(&self, entry: &Arc<Entry>) {
        if let Ok(mut kept) = self.0.write() {
            *kept = Arc::downgrade(entry);
        }
    }
}

impl std::fmt::Debug for AssertionSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let audience = self
            .0
            .read()
            .ok()
            .and_then(|kept| kept.upgrade().map(|e| e.audience.to_string()));
        f.debug_struct("AssertionSlot")
            .field("audience", &audience)
            .finish()
    }
}

// === impl Entry ===

impl Entry {
    fn sign(
        signer: &AssertionSigner,
        session_id: Arc<str>,
        audience: &str,
        content: u64,
        mut claims: IdentityClaims,
        now_unix: i64,
    ) -> Result<(Entry, HeaderValue), AuthError> {
        // The JWT is kept once a second request asks for it (see the module's documentation).
        let (signed, value) = signer.sign_fresh(&mut claims, now_unix)?;
        let entry = Entry {
            retired: AtomicBool::new(false),
            session_id,
            audience: audience.into(),
            content,
            signed: RwLock::new(signed),
            last_used: AtomicI64::new(now_unix),
        };
        Ok((entry, value))
    }

    /// A request asks for the assertion at `now_unix`: the current one while it has more than
    /// the reuse margin left. Marks the entry used (what keeps it renewed in the background).
    fn use_at(&self, now_unix: i64) -> Option<Signed> {
        // Written once a second at most: every thread reads this line per request.
        if self.last_used.load(Ordering::Relaxed) != now_unix {
            self.last_used.store(now_unix, Ordering::Relaxed);
        }
        self.valid_at(now_unix)
    }

    /// The cache dropped it.
    fn retire(&self) {
        self.retired.store(true, Ordering::Release);
    }

    /// The current assertion while it has more than the reuse margin left.
    fn valid_at(&self, now_unix: i64) -> Option<Signed> {
        let signed = self.signed.read().ok()?;
        (signed.exp().saturating_sub(now_unix) > ASSERTION_REUSE_MARGIN_SECS)
            .then(|| signed.clone())
    }

    /// The JWT of `signed` (this entry's current assertion): the kept one, or made again from
    /// `make_claims()` and kept for the next requests.
    fn send(
        &self,
        signer: &AssertionSigner,
        signed: Signed,
        make_claims: impl FnOnce() -> IdentityClaims,
    ) -> Result<HeaderValue, AuthError> {
        if let Some(jwt) = signed.jwt {
            return Ok(jwt);
        }
        let jwt = signer.encode(&mut make_claims(), &signed)?;
        if let Ok(mut current) = self.signed.write() {
            // Unless a renewal replaced it meanwhile.
            if current.iat == signed.iat && current.jti == signed.jti {
                current.jwt = Some(jwt.clone());
            }
        }
        Ok(jwt)
    }

    /// Keeps only the signature of a JWT no request asked for in [`ASSERTION_KEEP_JWT_SECS`].
    fn forget_jwt_if_unused(&self, now_unix: i64) {
        let unused = now_unix.saturating_sub(self.last_used.load(Ordering::Relaxed))
            >= ASSERTION_KEEP_JWT_SECS;
        let kept = self.signed.read().is_ok_and(|s| s.jwt.is_some());
        if unused && kept {
            if let Ok(mut current) = self.signed.write() {
                current.jwt = None;
            }
        }
    }

    fn expires_at(&self) -> i64 {
        self.signed.read().map(|s| s.exp()).unwrap_or(i64::MIN)
    }

    /// `claims` (this entry's session's, as of its content) with a new `iat`, `exp` and
    /// `jti`, signed and put in place. The new JWT is kept ready to send for a request
    /// (`for_request`), or when the one it replaces was.
    fn sign_again(
        &self,
        signer: &AssertionSigner,
        mut claims: IdentityClaims,
        now_unix: i64,
        for_request: bool,
    ) -> Result<HeaderValue, AuthError> {
        let (mut signed, value) = signer.sign_fresh(&mut claims, now_unix)?;
        if let Ok(mut current) = self.signed.write() {
            if signed.iat >= current.iat {
                if for_request || current.jwt.is_some() {
                    signed.jwt = Some(value.clone());
                }
                *current = signed;
            }
        }
        Ok(value)
    }
}

// === impl Signed ===

impl Signed {
    fn exp(&self) -> i64 {
        self.iat.saturating_add(ASSERTION_LIFETIME_SECS)
    }

    /// Gives `claims` this assertion's dates and id.
    fn date(&self, claims: &mut IdentityClaims) {
        claims.iat = self.iat;
        claims.exp = self.exp();
        claims.jti = b64url(&self.jti);
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
            .field("entries", &self.len())
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
