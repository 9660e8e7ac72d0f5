//! Hostile clients: a request head sent too slowly is cut, a head too large or with too many
//! fields gets 431, an idle kept-alive connection and a stalled request body are cut, and a
//! client that half-closes after a complete request still gets its answer.

use std::time::{Duration, Instant};

use portcullis_harness::{
    echoes, ends_within, raw_request, read_head, stream_upstream, TestEnv, Upstream, LOOPBACK,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// The head deadline the tests configure (the default is 30 s).
const DEADLINE: Duration = Duration::from_secs(2);

async fn env_with(config: &str, upstream: Option<Duration>) -> TestEnv {
    let mut builder = TestEnv::app_admin_public(env!("CARGO_BIN_EXE_portcullis")).config(config);
    if let Some(delay) = upstream {
        builder = builder.upstream(Upstream::builder().delay(delay));
    }
    let env = builder.start().await;
    env.upstream.clear();
    env
}

fn host(env: &TestEnv) -> String {
    format!("public.localhost:{}", env.port)
}

/// Reads one answer (head and `Content-Length` body) from `s`.
async fn read_answer(s: &mut TcpStream) -> String {
    let head = tokio::time::timeout(Duration::from_secs(5), read_head(s))
        .await
        .expect("an answer in time")
        .expect("an answer");
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    s.read_exact(&mut body).await.expect("the body");
    head + &String::from_utf8_lossy(&body)
}

#[tokio::test]
async fn a_request_head_must_arrive_within_the_deadline() {
    let env = env_with(r#"request_header_timeout = "2s""#, None).await;
    let start = format!("GET / HTTP/1.1\r\nHost: {}\r\n", host(&env));

    // One header byte every 200 ms: the head never ends, and the deadline cuts it.
    let trickled = async {
        let stream = TcpStream::connect((LOOPBACK, env.port)).await.unwrap();
        let (mut read, mut write) = stream.into_split();
        write.write_all(start.as_bytes()).await.unwrap();
        let writer = tokio::spawn(async move {
            for byte in b"X-Slow: ".iter().chain(&[b'a'; 100]) {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if write.write_all(&[*byte]).await.is_err() {
                    return;
                }
            }
        });
        let mut answer = Vec::new();
        let started = Instant::now();
        let ended = tokio::time::timeout(DEADLINE * 4, read.read_to_end(&mut answer)).await;
        writer.abort();
        (ended.is_ok().then(|| started.elapsed()), answer)
    };
    // A connection that sends nothing at all is held to the same deadline.
    let silent = async {
        let mut stream = TcpStream::connect((LOOPBACK, env.port)).await.unwrap();
        ends_within(&mut stream, DEADLINE * 4).await
    };
    // A head that is slow but complete in time is answered.
    let slow_but_in_time = async {
        let mut stream = TcpStream::connect((LOOPBACK, env.port)).await.unwrap();
        for line in [start.as_str(), "X-Slow: a\r\n", "\r\n"] {
            tokio::time::sleep(Duration::from_millis(400)).await;
            stream.write_all(line.as_bytes()).await.unwrap();
        }
        read_answer(&mut stream).await
    };
    let ((cut_after, answer), silent_cut, in_time) =
        tokio::join!(trickled, silent, slow_but_in_time);

    let cut_after = cut_after.expect("the trickled head's connection is closed");
    assert!(
        cut_after >= DEADLINE - Duration::from_millis(300) && cut_after < DEADLINE * 2,
        "closed after {cut_after:?}"
    );
    assert!(
        answer.is_empty(),
        "no answer: {}",
        String::from_utf8_lossy(&answer)
    );
    let silent_cut = silent_cut.expect("the silent connection is closed");
    eprintln!("closed: trickled head after {cut_after:?}, silent connection after {silent_cut:?}");
    assert!(silent_cut < DEADLINE * 2, "closed after {silent_cut:?}");
    assert!(in_time.starts_with("HTTP/1.1 200"), "{in_time}");
    let paths: Vec<_> = env
        .upstream
        .requests()
        .iter()
        .map(|r| r.header("x-slow").map(str::to_owned))
        .collect();
    assert_eq!(
        paths,
        [Some("a".to_owned())],
        "only the head in time reached the upstream"
    );
}

#[tokio::test]
async fn on_a_kept_alive_connection_the_deadline_starts_at_the_heads_first_byte() {
    let env = env_with(r#"request_header_timeout = "2s""#, None).await;
    let request = format!("GET /first HTTP/1.1\r\nHost: {}\r\n\r\n", host(&env));
    let mut stream = TcpStream::connect((LOOPBACK, env.port)).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let first = read_answer(&mut stream).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    tokio::time::sleep(DEADLINE + Duration::from_millis(500)).await;
    stream
        .write_all(request.replace("/first", "/second").as_bytes())
        .await
        .unwrap();
    let second = read_answer(&mut stream).await;
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
    assert_eq!(env.upstream.requests().len(), 2);

    // The next head is held to the deadline from its first byte.
    stream.write_all(b"GET /third HTTP/1.1\r\n").await.unwrap();
    let cut_after = ends_within(&mut stream, DEADLINE * 4)
        .await
        .expect("the unfinished head's connection is closed");
    assert!(cut_after < DEADLINE * 2, "closed after {cut_after:?}");
    assert_eq!(env.upstream.requests().len(), 2);
}

#[tokio::test]
async fn a_header_block_over_64_kib_gets_431() {
    let env = env_with("", None).await;
    let head_of = |size: usize| {
        let start = format!("GET / HTTP/1.1\r\nHost: {}\r\nX-Big: ", host(&env));
        let end = "\r\nConnection: close\r\n\r\n";
        let pad = "a".repeat(size - start.len() - end.len());
        format!("{start}{pad}{end}")
    };

    let (status, text) = raw_request(env.port, &head_of(64 * 1024 + 1)).await;
    assert_eq!(status, 431, "{text}");
    assert!(env.upstream.requests().is_empty());

    let (status, text) = raw_request(env.port, &head_of(80 * 1024)).await;
    assert_eq!(status, 431, "{text}");
    assert!(env.upstream.requests().is_empty());

    let (status, text) = raw_request(env.port, &head_of(64 * 1024)).await;
    assert_eq!(status, 200, "{}", &text[..text.len().min(300)]);
    assert_eq!(env.upstream.requests().len(), 1);
}

#[tokio::test]
async fn a_smaller_header_limit_is_configurable() {
    let env = env_with("max_request_header_bytes = 4096", None).await;
    let request = |pad: usize| {
        format!(
            "GET / HTTP/1.1\r\nHost: {}\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
            host(&env),
            "a".repeat(pad)
        )
    };
    let (status, text) = raw_request(env.port, &request(5000)).await;
    assert_eq!(status, 431, "{text}");
    let (status, text) = raw_request(env.port, &request(3000)).await;
    assert_eq!(status, 200, "{text}");
}

#[tokio::test]
async fn a_request_followed_by_the_clients_half_close_is_answered() {
    // The upstream answers late, so the FIN arrives while the answer is pending.
    let env = env_with("", Some(Duration::from_millis(300))).await;
    let mut stream = TcpStream::connect((LOOPBACK, env.port)).await.unwrap();
    stream
        .write_all(format!("GET /half HTTP/1.1\r\nHost: {}\r\n\r\n", host(&env)).as_bytes())
        .await
        .unwrap();
    stream.shutdown().await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("the connection ends")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(answer.contains("/half"), "the whole answer: {answer}");
}

#[tokio::test]
async fn more_than_100_header_fields_get_431() {
    // A head with `fields` header fields, `Host` and `Connection` among them.
    let request = |env: &TestEnv, fields: usize| {
        let extra: String = (0..fields - 2)
            .map(|i| format!("X-H{i}: {i}\r\n"))
            .collect();
        format!(
            "GET / HTTP/1.1\r\nHost: {}\r\n{extra}Connection: close\r\n\r\n",
            host(env)
        )
    };
    let env = env_with("", None).await;
    let (status, text) = raw_request(env.port, &request(&env, 101)).await;
    assert_eq!(status, 431, "{}", &text[..text.len().min(300)]);
    assert!(env.upstream.requests().is_empty());
    let (status, text) = raw_request(env.port, &request(&env, 100)).await;
    assert_eq!(status, 200, "{}", &text[..text.len().min(300)]);
    assert_eq!(env.upstream.requests().len(), 1);

    let env = env_with("max_request_headers = 10", None).await;
    let (status, _) = raw_request(env.port, &request(&env, 11)).await;
    assert_eq!(status, 431);
    let (status, text) = raw_request(env.port, &request(&env, 10)).await;
    assert_eq!(status, 200, "{text}");
}

#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed_after_timeout_idle() {
    let env = env_with(r#"timeout_idle = "1s""#, None).await;
    let mut stream = TcpStream::connect((LOOPBACK, env.port)).await.unwrap();
    let request = format!("GET / HTTP/1.1\r\nHost: {}\r\n\r\n", host(&env));
    stream.write_all(request.as_bytes()).await.unwrap();
    let answer = read_answer(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let closed = ends_within(&mut stream, Duration::from_secs(10)).await;
    assert!(
        closed.is_some_and(|t| t > Duration::from_millis(700) && t < Duration::from_secs(3)),
        "closed after {closed:?}"
    );
}

#[tokio::test]
async fn a_request_body_that_stalls_gets_408() {
    let env = env_with(r#"request_body_idle_timeout = "1s""#, None).await;
    let mut stream = TcpStream::connect((LOOPBACK, env.port)).await.unwrap();
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: {}\r\nContent-Length: 100\r\n\r\n",
        host(&env)
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // Bytes that keep coming, however slowly, keep the request alive...
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        stream.write_all(&[b'a'; 5]).await.unwrap();
    }
    // ...a stall longer than the timeout ends it.
    let started = Instant::now();
    let mut answer = Vec::new();
    let ended =
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    let after = started.elapsed();
    assert!(ended.is_ok(), "the stalled request's connection is closed");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(after < Duration::from_secs(3), "closed after {after:?}");
    // The upstream never got the whole body: its side of the request was cut too.
    let requests = env.upstream.requests();
    assert!(requests.iter().all(|r| r.body.len() < 100), "{requests:?}");
}

#[tokio::test]
async fn a_silent_websocket_client_is_not_held_to_the_body_idle_timeout() {
    // Once upgraded, the connection lives by the route's `idle_timeout`.
    let port = stream_upstream().await;
    let env = TestEnv::app_admin_public(env!("CARGO_BIN_EXE_portcullis"))
        .config(r#"request_body_idle_timeout = "1s""#)
        .route(&format!(
            "from = \"http://live.localhost\"\nto = \"http://127.0.0.1:{port}\"\n\
             allow_websockets = true\nallow_public_unauthenticated_access = true"
        ))
        .start()
        .await;
    let mut ws = env.open_websocket("live", "/chat", None).await;
    assert!(echoes(&mut ws, b"hello").await, "{}", env.logs());
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(echoes(&mut ws, b"still here").await, "{}", env.logs());
}
