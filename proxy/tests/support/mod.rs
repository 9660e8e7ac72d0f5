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

/// A raw HTTP/1.1 upstream for long-lived streams, one request per connection, on 127.0.0.1:
/// a websocket handshake (an `Upgrade` header) gets `101` and then an echo of every byte;
/// a path ending in `/events` gets an event stream (chunked) with one event, then nothing until the proxy
/// closes the connection; anything else gets `200 ok`. Returns its port.
pub async fn stream_upstream() -> u16 {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let Some(head) = read_head(&mut s).await else {
                    return;
                };
                let head = head.to_ascii_lowercase();
                let mut buf = vec![0u8; 16 * 1024];
                if head.contains("\r\nupgrade: websocket") {
                    // Pingora 0.9.1 tears an upgrade down when it reads the 101 before it has
                    // handled the handshake's own (empty) request body (cloudflare/pingora#946):
                    // a fast answer on a busy machine makes these tests flaky, so answer late.
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    let _ = s
                        .write_all(
                            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                              Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
                        )
                        .await;
                    while let Ok(n @ 1..) = s.read(&mut buf).await {
                        if s.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                } else if head
                    .split(' ')
                    .nth(1)
                    .is_some_and(|path| path.ends_with("/events"))
                {
                    let _ = s
                        .write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n\
                              d\r\ndata: first\n\n\r\n",
                        )
                        .await;
                    // Idle until the proxy goes away.
                    while let Ok(1..) = s.read(&mut buf).await {}
                } else {
                    let _ = s
                        .write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                        )
                        .await;
                }
            });
        }
    });
    port
}

/// Reads an HTTP head (up to and with the blank line) byte by byte; `None` at end of file.
pub async fn read_head<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Option<String> {
    use tokio::io::AsyncReadExt as _;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).await.unwrap_or(0) == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// Opens a websocket through the proxy to `http://{host}.localhost:{port}{path}` with the
/// session cookie `cookie` (when given) and returns the connection after its `101`; panics
/// with the answer otherwise.
pub async fn open_websocket(
    env: &TestEnv,
    host: &str,
    path: &str,
    cookie: Option<&str>,
) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt as _;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", env.port))
        .await
        .unwrap();
    let cookie = cookie
        .map(|c| format!("Cookie: {COOKIE}={c}\r\n"))
        .unwrap_or_default();
    let handshake = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}.localhost:{}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{cookie}\r\n",
        env.port
    );
    s.write_all(handshake.as_bytes()).await.unwrap();
    let head = tokio::time::timeout(std::time::Duration::from_secs(10), read_head(&mut s))
        .await
        .expect("handshake answer in time")
        .unwrap_or_default();
    assert!(
        head.starts_with("HTTP/1.1 101"),
        "websocket to {host}{path}: {head}\n--- logs ---\n{}",
        env.logs()
    );
    s
}

/// Whether `msg` written on `s` comes back within two seconds.
pub async fn echoes(s: &mut tokio::net::TcpStream, msg: &[u8]) -> bool {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    if s.write_all(msg).await.is_err() {
        return false;
    }
    let mut got = vec![0u8; msg.len()];
    matches!(
        tokio::time::timeout(std::time::Duration::from_secs(2), s.read_exact(&mut got)).await,
        Ok(Ok(_))
    ) && got == msg
}

/// Reads (and drops) whatever `s` receives until its end, for at most `limit`: the time the
/// end came after, or `None` if it stayed open.
pub async fn ends_within<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    limit: std::time::Duration,
) -> Option<std::time::Duration> {
    use tokio::io::AsyncReadExt as _;
    let started = std::time::Instant::now();
    let mut buf = [0u8; 4096];
    let read_to_end = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(limit, read_to_end)
        .await
        .ok()
        .map(|()| started.elapsed())
}

/// Rewrites the proxy's configuration file and waits until the reload metrics show it was
/// applied (`expect_success`) or rejected.
pub async fn rewrite_config(env: &TestEnv, text: &str, expect_success: bool) {
    use std::time::{Duration, Instant};
    let value = |text: &str, name: &str| metric(text, name);
    let stamp = "portcullis_config_last_reload_success_timestamp_seconds";
    let before = value(&env.proxy.metrics().await, stamp);
    // Reload timestamps have one-second resolution: make sure a success is visible as a change.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    std::fs::write(env.proxy.config_path(), text).expect("write config");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = env.proxy.metrics().await;
        let ok = value(&metrics, "portcullis_config_last_reload_success");
        let ts = value(&metrics, stamp);
        if expect_success && ok == Some(1.0) && ts != before {
            return;
        }
        if !expect_success && ok == Some(0.0) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "reload not seen; logs:\n{}",
            env.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
