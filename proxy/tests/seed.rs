//! `portcullis sessions seed` end to end: seed sessions into a separate databroker process, then
//! use some of the printed cookies through a proxy that reads that databroker.

use portcullis_harness::{
    databroker_config, free_port, random_secret, ApiClient, Portcullis, TestEnv, COOKIE,
};

const COUNT: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_cookies_work_through_a_proxy() {
    let binary = env!("CARGO_BIN_EXE_portcullis");
    let shared_secret = random_secret();
    let grpc = free_port();
    let broker = Portcullis::builder(binary)
        .config(&databroker_config(grpc, &shared_secret, None))
        .start()
        .await
        .unwrap_or_else(|e| panic!("databroker: {e}"));

    let env = TestEnv::builder(binary)
        .on_databroker(&format!("http://127.0.0.1:{grpc}"), &shared_secret)
        .config(r#"jwt_claims_headers = { "X-Email" = "email" }"#)
        .route(
            r#"from = "http://app.localhost"
to = "{upstream}"
pass_identity_headers = true
policy = [ { allow = { and = [ { domain = { is = "example.com" } }, { groups = { has = "users" } } ] } } ]"#,
        )
        .start()
        .await;

    // The proxy's own file, with the secret the databroker shares.
    let config = env
        .config_text()
        .replace(env.shared_secret(), &shared_secret);
    let cookies = Portcullis::seed_sessions(binary.as_ref(), &config, COUNT).expect("seeded");
    let unique: std::collections::HashSet<_> = cookies.iter().collect();
    assert_eq!(unique.len(), COUNT, "every cookie names its own session");

    let client = ApiClient::new(&["app.localhost"], COOKIE);
    // The first nine seeded users are in group `users` (every tenth is not).
    for cookie in &cookies[..3] {
        let status = client.status(&env.url("app", "/seeded"), cookie).await;
        assert_eq!(status, 200, "{}", env.logs());
        let seen = env.upstream.last().unwrap();
        let email = seen.header("x-email").unwrap_or_default().to_owned();
        assert!(
            email.starts_with("seed-") && email.ends_with("@example.com"),
            "{email}"
        );
        assert!(seen.header("x-portcullis-jwt-assertion").is_some());
    }
    // The tenth is not in `users`: the policy denies it.
    let status = client.status(&env.url("app", "/seeded"), &cookies[9]).await;
    assert_eq!(status, 403);

    // By default the cookies are for the first route's host; sealed for another (`--host`),
    // a seeded cookie is no session on app.
    let dir = tempfile::tempdir().unwrap();
    let other_path = dir.path().join("other.txt");
    let out = Portcullis::run(
        binary.as_ref(),
        &[
            "sessions",
            "seed",
            "--count",
            "1",
            "--host",
            "other.localhost:1",
            "--out",
            other_path.to_str().unwrap(),
        ],
        &config,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let other = std::fs::read_to_string(&other_path).unwrap();
    let status = client
        .status(&env.url("app", "/seeded"), other.trim())
        .await;
    assert_eq!(status, 401);

    // The in-memory store of a lone proxy cannot be seeded.
    let lone = config.replace(
        &format!("databroker_service_url = \"http://127.0.0.1:{grpc}\""),
        "",
    );
    let out = Portcullis::run(
        binary.as_ref(),
        &["sessions", "seed", "--count", "1"],
        &lone,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("databroker_service_url"));
    drop(broker);
}
