//! End to end: rewrites and every upstream option through the real binary, with real upstreams:
//! a recording HTTP upstream (HTTP/1.1 and h2c), TLS upstreams signed by a test CA (rcgen),
//! one that wants a client certificate, weighted backends and one that fails.

use std::time::Duration;

use portcullis_harness::{free_port, TestCa, TestEnv, Upstream};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// A public route on `host` with `body` (which names `to` and any options).
fn public(host: &str, body: &str) -> String {
    format!(
        "from = \"http://{host}.localhost\"\nallow_public_unauthenticated_access = true\n{body}"
    )
}

#[tokio::test]
async fn regex_rewrites_keep_the_query_untouched() {
    let env = TestEnv::builder(BIN)
        .route(&public(
            "backslash",
            r#"to = "{upstream}"
regex_rewrite_pattern = '^/service/([^/]+)(/.*)$'
regex_rewrite_substitution = '\2/instance/\1'"#,
        ))
        .route(&public(
            "dollar",
            r#"to = "{upstream}/base"
regex_rewrite_pattern = '^/v1/(.*)$'
regex_rewrite_substitution = '/v2/$1'"#,
        ))
        .route(&public(
            "prefix",
            r#"to = "{upstream}"
prefix = "/app"
prefix_rewrite = "/"
"#,
        ))
        .route(&public("topath", r#"to = "{upstream}/mounted""#))
        .start()
        .await;
    let b = env.browser();
    let cases = [
        (
            "backslash",
            "/service/foo/bar/baz?x=1&y=%2F&z=/service/a/b",
            "/bar/baz/instance/foo?x=1&y=%2F&z=/service/a/b",
        ),
        ("backslash", "/other?q=1", "/other?q=1"),
        ("dollar", "/v1/items/7?sort=asc", "/v2/items/7?sort=asc"),
        ("prefix", "/app/x/y?k=v", "/x/y?k=v"),
        ("topath", "/a?b=c", "/mounted/a?b=c"),
    ];
    for (host, path, want) in cases {
        let resp = b.get(&env.url(host, path)).await;
        assert_eq!(resp.status(), 200, "{host}{path}\n{}", env.logs());
        assert_eq!(env.upstream.last().unwrap().uri, want, "{host}{path}");
    }
}

#[tokio::test]
async fn h2c_upstreams_get_http2() {
    let h2c = Upstream::start().await;
    let env = TestEnv::builder(BIN)
        .route(&public(
            "grpc",
            &format!("to = \"h2c://127.0.0.1:{}\"", h2c.port()),
        ))
        .route(&public("h1", "to = \"{upstream}\""))
        .start()
        .await;
    let b = env.browser();
    for _ in 0..3 {
        let resp = b.get(&env.url("grpc", "/svc/Method?x=1")).await;
        assert_eq!(resp.status(), 200, "{}", env.logs());
    }
    let seen = h2c.requests();
    assert_eq!(seen.len(), 3);
    assert!(seen.iter().all(|r| r.version == "HTTP/2.0"), "{seen:?}");
    assert_eq!(seen[0].uri, "/svc/Method?x=1");
    let peers: std::collections::HashSet<_> = seen.iter().map(|r| r.peer).collect();
    assert_eq!(peers.len(), 1, "h2c streams share one connection");

    assert_eq!(b.get(&env.url("h1", "/")).await.status(), 200);
    assert_eq!(env.upstream.last().unwrap().version, "HTTP/1.1");
}

#[tokio::test]
async fn tls_upstreams_verify_by_default_and_honour_every_tls_option() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("Portcullis test CA");
    let ca_file = ca.write_cert(dir.path(), "ca");
    let server = ca.server(&["backend.internal"]);
    let plain_tls = Upstream::builder()
        .tls(&server.cert_pem, &server.key_pem)
        .start()
        .await;
    let mtls = Upstream::builder()
        .tls(&server.cert_pem, &server.key_pem)
        .client_ca(&ca.cert_pem())
        .start()
        .await;
    let (client_cert, client_key) = ca.client("portcullis").write(dir.path(), "client");
    // A certificate from another CA: the mTLS upstream must refuse it.
    let (rogue_cert, rogue_key) = TestCa::new("rogue")
        .client("portcullis")
        .write(dir.path(), "rogue");

    let tls = format!("https://127.0.0.1:{}", plain_tls.port());
    let m = format!("https://127.0.0.1:{}", mtls.port());
    let ca_file = ca_file.display().to_string();
    let env = TestEnv::builder(BIN)
        // Verified by default: the test CA is not a system root.
        .route(&public("default", &format!("to = \"{tls}\"")))
        .route(&public(
            "ca",
            &format!("to = \"{tls}\"\ntls_custom_ca_file = '{ca_file}'\ntls_server_name = \"backend.internal\""),
        ))
        // The right CA, but the certificate does not name 127.0.0.1.
        .route(&public(
            "wrongname",
            &format!("to = \"{tls}\"\ntls_custom_ca_file = '{ca_file}'"),
        ))
        .route(&public(
            "skip",
            &format!("to = \"{tls}\"\ntls_skip_verify = true"),
        ))
        .route(&public(
            "mtls",
            &format!(
                "to = \"{m}\"\ntls_custom_ca_file = '{ca_file}'\ntls_server_name = \"backend.internal\"\ntls_client_cert_file = '{}'\ntls_client_key_file = '{}'",
                client_cert.display(),
                client_key.display()
            ),
        ))
        .route(&public(
            "nocert",
            &format!("to = \"{m}\"\ntls_custom_ca_file = '{ca_file}'\ntls_server_name = \"backend.internal\""),
        ))
        .route(&public(
            "roguecert",
            &format!(
                "to = \"{m}\"\ntls_custom_ca_file = '{ca_file}'\ntls_server_name = \"backend.internal\"\ntls_client_cert_file = '{}'\ntls_client_key_file = '{}'",
                rogue_cert.display(),
                rogue_key.display()
            ),
        ))
        .start()
        .await;
    assert!(
        env.logs().contains("tls_skip_verify"),
        "tls_skip_verify is logged as a warning at load\n{}",
        env.logs()
    );
    let b = env.browser();
    for (host, want) in [
        ("default", 502),
        ("ca", 200),
        ("wrongname", 502),
        ("skip", 200),
        ("mtls", 200),
        ("nocert", 502),
        ("roguecert", 502),
    ] {
        let resp = b.get(&env.url(host, "/hello?x=1")).await;
        assert_eq!(resp.status(), want, "{host}\n{}", env.logs());
        if want == 502 {
            let body = resp.text().await.unwrap();
            assert!(body.contains("Bad gateway"), "{host}: {body}");
        }
    }
    // Only the verified and the skip-verify route reached the TLS upstream; the mTLS upstream
    // saw only the request that presented the right client certificate.
    assert_eq!(plain_tls.requests().len(), 2);
    let seen = mtls.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].uri, "/hello?x=1");
    assert_eq!(
        seen[0].header("host"),
        Some(m.trim_start_matches("https://"))
    );
    let _ = (free_port, Duration::from_secs(0));
}

/// Writes `request` on a fresh connection to the proxy and reads the whole answer (the request
/// should carry `Connection: close`). Returns the status (0 when none) and the raw text.
async fn raw(port: u16, request: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    (status, text)
}

#[tokio::test]
async fn hop_by_hop_headers_and_connection_nominated_ones_never_reach_the_upstream() {
    let env = TestEnv::builder(BIN)
        .route(&public("public", "to = \"{upstream}\""))
        .start()
        .await;
    let host = format!("public.localhost:{}", env.port);
    let (status, text) = raw(
        env.port,
        &format!(
            "GET /hop HTTP/1.1\r\nHost: {host}\r\nConnection: close, X-Secret-Hop, x-other-hop\r\n\
             X-Secret-Hop: 1\r\nX-Other-Hop: 2\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\n\
             TE: trailers\r\nTrailer: X-Checksum\r\nProxy-Authorization: Basic dXNlcjpwYXNz\r\n\
             X-Kept: yes\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let seen = env.upstream.last().unwrap();
    assert_eq!(seen.header("x-kept"), Some("yes"));
    for name in [
        "x-secret-hop",
        "x-other-hop",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "proxy-authorization",
        "upgrade",
    ] {
        assert_eq!(seen.header(name), None, "{name} reached the upstream");
    }
    assert!(
        seen.header("connection")
            .is_none_or(|v| !v.to_ascii_lowercase().contains("hop")),
        "{:?}",
        seen.headers
    );

    // Nominating a header Portcullis sets itself is refused, not repaired.
    env.upstream.clear();
    let (status, text) = raw(
        env.port,
        &format!(
            "GET /spoof HTTP/1.1\r\nHost: {host}\r\nConnection: close, X-Forwarded-For\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert!(env.upstream.requests().is_empty());
}

#[tokio::test]
async fn portcullis_pages_carry_security_headers_and_hsts_only_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let names = vec![
        "public.localhost".to_string(),
        "authenticate.localhost".to_string(),
    ];
    let certified = rcgen::generate_simple_self_signed(names).unwrap();
    let cert = dir.path().join("listener.pem");
    let key = dir.path().join("listener.key");
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.key_pair.serialize_pem()).unwrap();
    let route = "from = \"https://public.localhost\"\nallow_public_unauthenticated_access = true\nto = \"{upstream}\"\nprefix = \"/app\"";
    let tls_env = TestEnv::builder(BIN)
        .tls_certificate(&cert, &key)
        .route(route)
        .start()
        .await;
    let plain_env = TestEnv::builder(BIN)
        .route(&public("public", "to = \"{upstream}\"\nprefix = \"/app\""))
        .start()
        .await;
    for (env, tls) in [(&tls_env, true), (&plain_env, false)] {
        // A Portcullis page (404: no route for this path).
        let resp = env.browser().get(&env.url("public", "/nothing-here")).await;
        assert_eq!(resp.status(), 404);
        let h = resp.headers();
        assert_eq!(h["x-frame-options"], "DENY");
        assert_eq!(h["cache-control"], "no-store");
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert!(h.contains_key("content-security-policy"));
        assert_eq!(
            h.contains_key("strict-transport-security"),
            tls,
            "HSTS only over TLS (tls = {tls})"
        );
        // Proxied responses are the application's: Portcullis adds no HSTS of its own there.
        let resp = env.browser().get(&env.url("public", "/app")).await;
        assert_eq!(resp.status(), 200, "{}", env.logs());
        assert!(!resp.headers().contains_key("strict-transport-security"));
    }
}
