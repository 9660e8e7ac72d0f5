//! Session refresh (the identity manager) against the real IdP with a 3-second access token:
//! sessions outlive many access tokens, pick up claim changes, survive an IdP outage, and end
//! when the IdP revokes the grant.

use std::time::{Duration, Instant};

use portcullis_harness::{metric, Browser, IdpOptions, TestEnv};

const ACCESS_TOKEN_TTL: u64 = 3;

async fn start() -> TestEnv {
    TestEnv::app_admin_public(env!("CARGO_BIN_EXE_portcullis"))
        .idp_options(IdpOptions {
            access_token_ttl_secs: ACCESS_TOKEN_TTL,
            ..IdpOptions::default()
        })
        .start()
        .await
}

async fn status(env: &TestEnv, b: &Browser) -> u16 {
    b.get(&env.url("app", "/")).await.status().as_u16()
}

/// The labelled counter `portcullis_session_refreshes_total{result="..."}`.
fn refreshes(text: &str, result: &str) -> f64 {
    metric(
        text,
        &format!("portcullis_session_refreshes_total{{result=\"{result}\"}}"),
    )
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_outlives_its_access_tokens_and_follows_claim_changes() {
    let env = start().await;
    let alice = env.signed_in("app", "alice").await;
    let before = env.idp.token_grants("refresh_token").await;

    // Three access-token lifetimes: refreshed again and again, signed in throughout.
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(3 * ACCESS_TOKEN_TTL) {
        assert_eq!(status(&env, &alice).await, 200, "{}", env.logs());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let grants = env.idp.token_grants("refresh_token").await - before;
    println!(
        "refresh grants in {:?} with a {ACCESS_TOKEN_TTL} s access token: {grants}",
        t0.elapsed()
    );
    assert!(
        grants >= 3,
        "only {grants} refreshes in {:?}\n{}",
        t0.elapsed(),
        env.logs()
    );
    let m = env.proxy.metrics().await;
    assert!(refreshes(&m, "success") >= 3.0, "{m}");
    assert_eq!(
        metric(&m, "portcullis_identity_manager_leader"),
        Some(1.0),
        "{m}"
    );

    // A group change at the IdP reaches the identity JWT after the next refresh.
    env.idp
        .set_account("alice", serde_json::json!({ "groups": ["refreshed"] }))
        .await;
    let t0 = Instant::now();
    loop {
        assert_eq!(status(&env, &alice).await, 200);
        let groups = env
            .upstream
            .last()
            .and_then(|r| r.header("x-groups").map(str::to_owned))
            .unwrap_or_default();
        if groups == "refreshed" {
            println!("group change visible after {:?}", t0.elapsed());
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "groups still {groups:?}\n{}",
            env.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idp_outage_during_refresh_logs_nobody_out() {
    let env = start().await;
    let alice = env.signed_in("app", "alice").await;
    env.idp.outage(503).await;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(2 * ACCESS_TOKEN_TTL + 1) {
        assert_eq!(status(&env, &alice).await, 200, "{}", env.logs());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let m = env.proxy.metrics().await;
    assert!(refreshes(&m, "transient") >= 1.0, "{m}");
    assert_eq!(refreshes(&m, "invalid_grant"), 0.0, "{m}");

    // After the outage, refreshing resumes by itself (backoff is at most a few seconds here).
    let before = env.idp.token_grants("refresh_token").await;
    env.idp.end_outage().await;
    let t0 = Instant::now();
    while env.idp.token_grants("refresh_token").await <= before {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no refresh after the outage\n{}",
            env.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("refresh resumed {:?} after the outage ended", t0.elapsed());
    assert_eq!(status(&env, &alice).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_grant_ends_the_session() {
    let env = start().await;
    let alice = env.signed_in("app", "alice").await;
    let bob = env.signed_in("app", "bob").await;
    env.idp.revoke("alice").await;
    let t0 = Instant::now();
    loop {
        let s = status(&env, &alice).await;
        if s == 302 {
            println!("revoked grant ended the session after {:?}", t0.elapsed());
            break;
        }
        assert_eq!(s, 200);
        assert!(
            t0.elapsed() < Duration::from_secs(2 * ACCESS_TOKEN_TTL + 2),
            "alice still signed in {:?} after the revocation\n{}",
            t0.elapsed(),
            env.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status(&env, &bob).await, 200, "bob is unaffected");
    let m = env.proxy.metrics().await;
    assert_eq!(refreshes(&m, "invalid_grant"), 1.0, "{m}");
}
