//! The store contract through the gRPC service: an in-process server on 127.0.0.1:0 and a
//! [`RemoteStore`] client, in plain HTTP/2 and over TLS; the call tokens (bound to a method,
//! usable once) and client certificates as the server checks them.

mod common;

use std::sync::Arc;
use std::time::Duration;

use portcullis_databroker::grpc::{self, pb, ClientTls, ServerTls, TokenKey};
use portcullis_databroker::{Error, MemoryStore, RemoteStore, Store};
use portcullis_harness::TestCa;

struct Server {
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

async fn start(store: Arc<dyn Store>, key: [u8; 32]) -> Server {
    start_with(store, key, None).await
}

/// A server over TLS when `tls` is given (its URL is then `https://`).
async fn start_with(store: Arc<dyn Store>, key: [u8; 32], tls: Option<ServerTls>) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        grpc::serve(store, TokenKey::new(key), listener, tls.as_ref(), async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    Server {
        url,
        stop: Some(stop),
        task,
    }
}

const PUT: &str = "/portcullis.databroker.v1.Databroker/Put";
const GET: &str = "/portcullis.databroker.v1.Databroker/Get";
const SERVER_VERSION: &str = "/portcullis.databroker.v1.Databroker/ServerVersion";

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

fn admin_session(id: &str) -> pb::PutRequest {
    pb::PutRequest {
        records: vec![pb::NewRecord {
            r#type: "session".into(),
            id: id.into(),
            data: br#"{"email":"mallory@example.com","groups":["admins"]}"#.to_vec(),
            expected_version: None,
        }],
    }
}

#[tokio::test]
async fn remote_store_keeps_the_contract() {
    let server = start(Arc::new(MemoryStore::new()), [3; 32]).await;
    let client = RemoteStore::connect_lazy(&server.url, TokenKey::new([3; 32]), None).unwrap();
    common::full_contract(&client).await;
}

#[tokio::test]
async fn a_snapshot_of_many_messages_streams_whole_and_in_order() {
    use futures::StreamExt as _;

    let store = Arc::new(MemoryStore::new());
    // More than two of the server's 500-record messages, and records of another type.
    let records: Vec<_> = (0..1_234)
        .map(|i| common::rec("session", &format!("s{i:05}"), i))
        .chain((0..7).map(|i| common::rec("user", &format!("u{i}"), i)))
        .collect();
    store.put(records).await.unwrap();
    store.delete("session", "s00001").await.unwrap();
    let server = start(store.clone(), [3; 32]).await;
    let client = RemoteStore::connect_lazy(&server.url, TokenKey::new([3; 32]), None).unwrap();

    let whole = store.sync_latest(Some("session")).await.unwrap();
    let streamed = client.sync_latest_stream(Some("session")).await.unwrap();
    assert_eq!(streamed.versions, whole.versions);
    let records: Vec<_> = streamed
        .records
        .map(|r| r.unwrap())
        .collect::<Vec<_>>()
        .await;
    assert_eq!(records.len(), 1_233, "live sessions only");
    assert_eq!(records, whole.records);
    assert_eq!(client.sync_latest(Some("session")).await.unwrap(), whole);
}

#[tokio::test]
async fn compaction_travels_as_compacted() {
    let memory = MemoryStore::new();
    let server = start(Arc::new(memory.clone()), [3; 32]).await;
    let client = RemoteStore::connect_lazy(&server.url, TokenKey::new([3; 32]), None).unwrap();
    client
        .put(vec![common::rec("session", "a", 1)])
        .await
        .unwrap();
    client.delete("session", "a").await.unwrap();
    memory.compact(i64::MAX / 2);
    match client.sync(0).await {
        Err(Error::Compacted {
            requested: 0,
            oldest: 2,
        }) => {}
        Err(e) => panic!("expected Compacted, got {e:?}"),
        Ok(_) => panic!("expected Compacted, got a stream"),
    }
}

#[tokio::test]
async fn calls_without_a_valid_token_are_refused() {
    let server = start(Arc::new(MemoryStore::new()), [3; 32]).await;

    // Another shared secret: every call fails closed.
    let wrong = RemoteStore::connect_lazy(&server.url, TokenKey::new([4; 32]), None).unwrap();
    let err = wrong.get("session", "a").await.unwrap_err();
    assert!(
        matches!(err, Error::Unavailable(ref m) if m.contains("Unauthenticated")),
        "{err:?}"
    );

    // No token at all, and a stale one: UNAUTHENTICATED.
    let channel = tonic::transport::Endpoint::from_shared(server.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut raw = pb::databroker_client::DatabrokerClient::new(channel);
    let status = raw
        .server_version(pb::ServerVersionRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    let stale = TokenKey::new([3; 32]).issue(SERVER_VERSION, 1_000);
    let mut request = tonic::Request::new(pb::ServerVersionRequest {});
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {stale}").parse().unwrap());
    let status = raw.server_version(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
}

#[tokio::test]
async fn a_stopped_server_is_unavailable_and_a_restarted_one_is_reached_again() {
    let mut server = start(Arc::new(MemoryStore::new()), [3; 32]).await;
    let client = RemoteStore::connect_lazy(&server.url, TokenKey::new([3; 32]), None).unwrap();
    client
        .put(vec![common::rec("session", "a", 1)])
        .await
        .unwrap();
    let addr: std::net::SocketAddr = server.url.trim_start_matches("http://").parse().unwrap();
    let _ = server.stop.take().unwrap().send(());
    server.task.await.unwrap();
    let err = client.get("session", "a").await.unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");

    // Same address, a new store: the client reconnects by itself.
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    tokio::spawn(grpc::serve(
        Arc::new(MemoryStore::new()),
        TokenKey::new([3; 32]),
        listener,
        None,
        std::future::pending(),
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match client.get("session", "a").await {
            Ok(got) => {
                assert!(got.is_none(), "a new store");
                break;
            }
            Err(e) if tokio::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("did not reconnect: {e:?}"),
        }
    }
}

#[tokio::test]
async fn a_call_token_is_good_for_its_method_once() {
    let server = start(Arc::new(MemoryStore::new()), [3; 32]).await;
    let channel = grpc::endpoint(&server.url, None)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut raw = pb::databroker_client::DatabrokerClient::new(channel);
    let key = TokenKey::new([3; 32]);

    // The first use is the genuine call.
    let put = key.issue(PUT, now());
    raw.put(with_token(admin_session("s1"), &put))
        .await
        .unwrap();
    // Replayed: refused, and nothing is written.
    let status = raw
        .put(with_token(admin_session("s2"), &put))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("already used"), "{status:?}");

    // A token made for a read is refused for a write (and stays good for its read).
    let get = key.issue(GET, now());
    let status = raw
        .put(with_token(admin_session("s3"), &get))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    let found = raw
        .get(with_token(
            pb::GetRequest {
                r#type: "session".into(),
                id: "s3".into(),
            },
            &get,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(found.record.is_none(), "the refused writes wrote nothing");
    let client = RemoteStore::connect_lazy(&server.url, key, None).unwrap();
    assert!(client.get("session", "s2").await.unwrap().is_none());
    assert!(client.get("session", "s1").await.unwrap().is_some());
}

/// A CA, and a databroker certificate from it for 127.0.0.1 and `databroker.internal`.
fn server_tls(ca: &TestCa, client_ca: Option<&TestCa>) -> ServerTls {
    let issued = ca.server(&["127.0.0.1", "databroker.internal"]);
    let client_ca = client_ca.map(TestCa::cert_pem);
    ServerTls::new(
        issued.cert_pem.as_bytes(),
        issued.key_pem.as_bytes(),
        client_ca.as_deref().map(str::as_bytes),
    )
    .unwrap()
}

fn assert_unavailable(result: Result<Option<portcullis_databroker::Record>, Error>, what: &str) {
    match result {
        Err(Error::Unavailable(_)) => {}
        other => panic!("{what}: expected Unavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn over_tls_the_contract_holds_and_plaintext_or_an_unknown_ca_is_refused() {
    let ca = TestCa::new("databroker CA");
    let server = start_with(
        Arc::new(MemoryStore::new()),
        [3; 32],
        Some(server_tls(&ca, None)),
    )
    .await;
    let tls = ClientTls::new().ca(ca.cert_pem());
    let client =
        RemoteStore::connect_lazy(&server.url, TokenKey::new([3; 32]), Some(&tls)).unwrap();
    common::full_contract(&client).await;

    let plain_url = server.url.replace("https://", "http://");
    let plain = RemoteStore::connect_lazy(&plain_url, TokenKey::new([3; 32]), None).unwrap();
    assert_unavailable(plain.get("session", "a").await, "a plaintext client");

    let other = ClientTls::new().ca(TestCa::new("another CA").cert_pem());
    let stranger =
        RemoteStore::connect_lazy(&server.url, TokenKey::new([3; 32]), Some(&other)).unwrap();
    assert_unavailable(
        stranger.get("session", "a").await,
        "a client trusting another CA",
    );

    // The name checked is the URL's host unless another is given.
    let url = server.url.replace("127.0.0.1", "localhost");
    let by_name = RemoteStore::connect_lazy(&url, TokenKey::new([3; 32]), Some(&tls)).unwrap();
    assert_unavailable(
        by_name.get("session", "a").await,
        "a name the certificate lacks",
    );
    let named = tls.clone().server_name("databroker.internal");
    let by_name = RemoteStore::connect_lazy(&url, TokenKey::new([3; 32]), Some(&named)).unwrap();
    by_name.get("session", "a").await.unwrap();

    // TLS settings with an http:// URL are a mistake, not a silent plaintext link.
    assert!(matches!(
        RemoteStore::connect_lazy(&plain_url, TokenKey::new([3; 32]), Some(&tls)),
        Err(Error::InvalidArgument(_))
    ));
}

#[tokio::test]
async fn with_a_client_ca_only_clients_with_its_certificates_get_in() {
    let ca = TestCa::new("databroker CA");
    let clients = TestCa::new("proxy CA");
    let server = start_with(
        Arc::new(MemoryStore::new()),
        [3; 32],
        Some(server_tls(&ca, Some(&clients))),
    )
    .await;
    let key = || TokenKey::new([3; 32]);
    let tls = ClientTls::new().ca(ca.cert_pem());

    let anonymous = RemoteStore::connect_lazy(&server.url, key(), Some(&tls)).unwrap();
    assert_unavailable(anonymous.get("session", "a").await, "no client certificate");

    let foreign = TestCa::new("another CA").client("proxy");
    let with_foreign = tls
        .clone()
        .identity(foreign.cert_pem.as_bytes(), foreign.key_pem.as_bytes());
    let stranger = RemoteStore::connect_lazy(&server.url, key(), Some(&with_foreign)).unwrap();
    assert_unavailable(
        stranger.get("session", "a").await,
        "a certificate of another CA",
    );

    let proxy = clients.client("proxy");
    let with_cert = tls.identity(proxy.cert_pem.as_bytes(), proxy.key_pem.as_bytes());
    let client = RemoteStore::connect_lazy(&server.url, key(), Some(&with_cert)).unwrap();
    client
        .put(vec![common::rec("session", "a", 1)])
        .await
        .unwrap();
    assert!(client.get("session", "a").await.unwrap().is_some());
}

#[test]
fn tls_settings_are_checked_when_made() {
    let ca = TestCa::new("databroker CA");
    let issued = ca.server(&["127.0.0.1"]);
    let other = ca.server(&["127.0.0.1"]);
    assert!(ServerTls::new(issued.cert_pem.as_bytes(), issued.key_pem.as_bytes(), None).is_ok());
    let mismatched = ServerTls::new(issued.cert_pem.as_bytes(), other.key_pem.as_bytes(), None);
    assert!(
        matches!(mismatched, Err(Error::InvalidArgument(_))),
        "{mismatched:?}"
    );
    let no_ca = ServerTls::new(
        issued.cert_pem.as_bytes(),
        issued.key_pem.as_bytes(),
        Some(b"not a certificate"),
    );
    assert!(matches!(no_ca, Err(Error::InvalidArgument(_))), "{no_ca:?}");

    let client = ClientTls::new()
        .ca(ca.cert_pem())
        .identity(issued.cert_pem.as_bytes(), other.key_pem.as_bytes());
    let err = grpc::endpoint("https://127.0.0.1:1", Some(&client)).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
}
