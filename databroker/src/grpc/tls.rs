//! TLS on the databroker link (rustls with ring): [`ServerTls`] for a databroker,
//! [`ClientTls`] and [`endpoint`] for its clients.
//!
//! Both are checked when made, so that a key that does not match its certificate, an unusable
//! CA or a bad server name is a configuration error at start rather than a failed connection
//! later.

use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

use crate::Error;

/// How long a TLS handshake may take on either side before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A databroker's certificate and, when client certificates are required, the CA they must
/// chain to.
#[derive(Clone)]
pub struct ServerTls {
    config: ServerTlsConfig,
}

/// How a client verifies the databroker (and proves itself with a certificate, optionally).
#[derive(Clone, Default)]
pub struct ClientTls {
    ca_pem: Option<Vec<u8>>,
    server_name: Option<String>,
    identity: Option<Identity>,
}

// === impl ServerTls ===

impl ServerTls {
    /// From PEM: the certificate chain and its key; with `client_ca_pem`, every client must
    /// present a certificate that chains to one of its certificates.
    pub fn new(
        cert_pem: &[u8],
        key_pem: &[u8],
        client_ca_pem: Option<&[u8]>,
    ) -> Result<Self, Error> {
        let mut config = ServerTlsConfig::new()
            .identity(Identity::from_pem(cert_pem, key_pem))
            .ignore_client_order(true)
            .timeout(HANDSHAKE_TIMEOUT);
        if let Some(ca) = client_ca_pem {
            config = config.client_ca_root(Certificate::from_pem(ca));
        }
        // Building the acceptor checks the key against the certificate and the CA.
        tonic::transport::Server::builder()
            .tls_config(config.clone())
            .map_err(|e| Error::InvalidArgument(format!("gRPC TLS: {}", source_chain(&e))))?;
        Ok(Self { config })
    }

    pub(crate) fn config(&self) -> ServerTlsConfig {
        self.config.clone()
    }
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerTls(..)")
    }
}

// === impl ClientTls ===

impl ClientTls {
    /// Verifies the databroker against the system's root certificates and the URL's host.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts these PEM certificates instead of the system's.
    pub fn ca(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }

    /// Checks the databroker's certificate for this name instead of the URL's host.
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// Presents this PEM certificate chain and key to the databroker.
    pub fn identity(mut self, cert_pem: &[u8], key_pem: &[u8]) -> Self {
        self.identity = Some(Identity::from_pem(cert_pem, key_pem));
        self
    }

    fn config(&self) -> ClientTlsConfig {
        let mut config = ClientTlsConfig::new().timeout(HANDSHAKE_TIMEOUT);
        config = match &self.ca_pem {
            Some(pem) => config.ca_certificate(Certificate::from_pem(pem)),
            None => config.with_native_roots(),
        };
        if let Some(name) = &self.server_name {
            config = config.domain_name(name.clone());
        }
        if let Some(identity) = &self.identity {
            config = config.identity(identity.clone());
        }
        config
    }
}

impl std::fmt::Debug for ClientTls {
    // Not derived: the identity holds the private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("custom_ca", &self.ca_pem.is_some())
            .field("server_name", &self.server_name)
            .field("client_certificate", &self.identity.is_some())
            .finish()
    }
}

/// The channel settings for the databroker at `url`: `https://` with `tls` (the system roots
/// when `None`), or `http://` (plain HTTP/2, only when `tls` is `None`).
pub fn endpoint(url: &str, tls: Option<&ClientTls>) -> Result<Endpoint, Error> {
    let invalid = |e: &dyn std::error::Error| {
        Error::InvalidArgument(format!("databroker URL {url:?}: {}", source_chain(e)))
    };
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| invalid(&e))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    match (endpoint.uri().scheme_str(), tls) {
        (Some("https"), tls) => {
            let default = ClientTls::new();
            endpoint
                .tls_config(tls.unwrap_or(&default).config())
                .map_err(|e| invalid(&e))
        }
        (Some("http"), None) => Ok(endpoint),
        (Some("http"), Some(_)) => Err(Error::InvalidArgument(format!(
            "databroker URL {url:?}: TLS settings need an https:// URL"
        ))),
        _ => Err(Error::InvalidArgument(format!(
            "databroker URL {url:?}: expected http:// or https://"
        ))),
    }
}

/// An error and its sources on one line (tonic's transport errors say little at the top).
fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = s.source();
    }
    out
}
