//! Integration harness for Portcullis: starts a real upstream, a real OpenID Connect provider
//! (npm `oidc-provider` 9, see `idp/server.mjs`) and the `portcullis` binary, all on 127.0.0.1
//! with ephemeral ports, and hands back their addresses. Every child process is killed when its
//! handle is dropped.
//!
//! The one-call setup most tests want is [`TestEnv`]:
//!
//! ```no_run
//! # async fn example() {
//! use portcullis_harness::TestEnv;
//!
//! let env = TestEnv::builder("/path/to/portcullis") // env!("CARGO_BIN_EXE_portcullis") in tests
//!     .route(
//!         r#"from = "http://app.localhost"
//! to = "{upstream}"
//! allow_any_authenticated_user = true
//! pass_identity_headers = true"#,
//!     )
//!     .config(r#"jwt_claims_headers = { "X-Email" = "email" }"#)
//!     .start()
//!     .await;
//!
//! let browser = env.browser();
//! let page = browser.sign_in(&env.url("app", "/hello"), "alice").await;
//! assert_eq!(page.status(), 200);
//! assert_eq!(env.upstream.last().unwrap().header("x-email"), Some("alice@example.com"));
//! # }
//! ```
//!
//! The pieces can also be used alone, in the style of linkerd2-proxy's integration
//! `server::http1().route(..).run()`: [`Upstream::builder`], [`Idp::start`],
//! [`Portcullis::start`], [`Browser::new`].
//!
//! Helpers the end-to-end tests share: [`route`] bodies, [`TestEnv::signed_in`],
//! [`TestEnv::rewrite_config`], [`TestEnv::open_websocket`], raw requests ([`raw_request`],
//! [`read_head`]) and raw upstreams ([`raw_upstream`], [`stream_upstream`]), and readers of
//! answers ([`location`], [`set_cookies`], [`query_param`], [`metric`]).
//!
//! Traffic goes only to loopback: the [`Browser`] resolves `*.localhost` to 127.0.0.1, refuses
//! every other name, and refuses to follow a redirect to a non-loopback address.

#![forbid(unsafe_code)]

mod api_client;
mod browser;
mod ca;
mod corpus;
pub mod demo;
mod env;
mod idp;
mod portcullis;
mod postgres;
mod raw;
mod raw_upstream;
mod response;
pub mod route;
mod tls_client;
mod upstream;

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::Mutex;

pub use crate::api_client::ApiClient;
pub use crate::browser::{Browser, Form};
pub use crate::ca::{write_self_signed, Issued, TestCa};
pub use crate::corpus::open_redirect_payloads;
pub use crate::env::{TestEnv, TestEnvBuilder};
pub use crate::idp::{Idp, IdpOptions};
pub use crate::portcullis::{Portcullis, PortcullisBuilder};
pub use crate::postgres::{psql, PrivatePostgres, TestDb};
pub use crate::raw::{
    echoes, ends_within, raw_get, raw_request, raw_request_bytes, read_head, read_until,
    websocket_handshake, WEBSOCKET_101, WEBSOCKET_KEY,
};
pub use crate::raw_upstream::{echo, raw_upstream, stream_upstream};
pub use crate::response::{location, metric, query_param, set_cookies};
pub use crate::tls_client::{Negotiated, TlsClient};
pub use crate::upstream::{RecordedRequest, Responder, Upstream, UpstreamBuilder};

/// The loopback address everything listens on.
pub const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// Name of the session cookie (the default `cookie_name`).
pub const COOKIE: &str = "_portcullis";

/// The `Accept` header of an API client (no sign-in redirects: 401 without a session).
pub const JSON: (&str, &str) = ("accept", "application/json");

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// `VmRSS` of process `pid` in KiB (from `/proc/PID/status`); `None` when it cannot be read.
pub fn rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// A `services = "databroker"` configuration serving gRPC on 127.0.0.1:`grpc` (metrics on a
/// free port) and storing in PostgreSQL at `storage_url`, or in memory when that is `None`.
pub fn databroker_config(grpc: u16, shared_secret: &str, storage_url: Option<&str>) -> String {
    let storage = storage_url
        .map(|url| {
            format!(
                "databroker_storage_type = \"postgres\"\ndatabroker_storage_connection_string = \"{url}\"\n"
            )
        })
        .unwrap_or_default();
    format!(
        r#"services = "databroker"
grpc_address = "127.0.0.1:{grpc}"
metrics_address = "127.0.0.1:{metrics}"
{storage}authenticate_service_url = "http://authenticate.localhost:1"
shared_secret = "{shared_secret}"
cookie_secret = "{cookie}"
log_format = "json"
"#,
        metrics = free_port(),
        cookie = random_secret(),
    )
}

/// Calls `check` every 50 ms until it returns `None` (done); panics with its last complaint,
/// `what` and `logs()` once `deadline` has passed.
pub async fn poll_until<F, Fut>(
    deadline: std::time::Instant,
    what: &str,
    logs: impl Fn() -> String,
    mut check: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<String>>,
{
    loop {
        let Some(complaint) = check().await else {
            return;
        };
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not by the deadline ({complaint})\n{}",
            logs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A currently free TCP port on 127.0.0.1.
///
/// The port is released before returning, so another process may take it in between (the usual
/// race of this technique); within this process the same port is never handed out twice.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    for _ in 0..100 {
        let port = TcpListener::bind(SocketAddr::from((LOOPBACK, 0)))
            .and_then(|l| l.local_addr())
            .expect("bind 127.0.0.1:0")
            .port();
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if given.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 after 100 tries");
}

/// Fresh random base64 (standard, padded) of 32 bytes, the format of `shared_secret` and
/// `cookie_secret`.
pub fn random_secret() -> String {
    use base64::Engine as _;
    use rand::RngCore as _;
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// True when `host` is a name or address this harness may send traffic to: `localhost`,
/// `*.localhost`, or a loopback IP.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return ip.is_loopback();
    }
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    host == "localhost" || host.ends_with(".localhost")
}

/// The `portcullis` binary beside the running executable (same target directory and profile).
/// When it is missing, or `rebuild` is set, it is built first with `cargo build -p portcullis`
/// in that profile, so a demo or a bench never runs a stale or absent binary.
pub fn sibling_portcullis(rebuild: bool) -> Result<std::path::PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let dir = exe
        .parent()
        .ok_or("current_exe has no parent directory")?
        .to_owned();
    let binary = dir.join(format!("portcullis{}", std::env::consts::EXE_SUFFIX));
    if binary.exists() && !rebuild {
        return Ok(binary);
    }
    let debug = dir.file_name().is_some_and(|n| n == "debug");
    let mut args = vec!["build", "-p", "portcullis"];
    if !debug {
        args.push("--release");
    }
    eprintln!("cargo {} (for {}) ...", args.join(" "), binary.display());
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.args(&args)
        .current_dir(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."));
    if dir
        .file_name()
        .is_some_and(|n| n == "release" || n == "debug")
    {
        if let Some(target) = dir.parent() {
            cmd.env("CARGO_TARGET_DIR", target);
        }
    }
    let status = cmd.status().map_err(|e| format!("run cargo: {e}"))?;
    if !status.success() {
        return Err(format!("cargo {} failed: {status}", args.join(" ")));
    }
    if binary.exists() {
        Ok(binary)
    } else {
        Err(format!("built, but {} is still missing", binary.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_differ() {
        let a = free_port();
        let b = free_port();
        assert_ne!(a, b);
        assert!(a > 0 && b > 0);
    }

    #[test]
    fn secrets_are_32_bytes() {
        use base64::Engine as _;
        let s = random_secret();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&s)
            .unwrap();
        assert_eq!(bytes.len(), 32);
        assert_ne!(s, random_secret());
    }

    #[test]
    fn databroker_configs_store_where_asked() {
        let memory: toml::Table = toml::from_str(&databroker_config(7, "s", None)).unwrap();
        assert_eq!(memory["services"].as_str(), Some("databroker"));
        assert_eq!(memory["grpc_address"].as_str(), Some("127.0.0.1:7"));
        assert!(!memory.contains_key("databroker_storage_type"));
        let pg: toml::Table = toml::from_str(&databroker_config(
            7,
            "s",
            Some("postgres://x@127.0.0.1/db"),
        ))
        .unwrap();
        assert_eq!(pg["databroker_storage_type"].as_str(), Some("postgres"));
        assert_eq!(
            pg["databroker_storage_connection_string"].as_str(),
            Some("postgres://x@127.0.0.1/db")
        );
        assert_eq!(pg["shared_secret"].as_str(), Some("s"));
    }

    #[test]
    fn rss_of_this_process_is_read() {
        assert!(rss_kib(std::process::id()).is_some_and(|kib| kib > 0));
        assert_eq!(rss_kib(u32::MAX), None);
    }

    #[test]
    fn loopback_hosts() {
        assert!(is_loopback_host("127.0.0.1"));
        assert!(is_loopback_host("127.0.0.7"));
        assert!(is_loopback_host("[::1]"));
        assert!(is_loopback_host("localhost"));
        assert!(is_loopback_host("app.localhost"));
        assert!(is_loopback_host("A.B.LOCALHOST."));
        assert!(!is_loopback_host("10.0.0.1"));
        assert!(!is_loopback_host("example.com"));
        assert!(!is_loopback_host("localhost.example.com"));
    }
}
