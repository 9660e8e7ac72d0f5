//! The 32-byte secrets from the configuration (`shared_secret`, `cookie_secret`).
//!
//! A secret is never used directly as a key: every use derives its own sub-key with
//! HKDF-SHA256 and a purpose label, so a key for cookies can never verify a signed URL.

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;
use hkdf::Hkdf;
use rand::RngCore as _;
use sha2::Sha256;

use crate::AuthError;

/// A 32-byte secret. Its `Debug` output never shows the bytes.
#[derive(Clone)]
pub struct Secret([u8; 32]);

// === impl Secret ===

impl Secret {
    /// Parses base64 (standard or URL-safe alphabet, padded or not) of exactly 32 bytes.
    /// Surrounding whitespace is ignored.
    pub fn from_base64(encoded: &str) -> Result<Secret, AuthError> {
        let s = encoded.trim();
        if s.is_empty() {
            return Err(AuthError::InvalidSecret("empty"));
        }
        let bytes = [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
            .iter()
            .find_map(|engine| engine.decode(s).ok())
            .ok_or(AuthError::InvalidSecret("not base64"))?;
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| AuthError::InvalidSecret("must decode to exactly 32 bytes"))?;
        Ok(Secret(arr))
    }

    /// A fresh random secret from the OS CSPRNG (tests, development).
    pub fn random() -> Secret {
        let mut arr = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut arr);
        Secret(arr)
    }

    /// Builds a secret from raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Secret {
        Secret(bytes)
    }

    /// Derives a 32-byte sub-key for `purpose` (HKDF-SHA256, no salt, info = purpose).
    pub fn derive(&self, purpose: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        // 32 bytes is far below HKDF-SHA256's 8160-byte output limit, so expand cannot fail.
        let _ = Hkdf::<Sha256>::new(None, &self.0).expand(purpose.as_bytes(), &mut out);
        out
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_all_base64_flavours() {
        let bytes: Vec<u8> = (0u8..32)
            .map(|b| b.wrapping_mul(37).wrapping_add(250))
            .collect();
        for engine in [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD] {
            let s = Secret::from_base64(&engine.encode(&bytes)).unwrap();
            assert_eq!(&s.0[..], &bytes[..]);
        }
        let padded = format!("  {}\n", STANDARD.encode(&bytes));
        assert!(Secret::from_base64(&padded).is_ok());
    }

    #[test]
    fn rejects_wrong_lengths_and_garbage() {
        assert!(Secret::from_base64("").is_err());
        assert!(Secret::from_base64("not base64!!").is_err());
        assert!(Secret::from_base64(&STANDARD.encode([0u8; 31])).is_err());
        assert!(Secret::from_base64(&STANDARD.encode([0u8; 33])).is_err());
        assert!(Secret::from_base64(&STANDARD.encode([0u8; 64])).is_err());
    }

    #[test]
    fn derive_is_deterministic_and_purpose_bound() {
        let s = Secret::from_bytes([7; 32]);
        assert_eq!(s.derive("a"), s.derive("a"));
        assert_ne!(s.derive("a"), s.derive("b"));
        assert_ne!(s.derive("a"), Secret::from_bytes([8; 32]).derive("a"));
        assert_ne!(Secret::random().derive("a"), Secret::random().derive("a"));
    }

    #[test]
    fn debug_hides_bytes() {
        assert_eq!(format!("{:?}", Secret::from_bytes([1; 32])), "Secret(..)");
    }
}
