//! Load generation: N keep-alive HTTP/1.1 connections (hyper 1 client), closed loop or open
//! loop at a fixed rate. Latency goes into an HDR histogram in microseconds. In the open loop
//! each request has an intended send time on a fixed schedule, and its latency is measured from
//! that time, not from when it could actually be sent: a stalled server is charged for the
//! requests that queued behind the stall (no coordinated omission).

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
}

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

async fn connect(addr: SocketAddr) -> Result<Sender, String> {
    // Only loopback: the harness never sends traffic anywhere else.
    if !addr.ip().is_loopback() {
        return Err(format!("refusing non-loopback address {addr}"));
    }
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
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
    let s = match sender {
        Some(s) if !s.is_closed() => s,
        _ => sender.insert(connect(target.addr).await?),
    };
    s.ready().await.map_err(|e| format!("ready: {e}"))?;
    let mut req = Request::get(target.path)
        .header(http::header::HOST, target.host.clone())
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    if !target.cookies.is_empty() {
        let n = target.cookies.len();
        let i = match turn {
            Some(t) => (t % n as u64) as usize,
            None => rng.gen_range(0..n),
        };
        let c = &target.cookies[i];
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
