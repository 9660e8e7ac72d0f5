//! The full `request_filter` decision, as Pingora calls it: a parsed request in a Pingora
//! `Session` goes through Portcullis's `new_ctx` and `request_filter` (the Host and path checks,
//! the route lookup, the session cookie to its session among 10,000, the policy, the metrics),
//! for a public route, for authorized and denied cookie requests of random seeded users, and
//! for a request without a session (the sign-in redirect, written to the session).
//!
//! Each request is parsed from bytes in memory (`std::io::Cursor`, which Pingora accepts as a
//! stream) in the batch's setup, outside the measured time; the measured routine is `new_ctx`
//! plus `request_filter`. The upstream phases (identity headers, the proxying itself) are not
//! in it: the load harness measures those end to end (`cargo run --release -p portcullis-bench`,
//! and `--instructions`).
//!
//! `cargo bench -p portcullis --bench request_filter`

use std::hint::black_box;
use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use pingora::proxy::{ProxyHttp, Session};
use portcullis::clock::now_unix;
use portcullis::config::Config;
use portcullis::ctx::Ctx;
use portcullis::service::Proxy;
use portcullis::state::State;
use portcullis_auth::{Cipher, Session as StoredSession, SessionCookie};

mod common;

const SECRET: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
const SESSIONS: usize = 10_000;
const APP: &str = "app.bench.localhost";
const PUBLIC: &str = "public.bench.localhost";

/// The load harness's routes: a three-criterion policy with identity headers, and a public one.
fn config() -> Config {
    let text = format!(
        r#"
insecure_server = true
address = "127.0.0.1:8000"
authenticate_service_url = "http://authenticate.bench.localhost:8000"
shared_secret = "{SECRET}"
cookie_secret = "{SECRET}"
cookie_secure = false
idp_provider_url = "http://127.0.0.1:9"
idp_client_id = "bench"
idp_client_secret = "bench"
jwt_claims_headers = {{ "X-Email" = "email", "X-Groups" = "groups" }}
{authorized}
[[routes]]
from = "http://{PUBLIC}:8000"
to = "http://127.0.0.1:9"
allow_public_unauthenticated_access = true
"#,
        authorized = portcullis_harness::route::three_criteria_table(
            &format!("http://{APP}:8000"),
            "http://127.0.0.1:9",
            "users"
        ),
    );
    Config::from_toml(&text, Vec::new(), Path::new(".")).unwrap_or_else(|e| panic!("{e}"))
}

/// A proxy whose in-memory store holds `SESSIONS` seeded sessions, with the cookie values of
/// the seeded users the app route allows (group `users`) and of those it denies.
fn proxy(rt: &tokio::runtime::Runtime) -> (Proxy, Vec<String>, Vec<String>) {
    let config = config();
    let cipher = Cipher::new(&config.cookie_secret);
    let (cache, metrics, sessions) = common::seeded_cache(rt, SESSIONS, now_unix());
    let (allowed, denied): (Vec<&StoredSession>, Vec<&StoredSession>) = sessions
        .iter()
        .partition(|s| s.groups.iter().any(|g| g == "users"));
    let seal = |s: Vec<&StoredSession>| -> Vec<String> {
        s.into_iter()
            .map(|s| {
                // Sealed for the host the requests name (`request`).
                SessionCookie::for_session(s, format!("{APP}:8000")).seal(&cipher)
            })
            .collect()
    };
    let (allowed, denied) = (seal(allowed), seal(denied));
    let state = State::new(config, cache, metrics).expect("state");
    (
        Proxy {
            state: Arc::new(state),
        },
        allowed,
        denied,
    )
}

fn request(host: &str, cookie: Option<&str>) -> Vec<u8> {
    let mut r = format!(
        "GET /index.html?q=1 HTTP/1.1\r\nHost: {host}:8000\r\nUser-Agent: portcullis-bench\r\n\
         Accept: */*\r\n"
    );
    if let Some(c) = cookie {
        r.push_str(&format!("Cookie: _portcullis={c}\r\n"));
    }
    r.push_str("\r\n");
    r.into_bytes()
}

/// A Pingora session that has read `bytes` as its request.
fn parsed(bytes: &[u8]) -> Session {
    let mut session = Session::new_h1(Box::new(Cursor::new(bytes.to_vec())));
    let read = futures::executor::block_on(session.read_request()).expect("read");
    assert!(read, "the request parses");
    session
}

/// `new_ctx` and `request_filter`; true when the request was answered (not proxied).
fn decide(proxy: &Proxy, session: &mut Session) -> (bool, Ctx) {
    let mut ctx = proxy.new_ctx();
    let answered =
        futures::executor::block_on(proxy.request_filter(session, &mut ctx)).expect("filter");
    (answered, ctx)
}

fn request_filter(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _context = rt.enter();
    let (proxy, allowed, denied) = proxy(&rt);
    let allowed: Vec<Vec<u8>> = allowed.iter().map(|v| request(APP, Some(v))).collect();
    let denied: Vec<Vec<u8>> = denied.iter().map(|v| request(APP, Some(v))).collect();
    // A client's first request opens its cookie and finds its session; the measured ones are
    // a steady client's, as in the load harness after its warm-up.
    for (bytes, want) in allowed
        .iter()
        .map(|b| (b, false))
        .chain(denied.iter().map(|b| (b, true)))
    {
        let (answered, ctx) = decide(&proxy, &mut parsed(bytes));
        assert_eq!(answered, want, "outcome {}", ctx.outcome());
    }

    let mut group = c.benchmark_group("request_filter_10k");
    let cases: [(&str, Vec<Vec<u8>>, &str); 4] = [
        ("public", vec![request(PUBLIC, None)], "public"),
        ("authorized", allowed, "allow"),
        ("denied", denied, "deny"),
        ("sign_in", vec![request(APP, None)], "sign_in"),
    ];
    for (name, requests, outcome) in &cases {
        let (_, ctx) = decide(&proxy, &mut parsed(&requests[0]));
        assert_eq!(ctx.outcome().as_str(), *outcome, "{name}");
        let mut i = 0usize;
        group.bench_function(*name, |b| {
            b.iter_batched(
                || {
                    i = (i + 1) % requests.len();
                    parsed(&requests[i])
                },
                |mut session| {
                    let decided = decide(&proxy, black_box(&mut session));
                    (session, decided)
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, request_filter);
criterion_main!(benches);
