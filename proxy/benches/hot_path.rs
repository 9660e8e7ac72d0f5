//! The per-request pieces of an authorized request that are not benched elsewhere: a session
//! cache hit against 10,000 cached sessions; the seeded-session lookup plus policy decision
//! together; and a client's session cookie to its session, side by side as a steady client's
//! requests find it (the opened-cookie memo pointing at the session: one lookup) and as a
//! client whose memo entry has no session yet (the memo, then the session cache: two).
//!
//! Benched elsewhere: cookie decode and decrypt and the cached identity assertion
//! (`auth/benches/cookie.rs`), route lookup and policy evaluation (`proxy/benches/decision.rs`,
//! `policy/benches/evaluate.rs`), the full `request_filter` decision
//! (`proxy/benches/request_filter.rs`).
//!
//! `cargo bench -p portcullis --bench hot_path`

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use portcullis::sessions::opened::{Known, OpenedCookies};
use portcullis::sessions::SessionCache;
use portcullis_auth::{Cipher, Secret, Session, SessionCookie};
use portcullis_policy::Request;

mod common;

const NOW: i64 = 1_800_000_000;
const SESSIONS: usize = 10_000;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn cache_with_sessions(rt: &tokio::runtime::Runtime) -> (Arc<SessionCache>, Vec<Session>) {
    let (cache, _, sessions) = common::seeded_cache(rt, SESSIONS, NOW);
    // Fill the cache: every later lookup is a hit.
    for s in &sessions {
        rt.block_on(cache.get(&s.id, NOW))
            .expect("get")
            .expect("live");
    }
    (cache, sessions)
}

fn session_cache(c: &mut Criterion) {
    let rt = runtime();
    let (cache, sessions) = cache_with_sessions(&rt);
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
            i = (i + 1) % sessions.len();
            let s = futures::executor::block_on(cache.get(black_box(&sessions[i].id), NOW))
                .expect("get")
                .expect("live");
            black_box(s)
        })
    });
    let mut i = 0usize;
    c.bench_function("session_cache_hit_and_policy_10k", |b| {
        b.iter(|| {
            i = (i + 1) % sessions.len();
            let s = futures::executor::block_on(cache.get(black_box(&sessions[i].id), NOW))
                .expect("get")
                .expect("live");
            let request = Request::new("GET", "/", NOW).with_identity(&s.identity);
            black_box(policy.evaluate(&request).allowed)
        })
    });
}

/// The scope the cookies of [`cookie_to_session`] are sealed and presented for.
const SCOPE: &str = "app.example.com:443";

/// A session cookie value to the live session it names, for 10,000 clients in turn: as a steady
/// client's request finds it, and (side by side) with the memo's session pointer unused.
fn cookie_to_session(c: &mut Criterion) {
    let rt = runtime();
    let (cache, sessions) = cache_with_sessions(&rt);
    let cipher = Cipher::new(&Secret::from_bytes([7; 32]));
    let values: Vec<String> = sessions
        .iter()
        .map(|s| SessionCookie::for_session(s, SCOPE).seal(&cipher))
        .collect();
    let memo = OpenedCookies::new(32_768);
    // As the proxy does on a client's first request: open, look up, attach.
    for value in &values {
        let Some(Known::Cookie(opened)) = memo.open(&cipher, value, NOW, SCOPE, |_| false) else {
            panic!("a first visit finds no session");
        };
        let s = rt
            .block_on(cache.get(&opened.session_id, NOW))
            .expect("get")
            .expect("live");
        memo.attach(&opened, &s);
    }
    let mut group = c.benchmark_group("cookie_to_session_10k");
    let mut i = 0usize;
    group.bench_function("memo_session", |b| {
        b.iter(|| {
            i = (i + 1) % values.len();
            match memo.open(&cipher, black_box(&values[i]), NOW, SCOPE, |s| {
                cache.is_current(s, NOW)
            }) {
                Some(Known::Session(s)) => black_box(s),
                _ => panic!("a steady client's session is current"),
            }
        })
    });
    let mut i = 0usize;
    group.bench_function("memo_then_cache", |b| {
        b.iter(|| {
            i = (i + 1) % values.len();
            let Some(Known::Cookie(opened)) =
                memo.open(&cipher, black_box(&values[i]), NOW, SCOPE, |_| false)
            else {
                panic!("the session pointer is not used here");
            };
            let s = futures::executor::block_on(cache.get(&opened.session_id, NOW))
                .expect("get")
                .expect("live");
            black_box(s)
        })
    });
    group.finish();
}

criterion_group!(benches, session_cache, cookie_to_session);
criterion_main!(benches);
