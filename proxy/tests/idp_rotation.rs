//! The IdP rotates its ID token signing key while the proxy runs: the proxy, which read the
//! IdP's JWKS at discovery, fetches it again when an ID token names a key it does not know, so
//! sign-ins and session refreshes keep working without a restart.

use std::time::{Duration, Instant};

use portcullis_harness::{metric, IdpOptions, TestEnv};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// Rotates the IdP's signing key and checks that the old key is gone from its JWKS.
async fn rotate(env: &mut TestEnv) {
    let before = env.idp.signing_kids().await;
    env.idp.rotate_signing_key().await;
    let after = env.idp.signing_kids().await;
    assert_eq!(after.len(), 1, "{after:?}");
    assert!(
        !after.iter().any(|kid| before.contains(kid)),
        "{before:?} -> {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_works_after_the_idp_rotates_its_key() {
    let mut env = TestEnv::app_admin_public(BIN).start().await;
    env.signed_in("app", "alice").await;

    rotate(&mut env).await;

    // A fresh browser: a new IdP login, whose ID token is signed with the new key.
    let bob = env.browser();
    let resp = bob.sign_in(&env.url("app", "/"), "bob").await;
    assert_eq!(
        resp.status(),
        200,
        "sign-in after the IdP's key rotation\n--- logs ---\n{}",
        env.logs()
    );

    // And again: the new key is known now, no further JWKS fetch is needed (nor allowed yet).
    let carol = env.browser();
    let resp = carol.sign_in(&env.url("app", "/"), "carol").await;
    assert_eq!(resp.status(), 200, "{}", env.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_refresh_across_a_key_rotation() {
    const ACCESS_TOKEN_TTL: u64 = 3;
    let mut env = TestEnv::app_admin_public(BIN)
        .idp_options(IdpOptions {
            access_token_ttl_secs: ACCESS_TOKEN_TTL,
            ..IdpOptions::default()
        })
        .start()
        .await;
    let alice = env.signed_in("app", "alice").await;

    rotate(&mut env).await;
    let refreshes = |text: &str, result: &str| {
        metric(
            text,
            &format!("portcullis_session_refreshes_total{{result=\"{result}\"}}"),
        )
        .unwrap_or(0.0)
    };
    let before = refreshes(&env.proxy.metrics().await, "success");

    // Two access-token lifetimes: every refresh brings an ID token signed with the new key,
    // which must verify (a failed one would lose the rotated refresh token, and so the session).
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(2 * ACCESS_TOKEN_TTL) {
        let status = alice.get(&env.url("app", "/")).await.status();
        assert_eq!(status, 200, "{}", env.logs());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let m = env.proxy.metrics().await;
    assert!(
        refreshes(&m, "success") > before,
        "no successful refresh after the rotation\n{m}\n{}",
        env.logs()
    );
    // A refresh that falls into the IdP's restart is a transient failure and is retried; what
    // must never happen is an ID token refused for its new key, or a lost session.
    assert_eq!(
        refreshes(&m, "invalid_grant"),
        0.0,
        "invalid_grant\n{m}\n{}",
        env.logs()
    );
    let logs = env.logs();
    assert!(
        !logs.contains("Signature verification failed"),
        "a refreshed ID token was refused for its key\n{logs}"
    );
}
