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
