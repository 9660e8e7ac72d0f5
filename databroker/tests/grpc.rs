//! The store contract through the gRPC service: an in-process server on 127.0.0.1:0 and a
//! [`RemoteStore`] client.

mod common;

use std::sync::Arc;
use std::time::Duration;

use portcullis_databroker::grpc::{self, pb, TokenKey};
use portcullis_databroker::{Error, MemoryStore, RemoteStore, Store};

struct Server {
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

async fn start(store: Arc<dyn Store>, key: [u8; 32]) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        grpc::serve(store, TokenKey::new(key), listener, async {
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

#[tokio::test]
async fn remote_store_keeps_the_contract() {
    let server = start(Arc::new(MemoryStore::new()), [3; 32]).await;
    let client = RemoteStore::connect_lazy(&server.url, TokenKey::new([3; 32])).unwrap();
    common::full_contract(&client).await;
}

#[tokio::test]
async fn compaction_travels_as_compacted() {
    let memory = MemoryStore::new();
    let server = start(Arc::new(memory.clone()), [3; 32]).await;
    let client = RemoteStore::connect_lazy(&server.url, TokenKey::new([3; 32])).unwrap();
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
    let wrong = RemoteStore::connect_lazy(&server.url, TokenKey::new([4; 32])).unwrap();
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
    let stale = TokenKey::new([3; 32]).issue(1_000);
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
    let client = RemoteStore::connect_lazy(&server.url, TokenKey::new([3; 32])).unwrap();
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
