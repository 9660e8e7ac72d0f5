//! AES-256-GCM sealing for cookies and tokens.
//!
//! A sealed token is `base64url(nonce || ciphertext || tag)` with a random 96-bit nonce. The
//! purpose string is the associated data, so a token sealed for one purpose (a login-state
//! cookie) never opens as another (a session cookie), even under the same key.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::RngCore as _;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{b64url, b64url_decode, AuthError, Secret};

const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Tokens longer than this are refused before decoding: no cookie is that big.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Seals and opens purpose-bound tokens with a key derived from a [`Secret`].
#[derive(Clone)]
pub struct Cipher {
    aead: Aes256Gcm,
}

// === impl Cipher ===

impl Cipher {
    /// A cipher keyed by HKDF(`secret`, "portcullis-cookie-cipher").
    pub fn new(secret: &Secret) -> Cipher {
        let key = secret.derive("portcullis-cookie-cipher");
        Cipher {
            aead: Aes256Gcm::new(&key.into()),
        }
    }

    /// Encrypts and authenticates `plaintext`, binding it to `purpose`.
    pub fn seal(&self, purpose: &[u8], plaintext: &[u8]) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let payload = Payload {
            msg: plaintext,
            aad: purpose,
        };
        // AES-GCM only fails for plaintexts over 64 GiB; an empty token then simply never opens.
        let ct = self
            .aead
            .encrypt(&Nonce::from(nonce), payload)
            .unwrap_or_default();
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        b64url(&out)
    }

    /// Decrypts a token sealed for `purpose`; `None` for anything tampered, truncated,
    /// sealed for another purpose or under another key, or not a token at all.
    pub fn open(&self, purpose: &[u8], token: &str) -> Option<Vec<u8>> {
        if token.len() > MAX_TOKEN_LEN {
            return None;
        }
        let raw = b64url_decode(token)?;
        if raw.len() < NONCE_LEN + TAG_LEN {
            return None;
        }
        let (nonce, ct) = raw.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
        self.aead
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: ct,
                    aad: purpose,
                },
            )
            .ok()
    }

    /// Seals the JSON encoding of `value`.
    pub fn seal_json<T: Serialize>(&self, purpose: &[u8], value: &T) -> Result<String, AuthError> {
        let json =
            serde_json::to_vec(value).map_err(|e| AuthError::Serialization(e.to_string()))?;
        Ok(self.seal(purpose, &json))
    }

    /// Opens a token sealed by [`Cipher::seal_json`]; `None` if it does not open or parse.
    pub fn open_json<T: DeserializeOwned>(&self, purpose: &[u8], token: &str) -> Option<T> {
        let json = self.open(purpose, token)?;
        serde_json::from_slice(&json).ok()
    }
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cipher(..)")
    }
}

#[cfg(test)]
mod tests;
