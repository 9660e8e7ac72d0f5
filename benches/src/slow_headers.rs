//! `--slow-headers N`: normal traffic beside N connections that trickle a request head, one
//! byte every few seconds, and never finish it (a slowloris).
//!
//! Three phases against the same proxy, each `rounds` closed-loop runs of the authorized
//! scenario: before the slow clients, with all N of them held open, and after they are gone.
//! Each slow client reconnects as soon as it is cut, so the pressure stays at N for the whole
//! middle phase, and the phase lasts at least `request_header_timeout` plus a margin so that
//! every first-generation slow connection meets the deadline. Reported: the normal requests'
//! latency in each phase and the p99 ratio (with ÷ without), when each slow connection was cut
//! (counted from its connect), how many outlived the deadline, and the proxy's RSS and open file
//! descriptors before, at the peak, and after.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::procstat::{open_fds, rss_mib};
use crate::report::RoundResult;
use crate::Scenario;

/// The proxy's default `request_header_timeout`: the bench runs it unchanged.
pub const HEAD_DEADLINE: Duration = Duration::from_secs(30);
/// A connection still open this long after its deadline counts as not cut.
const GRACE: Duration = Duration::from_secs(3);

/// How the run is shaped.
pub struct Plan {
    pub slow: usize,
    /// Time between two bytes of a slow head.
    pub trickle: Duration,
    pub rounds: usize,
    pub connections: usize,
    pub duration: Duration,
}

#[derive(Serialize, Debug)]
pub struct Phase {
    pub name: &'static str,
    pub rounds: Vec<RoundResult>,
}

#[derive(Serialize, Debug, Default)]
pub struct Cuts {
    /// Slow connections opened (first ones and reconnections).
    pub opened: u64,
    /// Slow connections the proxy closed.
    pub cut: u64,
    /// Of those, how many the proxy answered with something before closing (it should not).
    pub answered: u64,
    /// Slow connections that were still open `GRACE` after their deadline.
    pub outlived_deadline: u64,
    /// Connect failures (the client could not even open a socket).
    pub connect_errors: u64,
    /// Most slow connections held open at one time.
    pub peak_held: u64,
    /// Seconds from connect to cut: min, median, p99, max.
    pub cut_after_s: [f64; 4],
}

#[derive(Serialize, Debug, Default)]
pub struct Resources {
    pub rss_before_mib: f64,
    pub rss_peak_mib: f64,
    pub rss_after_mib: f64,
    pub fds_before: u64,
    pub fds_peak: u64,
    pub fds_after: u64,
}

#[derive(Serialize, Debug)]
pub struct SlowReport {
    pub slow_connections: usize,
    pub trickle_secs: f64,
    pub head_deadline_secs: f64,
    pub phases: Vec<Phase>,
    pub cuts: Cuts,
    pub resources: Resources,
}

/// Shared counters of the slow clients.
#[derive(Default)]
struct SlowState {
    stop: AtomicBool,
    held: AtomicU64,
    peak_held: AtomicU64,
    opened: AtomicU64,
    cut: AtomicU64,
    answered: AtomicU64,
    outlived: AtomicU64,
    connect_errors: AtomicU64,
    /// Milliseconds from connect to cut.
    cut_after: Mutex<Vec<u64>>,
}

/// Runs the three phases; `measure` is the harness's one-run function.
pub async fn run<F, Fut>(
    scenario: &Scenario,
    proxy_pid: u32,
    plan: &Plan,
    measure: F,
) -> Result<SlowReport, String>
where
    F: Fn(&'static str, usize) -> Fut,
    Fut: std::future::Future<Output = RoundResult>,
{
    let mut resources = Resources {
        rss_before_mib: rss_mib(proxy_pid),
        fds_before: open_fds(proxy_pid),
        ..Resources::default()
    };
    let mut phases = Vec::new();

    let mut before = Phase {
        name: "before",
        rounds: Vec::new(),
    };
    for round in 1..=plan.rounds {
        before.rounds.push(measure("before", round).await);
    }
    phases.push(before);

    let state = Arc::new(SlowState::default());
    let sampler = sample(proxy_pid, state.clone());
    let host = scenario.target.host.to_str().map_err(|e| e.to_string())?;
    let head = format!("GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: slow-headers\r\nX-Slow: ");
    let head: Arc<[u8]> = head.into_bytes().into();
    let mut clients = Vec::with_capacity(plan.slow);
    let ramp_start = Instant::now();
    for i in 0..plan.slow {
        clients.push(tokio::spawn(slow_client(
            scenario.target.addr,
            head.clone(),
            plan.trickle,
            state.clone(),
        )));
        // Open them over about a second, not in one burst that the listen backlog would drop.
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    while state.held.load(Ordering::Relaxed) < plan.slow as u64
        && ramp_start.elapsed() < Duration::from_secs(20)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "{} slow connections held after {:.1} s",
        state.held.load(Ordering::Relaxed),
        ramp_start.elapsed().as_secs_f64()
    );
    let held_since = Instant::now();
    let mut with = Phase {
        name: "with slow clients",
        rounds: Vec::new(),
    };
    for round in 1..=plan.rounds {
        with.rounds.push(measure("with slow clients", round).await);
    }
    // Hold on until the first generation has met its deadline, so every cut is seen.
    let until = ramp_start + HEAD_DEADLINE + GRACE + Duration::from_secs(2);
    while Instant::now() < until {
        eprint!(
            "\rwaiting for the deadline: held {}, cut {} ({:.0} s)      ",
            state.held.load(Ordering::Relaxed),
            state.cut.load(Ordering::Relaxed),
            held_since.elapsed().as_secs_f64()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    eprintln!();
    phases.push(with);
    state.stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }
    let (rss_peak, fds_peak) = sampler.await.unwrap_or((0.0, 0));
    resources.rss_peak_mib = rss_peak;
    resources.fds_peak = fds_peak;
    // Let the proxy notice the closed sockets before the last phase.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut after = Phase {
        name: "after",
        rounds: Vec::new(),
    };
    for round in 1..=plan.rounds {
        after.rounds.push(measure("after", round).await);
    }
    phases.push(after);
    resources.rss_after_mib = rss_mib(proxy_pid);
    resources.fds_after = open_fds(proxy_pid);

    let cuts = cuts(&state);
    Ok(SlowReport {
        slow_connections: plan.slow,
        trickle_secs: plan.trickle.as_secs_f64(),
        head_deadline_secs: HEAD_DEADLINE.as_secs_f64(),
        phases,
        cuts,
        resources,
    })
}

/// One slow client: connect, send the head's start, then one byte every `trickle`, until the
/// proxy closes the connection; then again, until told to stop.
async fn slow_client(addr: SocketAddr, head: Arc<[u8]>, trickle: Duration, state: Arc<SlowState>) {
    // Only loopback: the harness never sends traffic anywhere else.
    if !addr.ip().is_loopback() {
        return;
    }
    while !state.stop.load(Ordering::Relaxed) {
        let Ok(mut stream) = TcpStream::connect(addr).await else {
            state.connect_errors.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let connected = Instant::now();
        state.opened.fetch_add(1, Ordering::Relaxed);
        let held = state.held.fetch_add(1, Ordering::Relaxed) + 1;
        state.peak_held.fetch_max(held, Ordering::Relaxed);
        let mut outlived = false;
        let mut sent = 0usize;
        let mut buf = [0u8; 512];
        let outcome = loop {
            // The first write carries the request line; then one byte at a time.
            let chunk: &[u8] = if sent == 0 { &head } else { b"a" };
            if stream.write_all(chunk).await.is_err() {
                break Some(false);
            }
            sent += chunk.len();
            match tokio::time::timeout(trickle, stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break Some(false),
                Ok(Ok(_)) => break Some(true),
                Err(_) => {}
            }
            if !outlived && connected.elapsed() > HEAD_DEADLINE + GRACE {
                outlived = true;
                state.outlived.fetch_add(1, Ordering::Relaxed);
            }
            if state.stop.load(Ordering::Relaxed) {
                break None;
            }
        };
        state.held.fetch_sub(1, Ordering::Relaxed);
        if let Some(answered) = outcome {
            state.cut.fetch_add(1, Ordering::Relaxed);
            if answered {
                state.answered.fetch_add(1, Ordering::Relaxed);
            }
            let ms = connected.elapsed().as_millis() as u64;
            if let Ok(mut v) = state.cut_after.lock() {
                v.push(ms);
            }
        }
    }
}

/// Samples the proxy's RSS and open descriptors every 250 ms until the slow clients stop;
/// returns the peaks.
fn sample(pid: u32, state: Arc<SlowState>) -> tokio::task::JoinHandle<(f64, u64)> {
    tokio::spawn(async move {
        let (mut rss, mut fds) = (0.0f64, 0u64);
        while !state.stop.load(Ordering::Relaxed) {
            rss = rss.max(rss_mib(pid));
            fds = fds.max(open_fds(pid));
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        (rss, fds)
    })
}

fn cuts(state: &SlowState) -> Cuts {
    let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000, 3)
        .unwrap_or_else(|_| unreachable!("valid histogram bounds"));
    if let Ok(v) = state.cut_after.lock() {
        for ms in v.iter() {
            let _ = h.record((*ms).max(1));
        }
    }
    let s = |ms: u64| ms as f64 / 1000.0;
    Cuts {
        opened: state.opened.load(Ordering::Relaxed),
        cut: state.cut.load(Ordering::Relaxed),
        answered: state.answered.load(Ordering::Relaxed),
        outlived_deadline: state.outlived.load(Ordering::Relaxed),
        connect_errors: state.connect_errors.load(Ordering::Relaxed),
        peak_held: state.peak_held.load(Ordering::Relaxed),
        cut_after_s: match h.is_empty() {
            true => [0.0; 4],
            false => [
                s(h.min()),
                s(h.value_at_quantile(0.5)),
                s(h.value_at_quantile(0.99)),
                s(h.max()),
            ],
        },
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

impl SlowReport {
    fn phase_median(&self, name: &str, f: impl Fn(&RoundResult) -> f64) -> f64 {
        self.phases
            .iter()
            .find(|p| p.name == name)
            .map_or(0.0, |p| median(p.rounds.iter().map(f).collect()))
    }

    /// The p99 of normal requests with the slow clients, over the p99 before them.
    pub fn p99_ratio(&self) -> f64 {
        let before = self.phase_median("before", |r| r.p99_us as f64);
        let with = self.phase_median("with slow clients", |r| r.p99_us as f64);
        with / before.max(1.0)
    }

    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "\nSlow headers: {} connections trickling one byte every {:.0} s, head deadline {:.0} s; normal traffic = portcullis-auth, medians across rounds",
            self.slow_connections, self.trickle_secs, self.head_deadline_secs
        );
        let _ = writeln!(
            s,
            "{:<20} {:>9} {:>8} {:>8} {:>8} {:>8} {:>7}",
            "phase", "req/s", "p50 ms", "p90", "p99", "p99.9", "errors"
        );
        for p in &self.phases {
            let m = |f: &dyn Fn(&RoundResult) -> f64| median(p.rounds.iter().map(f).collect());
            let errors: u64 = p.rounds.iter().map(|r| r.errors).sum();
            let _ = writeln!(
                s,
                "{:<20} {:>9.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>7}",
                p.name,
                m(&|r| r.rps),
                m(&|r| r.p50_us as f64) / 1000.0,
                m(&|r| r.p90_us as f64) / 1000.0,
                m(&|r| r.p99_us as f64) / 1000.0,
                m(&|r| r.p999_us as f64) / 1000.0,
                errors
            );
        }
        let c = &self.cuts;
        let _ = writeln!(
            s,
            "\nslow connections: opened {}, peak held {}, cut {} (answered first: {}), outlived the deadline by {:.0} s: {}, connect errors {}",
            c.opened, c.peak_held, c.cut, c.answered, GRACE.as_secs_f64(), c.outlived_deadline, c.connect_errors
        );
        let _ = writeln!(
            s,
            "cut after (s from connect): min {:.1}, median {:.1}, p99 {:.1}, max {:.1}",
            c.cut_after_s[0], c.cut_after_s[1], c.cut_after_s[2], c.cut_after_s[3]
        );
        let r = &self.resources;
        let _ = writeln!(
            s,
            "proxy RSS MiB: before {:.1}, peak {:.1}, after {:.1}; open fds: before {}, peak {}, after {}",
            r.rss_before_mib, r.rss_peak_mib, r.rss_after_mib, r.fds_before, r.fds_peak, r.fds_after
        );
        let ratio = self.p99_ratio();
        let _ = writeln!(
            s,
            "target: normal p99 with ÷ without slow clients ≤ 2.0: {ratio:.2} {}; every slow connection cut at the deadline: {}",
            if ratio <= 2.0 { "MET" } else { "MISSED" },
            if c.outlived_deadline == 0 && c.answered == 0 && c.cut > 0 { "MET" } else { "MISSED" }
        );
        s
    }

    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }
}
