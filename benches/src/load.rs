//! Load generation: N keep-alive HTTP/1.1 connections (hyper 1 client), closed loop or open
//! loop at a fixed rate. Latency goes into an HDR histogram in microseconds. In the open loop
//! each request has an intended send time on a fixed schedule, and its latency is measured from
//! that time, not from when it could actually be sent: a stalled server is charged for the
//! requests that queued behind the stall (no coordinated omission).
//!
//! Over TLS ([`crate::tls`]) the same, each connection's handshake first; or, for the handshake
//! scenarios, a new connection (a full handshake) for every request, which asks the server to
//! close it (`Connection: close`) and reads to its end.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{HeaderValue, Request};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use rand::{Rng as _, SeedableRng as _};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::TlsConnector;

/// What one request looks like.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub host: HeaderValue,
    pub path: &'static str,
    /// `Cookie` header values; one is picked at random per request (none: no cookie).
    pub cookies: Arc<Vec<HeaderValue>>,
    /// The status every answer must have; anything else counts as an error.
    pub expect: u16,
    /// TLS to the target, or plain TCP.
    pub tls: Option<Tls>,
    /// A new connection for every request (with `tls`, a full handshake each), rather than
    /// keep-alive.
    pub fresh: bool,
}

/// The client side of TLS: the configuration and the name sent as SNI.
#[derive(Clone)]
pub struct Tls {
    pub config: Arc<ClientConfig>,
    pub server_name: ServerName<'static>,
}

/// How long a request on a new connection may take, handshake included.
const FRESH_TIMEOUT: Duration = Duration::from_secs(10);

/// The most a new connection's answer may hold.
const FRESH_MAX_ANSWER: usize = 64 * 1024;

/// How to drive the load.
#[derive(Clone, Copy, Debug)]
pub enum Mode {
    /// Each connection sends its next request as soon as the previous answer is in.
    Closed,
    /// This many requests per second in all, spread evenly over the connections.
    Open { rate: f64 },
}

/// The outcome of one run.
pub struct Outcome {
    pub requests: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub histogram: Histogram<u64>,
    /// The first few error descriptions, for the report.
    pub error_samples: Vec<String>,
}

/// Counters the progress line reads while a run goes.
#[derive(Default)]
pub struct Progress {
    pub done: AtomicU64,
}

pub fn new_histogram() -> Histogram<u64> {
    // 1 µs .. 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap_or_else(|e| panic!("histogram: {e}"))
}

/// Runs `connections` connections against `target` for `duration` (and at most `max_requests`
/// requests in all, when set), then returns what was measured.
///
/// With `max_requests` set, cookies are taken in turn rather than at random, so a warm-up of
/// `cookies.len()` requests presents every cookie exactly once.
pub async fn run(
    target: &Target,
    mode: Mode,
    connections: usize,
    duration: Duration,
    max_requests: Option<u64>,
    progress: Arc<Progress>,
) -> Outcome {
    let start = Instant::now();
    let deadline = start + duration;
    let stop = Arc::new(AtomicBool::new(false));
    let budget = Arc::new(AtomicU64::new(max_requests.unwrap_or(u64::MAX)));
    let mut tasks = Vec::with_capacity(connections);
    for index in 0..connections {
        let target = target.clone();
        let stop = stop.clone();
        let budget = budget.clone();
        let progress = progress.clone();
        let schedule = match mode {
            Mode::Closed => None,
            Mode::Open { rate } => {
                let interval = Duration::from_secs_f64(connections as f64 / rate.max(1.0));
                // Stagger the connections over one interval.
                let offset = interval.mul_f64(index as f64 / connections as f64);
                Some((start + offset, interval))
            }
        };
        tasks.push(tokio::spawn(async move {
            connection(target, schedule, deadline, stop, budget, progress).await
        }));
    }
    let mut out = Outcome {
        requests: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        histogram: new_histogram(),
        error_samples: Vec::new(),
    };
    for t in tasks {
        match t.await {
            Ok(c) => {
                out.requests += c.requests;
                out.errors += c.errors;
                let _ = out.histogram.add(&c.histogram);
                for s in c.error_samples {
                    if out.error_samples.len() < 5 {
                        out.error_samples.push(s);
                    }
                }
            }
            Err(e) => {
                out.errors += 1;
                out.error_samples.push(format!("load task: {e}"));
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    out.elapsed = start.elapsed();
    out
}

struct ConnOutcome {
    requests: u64,
    errors: u64,
    histogram: Histogram<u64>,
    error_samples: Vec<String>,
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn tcp(addr: SocketAddr) -> Result<TcpStream, String> {
    // Only loopback: the harness never sends traffic anywhere else.
    if !addr.ip().is_loopback() {
        return Err(format!("refusing non-loopback address {addr}"));
    }
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

async fn tls_handshake(
    tls: &Tls,
    stream: TcpStream,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    TlsConnector::from(tls.config.clone())
        .connect(tls.server_name.clone(), stream)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))
}

/// What one handshake with `target` agrees on (version, cipher suite, key exchange group), for
/// the log; `None` without TLS.
pub async fn negotiated(target: &Target) -> Result<Option<String>, String> {
    let Some(tls) = &target.tls else {
        return Ok(None);
    };
    let stream = tls_handshake(tls, tcp(target.addr).await?).await?;
    let (_, conn) = stream.get_ref();
    let name = |s: Option<String>| s.unwrap_or_else(|| "-".into());
    Ok(Some(format!(
        "{} {} {}",
        name(conn.protocol_version().map(|v| format!("{v:?}"))),
        name(
            conn.negotiated_cipher_suite()
                .map(|s| format!("{:?}", s.suite()))
        ),
        name(
            conn.negotiated_key_exchange_group()
                .map(|g| format!("{:?}", g.name()))
        ),
    )))
}

async fn connect(target: &Target) -> Result<Sender, String> {
    let stream = tcp(target.addr).await?;
    match &target.tls {
        Some(tls) => http1(tls_handshake(tls, stream).await?).await,
        None => http1(stream).await,
    }
}

async fn http1<S>(stream: S) -> Result<Sender, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

async fn connection(
    target: Target,
    schedule: Option<(Instant, Duration)>,
    deadline: Instant,
    stop: Arc<AtomicBool>,
    budget: Arc<AtomicU64>,
    progress: Arc<Progress>,
) -> ConnOutcome {
    let mut out = ConnOutcome {
        requests: 0,
        errors: 0,
        histogram: new_histogram(),
        error_samples: Vec::new(),
    };
    let mut sender: Option<Sender> = None;
    let mut next_send = schedule.map(|(first, _)| first);
    let mut rng = rand::rngs::StdRng::from_entropy();
    loop {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        // The intended send time (open loop) or now (closed loop).
        let intended = match (next_send, schedule) {
            (Some(at), Some((_, interval))) => {
                if at >= deadline {
                    break;
                }
                next_send = Some(at + interval);
                let now = Instant::now();
                if at > now {
                    tokio::time::sleep_until(at.into()).await;
                }
                at
            }
            _ => {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                now
            }
        };
        let Ok(left) =
            budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(1))
        else {
            break;
        };
        // A bounded run numbers its requests (`left - 1` counts down to 0): cookie by cookie.
        let turn = (left != u64::MAX).then(|| left - 1);
        let result = one_request(&target, &mut sender, &mut rng, turn).await;
        let latency = intended.elapsed();
        out.requests += 1;
        progress.done.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(()) => {
                let us = u64::try_from(latency.as_micros())
                    .unwrap_or(u64::MAX)
                    .max(1);
                let _ = out.histogram.record(us.min(60_000_000));
            }
            Err(e) => {
                out.errors += 1;
                if out.error_samples.len() < 3 {
                    out.error_samples.push(e);
                }
                sender = None;
                // Do not spin on a refused connection.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    out
}

async fn one_request(
    target: &Target,
    sender: &mut Option<Sender>,
    rng: &mut rand::rngs::StdRng,
    turn: Option<u64>,
) -> Result<(), String> {
    let cookie = (!target.cookies.is_empty()).then(|| {
        let n = target.cookies.len();
        let i = match turn {
            Some(t) => (t % n as u64) as usize,
            None => rng.gen_range(0..n),
        };
        &target.cookies[i]
    });
    if target.fresh {
        return tokio::time::timeout(FRESH_TIMEOUT, fresh_request(target, cookie))
            .await
            .map_err(|_| format!("no answer within {FRESH_TIMEOUT:?}"))?;
    }
    let s = match sender {
        Some(s) if !s.is_closed() => s,
        _ => sender.insert(connect(target).await?),
    };
    s.ready().await.map_err(|e| format!("ready: {e}"))?;
    let mut req = Request::get(target.path)
        .header(http::header::HOST, target.host.clone())
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    if let Some(c) = cookie {
        req.headers_mut().insert(http::header::COOKIE, c.clone());
    }
    let resp = s
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = resp.status().as_u16();
    let keep = !resp
        .headers()
        .get(http::header::CONNECTION)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
    resp.into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?;
    if !keep {
        *sender = None;
    }
    if status != target.expect {
        return Err(format!("status {status}, expected {}", target.expect));
    }
    Ok(())
}

/// One request on a new connection (and, with TLS, a full handshake).
async fn fresh_request(target: &Target, cookie: Option<&HeaderValue>) -> Result<(), String> {
    let stream = tcp(target.addr).await?;
    match &target.tls {
        Some(tls) => exchange(tls_handshake(tls, stream).await?, target, cookie).await,
        None => exchange(stream, target, cookie).await,
    }
}

/// Sends the request with `Connection: close` and reads the answer up to the server's close.
/// Waiting for that close leaves the closed connection's TIME_WAIT on the server's side, not on
/// the client's ephemeral ports, at thousands of connections a second.
async fn exchange<S>(
    mut stream: S,
    target: &Target,
    cookie: Option<&HeaderValue>,
) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(b"GET ");
    head.extend_from_slice(target.path.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    head.extend_from_slice(target.host.as_bytes());
    head.extend_from_slice(b"\r\nconnection: close\r\n");
    if let Some(c) = cookie {
        head.extend_from_slice(b"cookie: ");
        head.extend_from_slice(c.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    stream
        .write_all(&head)
        .await
        .map_err(|e| format!("write: {e}"))?;
    stream.flush().await.map_err(|e| format!("write: {e}"))?;
    let mut answer = Vec::with_capacity(1024);
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) if answer.len() + n <= FRESH_MAX_ANSWER => answer.extend_from_slice(&buf[..n]),
            Ok(_) => return Err(format!("answer over {FRESH_MAX_ANSWER} bytes")),
            // A TLS server may close without close_notify once it has answered.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !answer.is_empty() => break,
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    let status = answer
        .strip_prefix(b"HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| std::str::from_utf8(code).ok()?.parse::<u16>().ok())
        .ok_or_else(|| format!("no HTTP/1.1 status line in {} bytes", answer.len()))?;
    if !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        return Err("the connection closed before the end of the answer's head".into());
    }
    if status != target.expect {
        return Err(format!("status {status}, expected {}", target.expect));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(expect: u16) -> Target {
        Target {
            addr: SocketAddr::from(([127, 0, 0, 1], 1)),
            host: HeaderValue::from_static("public.localhost:1"),
            path: "/",
            cookies: Arc::new(Vec::new()),
            expect,
            tls: None,
            fresh: true,
        }
    }

    /// Runs `exchange` against a server that reads the request, writes `answer` and closes;
    /// returns the outcome and the request the server read.
    async fn against(answer: &'static [u8], expect: u16) -> (Result<(), String>, String) {
        let (client, mut server) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(async move {
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.ends_with(b"\r\n\r\n") {
                match server.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let _ = server.write_all(answer).await;
            String::from_utf8_lossy(&request).into_owned()
        });
        let cookie = HeaderValue::from_static("_portcullis=abc");
        let outcome = exchange(client, &target(expect), Some(&cookie)).await;
        (outcome, server.await.unwrap())
    }

    #[tokio::test]
    async fn a_new_connection_asks_the_server_to_close_and_reads_to_its_end() {
        let (outcome, request) =
            against(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", 200).await;
        assert_eq!(outcome, Ok(()));
        assert_eq!(
            request,
            "GET / HTTP/1.1\r\nhost: public.localhost:1\r\nconnection: close\r\ncookie: _portcullis=abc\r\n\r\n"
        );

        let (outcome, _) = against(b"HTTP/1.1 302 Found\r\n\r\n", 200).await;
        assert_eq!(outcome, Err("status 302, expected 200".into()));
        let (outcome, _) = against(b"HTTP/1.1 200 OK\r\ncontent-le", 200).await;
        assert!(outcome.is_err_and(|e| e.contains("before the end")));
        let (outcome, _) = against(b"", 200).await;
        assert!(outcome.is_err_and(|e| e.contains("no HTTP/1.1 status line")));
    }
}
