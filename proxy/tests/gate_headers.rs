//! What a client sends that must never reach an upstream as sent: forwarding and identity
//! headers it made up (names with `_` too, which CGI-style servers read as `-`), and
//! Portcullis's own tokens in `Authorization`; and what must pass untouched: any other
//! `Authorization` value, beside a valid session cookie.

use portcullis_harness::{raw_get, RecordedRequest, TestEnv, COOKIE};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// Headers a client may make up to pose as the forwarding chain or as Portcullis.
const SPOOFED: &[(&str, &str)] = &[
    ("X_Email", "mallory@evil.test"),
    ("X_Groups", "admins"),
    ("X_Portcullis_Jwt_Assertion", "forged"),
    ("Transfer_Encoding", "chunked"),
    ("X-Forwarded-Prefix", "/admin"),
    ("X-Forwarded-Port", "443"),
    ("X-Forwarded-Server", "evil.test"),
    ("X-Forwarded-Uri", "/admin"),
    ("X-Forwarded-For", "6.6.6.6"),
    ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-Host", "evil.test"),
    ("X-Original-URL", "/admin"),
    ("X-Rewrite-URL", "/admin"),
    ("True-Client-IP", "6.6.6.6"),
    ("X-Client-IP", "6.6.6.6"),
    ("CF-Connecting-IP", "6.6.6.6"),
    ("Forwarded", "for=6.6.6.6;proto=https"),
    ("X-Real-IP", "6.6.6.6"),
];

/// A raw GET of `path` on `host` with every spoofed header (and `extra`), answered 200; the
/// request the upstream received.
async fn spoofed_get(env: &TestEnv, host: &str, path: &str, extra: &str) -> RecordedRequest {
    let mut headers: String = SPOOFED
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    headers.push_str(extra);
    let authority = format!("{host}.localhost:{}", env.port);
    let (status, text) = raw_get(env.port, &authority, path, &headers).await;
    assert_eq!(status, 200, "{text}\n--- logs ---\n{}", env.logs());
    let req = env.upstream.last().expect("the upstream was reached");
    assert_eq!(req.path(), path);
    req
}

/// No spoofed header reached the upstream, and the forwarding headers are the proxy's.
fn assert_clean(env: &TestEnv, host: &str, req: &RecordedRequest) {
    for (name, _) in SPOOFED {
        let lower = name.to_ascii_lowercase();
        if matches!(
            lower.as_str(),
            "x-forwarded-for" | "x-forwarded-proto" | "x-forwarded-host"
        ) {
            continue;
        }
        assert!(
            req.header(name).is_none(),
            "{host}: {name} reached the upstream: {:#?}",
            req.headers
        );
    }
    assert!(
        req.headers.iter().all(|(k, _)| !k.contains('_')),
        "{host}: a name with `_` reached the upstream: {:#?}",
        req.headers
    );
    assert_eq!(req.header_all("x-forwarded-for"), ["127.0.0.1"], "{host}");
    assert_eq!(req.header_all("x-forwarded-proto"), ["http"], "{host}");
    assert_eq!(
        req.header_all("x-forwarded-host"),
        [format!("{host}.localhost:{}", env.port).as_str()],
        "{host}"
    );
}

#[tokio::test]
async fn spoofed_forwarding_and_identity_headers_never_reach_an_upstream() {
    let env = TestEnv::app_admin_public(BIN).start().await;
    let alice = env.signed_in("app", "alice").await;
    let cookie = format!("Cookie: {COOKIE}={}\r\n", env.session_cookie(&alice, "app"));

    let req = spoofed_get(&env, "app", "/protected", &cookie).await;
    assert_clean(&env, "app", &req);
    // The identity headers are the proxy's own.
    assert_eq!(req.header("x-email"), Some("alice@example.com"));

    let req = spoofed_get(&env, "public", "/open", "").await;
    assert_clean(&env, "public", &req);
}

#[tokio::test]
async fn an_applications_own_authorization_passes_beside_a_session_cookie() {
    let env = TestEnv::app_admin_public(BIN).start().await;
    let alice = env.signed_in("app", "alice").await;
    let cookie = format!("{COOKIE}={}", env.session_cookie(&alice, "app"));

    for value in ["Bearer app-token", "Basic YWxpY2U6c2VjcmV0"] {
        let resp = env
            .browser()
            .get_with(
                &env.url("app", "/api"),
                &[("cookie", &cookie), ("authorization", value)],
            )
            .await;
        assert_eq!(resp.status(), 200, "{value}\n--- logs ---\n{}", env.logs());
        let req = env.upstream.last().expect("the upstream was reached");
        assert_eq!(req.path(), "/api");
        assert_eq!(req.header_all("authorization"), [value]);
        assert_eq!(req.header("x-email"), Some("alice@example.com"), "{value}");
    }
}

#[tokio::test]
async fn portcullis_tokens_never_reach_a_public_upstream() {
    let env = TestEnv::app_admin_public(BIN).start().await;
    let alice = env.signed_in("app", "alice").await;
    let token = env.session_cookie(&alice, "app");

    let mut values = vec![
        format!("Bearer Portcullis-{token}"),
        format!("Portcullis {token}"),
        format!("bearer Portcullis-{token}"),
        format!("PORTCULLIS {token}"),
        "Bearer Portcullis-anything".to_owned(),
    ];
    values.push("portcullis anything".to_owned());
    for value in &values {
        let path = "/open";
        let resp = env
            .browser()
            .get_with(&env.url("public", path), &[("authorization", value)])
            .await;
        assert_eq!(resp.status(), 200, "{value}\n--- logs ---\n{}", env.logs());
        let req = env.upstream.last().expect("the upstream was reached");
        assert_eq!(req.path(), path);
        assert!(
            req.header("authorization").is_none(),
            "{value} reached the public upstream"
        );
    }
    // On a protected route too.
    let value = format!("Bearer Portcullis-{token}");
    let resp = env
        .browser()
        .get_with(&env.url("app", "/api"), &[("authorization", &value)])
        .await;
    assert_eq!(resp.status(), 200, "{}", env.logs());
    let req = env.upstream.last().expect("the upstream was reached");
    assert!(req.header("authorization").is_none());
}
