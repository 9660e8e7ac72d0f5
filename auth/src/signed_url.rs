//! HMAC-signed URLs (`shared_secret`), used for the proxy → authenticate-service redirects.
//!
//! [`UrlSigner::sign`] appends `portcullis_issued` and `portcullis_expiry`, then
//! `portcullis_signature` = base64url(HMAC-SHA256(canonical URL)), where the canonical URL is
//! the URL's serialization (scheme, host, port, path, query including the two time parameters)
//! without the fragment. The signature must be the last query parameter; anything changed in
//! front of it — host, path, any query byte — breaks the signature.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq as _;
use url::Url;

use crate::{b64url, b64url_decode, AuthError, Secret};

/// Query parameter holding the issue time (unix seconds).
pub const ISSUED_PARAM: &str = "portcullis_issued";
/// Query parameter holding the expiry time (unix seconds).
pub const EXPIRY_PARAM: &str = "portcullis_expiry";
/// Query parameter holding the signature; always the last one.
pub const SIGNATURE_PARAM: &str = "portcullis_signature";
/// How far in the future `portcullis_issued` may be, for clock skew between hosts.
pub const MAX_CLOCK_SKEW_SECS: i64 = 60;

/// Signs and verifies URLs with a key derived from the shared secret.
#[derive(Clone)]
pub struct UrlSigner {
    key: [u8; 32],
}

// === impl UrlSigner ===

impl UrlSigner {
    /// A signer keyed by HKDF(`secret`, "portcullis-signed-url").
    pub fn new(secret: &Secret) -> UrlSigner {
        UrlSigner {
            key: secret.derive("portcullis-signed-url"),
        }
    }

    fn mac(&self, canonical: &str) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
        mac.update(canonical.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// Returns `url` signed, valid from `now_unix` for `ttl_secs`. Any signing parameters
    /// already in `url` are removed first; the fragment is dropped.
    pub fn sign(&self, url: &Url, now_unix: i64, ttl_secs: i64) -> Url {
        let mut signed = url.clone();
        signed.set_fragment(None);
        let kept: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(k, _)| !is_signing_param(k))
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let had_signing_params = kept.len() != url.query_pairs().count();
        if had_signing_params {
            signed.set_query(None);
            if !kept.is_empty() {
                signed.query_pairs_mut().extend_pairs(kept);
            }
        }
        signed
            .query_pairs_mut()
            .append_pair(ISSUED_PARAM, &now_unix.to_string())
            .append_pair(EXPIRY_PARAM, &now_unix.saturating_add(ttl_secs).to_string());
        let sig = b64url(&self.mac(signed.as_str()));
        signed.query_pairs_mut().append_pair(SIGNATURE_PARAM, &sig);
        signed
    }

    /// Verifies a URL made by [`UrlSigner::sign`] at `now_unix`: the signature (compared in
    /// constant time) over everything before it, exactly one issue and expiry parameter,
    /// not expired, not issued more than [`MAX_CLOCK_SKEW_SECS`] in the future.
    pub fn verify(&self, url: &Url, now_unix: i64) -> Result<(), AuthError> {
        let query = url
            .query()
            .ok_or(AuthError::MalformedSignedUrl("no query"))?;
        let (prefix, last) = match query.rsplit_once('&') {
            Some((prefix, last)) => (Some(prefix), last),
            None => (None, query),
        };
        let (last_key, sig) = form_pair(last);
        if last_key != SIGNATURE_PARAM {
            return Err(AuthError::MalformedSignedUrl("signature must come last"));
        }
        let mut counts = [0usize; 3];
        let mut issued = None;
        let mut expiry = None;
        for (k, v) in url.query_pairs() {
            match k.as_ref() {
                ISSUED_PARAM => {
                    counts[0] += 1;
                    issued = v.parse::<i64>().ok();
                }
                EXPIRY_PARAM => {
                    counts[1] += 1;
                    expiry = v.parse::<i64>().ok();
                }
                SIGNATURE_PARAM => counts[2] += 1,
                _ => {}
            }
        }
        if counts != [1, 1, 1] {
            return Err(AuthError::MalformedSignedUrl(
                "signing parameters missing or repeated",
            ));
        }

        let mut canonical = url.clone();
        canonical.set_fragment(None);
        canonical.set_query(prefix);
        let expected = self.mac(canonical.as_str());
        let given = b64url_decode(&sig).ok_or(AuthError::InvalidSignature)?;
        if !bool::from(given.as_slice().ct_eq(&expected[..])) {
            return Err(AuthError::InvalidSignature);
        }

        let issued = issued.ok_or(AuthError::MalformedSignedUrl("bad issue time"))?;
        let expiry = expiry.ok_or(AuthError::MalformedSignedUrl("bad expiry time"))?;
        if now_unix >= expiry {
            return Err(AuthError::Expired);
        }
        if issued > now_unix.saturating_add(MAX_CLOCK_SKEW_SECS) {
            return Err(AuthError::NotYetValid);
        }
        Ok(())
    }
}

impl std::fmt::Debug for UrlSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UrlSigner(..)")
    }
}

fn is_signing_param(key: &str) -> bool {
    matches!(key, ISSUED_PARAM | EXPIRY_PARAM | SIGNATURE_PARAM)
}

/// Decodes one raw `key=value` query segment.
fn form_pair(segment: &str) -> (String, String) {
    url::form_urlencoded::parse(segment.as_bytes())
        .next()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
