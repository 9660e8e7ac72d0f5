//! The private databroker link end to end: a `databroker` process serving gRPC over TLS and a
//! proxy process on it at an `https://` URL.
//!
//! - sign-in works over TLS; a plaintext client and a client trusting another CA get nothing;
//! - with `grpc_client_ca_file`, a client without a certificate of that CA is refused and the
//!   proxy with one works;
//! - a call token taken off one call (made here with the library from the shared secret, as
//!   both ends derive the key) cannot be replayed or used for another method: the write of a
//!   session with `groups = ["admins"]` it would carry never happens, and its cookie opens
//!   nothing;
//! - a misconfigured link is a configuration error (exit 2) naming the key.

use std::path::{Path, PathBuf};

use portcullis_auth::{Cipher, Secret, Session, SessionCookie};
use portcullis_databroker::grpc::{self, pb, ClientTls, TokenKey, TOKEN_KEY_INFO};
use portcullis_databroker::{Error, RemoteStore, Store};
use portcullis_harness::{
    databroker_config, free_port, poll_until, random_secret, route, unix_now, ApiClient,
    Portcullis, TestCa, TestEnv, COOKIE,
};

const PUT: &str = "/portcullis.databroker.v1.Databroker/Put";
const GET: &str = "/portcullis.databroker.v1.Databroker/Get";

/// Sessions of both proxies' hosts share the cookie domain, so that a cookie sealed here for
/// a session written straight into the databroker is a session on the route host.
const SHARED_COOKIE: &str = r#"cookie_domain = "localhost""#;

/// A databroker serving TLS with a certificate of `ca` for 127.0.0.1, and its files.
struct Link {
    broker: Portcullis,
    grpc: u16,
    shared_secret: String,
    dir: tempfile::TempDir,
}

// === impl Link ===

impl Link {
    /// Starts the databroker; with `client_ca`, it requires client certificates of that CA.
    async fn start(ca: &TestCa, client_ca: Option<&TestCa>) -> Link {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = ca.server(&["127.0.0.1"]).write(dir.path(), "databroker");
        ca.write_cert(dir.path(), "ca");
        let mut tls = format!(
            "grpc_tls_certificate_file = \"{}\"\ngrpc_tls_key_file = \"{}\"\n",
            cert.display(),
            key.display()
        );
        if let Some(clients) = client_ca {
            let path = clients.write_cert(dir.path(), "client-ca");
            tls.push_str(&format!("grpc_client_ca_file = \"{}\"\n", path.display()));
        }
        let shared_secret = random_secret();
        let grpc = free_port();
        let broker = Portcullis::builder(env!("CARGO_BIN_EXE_portcullis"))
            .config(&format!(
                "{}{tls}",
                databroker_config(grpc, &shared_secret, None)
            ))
            .start()
            .await
            .unwrap_or_else(|e| panic!("databroker: {e}"));
        Link {
            broker,
            grpc,
            shared_secret,
            dir,
        }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.grpc)
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn key(&self) -> TokenKey {
        let secret = Secret::from_base64(&self.shared_secret).expect("shared secret");
        TokenKey::new(secret.derive(TOKEN_KEY_INFO))
    }

    /// Client TLS trusting the databroker's CA.
    fn tls(&self) -> ClientTls {
        ClientTls::new().ca(std::fs::read(self.ca_file()).unwrap())
    }

    /// A proxy on this databroker with these extra keys.
    async fn proxy(&self, extra: &str) -> TestEnv {
        TestEnv::builder(env!("CARGO_BIN_EXE_portcullis"))
            .route(&route::any_user("app"))
            .route(
                r#"from = "http://admin.localhost"
to = "{upstream}"
policy = { allow = { or = [ { groups = { has = "admins" } } ] } }"#,
            )
            .config(SHARED_COOKIE)
            .config(&format!(
                "databroker_tls_ca_file = \"{}\"\n{extra}",
                self.ca_file().display()
            ))
            .on_databroker(&self.url(), &self.shared_secret)
            .start()
            .await
    }
}

fn assert_unavailable(result: Result<Option<portcullis_databroker::Record>, Error>, what: &str) {
    match result {
        Err(Error::Unavailable(_)) => {}
        other => panic!("{what}: expected Unavailable, got {other:?}"),
    }
}

fn session(id: &str, user: &str, groups: &[&str]) -> Session {
    let now = unix_now();
    let mut claims = serde_json::Map::new();
    claims.insert("email".into(), format!("{user}@example.com").into());
    claims.insert("groups".into(), serde_json::json!(groups));
    Session {
        id: id.to_owned(),
        user_id: user.to_owned(),
        email: format!("{user}@example.com"),
        name: user.to_owned(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        claims,
        issued_at: now,
        expires_at: now + 3600,
        id_token: None,
        access_token: None,
        refresh_token: None,
        access_token_expires_at: None,
    }
}

fn put_request(session: &Session) -> pb::PutRequest {
    pb::PutRequest {
        records: vec![pb::NewRecord {
            r#type: portcullis_databroker::SESSION_TYPE.into(),
            id: session.id.clone(),
            data: serde_json::to_vec(session).unwrap(),
            expected_version: None,
        }],
    }
}

fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

fn cookie_for(cookie_secret: &str, id: &str) -> String {
    let secret = Secret::from_base64(cookie_secret).expect("cookie secret");
    let now = unix_now();
    SessionCookie {
        session_id: id.to_owned(),
        scope: "localhost".to_owned(),
        issued_at: now,
        expires_at: now + 3600,
    }
    .seal(&Cipher::new(&secret))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_signs_in_over_tls_and_a_captured_token_writes_nothing() {
    let ca = TestCa::new("databroker CA");
    let link = Link::start(&ca, None).await;
    let env = link.proxy("").await;

    // Sign-in writes the session over TLS; the proxy reads it back from there.
    let browser = env.signed_in("app", "alice").await;
    let cookie = env.session_cookie(&browser, "app");
    let client = ApiClient::new(&["app.localhost", "admin.localhost"], COOKIE);
    assert_eq!(client.status(&env.url("app", "/"), &cookie).await, 200);

    // Plain HTTP/2 to the TLS port, or TLS trusting another CA: nothing gets through.
    let plain_url = link.url().replace("https://", "http://");
    let plain = RemoteStore::connect_lazy(&plain_url, link.key(), None).unwrap();
    assert_unavailable(plain.get("session", "x").await, "a plaintext client");
    let other = ClientTls::new().ca(TestCa::new("another CA").cert_pem());
    let stranger = RemoteStore::connect_lazy(&link.url(), link.key(), Some(&other)).unwrap();
    assert_unavailable(
        stranger.get("session", "x").await,
        "a client trusting another CA",
    );

    // A token used once by its owner: a genuine write of a plain user's session.
    let channel = grpc::endpoint(&link.url(), Some(&link.tls()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut raw = pb::databroker_client::DatabrokerClient::new(channel);
    let captured = link.key().issue(PUT, unix_now());
    let bob = session("link-bob", "bob", &["users"]);
    raw.put(with_token(put_request(&bob), &captured))
        .await
        .expect("the token's first use");

    // Replayed to write an admin's session: refused.
    let mallory = session("link-mallory", "mallory", &["admins"]);
    let status = raw
        .put(with_token(put_request(&mallory), &captured))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    // A token taken off a read: refused for a write.
    let read = link.key().issue(GET, unix_now());
    let status = raw
        .put(with_token(put_request(&mallory), &read))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");

    // Through the proxy: bob's session works, mallory's does not exist.
    let bob_cookie = cookie_for(env.cookie_secret(), "link-bob");
    assert_eq!(client.status(&env.url("app", "/"), &bob_cookie).await, 200);
    assert_eq!(
        client.status(&env.url("admin", "/"), &bob_cookie).await,
        403
    );
    let mallory_cookie = cookie_for(env.cookie_secret(), "link-mallory");
    assert_eq!(
        client.status(&env.url("admin", "/"), &mallory_cookie).await,
        401,
        "{}",
        env.logs()
    );
    poll_until(
        std::time::Instant::now() + std::time::Duration::from_secs(5),
        "the databroker logs the replay",
        || link.broker.logs(),
        || async {
            (!link.broker.logs().contains("replayed call token")).then(|| "not yet".to_owned())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_client_ca_only_a_proxy_with_a_certificate_gets_in() {
    let ca = TestCa::new("databroker CA");
    let clients = TestCa::new("proxy CA");
    let link = Link::start(&ca, Some(&clients)).await;
    let (cert, key) = clients.client("proxy").write(link.dir.path(), "proxy");
    let env = link
        .proxy(&format!(
            "databroker_tls_client_cert_file = \"{}\"\ndatabroker_tls_client_key_file = \"{}\"",
            cert.display(),
            key.display()
        ))
        .await;
    env.signed_in("app", "alice").await;

    let anonymous = RemoteStore::connect_lazy(&link.url(), link.key(), Some(&link.tls())).unwrap();
    assert_unavailable(anonymous.get("session", "x").await, "no client certificate");
    let foreign = TestCa::new("another CA").client("proxy");
    let with_foreign = link
        .tls()
        .identity(foreign.cert_pem.as_bytes(), foreign.key_pem.as_bytes());
    let stranger = RemoteStore::connect_lazy(&link.url(), link.key(), Some(&with_foreign)).unwrap();
    assert_unavailable(
        stranger.get("session", "x").await,
        "a certificate of another CA",
    );
}

#[test]
fn a_misconfigured_link_is_a_configuration_error() {
    let binary = Path::new(env!("CARGO_BIN_EXE_portcullis"));
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("databroker CA");
    let (cert, _) = ca.server(&["127.0.0.1"]).write(dir.path(), "databroker");
    let base = databroker_config(free_port(), &random_secret(), None);

    let cert_only = format!("{base}grpc_tls_certificate_file = \"{}\"\n", cert.display());
    let out = Portcullis::check(binary, &cert_only);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("grpc_tls_key_file: is required when grpc_tls_certificate_file is set"),
        "{stderr}"
    );

    let https_plain = format!("{base}databroker_service_url = \"https://127.0.0.1:5443\"\n");
    let out = Portcullis::check(binary, &https_plain);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("grpc_tls_certificate_file: is required"),
        "{stderr}"
    );
}
