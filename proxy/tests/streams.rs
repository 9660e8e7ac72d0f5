//! End to end: live websockets and event streams are authorized again every
//! `stream_recheck_interval` and closed soon after their session is signed out or a reload
//! stops allowing them, while the streams of users still allowed go on.

use std::time::Duration;

use portcullis_harness::{
    echoes, ends_within, metric, read_head, read_until, stream_upstream, write_self_signed,
    TestEnv, TestEnvBuilder, COOKIE,
};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");
/// The re-check interval of these tests (`stream_recheck_interval`).
const INTERVAL: Duration = Duration::from_millis(500);
/// How long after its authorization ended a stream may still be open.
const LIMIT: Duration = Duration::from_millis(500 + 2500);

/// `app.localhost`: `/live/...` goes to the stream upstream (websockets allowed) with `policy`;
/// everything else to the recording upstream, for any signed-in user (sign-in lands there).
fn builder(stream_port: u16, policy: &str) -> TestEnvBuilder {
    TestEnv::builder(BIN)
        .config(&format!(
            "stream_recheck_interval = \"{}ms\"",
            INTERVAL.as_millis()
        ))
        .route(&format!(
            "from = \"http://app.localhost\"\nprefix = \"/live\"\nto = \"http://127.0.0.1:{stream_port}\"\nallow_websockets = true\n{policy}"
        ))
        .route("from = \"http://app.localhost\"\nto = \"{upstream}\"\nallow_any_authenticated_user = true")
}

/// `GET /live/events` with `cookie` on a raw connection, read up to the first event.
async fn open_events(env: &TestEnv, cookie: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt as _;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", env.port))
        .await
        .unwrap();
    let request = format!(
        "GET /live/events HTTP/1.1\r\nHost: app.localhost:{}\r\nAccept: text/event-stream\r\nCookie: {COOKIE}={cookie}\r\n\r\n",
        env.port,
    );
    s.write_all(request.as_bytes()).await.unwrap();
    let head = read_head(&mut s).await.unwrap_or_default();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}\n{}", env.logs());
    read_until(&mut s, &mut Vec::new(), "data: first").await;
    s
}

/// The JSON log lines of `target` (`"authorize"`, `"access"`) whose `decision` is `decision`,
/// once there are `want` of them (log lines are written in the background), or after two
/// seconds whatever there is.
async fn log_lines(
    env: &TestEnv,
    target: &str,
    decision: &str,
    want: usize,
) -> Vec<serde_json::Value> {
    let mut lines = Vec::new();
    for _ in 0..40 {
        lines = env
            .proxy
            .json_logs()
            .into_iter()
            .filter(|l| l["target"] == target && l["decision"] == decision)
            .collect();
        if lines.len() >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    lines
}

#[tokio::test]
async fn streams_close_soon_after_their_session_is_signed_out_and_others_go_on() {
    let port = stream_upstream().await;
    let env = builder(port, "allow_any_authenticated_user = true")
        .start()
        .await;
    let alice = env.signed_in("app", "alice").await;
    let bob = env.signed_in("app", "bob").await;
    let alice_cookie = env.session_cookie(&alice, "app");
    let bob_cookie = env.session_cookie(&bob, "app");
    let mut alice_ws = env
        .open_websocket("app", "/live/chat", Some(&alice_cookie))
        .await;
    let mut bob_ws = env
        .open_websocket("app", "/live/chat", Some(&bob_cookie))
        .await;
    let mut alice_events = open_events(&env, &alice_cookie).await;
    assert!(echoes(&mut alice_ws, b"hello").await, "{}", env.logs());
    assert!(echoes(&mut bob_ws, b"hello").await, "{}", env.logs());

    // Idle over several re-checks: a stream that is still allowed stays open.
    tokio::time::sleep(INTERVAL * 3).await;
    assert!(echoes(&mut alice_ws, b"still here").await, "{}", env.logs());

    alice
        .sign_out(&env.url("app", "/.portcullis/sign_out"))
        .await;
    let ws_after = ends_within(&mut alice_ws, LIMIT).await;
    assert!(
        ws_after.is_some(),
        "alice's idle websocket is still open {LIMIT:?} after she signed out\n{}",
        env.logs()
    );
    let events_after = ends_within(&mut alice_events, LIMIT).await;
    assert!(
        events_after.is_some(),
        "alice's event stream is still open {LIMIT:?} after she signed out\n{}",
        env.logs()
    );
    eprintln!("closed after sign-out: websocket {ws_after:?}, event stream {events_after:?}");

    // bob's websocket, idle over the same period, is open and echoes.
    assert!(
        echoes(&mut bob_ws, b"bob is still here").await,
        "{}",
        env.logs()
    );

    let metrics = env.proxy.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            r#"portcullis_streams_closed_total{reason="signed_out"}"#
        ),
        Some(2.0),
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            r#"portcullis_streams_closed_total{reason="policy"}"#
        ),
        Some(0.0)
    );
    let closed = log_lines(&env, "authorize", "stream_closed_signed_out", 2).await;
    assert_eq!(closed.len(), 2, "{}", env.logs());
    assert!(closed.iter().all(|l| l["email"] == "alice@example.com"));
    // The access line of each stream says why it ended.
    let access = log_lines(&env, "access", "stream_closed_signed_out", 2).await;
    assert_eq!(access.len(), 2, "{}", env.logs());
}

#[tokio::test]
async fn a_reload_that_stops_allowing_a_user_closes_their_websocket_and_no_other() {
    let port = stream_upstream().await;
    let both = r#"policy = [ { allow = { or = [ { email = { in = ["alice@example.com", "bob@example.com"] } } ] } } ]"#;
    let env = builder(port, both).start().await;
    let alice = env.signed_in("app", "alice").await;
    let bob = env.signed_in("app", "bob").await;
    let mut alice_ws = env
        .open_websocket(
            "app",
            "/live/chat",
            Some(&env.session_cookie(&alice, "app")),
        )
        .await;
    let mut bob_ws = env
        .open_websocket("app", "/live/chat", Some(&env.session_cookie(&bob, "app")))
        .await;
    assert!(echoes(&mut alice_ws, b"hello").await, "{}", env.logs());
    assert!(echoes(&mut bob_ws, b"hello").await, "{}", env.logs());

    let alice_only = env.config_text().replace(
        r#"["alice@example.com", "bob@example.com"]"#,
        r#"["alice@example.com"]"#,
    );
    assert_ne!(alice_only, env.config_text());
    env.rewrite_config(&alice_only, true).await;

    let bob_after = ends_within(&mut bob_ws, LIMIT).await;
    assert!(
        bob_after.is_some(),
        "bob's websocket is still open {LIMIT:?} after the reload that excludes him\n{}",
        env.logs()
    );
    eprintln!("closed after the reload: {bob_after:?}");
    tokio::time::sleep(LIMIT.saturating_sub(bob_after.unwrap_or_default())).await;
    assert!(
        echoes(&mut alice_ws, b"alice is still allowed").await,
        "{}",
        env.logs()
    );
    // A new request says the same as the re-check.
    assert_eq!(bob.get(&env.url("app", "/live/page")).await.status(), 403);

    let metrics = env.proxy.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            r#"portcullis_streams_closed_total{reason="policy"}"#
        ),
        Some(1.0),
        "{metrics}"
    );
    let closed = log_lines(&env, "authorize", "stream_closed_policy", 1).await;
    assert_eq!(closed.len(), 1, "{}", env.logs());
    assert_eq!(closed[0]["email"], "bob@example.com");
}

#[tokio::test]
async fn an_event_stream_over_http2_closes_soon_after_sign_out() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = write_self_signed(
        dir.path(),
        "listener",
        &["app.localhost", "authenticate.localhost"],
    );
    let port = stream_upstream().await;
    let policy = "allow_any_authenticated_user = true";
    let env = TestEnv::builder(BIN)
        .tls_certificate(&cert, &key)
        .config(&format!(
            "stream_recheck_interval = \"{}ms\"",
            INTERVAL.as_millis()
        ))
        .route(&format!(
            "from = \"https://app.localhost\"\nprefix = \"/live\"\nto = \"http://127.0.0.1:{port}\"\n{policy}"
        ))
        .route(&format!("from = \"https://app.localhost\"\nto = \"{{upstream}}\"\n{policy}"))
        .start()
        .await;
    let alice = env.signed_in("app", "alice").await;
    let mut events = alice
        .client()
        .get(env.url("app", "/live/events"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200, "{}", env.logs());
    assert_eq!(events.version(), http::Version::HTTP_2);
    let first = events.chunk().await.unwrap().unwrap_or_default();
    assert!(String::from_utf8_lossy(&first).contains("data: first"));
    tokio::time::sleep(INTERVAL * 3).await;

    alice
        .sign_out(&env.url("app", "/.portcullis/sign_out"))
        .await;
    let started = std::time::Instant::now();
    let ended = tokio::time::timeout(LIMIT, async {
        while let Ok(Some(_)) = events.chunk().await {}
    })
    .await;
    assert!(
        ended.is_ok(),
        "the event stream is still open {LIMIT:?} after sign-out\n{}",
        env.logs()
    );
    eprintln!("closed after sign-out: {:?}", started.elapsed());
    let metrics = env.proxy.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            r#"portcullis_streams_closed_total{reason="signed_out"}"#
        ),
        Some(1.0),
        "{metrics}"
    );
}
