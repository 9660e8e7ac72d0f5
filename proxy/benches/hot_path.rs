//! The per-request pieces of an authorized request that are not benched elsewhere: a session
//! cache hit (what every cookie request after the first costs) against 10,000 cached
//! sessions, and the seeded-session lookup plus policy decision together.
//!
//! Benched elsewhere: cookie decode and decrypt and the cached identity assertion
//! (`auth/benches/cookie.rs`), route lookup and policy evaluation (`proxy/benches/decision.rs`,
//! `policy/benches/evaluate.rs`). The full `request_filter` is not benched here: it needs a
//! Pingora `Session` over a real downstream stream, which the load harness
//! (`cargo run --release -p portcullis-bench`) measures end to end instead.
//!
//! `cargo bench -p portcullis --bench hot_path`

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use portcullis::metrics::Metrics;
use portcullis::sessions::SessionCache;
use portcullis_databroker::{MemoryStore, NewRecord, Store, SESSION_TYPE};
use portcullis_policy::Request;

const NOW: i64 = 1_800_000_000;
const SESSIONS: usize = 10_000;

fn cache_with_sessions(rt: &tokio::runtime::Runtime) -> (SessionCache, Vec<String>) {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let mut rng = rand::thread_rng();
    let sessions: Vec<_> = (0..SESSIONS)
        .map(|i| portcullis::seed::random_session(&mut rng, i, NOW - 60, NOW + 3600))
        .collect();
    let records = sessions
        .iter()
        .map(|s| {
            NewRecord::new(
                SESSION_TYPE,
                s.id.clone(),
                serde_json::to_value(s).expect("session json"),
            )
        })
        .collect();
    rt.block_on(store.put(records)).expect("put");
    let metrics = Arc::new(Metrics::new().expect("metrics"));
    let cache = SessionCache::new(store, metrics, 512 << 20, Duration::from_secs(60));
    let ids: Vec<String> = sessions.into_iter().map(|s| s.id).collect();
    // Fill the cache: every later lookup is a hit.
    for id in &ids {
        rt.block_on(cache.get(id, NOW)).expect("get").expect("live");
    }
    (cache, ids)
}

fn session_cache(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (cache, ids) = cache_with_sessions(&rt);
    let doc: toml::Table = toml::from_str(
        r#"policy = [
  { allow = { and = [ { domain = { is = "example.com" } }, { groups = { has = "users" } } ] } },
  { deny = { or = [ { http_method = { is = "DELETE" } } ] } },
]"#,
    )
    .expect("policy TOML");
    let policy = portcullis_policy::Policy::parse(&doc["policy"], "policy").expect("policy");
    let mut i = 0usize;
    c.bench_function("session_cache_hit_10k", |b| {
        b.iter(|| {
            i = (i + 1) % ids.len();
            let s = futures::executor::block_on(cache.get(black_box(&ids[i]), NOW))
                .expect("get")
                .expect("live");
            black_box(s)
        })
    });
    let mut i = 0usize;
    c.bench_function("session_cache_hit_and_policy_10k", |b| {
        b.iter(|| {
            i = (i + 1) % ids.len();
            let s = futures::executor::block_on(cache.get(black_box(&ids[i]), NOW))
                .expect("get")
                .expect("live");
            let request = Request::new("GET", "/", NOW).with_identity(&s.identity);
            black_box(policy.evaluate(&request).allowed)
        })
    });
}

criterion_group!(benches, session_cache);
criterion_main!(benches);
