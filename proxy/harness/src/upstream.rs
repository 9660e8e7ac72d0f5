//! A recording HTTP upstream (hyper 1) on 127.0.0.1: HTTP/1.1 and cleartext HTTP/2 (h2c, by
//! prior knowledge) on one port, optionally behind TLS (and mTLS).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::rustls;

use crate::LOOPBACK;

/// Builds the answer to one recorded request.
pub type Responder = Arc<dyn Fn(&RecordedRequest) -> Response<Vec<u8>> + Send + Sync>;

/// One request as the upstream received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedRequest {
    /// `GET`, `POST`, ...
    pub method: String,
    /// Path and query, as on the request line.
    pub uri: String,
    /// Every header in order, names lower-cased, duplicates kept.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The TCP peer (the proxy's side of the upstream connection).
    pub peer: SocketAddr,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub version: String,
}

/// Configures an [`Upstream`] before it starts.
#[must_use]
pub struct UpstreamBuilder {
    delay: Option<Duration>,
    status: StatusCode,
    port: u16,
    responder: Option<Responder>,
    tls: Option<(String, String)>,
    client_ca: Option<String>,
}

/// A running upstream; stops when dropped.
pub struct Upstream {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<RecordedRequest>>>,
    task: JoinHandle<()>,
}

// === impl RecordedRequest ===

impl RecordedRequest {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name` (any case), in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .filter(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The path without the query.
    pub fn path(&self) -> &str {
        self.uri.split('?').next().unwrap_or("")
    }

    /// The echo the default responder answers with.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "method": self.method,
            "path": self.uri,
            "headers": self.headers,
            "body": String::from_utf8_lossy(&self.body),
        })
    }
}

// === impl UpstreamBuilder ===

impl UpstreamBuilder {
    /// Waits this long before answering each request (to provoke the proxy's upstream timeout).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// Status of the default echo answer (200 unless set).
    pub fn status(mut self, status: u16) -> Self {
        self.status = StatusCode::from_u16(status).expect("valid status code");
        self
    }

    /// Listens on this fixed port instead of an ephemeral one (the demo uses 9001).
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Answers with `f` instead of the JSON echo.
    pub fn respond_with(
        mut self,
        f: impl Fn(&RecordedRequest) -> Response<Vec<u8>> + Send + Sync + 'static,
    ) -> Self {
        self.responder = Some(Arc::new(f));
        self
    }

    /// Serves TLS with this PEM certificate chain and PEM key (see [`crate::TestCa`]).
    pub fn tls(mut self, cert_pem: &str, key_pem: &str) -> Self {
        self.tls = Some((cert_pem.to_owned(), key_pem.to_owned()));
        self
    }

    /// With [`UpstreamBuilder::tls`]: requires a client certificate signed by this PEM CA
    /// (mutual TLS); a handshake without one fails.
    pub fn client_ca(mut self, ca_pem: &str) -> Self {
        self.client_ca = Some(ca_pem.to_owned());
        self
    }

    /// Binds and starts serving. Panics if the port cannot be bound.
    pub async fn start(self) -> Upstream {
        let listener = TcpListener::bind(SocketAddr::from((LOOPBACK, self.port)))
            .await
            .unwrap_or_else(|e| panic!("upstream: bind 127.0.0.1:{}: {e}", self.port));
        let addr = listener.local_addr().expect("local_addr");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let status = self.status;
        let responder: Responder = self.responder.unwrap_or_else(|| {
            Arc::new(move |req: &RecordedRequest| {
                let mut resp = Response::new(serde_json::to_vec(&req.to_json()).unwrap());
                *resp.status_mut() = status;
                resp.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                resp
            })
        });
        let state = Arc::new(State {
            requests: requests.clone(),
            delay: self.delay,
            responder,
        });
        let tls = self
            .tls
            .as_ref()
            .map(|(c, k)| tls_acceptor(c, k, self.client_ca.as_deref()));
        let task = tokio::spawn(accept_loop(listener, state, tls));
        Upstream {
            addr,
            requests,
            task,
        }
    }
}

struct State {
    requests: Arc<Mutex<Vec<RecordedRequest>>>,
    delay: Option<Duration>,
    responder: Responder,
}

fn tls_acceptor(
    cert_pem: &str,
    key_pem: &str,
    client_ca: Option<&str>,
) -> tokio_rustls::TlsAcceptor {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<_> = rustls_pemfile::certs(&mut cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("upstream: certificate PEM");
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .expect("upstream: key PEM")
        .expect("upstream: a private key");
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("upstream: TLS versions");
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in rustls_pemfile::certs(&mut ca.as_bytes()) {
                roots
                    .add(c.expect("upstream: CA PEM"))
                    .expect("upstream: CA");
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .expect("upstream: client verifier");
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .expect("upstream: certificate and key");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

async fn accept_loop(
    listener: TcpListener,
    state: Arc<State>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    // Connections live in this set, so aborting the accept task (on drop) ends them too.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, peer)) = accepted else { continue };
                let state = state.clone();
                let tls = tls.clone();
                connections.spawn(async move {
                    let service = service_fn(move |req| handle(req, peer, state.clone()));
                    let mut builder = auto::Builder::new(TokioExecutor::new());
                    // More header fields than the proxy lets through (hyper's default is 100,
                    // and the proxy adds its forwarding headers to a client's 100).
                    builder.http1().max_headers(256);
                    match tls {
                        Some(acceptor) => {
                            let Ok(stream) = acceptor.accept(stream).await else { return };
                            let _ = builder
                                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                                .await;
                        }
                        None => {
                            let _ = builder
                                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                                .await;
                        }
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn handle(
    req: Request<Incoming>,
    peer: SocketAddr,
    state: Arc<State>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    let recorded = RecordedRequest {
        method: parts.method.to_string(),
        uri: parts
            .uri
            .path_and_query()
            .map(|pq| pq.as_str().to_owned())
            .unwrap_or_else(|| parts.uri.to_string()),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body,
        peer,
        version: format!("{:?}", parts.version),
    };
    state
        .requests
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(recorded.clone());
    if let Some(delay) = state.delay {
        tokio::time::sleep(delay).await;
    }
    let (parts, body) = (state.responder)(&recorded).into_parts();
    Ok(Response::from_parts(parts, Full::new(Bytes::from(body))))
}

// === impl Upstream ===

impl Upstream {
    /// An upstream that echoes every request as JSON, answering at once.
    pub async fn start() -> Upstream {
        Upstream::builder().start().await
    }

    pub fn builder() -> UpstreamBuilder {
        UpstreamBuilder {
            delay: None,
            status: StatusCode::OK,
            port: 0,
            responder: None,
            tls: None,
            client_ca: None,
        }
    }

    /// `http://127.0.0.1:PORT` (use [`Upstream::port`] to build `https://` or `h2c://` URLs).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The latest request received.
    pub fn last(&self) -> Option<RecordedRequest> {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last()
            .cloned()
    }

    /// Forgets the requests received so far.
    pub fn clear(&self) {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("addr", &self.addr)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> reqwest::Client {
        reqwest::Client::builder().no_proxy().build().unwrap()
    }

    #[tokio::test]
    async fn records_and_echoes() {
        let up = Upstream::start().await;
        let resp = client()
            .post(format!("{}/a/b?c=d", up.url()))
            .header("X-Thing", "1")
            .header("x-thing", "2")
            .body("hello")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers()["content-type"].to_str().unwrap(),
            "application/json"
        );
        let echo: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(echo["method"], "POST");
        assert_eq!(echo["path"], "/a/b?c=d");

        let last = up.last().unwrap();
        assert_eq!(last.method, "POST");
        assert_eq!(last.uri, "/a/b?c=d");
        assert_eq!(last.path(), "/a/b");
        assert_eq!(last.header_all("X-THING"), vec!["1", "2"]);
        assert_eq!(last.body, b"hello");
        assert_eq!(up.requests().len(), 1);
        up.clear();
        assert!(up.last().is_none());
    }

    #[tokio::test]
    async fn delays_and_custom_status() {
        let up = Upstream::builder()
            .delay(Duration::from_millis(300))
            .status(418)
            .start()
            .await;
        let t = std::time::Instant::now();
        let resp = client().get(up.url()).send().await.unwrap();
        assert_eq!(resp.status(), 418);
        assert!(t.elapsed() >= Duration::from_millis(300));
    }

    #[tokio::test]
    async fn custom_responder() {
        let up = Upstream::builder()
            .respond_with(|req| Response::new(format!("you asked {}", req.uri).into_bytes()))
            .start()
            .await;
        let body = client()
            .get(format!("{}/x", up.url()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(body, "you asked /x");
    }
}
