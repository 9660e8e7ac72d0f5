//! Shared setup for the end-to-end tests: one environment with a route for any signed-in
//! user (`app`), an admins-only route (`admin`) and a public route (`public`), plus small
//! helpers for the assertions the tests repeat.

#![allow(dead_code)]

use portcullis_harness::{Browser, TestEnv, TestEnvBuilder};

/// Name of the session cookie (the default `cookie_name`).
pub const COOKIE: &str = "_portcullis";
/// The `Accept` header of an API client.
pub const JSON: (&str, &str) = ("accept", "application/json");

/// `app` (any signed-in user), `admin` (group `admins` only) and `public` (no sign-in), all
/// passing identity headers, with `X-Email` and `X-Groups` copied from the claims.
pub fn builder() -> TestEnvBuilder {
    TestEnv::builder(env!("CARGO_BIN_EXE_portcullis"))
        .config(r#"jwt_claims_headers = { "X-Email" = "email", "X-Groups" = "groups" }"#)
        .route(
            r#"from = "http://app.localhost"
to = "{upstream}"
allow_any_authenticated_user = true
pass_identity_headers = true"#,
        )
        .route(
            r#"from = "http://admin.localhost"
to = "{upstream}"
pass_identity_headers = true
policy = [ { allow = { or = [ { groups = { has = "admins" } } ] } } ]"#,
        )
        .route(
            r#"from = "http://public.localhost"
to = "{upstream}"
allow_public_unauthenticated_access = true
pass_identity_headers = true"#,
        )
}

pub async fn start() -> TestEnv {
    builder().start().await
}

/// Signs `login` in on `host` with a fresh browser; panics (with the proxy's logs) unless the
/// page behind it answers 200.
pub async fn signed_in(env: &TestEnv, host: &str, login: &str) -> Browser {
    let b = env.browser();
    let resp = b.sign_in(&env.url(host, "/"), login).await;
    assert_eq!(
        resp.status(),
        200,
        "sign-in as {login} on {host}\n--- logs ---\n{}",
        env.logs()
    );
    b
}

/// The session cookie `b` holds for `host`.
pub fn session_cookie(env: &TestEnv, b: &Browser, host: &str) -> String {
    b.cookie(&env.url(host, "/"), COOKIE)
        .unwrap_or_else(|| panic!("no {COOKIE} cookie for {host}"))
}

/// Asserts `resp` sends the browser to the authenticate host's sign-in page.
pub fn assert_sign_in_redirect(env: &TestEnv, resp: &reqwest::Response, what: &str) {
    assert_eq!(resp.status(), 302, "{what}: expected a sign-in redirect");
    let location = location(resp);
    let want = format!("{}/.portcullis/sign_in?", env.authenticate_url());
    assert!(
        location.starts_with(&want),
        "{what}: Location {location} is not the sign-in page"
    );
}

/// The `Location` header (empty when there is none).
pub fn location(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// Every `Set-Cookie` header of `resp`.
pub fn set_cookies(resp: &reqwest::Response) -> Vec<String> {
    resp.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_owned))
        .collect()
}

/// The value of query parameter `name` in `url`.
pub fn query_param(url: &str, name: &str) -> Option<String> {
    url::Url::parse(url)
        .ok()?
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// The value of an unlabelled metric in Prometheus text.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix(' ')?;
        rest.trim().parse().ok()
    })
}
