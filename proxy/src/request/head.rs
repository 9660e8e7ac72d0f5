//! The connection's start and the HTTP/1 request head, read under the hostile-client limits
//! before Pingora parses it.
//!
//! Pingora bounds each read of a head (60 s) but not the whole head, so a client that sends one
//! byte at a time keeps its connection; and it accepts heads up to 1 MiB. [`GuardedProxy`] runs
//! Pingora's HTTP/1 connection loop itself and reads every head first: the whole head must
//! arrive within `request_header_timeout` (counted from the connection's start, or on a reused
//! connection from the request's first byte), or the connection is closed unanswered; a head
//! larger than `max_request_header_bytes` or with more than `max_request_headers` fields gets
//! 431. The head read is then handed to Pingora as the session's first bytes, with
//! `request_body_idle_timeout` as its read timeout (Pingora's is 60 s). A kept-alive connection
//! waits `timeout_idle` for its next request. HTTP/2 connections go to Pingora unchanged.
//!
//! Before the first head, on the same deadline, come the PROXY protocol header
//! ([`crate::proxy_protocol`]) and the TLS handshake ([`crate::tls`]): the listener is plain
//! TCP to Pingora.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora::listeners::tls::Acceptor;
use pingora::protocols::http::v1::server::HttpSession as HttpSessionV1;
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{Stream, ALPN};
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{timeout, timeout_at, Instant};
use tracing::debug;

use crate::config::{Forwarding, RequestHeadLimits};
use crate::proxy_protocol::{self, Header};
use crate::service::Proxy;
use crate::state::State;
use crate::tls;

/// The answer to a head over the size limit; the connection is closed after it.
const TOO_LARGE: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\n\
content-type: text/plain; charset=utf-8\r\ncontent-length: 32\r\nconnection: close\r\n\r\n\
Request header fields too large\n";

/// The proxy service's application: Pingora's proxy behind the request-head limits.
pub struct GuardedProxy {
    inner: Arc<HttpProxy<Proxy>>,
    /// The limits come from the configuration in force when each head starts.
    state: Arc<State>,
    /// The listener's TLS, unless `insecure_server`.
    tls: Option<Acceptor>,
}

impl GuardedProxy {
    pub fn new(inner: HttpProxy<Proxy>, state: Arc<State>, tls: Option<Acceptor>) -> Self {
        Self {
            inner: Arc::new(inner),
            state,
            tls,
        }
    }

    /// The connection up to its first request, by `deadline`: the PROXY protocol header (with
    /// `use_proxy_protocol`), then the TLS handshake. `None` when the connection is to be
    /// closed.
    async fn open(
        &self,
        stream: Stream,
        deadline: Instant,
        forwarding: &Forwarding,
    ) -> Option<Stream> {
        if self.tls.is_none() && !forwarding.use_proxy_protocol {
            return Some(stream);
        }
        // The listener is TCP: its connections are Pingora's L4 streams.
        let mut l4 = match stream.into_any().downcast::<L4Stream>() {
            Ok(l4) => *l4,
            Err(_) => return None,
        };
        if forwarding.use_proxy_protocol {
            let peer = proxy_protocol::peer_ip(&l4);
            let Some(header) = proxy_protocol::read_header(&mut l4, deadline).await else {
                debug!(
                    ?peer,
                    "no valid PROXY protocol header in time: connection closed"
                );
                return None;
            };
            // From a peer outside `trusted_proxies` the header is read, but not believed.
            if let (Header::Proxied(client), true) = (header, forwarding.trusts(peer)) {
                proxy_protocol::set_client(&mut l4, client);
            }
        }
        let Some(acceptor) = &self.tls else {
            return Some(Box::new(l4));
        };
        let failures = &self.state.metrics.tls_handshake_failures;
        tls::handshake(acceptor, l4, deadline, failures).await
    }
}

#[async_trait]
impl ServerApp for GuardedProxy {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // Everything up to the first head's last byte is due by one deadline.
        let runtime = self.state.runtime.load_full();
        let first = Instant::now() + runtime.config.request_head.timeout;
        let opened = self.open(stream, first, &runtime.config.forwarding).await;
        drop(runtime);
        let mut stream = opened?;
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            return ServerApp::process_new(&self.inner, stream, shutdown).await;
        }
        // Pingora's HTTP/1 loop (`ServerApp for HttpServerApp`), with each head read here first.
        let mut reused: Option<Option<HttpPersistentSettings>> = None;
        loop {
            let (limits, idle, body_idle) = {
                let runtime = self.state.runtime.load();
                let c = &runtime.config;
                (c.request_head, c.timeout_idle, c.request_body_idle_timeout)
            };
            let deadline = reused.is_none().then_some(first);
            let head = match read_head(&mut stream, limits, deadline, idle).await {
                Head::Complete(head) => head,
                Head::TooLarge => {
                    refuse_too_large(stream).await;
                    return None;
                }
                Head::Closed => return None,
            };
            let mut h1 = HttpSessionV1::new(stream);
            h1.set_pipelined_prefix(head);
            // Each wait for the body's next bytes; a websocket's lives by its route's
            // `idle_timeout` once upgraded (`crate::service`).
            h1.set_read_timeout(Some(body_idle));
            let mut session = ServerSession::H1(h1);
            match reused {
                Some(Some(settings)) => settings.apply_to_session(&mut session),
                Some(None) => {}
                None if *shutdown.borrow() => session.set_keepalive(None),
                // Whole seconds, at least one: Pingora reads 0 as "no limit".
                None => session.set_keepalive(Some(idle.as_secs().max(1))),
            }
            let (next, settings) = self
                .inner
                .process_new_http(session, shutdown)
                .await?
                .consume();
            stream = next;
            reused = Some(settings);
        }
    }

    async fn cleanup(&self) {
        self.inner.http_cleanup().await;
    }
}

/// Answers 431 and closes. What the client still sends is read and dropped for a moment
/// first: closing a socket with unread bytes resets the connection, and the client could lose
/// the answer.
async fn refuse_too_large(mut stream: Stream) {
    if timeout(LINGER, stream.write_all(TOO_LARGE)).await.is_err() {
        return;
    }
    let _ = timeout(LINGER, stream.shutdown()).await;
    let deadline = Instant::now() + LINGER;
    let mut sink = [0u8; 4096];
    while let Ok(Ok(n)) = timeout_at(deadline, stream.read(&mut sink)).await {
        if n == 0 {
            break;
        }
    }
}

/// How long a refused client's remaining bytes are read and dropped.
const LINGER: Duration = Duration::from_secs(1);

/// What came of reading one request head.
enum Head {
    /// Every byte read so far: the whole head, perhaps followed by the start of the body.
    Complete(BytesMut),
    TooLarge,
    /// The client closed, sent nothing in time, or did not finish the head in time.
    Closed,
}

/// Reads a request head; it is due by `deadline` when one is given (a connection's first
/// request), else within `request_header_timeout` of its first byte, which may take `idle` to
/// come.
async fn read_head(
    stream: &mut Stream,
    limits: RequestHeadLimits,
    mut deadline: Option<Instant>,
    idle: Duration,
) -> Head {
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        let read = match deadline {
            Some(at) => timeout_at(at, stream.read_buf(&mut buf)).await,
            None => timeout(idle, stream.read_buf(&mut buf)).await,
        };
        match read {
            Ok(Ok(n)) if n > 0 => {}
            _ => return Head::Closed,
        }
        deadline.get_or_insert_with(|| Instant::now() + limits.timeout);
        match head_bounds(&buf) {
            Some(head) if head.len() > limits.max_bytes => return Head::TooLarge,
            Some(head) if field_count(&buf[head.clone()]) > limits.max_headers => {
                return Head::TooLarge
            }
            Some(_) => return Head::Complete(buf),
            None if buf.len() <= limits.max_bytes => buf.reserve(4096),
            None => return Head::TooLarge,
        }
    }
}

/// The number of header fields in a whole head: its lines but the request line and the
/// closing empty one.
fn field_count(head: &[u8]) -> usize {
    memchr::memchr_iter(b'\n', head).count().saturating_sub(2)
}

/// Where the head at the start of `buf` lies (blank lines before it not counted), once its
/// closing empty line has arrived.
fn head_bounds(buf: &[u8]) -> Option<Range<usize>> {
    let start = buf
        .iter()
        .position(|b| *b != b'\r' && *b != b'\n')
        .unwrap_or(buf.len());
    let head = &buf[start..];
    // The first line feed that ends an empty line: `\n\n`, or `\r\n\r\n` (a line feed after a
    // carriage return, followed by a CRLF). Line feeds are found by memchr, a word or a vector at
    // a time: this runs on every request head.
    let end = memchr::memchr_iter(b'\n', head).find_map(|i| match head.get(i + 1..) {
        Some([b'\n', ..]) => Some(i + 2),
        Some([b'\r', b'\n', ..]) if i > 0 && head[i - 1] == b'\r' => Some(i + 3),
        _ => None,
    })?;
    Some(start..start + end)
}

#[cfg(test)]
mod tests {
    use super::{field_count, head_bounds};

    fn head_len(buf: &[u8]) -> Option<usize> {
        head_bounds(buf).map(|head| head.len())
    }

    #[test]
    fn a_head_ends_at_its_first_empty_line() {
        assert_eq!(head_len(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody"), Some(27));
        assert_eq!(head_len(b"\r\n\r\nGET / HTTP/1.1\r\n\r\n"), Some(18));
        assert_eq!(head_len(b"GET / HTTP/1.1\nHost: a\n\n"), Some(24));
        assert_eq!(head_len(b"GET / HTTP/1.1\r\nHost: a\r\n"), None);
        assert_eq!(head_len(b"\r\n\r\n"), None);
        assert_eq!(head_bounds(b"\r\nGET / HTTP/1.1\r\n\r\n"), Some(2..20));
    }

    #[test]
    fn header_fields_are_the_lines_between_request_line_and_end() {
        assert_eq!(field_count(b"GET / HTTP/1.1\r\n\r\n"), 0);
        assert_eq!(field_count(b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n\r\n"), 2);
        assert_eq!(field_count(b"GET / HTTP/1.1\nHost: a\n\n"), 1);
    }

    /// The plain definition: the earliest of the first `\n\n` and the first `\r\n\r\n`.
    fn head_bounds_by_definition(buf: &[u8]) -> Option<std::ops::Range<usize>> {
        let start = buf
            .iter()
            .position(|b| *b != b'\r' && *b != b'\n')
            .unwrap_or(buf.len());
        let head = &buf[start..];
        let lf_lf = head.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
        let crlf_crlf = head
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|i| i + 4);
        let end = lf_lf.into_iter().chain(crlf_crlf).min()?;
        Some(start..start + end)
    }

    #[test]
    fn the_head_ends_where_the_definition_says_for_every_short_input() {
        // Every string of up to 9 bytes over CR, LF and one other byte: 29,524 of them.
        let alphabet = [b'\r', b'\n', b'a'];
        let mut checked = 0;
        for len in 0..=9u32 {
            for mut n in 0..3usize.pow(len) {
                let buf: Vec<u8> = (0..len)
                    .map(|_| {
                        let b = alphabet[n % 3];
                        n /= 3;
                        b
                    })
                    .collect();
                assert_eq!(
                    head_bounds(&buf),
                    head_bounds_by_definition(&buf),
                    "{:?}",
                    String::from_utf8_lossy(&buf)
                );
                checked += 1;
            }
        }
        assert_eq!(checked, 29_524);
    }
}
