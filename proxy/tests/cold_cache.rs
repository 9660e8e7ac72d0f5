//! A proxy (re)started in front of existing sessions does not start cold: by the time it
//! reports ready, it has preloaded the sessions of the databroker's snapshot, so the first
//! request of every seeded session is a cache hit, not a round trip to the databroker.

use std::time::{Duration, Instant};

use portcullis_harness::{
    databroker_config, free_port, metric, random_secret, ApiClient, Portcullis, TestEnv, COOKIE,
};

const COUNT: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_proxy_answers_seeded_sessions_from_its_cache_at_once() {
    let binary = env!("CARGO_BIN_EXE_portcullis");
    let shared_secret = random_secret();
    let grpc = free_port();
    let broker = Portcullis::builder(binary)
        .config(&databroker_config(grpc, &shared_secret, None))
        .start()
        .await
        .unwrap_or_else(|e| panic!("databroker: {e}"));
    let mut env = TestEnv::builder(binary)
        .on_databroker(&format!("http://127.0.0.1:{grpc}"), &shared_secret)
        .route(
            r#"from = "http://app.localhost"
to = "{upstream}"
allow_any_authenticated_user = true"#,
        )
        .start()
        .await;

    // Sessions written into the databroker while the proxy runs: it has not seen any of them.
    let config = env
        .config_text()
        .replace(env.shared_secret(), &shared_secret);
    let cookies = Portcullis::seed_sessions(binary.as_ref(), &config, COUNT).expect("seeded");

    // A fresh process (an empty cache) on the same ports, with the databroker's secret in its
    // file; the harness waits for /readyz.
    env.proxy.signal("TERM");
    let deadline = Instant::now() + Duration::from_secs(30);
    while env.proxy.try_wait().is_none() {
        assert!(Instant::now() < deadline, "the proxy did not stop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    env.proxy = Portcullis::builder(binary)
        .config(&config)
        .start_or_panic()
        .await;
    let text = env.proxy.metrics().await;
    assert_eq!(
        metric(&text, "portcullis_session_cache_preloaded"),
        Some(COUNT as f64),
        "preloaded when ready\n{text}\n{}",
        env.logs()
    );

    let client = ApiClient::new(&["app.localhost"], COOKIE);
    for cookie in &cookies {
        let status = client.status(&env.url("app", "/"), cookie).await;
        assert_eq!(status, 200, "{}", env.logs());
    }
    let text = env.proxy.metrics().await;
    assert_eq!(
        metric(&text, "portcullis_session_cache_misses_total"),
        Some(0.0),
        "the first request of each seeded session went to the databroker\n{text}"
    );
    assert!(
        metric(&text, "portcullis_session_cache_hits_total").unwrap_or(0.0) >= COUNT as f64,
        "{text}"
    );
    assert!(
        env.proxy.json_logs().iter().any(|l| {
            l["fields"]["preloaded"].as_u64() == Some(COUNT as u64)
                || l["preloaded"].as_u64() == Some(COUNT as u64)
        }),
        "one log line says how many sessions were preloaded\n{}",
        env.logs()
    );
    drop(broker);
}
