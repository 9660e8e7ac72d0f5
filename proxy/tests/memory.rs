//! What the proxy costs in resident memory: routes, at start and after a reload (the compiled
//! routes only, not the TOML tables they were parsed from, many times their size); an open
//! client connection; and no transparent huge pages to inflate it.

use std::time::Duration;

use portcullis_harness::{route, rss_kib, TestEnv};

/// Routes added to the configuration (enough that a few KiB a route stand well above the
/// noise of page-sized RSS moves).
const ROUTES: usize = 5_000;
/// The most a route may cost, in resident bytes (the parsed tables alone were ~20 KB a route).
const MAX_BYTES_PER_ROUTE: u64 = 4_096;

/// `ROUTES` routes, each a host of its own with a three-criterion policy.
fn many_routes(upstream: &str) -> String {
    (0..ROUTES)
        .map(|i| {
            route::three_criteria_table(
                &format!("http://r{i}.localhost"),
                upstream,
                &format!("team-{}", i % 50),
            )
        })
        .collect()
}

/// The proxy's RSS in bytes once it stopped moving.
async fn settled_rss(pid: u32) -> u64 {
    let mut last = rss_kib(pid).expect("VmRSS");
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = rss_kib(pid).expect("VmRSS");
        if now.abs_diff(last) < 256 {
            return now * 1024;
        }
        last = now;
    }
    last * 1024
}

fn per_route(before: u64, after: u64) -> u64 {
    after.saturating_sub(before) / ROUTES as u64
}

#[tokio::test]
async fn routes_cost_kilobytes_of_resident_memory_at_start_and_after_a_reload() {
    let small = TestEnv::builder(env!("CARGO_BIN_EXE_portcullis"))
        .route(&route::public("public"))
        .start()
        .await;
    let pid = small.proxy.pid().expect("pid");
    let base = settled_rss(pid).await;

    // A reload from one route to ROUTES more.
    let original = std::fs::read_to_string(small.proxy.config_path()).expect("config");
    small
        .rewrite_config(
            &format!("{original}{}", many_routes(&small.upstream.url())),
            true,
        )
        .await;
    let reloaded = settled_rss(pid).await;
    let resp = small.browser().get(&small.url("r4999", "/")).await;
    assert_eq!(resp.status(), 302, "the last route is live");

    // A start with all of them.
    let big = TestEnv::builder(env!("CARGO_BIN_EXE_portcullis"))
        .route(&route::public("public"))
        .config(&many_routes("{upstream}"))
        .start()
        .await;
    let started = settled_rss(big.proxy.pid().expect("pid")).await;

    let (after_reload, at_start) = (per_route(base, reloaded), per_route(base, started));
    eprintln!("bytes per route: {after_reload} after a reload, {at_start} at start");
    assert!(
        after_reload <= MAX_BYTES_PER_ROUTE,
        "{after_reload} bytes a route after a reload"
    );
    assert!(
        at_start <= MAX_BYTES_PER_ROUTE,
        "{at_start} bytes a route at start"
    );
}

/// Client connections kept alive and idle after one request each.
const IDLE_CONNECTIONS: usize = 400;
/// The most such a connection may cost, in resident bytes: its 16 KiB read buffer, the task
/// that waits for its next request, and what Pingora keeps of it (about 47 KB in all). With
/// Pingora's default read buffer of 64 KiB, zeroed when the connection is accepted, it was
/// about 100 KB.
const MAX_BYTES_PER_IDLE_CONNECTION: u64 = 64 * 1024;

/// `count` connections to the proxy on `port`, each left idle after a `HEAD` answered 200.
async fn idle_connections(port: u16, count: usize) -> Vec<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt as _;
    let request = format!("HEAD / HTTP/1.1\r\nHost: public.localhost:{port}\r\n\r\n");
    let mut connections = Vec::with_capacity(count);
    for _ in 0..count {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        s.write_all(request.as_bytes()).await.expect("write");
        let head = portcullis_harness::read_head(&mut s)
            .await
            .expect("an answer");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        connections.push(s);
    }
    connections
}

#[tokio::test]
async fn an_idle_kept_alive_connection_costs_kilobytes_of_resident_memory() {
    let env = TestEnv::builder(env!("CARGO_BIN_EXE_portcullis"))
        .route(&route::public("public"))
        .start()
        .await;
    let pid = env.proxy.pid().expect("pid");
    // The first connections also set up what every later one shares (the upstream pool, the
    // worker threads' allocator pages): not counted.
    let warm = idle_connections(env.port, 20).await;
    let before = settled_rss(pid).await;
    let idle = idle_connections(env.port, IDLE_CONNECTIONS).await;
    let after = settled_rss(pid).await;
    let per_connection = after.saturating_sub(before) / IDLE_CONNECTIONS as u64;
    eprintln!("{IDLE_CONNECTIONS} idle connections: {per_connection} resident bytes each");
    assert!(
        per_connection <= MAX_BYTES_PER_IDLE_CONNECTION,
        "{per_connection} resident bytes per idle connection"
    );
    drop((warm, idle));
}

/// Transparent huge pages are off for the proxy process. mimalloc asks for them on its arenas
/// (`MADV_HUGEPAGE`), and the kernel's khugepaged then fills each 2 MiB range that holds a
/// single used page: RSS stepped up by ~10 MB about ten minutes into every soak, the time the
/// scan took to reach the heap, with no allocation behind it.
#[tokio::test]
async fn transparent_huge_pages_are_off_for_the_proxy() {
    let env = TestEnv::builder(env!("CARGO_BIN_EXE_portcullis"))
        .route(&route::public("public"))
        .start()
        .await;
    let pid = env.proxy.pid().expect("pid");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    // `THP_enabled` is in /proc/PID/status since Linux 6.0; older kernels cannot tell.
    if let Some(line) = status.lines().find(|l| l.starts_with("THP_enabled:")) {
        assert_eq!(line.split_whitespace().nth(1), Some("0"), "{line}");
    } else {
        eprintln!("SKIPPED: this kernel's /proc/PID/status has no THP_enabled line");
    }
}
