//! End to end over TLS: certificates chosen by SNI, HTTP/2 by ALPN, `Secure` session cookies.

use std::path::Path;

use portcullis_harness::{write_self_signed as write_cert, Browser, TestEnv};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// A client that trusts only `root` (besides the public roots) and reaches `*.localhost`.
fn client_trusting(root: &Path, names: &[&str], port: u16) -> reqwest::Client {
    let pem = std::fs::read(root).unwrap();
    Browser::with_root_certificates(names, port, &[pem])
        .client()
        .clone()
}

#[tokio::test]
async fn certificates_by_sni_http2_and_secure_cookies() {
    let dir = tempfile::tempdir().unwrap();
    let (app_cert, app_key) = write_cert(
        dir.path(),
        "app",
        &["app.localhost", "authenticate.localhost"],
    );
    let (other_cert, other_key) = write_cert(dir.path(), "other", &["*.other.localhost"]);
    let env = TestEnv::builder(BIN)
        .tls_certificate(&app_cert, &app_key)
        .tls_certificate(&other_cert, &other_key)
        .route(
            r#"from = "https://app.localhost"
to = "{upstream}"
allow_any_authenticated_user = true"#,
        )
        .route(
            r#"from = "https://*.other.localhost"
to = "{upstream}"
allow_public_unauthenticated_access = true"#,
        )
        .start()
        .await;
    assert!(env.config_text().contains("insecure_server = false"));
    let port = env.port;
    let app_url = env.url("app", "/hello");
    let other_url = format!("https://x.other.localhost:{port}/hi");
    assert!(app_url.starts_with("https://"), "{app_url}");

    // Each name gets its own certificate: a client trusting only one of them reaches only
    // the names that certificate covers.
    let names = ["app.localhost", "x.other.localhost"];
    let only_app = client_trusting(&app_cert, &names, port);
    let only_other = client_trusting(&other_cert, &names, port);
    assert_eq!(only_app.get(&app_url).send().await.unwrap().status(), 302);
    assert!(only_app.get(&other_url).send().await.is_err());
    let resp = only_other.get(&other_url).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{}", env.logs());
    assert!(only_other.get(&app_url).send().await.is_err());

    // HTTP/2 by ALPN.
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    let seen = env.upstream.last().unwrap();
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));

    // Sign in over TLS: the session cookie is Secure.
    let b = env.browser();
    let (redirect, visited) = b
        .sign_in_until(&app_url, "alice", |u| u.contains("/.portcullis/callback/"))
        .await;
    assert_eq!(redirect.status(), 302, "{visited:#?}\n{}", env.logs());
    let callback = visited.last().unwrap().clone();
    assert!(callback.starts_with("https://app.localhost:"), "{callback}");
    let resp = b.get(&callback).await;
    assert_eq!(resp.status(), 302);
    let session_cookie = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|c| c.starts_with("_portcullis="))
        .expect("session cookie set");
    let attributes: Vec<String> = session_cookie
        .split(';')
        .map(|a| a.trim().to_ascii_lowercase())
        .collect();
    assert!(attributes.iter().any(|a| a == "secure"), "{session_cookie}");
    assert!(
        attributes.iter().any(|a| a == "httponly"),
        "{session_cookie}"
    );
    let page = b.get(&app_url).await;
    assert_eq!(page.status(), 200);
    assert_eq!(page.version(), reqwest::Version::HTTP_2);
}
