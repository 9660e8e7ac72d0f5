//! End to end: rewrites and every upstream option through the real binary, with real upstreams:
//! a recording HTTP upstream (HTTP/1.1 and h2c), TLS upstreams signed by a test CA (rcgen),
//! one that wants a client certificate, weighted backends and one that fails.

use std::time::Duration;

use portcullis_harness::{
    echo, echoes, ends_within, free_port, raw_request, raw_upstream, read_head, read_until,
    stream_upstream, websocket_handshake, write_self_signed, TestCa, TestEnv, Upstream,
    WEBSOCKET_101,
};

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

#[tokio::test]
async fn hop_by_hop_headers_and_connection_nominated_ones_never_reach_the_upstream() {
    let env = TestEnv::builder(BIN)
        .route(&public("public", "to = \"{upstream}\""))
        .start()
        .await;
    let host = format!("public.localhost:{}", env.port);
    let (status, text) = raw_request(env.port,
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

    // Each alone, with no `Connection` field beside it (the proxy core looks for any of them
    // before removing them one by one).
    for (field, name) in [
        ("Keep-Alive: timeout=5", "keep-alive"),
        ("Proxy-Connection: keep-alive", "proxy-connection"),
        ("TE: trailers", "te"),
        ("Trailer: X-Checksum", "trailer"),
        (
            "Proxy-Authorization: Basic dXNlcjpwYXNz",
            "proxy-authorization",
        ),
        ("Proxy-Authenticate: Basic", "proxy-authenticate"),
        ("HTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA", "http2-settings"),
    ] {
        env.upstream.clear();
        // The connection stays open (no `Connection: close`): the answer's head is enough.
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", env.port))
            .await
            .expect("connect");
        tokio::io::AsyncWriteExt::write_all(
            &mut s,
            format!("GET /alone HTTP/1.1\r\nHost: {host}\r\n{field}\r\nX-Kept: yes\r\n\r\n")
                .as_bytes(),
        )
        .await
        .expect("write");
        let head = read_head(&mut s).await.expect("an answer head");
        assert!(head.starts_with("HTTP/1.1 200 "), "{field}: {head}");
        let seen = env.upstream.last().unwrap();
        assert_eq!(seen.header("x-kept"), Some("yes"));
        assert_eq!(seen.header(name), None, "{field} reached the upstream");
    }

    // Nominating a header Portcullis sets itself is refused, not repaired.
    env.upstream.clear();
    let (status, text) = raw_request(
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
    let (cert, key) = write_self_signed(
        dir.path(),
        "listener",
        &["public.localhost", "authenticate.localhost"],
    );
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
        // Proxied responses get Pomerium's defaults, HSTS over TLS only too
        // (tests/response_headers.rs).
        let resp = env.browser().get(&env.url("public", "/app")).await;
        assert_eq!(resp.status(), 200, "{}", env.logs());
        assert_eq!(
            resp.headers().contains_key("strict-transport-security"),
            tls,
            "proxied: HSTS only over TLS (tls = {tls})"
        );
    }
}

/// The request id an error page names.
fn page_request_id(body: &str) -> String {
    let re = regex_lite_id(body);
    re.unwrap_or_else(|| panic!("no request id in {body}"))
}

fn regex_lite_id(body: &str) -> Option<String> {
    let start = body.find("Request id</th><td><code>")? + "Request id</th><td><code>".len();
    let id = body.get(start..start + 16)?;
    id.bytes()
        .all(|b| b.is_ascii_hexdigit())
        .then(|| id.to_owned())
}

#[tokio::test]
async fn weighted_backends_with_one_that_fails_are_balanced_and_retried() {
    let a = Upstream::start().await;
    let b = Upstream::start().await;
    let dead = free_port();
    let env = TestEnv::builder(BIN)
        .route(&public(
            "lb",
            &format!(
                "to = [\"{},3\", \"{},1\", \"http://127.0.0.1:{dead},2\"]",
                a.url(),
                b.url()
            ),
        ))
        .route(&public(
            "down",
            &format!(
                "to = [\"http://127.0.0.1:{dead}\", \"http://127.0.0.1:{}\"]",
                free_port()
            ),
        ))
        .start()
        .await;
    let client = env.browser();
    for i in 0..60 {
        // POSTs too: a connection that failed carried no byte of the request.
        let resp = if i % 2 == 0 {
            client.get(&env.url("lb", &format!("/r/{i}"))).await
        } else {
            client
                .client()
                .post(env.url("lb", &format!("/r/{i}")))
                .body("payload")
                .send()
                .await
                .unwrap()
        };
        assert_eq!(resp.status(), 200, "request {i}\n{}", env.logs());
    }
    let (na, nb) = (a.requests().len(), b.requests().len());
    assert_eq!(na + nb, 60);
    // 3:1 between the live ones (the dead one's share lands on the next in the schedule).
    assert!((38..=52).contains(&na), "a={na} b={nb}");
    let posts = a
        .requests()
        .into_iter()
        .chain(b.requests())
        .filter(|r| r.method == "POST" && r.body == b"payload")
        .count();
    assert_eq!(posts, 30, "every POST arrived once, body intact");

    // Every backend refusing: 502, with the request id on Portcullis's page.
    let resp = client.get(&env.url("down", "/")).await;
    assert_eq!(resp.status(), 502);
    let body = resp.text().await.unwrap();
    assert!(body.contains("Bad gateway"), "{body}");
    let id = page_request_id(&body);
    assert!(logs_mention(&env, &id).await, "the access log names {id}");
}

#[tokio::test]
async fn a_request_that_may_have_reached_the_upstream_is_not_retried() {
    use tokio::io::AsyncReadExt as _;
    // Reads the request, then closes without answering.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            drop(s);
        }
    });
    let other = Upstream::start().await;
    let env = TestEnv::builder(BIN)
        .route(&public(
            "flaky",
            &format!("to = [\"http://127.0.0.1:{port}\", \"{}\"]", other.url()),
        ))
        .start()
        .await;
    let resp = env
        .browser()
        .client()
        .post(env.url("flaky", "/charge"))
        .body("once")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502, "{}", env.logs());
    let body = resp.text().await.unwrap();
    page_request_id(&body);
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert!(
        other.requests().is_empty(),
        "a POST that reached an upstream is never sent to another"
    );
}

#[tokio::test]
async fn active_health_checks_take_a_backend_out_and_bring_it_back() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let sick = Arc::new(AtomicBool::new(true));
    let flag = sick.clone();
    let a = Upstream::builder()
        .respond_with(move |req| {
            let mut resp = http::Response::new(b"a".to_vec());
            if req.path() == "/healthz" && flag.load(Ordering::SeqCst) {
                *resp.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
            }
            resp
        })
        .start()
        .await;
    let b = Upstream::start().await;
    let env = TestEnv::builder(BIN)
        .route(&public(
            "checked",
            &format!(
                "to = [\"{}\", \"{}\"]\nhealth_check = {{ path = \"/healthz\", interval = \"100ms\", timeout = \"1s\", healthy_threshold = 2, unhealthy_threshold = 2 }}",
                a.url(),
                b.url()
            ),
        ))
        .start()
        .await;
    let client = env.browser();
    let only_b = |a: &Upstream| a.requests().iter().all(|r| r.path() == "/healthz");
    // Within a few intervals the sick backend is out: 20 requests all land on b.
    tokio::time::sleep(Duration::from_millis(600)).await;
    for _ in 0..20 {
        assert_eq!(client.get(&env.url("checked", "/x")).await.status(), 200);
    }
    assert!(only_b(&a), "{:?}", a.requests());
    assert!(
        a.requests()
            .iter()
            .filter(|r| r.path() == "/healthz")
            .count()
            >= 2
    );
    let probe = a
        .requests()
        .into_iter()
        .find(|r| r.path() == "/healthz")
        .unwrap();
    assert_eq!(probe.header("host"), Some(a.addr().to_string().as_str()));

    sick.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(800)).await;
    for _ in 0..20 {
        assert_eq!(client.get(&env.url("checked", "/x")).await.status(), 200);
    }
    assert!(!only_b(&a), "a is back in the rotation");
    assert!(b.requests().iter().any(|r| r.path() == "/x"));
}

#[tokio::test]
async fn upstream_timeout_is_504_with_the_request_id() {
    let env = TestEnv::builder(BIN)
        .upstream(Upstream::builder().delay(Duration::from_secs(3)))
        .route(&public("slow", "to = \"{upstream}\"\ntimeout = \"500ms\""))
        .start()
        .await;
    let started = std::time::Instant::now();
    let resp = env
        .browser()
        .get_with(&env.url("slow", "/"), &[("accept", "application/json")])
        .await;
    assert_eq!(resp.status(), 504);
    assert!(started.elapsed() < Duration::from_millis(2500));
    let body: serde_json::Value = resp.json().await.unwrap();
    let id = body["request_id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 16);
    assert_eq!(
        env.upstream.requests().len(),
        1,
        "a timed-out request is not retried"
    );
    assert!(logs_mention(&env, &id).await, "the access log names {id}");
}

/// `timeout` bounds the whole response, not each wait: an upstream that trickles its header a
/// byte every 100 ms gets a 504 at the timeout, and one that trickles its body is cut there.
#[tokio::test]
async fn a_trickling_upstream_is_cut_at_the_routes_timeout() {
    use tokio::io::AsyncWriteExt as _;
    let (slow_head, head_accepts) = raw_upstream("HTTP/1.1 200 OK\r\n", |mut s| async move {
        let _ = s.write_all(b"X-Slow: ").await;
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if s.write_all(b"a").await.is_err() {
                return;
            }
        }
        let _ = s.write_all(b"\r\nContent-Length: 2\r\n\r\nok").await;
    })
    .await;
    let (slow_body, _) = raw_upstream(
        "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n",
        |mut s| async move { trickle_body(&mut s).await },
    )
    .await;
    let env = TestEnv::builder(BIN)
        .route(&public(
            "head",
            &format!("to = \"http://127.0.0.1:{slow_head}\"\ntimeout = \"1s\""),
        ))
        .route(&public(
            "body",
            &format!("to = \"http://127.0.0.1:{slow_body}\"\ntimeout = \"1s\""),
        ))
        .start()
        .await;

    let started = std::time::Instant::now();
    let resp = env.browser().get(&env.url("head", "/")).await;
    let elapsed = started.elapsed();
    assert_eq!(resp.status(), 504, "{}", env.logs());
    assert!(
        elapsed < Duration::from_millis(2500),
        "504 after {elapsed:?}, not at the 1 s timeout"
    );
    let body = resp.text().await.unwrap();
    assert!(body.contains("Gateway timeout"), "{body}");
    let id = page_request_id(&body);
    assert!(logs_mention(&env, &id).await, "the access log names {id}");
    assert_eq!(
        head_accepts.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "a timed-out request is not retried"
    );

    let started = std::time::Instant::now();
    let resp = env.browser().get(&env.url("body", "/")).await;
    assert_eq!(resp.status(), 200);
    assert_cut_at_the_timeout(resp, started).await;
}

/// The deadline also holds on a pooled upstream connection, whose socket the proxy identified
/// on its first request and does not read again: the second request on the same connection
/// trickles its body and is cut at the timeout.
#[tokio::test]
async fn a_reused_upstream_connection_is_cut_at_the_routes_timeout() {
    use tokio::io::AsyncWriteExt as _;
    let (port, accepts) = raw_upstream("HTTP/1.1 200 OK\r\n", |mut s| async move {
        if s.write_all(b"Content-Length: 2\r\n\r\nok").await.is_err()
            || read_head(&mut s).await.is_none()
        {
            return;
        }
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n";
        if s.write_all(head).await.is_ok() {
            trickle_body(&mut s).await;
        }
    })
    .await;
    let env = TestEnv::builder(BIN)
        .route(&public(
            "app",
            &format!("to = \"http://127.0.0.1:{port}\"\ntimeout = \"1s\""),
        ))
        .start()
        .await;

    let resp = env.browser().get(&env.url("app", "/first")).await;
    assert_eq!(resp.status(), 200, "{}", env.logs());
    assert_eq!(resp.text().await.unwrap(), "ok");

    let started = std::time::Instant::now();
    let resp = env.browser().get(&env.url("app", "/second")).await;
    assert_eq!(resp.status(), 200, "{}", env.logs());
    assert_cut_at_the_timeout(resp, started).await;
    assert_eq!(
        accepts.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the second request went over the first one's connection"
    );
}

/// Writes a 100-byte body a byte every 100 ms (10 s), until the connection is cut.
async fn trickle_body(s: &mut tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt as _;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if s.write_all(b"b").await.is_err() {
            return;
        }
    }
}

/// `resp` (asked for at `started`) carries a trickled body ([`trickle_body`]) that a 1 s route
/// timeout cut short.
async fn assert_cut_at_the_timeout(resp: reqwest::Response, started: std::time::Instant) {
    let body = resp.bytes().await;
    let elapsed = started.elapsed();
    assert!(
        body.as_ref().map_or(true, |b| b.len() < 100),
        "the trickled body arrived whole: {body:?}"
    );
    assert!(
        elapsed < Duration::from_millis(2500),
        "cut after {elapsed:?}, not at the 1 s timeout"
    );
}

/// Websockets and event streams live by `idle_timeout`, not by `timeout`: quiet for longer
/// than `timeout` they go on; quiet for longer than `idle_timeout` they end.
#[tokio::test]
async fn streams_live_by_idle_timeout_not_by_timeout() {
    use tokio::io::AsyncWriteExt as _;
    let ws = stream_upstream().await;
    let (events, _) = raw_upstream(
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
        |mut s| async move {
            for i in 0..3 {
                tokio::time::sleep(Duration::from_millis(800)).await;
                let event = format!("data: {i}\n\n");
                let chunk = format!("{:x}\r\n{event}\r\n", event.len());
                if s.write_all(chunk.as_bytes()).await.is_err() {
                    return;
                }
            }
            let _ = s.write_all(b"0\r\n\r\n").await;
        },
    )
    .await;
    let env = TestEnv::builder(BIN)
        .route(&public(
            "ws",
            &format!("to = \"http://127.0.0.1:{ws}\"\nallow_websockets = true\ntimeout = \"500ms\""),
        ))
        .route(&public(
            "shortidle",
            &format!("to = \"http://127.0.0.1:{ws}\"\nallow_websockets = true\ntimeout = \"500ms\"\nidle_timeout = \"1s\""),
        ))
        .route(&public(
            "events",
            &format!("to = \"http://127.0.0.1:{events}\"\ntimeout = \"500ms\""),
        ))
        .start()
        .await;

    let mut quiet = env.open_websocket("ws", "/chat", None).await;
    let mut short = env.open_websocket("shortidle", "/chat", None).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        echoes(&mut quiet, b"after 1.5 s of quiet").await,
        "{}",
        env.logs()
    );
    assert!(
        ends_within(&mut short, Duration::from_secs(3))
            .await
            .is_some(),
        "a websocket quiet for longer than idle_timeout ends\n{}",
        env.logs()
    );

    let resp = env.browser().get(&env.url("events", "/")).await;
    assert_eq!(resp.status(), 200);
    let body = resp.text().await.unwrap();
    assert_eq!(
        body, "data: 0\n\ndata: 1\n\ndata: 2\n\n",
        "events 800 ms apart pass a 500 ms timeout"
    );
}

/// Whether the proxy's logs mention `text` within two seconds (the access log line is written
/// after the answer).
async fn logs_mention(env: &TestEnv, text: &str) -> bool {
    for _ in 0..40 {
        if env.logs().contains(text) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Connection reuse, measured: 10,000 requests from 8 concurrent keep-alive clients open only a
/// handful of upstream connections (the upstream records each request's TCP peer).
#[tokio::test]
async fn upstream_connections_are_pooled_and_reused() {
    const REQUESTS: usize = 10_000;
    const CLIENTS: usize = 8;
    let env = TestEnv::builder(BIN)
        .route(&public("pool", "to = \"{upstream}\""))
        .start()
        .await;
    let url = env.url("pool", "/r");
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let client = env.browser().client().clone();
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..REQUESTS / CLIENTS {
                let resp = client.get(&url).send().await.unwrap();
                assert_eq!(resp.status(), 200);
                resp.bytes().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let seen = env.upstream.requests();
    assert_eq!(seen.len(), REQUESTS);
    let connections: std::collections::HashSet<_> = seen.iter().map(|r| r.peer).collect();
    eprintln!(
        "connection reuse: {} upstream connection(s) opened for {REQUESTS} requests from {CLIENTS} clients in {:?}",
        connections.len(),
        started.elapsed()
    );
    assert!(
        connections.len() <= 4 * CLIENTS,
        "{} connections for {REQUESTS} requests",
        connections.len()
    );
}

#[tokio::test]
async fn websockets_pass_only_where_allowed_and_after_authorization() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    // Answers the handshake, then echoes every byte: the tunnel is the proof.
    let (port, accepted) = raw_upstream(WEBSOCKET_101, echo).await;
    let to = format!("to = \"http://127.0.0.1:{port}\"");
    let env = TestEnv::builder(BIN)
        .route(&public("ws", &format!("{to}\nallow_websockets = true")))
        .route(&public("nows", &to))
        .route(&format!(
            "from = \"http://private.localhost\"\n{to}\nallow_websockets = true\nallow_any_authenticated_user = true"
        ))
        .start()
        .await;
    let handshake = |host: &str| {
        websocket_handshake(
            &format!("{host}.localhost:{}", env.port),
            "/chat",
            "Accept: application/json\r\n",
        )
    };
    // Refused without allow_websockets, and before authorization on a protected route.
    for (host, want) in [("nows", "400"), ("private", "401")] {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", env.port))
            .await
            .unwrap();
        s.write_all(handshake(host).as_bytes()).await.unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await.unwrap();
        let head = String::from_utf8_lossy(&head);
        assert_eq!(&head[9..12], want, "{host}: {head}");
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 0);

    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", env.port))
        .await
        .unwrap();
    s.write_all(handshake("ws").as_bytes()).await.unwrap();
    let head = read_head(&mut s)
        .await
        .expect("a whole answer head")
        .to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    for msg in [&b"hello"[..], b"\x81\x05world", b"again"] {
        s.write_all(msg).await.unwrap();
        let mut got = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
            .await
            .expect("echo in time")
            .unwrap();
        assert_eq!(got, msg);
    }
}

/// An upstream that answers a websocket handshake at once, before it has even read the request,
/// then echoes: its 101 reaches the proxy before the end of the upgrade request's own (empty)
/// body is handled. Pingora 0.9.1 took that end for the end of the tunnel and closed the tunnel
/// right after the 101 whenever the two came in that order (cloudflare/pingora#946): here, about
/// one handshake in two. Fixed by the patch in `vendor/pingora-proxy`.
#[tokio::test]
async fn a_websocket_tunnel_holds_when_the_upstream_answers_at_once() {
    use tokio::io::AsyncWriteExt as _;
    let listener = tokio::net::TcpListener::bind((portcullis_harness::LOOPBACK, 0))
        .await
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                if s.write_all(WEBSOCKET_101.as_bytes()).await.is_err() {
                    return;
                }
                if read_head(&mut s).await.is_some() {
                    echo(s).await;
                }
            });
        }
    });
    let env = TestEnv::builder(BIN)
        .route(&public(
            "ws",
            &format!("to = \"http://127.0.0.1:{port}\"\nallow_websockets = true"),
        ))
        .start()
        .await;
    let handshake = websocket_handshake(&format!("ws.localhost:{}", env.port), "/chat", "");
    for attempt in 1..=100 {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", env.port))
            .await
            .expect("connect");
        s.write_all(handshake.as_bytes()).await.expect("handshake");
        let head = read_head(&mut s).await.expect("an answer head");
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(
            echoes(&mut s, b"hello").await,
            "handshake {attempt}: the tunnel closed after its 101"
        );
    }
}

#[tokio::test]
async fn server_sent_events_stream_without_buffering() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (port, _) = raw_upstream(
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
        |mut s| async move {
            let _ = s.write_all(b"d\r\ndata: first\n\n\r\n").await;
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let _ = s.write_all(b"e\r\ndata: second\n\n\r\n0\r\n\r\n").await;
        },
    )
    .await;
    let env = TestEnv::builder(BIN)
        .route(&public(
            "events",
            &format!("to = \"http://127.0.0.1:{port}\""),
        ))
        .start()
        .await;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", env.port))
        .await
        .unwrap();
    s.write_all(
        format!(
            "GET /events HTTP/1.1\r\nHost: events.localhost:{}\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n",
            env.port
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let mut got = Vec::new();
    read_until(&mut s, &mut got, "data: first").await;
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "the first event arrived before the upstream finished: {:?}",
        started.elapsed()
    );
    assert!(!String::from_utf8_lossy(&got).contains("data: second"));
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
    assert!(String::from_utf8_lossy(&got).contains("data: second"));
}
