//! The heap a compiled route and a cached session hold, counted by a global allocator that
//! tallies live bytes: deterministic where RSS moves by pages and depends on the allocator.
//! (`memory.rs` checks the proxy process's RSS; `portcullis-bench --memory` measures both.)
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use std::sync::{Arc, Mutex};
use std::time::Duration;

use portcullis::config::Config;
use portcullis::observe::metrics::Metrics;
use portcullis::sessions::opened::{Known, OpenedCookies};
use portcullis::sessions::SessionCache;
use portcullis::state::Runtime;
use portcullis_auth::jwt::ASSERTION_KEEP_JWT_SECS;
use portcullis_auth::{AssertionCache, AssertionSigner, Cipher, Secret, SessionCookie};
use portcullis_databroker::{MemoryStore, Store};
use portcullis_harness::route::three_criteria_table;

/// One measurement at a time: the tests of this file share the counter.
static SERIAL: Mutex<()> = Mutex::new(());

/// `System`, counting the bytes it holds for the program.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is passed on to `System` unchanged; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const BASE: &str = r#"
address = "127.0.0.1:18080"
insecure_server = true
authenticate_service_url = "http://authenticate.localhost:18080"
shared_secret = "YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXoxMjM0NTY="
cookie_secret = "YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXoxMjM0NTY="
idp_provider_url = "http://127.0.0.1:9"
idp_client_id = "c"
idp_client_secret = "s"
"#;

/// `routes` routes, each with a policy of three criteria: its own group when `distinct`, else
/// one of 50 groups (so that each policy text repeats).
fn config(routes: usize, distinct: bool) -> String {
    let mut text = BASE.to_owned();
    for i in 0..routes {
        text.push_str(&three_criteria_table(
            &format!("http://r{i}.example.localhost:18080"),
            "http://127.0.0.1:18099",
            &format!("team-{}", if distinct { i } else { i % 50 }),
        ));
    }
    text
}

/// Live heap bytes of a `Runtime` compiled from `routes` routes: (the parsed `Config`, the
/// whole `Runtime`).
fn heap_of(routes: usize, distinct: bool) -> (isize, isize) {
    let text = config(routes, distinct);
    let before = LIVE.load(Ordering::Relaxed);
    let config = Config::from_toml(&text, Vec::new(), std::path::Path::new(".")).expect("valid");
    let parsed = LIVE.load(Ordering::Relaxed) - before;
    let runtime = Runtime::new(config);
    let compiled = LIVE.load(Ordering::Relaxed) - before;
    drop(runtime);
    (parsed, compiled)
}

/// Heap bytes per route: (parsed, compiled).
fn per_route(distinct: bool) -> (isize, isize) {
    let (few_parsed, few) = heap_of(10, distinct);
    let (many_parsed, many) = heap_of(2_010, distinct);
    ((many_parsed - few_parsed) / 2_000, (many - few) / 2_000)
}

#[test]
fn a_compiled_route_holds_less_than_two_kilobytes_of_heap() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (parsed, compiled) = per_route(true);
    eprintln!("heap per route, every policy distinct: {parsed} bytes parsed, {compiled} compiled");
    assert!(compiled <= 1_792, "{compiled} bytes a route");
    // Routes that repeat a policy share its compiled form.
    let (parsed, shared) = per_route(false);
    eprintln!("heap per route, policies repeated: {parsed} bytes parsed, {shared} compiled");
    assert!(
        shared + 512 <= compiled,
        "{shared} bytes a route with shared policies"
    );
}

/// Sessions cached, and given an identity assertion, by the measurement below.
const SESSIONS: usize = 5_000;

#[test]
fn a_cached_session_its_remembered_cookie_and_its_identity_assertion_stay_small() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(sessions_and_assertions());
}

async fn sessions_and_assertions() {
    let now = portcullis_harness::unix_now();
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let mut rng = rand::thread_rng();
    let sessions: Vec<_> = (0..SESSIONS)
        .map(|i| portcullis::seed::random_session(&mut rng, i, now - 60, now + 3600))
        .collect();
    portcullis::seed::store_sessions(store.as_ref(), &sessions)
        .await
        .expect("stored");
    let metrics = Arc::new(Metrics::new().expect("metrics"));
    let cache = SessionCache::new(store, metrics, 1 << 30, Duration::from_secs(60));
    let assertions = AssertionCache::new(1_000_000);
    let signer = AssertionSigner::derive(&Secret::from_bytes([9; 32])).expect("key");
    const SCOPE: &str = "app.localhost:443";
    let cipher = Cipher::new(&Secret::from_bytes([7; 32]));
    let sealed: Vec<String> = sessions
        .iter()
        .map(|s| {
            SessionCookie {
                session_id: s.id.clone(),
                scope: SCOPE.into(),
                issued_at: now - 60,
                expires_at: now + 3600,
            }
            .seal(&cipher)
        })
        .collect();
    let memo = OpenedCookies::new(1_000_000);

    let before = LIVE.load(Ordering::Relaxed);
    let mut kept = Vec::with_capacity(SESSIONS);
    for s in &sessions {
        kept.push(cache.get(&s.id, now).await.expect("get").expect("live"));
    }
    let cached = LIVE.load(Ordering::Relaxed);
    // Each session's cookie opened once, and its session attached: as after a first request.
    for (value, s) in sealed.iter().zip(&kept) {
        let Some(Known::Cookie(opened)) = memo.open(&cipher, value, now, SCOPE, |_| true) else {
            panic!("a first visit opens the cookie");
        };
        memo.attach(&opened, s);
    }
    assert_eq!(memo.len(), SESSIONS);
    let remembered = LIVE.load(Ordering::Relaxed);
    let ask_all = || {
        for s in &kept {
            assertions
                .get_or_sign_kept(
                    &s.assertion,
                    &signer,
                    &s.id,
                    "app.localhost",
                    s.assertion_content,
                    now,
                    || portcullis::upstream::identity::claims("app.localhost", s),
                )
                .expect("signed");
        }
    };
    // Each session's first request signs its assertion; the second makes the JWT again from
    // the signature and keeps it for the requests that follow.
    ask_all();
    let signed_once = LIVE.load(Ordering::Relaxed);
    ask_all();
    let signed = LIVE.load(Ordering::Relaxed);
    assert_eq!(assertions.signatures_total(), SESSIONS as u64);
    // A renewal run once the JWTs went unused for a while (nothing is due yet): each keeps
    // only its signature.
    let later = now + ASSERTION_KEEP_JWT_SECS;
    let renewed = assertions.renew_due(&signer, later, Duration::ZERO, &|| false, &|_, _| None);
    assert_eq!(renewed, 0);
    let idle = LIVE.load(Ordering::Relaxed);
    let per_session = (cached - before) / SESSIONS as isize;
    let per_cookie = (remembered - cached) / SESSIONS as isize;
    let per_assertion_once = (signed_once - remembered) / SESSIONS as isize;
    let per_assertion = (signed - remembered) / SESSIONS as isize;
    let per_idle_assertion = (idle - remembered) / SESSIONS as isize;
    eprintln!(
        "heap per session: {per_session} bytes cached, {per_cookie} bytes of opened-cookie \
         memo, {per_assertion_once} bytes of assertion asked for once, {per_assertion} in use, \
         {per_idle_assertion} once unused for {ASSERTION_KEEP_JWT_SECS} s"
    );
    assert_eq!(assertions.len(), SESSIONS);
    // moka's own bookkeeping is a good part of the first. An assertion in use keeps its JWT
    // (about 600 bytes); an idle one, or one asked for once, its signature and the cache's
    // entry for it.
    assert!(per_session <= 1_024, "{per_session} bytes a cached session");
    // The memo keeps a tag of the cookie, not the cookie (about 200 bytes): its table's slot.
    assert!(per_cookie <= 128, "{per_cookie} bytes a remembered cookie");
    assert!(per_assertion <= 1_024, "{per_assertion} bytes an assertion");
    // Asked for once, it keeps no JWT: a session seen once costs what an idle one does.
    assert!(
        per_assertion_once <= 256,
        "{per_assertion_once} bytes an assertion asked for once"
    );
    assert!(
        per_idle_assertion <= 256,
        "{per_idle_assertion} bytes an idle assertion"
    );
}
