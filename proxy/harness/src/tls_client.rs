//! A TLS client whose offer the test chooses: the cipher suites in its own order of preference,
//! the ALPN protocols, and bytes sent in the clear before the handshake (a PROXY protocol
//! header). It reports what the server agreed on, which a client library would hide.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::crypto::{ring, CryptoProvider};
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{ClientConfig, RootCertStore, SupportedProtocolVersion};
use tokio_rustls::TlsConnector;

use crate::LOOPBACK;

/// A TLS client for 127.0.0.1:`port`; see the module docs.
#[derive(Clone, Debug)]
pub struct TlsClient {
    port: u16,
    server_name: String,
    root_pem: Vec<u8>,
    suites: Vec<String>,
    alpn: Vec<Vec<u8>>,
    prefix: Vec<u8>,
}

/// What a handshake agreed on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// The cipher suite, by its rustls name (`TLS13_AES_128_GCM_SHA256`).
    pub suite: String,
    /// `TLSv1_2` or `TLSv1_3`.
    pub version: String,
    /// The ALPN protocol, if one was chosen.
    pub alpn: Option<String>,
}

// === impl TlsClient ===

impl TlsClient {
    /// A client for `server_name` (the SNI) trusting the PEM certificate `root_pem`, offering
    /// every suite rustls has (in its order) and no ALPN.
    pub fn new(port: u16, server_name: &str, root_pem: &[u8]) -> Self {
        Self {
            port,
            server_name: server_name.to_owned(),
            root_pem: root_pem.to_vec(),
            suites: Vec::new(),
            alpn: Vec::new(),
            prefix: Vec::new(),
        }
    }

    /// Offers only `suites` (rustls names), in this order of preference; the TLS versions
    /// offered are those of the suites.
    pub fn suites(mut self, suites: &[&str]) -> Self {
        self.suites = suites.iter().map(|s| (*s).to_owned()).collect();
        self
    }

    /// Offers these ALPN protocols (`h2`, `http/1.1`).
    pub fn alpn(mut self, protocols: &[&str]) -> Self {
        self.alpn = protocols.iter().map(|p| p.as_bytes().to_vec()).collect();
        self
    }

    /// Sends `bytes` in the clear on the new connection before the handshake.
    pub fn prefix(mut self, bytes: &[u8]) -> Self {
        self.prefix = bytes.to_vec();
        self
    }

    /// Connects and completes the handshake (10 s at most).
    pub async fn connect(&self) -> Result<(TlsStream<TcpStream>, Negotiated), String> {
        let config = self.config()?;
        let name = ServerName::try_from(self.server_name.clone())
            .map_err(|e| format!("server name {:?}: {e}", self.server_name))?;
        let handshake = async {
            let mut tcp = TcpStream::connect((LOOPBACK, self.port))
                .await
                .map_err(|e| format!("connect: {e}"))?;
            if !self.prefix.is_empty() {
                tcp.write_all(&self.prefix)
                    .await
                    .map_err(|e| format!("write the prefix: {e}"))?;
            }
            TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await
                .map_err(|e| format!("handshake: {e}"))
        };
        let stream = tokio::time::timeout(Duration::from_secs(10), handshake)
            .await
            .map_err(|_| "handshake: no answer in 10 s".to_owned())??;
        let conn = stream.get_ref().1;
        let negotiated = Negotiated {
            suite: conn
                .negotiated_cipher_suite()
                .map(|s| format!("{:?}", s.suite()))
                .unwrap_or_default(),
            version: conn
                .protocol_version()
                .map(|v| format!("{v:?}"))
                .unwrap_or_default(),
            alpn: conn
                .alpn_protocol()
                .map(|p| String::from_utf8_lossy(p).into_owned()),
        };
        Ok((stream, negotiated))
    }

    fn config(&self) -> Result<ClientConfig, String> {
        let mut roots = RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut self.root_pem.as_slice()) {
            let cert = cert.map_err(|e| format!("root certificate: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("root certificate: {e}"))?;
        }
        let mut provider = ring::default_provider();
        if !self.suites.is_empty() {
            let mut chosen = Vec::new();
            for name in &self.suites {
                let suite = ring::ALL_CIPHER_SUITES
                    .iter()
                    .find(|s| format!("{:?}", s.suite()) == *name)
                    .ok_or_else(|| format!("rustls has no cipher suite {name}"))?;
                chosen.push(*suite);
            }
            provider = CryptoProvider {
                cipher_suites: chosen,
                ..provider
            };
        }
        let mut versions: Vec<&'static SupportedProtocolVersion> = Vec::new();
        for suite in &provider.cipher_suites {
            let version = suite.version();
            if !versions.iter().any(|v| v.version == version.version) {
                versions.push(version);
            }
        }
        let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&versions)
            .map_err(|e| format!("client config: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = self.alpn.clone();
        Ok(config)
    }
}
