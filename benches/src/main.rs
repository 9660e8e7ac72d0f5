//! `cargo run --release -p portcullis-bench -- [--quick] [--out FILE]`: the Portcullis load
//! harness. It starts everything itself on 127.0.0.1 (ephemeral ports): a small fast upstream,
//! Portcullis as a `databroker` process plus a `proxy` process (sessions seeded with
//! `portcullis sessions seed`), nginx as a plain reverse proxy, Pingora alone with Portcullis's
//! server settings (`pingora-floor`, the floor under Portcullis) and Apache httpd with
//! mod_auth_openidc (each skipped, with a line saying how to install it, when absent); for the
//! HTTPS scenarios, one self-signed certificate ([`tls`]) served by a second proxy process and
//! a second nginx server, kept-alive or with a full handshake per request. Then it
//! runs the scenarios in interleaved rounds (A B C A B C ...), closed loop with N keep-alive
//! connections, then once more open loop at a fixed rate, and prints a table of medians. The
//! results go to JSON (`--out`, default `target/bench/results.json`) with a latency plot (SVG)
//! beside it. Every load loop is bounded in time and in request count. With `--instructions` it
//! measures no throughput: it counts the proxy's instructions per request under callgrind
//! ([`instructions`]). With `--cold` it measures a restarted proxy's first seconds in front of
//! many existing sessions ([`cold`]).

#![forbid(unsafe_code)]

mod cold;
mod instructions;
mod load;
mod memory;
mod peers;
mod plot;
mod procstat;
mod report;
mod slow_headers;
mod soak;
mod tls;
mod upstream;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use http::HeaderValue;

use crate::load::{Mode, Progress, Target, Tls};
use crate::peers::{
    ApacheUnderTest, PeerProcess, PortcullisUnderTest, TlsProxy, APP_HOST, PUBLIC_HOST,
};
use crate::report::{OpenResult, RoundResult, ScenarioResult};
use portcullis_harness::Portcullis;

#[derive(Parser, Debug, Clone, serde::Serialize)]
#[command(
    name = "portcullis-bench",
    about = "Portcullis side by side with nginx and Apache + mod_auth_openidc"
)]
pub struct Args {
    /// Smoke run: 1 round of a few seconds, a tiny session count (CI).
    #[arg(long)]
    pub quick: bool,
    /// Where the JSON results go (the SVG plot goes beside it).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Interleaved rounds (default 5; 1 with --quick).
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Seeded sessions (default 10,000; 50 with --quick).
    #[arg(long)]
    pub sessions: Option<usize>,
    /// Keep-alive connections per scenario (default 32).
    #[arg(long)]
    pub connections: Option<usize>,
    /// Seconds per scenario per round (default 10; 2 with --quick).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Open-loop rate in requests/s (default: half of nginx's closed-loop median, or half of
    /// Portcullis auth-off's when nginx is absent). 0 skips the open loop. With --soak: the
    /// soak's rate (default: half of the authorized scenario's capacity).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Run only these scenarios, comma-separated (default: all). Names: direct,
    /// portcullis-public, portcullis-auth, portcullis-403, portcullis-302, nginx, pingora-floor,
    /// apache-oidc, and over TLS portcullis-auth-tls, nginx-tls, pingora-floor-tls,
    /// portcullis-handshake, nginx-handshake. A peer left out is not started.
    #[arg(long, value_delimiter = ',')]
    pub scenarios: Vec<String>,
    /// Instead of throughput: count the proxy's instructions per request under valgrind's
    /// callgrind, for the Portcullis scenarios (20,000 requests each; 1,000 with --quick).
    /// Repeatable where requests/s are noisy. Needs valgrind. Results go to JSON (`--out`,
    /// default `target/bench/instructions.json`).
    #[arg(long)]
    pub instructions: bool,
    /// With --instructions: keep each scenario's callgrind profile in this directory, as
    /// `callgrind.out.<scenario>`, to read with `callgrind_annotate --inclusive=yes`.
    #[arg(long, requires = "instructions")]
    pub profiles: Option<std::path::PathBuf>,
    /// Instead of the scenarios: the authorized scenario before, beside and after this many
    /// connections that trickle a request head and never finish it (2,000 when given without a
    /// number); reports latency per phase, when each slow connection was cut, and the proxy's
    /// memory. Results go to JSON (`--out`, default `target/bench/slow-headers.json`).
    #[arg(long, num_args = 0..=1, default_missing_value = "2000", conflicts_with = "instructions")]
    pub slow_headers: Option<usize>,
    /// With --slow-headers: seconds between two bytes of a slow head (default 5).
    #[arg(long, requires = "slow_headers")]
    pub trickle: Option<f64>,
    /// Instead of the scenarios: the authorized scenario open loop at half its capacity for
    /// this many minutes (30 when given without a number), sampling the proxy's RSS every 5 s.
    /// Results go to JSON (`--out`, default `target/bench/soak.json`) with an RSS plot beside it.
    #[arg(long, num_args = 0..=1, default_missing_value = "30", conflicts_with_all = ["instructions", "slow_headers"])]
    pub soak: Option<f64>,
    /// Instead of the scenarios: the proxy's resident memory per 100,000 sessions (each sent
    /// one request, without and then with its identity JWT; 100,000 sessions unless
    /// `--sessions` says otherwise) and per route (this many routes more in a second proxy;
    /// 10,000 when given without a number). Results go to JSON (`--out`, default
    /// `target/bench/memory.json`).
    #[arg(long, num_args = 0..=1, default_missing_value = "10000", conflicts_with_all = ["instructions", "slow_headers", "soak", "cold"])]
    pub memory: Option<usize>,
    /// Instead of the scenarios: a cold start. With the sessions seeded (default 100,000), the
    /// proxy process is restarted (an empty session cache) and loaded closed loop with random
    /// seeded cookies as soon as it is ready: requests/s second by second for `--duration`
    /// seconds, then the warm rate and the ratio. Results go to JSON (`--out`, default
    /// `target/bench/cold.json`).
    #[arg(long, conflicts_with_all = ["instructions", "slow_headers", "soak"])]
    pub cold: bool,
}

/// Every scenario's name, in the order the rounds run them.
const SCENARIOS: [&str; 13] = [
    "direct",
    "portcullis-public",
    "portcullis-auth",
    "portcullis-403",
    "portcullis-302",
    "nginx",
    "pingora-floor",
    "apache-oidc",
    "portcullis-auth-tls",
    "nginx-tls",
    "pingora-floor-tls",
    "portcullis-handshake",
    "nginx-handshake",
];

/// The scenarios over TLS; they need the bench's certificate ([`tls::BenchCert`]).
const TLS_SCENARIOS: [&str; 5] = [
    "portcullis-auth-tls",
    "nginx-tls",
    "pingora-floor-tls",
    "portcullis-handshake",
    "nginx-handshake",
];

/// Settings after defaults.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Settings {
    pub quick: bool,
    pub rounds: usize,
    pub sessions: usize,
    pub connections: usize,
    pub duration_secs: f64,
    pub workers: usize,
    pub cpus: usize,
}

/// One scenario: what to send, where, and whose CPU to count.
pub struct Scenario {
    pub name: &'static str,
    pub about: &'static str,
    pub target: Target,
    pub pid: Option<u32>,
}

/// A request's upper bound per run, so that no loop is unbounded even if the clock misbehaves.
const MAX_REQUESTS_PER_SECOND: f64 = 1_000_000.0;

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    if let Some(unknown) = args
        .scenarios
        .iter()
        .find(|n| !SCENARIOS.contains(&n.as_str()))
    {
        return Err(format!(
            "--scenarios: no scenario named {unknown:?} (known: {})",
            SCENARIOS.join(", ")
        ));
    }
    let wanted = |name: &str| args.scenarios.is_empty() || args.scenarios.iter().any(|n| n == name);
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let settings = Settings {
        quick: args.quick,
        rounds: args.rounds.unwrap_or(if args.quick { 1 } else { 5 }).max(1),
        sessions: args
            .sessions
            .unwrap_or(match (args.quick, args.memory.is_some() || args.cold) {
                (true, _) => 50,
                (false, true) => 100_000,
                (false, false) => 10_000,
            })
            .max(10),
        connections: args.connections.unwrap_or(32).clamp(1, 10_000),
        duration_secs: args
            .duration
            .unwrap_or(if args.quick { 2.0 } else { 10.0 })
            .clamp(0.2, 3600.0),
        // Portcullis runs one Pingora thread per CPU; nginx and Apache get as many workers.
        workers: cpus,
        cpus,
    };
    let duration = Duration::from_secs_f64(settings.duration_secs);
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| target_dir().join("bench").join("results.json"));

    let binary = portcullis_binary()?;
    eprintln!(
        "portcullis-bench: {} round(s) x {:.1} s per scenario, {} connections, {} seeded sessions, {} CPU(s); binary {}",
        settings.rounds,
        settings.duration_secs,
        settings.connections,
        settings.sessions,
        cpus,
        binary.display()
    );

    let callgrind = match args.instructions {
        true => Some(instructions::Callgrind::new()?),
        false => None,
    };
    let upstream = upstream::FastUpstream::start()?;
    eprintln!("upstream on {}", upstream.url());
    eprintln!(
        "starting Portcullis (databroker + proxy{}) and seeding {} sessions ...",
        if callgrind.is_some() {
            " under callgrind"
        } else {
            ""
        },
        settings.sessions
    );
    let wrapper = callgrind.as_ref().map(|c| c.wrapper()).unwrap_or_default();
    // The HTTPS scenarios are part of the scenario runs, not of the other modes.
    let scenario_run = callgrind.is_none()
        && args.soak.is_none()
        && args.slow_headers.is_none()
        && args.memory.is_none()
        && !args.cold;
    let cert = match scenario_run && TLS_SCENARIOS.iter().any(|n| wanted(n)) {
        true => Some(tls::BenchCert::generate(&[APP_HOST, PUBLIC_HOST])?),
        false => None,
    };
    let portcullis_tls = cert
        .as_ref()
        .filter(|_| wanted("portcullis-auth-tls") || wanted("portcullis-handshake"));
    let (mut portcullis, tls_proxy) = PortcullisUnderTest::start(
        &binary,
        &upstream.url(),
        settings.sessions,
        &wrapper,
        portcullis_tls,
    )
    .await?;
    if let Some(callgrind) = callgrind {
        let out = args
            .out
            .clone()
            .unwrap_or_else(|| target_dir().join("bench").join("instructions.json"));
        return count_instructions(
            &callgrind,
            &upstream,
            &portcullis,
            &settings,
            &wanted,
            &out,
            args.profiles.as_deref(),
        )
        .await;
    }
    if args.cold {
        let out = args
            .out
            .clone()
            .unwrap_or_else(|| target_dir().join("bench").join("cold.json"));
        return cold_run(&binary, &upstream, &mut portcullis, &settings, &out).await;
    }
    if let Some(minutes) = args.soak {
        let out = args
            .out
            .clone()
            .unwrap_or_else(|| target_dir().join("bench").join("soak.json"));
        return soak_run(
            &upstream,
            &portcullis,
            &settings,
            minutes.clamp(0.1, 24.0 * 60.0),
            args.rate.filter(|r| *r > 0.0),
            &out,
        )
        .await;
    }
    if let Some(routes) = args.memory {
        let out = args
            .out
            .clone()
            .unwrap_or_else(|| target_dir().join("bench").join("memory.json"));
        return memory_run(&binary, &upstream, &portcullis, &settings, routes, &out).await;
    }
    if let Some(slow) = args.slow_headers {
        let out = args
            .out
            .clone()
            .unwrap_or_else(|| target_dir().join("bench").join("slow-headers.json"));
        let plan = slow_headers::Plan {
            slow,
            trickle: Duration::from_secs_f64(args.trickle.unwrap_or(5.0).clamp(0.1, 60.0)),
            rounds: settings.rounds,
            connections: settings.connections,
            duration,
        };
        return slow_headers_run(&upstream, &portcullis, &settings, &plan, &out).await;
    }
    let mut skipped = Vec::new();
    let nginx_tls = cert
        .as_ref()
        .filter(|_| wanted("nginx-tls") || wanted("nginx-handshake"));
    let nginx = match wanted("nginx") || nginx_tls.is_some() {
        true => started(
            PeerProcess::nginx(upstream.addr, settings.workers, nginx_tls).await,
            "nginx",
            &mut skipped,
        ),
        false => None,
    };
    let floor_tls = cert.as_ref().filter(|_| wanted("pingora-floor-tls"));
    let floor = match wanted("pingora-floor") || floor_tls.is_some() {
        true => started(
            PeerProcess::pingora_floor(upstream.addr, settings.workers, &[], floor_tls).await,
            "pingora-floor",
            &mut skipped,
        ),
        false => None,
    };
    let apache = match wanted("apache-oidc") {
        true => {
            eprintln!("starting Apache + mod_auth_openidc and signing in once ...");
            started(
                ApacheUnderTest::start(upstream.addr, settings.workers).await,
                "apache + mod_auth_openidc",
                &mut skipped,
            )
        }
        false => None,
    };

    let client_tls = cert
        .as_ref()
        .map(tls::BenchCert::client_config)
        .transpose()?;
    let tls_peers = client_tls.as_ref().map(|config| TlsPeers {
        config: config.clone(),
        portcullis: tls_proxy.as_ref(),
    });
    let mut scenarios = scenarios(
        &upstream,
        &portcullis,
        tls_peers.as_ref(),
        &Peers {
            nginx: nginx.as_ref(),
            floor: floor.as_ref(),
            apache: apache.as_ref(),
        },
    )?;
    scenarios.retain(|s| wanted(s.name));

    warm_up(&scenarios, &settings).await?;

    let signatures_before = portcullis.signatures().await;
    let mut results: Vec<ScenarioResult> = scenarios
        .iter()
        .map(|s| ScenarioResult::new(s.name, s.about))
        .collect();
    for round in 1..=settings.rounds {
        for (i, s) in scenarios.iter().enumerate() {
            let label = format!("round {round}/{} {}", settings.rounds, s.name);
            let r = measure(s, Mode::Closed, settings.connections, duration, &label).await;
            results[i].rounds.push(r);
        }
    }

    // Open loop at a fixed rate: latency without coordinated omission.
    let rate = match args.rate {
        Some(r) => r,
        None => {
            let base = results
                .iter()
                .find(|r| r.name == "nginx")
                .or_else(|| results.iter().find(|r| r.name == "portcullis-public"))
                .map(|r| r.median_rps())
                .unwrap_or(0.0);
            (base / 2.0).floor()
        }
    };
    let mut open = Vec::new();
    if rate >= 1.0 {
        // Plain HTTP only: the rate is plain nginx's, far above what a handshake per request
        // reaches.
        for s in scenarios.iter().filter(|s| s.target.tls.is_none()) {
            let label = format!("open loop {rate:.0} req/s {}", s.name);
            let r = measure(
                s,
                Mode::Open { rate },
                settings.connections,
                duration,
                &label,
            )
            .await;
            open.push(OpenResult {
                name: s.name,
                rate,
                result: r,
            });
        }
    }
    let signatures_after = portcullis.signatures().await;
    let signatures = match (signatures_before, signatures_after) {
        (Some(a), Some(b)) => Some(a.until(b)),
        _ => None,
    };

    // Stop everything before reporting.
    if let Some(n) = nginx {
        n.stop().await;
    }
    if let Some(f) = floor {
        f.stop().await;
    }
    if let Some(a) = apache {
        a.server.stop().await;
    }
    drop(tls_proxy);
    drop(portcullis);
    drop(upstream);

    let report = report::Report {
        settings,
        skipped,
        scenarios: results,
        open_loop: open,
        identity_signatures_during_measurement: signatures,
        machine_note: "2 CPUs shared by the load generator, the upstream and the proxy under test (and possibly other work): compare ratios within one run, not absolute numbers across machines".into(),
    };
    println!("{}", report.table());
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::write(&out, report.json()).map_err(|e| format!("{}: {e}", out.display()))?;
    let svg = out.with_extension("svg");
    plot::latency(&report, &svg)?;
    println!(
        "results: {}\nlatency plot: {}",
        out.display(),
        svg.display()
    );
    Ok(())
}

/// The peer when it started; else `None`, and a line saying why it is skipped, printed and kept
/// for the report.
fn started<T>(peer: Result<T, String>, name: &str, skipped: &mut Vec<String>) -> Option<T> {
    match peer {
        Ok(p) => Some(p),
        Err(e) => {
            let line = format!("skipping {name}: {e}");
            eprintln!("{line}");
            skipped.push(line);
            None
        }
    }
}

fn cap(d: Duration) -> u64 {
    (d.as_secs_f64() * MAX_REQUESTS_PER_SECOND) as u64 + 1
}

/// Warm-up, not measured, to a steady state: every seeded session twice (the first request
/// fills the proxy's session cache and signs the identity JWT, the second has the JWT kept
/// ready to send), and short runs of everything else.
async fn warm_up(scenarios: &[Scenario], settings: &Settings) -> Result<(), String> {
    visit_each_session(scenarios, settings).await?;
    visit_each_session(scenarios, settings).await
}

/// Every seeded session once (one request per cookie), and a short run of everything else.
async fn visit_each_session(scenarios: &[Scenario], settings: &Settings) -> Result<(), String> {
    eprintln!("warming up ...");
    for s in scenarios {
        if let Some(agreed) = load::negotiated(&s.target).await? {
            eprintln!("{}: TLS {agreed}", s.name);
        }
        let n = s.target.cookies.len().max(1) as u64;
        let warm = Duration::from_secs_f64((settings.duration_secs / 2.0).clamp(0.2, 2.0));
        let progress = Arc::new(Progress::default());
        let o = load::run(
            &s.target,
            Mode::Closed,
            settings.connections,
            if n > 1 {
                Duration::from_secs(120)
            } else {
                warm
            },
            Some(if n > 1 { n } else { cap(warm) }),
            progress,
        )
        .await;
        if o.requests > 0 && o.errors == o.requests {
            return Err(format!(
                "{}: every warm-up request failed: {:?}",
                s.name, o.error_samples
            ));
        }
    }
    Ok(())
}

/// `--instructions`: each wanted Portcullis scenario's instructions per request, counted by
/// callgrind over a fixed number of requests ([`instructions`]).
async fn count_instructions(
    callgrind: &instructions::Callgrind,
    upstream: &upstream::FastUpstream,
    portcullis: &PortcullisUnderTest,
    settings: &Settings,
    wanted: &dyn Fn(&str) -> bool,
    out: &std::path::Path,
    profiles: Option<&std::path::Path>,
) -> Result<(), String> {
    if let Some(dir) = profiles {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    // Pingora alone under callgrind too, beside Portcullis: the part of each count that any
    // Pingora proxy pays.
    let floor = match wanted("pingora-floor") {
        true => Some(
            PeerProcess::pingora_floor(upstream.addr, settings.workers, &callgrind.wrapper(), None)
                .await?,
        ),
        false => None,
    };
    let peers = Peers {
        floor: floor.as_ref(),
        ..Peers::default()
    };
    let mut scenarios = scenarios(upstream, portcullis, None, &peers)?;
    scenarios.retain(|s| {
        (s.name.starts_with("portcullis-") || s.name == "pingora-floor") && wanted(s.name)
    });
    warm_up(&scenarios, settings).await?;
    let requests: u64 = if settings.quick { 1_000 } else { 20_000 };
    let mut counts = Vec::new();
    for s in &scenarios {
        let pid = s
            .pid
            .ok_or_else(|| format!("{}: its proxy is not running", s.name))?;
        let is_portcullis = s.pid == portcullis.proxy.pid();
        let progress = Arc::new(Progress::default());
        let ticker = ticker(progress.clone(), format!("instructions {}", s.name));
        let signatures_before = match is_portcullis {
            true => portcullis.signatures().await,
            false => None,
        };
        callgrind.start(pid).await?;
        let o = load::run(
            &s.target,
            Mode::Closed,
            settings.connections,
            Duration::from_secs(600),
            Some(requests),
            progress,
        )
        .await;
        let keep = profiles.map(|d| d.join(format!("callgrind.out.{}", s.name)));
        let instructions = callgrind.stop(pid, keep.as_deref()).await?;
        ticker.abort();
        let signatures = match (signatures_before, portcullis.signatures().await) {
            (Some(before), Some(after)) => Some(before.until(after).total),
            _ => None,
        };
        let count = instructions::Count {
            name: s.name,
            requests: o.requests,
            errors: o.errors,
            instructions,
            signatures,
        };
        eprintln!(
            "\rinstructions {}: {} requests, {:.0} instructions each      ",
            s.name,
            o.requests,
            count.per_request()
        );
        counts.push(count);
    }
    if let Some(f) = floor {
        f.stop().await;
    }
    println!("{}", instructions::table(&counts));
    if let Some(dir) = profiles {
        eprintln!(
            "profiles kept in {}: callgrind_annotate --inclusive=yes {}",
            dir.display(),
            dir.join("callgrind.out.portcullis-auth").display()
        );
    }
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let json = serde_json::to_string_pretty(&serde_json::json!({
        "settings": settings,
        "requests_per_scenario": requests,
        "counts": counts,
    }))
    .map_err(|e| e.to_string())?;
    std::fs::write(out, json).map_err(|e| format!("{}: {e}", out.display()))?;
    println!("results: {}", out.display());
    Ok(())
}

/// `--soak`: the authorized scenario at half its capacity for a long time, RSS sampled.
async fn soak_run(
    upstream: &upstream::FastUpstream,
    portcullis: &PortcullisUnderTest,
    settings: &Settings,
    minutes: f64,
    rate: Option<f64>,
    out: &std::path::Path,
) -> Result<(), String> {
    let pid = portcullis.proxy.pid().ok_or("the proxy is not running")?;
    let mut scenarios = scenarios(upstream, portcullis, None, &Peers::default())?;
    scenarios.retain(|s| s.name == "portcullis-auth");
    warm_up(&scenarios, settings).await?;
    let s = scenarios.first().ok_or("no portcullis-auth scenario")?;
    let connections = settings.connections;
    let report =
        soak::run(
            pid,
            minutes,
            rate,
            |d| measure(s, Mode::Closed, connections, d, "soak: capacity"),
            |rate, d, label| async move {
                measure(s, Mode::Open { rate }, connections, d, &label).await
            },
        )
        .await?;
    println!("{}", report.table());
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::write(out, report.json()).map_err(|e| format!("{}: {e}", out.display()))?;
    let svg = out.with_extension("svg");
    report.plot(&svg)?;
    println!("results: {}\nRSS plot: {}", out.display(), svg.display());
    Ok(())
}

/// `--memory`: resident memory per session and per route ([`memory`]).
async fn memory_run(
    binary: &std::path::Path,
    upstream: &upstream::FastUpstream,
    portcullis: &PortcullisUnderTest,
    settings: &Settings,
    routes: usize,
    out: &std::path::Path,
) -> Result<(), String> {
    let pid = portcullis.proxy.pid().ok_or("the proxy is not running")?;
    let mut scenarios = scenarios(upstream, portcullis, None, &Peers::default())?;
    scenarios.retain(|s| s.name == "portcullis-auth" || s.name == "portcullis-403");
    // Every session once: on the route without identity headers, then on the authorized one
    // (the denied users' sessions are already cached; they get no JWT).
    let plain: Vec<Scenario> = scenarios
        .iter()
        .map(|s| Scenario {
            name: s.name,
            about: s.about,
            target: load::Target {
                path: "/plain/",
                ..s.target.clone()
            },
            pid: s.pid,
        })
        .collect();
    let rss_idle_mib = memory::settled_rss(pid).await;
    eprintln!("proxy RSS with no session cached: {rss_idle_mib:.1} MiB");
    visit_each_session(&plain, settings).await?;
    let rss_sessions_mib = memory::settled_rss(pid).await;
    eprintln!("after one request per session: {rss_sessions_mib:.1} MiB");
    scenarios.retain(|s| s.name == "portcullis-auth");
    visit_each_session(&scenarios, settings).await?;
    let rss_with_jwt_mib = memory::settled_rss(pid).await;
    eprintln!("after one more with the identity JWT: {rss_with_jwt_mib:.1} MiB");
    // A JWT is kept ready to send from its second request on.
    visit_each_session(&scenarios, settings).await?;
    let rss_jwt_kept_mib = memory::settled_rss(pid).await;
    eprintln!("after a second one with the identity JWT: {rss_jwt_kept_mib:.1} MiB");
    // Unused that long, a JWT goes at the next renewal run (one interval later at most).
    let keep = Duration::from_secs(portcullis_auth::jwt::ASSERTION_KEEP_JWT_SECS.unsigned_abs())
        + portcullis_auth::jwt::ASSERTION_RENEW_INTERVAL
        + Duration::from_secs(2);
    eprintln!("waiting {} s for the JWTs to go unused ...", keep.as_secs());
    tokio::time::sleep(keep).await;
    // Traffic that needs no JWT goes on meanwhile (as on a proxy in service): the worker
    // threads that allocated the JWTs take back what the renewal run freed.
    visit_each_session(&plain, settings).await?;
    let rss_jwt_idle_mib = memory::settled_rss(pid).await;
    eprintln!("once they went unused: {rss_jwt_idle_mib:.1} MiB");

    eprintln!("starting a proxy with {routes} routes more ...");
    let few = Portcullis::builder(binary)
        .config(&memory::on_new_ports(&portcullis.config))
        .start()
        .await
        .map_err(|e| format!("proxy: {e}"))?;
    let rss_few_routes_mib = memory::settled_rss(few.pid().ok_or("no pid")?).await;
    drop(few);
    let mut rss_with = Vec::new();
    for distinct in [true, false] {
        let many = Portcullis::builder(binary)
            .config(&format!(
                "{}{}",
                memory::on_new_ports(&portcullis.config),
                memory::extra_routes(routes, portcullis.port, &upstream.url(), distinct),
            ))
            .start()
            .await
            .map_err(|e| format!("proxy with {routes} routes: {e}"))?;
        rss_with.push(memory::settled_rss(many.pid().ok_or("no pid")?).await);
    }
    let report = memory::Report {
        sessions: settings.sessions,
        rss_idle_mib,
        rss_sessions_mib,
        rss_with_jwt_mib,
        rss_jwt_kept_mib,
        rss_jwt_idle_mib,
        routes,
        rss_few_routes_mib,
        rss_many_routes_mib: rss_with[0],
        rss_repeated_policies_mib: rss_with[1],
    };
    println!("{}", report.table());
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    std::fs::write(out, json).map_err(|e| format!("{}: {e}", out.display()))?;
    println!("results: {}", out.display());
    Ok(())
}

/// `--cold`: restarts the proxy in front of the seeded sessions and loads it at once.
async fn cold_run(
    binary: &std::path::Path,
    upstream: &upstream::FastUpstream,
    portcullis: &mut PortcullisUnderTest,
    settings: &Settings,
    out: &std::path::Path,
) -> Result<(), String> {
    eprintln!("restarting the proxy (empty session cache) ...");
    let ready_after = portcullis.restart_proxy(binary).await?;
    let pid = portcullis.proxy.pid().ok_or("the proxy is not running")?;
    let rss_when_ready_mib = procstat::rss_mib(pid);
    eprintln!(
        "proxy ready {:.2} s after its spawn; loading it at once",
        ready_after.as_secs_f64()
    );
    let mut scenarios = scenarios(upstream, portcullis, None, &Peers::default())?;
    scenarios.retain(|s| s.name == "portcullis-auth");
    let s = scenarios.first().ok_or("no portcullis-auth scenario")?;
    let window = Duration::from_secs_f64(settings.duration_secs.max(1.0));
    let signatures_before = portcullis.signatures().await;
    let (cold, per_second) =
        cold::per_second(&s.target, settings.connections, window, "cold").await;
    let signatures = match (signatures_before, portcullis.signatures().await) {
        (Some(before), Some(after)) => Some(before.until(after).on_request_path),
        _ => None,
    };
    let text = portcullis.proxy.metrics().await;
    let metric = |name: &str| portcullis_harness::metric(&text, name);
    let (cache_hits, cache_misses, preloaded) = (
        metric("portcullis_session_cache_hits_total"),
        metric("portcullis_session_cache_misses_total"),
        metric("portcullis_session_cache_preloaded"),
    );
    warm_up(&scenarios, settings).await?;
    let (warm, _) = cold::per_second(&s.target, settings.connections, window, "warm").await;
    let rps = |o: &load::Outcome| o.requests as f64 / o.elapsed.as_secs_f64().max(1e-9);
    let warm_rps = rps(&warm);
    let first = per_second.first().copied().unwrap_or(0) as f64;
    let slowest = per_second.iter().copied().min().unwrap_or(0) as f64;
    let report = cold::ColdReport {
        sessions: settings.sessions,
        connections: settings.connections,
        binary: binary.display().to_string(),
        ready_after_secs: ready_after.as_secs_f64(),
        per_second,
        cold_window_rps: rps(&cold),
        cold_window_errors: cold.errors,
        warm_rps,
        warm_errors: warm.errors,
        first_second_ratio: first / warm_rps.max(1e-9),
        slowest_second_ratio: slowest / warm_rps.max(1e-9),
        cache_hits,
        cache_misses,
        preloaded,
        cold_window_signatures_on_request_path: signatures,
        rss_when_ready_mib,
    };
    for e in cold.error_samples.iter().chain(&warm.error_samples) {
        eprintln!("    error: {e}");
    }
    println!("{}", report.table());
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::write(out, report.json()).map_err(|e| format!("{}: {e}", out.display()))?;
    println!("results: {}", out.display());
    Ok(())
}

/// `--slow-headers`: the authorized scenario before, beside and after the slow clients.
async fn slow_headers_run(
    upstream: &upstream::FastUpstream,
    portcullis: &PortcullisUnderTest,
    settings: &Settings,
    plan: &slow_headers::Plan,
    out: &std::path::Path,
) -> Result<(), String> {
    let pid = portcullis.proxy.pid().ok_or("the proxy is not running")?;
    let mut scenarios = scenarios(upstream, portcullis, None, &Peers::default())?;
    scenarios.retain(|s| s.name == "portcullis-auth");
    warm_up(&scenarios, settings).await?;
    let s = scenarios.first().ok_or("no portcullis-auth scenario")?;
    let rounds = plan.rounds;
    let report = slow_headers::run(s, pid, plan, |phase, round| {
        let label = format!("{phase}, round {round}/{rounds}");
        async move { measure(s, Mode::Closed, plan.connections, plan.duration, &label).await }
    })
    .await?;
    println!("{}", report.table());
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::write(out, report.json()).map_err(|e| format!("{}: {e}", out.display()))?;
    println!("results: {}", out.display());
    Ok(())
}

/// Prints `label` and the requests per second of the last second, every second, until aborted.
fn ticker(progress: Arc<Progress>, label: String) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let start = Instant::now();
        let mut last = 0u64;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            tick.tick().await;
            let done = progress.done.load(Ordering::Relaxed);
            eprint!(
                "\r{label}: {:>8} req/s  ({:.0} s)      ",
                done - last,
                start.elapsed().as_secs_f64()
            );
            last = done;
        }
    })
}

/// One run of one scenario, with the progress line and the process's CPU and memory.
async fn measure(
    s: &Scenario,
    mode: Mode,
    connections: usize,
    duration: Duration,
    label: &str,
) -> RoundResult {
    let progress = Arc::new(Progress::default());
    let ticker = ticker(progress.clone(), label.to_owned());
    let cpu_before = s.pid.map(procstat::cpu_seconds);
    let o = load::run(
        &s.target,
        mode,
        connections,
        duration,
        Some(cap(duration)),
        progress,
    )
    .await;
    let cpu_after = s.pid.map(procstat::cpu_seconds);
    ticker.abort();
    let rps = o.requests as f64 / o.elapsed.as_secs_f64().max(1e-9);
    eprintln!(
        "\r{label}: {rps:>8.0} req/s, p99 {:.2} ms, {} error(s)      ",
        o.histogram.value_at_quantile(0.99) as f64 / 1000.0,
        o.errors
    );
    for e in &o.error_samples {
        eprintln!("    error: {e}");
    }
    RoundResult::new(
        &o,
        match (cpu_before, cpu_after) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        },
        s.pid.map(procstat::peak_rss_mib),
    )
}

/// What the HTTPS scenarios need: the load client's TLS configuration, and Portcullis's TLS
/// listener when it runs.
struct TlsPeers<'a> {
    config: Arc<tokio_rustls::rustls::ClientConfig>,
    portcullis: Option<&'a TlsProxy>,
}

/// The peers a run started beside Portcullis: each `None` when not wanted or not installed.
#[derive(Default)]
struct Peers<'a> {
    nginx: Option<&'a PeerProcess>,
    floor: Option<&'a PeerProcess>,
    apache: Option<&'a ApacheUnderTest>,
}

fn scenarios(
    upstream: &upstream::FastUpstream,
    p: &PortcullisUnderTest,
    tls: Option<&TlsPeers>,
    peers: &Peers,
) -> Result<Vec<Scenario>, String> {
    let Peers {
        nginx,
        floor,
        apache,
    } = *peers;
    let header = |s: String| HeaderValue::try_from(s).map_err(|e| e.to_string());
    let cookies = |values: &[String]| -> Result<Arc<Vec<HeaderValue>>, String> {
        values
            .iter()
            .map(|v| header(format!("_portcullis={v}")))
            .collect::<Result<Vec<_>, _>>()
            .map(Arc::new)
    };
    let loopback = |port: u16| std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let none = Arc::new(Vec::new());
    // A peer that proxies without authentication: `/` on the app host, no cookie, 200.
    let unauthenticated = |port: u16, tls: Option<Tls>| -> Result<Target, String> {
        Ok(Target {
            addr: loopback(port),
            host: header(format!("{APP_HOST}:{port}"))?,
            path: "/",
            cookies: none.clone(),
            expect: 200,
            tls,
            fresh: false,
        })
    };
    let proxy_pid = p.proxy.pid();
    let mut out = vec![
        Scenario {
            name: "direct",
            about: "straight to the upstream (the ceiling)",
            target: Target {
                addr: upstream.addr,
                host: header(upstream.addr.to_string())?,
                path: "/",
                cookies: none.clone(),
                expect: 200,
                tls: None,
                fresh: false,
            },
            pid: None,
        },
        Scenario {
            name: "portcullis-public",
            about: "Portcullis, public route (auth off)",
            target: Target {
                addr: loopback(p.port),
                host: header(format!("{PUBLIC_HOST}:{}", p.port))?,
                path: "/",
                cookies: none.clone(),
                expect: 200,
                tls: None,
                fresh: false,
            },
            pid: proxy_pid,
        },
        Scenario {
            name: "portcullis-auth",
            about: "Portcullis, authorized cookie requests (random seeded session, 3-criterion policy, identity JWT + claim headers)",
            target: Target {
                addr: loopback(p.port),
                host: header(format!("{APP_HOST}:{}", p.port))?,
                path: "/",
                cookies: cookies(&p.allowed)?,
                expect: 200,
                tls: None,
                fresh: false,
            },
            pid: proxy_pid,
        },
        Scenario {
            name: "portcullis-403",
            about: "Portcullis, signed in but denied by the policy",
            target: Target {
                addr: loopback(p.port),
                host: header(format!("{APP_HOST}:{}", p.port))?,
                path: "/",
                cookies: cookies(&p.denied)?,
                expect: 403,
                tls: None,
                fresh: false,
            },
            pid: proxy_pid,
        },
        Scenario {
            name: "portcullis-302",
            about: "Portcullis, no session: redirect to sign-in",
            target: Target {
                addr: loopback(p.port),
                host: header(format!("{APP_HOST}:{}", p.port))?,
                path: "/",
                cookies: none.clone(),
                expect: 302,
                tls: None,
                fresh: false,
            },
            pid: proxy_pid,
        },
    ];
    if let Some(n) = nginx {
        out.push(Scenario {
            name: "nginx",
            about: "nginx, plain reverse proxy (no auth)",
            target: unauthenticated(n.port, None)?,
            pid: n.pid(),
        });
    }
    if let Some(f) = floor {
        out.push(Scenario {
            name: "pingora-floor",
            about:
                "Pingora alone: upstream_peer only, Portcullis's server settings (no auth, no log)",
            target: unauthenticated(f.port, None)?,
            pid: f.pid(),
        });
    }
    if let Some(a) = apache {
        out.push(Scenario {
            name: "apache-oidc",
            about: "Apache httpd + mod_auth_openidc, signed-in session",
            target: Target {
                addr: loopback(a.server.port),
                host: header(format!("{APP_HOST}:{}", a.server.port))?,
                path: "/",
                cookies: Arc::new(vec![header(a.cookie.clone())?]),
                expect: 200,
                tls: None,
                fresh: false,
            },
            pid: a.server.pid(),
        });
    }
    if let Some(tls) = tls {
        let client = |host: &'static str| -> Result<Option<Tls>, String> {
            let server_name = tokio_rustls::rustls::pki_types::ServerName::try_from(host)
                .map_err(|e| format!("{host}: {e}"))?;
            Ok(Some(Tls {
                config: tls.config.clone(),
                server_name,
            }))
        };
        if let Some(t) = tls.portcullis {
            out.push(Scenario {
                name: "portcullis-auth-tls",
                about: "Portcullis over TLS, keep-alive: authorized cookie requests as portcullis-auth",
                target: Target {
                    addr: loopback(t.port),
                    host: header(format!("{APP_HOST}:{}", t.port))?,
                    path: "/",
                    cookies: cookies(&t.allowed)?,
                    expect: 200,
                    tls: client(APP_HOST)?,
                    fresh: false,
                },
                pid: t.proxy.pid(),
            });
        }
        if let Some(port) = nginx.and_then(|n| n.tls_port) {
            out.push(Scenario {
                name: "nginx-tls",
                about: "nginx over TLS, keep-alive, plain reverse proxy (no auth)",
                target: unauthenticated(port, client(APP_HOST)?)?,
                pid: nginx.and_then(PeerProcess::pid),
            });
        }
        if let Some(port) = floor.and_then(|f| f.tls_port) {
            out.push(Scenario {
                name: "pingora-floor-tls",
                about: "Pingora alone over TLS (its rustls acceptor), keep-alive, no auth",
                target: unauthenticated(port, client(APP_HOST)?)?,
                pid: floor.and_then(PeerProcess::pid),
            });
        }
        if let Some(t) = tls.portcullis {
            out.push(Scenario {
                name: "portcullis-handshake",
                about: "Portcullis over TLS, public route, a new connection and full handshake per request (req/s = handshakes/s)",
                target: Target {
                    addr: loopback(t.port),
                    host: header(format!("{PUBLIC_HOST}:{}", t.port))?,
                    path: "/",
                    cookies: none.clone(),
                    expect: 200,
                    tls: client(PUBLIC_HOST)?,
                    fresh: true,
                },
                pid: t.proxy.pid(),
            });
        }
        if let Some(port) = nginx.and_then(|n| n.tls_port) {
            out.push(Scenario {
                name: "nginx-handshake",
                about: "nginx over TLS, a new connection and full handshake per request (req/s = handshakes/s)",
                target: Target {
                    addr: loopback(port),
                    host: header(format!("{PUBLIC_HOST}:{port}"))?,
                    path: "/",
                    cookies: none.clone(),
                    expect: 200,
                    tls: client(PUBLIC_HOST)?,
                    fresh: true,
                },
                pid: nginx.and_then(PeerProcess::pid),
            });
        }
    }
    Ok(out)
}

/// The target directory this executable was built into (`…/target`), or `./target`.
fn target_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.to_owned()))
        .filter(|d| d.file_name().is_some_and(|n| n == "target") || d.join("CACHEDIR.TAG").exists())
        .unwrap_or_else(|| PathBuf::from("target"))
}

/// `$PORTCULLIS_BIN` if set, else the `portcullis` binary next to this executable. Under
/// `cargo run` (which sets `$CARGO`), or when the binary is missing, it is first brought up to
/// date with `cargo build [--release] -p portcullis` in this executable's profile, so the bench
/// never measures a stale binary (a no-op when it is fresh).
fn portcullis_binary() -> Result<PathBuf, String> {
    if let Some(bin) = std::env::var_os("PORTCULLIS_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    if exe
        .parent()
        .and_then(|d| d.file_name())
        .is_some_and(|n| n == "debug")
    {
        eprintln!("note: a debug build measures nothing useful; use cargo run --release -p portcullis-bench");
    }
    // Under `cargo run`, rebuild so a stale binary is never measured.
    portcullis_harness::sibling_portcullis(std::env::var_os("CARGO").is_some())
}
