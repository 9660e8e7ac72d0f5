//! End to end: routing, refusals before any upstream, open-redirect defence, path
//! normalization against path policies, upstream failures, forwarding headers, request
//! smuggling and the metrics listener. Every test runs the real binary, IdP and upstream.

use std::time::Duration;

use portcullis_auth::{Secret, UrlSigner};
use portcullis_harness::{
    free_port, location, random_secret, raw_get, raw_request, route, unix_now, TestEnv, Upstream,
    COOKIE,
};
use url::Url;

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

#[tokio::test]
async fn public_route_needs_no_sign_in_and_carries_no_identity() {
    let env = TestEnv::builder(BIN)
        .route(&format!(
            "{}\npass_identity_headers = true",
            route::public("public")
        ))
        .config(r#"jwt_claims_headers = { "X-Email" = "email" }"#)
        .start()
        .await;
    let resp = env
        .browser()
        .get_with(
            &env.url("public", "/hello?x=1"),
            &[
                ("x-portcullis-jwt-assertion", "forged"),
                ("x-email", "mallory@example.com"),
            ],
        )
        .await;
    assert_eq!(resp.status(), 200, "{}", env.logs());
    let seen = env.upstream.last().expect("the upstream got the request");
    assert_eq!(seen.uri, "/hello?x=1");
    assert_eq!(seen.header("x-portcullis-jwt-assertion"), None);
    assert_eq!(seen.header("x-email"), None);
    assert!(
        !seen
            .headers
            .iter()
            .any(|(k, _)| k.starts_with("x-portcullis-")),
        "{:?}",
        seen.headers
    );
}

#[tokio::test]
async fn unknown_hosts_and_unmatched_paths_are_404() {
    let env = TestEnv::builder(BIN)
        .route(
            r#"from = "http://api.localhost"
to = "{upstream}"
prefix = "/api"
allow_public_unauthenticated_access = true"#,
        )
        .start()
        .await;
    let b = env.browser();
    let port = env.port;
    assert_eq!(
        b.get(&format!("http://unknown.localhost:{port}/api/x"))
            .await
            .status(),
        404
    );
    for path in ["/", "/other", "/ap", "/v1/api"] {
        assert_eq!(b.get(&env.url("api", path)).await.status(), 404, "{path}");
    }
    assert!(env.upstream.requests().is_empty());

    // The route itself works, so the 404s above are about matching.
    assert_eq!(b.get(&env.url("api", "/api/x")).await.status(), 200);
    assert_eq!(env.upstream.requests().len(), 1);
}

#[tokio::test]
async fn protected_route_without_session_redirects_browsers_and_401s_apis() {
    let env = TestEnv::builder(BIN)
        .route(&route::any_user("app"))
        .start()
        .await;
    let b = env.browser();
    let original = env.url("app", "/secret/page?q=1");

    let resp = b.get(&original).await;
    assert_eq!(resp.status(), 302);
    let loc = location(&resp);
    let prefix = format!("{}/.portcullis/sign_in?", env.authenticate_url());
    assert!(loc.starts_with(&prefix), "{loc}");
    let loc = Url::parse(&loc).unwrap();
    let param = |name: &str| {
        loc.query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    };
    assert_eq!(
        param("portcullis_redirect_uri").as_deref(),
        Some(&*original)
    );
    for p in [
        "portcullis_issued",
        "portcullis_expiry",
        "portcullis_signature",
    ] {
        assert!(param(p).is_some(), "{p} missing in {loc}");
    }
    // Signed with shared_secret.
    let signer = UrlSigner::new(&Secret::from_base64(env.shared_secret()).unwrap());
    signer
        .verify(&loc, unix_now())
        .expect("the sign-in URL verifies");

    let resp = b
        .get_with(&original, &[("accept", "application/json")])
        .await;
    assert_eq!(resp.status(), 401);
    assert!(!resp.headers().contains_key("location"));

    let resp = b
        .get_with(&original, &[("authorization", "Bearer x")])
        .await;
    assert_eq!(resp.status(), 401);
    assert!(!resp.headers().contains_key("location"));

    assert!(env.upstream.requests().is_empty());
}

#[tokio::test]
async fn sign_in_refuses_open_redirects_and_bad_signatures() {
    let env = TestEnv::builder(BIN)
        .route(&route::any_user("app"))
        .start()
        .await;
    let b = env.browser();
    let signer = UrlSigner::new(&Secret::from_base64(env.shared_secret()).unwrap());
    let base = format!("{}/.portcullis/sign_in", env.authenticate_url());
    let binding = portcullis_auth::BrowserBinding::new();
    let unsigned = |redirect: &str| {
        let mut url = Url::parse(&base).unwrap();
        // A route host's link carries its binding digest (required for route-host targets).
        url.query_pairs_mut()
            .append_pair("portcullis_redirect_uri", redirect)
            .append_pair("portcullis_binding", binding.digest().as_str());
        url
    };
    let signed = |redirect: &str| signer.sign(&unsigned(redirect), unix_now(), 300);
    let good = env.url("app", "/x");

    let tricks = [
        "//evil.example".to_owned(),
        "/\\evil.example".to_owned(),
        "https://app.localhost@evil.example".to_owned(),
        format!("http://app.localhost:{}@evil.example/", env.port),
        "http://app.localhost.evil.example/".to_owned(),
        "http://evil.example/".to_owned(),
        "javascript:alert(1)".to_owned(),
        "http://app.localhost\t.evil.example/".to_owned(),
        format!("http://app.localhost:{}/\n", env.port),
        format!("\thttp://app.localhost:{}/", env.port),
        format!("http://app.local\nhost:{}/", env.port),
        "http:/\\evil.example".to_owned(),
        "http://evil.example\\@app.localhost/".to_owned(),
        "/x".to_owned(),
        String::new(),
    ];
    for trick in &tricks {
        let resp = b.get(signed(trick).as_str()).await;
        assert_eq!(resp.status(), 400, "{trick:?}");
        assert!(!resp.headers().contains_key("location"), "{trick:?}");
    }

    // Unsigned.
    let resp = b.get(unsigned(&good).as_str()).await;
    assert_eq!(resp.status(), 400);
    // Redirect changed after signing (the signature stays last).
    let tampered = signed(&good).as_str().replace(
        &url::form_urlencoded::byte_serialize(good.as_bytes()).collect::<String>(),
        "http%3A%2F%2Fevil.example%2F",
    );
    assert!(tampered.contains("evil.example"), "{tampered}");
    assert_eq!(b.get(&tampered).await.status(), 400);
    // Also when it still names an allowed host.
    let other_path = signed(&good).as_str().replace("%2Fx&", "%2Fy&");
    assert_ne!(other_path, signed(&good).as_str());
    assert_eq!(b.get(&other_path).await.status(), 400);
    // Expired.
    let expired = signer.sign(&unsigned(&good), unix_now() - 3600, 300);
    assert_eq!(b.get(expired.as_str()).await.status(), 400);
    // Signed with another key.
    let other = UrlSigner::new(&Secret::from_base64(&random_secret()).unwrap());
    let foreign = other.sign(&unsigned(&good), unix_now(), 300);
    assert_eq!(b.get(foreign.as_str()).await.status(), 400);

    // A good link goes to the IdP and sets the login state.
    let resp = b.get(signed(&good).as_str()).await;
    assert_eq!(resp.status(), 302, "{}", env.logs());
    let loc = location(&resp);
    assert!(loc.starts_with(env.idp.issuer()), "{loc}");
    let cookies: Vec<&str> = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert!(
        cookies.iter().any(|c| c.starts_with("_portcullis_login=")),
        "{cookies:?}"
    );
    assert!(env.upstream.requests().is_empty());
}

#[tokio::test]
async fn path_normalization_never_bypasses_a_path_policy() {
    let env = TestEnv::builder(BIN)
        .route(
            r#"from = "http://app.localhost"
to = "{upstream}"
policy = [
  { allow = { and = [ { authenticated_user = true } ] } },
  { deny = { or = [ { http_path = { starts_with = "/admin" } } ] } },
]"#,
        )
        .start()
        .await;
    let b = env.browser();
    let page = b.sign_in(&env.url("app", "/public"), "alice").await;
    assert_eq!(page.status(), 200, "{}", env.logs());
    let cookie = env.session_cookie(&b, "app");
    let cookie_header = format!("Cookie: {COOKIE}={cookie}\r\n");
    let host = format!("app.localhost:{}", env.port);
    env.upstream.clear();

    let (status, text) = raw_get(env.port, &host, "/public", &cookie_header).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(env.upstream.last().unwrap().uri, "/public");
    env.upstream.clear();

    for path in [
        "/admin",
        "//admin",
        "/./admin",
        "/x/../admin",
        "/%61dmin",
        "/%2e/admin",
        "/ADMIN/../admin",
        "/admin/",
        "/%2E%2E/admin",
        "/public/../admin",
        "/public/%2e%2e/admin",
        "/%2e%2e/admin",
        "/admin?x=1",
    ] {
        let (status, text) = raw_get(env.port, &host, path, &cookie_header).await;
        assert!(
            status == 403 || status == 400,
            "{path} answered {status}:\n{text}"
        );
    }
    for path in [
        "/admin%2fx",
        "/admin%2Fx",
        "/a%5cadmin",
        "/a\\admin",
        "/a%00",
        "/admin%00",
        "/a%zz",
    ] {
        let (status, text) = raw_get(env.port, &host, path, &cookie_header).await;
        assert_eq!(status, 400, "{path}:\n{text}");
    }
    assert!(
        env.upstream.requests().is_empty(),
        "{:#?}",
        env.upstream.requests()
    );

    // What the upstream gets is the normalized path.
    let (status, text) = raw_get(env.port, &host, "/x/../public", &cookie_header).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(env.upstream.last().unwrap().uri, "/public");
    let (status, text) = raw_get(env.port, &host, "//public/./a?q=1", &cookie_header).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(env.upstream.last().unwrap().uri, "/public/a?q=1");
}

#[tokio::test]
async fn upstream_failures_are_502_and_504() {
    let closed = free_port();
    let env = TestEnv::builder(BIN)
        .upstream(Upstream::builder().delay(Duration::from_secs(3)))
        .route(&format!(
            r#"from = "http://down.localhost"
to = "http://127.0.0.1:{closed}"
allow_public_unauthenticated_access = true"#
        ))
        .route(
            r#"from = "http://slow.localhost"
to = "{upstream}"
timeout = "1s"
allow_public_unauthenticated_access = true"#,
        )
        .start()
        .await;
    let b = env.browser();
    let resp = b.get(&env.url("down", "/")).await;
    assert_eq!(resp.status(), 502);
    assert!(resp
        .headers()
        .get("content-type")
        .is_some_and(|v| v.to_str().unwrap().starts_with("text/html")));
    let body = resp.text().await.unwrap();
    assert!(body.contains("Bad gateway"), "{body}");

    let started = std::time::Instant::now();
    let resp = b.get(&env.url("slow", "/")).await;
    assert_eq!(resp.status(), 504, "{}", env.logs());
    assert!(started.elapsed() < Duration::from_millis(2900));
    let body = resp.text().await.unwrap();
    assert!(body.contains("Gateway timeout"), "{body}");
}

#[tokio::test]
async fn forwarding_headers_come_from_the_connection() {
    let env = TestEnv::builder(BIN)
        .route(&route::public("public"))
        .start()
        .await;
    let resp = env
        .browser()
        .get_with(
            &env.url("public", "/"),
            &[
                ("x-forwarded-for", "203.0.113.9"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "evil.example"),
                ("forwarded", "for=203.0.113.9;proto=https"),
                ("x-real-ip", "203.0.113.9"),
            ],
        )
        .await;
    assert_eq!(resp.status(), 200);
    let seen = env.upstream.last().unwrap();
    assert_eq!(seen.header_all("x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(seen.header_all("x-forwarded-proto"), vec!["http"]);
    assert_eq!(
        seen.header_all("x-forwarded-host"),
        vec![format!("public.localhost:{}", env.port)]
    );
    assert_eq!(seen.header("forwarded"), None);
    assert_eq!(seen.header("x-real-ip"), None);
}

#[tokio::test]
async fn smuggling_shapes_are_400_and_never_reach_the_upstream() {
    let env = TestEnv::builder(BIN)
        .route(&route::public("public"))
        .start()
        .await;
    let host = format!("public.localhost:{}", env.port);
    let cases = [
        format!(
            "POST / HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n"
        ),
        format!(
            "POST / HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\nConnection: close\r\n\r\n0\r\n\r\n"
        ),
        format!(
            "POST / HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5\r\nContent-Length: 6\r\nConnection: close\r\n\r\nhello!"
        ),
        format!(
            "GET / HTTP/1.1\r\nHost: {host}\r\nHost: evil.localhost\r\nConnection: close\r\n\r\n"
        ),
        format!("GET / HTTP/1.1\r\nHost: {host}\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
    ];
    for request in &cases {
        let (status, text) = raw_request(env.port, request).await;
        assert_eq!(status, 400, "{request:?}\n{text}");
    }
    assert!(
        env.upstream.requests().is_empty(),
        "{:#?}",
        env.upstream.requests()
    );

    // The same connection shape without the second header goes through.
    let (status, text) = raw_request(env.port,
        &format!("POST / HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(env.upstream.last().unwrap().body, b"hello");
}

#[tokio::test]
async fn metrics_listener_serves_metrics_and_health_but_the_proxy_does_not() {
    let env = TestEnv::builder(BIN)
        .route(&route::public("public"))
        .route(&route::any_user("app"))
        .start()
        .await;
    let b = env.browser();
    assert_eq!(b.get(&env.url("public", "/a")).await.status(), 200);
    assert_eq!(b.get(&env.url("app", "/a")).await.status(), 302);

    // /metrics on a route host is the route's, not Prometheus text.
    let resp = b.get(&env.url("public", "/metrics")).await;
    assert_eq!(resp.status(), 200);
    let body = resp.text().await.unwrap();
    assert!(!body.contains("portcullis_requests_total"), "{body}");
    assert_eq!(env.upstream.last().unwrap().uri, "/metrics");

    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let metrics_url = format!("http://127.0.0.1:{}", env.metrics_port);
    for path in ["/healthz", "/readyz"] {
        let resp = client
            .get(format!("{metrics_url}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{path}");
    }
    // The access log (and so the counters) is written after the response; give it a moment.
    let mut text = String::new();
    for _ in 0..50 {
        text = env.proxy.metrics().await;
        if text.contains(r#"status="302""#) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let public_200 = text.lines().any(|l| {
        l.starts_with("portcullis_requests_total{")
            && l.contains(r#"route="http://public.localhost""#)
            && l.contains(r#"status="200""#)
    });
    assert!(public_200, "{text}");
    let app_302 = text.lines().any(|l| {
        l.starts_with("portcullis_requests_total{")
            && l.contains(r#"route="http://app.localhost""#)
            && l.contains(r#"status="302""#)
    });
    assert!(app_302, "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("portcullis_decisions_total{") && l.contains("public")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("portcullis_decisions_total{") && l.contains("sign_in")),
        "{text}"
    );
}
