//! The databroker as a gRPC service, and [`RemoteStore`], the client that makes it a [`Store`].
//!
//! [`serve`] exposes any store on a listener; a proxy started with `databroker_service_url`
//! uses a [`RemoteStore`] pointed at it. The link may run over TLS ([`ServerTls`],
//! [`ClientTls`]), with client certificates when the server asks for them. Both sides derive a
//! [`TokenKey`] from the shared secret: every call carries a fresh token for its method in
//! `authorization: Bearer ...`, usable once, and the server answers `UNAUTHENTICATED` without
//! one (see [`TokenVerifier`]). Store errors travel as status codes:
//! [`Error::Unavailable`] as `UNAVAILABLE`, [`Error::InvalidArgument`] as `INVALID_ARGUMENT`,
//! [`Error::Compacted`] as `OUT_OF_RANGE` with the versions in metadata, [`Error::Conflict`]
//! (a conditional write that found the record changed) as `ABORTED`. On the client,
//! every transport failure (refused, reset, timed out, a failed TLS handshake) is
//! [`Error::Unavailable`], so callers fail closed; the channel reconnects by itself on the
//! next call.

mod auth;
mod tls;
mod token;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

pub use auth::{Authenticated, Bearer};
pub use tls::{endpoint, ClientTls, ServerTls, HANDSHAKE_TIMEOUT};
pub use token::{
    TokenError, TokenKey, TokenVerifier, REPLAY_CACHE_MAX, TOKEN_KEY_INFO, TOKEN_LIFETIME_SECS,
};

use crate::{
    ChangeStream, Error, NewRecord, Query, QueryPage, Record, Snapshot, SnapshotStream, Store,
    Versions,
};

/// The generated protocol types and stubs (`proto/databroker.proto`).
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("portcullis.databroker.v1");
}

use pb::databroker_client::DatabrokerClient;
use pb::databroker_server::{Databroker, DatabrokerServer};

const REQUESTED: &str = "x-compacted-requested";
const OLDEST: &str = "x-compacted-oldest";
/// Records per SyncLatest message.
const SNAPSHOT_CHUNK: usize = 500;

/// The server side: answers calls from a store.
pub struct DatabrokerService {
    store: Arc<dyn Store>,
}

/// A [`Store`] on the other end of a gRPC channel.
#[derive(Clone)]
pub struct RemoteStore {
    client: DatabrokerClient<InterceptedService<Channel, Bearer>>,
    timeout: Duration,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Serves `store` on `listener` until `shutdown` completes: over TLS with `tls`, otherwise in
/// plain HTTP/2.
pub async fn serve(
    store: Arc<dyn Store>,
    key: TokenKey,
    listener: tokio::net::TcpListener,
    tls: Option<&ServerTls>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        server = server
            .tls_config(tls.config())
            .map_err(|e| Error::InvalidArgument(format!("gRPC TLS: {e}")))?;
    }
    server
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
        .add_service(service(store, key))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| Error::Unavailable(format!("gRPC server: {e}")))
}

/// Binds `addr` and serves `store` there until `shutdown` completes.
pub async fn serve_on(
    store: Arc<dyn Store>,
    key: TokenKey,
    addr: SocketAddr,
    tls: Option<&ServerTls>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Unavailable(format!("cannot listen on {addr}: {e}")))?;
    serve(store, key, listener, tls, shutdown).await
}

/// The service with authentication in front, for embedding in another tonic server.
pub fn service(
    store: Arc<dyn Store>,
    key: TokenKey,
) -> Authenticated<DatabrokerServer<DatabrokerService>> {
    let server = DatabrokerServer::new(DatabrokerService { store })
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    Authenticated::new(server, Arc::new(TokenVerifier::new(key)))
}

// === impl DatabrokerService ===

#[tonic::async_trait]
impl Databroker for DatabrokerService {
    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        let r = request.into_inner();
        let record = self.store.get(&r.r#type, &r.id).await.map_err(status)?;
        Ok(Response::new(pb::GetResponse {
            record: record.map(to_pb),
        }))
    }

    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        let records = request
            .into_inner()
            .records
            .into_iter()
            .map(|r| {
                let data = serde_json::from_slice(&r.data).map_err(|e| {
                    Status::invalid_argument(format!("record {:?}: data is not JSON: {e}", r.id))
                })?;
                let mut record = NewRecord::new(r.r#type, r.id, data);
                record.expected_version = r.expected_version;
                Ok(record)
            })
            .collect::<Result<Vec<_>, Status>>()?;
        let stored = self.store.put(records).await.map_err(status)?;
        Ok(Response::new(pb::PutResponse {
            records: stored.into_iter().map(to_pb).collect(),
        }))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let r = request.into_inner();
        let record = self.store.delete(&r.r#type, &r.id).await.map_err(status)?;
        Ok(Response::new(pb::DeleteResponse {
            record: record.map(to_pb),
        }))
    }

    async fn query(
        &self,
        request: Request<pb::QueryRequest>,
    ) -> Result<Response<pb::QueryResponse>, Status> {
        let r = request.into_inner();
        let page = self
            .store
            .query(Query {
                kind: r.r#type,
                offset: usize::try_from(r.offset).unwrap_or(usize::MAX),
                limit: usize::try_from(r.limit).unwrap_or(usize::MAX),
            })
            .await
            .map_err(status)?;
        Ok(Response::new(pb::QueryResponse {
            records: page.records.into_iter().map(to_pb).collect(),
            total: page.total as u64,
        }))
    }

    type SyncStream = BoxStream<pb::SyncResponse>;

    async fn sync(
        &self,
        request: Request<pb::SyncRequest>,
    ) -> Result<Response<Self::SyncStream>, Status> {
        let changes = self
            .store
            .sync(request.into_inner().after)
            .await
            .map_err(status)?;
        let changes = changes.map(|change| {
            change
                .map(|r| pb::SyncResponse {
                    record: Some(to_pb(r)),
                })
                .map_err(status)
        });
        Ok(Response::new(Box::pin(changes)))
    }

    type SyncLatestStream = BoxStream<pb::SyncLatestResponse>;

    async fn sync_latest(
        &self,
        request: Request<pb::SyncLatestRequest>,
    ) -> Result<Response<Self::SyncLatestStream>, Status> {
        let kind = request.into_inner().r#type;
        let SnapshotStream { versions, records } = self
            .store
            .sync_latest_stream(kind.as_deref())
            .await
            .map_err(status)?;
        let first = pb::SyncLatestResponse {
            versions: Some(versions_to_pb(versions)),
            records: Vec::new(),
        };
        // Converted a chunk at a time as the client reads, never the whole snapshot at once.
        let chunks = records.chunks(SNAPSHOT_CHUNK).map(|chunk| {
            let records = chunk
                .into_iter()
                .map(|r| r.map(to_pb))
                .collect::<Result<Vec<_>, Error>>()
                .map_err(status)?;
            Ok::<_, Status>(pb::SyncLatestResponse {
                versions: None,
                records,
            })
        });
        Ok(Response::new(Box::pin(
            futures::stream::once(async { Ok::<_, Status>(first) }).chain(chunks),
        )))
    }

    async fn server_version(
        &self,
        _request: Request<pb::ServerVersionRequest>,
    ) -> Result<Response<pb::Versions>, Status> {
        let v = self.store.versions().await.map_err(status)?;
        Ok(Response::new(versions_to_pb(v)))
    }

    async fn acquire_lease(
        &self,
        request: Request<pb::LeaseRequest>,
    ) -> Result<Response<pb::LeaseResponse>, Status> {
        let r = request.into_inner();
        let held = self
            .store
            .acquire_lease(&r.name, &r.holder, Duration::from_millis(r.ttl_ms))
            .await
            .map_err(status)?;
        Ok(Response::new(pb::LeaseResponse { held }))
    }

    async fn renew_lease(
        &self,
        request: Request<pb::LeaseRequest>,
    ) -> Result<Response<pb::LeaseResponse>, Status> {
        let r = request.into_inner();
        let held = self
            .store
            .renew_lease(&r.name, &r.holder, Duration::from_millis(r.ttl_ms))
            .await
            .map_err(status)?;
        Ok(Response::new(pb::LeaseResponse { held }))
    }

    async fn release_lease(
        &self,
        request: Request<pb::LeaseRequest>,
    ) -> Result<Response<pb::LeaseResponse>, Status> {
        let r = request.into_inner();
        let held = self
            .store
            .release_lease(&r.name, &r.holder)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::LeaseResponse { held }))
    }
}

// === impl RemoteStore ===

impl RemoteStore {
    /// How long a unary call may take before it counts as [`Error::Unavailable`].
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

    /// A client for the databroker at `url`: `http://host:port`, or `https://host:port` with
    /// `tls` (see [`endpoint`]). Connects on first use and reconnects after failures, so this
    /// succeeds while the databroker is down.
    pub fn connect_lazy(url: &str, key: TokenKey, tls: Option<&ClientTls>) -> Result<Self, Error> {
        let endpoint = endpoint(url, tls)?;
        let client = DatabrokerClient::with_interceptor(endpoint.connect_lazy(), Bearer::new(key))
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        Ok(Self {
            client,
            timeout: Self::DEFAULT_TIMEOUT,
        })
    }

    async fn call<T, F>(&self, call: F) -> Result<T, Error>
    where
        F: Future<Output = Result<Response<T>, Status>>,
    {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(s)) => Err(error(s)),
            Err(_) => Err(Error::Unavailable(format!(
                "databroker did not answer within {:?}",
                self.timeout
            ))),
        }
    }
}

impl std::fmt::Debug for RemoteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteStore").finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl Store for RemoteStore {
    async fn get(&self, kind: &str, id: &str) -> Result<Option<Record>, Error> {
        let mut client = self.client.clone();
        let r = self
            .call(client.get(pb::GetRequest {
                r#type: kind.to_owned(),
                id: id.to_owned(),
            }))
            .await?;
        r.record.map(from_pb).transpose()
    }

    async fn put(&self, records: Vec<NewRecord>) -> Result<Vec<Record>, Error> {
        let mut client = self.client.clone();
        let records = records
            .into_iter()
            .map(|r| {
                Ok(pb::NewRecord {
                    data: serde_json::to_vec(&r.data)
                        .map_err(|e| Error::InvalidArgument(format!("record data: {e}")))?,
                    r#type: r.kind,
                    id: r.id,
                    expected_version: r.expected_version,
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let r = self.call(client.put(pb::PutRequest { records })).await?;
        r.records.into_iter().map(from_pb).collect()
    }

    async fn delete(&self, kind: &str, id: &str) -> Result<Option<Record>, Error> {
        let mut client = self.client.clone();
        let r = self
            .call(client.delete(pb::DeleteRequest {
                r#type: kind.to_owned(),
                id: id.to_owned(),
            }))
            .await?;
        r.record.map(from_pb).transpose()
    }

    async fn query(&self, query: Query) -> Result<QueryPage, Error> {
        let mut client = self.client.clone();
        let r = self
            .call(client.query(pb::QueryRequest {
                r#type: query.kind,
                offset: query.offset as u64,
                limit: query.limit as u64,
            }))
            .await?;
        Ok(QueryPage {
            records: r
                .records
                .into_iter()
                .map(from_pb)
                .collect::<Result<_, _>>()?,
            total: usize::try_from(r.total).unwrap_or(usize::MAX),
        })
    }

    async fn versions(&self) -> Result<Versions, Error> {
        let mut client = self.client.clone();
        let v = self
            .call(client.server_version(pb::ServerVersionRequest {}))
            .await?;
        Ok(versions_from_pb(v))
    }

    async fn sync(&self, after: u64) -> Result<ChangeStream, Error> {
        let mut client = self.client.clone();
        let changes = self.call(client.sync(pb::SyncRequest { after })).await?;
        Ok(Box::pin(changes.map(|change| {
            let change = change.map_err(error)?;
            let record = change
                .record
                .ok_or_else(|| Error::Unavailable("databroker sent an empty change".into()))?;
            from_pb(record)
        })))
    }

    async fn sync_latest(&self, kind: Option<&str>) -> Result<Snapshot, Error> {
        let SnapshotStream {
            versions,
            mut records,
        } = self.sync_latest_stream(kind).await?;
        let mut all = Vec::new();
        while let Some(record) = records.next().await {
            all.push(record?);
        }
        Ok(Snapshot {
            records: all,
            versions,
        })
    }

    async fn sync_latest_stream(&self, kind: Option<&str>) -> Result<SnapshotStream, Error> {
        let mut client = self.client.clone();
        let mut messages = self
            .call(client.sync_latest(pb::SyncLatestRequest {
                r#type: kind.map(str::to_owned),
            }))
            .await?;
        // The first message carries the versions (and, from older servers, maybe records).
        let first = match tokio::time::timeout(self.timeout, messages.next()).await {
            Ok(Some(message)) => message.map_err(error)?,
            Ok(None) => {
                return Err(Error::Unavailable(
                    "databroker ended a snapshot before its versions".into(),
                ))
            }
            Err(_) => {
                return Err(Error::Unavailable(format!(
                    "databroker did not start a snapshot within {:?}",
                    self.timeout
                )))
            }
        };
        let versions = first.versions.map(versions_from_pb).ok_or_else(|| {
            Error::Unavailable("databroker sent a snapshot without versions".into())
        })?;
        let rest = messages.flat_map(|message| match message {
            Ok(message) => records_of(message).left_stream(),
            Err(s) => futures::stream::once(async move { Err(error(s)) }).right_stream(),
        });
        Ok(SnapshotStream {
            versions,
            records: Box::pin(records_of(first).chain(rest)),
        })
    }

    async fn acquire_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, Error> {
        let mut client = self.client.clone();
        let r = self
            .call(client.acquire_lease(lease(name, holder, ttl)))
            .await?;
        Ok(r.held)
    }

    async fn renew_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, Error> {
        let mut client = self.client.clone();
        let r = self
            .call(client.renew_lease(lease(name, holder, ttl)))
            .await?;
        Ok(r.held)
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<bool, Error> {
        let mut client = self.client.clone();
        let r = self
            .call(client.release_lease(lease(name, holder, Duration::ZERO)))
            .await?;
        Ok(r.held)
    }
}

fn lease(name: &str, holder: &str, ttl: Duration) -> pb::LeaseRequest {
    pb::LeaseRequest {
        name: name.to_owned(),
        holder: holder.to_owned(),
        ttl_ms: ttl.as_millis() as u64,
    }
}

/// The records one snapshot message carries.
fn records_of(message: pb::SyncLatestResponse) -> impl Stream<Item = Result<Record, Error>> {
    futures::stream::iter(message.records.into_iter().map(from_pb))
}

fn to_pb(r: Record) -> pb::Record {
    pb::Record {
        // A `serde_json::Value` always serializes.
        data: serde_json::to_vec(&r.data).unwrap_or_else(|_| b"null".to_vec()),
        r#type: r.kind,
        id: r.id,
        version: r.version,
        modified_at: r.modified_at,
        deleted_at: r.deleted_at,
    }
}

fn from_pb(r: pb::Record) -> Result<Record, Error> {
    let data = serde_json::from_slice(&r.data).map_err(|e| {
        Error::Unavailable(format!("databroker sent a record that is not JSON: {e}"))
    })?;
    Ok(Record {
        kind: r.r#type,
        id: r.id,
        version: r.version,
        data,
        modified_at: r.modified_at,
        deleted_at: r.deleted_at,
    })
}

fn versions_to_pb(v: Versions) -> pb::Versions {
    pb::Versions {
        server_version: v.server_version,
        latest_record_version: v.latest_record_version,
    }
}

fn versions_from_pb(v: pb::Versions) -> Versions {
    Versions {
        server_version: v.server_version,
        latest_record_version: v.latest_record_version,
    }
}

/// A store error as a status.
fn status(e: Error) -> Status {
    match e {
        Error::InvalidArgument(m) => Status::invalid_argument(m),
        Error::Conflict(m) => Status::aborted(m),
        Error::Compacted { requested, oldest } => {
            let mut s = Status::out_of_range(Error::Compacted { requested, oldest }.to_string());
            s.metadata_mut().insert(REQUESTED, requested.into());
            s.metadata_mut().insert(OLDEST, oldest.into());
            s
        }
        other => Status::unavailable(other.to_string()),
    }
}

/// A status as a store error; anything unexpected fails closed as unavailable.
fn error(s: Status) -> Error {
    let number = |key: &str| {
        s.metadata()
            .get(key)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
    };
    match s.code() {
        tonic::Code::InvalidArgument => Error::InvalidArgument(s.message().to_owned()),
        tonic::Code::Aborted => Error::Conflict(s.message().to_owned()),
        tonic::Code::OutOfRange => match (number(REQUESTED), number(OLDEST)) {
            (Some(requested), Some(oldest)) => Error::Compacted { requested, oldest },
            _ => Error::Unavailable(format!("databroker: {}", s.message())),
        },
        code => Error::Unavailable(format!("databroker: {code:?}: {}", s.message())),
    }
}
