//! TLS for the HTTPS scenarios: one self-signed certificate with an ECDSA P-256 key for the
//! bench hosts, given to Portcullis and nginx alike, and the load client's rustls setup.
//!
//! The client offers TLS 1.2 and 1.3 and ALPN `http/1.1`, and never resumes a session: each new
//! connection is a full handshake. It trusts exactly the bench's certificate (pinned: the server
//! must present these very bytes) and checks the server's handshake signature with it, so every
//! handshake proves the key; it skips the generic chain building a root store would do, which
//! costs the client CPU the servers under test share and adds nothing when the one certificate
//! is known byte for byte.

use std::path::PathBuf;
use std::sync::Arc;

use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::client::Resumption;
use tokio_rustls::rustls::crypto::WebPkiSupportedAlgorithms;
use tokio_rustls::rustls::crypto::{ring, verify_tls12_signature, verify_tls13_signature};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{version, ClientConfig, DigitallySignedStruct, Error, SignatureScheme};

/// The certificate and key files, in a temp dir removed when this is dropped.
pub struct BenchCert {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    der: CertificateDer<'static>,
    _dir: tempfile::TempDir,
}

impl BenchCert {
    /// A fresh self-signed certificate for `names`, ECDSA P-256 with SHA-256.
    pub fn generate(names: &[&str]) -> Result<Self, String> {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| format!("TLS key: {e}"))?;
        let cert = rcgen::CertificateParams::new(names)
            .and_then(|p| p.self_signed(&key))
            .map_err(|e| format!("TLS certificate: {e}"))?;
        let dir = tempfile::Builder::new()
            .prefix("bench-tls-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let cert_file = dir.path().join("cert.pem");
        let key_file = dir.path().join("key.pem");
        std::fs::write(&cert_file, cert.pem()).map_err(|e| e.to_string())?;
        std::fs::write(&key_file, key.serialize_pem()).map_err(|e| e.to_string())?;
        Ok(Self {
            cert_file,
            key_file,
            der: cert.der().clone(),
            _dir: dir,
        })
    }

    /// The load client's configuration; see the module docs.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, String> {
        let provider = Arc::new(ring::default_provider());
        let verifier = Pinned {
            der: self.der.clone(),
            algorithms: provider.signature_verification_algorithms,
        };
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&version::TLS12, &version::TLS13])
            .map_err(|e| format!("TLS client: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        config.resumption = Resumption::disabled();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// Accepts the one certificate `der` and verifies handshake signatures against it.
#[derive(Debug)]
struct Pinned {
    der: CertificateDer<'static>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        if end_entity.as_ref() == self.der.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(Error::General(
                "the server did not present the bench's certificate".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
