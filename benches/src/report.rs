//! What a run measured: per-round numbers, medians across rounds, the table and the JSON.

use std::fmt::Write as _;

use serde::Serialize;

use crate::load::Outcome;
use crate::Settings;

/// One closed-loop (or open-loop) run of one scenario.
#[derive(Serialize, Clone, Debug)]
pub struct RoundResult {
    pub requests: u64,
    pub errors: u64,
    pub seconds: f64,
    pub rps: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    /// CPU seconds of the process under test (and its children) during the run.
    pub cpu_seconds: Option<f64>,
    /// Peak RSS (VmHWM, summed over the process tree) so far, MiB.
    pub peak_rss_mib: Option<f64>,
    /// (percentile, µs) points of the latency distribution, for the plot.
    pub distribution: Vec<(f64, u64)>,
}

/// Every round of one scenario.
#[derive(Serialize, Debug)]
pub struct ScenarioResult {
    pub name: &'static str,
    pub about: &'static str,
    pub rounds: Vec<RoundResult>,
}

/// The open-loop run of one scenario.
#[derive(Serialize, Debug)]
pub struct OpenResult {
    pub name: &'static str,
    pub rate: f64,
    pub result: RoundResult,
}

#[derive(Serialize, Debug)]
pub struct Report {
    pub settings: Settings,
    pub skipped: Vec<String>,
    pub scenarios: Vec<ScenarioResult>,
    pub open_loop: Vec<OpenResult>,
    /// ES256 identity assertions signed while the rounds and the open loop ran (after the
    /// warm-up); 0 means no asymmetric crypto per steady-state request.
    pub identity_signatures_during_measurement: Option<crate::peers::Signatures>,
    pub machine_note: String,
}

/// Percentiles of the plotted distribution.
const PLOT_QUANTILES: [f64; 12] = [
    0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9995, 0.9999, 1.0,
];

// === impl RoundResult ===

impl RoundResult {
    pub fn new(o: &Outcome, cpu_seconds: Option<f64>, peak_rss_mib: Option<f64>) -> Self {
        let h = &o.histogram;
        let seconds = o.elapsed.as_secs_f64();
        let ok = !h.is_empty();
        let q = |x: f64| if ok { h.value_at_quantile(x) } else { 0 };
        RoundResult {
            requests: o.requests,
            errors: o.errors,
            seconds,
            rps: o.requests as f64 / seconds.max(1e-9),
            p50_us: q(0.5),
            p90_us: q(0.9),
            p99_us: q(0.99),
            p999_us: q(0.999),
            max_us: if ok { h.max() } else { 0 },
            cpu_seconds,
            peak_rss_mib,
            distribution: PLOT_QUANTILES.iter().map(|&p| (p * 100.0, q(p))).collect(),
        }
    }

    /// CPU seconds per 100k requests.
    pub fn cpu_per_100k(&self) -> Option<f64> {
        let cpu = self.cpu_seconds?;
        (self.requests > 0).then(|| cpu * 100_000.0 / self.requests as f64)
    }
}

// === impl ScenarioResult ===

impl ScenarioResult {
    pub fn new(name: &'static str, about: &'static str) -> Self {
        Self {
            name,
            about,
            rounds: Vec::new(),
        }
    }

    fn median_of(&self, f: impl Fn(&RoundResult) -> f64) -> f64 {
        median(self.rounds.iter().map(f).collect())
    }

    pub fn median_rps(&self) -> f64 {
        self.median_of(|r| r.rps)
    }

    /// The median across rounds of the CPU seconds per 100k requests, when measured.
    pub fn median_cpu_per_100k(&self) -> Option<f64> {
        let v: Vec<f64> = self
            .rounds
            .iter()
            .filter_map(RoundResult::cpu_per_100k)
            .collect();
        (!v.is_empty()).then(|| median(v))
    }

    /// (max − min) / median of the rounds' req/s, in percent.
    pub fn spread_pct(&self) -> f64 {
        let rps: Vec<f64> = self.rounds.iter().map(|r| r.rps).collect();
        let (lo, hi) = rps
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        let m = median(rps);
        if m > 0.0 {
            (hi - lo) / m * 100.0
        } else {
            0.0
        }
    }
}

/// `a`'s requests/s over `b`'s within each round: (median, min, max). The two ran seconds
/// apart, so a machine whose speed drifts from one round to the next moves both alike, which
/// the ratio of the medians across rounds does not undo. `None` with fewer than two rounds of
/// each.
fn round_by_round(a: &ScenarioResult, b: &ScenarioResult) -> Option<(f64, f64, f64)> {
    let ratios: Vec<f64> = a
        .rounds
        .iter()
        .zip(&b.rounds)
        .filter(|(_, b)| b.rps > 0.0)
        .map(|(a, b)| a.rps / b.rps)
        .collect();
    if ratios.len() < 2 {
        return None;
    }
    let min = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let max = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    Some((median(ratios), min, max))
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// A scenario name's transport suffix: `-tls` (keep-alive HTTPS), `-handshake` (HTTPS, a new
/// connection a request) or empty (plain HTTP).
fn transport(name: &str) -> &'static str {
    ["-tls", "-handshake"]
        .into_iter()
        .find(|k| name.ends_with(k))
        .unwrap_or("")
}

fn ms(us: f64) -> String {
    format!("{:.2}", us / 1000.0)
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}"))
        .unwrap_or_else(|| "-".into())
}

// === impl Report ===

impl Report {
    fn find(&self, name: &str) -> Option<&ScenarioResult> {
        self.scenarios.iter().find(|s| s.name == name)
    }

    /// `a`'s requests/s over `b`'s within each round, as "median (min–max)"; see
    /// [`round_by_round`].
    fn round_by_round(&self, a: &str, b: &str) -> Option<String> {
        let (median, min, max) = round_by_round(self.find(a)?, self.find(b)?)?;
        Some(format!("{median:.2} ({min:.2}–{max:.2})"))
    }

    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    /// The closed-loop table (medians across rounds), the open-loop table and the targets.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let auth_off = self
            .find("portcullis-public")
            .map(ScenarioResult::median_rps);
        let _ = writeln!(
            s,
            "\nClosed loop: {} connections, {} round(s) of {:.1} s, interleaved; medians across rounds",
            self.settings.connections, self.settings.rounds, self.settings.duration_secs
        );
        let _ = writeln!(
            s,
            "{:<20} {:>9} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>9} {:>8} {:>7} {:>9}",
            "scenario",
            "req/s",
            "spread",
            "p50 ms",
            "p90",
            "p99",
            "p99.9",
            "errors",
            "CPU s/100k",
            "RSS MiB",
            "×nginx",
            "×auth-off"
        );
        for sc in &self.scenarios {
            // Each against its own kind: plain HTTP, keep-alive TLS, or a handshake a request.
            let kind = transport(sc.name);
            let nginx = self
                .find(&format!("nginx{kind}"))
                .map(ScenarioResult::median_rps);
            let auth_off = auth_off.filter(|_| kind.is_empty());
            let rps = sc.median_rps();
            let errors: u64 = sc.rounds.iter().map(|r| r.errors).sum();
            let cpu = sc.median_cpu_per_100k();
            let rss = sc
                .rounds
                .iter()
                .filter_map(|r| r.peak_rss_mib)
                .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
            let ratio = |base: Option<f64>| {
                base.filter(|b| *b > 0.0)
                    .map(|b| format!("{:.2}", rps / b))
                    .unwrap_or_else(|| "-".into())
            };
            let _ = writeln!(
                s,
                "{:<20} {:>9.0} {:>6.1}% {:>7} {:>7} {:>7} {:>7} {:>7} {:>9} {:>8} {:>7} {:>9}",
                sc.name,
                rps,
                sc.spread_pct(),
                ms(sc.median_of(|r| r.p50_us as f64)),
                ms(sc.median_of(|r| r.p90_us as f64)),
                ms(sc.median_of(|r| r.p99_us as f64)),
                ms(sc.median_of(|r| r.p999_us as f64)),
                errors,
                opt(cpu, 2),
                opt(rss, 1),
                ratio(nginx),
                ratio(auth_off),
            );
        }
        if !self.open_loop.is_empty() {
            let _ = writeln!(
                s,
                "\nOpen loop at {:.0} req/s (latency from the intended send time, no coordinated omission)",
                self.open_loop[0].rate
            );
            let _ = writeln!(
                s,
                "{:<20} {:>9} {:>7} {:>7} {:>7} {:>7} {:>7}",
                "scenario", "achieved", "p50 ms", "p90", "p99", "p99.9", "errors"
            );
            for o in &self.open_loop {
                let r = &o.result;
                let _ = writeln!(
                    s,
                    "{:<20} {:>9.0} {:>7} {:>7} {:>7} {:>7} {:>7}",
                    o.name,
                    r.rps,
                    ms(r.p50_us as f64),
                    ms(r.p90_us as f64),
                    ms(r.p99_us as f64),
                    ms(r.p999_us as f64),
                    r.errors
                );
            }
        }
        let _ = writeln!(s, "\nTargets:");
        let auth = self.find("portcullis-auth").map(ScenarioResult::median_rps);
        // Target `n`: scenario `a`'s median requests/s over `b`'s, at least `goal` (no goal:
        // a ratio given for context, such as Pingora's own against nginx). The CPU
        // each spent per request is printed beside it: where the load generator and other work
        // share the CPUs, requests/s understate a difference that CPU per request shows.
        let ratio = |s: &mut String, n: &str, what: &str, a: &str, b: &str, goal: Option<f64>| {
            let (a_result, b_result) = (self.find(a), self.find(b));
            let value = match (a_result, b_result) {
                (Some(a), Some(b)) if b.median_rps() > 0.0 => Some(a.median_rps() / b.median_rps()),
                _ => None,
            };
            let cpu = match (
                a_result.and_then(ScenarioResult::median_cpu_per_100k),
                b_result.and_then(ScenarioResult::median_cpu_per_100k),
            ) {
                // CPU seconds per 100k requests × 10 = µs per request.
                (Some(x), Some(y)) if y > 0.0 => format!(
                    "; CPU per request {:.1} vs {:.1} µs ({:.2}×)",
                    x * 10.0,
                    y * 10.0,
                    x / y
                ),
                _ => String::new(),
            };
            let verdict = match goal {
                Some(goal) if value.is_some_and(|v| v >= goal) => format!(" (goal ≥ {goal}) MET"),
                Some(goal) => format!(" (goal ≥ {goal}) MISSED"),
                None => String::new(),
            };
            let _ = match value {
                Some(v) => writeln!(
                    s,
                    "  {n}. {what}: {v:.2}{verdict}{}{cpu}",
                    self.round_by_round(a, b)
                        .map(|r| format!("; round by round {r}"))
                        .unwrap_or_default()
                ),
                None => writeln!(s, "  {n}. {what}: not measured"),
            };
        };
        let target = |s: &mut String, n: u8, what: &str, a: &str, b: &str, goal: f64| {
            ratio(s, &n.to_string(), what, a, b, Some(goal))
        };
        let auth_name = "portcullis-auth";
        target(
            &mut s,
            1,
            "auth ÷ auth-off req/s",
            auth_name,
            "portcullis-public",
            0.95,
        );
        target(&mut s, 2, "auth ÷ nginx req/s", auth_name, "nginx", 1.0);
        // How much of that gap is Pingora's own: Pingora alone against nginx, and Portcullis
        // against Pingora alone; given only where both sides ran.
        let context = |s: &mut String, n: &str, what: &str, a: &str, b: &str| {
            if self.find(a).is_some() && self.find(b).is_some() {
                ratio(s, n, what, a, b, None);
            }
        };
        context(
            &mut s,
            "2a",
            "pingora-floor ÷ nginx req/s",
            "pingora-floor",
            "nginx",
        );
        context(
            &mut s,
            "2b",
            "auth ÷ pingora-floor req/s",
            auth_name,
            "pingora-floor",
        );
        context(
            &mut s,
            "2c",
            "public ÷ pingora-floor req/s",
            "portcullis-public",
            "pingora-floor",
        );
        target(
            &mut s,
            3,
            "auth ÷ apache-oidc req/s",
            auth_name,
            "apache-oidc",
            4.0,
        );
        let open = |name: &str| self.open_loop.iter().find(|o| o.name == name);
        match (open("portcullis-auth"), open("nginx")) {
            (Some(a), Some(n)) => {
                let (a, n) = (&a.result, &n.result);
                let _ = writeln!(
                    s,
                    "  4. open loop: p50 {} vs nginx {} ms (goal ≤ +0.05 ms) {}; p99 {} vs nginx {} ms (goal ≤ ×1.2) {}",
                    ms(a.p50_us as f64),
                    ms(n.p50_us as f64),
                    if a.p50_us <= n.p50_us + 50 { "MET" } else { "MISSED" },
                    ms(a.p99_us as f64),
                    ms(n.p99_us as f64),
                    if (a.p99_us as f64) <= n.p99_us as f64 * 1.2 { "MET" } else { "MISSED" },
                );
            }
            _ => {
                let _ = writeln!(s, "  4. open-loop latency vs nginx: not measured");
            }
        }
        // Only authorized requests ask for assertions: without them, nothing was measured.
        let _ = match self.identity_signatures_during_measurement {
            Some(n) if auth.is_some() => writeln!(
                s,
                "  5. ES256 signatures a request waited for during measurement: {} (goal 0) {}; renewed in the background: {}",
                n.on_request_path,
                if n.on_request_path == 0 { "MET" } else { "MISSED" },
                n.total.saturating_sub(n.on_request_path),
            ),
            _ => writeln!(s, "  5. ES256 signatures: not measured"),
        };
        target(
            &mut s,
            6,
            "HTTPS keep-alive: auth-tls ÷ nginx-tls req/s",
            "portcullis-auth-tls",
            "nginx-tls",
            0.85,
        );
        context(
            &mut s,
            "6a",
            "pingora-floor-tls ÷ nginx-tls req/s",
            "pingora-floor-tls",
            "nginx-tls",
        );
        context(
            &mut s,
            "6b",
            "auth-tls ÷ pingora-floor-tls req/s",
            "portcullis-auth-tls",
            "pingora-floor-tls",
        );
        target(
            &mut s,
            7,
            "HTTPS new connections: full handshakes/s ÷ nginx's",
            "portcullis-handshake",
            "nginx-handshake",
            1.0,
        );
        for line in &self.skipped {
            let _ = writeln!(s, "\n{line}");
        }
        let _ = writeln!(s, "\nNote: {}", self.machine_note);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(rps: &[f64]) -> ScenarioResult {
        let mut s = ScenarioResult::new("s", "");
        for &rps in rps {
            s.rounds.push(RoundResult {
                requests: 0,
                errors: 0,
                seconds: 1.0,
                rps,
                p50_us: 0,
                p90_us: 0,
                p99_us: 0,
                p999_us: 0,
                max_us: 0,
                cpu_seconds: None,
                peak_rss_mib: None,
                distribution: Vec::new(),
            });
        }
        s
    }

    #[test]
    fn round_by_round_pairs_each_round_with_its_own() {
        // The machine ran twice as fast now and then, changing speed within rounds too. In
        // rounds 1 and 4 both scenarios ran at one speed, and a made 0.9 of b; in rounds 2
        // and 3 only b ran fast, in round 5 only a. The medians across rounds say 90 / 200.
        let a = scenario(&[180.0, 90.0, 90.0, 90.0, 180.0]);
        let b = scenario(&[200.0, 200.0, 200.0, 100.0, 100.0]);
        assert!((a.median_rps() / b.median_rps() - 0.45).abs() < 1e-9);
        let (median, min, max) = round_by_round(&a, &b).unwrap();
        assert!((median - 0.9).abs() < 1e-9, "{median}");
        assert!(
            (min - 0.45).abs() < 1e-9 && (max - 1.8).abs() < 1e-9,
            "{min} {max}"
        );

        let a = scenario(&[100.0, 300.0, 120.0]);
        let b = scenario(&[100.0, 100.0, 200.0]);
        assert_eq!(round_by_round(&a, &b), Some((1.0, 0.6, 3.0)));
        // A round b did not complete is left out.
        let b = scenario(&[100.0, 0.0, 200.0]);
        assert_eq!(round_by_round(&a, &b), Some((0.8, 0.6, 1.0)));
        assert_eq!(round_by_round(&scenario(&[1.0]), &scenario(&[1.0])), None);
    }

    fn named(name: &'static str, rps: &[f64]) -> ScenarioResult {
        ScenarioResult {
            name,
            ..scenario(rps)
        }
    }

    fn report(scenarios: Vec<ScenarioResult>) -> Report {
        Report {
            settings: crate::Settings {
                quick: true,
                rounds: 2,
                sessions: 1,
                connections: 1,
                duration_secs: 1.0,
                workers: 2,
                cpus: 2,
            },
            skipped: Vec::new(),
            scenarios,
            open_loop: Vec::new(),
            identity_signatures_during_measurement: None,
            machine_note: String::new(),
        }
    }

    #[test]
    fn pingora_alone_is_given_against_nginx_and_portcullis_against_it_without_a_verdict() {
        let table = report(vec![
            named("portcullis-auth", &[45.0, 45.0]),
            named("nginx", &[100.0, 100.0]),
            named("pingora-floor", &[60.0, 60.0]),
        ])
        .table();
        assert!(
            table.contains("2. auth ÷ nginx req/s: 0.45 (goal ≥ 1) MISSED"),
            "{table}"
        );
        let floor = table
            .lines()
            .find(|l| l.contains("2a. pingora-floor ÷ nginx req/s: 0.60"))
            .expect(&table);
        assert!(!floor.contains("goal"), "{floor}");
        assert!(
            table.contains("2b. auth ÷ pingora-floor req/s: 0.75"),
            "{table}"
        );
        // Without the floor scenario, no line for it.
        let table = report(vec![
            named("portcullis-auth", &[45.0, 45.0]),
            named("nginx", &[100.0, 100.0]),
        ])
        .table();
        assert!(!table.contains("pingora-floor"), "{table}");
    }

    #[test]
    fn each_scenario_is_compared_with_nginx_over_its_own_transport() {
        assert_eq!(transport("portcullis-auth"), "");
        assert_eq!(transport("nginx"), "");
        assert_eq!(transport("portcullis-auth-tls"), "-tls");
        assert_eq!(transport("nginx-tls"), "-tls");
        assert_eq!(transport("portcullis-handshake"), "-handshake");
    }
}
