//! End to end over TLS: certificates chosen by SNI, HTTP/2 by ALPN, `Secure` session cookies,
//! the server's order of cipher suites, and the handshake held to the head deadline.

use std::path::Path;
use std::time::Duration;

use portcullis_harness::{
    ends_within, write_self_signed as write_cert, Browser, TestEnv, TlsClient, LOOPBACK,
};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

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

/// The server picks the cipher suite by its own order of preference (AES-GCM before
/// ChaCha20, AES-256 before AES-128), whatever order the client offers them in.
#[tokio::test]
async fn the_server_chooses_the_cipher_suite() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = write_cert(dir.path(), "app", &["public.localhost"]);
    let env = TestEnv::builder(BIN)
        .tls_certificate(&cert, &key)
        .route(
            r#"from = "https://public.localhost"
to = "{upstream}"
allow_public_unauthenticated_access = true"#,
        )
        .start()
        .await;
    let root = std::fs::read(&cert).unwrap();
    let client = TlsClient::new(env.port, "public.localhost", &root).alpn(&["h2", "http/1.1"]);
    for (offer, expected) in [
        (
            &["TLS13_CHACHA20_POLY1305_SHA256", "TLS13_AES_128_GCM_SHA256"][..],
            "TLS13_AES_128_GCM_SHA256",
        ),
        (
            &["TLS13_AES_128_GCM_SHA256", "TLS13_CHACHA20_POLY1305_SHA256"][..],
            "TLS13_AES_128_GCM_SHA256",
        ),
        (
            &[
                "TLS13_CHACHA20_POLY1305_SHA256",
                "TLS13_AES_128_GCM_SHA256",
                "TLS13_AES_256_GCM_SHA384",
            ][..],
            "TLS13_AES_256_GCM_SHA384",
        ),
        (
            &[
                "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
                "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
            ][..],
            "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        ),
        (
            &[
                "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
                "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
            ][..],
            "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        ),
    ] {
        let (_, negotiated) = client.clone().suites(offer).connect().await.unwrap();
        assert_eq!(negotiated.suite, expected, "offered {offer:?}");
        // The listener still offers HTTP/2 first, over TLS 1.2 too.
        assert_eq!(negotiated.alpn.as_deref(), Some("h2"), "offered {offer:?}");
    }
}

/// The TLS handshake is part of the first request head's time: a client that starts one and
/// stalls is cut at `request_header_timeout`, and counted as a failed handshake.
#[tokio::test]
async fn a_stalled_handshake_is_cut_at_the_head_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = write_cert(dir.path(), "app", &["public.localhost"]);
    let env = TestEnv::builder(BIN)
        .tls_certificate(&cert, &key)
        .config(r#"request_header_timeout = "2s""#)
        .route(
            r#"from = "https://public.localhost"
to = "{upstream}"
allow_public_unauthenticated_access = true"#,
        )
        .start()
        .await;
    let failures = "portcullis_tls_handshake_failures_total";
    // The readiness probes (bare TCP connections) may be counted late: let them settle.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = env.proxy.metric(failures).await.unwrap_or(0.0);
    let mut stalled = TcpStream::connect((LOOPBACK, env.port)).await.unwrap();
    // The first bytes of a ClientHello record, and nothing more.
    stalled.write_all(&[0x16, 0x03, 0x01, 0x02]).await.unwrap();
    let cut = ends_within(&mut stalled, Duration::from_secs(8)).await;
    assert!(
        cut.is_some_and(|t| t > Duration::from_millis(1500) && t < Duration::from_secs(4)),
        "cut after {cut:?}"
    );
    let mut after = before;
    for _ in 0..20 {
        after = env.proxy.metric(failures).await.unwrap_or(0.0);
        if after > before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(after, before + 1.0, "{}", env.logs());
}
