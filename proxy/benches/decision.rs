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
    RouteTable::new(config.routes)
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

fn build(c: &mut Criterion) {
    // Building 10,000 routes is too slow for many criterion samples; time a few builds.
    let text = config_text(10_000);
    let mut group = c.benchmark_group("build_route_table");
    group.sample_size(10);
    group.bench_function("10000", |b| {
        b.iter(|| {
            let config = Config::from_toml(black_box(&text), Vec::new(), Path::new("."))
                .unwrap_or_else(|e| panic!("{e}"));
            black_box(RouteTable::new(config.routes))
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

criterion_group!(benches, decision, build);
criterion_main!(benches);
