//! `--cold`: throughput of a proxy that starts in front of many existing sessions.
//!
//! With the sessions seeded (100,000 by default), the proxy process is stopped and started
//! again (an empty session cache; the databroker keeps the sessions), and as soon as it reports
//! ready it is loaded closed loop with random seeded cookies. Requests/s are counted second by
//! second over the cold window; then every seeded cookie is presented once (so every session is
//! cached, as in a steady state) and the warm rate is measured the same way. The verdict: the
//! first second's rate is at least half of the warm rate.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::load::{self, Mode, Progress, Target};

/// The first second must reach this share of the warm rate.
pub const TARGET_RATIO: f64 = 0.5;

#[derive(Serialize, Debug)]
pub struct ColdReport {
    pub sessions: usize,
    pub connections: usize,
    /// The `portcullis` binary of the restarted proxy.
    pub binary: String,
    /// From the restarted proxy's spawn until `/readyz` answered 200.
    pub ready_after_secs: f64,
    /// Requests/s in each second of the cold window, from the moment it was ready.
    pub per_second: Vec<u64>,
    pub cold_window_rps: f64,
    pub cold_window_errors: u64,
    pub warm_rps: f64,
    pub warm_errors: u64,
    /// First second ÷ warm.
    pub first_second_ratio: f64,
    /// Slowest second of the cold window ÷ warm.
    pub slowest_second_ratio: f64,
    /// The restarted proxy's session cache after the cold window (from `/metrics`).
    pub cache_hits: Option<f64>,
    pub cache_misses: Option<f64>,
    pub preloaded: Option<f64>,
    /// Identity JWTs signed while a request of the cold window waited (a session's first
    /// request on a route host signs one; warm, they are cached).
    pub cold_window_signatures_on_request_path: Option<u64>,
    /// The restarted proxy's VmRSS when it became ready, MiB.
    pub rss_when_ready_mib: f64,
}

/// Runs `target` closed loop for `window`, counting the requests answered in each second.
pub async fn per_second(
    target: &Target,
    connections: usize,
    window: Duration,
    label: &str,
) -> (load::Outcome, Vec<u64>) {
    let progress = Arc::new(Progress::default());
    let seconds = window.as_secs().max(1) as usize;
    let sampler = {
        let progress = progress.clone();
        let label = label.to_owned();
        tokio::spawn(async move {
            let mut counts = Vec::with_capacity(seconds);
            let mut last = 0;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            for second in 1..=seconds {
                tick.tick().await;
                let done = progress.done.load(Ordering::Relaxed);
                counts.push(done - last);
                eprint!("\r{label}: second {second}: {:>8} req/s      ", done - last);
                last = done;
            }
            counts
        })
    };
    let outcome = load::run(
        target,
        Mode::Closed,
        connections,
        window,
        Some(crate::cap(window)),
        progress,
    )
    .await;
    let counts = sampler.await.unwrap_or_default();
    eprintln!();
    (outcome, counts)
}

impl ColdReport {
    pub fn met(&self) -> bool {
        self.first_second_ratio >= TARGET_RATIO
    }

    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "\nCold start: {} seeded sessions, {} connections, closed loop, random cookies",
            self.sessions, self.connections
        );
        let _ = writeln!(
            s,
            "restarted proxy ready {:.2} s after its spawn (RSS {:.1} MiB); binary {}",
            self.ready_after_secs, self.rss_when_ready_mib, self.binary
        );
        let _ = writeln!(s, "{:>6} {:>9} {:>7}", "second", "req/s", "×warm");
        for (i, n) in self.per_second.iter().enumerate() {
            let _ = writeln!(
                s,
                "{:>6} {:>9} {:>7.2}",
                i + 1,
                n,
                *n as f64 / self.warm_rps.max(1e-9)
            );
        }
        let _ = writeln!(
            s,
            "cold window {:.0} req/s ({} errors); warm {:.0} req/s ({} errors)",
            self.cold_window_rps, self.cold_window_errors, self.warm_rps, self.warm_errors
        );
        let show = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0}"));
        let _ = writeln!(
            s,
            "session cache after the cold window: {} preloaded, {} hits, {} misses",
            show(self.preloaded),
            show(self.cache_hits),
            show(self.cache_misses)
        );
        let _ = writeln!(
            s,
            "identity JWTs signed on the request path in the cold window: {}",
            self.cold_window_signatures_on_request_path
                .map_or("-".to_owned(), |n| n.to_string())
        );
        let _ = writeln!(
            s,
            "first second ÷ warm {:.2}, slowest second ÷ warm {:.2}; target ≥ {TARGET_RATIO}: {}",
            self.first_second_ratio,
            self.slowest_second_ratio,
            if self.met() { "MET" } else { "MISSED" }
        );
        s
    }

    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }
}
