//! `--soak MINUTES`: the authorized scenario at half of its own closed-loop capacity for a long
//! time, sampling the proxy's RSS, to tell a leak from warm-up.
//!
//! First a short closed-loop run finds the capacity; then an open loop at half of it (or at
//! `--rate`, on a machine shared with other work) runs for the whole soak, in one-minute slices so that errors and latency are reported as they come.
//! RSS (VmRSS of the proxy process) is sampled every 5 s. The verdict: zero errors, and RSS
//! after the first minute stays within 5 MB (max − min). The series goes to JSON and to an SVG
//! plot beside it.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use plotters::prelude::*;
use serde::Serialize;

use crate::procstat::rss_mib;
use crate::report::RoundResult;

/// RSS after the first minute may move this much (max − min, MB = 10^6 bytes) and still be flat.
pub const FLAT_WITHIN_MB: f64 = 5.0;
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
const SLICE: Duration = Duration::from_secs(60);

#[derive(Serialize, Debug)]
pub struct SoakReport {
    pub minutes: f64,
    pub capacity_rps: f64,
    pub rate: f64,
    pub requests: u64,
    pub errors: u64,
    /// One entry per one-minute slice.
    pub slices: Vec<RoundResult>,
    /// (seconds since the soak began, VmRSS MiB).
    pub rss: Vec<(f64, f64)>,
    pub rss_after_first_minute_spread_mb: f64,
}

/// Runs the soak. `closed` measures capacity for a duration; `open` runs one open-loop slice
/// at a rate for a duration.
/// `rate`: the open loop's requests/s; `None`, half of the measured capacity.
pub async fn run<C, CF, O, OF>(
    pid: u32,
    minutes: f64,
    rate: Option<f64>,
    closed: C,
    open: O,
) -> Result<SoakReport, String>
where
    C: Fn(Duration) -> CF,
    CF: std::future::Future<Output = RoundResult>,
    O: Fn(f64, Duration, String) -> OF,
    OF: std::future::Future<Output = RoundResult>,
{
    let capacity = closed(Duration::from_secs(10)).await;
    if capacity.rps < 2.0 {
        return Err(format!(
            "capacity run: {:.0} req/s, {} errors",
            capacity.rps, capacity.errors
        ));
    }
    let rate = rate.unwrap_or((capacity.rps / 2.0).floor());
    let total = Duration::from_secs_f64(minutes * 60.0);
    eprintln!(
        "soak: capacity {:.0} req/s, soaking at {rate:.0} req/s for {minutes:.1} min",
        capacity.rps
    );

    let start = Instant::now();
    let sampler = tokio::spawn(async move {
        let mut series = Vec::new();
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        loop {
            tick.tick().await;
            series.push((start.elapsed().as_secs_f64(), rss_mib(pid)));
            if start.elapsed() >= total {
                return series;
            }
        }
    });
    let mut slices = Vec::new();
    while start.elapsed() + Duration::from_millis(500) < total {
        let left = total.saturating_sub(start.elapsed());
        let n = slices.len() + 1;
        let label = format!(
            "soak minute {n}/{:.0} at {rate:.0} req/s, RSS {:.1} MiB",
            minutes.ceil(),
            rss_mib(pid)
        );
        slices.push(open(rate, left.min(SLICE), label).await);
    }
    let rss = sampler.await.map_err(|e| format!("RSS sampler: {e}"))?;
    let after_first: Vec<f64> = rss
        .iter()
        .filter(|(t, _)| *t >= 60.0)
        .map(|(_, m)| *m)
        .collect();
    let spread_mib = match after_first.is_empty() {
        true => 0.0,
        false => {
            after_first.iter().copied().fold(f64::MIN, f64::max)
                - after_first.iter().copied().fold(f64::MAX, f64::min)
        }
    };
    Ok(SoakReport {
        minutes,
        capacity_rps: capacity.rps,
        rate,
        requests: slices.iter().map(|s| s.requests).sum(),
        errors: slices.iter().map(|s| s.errors).sum(),
        slices,
        rss,
        rss_after_first_minute_spread_mb: spread_mib * 1.048_576,
    })
}

impl SoakReport {
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "\nSoak: {:.1} min open loop at {:.0} req/s (half of {:.0}), portcullis-auth",
            self.minutes, self.rate, self.capacity_rps
        );
        let _ = writeln!(
            s,
            "{:>6} {:>9} {:>8} {:>8} {:>8} {:>7} {:>9}",
            "minute", "req/s", "p50 ms", "p99", "max", "errors", "RSS MiB"
        );
        for (i, sl) in self.slices.iter().enumerate() {
            let until = (i + 1) as f64 * SLICE.as_secs_f64();
            let rss = self
                .rss
                .iter()
                .take_while(|(t, _)| *t <= until)
                .last()
                .map_or(0.0, |(_, m)| *m);
            let _ = writeln!(
                s,
                "{:>6} {:>9.0} {:>8.2} {:>8.2} {:>8.2} {:>7} {:>9.1}",
                i + 1,
                sl.rps,
                sl.p50_us as f64 / 1000.0,
                sl.p99_us as f64 / 1000.0,
                sl.max_us as f64 / 1000.0,
                sl.errors,
                rss
            );
        }
        let flat = self.rss_after_first_minute_spread_mb <= FLAT_WITHIN_MB;
        let _ = writeln!(
            s,
            "requests {}, errors {}; RSS after the first minute moved {:.1} MB (max − min)",
            self.requests, self.errors, self.rss_after_first_minute_spread_mb
        );
        let _ = writeln!(
            s,
            "target: zero errors and RSS flat within {FLAT_WITHIN_MB} MB after the first minute: {}",
            if flat && self.errors == 0 {
                "MET"
            } else {
                "MISSED"
            }
        );
        s
    }

    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    /// RSS over time.
    pub fn plot(&self, path: &Path) -> Result<(), String> {
        let root = SVGBackend::new(path, (900, 450)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let max_t = self.rss.last().map_or(1.0, |(t, _)| t.max(1.0)) / 60.0;
        let (lo, hi) = self
            .rss
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), (_, m)| {
                (lo.min(*m), hi.max(*m))
            });
        let (lo, hi) = if lo > hi {
            (0.0, 1.0)
        } else {
            ((lo - 2.0).max(0.0), hi + 2.0)
        };
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("Proxy RSS during a soak at {:.0} req/s", self.rate),
                ("sans-serif", 20),
            )
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..max_t, lo..hi)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("minutes")
            .y_desc("VmRSS MiB")
            .draw()
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(LineSeries::new(
                self.rss.iter().map(|(t, m)| (t / 60.0, *m)),
                &RGBColor(31, 119, 180),
            ))
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())
    }
}
