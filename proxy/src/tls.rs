//! Downstream TLS: certificates loaded once at start-up and chosen by SNI.

use std::path::PathBuf;
use std::sync::Arc;

use pingora::tls::sign::CertifiedKey;
use pingora::tls::{ClientHello, CryptoProvider, ResolvesServerCert};
use x509_parser::extensions::GeneralName;

/// Picks the certificate whose names match the client's SNI; the first one otherwise.
#[derive(Debug)]
pub struct SniResolver {
    /// (lowercase name or `*.suffix`, key), in configuration order.
    names: Vec<(String, Arc<CertifiedKey>)>,
    default: Arc<CertifiedKey>,
}

// === impl SniResolver ===

impl SniResolver {
    pub fn load(pairs: &[(PathBuf, PathBuf)]) -> Result<Self, String> {
        pingora::tls::install_default_crypto_provider();
        let provider = CryptoProvider::get_default()
            .ok_or_else(|| "no TLS crypto provider is installed".to_string())?;
        let mut names = Vec::new();
        let mut default = None;
        for (cert_path, key_path) in pairs {
            let certs = {
                let pem = std::fs::read(cert_path)
                    .map_err(|e| format!("{}: {e}", cert_path.display()))?;
                rustls_pemfile::certs(&mut pem.as_slice())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("{}: {e}", cert_path.display()))?
            };
            let Some(leaf) = certs.first() else {
                return Err(format!("{}: no certificate found", cert_path.display()));
            };
            let key = {
                let pem =
                    std::fs::read(key_path).map_err(|e| format!("{}: {e}", key_path.display()))?;
                rustls_pemfile::private_key(&mut pem.as_slice())
                    .map_err(|e| format!("{}: {e}", key_path.display()))?
                    .ok_or_else(|| format!("{}: no private key found", key_path.display()))?
            };
            let signing_key = provider
                .key_provider
                .load_private_key(key)
                .map_err(|e| format!("{}: {e}", key_path.display()))?;
            let leaf_names =
                dns_names(leaf.as_ref()).map_err(|e| format!("{}: {e}", cert_path.display()))?;
            let certified = Arc::new(CertifiedKey::new(certs, signing_key));
            for name in leaf_names {
                names.push((name, certified.clone()));
            }
            default.get_or_insert(certified);
        }
        let default = default.ok_or_else(|| "no certificate configured".to_string())?;
        Ok(Self { names, default })
    }

    fn find(&self, sni: &str) -> Option<&Arc<CertifiedKey>> {
        let sni = sni.trim_end_matches('.').to_ascii_lowercase();
        if let Some((_, k)) = self.names.iter().find(|(n, _)| *n == sni) {
            return Some(k);
        }
        let parent = sni.split_once('.').map(|(_, p)| p)?;
        self.names
            .iter()
            .find(|(n, _)| n.strip_prefix("*.") == Some(parent))
            .map(|(_, k)| k)
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            hello
                .server_name()
                .and_then(|sni| self.find(sni))
                .unwrap_or(&self.default)
                .clone(),
        )
    }
}

/// The DNS names (SAN, else CN) of a DER certificate, lowercase.
fn dns_names(der: &[u8]) -> Result<Vec<String>, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("invalid certificate: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(n) = name {
                names.push(n.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        for cn in cert.subject().iter_common_name() {
            if let Ok(cn) = cn.as_str() {
                names.push(cn.to_ascii_lowercase());
            }
        }
    }
    Ok(names)
}
