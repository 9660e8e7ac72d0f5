//! End to end: what path reaches the upstream when the client's path is built to mean one
//! thing to the proxy and another to the application behind it. The upstream here is a raw
//! TCP server that records the request target byte for byte, so that no HTTP library between
//! it and the test decodes, re-encodes or refuses what the proxy sent.
//!
//! The rules (`CONTRACT.md`, Additions): a segment `..;x` or `.;x` counts as `..` or `.`
//! (Tomcat, Jetty and Spring cut path parameters before resolving dots), so a public prefix
//! cannot be climbed out of; bytes outside ASCII reach the upstream as the client sent them,
//! percent-encoded with upper-case hex (`%C3%A9` for a raw `é`, and for a client's `%c3%a9`),
//! never decoded and encoded again; the query goes on byte for byte.

use std::sync::{Arc, Mutex};

use portcullis_harness::{raw_request_bytes, TestEnv};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// An HTTP/1.1 upstream that records each request target as raw bytes and answers `200 ok`
/// (keep-alive, requests without bodies).
struct RawUpstream {
    port: u16,
    targets: Arc<Mutex<Vec<Vec<u8>>>>,
    task: JoinHandle<()>,
}

impl RawUpstream {
    async fn start() -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let targets = Arc::new(Mutex::new(Vec::new()));
        let recorded = targets.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, recorded.clone()));
            }
        });
        RawUpstream {
            port,
            targets,
            task,
        }
    }

    fn targets(&self) -> Vec<Vec<u8>> {
        self.targets.lock().unwrap().clone()
    }

    fn clear(&self) {
        self.targets.lock().unwrap().clear();
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut stream: TcpStream, targets: Arc<Mutex<Vec<Vec<u8>>>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head: Vec<u8> = buf.drain(..end + 4).collect();
            let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
            let mut parts = line.splitn(3, |&b| b == b' ');
            let target = parts.nth(1).unwrap_or_default().to_vec();
            targets.lock().unwrap().push(target);
            let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
            if stream.write_all(answer).await.is_err() {
                return;
            }
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A world with one raw upstream behind: `app.localhost`, public under `/open` and signed-in
/// users only elsewhere, and `public.localhost`, public everywhere.
async fn world() -> (TestEnv, RawUpstream) {
    let upstream = RawUpstream::start().await;
    let to = format!("http://127.0.0.1:{}", upstream.port);
    let env = TestEnv::builder(BIN)
        .route(&format!(
            "from = \"http://app.localhost\"\nto = \"{to}\"\nprefix = \"/open\"\n\
             allow_public_unauthenticated_access = true"
        ))
        .route(&format!(
            "from = \"http://app.localhost\"\nto = \"{to}\"\nallow_any_authenticated_user = true"
        ))
        .route(&format!(
            "from = \"http://public.localhost\"\nto = \"{to}\"\n\
             allow_public_unauthenticated_access = true"
        ))
        .start()
        .await;
    (env, upstream)
}

/// Sends `GET <target>` to `host` with the target's bytes as they are, and returns the status
/// (0 when there was no answer) and the head of the answer.
async fn get_raw(env: &TestEnv, host: &str, target: &[u8], headers: &str) -> (u16, String) {
    let mut request = b"GET ".to_vec();
    request.extend_from_slice(target);
    request.extend_from_slice(
        format!(
            " HTTP/1.1\r\nHost: {host}.localhost:{}\r\n{headers}Connection: close\r\n\r\n",
            env.port
        )
        .as_bytes(),
    );
    raw_request_bytes(env.port, &request).await
}

fn show(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

#[tokio::test]
async fn path_parameters_do_not_climb_out_of_a_public_prefix() {
    let (env, upstream) = world().await;

    // The public prefix is open, so the refusals below are about the climb, not the route.
    let (status, _) = get_raw(&env, "app", b"/open/x", "").await;
    assert_eq!(status, 200, "{}", env.logs());
    assert_eq!(upstream.targets(), vec![b"/open/x".to_vec()]);
    upstream.clear();

    for target in [
        &b"/open/..;/secret"[..],
        b"/open/..;jsessionid=1/secret",
        b"/open/%2e%2e;/secret",
        b"/open/.%2E;x/secret",
        b"/open/..%3b/secret",
        b"/open/a/..;/..;/secret",
    ] {
        for (headers, want) in [("", 302), ("Accept: application/json\r\n", 401)] {
            let (status, head) = get_raw(&env, "app", target, headers).await;
            assert!(
                status == want || status == 400,
                "{} {headers:?}: {status}\n{head}",
                show(target)
            );
            if status == 302 {
                assert!(head.contains("/.portcullis/sign_in?"), "{head}");
            }
        }
        assert_eq!(
            upstream.targets(),
            Vec::<Vec<u8>>::new(),
            "{} reached the upstream",
            show(target)
        );
    }

    // `.;x` only stays in place, and a name that merely starts with dots is a name.
    for (target, forwarded) in [
        (&b"/open/.;x/y"[..], &b"/open/y"[..]),
        (b"/open/..x;/y", b"/open/..x;/y"),
        (b"/open/a;b/y", b"/open/a;b/y"),
    ] {
        upstream.clear();
        let (status, head) = get_raw(&env, "app", target, "").await;
        assert_eq!(status, 200, "{}: {head}", show(target));
        assert_eq!(
            upstream.targets(),
            vec![forwarded.to_vec()],
            "{}",
            show(target)
        );
    }
}

#[tokio::test]
async fn bytes_outside_ascii_reach_the_upstream_as_sent() {
    let (env, upstream) = world().await;
    for (target, forwarded) in [
        // Raw UTF-8 on the request line: the same octets, percent-encoded.
        (&b"/caf\xc3\xa9//x/../y"[..], &b"/caf%C3%A9/y"[..]),
        (b"/caf\xc3\xa9", b"/caf%C3%A9"),
        // A client's own escapes: the same octets (hex digits upper-cased).
        (b"/caf%c3%a9//x/../y", b"/caf%C3%A9/y"),
        (b"/caf%C3%A9", b"/caf%C3%A9"),
        // The query is not the path: it goes on byte for byte.
        (
            b"/a//b/../c?q=caf\xc3\xa9&r=%c3%a9",
            b"/a/c?q=caf\xc3\xa9&r=%c3%a9",
        ),
    ] {
        upstream.clear();
        let (status, head) = get_raw(&env, "public", target, "").await;
        assert_eq!(status, 200, "{}: {head}\n{}", show(target), env.logs());
        assert_eq!(
            upstream.targets(),
            vec![forwarded.to_vec()],
            "{} went upstream as {:?}",
            show(target),
            upstream
                .targets()
                .iter()
                .map(|t| show(t))
                .collect::<Vec<_>>()
        );
    }
}

/// Pingora's HTTP/1 parser refuses a request line that is not UTF-8 (400, nothing forwarded);
/// should one get through, its bytes must go on as they came, percent-encoded.
#[tokio::test]
async fn bytes_that_are_not_utf8_are_refused_or_reach_the_upstream_as_sent() {
    let (env, upstream) = world().await;
    for (target, forwarded) in [
        (&b"/caf\xe9//x/../y"[..], &b"/caf%E9/y"[..]),
        (b"/caf\xe9", b"/caf%E9"),
    ] {
        upstream.clear();
        let (status, head) = get_raw(&env, "public", target, "").await;
        let targets = upstream.targets();
        match status {
            400 => assert!(targets.is_empty(), "{}", show(target)),
            200 => assert_eq!(targets, vec![forwarded.to_vec()], "{}", show(target)),
            _ => panic!("{}: {head}", show(target)),
        }
    }
}

/// A target Pingora cannot place a path in (`foo:/secret`) is judged as `/`; an application
/// that reads a path out of it (Go's `net/http` reads `/secret`) must not be handed it.
#[tokio::test]
async fn targets_not_in_origin_form_go_upstream_as_the_judged_path() {
    let (env, upstream) = world().await;
    let (status, head) = get_raw(&env, "app", b"http://app.localhost/open/..;/secret", "").await;
    assert!(status == 302 || status == 400, "{status}: {head}");
    assert_eq!(upstream.targets(), Vec::<Vec<u8>>::new());

    let (status, head) = get_raw(&env, "app", b"foo:/open/x", "").await;
    // `/` is the protected route here: not a way in either.
    assert!(status == 302 || status == 400, "{status}: {head}");
    assert_eq!(upstream.targets(), Vec::<Vec<u8>>::new());

    for target in [&b"foo:/secret"[..], b"http://public.localhost/a//b"] {
        upstream.clear();
        let (status, head) = get_raw(&env, "public", target, "").await;
        if status == 200 {
            let targets = upstream.targets();
            assert_eq!(targets.len(), 1);
            assert!(
                targets[0] == b"/" || targets[0] == b"/a/b",
                "{} went upstream as {}",
                show(target),
                show(&targets[0])
            );
        } else {
            assert_eq!(status, 400, "{}: {head}", show(target));
        }
    }
}
