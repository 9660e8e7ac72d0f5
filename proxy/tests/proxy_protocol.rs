//! The PROXY protocol on the listener (`use_proxy_protocol`): each connection starts with a
//! v1 or v2 header, whose source address is the client's for `source_ip` policies, the access
//! log and the upstream's `X-Forwarded-For`; a connection without a valid header is closed
//! before anything reaches an upstream. With `trusted_proxies`, the header is believed only from
//! a peer in that list. Every connection stays on 127.0.0.1: the 203.0.113.x and 198.51.100.x
//! documentation addresses only ever appear inside headers.

use std::net::SocketAddr;
use std::time::Duration;

use portcullis_harness::{
    ends_within, raw_request_bytes, write_self_signed, TestEnv, TlsClient, LOOPBACK,
};
use ppp::v2::{Builder, Command, Protocol, Version};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// Open to 203.0.113.7 alone, signed in or not.
const IP_ROUTE: &str = r#"from = "http://ip.localhost"
to = "{upstream}"
policy = [ { allow = { or = [ { source_ip = "203.0.113.7" } ] } } ]"#;

async fn start(extra: &str) -> TestEnv {
    let env = TestEnv::app_admin_public(BIN)
        .config(extra)
        .route(IP_ROUTE)
        .start()
        .await;
    env.upstream.clear();
    env
}

/// A PROXY v1 header from `source` to the proxy's port.
fn v1(env: &TestEnv, source: &str) -> Vec<u8> {
    let family = if source.contains(':') { "TCP6" } else { "TCP4" };
    let destination = if source.contains(':') {
        "::1"
    } else {
        "127.0.0.1"
    };
    format!(
        "PROXY {family} {source} {destination} 40000 {}\r\n",
        env.port
    )
    .into_bytes()
}

/// A PROXY v2 header (command PROXY) from `source` (an address and port).
fn v2(env: &TestEnv, source: &str) -> Vec<u8> {
    let source: SocketAddr = source.parse().unwrap();
    let destination = match source {
        SocketAddr::V4(_) => SocketAddr::from((LOOPBACK, env.port)),
        SocketAddr::V6(_) => SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, env.port)),
    };
    Builder::with_addresses(
        Version::Two | Command::Proxy,
        Protocol::Stream,
        (source, destination),
    )
    .build()
    .unwrap()
}

/// A PROXY v2 header with the LOCAL command (a health check of the proxy in front).
fn v2_local() -> Vec<u8> {
    Builder::with_addresses(
        Version::Two | Command::Local,
        Protocol::Unspecified,
        ppp::v2::Addresses::Unspecified,
    )
    .build()
    .unwrap()
}

/// `prefix` then a GET of `/` on `host` with `headers`, on one connection: the status (0 for
/// no answer).
async fn get(env: &TestEnv, prefix: &[u8], host: &str, headers: &str) -> u16 {
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {host}.localhost:{}\r\n{headers}Connection: close\r\n\r\n",
        env.port
    );
    let bytes = [prefix, request.as_bytes()].concat();
    raw_request_bytes(env.port, &bytes).await.0
}

/// The `X-Forwarded-For` the upstream got for a GET on the public route after `prefix`.
async fn forwarded_for(env: &TestEnv, prefix: &[u8], headers: &str) -> String {
    assert_eq!(
        get(env, prefix, "public", headers).await,
        200,
        "{}",
        env.logs()
    );
    let req = env.upstream.last().expect("the upstream was reached");
    req.header("x-forwarded-for").unwrap_or_default().to_owned()
}

/// Whether an access log line names `ip`, once written (after two seconds whatever there is).
async fn logged_ip(env: &TestEnv, ip: &str) -> bool {
    let needle = format!(r#""ip":"{ip}""#);
    for _ in 0..40 {
        if env.logs().contains(&needle) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn the_proxy_headers_source_is_the_client() {
    let env = start("use_proxy_protocol = true").await;

    // v1, IPv4 and IPv6: source_ip, the access log and X-Forwarded-For see the source.
    assert_eq!(
        get(&env, &v1(&env, "203.0.113.7"), "ip", "").await,
        200,
        "{}",
        env.logs()
    );
    assert_eq!(
        env.upstream.last().unwrap().header("x-forwarded-for"),
        Some("203.0.113.7")
    );
    assert!(logged_ip(&env, "203.0.113.7").await, "{}", env.logs());
    assert_ne!(get(&env, &v1(&env, "198.51.100.9"), "ip", "").await, 200);
    assert_eq!(
        forwarded_for(&env, &v1(&env, "2001:db8::7"), "").await,
        "2001:db8::7"
    );

    // v2, IPv4 and IPv6.
    assert_eq!(
        get(&env, &v2(&env, "203.0.113.7:40000"), "ip", "").await,
        200,
        "{}",
        env.logs()
    );
    assert_ne!(
        get(&env, &v2(&env, "198.51.100.9:40000"), "ip", "").await,
        200
    );
    assert_eq!(
        forwarded_for(&env, &v2(&env, "[2001:db8::8]:40000"), "").await,
        "2001:db8::8"
    );
    // A v2 LOCAL header (and a v1 UNKNOWN one) carries no client: the connection's own
    // address stands.
    assert_eq!(forwarded_for(&env, &v2_local(), "").await, "127.0.0.1");
    assert_eq!(
        forwarded_for(&env, b"PROXY UNKNOWN\r\n", "").await,
        "127.0.0.1"
    );
    // A client's own X-Forwarded-For is still not believed (no trusted hops).
    assert_eq!(
        forwarded_for(
            &env,
            &v1(&env, "203.0.113.7"),
            "X-Forwarded-For: 198.51.100.9\r\n"
        )
        .await,
        "203.0.113.7"
    );

    // Several requests on one connection: the header comes once, before the first.
    let mut s = TcpStream::connect((LOOPBACK, env.port)).await.unwrap();
    s.write_all(&v1(&env, "203.0.113.7")).await.unwrap();
    for _ in 0..2 {
        let request = format!("GET / HTTP/1.1\r\nHost: ip.localhost:{}\r\n\r\n", env.port);
        s.write_all(request.as_bytes()).await.unwrap();
        let head = portcullis_harness::read_head(&mut s).await.unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; length];
        s.read_exact(&mut body).await.unwrap();
    }
}

#[tokio::test]
async fn a_connection_without_a_valid_proxy_header_is_closed() {
    let env = start(
        r#"use_proxy_protocol = true
request_header_timeout = "2s""#,
    )
    .await;
    for prefix in [
        &b""[..],
        b"PROXY TCP4 203.0.113.7\r\n",
        b"PROXY TCP5 203.0.113.7 127.0.0.1 1 2\r\n",
        b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 80\n",
        b"\r\n\r\n\0\r\nQUIT\n\x20\x03\x00\x00",
        b"garbage that is no header at all\r\n",
    ] {
        let bytes = [
            prefix,
            format!(
                "GET / HTTP/1.1\r\nHost: public.localhost:{}\r\n\r\n",
                env.port
            )
            .as_bytes(),
        ]
        .concat();
        let (status, text) = raw_request_bytes(env.port, &bytes).await;
        assert_eq!(
            status,
            0,
            "{:?} was answered: {text}",
            String::from_utf8_lossy(prefix)
        );
    }
    assert!(env.upstream.requests().is_empty());

    // A header that never comes is held to the head deadline.
    let mut silent = TcpStream::connect((LOOPBACK, env.port)).await.unwrap();
    silent.write_all(b"PROXY TCP4 203.0.113.7").await.unwrap();
    let cut = ends_within(&mut silent, Duration::from_secs(8)).await;
    assert!(
        cut.is_some_and(|t| t < Duration::from_secs(4)),
        "cut after {cut:?}"
    );
}

#[tokio::test]
async fn the_proxy_header_is_read_before_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = write_self_signed(dir.path(), "app", &["public.localhost"]);
    let env = TestEnv::builder(BIN)
        .tls_certificate(&cert, &key)
        .config("use_proxy_protocol = true")
        .route(
            r#"from = "https://public.localhost"
to = "{upstream}"
allow_public_unauthenticated_access = true"#,
        )
        .start()
        .await;
    let root = std::fs::read(&cert).unwrap();
    let header = v2(&env, "203.0.113.7:40000");
    let (mut tls, _) = TlsClient::new(env.port, "public.localhost", &root)
        .alpn(&["http/1.1"])
        .prefix(&header)
        .connect()
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", env.logs()));
    let request = format!(
        "GET / HTTP/1.1\r\nHost: public.localhost:{}\r\nConnection: close\r\n\r\n",
        env.port
    );
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(
        env.upstream.last().unwrap().header("x-forwarded-for"),
        Some("203.0.113.7")
    );

    // Without the header, the handshake never starts.
    let plain = TlsClient::new(env.port, "public.localhost", &root)
        .connect()
        .await;
    assert!(plain.is_err(), "a handshake without a PROXY header");
}

#[tokio::test]
async fn the_proxy_header_is_believed_only_from_trusted_proxies() {
    // The peer (127.0.0.1) is not in the list: the header is read, and its source ignored.
    let env = start(
        r#"use_proxy_protocol = true
trusted_proxies = ["10.0.0.0/8"]"#,
    )
    .await;
    assert_ne!(get(&env, &v1(&env, "203.0.113.7"), "ip", "").await, 200);
    assert_eq!(
        forwarded_for(&env, &v1(&env, "203.0.113.7"), "").await,
        "127.0.0.1"
    );
    assert!(logged_ip(&env, "127.0.0.1").await, "{}", env.logs());
    assert!(
        !env.logs().contains(r#""ip":"203.0.113.7""#),
        "{}",
        env.logs()
    );
    // Still, a header must be there.
    assert_eq!(get(&env, b"", "public", "").await, 0);

    let env = start(
        r#"use_proxy_protocol = true
trusted_proxies = ["10.0.0.0/8", "127.0.0.1/32"]"#,
    )
    .await;
    assert_eq!(
        get(&env, &v1(&env, "203.0.113.7"), "ip", "").await,
        200,
        "{}",
        env.logs()
    );
}

#[tokio::test]
async fn behind_a_trusted_proxy_header_its_source_is_the_peer_for_x_forwarded_for() {
    // The load balancer (127.0.0.1) relays for an HTTP proxy at 198.51.100.9, both trusted:
    // that proxy's X-Forwarded-For is believed. A source outside the list (192.0.2.1) is the
    // client, whatever it claims in X-Forwarded-For.
    let env = start(
        r#"use_proxy_protocol = true
trusted_proxies = ["127.0.0.1/32", "198.51.100.0/24"]"#,
    )
    .await;
    let xff = "X-Forwarded-For: 203.0.113.7\r\n";
    assert_eq!(
        get(&env, &v1(&env, "198.51.100.9"), "ip", xff).await,
        200,
        "{}",
        env.logs()
    );
    assert_eq!(
        env.upstream.last().unwrap().header("x-forwarded-for"),
        Some("203.0.113.7, 198.51.100.9")
    );
    assert_ne!(get(&env, &v1(&env, "192.0.2.1"), "ip", xff).await, 200);
    assert_eq!(
        forwarded_for(&env, &v1(&env, "192.0.2.1"), xff).await,
        "192.0.2.1"
    );
}

#[tokio::test]
async fn a_bad_trusted_proxies_value_is_a_config_error() {
    let env = TestEnv::app_admin_public(BIN)
        .config(r#"trusted_proxies = ["10.0.0.0/8", "10.0.0.1/8", "nonsense"]"#)
        .try_start()
        .await;
    let Err(e) = env else {
        panic!("started with bad trusted_proxies");
    };
    assert!(e.contains("trusted_proxies[1]"), "{e}");
    assert!(e.contains("trusted_proxies[2]"), "{e}");
    assert!(e.contains("exit status: 2"), "{e}");
}
