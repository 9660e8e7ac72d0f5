//! Sign-out changes state only on a same-site POST: a GET shows a page with a sign-out
//! button, and a POST from another site is refused, so a link or form elsewhere cannot end a
//! session.

use portcullis_harness::{location, set_cookies, Browser, TestEnv, COOKIE, JSON};
use reqwest::Method;

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// Whether `b`'s session is still good on `host`.
async fn signed_in(env: &TestEnv, b: &Browser, host: &str) -> bool {
    b.get_with(&env.url(host, "/.portcullis/"), &[JSON])
        .await
        .status()
        == 200
}

#[tokio::test]
async fn a_get_shows_a_sign_out_button_and_changes_nothing() {
    let env = TestEnv::app_admin_public(BIN).start().await;
    let b = env.signed_in("app", "alice").await;
    for host in ["app", "authenticate"] {
        let url = env.url(host, "/.portcullis/sign_out");
        let resp = b.get(&url).await;
        assert_eq!(resp.status(), 200, "GET {url}\n{}", env.logs());
        assert!(set_cookies(&resp).is_empty(), "GET {url} set a cookie");
        let html = resp.text().await.unwrap();
        assert!(
            html.contains("<form method=\"post\" action=\"/.portcullis/sign_out\">"),
            "{html}"
        );
        assert!(html.contains("<button"), "{html}");
        let head = b.request(Method::HEAD, &url, &[], None).await;
        assert_eq!(head.status(), 200, "HEAD {url}");
        assert!(set_cookies(&head).is_empty(), "HEAD {url} set a cookie");
    }
    assert!(signed_in(&env, &b, "app").await, "{}", env.logs());
}

#[tokio::test]
async fn a_cross_site_post_is_refused_and_changes_nothing() {
    let env = TestEnv::app_admin_public(BIN).start().await;
    let b = env.signed_in("app", "alice").await;
    let url = env.url("app", "/.portcullis/sign_out");
    let other_port = format!("http://app.localhost:{}", env.port + 1);
    let refused: [&[(&str, &str)]; 5] = [
        &[("origin", "http://evil.test")],
        &[("origin", "null")],
        &[("origin", &other_port)],
        &[("sec-fetch-site", "cross-site")],
        // Sec-Fetch-Site is believed over a matching Origin.
        &[
            ("origin", &url[..url.len() - "/.portcullis/sign_out".len()]),
            ("sec-fetch-site", "cross-site"),
        ],
    ];
    for headers in refused {
        let resp = b.request(Method::POST, &url, headers, None).await;
        assert_eq!(resp.status(), 403, "{headers:?}\n{}", env.logs());
        assert!(set_cookies(&resp).is_empty(), "{headers:?} set a cookie");
        assert!(
            signed_in(&env, &b, "app").await,
            "{headers:?} ended the session"
        );
    }
}

#[tokio::test]
async fn a_same_origin_post_ends_the_session_on_every_host() {
    let env = TestEnv::app_admin_public(BIN).start().await;
    let b = env.signed_in("app", "alice").await;
    let resp = b.sign_in(&env.url("admin", "/"), "alice").await;
    assert_eq!(resp.status(), 200, "{}", env.logs());
    let cookies = [
        ("app", env.session_cookie(&b, "app")),
        ("admin", env.session_cookie(&b, "admin")),
    ];

    let origin = env.url("app", "/").trim_end_matches('/').to_owned();
    let url = env.url("app", "/.portcullis/sign_out");
    let resp = b
        .request(
            Method::POST,
            &url,
            &[("origin", &origin), ("sec-fetch-site", "same-origin")],
            None,
        )
        .await;
    assert_eq!(resp.status(), 302, "{}", env.logs());
    assert!(location(&resp).starts_with(env.idp.issuer()));
    assert!(set_cookies(&resp)
        .iter()
        .any(|c| c.starts_with(&format!("{COOKIE}=")) && c.contains("Max-Age=0")));
    for (host, cookie) in &cookies {
        let replay = env
            .browser()
            .get_with(
                &env.url(host, "/.portcullis/"),
                &[("cookie", &format!("{COOKIE}={cookie}")), JSON],
            )
            .await;
        assert_eq!(replay.status(), 401, "{host} after sign-out");
    }
}

#[tokio::test]
async fn a_post_without_origin_headers_ends_the_session() {
    // curl and command-line clients send neither Origin nor Sec-Fetch-Site.
    let env = TestEnv::app_admin_public(BIN).start().await;
    let b = env.signed_in("app", "alice").await;
    let url = env.url("app", "/.portcullis/sign_out");
    let resp = b.request(Method::POST, &url, &[], None).await;
    assert_eq!(resp.status(), 302, "{}", env.logs());
    assert!(!signed_in(&env, &b, "app").await);
}

#[tokio::test]
async fn the_browser_signs_out_through_the_button() {
    let env = TestEnv::app_admin_public(BIN).start().await;
    let b = env.signed_in("app", "alice").await;
    let page = b
        .get(&env.url("app", "/.portcullis/"))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("<form method=\"post\" action=\"") && !page.contains("href=\"http"),
        "the user page signs out with a form button: {page}"
    );
    let (resp, visited) = b.sign_out(&env.url("app", "/.portcullis/sign_out")).await;
    assert_eq!(resp.status(), 200, "{visited:#?}\n{}", env.logs());
    assert!(visited.len() > 2, "{visited:#?}");
    assert!(!signed_in(&env, &b, "app").await);
}
