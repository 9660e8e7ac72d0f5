//! Downstream TLS: certificates loaded once at start-up and chosen by SNI, and the listener's
//! handshake.
//!
//! The proxy listener is plain TCP to Pingora; [`crate::request::head::GuardedProxy`] runs the
//! handshake itself ([`handshake`]) with the [`acceptor`] built here, because Pingora's own TLS
//! settings let the client's order of cipher suites win and log every failed handshake at
//! ERROR.

use std::path::PathBuf;
use std::sync::Arc;

use pingora::listeners::tls::Acceptor;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{GetSocketDigest, Stream};
use pingora::tls::sign::CertifiedKey;
use pingora::tls::{version, ClientHello, CryptoProvider, ResolvesServerCert, ServerConfig};
use prometheus::IntCounter;
use tokio::time::{timeout_at, Instant};
use tracing::debug;
use x509_parser::extensions::GeneralName;

/// The target failed handshakes are logged under, at debug.
const LOG_TARGET: &str = "portcullis::tls";

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

/// The listener's TLS: versions 1.2 and 1.3, the certificate by SNI from `resolver`, ALPN `h2`
/// then `http/1.1`, and the cipher suite by the server's order of preference (rustls's: AES-256-GCM,
/// AES-128-GCM, then ChaCha20-Poly1305), not the client's.
pub fn acceptor(resolver: SniResolver) -> Result<Acceptor, String> {
    let provider = CryptoProvider::get_default()
        .ok_or_else(|| "no TLS crypto provider is installed".to_string())?
        .clone();
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&version::TLS12, &version::TLS13])
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.ignore_client_order = true;
    Ok(Acceptor::from_server_config(Arc::new(config)))
}

/// The TLS handshake on a new connection, done by `deadline`. One that fails or runs late is
/// counted in `failures` and logged at debug: a TLS scanner, or a plain-HTTP client on the
/// port, is no fault of the server's, and would otherwise fill the log.
pub async fn handshake(
    acceptor: &Acceptor,
    stream: L4Stream,
    deadline: Instant,
    failures: &IntCounter,
) -> Option<Stream> {
    let peer = stream
        .get_socket_digest()
        .and_then(|d| d.peer_addr().map(ToString::to_string))
        .unwrap_or_default();
    let error = match timeout_at(deadline, acceptor.tls_handshake(stream)).await {
        Ok(Ok(tls)) => return Some(Box::new(tls)),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "not done within request_header_timeout".to_string(),
    };
    failures.inc();
    debug!(target: LOG_TARGET, peer, error, "TLS handshake error");
    None
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
