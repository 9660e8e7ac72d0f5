//! Route lookup + policy evaluation at 10, 1,000 and 10,000 routes, and the cost of building
//! the route table. The decision must not grow with the number of routes (host index).
//!
//! `cargo bench -p portcullis --bench decision`

use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use portcullis::config::Config;
use portcullis::routes::RouteTable;
use portcullis_policy::{Identity, Request};

const SECRET: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

/// A config with `n` routes on distinct hosts (plus a wildcard every 10th), each with a
/// three-criterion policy.
fn config_text(n: usize) -> String {
    let mut s = format!(
        r#"
insecure_server = true
authenticate_service_url = "https://authenticate.example.com"
shared_secret = "{SECRET}"
cookie_secret = "{SECRET}"
idp_provider_url = "https://idp.example.com"
idp_client_id = "id"
idp_client_secret = "secret"
"#
    );
    for i in 0..n {
        let host = if i % 10 == 9 {
            format!("*.w{i}.example.com")
        } else {
            format!("app{i}.example.com")
        };
        s.push_str(&format!(
            r#"
[[routes]]
from = "https://{host}"
prefix = "/"
to = "http://127.0.0.1:{port}"
policy = [
  {{ allow = {{ and = [ {{ domain = {{ is = "example.com" }} }}, {{ groups = {{ has = "users" }} }} ] }} }},
  {{ deny = {{ or = [ {{ http_method = {{ is = "DELETE" }} }} ] }} }},
]
"#,
            port = 1024 + i % 50_000
        ));
    }
    s
}

fn table(n: usize) -> RouteTable {
    let config = Config::from_toml(&config_text(n), Vec::new(), Path::new("."))
        .unwrap_or_else(|e| panic!("{e}"));
    let listener = config.listener();
    RouteTable::new(config.routes, listener)
}

fn decision(c: &mut Criterion) {
    let identity = Identity::new(
        "alice".into(),
        "alice@example.com".into(),
        vec!["admins".into(), "users".into()],
        Default::default(),
    );
    let mut group = c.benchmark_group("route_lookup_and_policy");
    for n in [10usize, 1_000, 10_000] {
        let t = table(n);
        // The last exact host: a linear scan would be slowest here.
        let host = format!("app{}.example.com", n - 2);
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                let route = t
                    .find(black_box(&host), 443, black_box("/some/path"))
                    .expect("route");
                let request =
                    Request::new("GET", "/some/path", 1_800_000_000).with_identity(&identity);
                black_box(route.policy.evaluate(&request).allowed)
            })
        });
    }
    group.finish();
}

/// Per-call latency percentiles (criterion reports means; the target is on p99): 1,000,000
/// timed calls per table size, each timed with its own pair of `Instant::now()` (which adds
/// some tens of nanoseconds to every sample, so these are upper bounds).
fn latency_percentiles(_: &mut Criterion) {
    const CALLS: usize = 1_000_000;
    const P99_TARGET_NS: u64 = 2_000;
    let identity = Identity::new(
        "alice".into(),
        "alice@example.com".into(),
        vec!["admins".into(), "users".into()],
        Default::default(),
    );
    let mut p50s = Vec::new();
    for n in [10usize, 1_000, 10_000] {
        let t = table(n);
        let host = format!("app{}.example.com", n - 2);
        let decide = || {
            let route = t
                .find(black_box(&host), 443, black_box("/some/path"))
                .expect("route");
            let request = Request::new("GET", "/some/path", 1_800_000_000).with_identity(&identity);
            black_box(route.policy.evaluate(&request).allowed)
        };
        for _ in 0..CALLS / 10 {
            decide();
        }
        let mut samples: Vec<u64> = Vec::with_capacity(CALLS);
        for _ in 0..CALLS {
            let start = Instant::now();
            decide();
            samples.push(start.elapsed().as_nanos() as u64);
        }
        samples.sort_unstable();
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
        let (p50, p99, p999) = (at(0.50), at(0.99), at(0.999));
        eprintln!(
            "decision latency at {n:>6} routes over {CALLS} calls: p50 {p50} ns, p99 {p99} ns, p99.9 {p999} ns, max {} ns (p99 target <= {P99_TARGET_NS} ns: {})",
            samples[samples.len() - 1],
            if p99 <= P99_TARGET_NS { "met" } else { "MISSED" }
        );
        p50s.push((n, p50));
    }
    if let (Some(&(_, small)), Some(&(_, large))) = (p50s.first(), p50s.last()) {
        eprintln!(
            "p50 at 10,000 routes / p50 at 10 routes = {:.2} (target <= 1.5)",
            large as f64 / small.max(1) as f64
        );
    }
}

fn build(c: &mut Criterion) {
    // Building 10,000 routes is too slow for many criterion samples; time a few builds.
    let text = config_text(10_000);
    let mut group = c.benchmark_group("build_route_table");
    group.sample_size(10);
    group.bench_function("10000", |b| {
        b.iter(|| {
            let config = Config::from_toml(black_box(&text), Vec::new(), Path::new("."))
                .unwrap_or_else(|e| panic!("{e}"));
            let listener = config.listener();
            black_box(RouteTable::new(config.routes, listener))
        })
    });
    group.finish();
    let start = Instant::now();
    let _ = table(10_000);
    eprintln!(
        "one build of 10,000 routes (parse + compile + index): {:?}",
        start.elapsed()
    );
}

criterion_group!(benches, decision, latency_percentiles, build);
criterion_main!(benches);
