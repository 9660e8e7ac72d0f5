//! Hot reload: a changed file applies to the next request, a bad file changes nothing, and a
//! 10,000-route reload under load drops no request.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_harness::{route, TestEnv};

const ALICE_ONLY: &str = r#"from = "http://app.localhost"
to = "{upstream}"
policy = [ { allow = { or = [ { email = { is = "alice@example.com" } } ] } } ]"#;

#[tokio::test]
async fn tightened_policy_applies_to_the_next_request_and_bad_files_change_nothing() {
    let env = TestEnv::builder(env!("CARGO_BIN_EXE_portcullis"))
        .route(ALICE_ONLY)
        .start()
        .await;
    let browser = env.browser();
    let url = env.url("app", "/doc");
    assert_eq!(browser.sign_in(&url, "alice").await.status(), 200);
    let original = std::fs::read_to_string(env.proxy.config_path()).unwrap();

    // A file with errors: refused, the old policy keeps serving, the metric says so.
    let broken = original.replace("allow = {", "allow = { emial = 1,");
    env.rewrite_config(&broken, false).await;
    assert_eq!(browser.get(&url).await.status(), 200);
    assert!(env.logs().contains("configuration reload rejected"));

    // Tightened: only bob now. alice's very next request is denied.
    let tightened = original.replace("alice@example.com", "bob@example.com");
    env.rewrite_config(&tightened, true).await;
    assert_eq!(browser.get(&url).await.status(), 403);

    // A restart-only key is reported, not silently ignored.
    let moved = tightened.replace(
        &format!("metrics_address = \"127.0.0.1:{}\"", env.metrics_port),
        "metrics_address = \"127.0.0.1:1\"",
    );
    assert_ne!(moved, tightened);
    env.rewrite_config(&moved, true).await;
    assert!(
        env.logs().contains("only takes effect after a restart"),
        "{}",
        env.logs()
    );
}

#[tokio::test]
async fn reloading_ten_thousand_routes_under_load_drops_nothing() {
    let env = TestEnv::builder(env!("CARGO_BIN_EXE_portcullis"))
        .route(&route::public("public"))
        .start()
        .await;
    let original = std::fs::read_to_string(env.proxy.config_path()).unwrap();
    let mut big = original.clone();
    for i in 0..10_000 {
        big.push_str(&format!(
            "\n[[routes]]\nfrom = \"http://r{i}.localhost\"\nto = \"{}\"\nallow_any_authenticated_user = true\n",
            env.upstream.url()
        ));
    }

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let client = env.browser();
        let url = env.url("public", "/load");
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        workers.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                match client.client().get(&url).send().await {
                    Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    env.rewrite_config(&big, true).await;
    // Keep the load on a little after the swap, then stop.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("requests during the 10,000-route reload: {ok} ok, {failed} failed");
    assert!(ok > 100, "the load must really have run ({ok})");
    assert_eq!(failed, 0);

    // The new routes are live: the last one answers (302 to sign in, not 404).
    let resp = env.browser().get(&env.url("r9999", "/")).await;
    assert_eq!(resp.status(), 302);
    let resp = env.browser().get(&env.url("r10000", "/")).await;
    assert_eq!(resp.status(), 404);
}
