//! Trusted proxies in front of Portcullis (`xff_num_trusted_hops`): the client address they
//! put in `X-Forwarded-For` is the one `source_ip` policies, the access log and the upstream's
//! `X-Forwarded-For` see. From anyone else (the default, 0 hops) forwarding headers are not
//! believed. The 203.0.113.x and 198.51.100.x documentation addresses only ever appear in
//! headers: every connection stays on 127.0.0.1.

use std::time::Duration;

use portcullis_harness::{raw_get, TestEnv};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// Open to 203.0.113.7 alone, signed in or not.
const IP_ROUTE: &str = r#"from = "http://ip.localhost"
to = "{upstream}"
policy = [ { allow = { or = [ { source_ip = "203.0.113.7" } ] } } ]"#;

async fn start(extra: &str) -> TestEnv {
    TestEnv::app_admin_public(BIN)
        .config(extra)
        .route(IP_ROUTE)
        .start()
        .await
}

/// The status of a raw GET of `/` on `host` with `headers`.
async fn status(env: &TestEnv, host: &str, headers: &str) -> u16 {
    let authority = format!("{host}.localhost:{}", env.port);
    raw_get(env.port, &authority, "/", headers).await.0
}

/// The `X-Forwarded-For` and `X-Forwarded-Proto` the upstream got for a GET on the public
/// route with `headers`.
async fn forwarded(env: &TestEnv, headers: &str) -> (String, String) {
    assert_eq!(status(env, "public", headers).await, 200, "{}", env.logs());
    let req = env.upstream.last().expect("the upstream was reached");
    let get = |name| req.header(name).unwrap_or_default().to_owned();
    (get("x-forwarded-for"), get("x-forwarded-proto"))
}

/// Whether an access log line names `ip`, once written (log lines are written in the
/// background; after two seconds whatever there is).
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
async fn one_trusted_hop_gives_the_address_it_forwarded() {
    let env = start("xff_num_trusted_hops = 1").await;

    // source_ip sees the address the trusted proxy put last in X-Forwarded-For.
    assert_eq!(
        status(&env, "ip", "X-Forwarded-For: 203.0.113.7\r\n").await,
        200,
        "{}",
        env.logs()
    );
    let req = env.upstream.last().expect("the upstream was reached");
    assert_eq!(
        req.header("x-forwarded-for"),
        Some("203.0.113.7, 127.0.0.1")
    );
    assert!(
        logged_ip(&env, "203.0.113.7").await,
        "the access log names the forwarded client:\n{}",
        env.logs()
    );

    // The first address from the right is the one trusted: what the client itself wrote
    // before it is not believed.
    let spoofed_then_real = "X-Forwarded-For: 198.51.100.9, 203.0.113.7\r\n";
    assert_eq!(status(&env, "ip", spoofed_then_real).await, 200);
    let real_then_spoofed = "X-Forwarded-For: 203.0.113.7, 198.51.100.9\r\n";
    assert_ne!(status(&env, "ip", real_then_spoofed).await, 200);
    // Several fields are one list.
    let two_fields = "X-Forwarded-For: 198.51.100.9\r\nX-Forwarded-For: 203.0.113.7\r\n";
    assert_eq!(status(&env, "ip", two_fields).await, 200);

    // Without the header (or with no address in it) the connection's address is the client's.
    assert_ne!(status(&env, "ip", "").await, 200);
    assert_ne!(
        status(&env, "ip", "X-Forwarded-For: unknown\r\n").await,
        200
    );
    assert!(logged_ip(&env, "127.0.0.1").await, "{}", env.logs());

    // Upstream, the chain goes on with this hop; the trusted proxy's scheme is kept.
    assert_eq!(
        forwarded(
            &env,
            "X-Forwarded-For: 198.51.100.9, 203.0.113.7\r\nX-Forwarded-Proto: https\r\n"
        )
        .await,
        (
            "198.51.100.9, 203.0.113.7, 127.0.0.1".to_owned(),
            "https".to_owned()
        )
    );
    assert_eq!(
        forwarded(&env, "").await,
        ("127.0.0.1".to_owned(), "http".to_owned())
    );
    // Neither a made-up scheme nor the forwarded host is believed.
    let req = {
        let headers = "X-Forwarded-Proto: gopher\r\nX-Forwarded-Host: evil.test\r\n";
        assert_eq!(forwarded(&env, headers).await.1, "http");
        env.upstream.last().expect("the upstream was reached")
    };
    assert_eq!(
        req.header("x-forwarded-host"),
        Some(format!("public.localhost:{}", env.port).as_str())
    );
}

#[tokio::test]
async fn by_default_forwarding_headers_are_not_believed() {
    let env = start("").await;
    let headers = "X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Proto: https\r\n";
    assert_ne!(status(&env, "ip", headers).await, 200, "{}", env.logs());
    assert_eq!(
        forwarded(&env, headers).await,
        ("127.0.0.1".to_owned(), "http".to_owned())
    );
    assert!(logged_ip(&env, "127.0.0.1").await, "{}", env.logs());
    assert!(
        !env.logs().contains(r#""ip":"203.0.113.7""#),
        "{}",
        env.logs()
    );
}

#[tokio::test]
async fn x_forwarded_for_is_believed_only_from_a_peer_in_trusted_proxies() {
    // One trusted hop, but the peer (127.0.0.1) is outside the list: not believed, and the
    // client's forwarding headers are replaced as from anyone else.
    let env = start(
        r#"xff_num_trusted_hops = 1
trusted_proxies = ["10.0.0.0/8", "::1/128"]"#,
    )
    .await;
    let headers = "X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Proto: https\r\n";
    assert_ne!(status(&env, "ip", headers).await, 200, "{}", env.logs());
    assert_eq!(
        forwarded(&env, headers).await,
        ("127.0.0.1".to_owned(), "http".to_owned())
    );

    // The peer in the list: the hop is believed.
    let env = start(
        r#"xff_num_trusted_hops = 1
trusted_proxies = ["127.0.0.0/8"]"#,
    )
    .await;
    assert_eq!(status(&env, "ip", headers).await, 200, "{}", env.logs());
    assert_eq!(
        forwarded(&env, headers).await,
        ("203.0.113.7, 127.0.0.1".to_owned(), "https".to_owned())
    );
}

#[tokio::test]
async fn without_a_hop_count_the_client_is_the_first_address_not_trusted() {
    // From the right, every address in the list is a proxy; the first one that is not is the
    // client, and what stands before it is not believed.
    let env = start(r#"trusted_proxies = ["127.0.0.1/32", "198.51.100.0/24"]"#).await;
    for (xff, expected) in [
        ("203.0.113.7", 200),
        ("203.0.113.7, 198.51.100.9", 200),
        ("203.0.113.7, 198.51.100.9, 198.51.100.10", 200),
        ("203.0.113.7, 192.0.2.1, 198.51.100.9", 403),
        ("192.0.2.1, 203.0.113.7", 200),
        ("unknown, 198.51.100.9", 403),
    ] {
        let headers = format!("X-Forwarded-For: {xff}\r\nAccept: application/json\r\n");
        let got = status(&env, "ip", &headers).await;
        assert_eq!(got == 200, expected == 200, "{xff}: {got}\n{}", env.logs());
    }
    assert!(logged_ip(&env, "203.0.113.7").await, "{}", env.logs());
}
