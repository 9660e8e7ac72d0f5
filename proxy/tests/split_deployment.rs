//! A split deployment end to end: two databroker processes on one PostgreSQL database and two
//! proxy processes, each proxy on its own databroker. A session signed in through proxy A and
//! signed out through proxy B must stop working on A, in every one of many trials, within 5 s
//! (run with `--nocapture` to see how long it took). That the change travels by notification
//! rather than by the fallback poll is shown by the databroker crate's own PostgreSQL tests.
//!
//! Needs PostgreSQL on 127.0.0.1:5432 (user `postgres`, trust auth; `.ci/deps` starts it) and
//! `psql`. The test makes its own database and drops it afterwards.

use std::time::{Duration, Instant};

use portcullis_harness::{
    free_port, random_secret, route, ApiClient, Portcullis, TestDb, TestEnv, COOKIE,
};

/// The proxies of a split deployment are replicas behind one public origin, so a session
/// cookie of one is a session on the other: here both hosts' cookies share a scope, the cookie
/// domain (a session cookie is otherwise bound to the host and port that issued it).
const SHARED_COOKIE: &str = r#"cookie_domain = "localhost""#;

const TRIALS: usize = 100;

/// A databroker process on `db` and its gRPC URL.
async fn start_databroker(binary: &str, db: &TestDb, shared_secret: &str) -> (Portcullis, String) {
    let grpc = free_port();
    let broker = Portcullis::builder(binary)
        .config(&db.databroker_config(grpc, shared_secret))
        .start_or_panic()
        .await;
    (broker, format!("http://127.0.0.1:{grpc}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_out_through_one_proxy_ends_the_session_on_the_other() {
    let binary = env!("CARGO_BIN_EXE_portcullis");
    let db = TestDb::create("portcullis_e2e");
    let shared_secret = random_secret();
    let (_broker1, broker1_url) = start_databroker(binary, &db, &shared_secret).await;
    let (_broker2, broker2_url) = start_databroker(binary, &db, &shared_secret).await;

    // Proxy A (with the IdP and the upstream) on databroker 1.
    let env = TestEnv::builder(binary)
        .route(&route::any_user("app"))
        .config(SHARED_COOKIE)
        .on_databroker(&broker1_url, &shared_secret)
        .start()
        .await;

    // Proxy B: the same configuration on other ports, on databroker 2.
    let (port_b, metrics_b) = (free_port(), free_port());
    let config_b = env
        .config_on_ports(port_b, metrics_b)
        .replace(&broker1_url, &broker2_url);
    let _proxy_b = Portcullis::builder(binary)
        .config(&config_b)
        .env("PORTCULLIS_SHARED_SECRET", &shared_secret)
        .start()
        .await
        .unwrap_or_else(|e| panic!("proxy B: {e}"));

    let on_a = env.url("app", "/");
    let on_b = format!("http://app.localhost:{port_b}/");
    let sign_out_b = format!("http://app.localhost:{port_b}/.portcullis/sign_out");
    let client = ApiClient::new(&["app.localhost"], COOKIE);
    let mut delays = Vec::with_capacity(TRIALS);
    for trial in 0..TRIALS {
        let browser = env.browser();
        let page = browser.sign_in(&on_a, "alice").await;
        assert_eq!(page.status(), 200, "trial {trial}: sign-in through A");
        let cookie = browser
            .cookie(&on_a, COOKIE)
            .expect("a session cookie after sign-in");
        // Both proxies know the session (A has it cached now; B reads it from its databroker).
        assert_eq!(client.status(&on_a, &cookie).await, 200);
        assert_eq!(client.status(&on_b, &cookie).await, 200);

        client.sign_out(&sign_out_b, &cookie).await;
        let t0 = Instant::now();
        loop {
            let status = client.status(&on_a, &cookie).await;
            if status == 401 {
                delays.push(t0.elapsed());
                break;
            }
            assert_eq!(
                status, 200,
                "trial {trial}: A answers 200 until it learns, then 401"
            );
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "trial {trial}: A still accepts the old cookie after 5 s\n{}",
                env.logs()
            );
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
    }
    delays.sort();
    let pct =
        |p: f64| delays[((delays.len() as f64 * p).ceil() as usize).clamp(1, delays.len()) - 1];
    let (p50, p99, max) = (pct(0.50), pct(0.99), delays[delays.len() - 1]);
    println!(
        "sign-out propagation B → A over {} trials: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        delays.len(),
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3
    );
}
