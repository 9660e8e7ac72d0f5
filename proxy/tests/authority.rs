//! End to end: a request's authority is its host **and** port. A route whose `from` names no
//! port is served on the scheme's default port and the listener's own; one with a port only on
//! that port. Route matching, Portcullis's own endpoints (on route hosts and the authenticate
//! host) and the signed return URLs all follow that rule: an authority no route serves gets
//! 404 and never a signed link, and a malformed `Host` gets 400.

use std::time::{SystemTime, UNIX_EPOCH};

use portcullis_auth::{BrowserBinding, Secret, UrlSigner};
use portcullis_harness::{free_port, raw_get, TestEnv, COOKIE};
use url::Url;

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Asserts a raw answer is a 404 that sends the client nowhere and carries no signed link.
fn assert_not_served(status: u16, text: &str, what: &str) {
    assert_eq!(status, 404, "{what}: {text}");
    assert!(!text.contains("portcullis_signature"), "{what}: {text}");
    assert!(
        !text.to_ascii_lowercase().contains("\r\nlocation:"),
        "{what}: {text}"
    );
}

/// Whether a raw answer redirects to a signed sign-in link.
fn is_sign_in_redirect(status: u16, text: &str) -> bool {
    status == 302 && text.contains("/.portcullis/sign_in?") && text.contains("portcullis_signature")
}

#[tokio::test]
async fn a_route_host_on_a_port_no_route_serves_is_not_found() {
    let env = TestEnv::app_admin_public(env!("CARGO_BIN_EXE_portcullis"))
        .start()
        .await;
    let b = env.signed_in("app", "alice").await;
    let cookie = format!("Cookie: {COOKIE}={}\r\n", env.session_cookie(&b, "app"));
    let unserved = free_port();
    let login = "/.portcullis/api/v1/login?portcullis_redirect_uri=http%3A%2F%2F127.0.0.1%3A9%2F";
    let paths = [
        "/",
        "/.portcullis/",
        "/.portcullis",
        "/.portcullis/callback/?portcullis_handoff=x",
        login,
    ];
    env.upstream.clear();
    for port in [1, 8443, unserved] {
        let host = format!("app.localhost:{port}");
        for path in paths {
            for headers in ["", cookie.as_str()] {
                let what = format!("{host}{path} signed in: {}", !headers.is_empty());
                let (status, text) = raw_get(env.port, &host, path, headers).await;
                assert_not_served(status, &text, &what);
            }
        }
        let (status, text) = raw_get(env.port, &format!("public.localhost:{port}"), "/", "").await;
        assert_not_served(status, &text, "public route on an unserved port");
    }
    assert!(
        env.upstream.requests().is_empty(),
        "nothing reached the upstream"
    );

    // The listener's own port and the scheme's default (no port) work as before.
    for host in [
        format!("app.localhost:{}", env.port),
        "app.localhost".to_owned(),
        "app.localhost:80".to_owned(),
    ] {
        let (status, text) = raw_get(env.port, &host, "/", "").await;
        assert!(is_sign_in_redirect(status, &text), "{host}: {text}");
        // The cookie names the authority it was set on (the listener's port): on the same
        // host by the default port it is no session there, and the browser is sent to sign in.
        let (status, text) = raw_get(env.port, &host, "/.portcullis/", &cookie).await;
        if host == format!("app.localhost:{}", env.port) {
            assert_eq!(status, 200, "{host}: {text}");
        } else {
            assert!(is_sign_in_redirect(status, &text), "{host}: {text}");
        }
        let (status, text) = raw_get(env.port, &host, login, "").await;
        assert_eq!(status, 200, "{host}: {text}");
        assert!(text.contains("portcullis_signature"), "{host}: {text}");
    }
    let (status, text) =
        raw_get(env.port, &format!("public.localhost:{}", env.port), "/", "").await;
    assert_eq!(status, 200, "{text}");
}

#[tokio::test]
async fn a_route_with_a_port_is_served_on_that_port_only() {
    let port = free_port();
    let env = TestEnv::builder(env!("CARGO_BIN_EXE_portcullis"))
        .route(&format!(
            "from = \"http://app.localhost:{port}\"\nto = \"{{upstream}}\"\nallow_any_authenticated_user = true"
        ))
        .start()
        .await;

    // On its port: served, and the sign-in link it hands out is accepted by the sign-in
    // endpoint (which sends the browser on to the IdP).
    let host = format!("app.localhost:{port}");
    let (status, text) = raw_get(env.port, &host, "/x", "").await;
    assert!(is_sign_in_redirect(status, &text), "{text}");
    let location = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("location: ")
                .or_else(|| l.strip_prefix("Location: "))
        })
        .expect("a Location")
        .trim();
    let link = Url::parse(location).unwrap();
    let back = link
        .query_pairs()
        .find(|(k, _)| k == "portcullis_redirect_uri")
        .map(|(_, v)| v.into_owned())
        .unwrap();
    assert_eq!(back, format!("http://{host}/x"));
    let auth = format!("authenticate.localhost:{}", env.port);
    let (status, text) = raw_get(
        env.port,
        &auth,
        &location[location.find("/.portcullis/").unwrap()..],
        "",
    )
    .await;
    assert_eq!(status, 302, "{text}");
    assert!(!text.contains("/.portcullis/sign_in"), "{text}");

    // On the listener's own port, the default port or another: no such route.
    for other in [env.port, 80, 1] {
        let host = format!("app.localhost:{other}");
        for path in [
            "/x",
            "/.portcullis/",
            "/.portcullis/api/v1/login?portcullis_redirect_uri=http%3A%2F%2F127.0.0.1%3A9%2F",
        ] {
            let (status, text) = raw_get(env.port, &host, path, "").await;
            assert_not_served(status, &text, &format!("{host}{path}"));
        }
    }
    let (status, text) = raw_get(env.port, "app.localhost", "/x", "").await;
    assert_not_served(status, &text, "no port");
}

#[tokio::test]
async fn a_malformed_host_is_refused() {
    let env = TestEnv::app_admin_public(env!("CARGO_BIN_EXE_portcullis"))
        .start()
        .await;
    env.upstream.clear();
    for host in [
        "[public.localhost]".to_owned(),
        format!("[public.localhost]:{}", env.port),
        "public.localhost:1:2".to_owned(),
        format!("public.localhost:{}:{}", env.port, env.port),
        "public.localhost:".to_owned(),
        "public.localhost:99999".to_owned(),
        "public.localhost:0".to_owned(),
        "public.localhost:+80".to_owned(),
        format!("public.localhost:{}x", env.port),
        "[::1".to_owned(),
        "[::1]x".to_owned(),
        "[::1]:".to_owned(),
        "[fe80::1%25eth0]".to_owned(),
        "public.localhost]".to_owned(),
        ":80".to_owned(),
    ] {
        for path in ["/", "/.portcullis/"] {
            let (status, text) = raw_get(env.port, &host, path, "").await;
            assert_eq!(status, 400, "{host}{path}: {text}");
            assert!(!text.contains("portcullis_signature"), "{host}: {text}");
        }
    }
    assert!(
        env.upstream.requests().is_empty(),
        "nothing reached the upstream"
    );

    // An IPv6 literal is a host like any other: no route serves it.
    for host in [format!("[::1]:{}", env.port), "[::1]".to_owned()] {
        let (status, text) = raw_get(env.port, &host, "/", "").await;
        assert_not_served(status, &text, &host);
    }
}

#[tokio::test]
async fn a_signed_link_back_to_an_unserved_port_is_refused() {
    let env = TestEnv::app_admin_public(env!("CARGO_BIN_EXE_portcullis"))
        .start()
        .await;
    let signer = UrlSigner::new(&Secret::from_base64(env.shared_secret()).unwrap());
    let auth = env.authenticate_url();
    let b = env.signed_in("app", "alice").await;
    let anonymous = env.browser();
    let binding = BrowserBinding::new();
    let sign_in = |back: &str| {
        let mut url = Url::parse(&format!("{auth}/.portcullis/sign_in")).unwrap();
        // Bound to a browser, as every link a route host hands out is.
        url.query_pairs_mut()
            .append_pair("portcullis_redirect_uri", back)
            .append_pair("portcullis_binding", binding.digest().as_str());
        signer.sign(&url, now(), 300).to_string()
    };
    for back in [
        "http://app.localhost:1/".to_owned(),
        "http://app.localhost:8443/x".to_owned(),
        format!("http://app.localhost:{}/", free_port()),
        "http://authenticate.localhost:1/".to_owned(),
        // The scheme's default port, 443, is not served by this plain listener.
        "https://app.localhost/x".to_owned(),
    ] {
        let link = sign_in(&back);
        for (who, browser) in [("signed in", &b), ("anonymous", &anonymous)] {
            let resp = browser.get(&link).await;
            assert_eq!(resp.status(), 400, "{who} {back}");
            assert!(resp.headers().get("location").is_none(), "{who} {back}");
        }
    }
    // Served authorities still come back: a handoff to the route host's callback.
    for back in [env.url("app", "/x"), "http://app.localhost/x".to_owned()] {
        let resp = b.get(&sign_in(&back)).await;
        assert_eq!(resp.status(), 302, "{back}");
        let to = resp.headers()["location"].to_str().unwrap();
        assert!(
            to.contains("/.portcullis/callback/?portcullis_handoff="),
            "{back}: {to}"
        );
    }
}

#[tokio::test]
async fn the_authenticate_host_on_another_port_is_not_found() {
    let env = TestEnv::app_admin_public(env!("CARGO_BIN_EXE_portcullis"))
        .start()
        .await;
    let signer = UrlSigner::new(&Secret::from_base64(env.shared_secret()).unwrap());
    let b = env.signed_in("app", "alice").await;
    let cookie = format!(
        "Cookie: {COOKIE}={}\r\n",
        b.cookie(&env.authenticate_url(), COOKIE)
            .expect("a cookie on the authenticate host")
    );
    for port in [1, 8443] {
        let host = format!("authenticate.localhost:{port}");
        // Signed for the real authenticate URL: only the port it is asked on is wrong.
        let mut url =
            Url::parse(&format!("{}/.portcullis/sign_in", env.authenticate_url())).unwrap();
        url.query_pairs_mut()
            .append_pair("portcullis_redirect_uri", &env.url("app", "/"));
        let signed = signer.sign(&url, now(), 300);
        let sign_in = &signed.as_str()[signed.as_str().find("/.portcullis/").unwrap()..];
        for path in [
            "/",
            "/.portcullis/",
            sign_in,
            "/oauth2/callback?code=x&state=y",
            "/.portcullis/api/v1/login?portcullis_redirect_uri=http%3A%2F%2F127.0.0.1%3A9%2F",
        ] {
            for headers in ["", cookie.as_str()] {
                let (status, text) = raw_get(env.port, &host, path, headers).await;
                assert_not_served(status, &text, &format!("{host}{path}"));
            }
        }
    }
    let host = format!("authenticate.localhost:{}", env.port);
    let (status, text) = raw_get(env.port, &host, "/.portcullis/", &cookie).await;
    assert_eq!(status, 200, "{text}");
}
