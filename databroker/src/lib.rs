//! The Portcullis databroker: versioned records, their storage and a change stream.
//!
//! Sessions and users live here as [`Record`]s. Every write gets a version from a counter
//! that only grows, and every deletion leaves a tombstone, so a reader that remembers the
//! last version it saw can follow all later changes with [`Store::sync`]. The proxy keeps a
//! cache of the records it needs and follows that stream to drop entries the moment they
//! change — a sign-out on one replica takes effect on every replica.
//!
//! [`Store`] is the one interface. [`MemoryStore`] is the in-process backend, [`PgStore`] keeps
//! records in PostgreSQL (several databroker replicas may share one database), and
//! [`RemoteStore`] reaches a separate databroker service over gRPC ([`grpc`]).
//! [`SealedStore`] wraps any of them and encrypts the IdP tokens in session records, so a
//! database dump does not hand out sessions. Named leases ([`Store::acquire_lease`]) elect one
//! holder among replicas for singleton work such as session refresh.
//!
//! ```
//! # tokio_test_block_on(async {
//! use portcullis_databroker::{MemoryStore, NewRecord, Store};
//! let store = MemoryStore::new();
//! let put = store.put(vec![NewRecord::new("session", "s1", serde_json::json!({"user": "u1"}))]).await.unwrap();
//! assert_eq!(store.get("session", "s1").await.unwrap().unwrap().version, put[0].version);
//! # });
//! # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
//! # }
//! ```
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod grpc;
mod memory;
mod postgres;
mod sealed;

pub use grpc::RemoteStore;
pub use memory::MemoryStore;
pub use postgres::{PgOptions, PgStore};
pub use sealed::{SealedStore, AT_REST_KEY_INFO, SEALED_FIELDS};

use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::Stream;
use serde::{Deserialize, Serialize};

/// The record type of sessions.
pub const SESSION_TYPE: &str = "session";
/// The record type of users.
pub const USER_TYPE: &str = "user";

/// One versioned record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// What the record is (`session`, `user`, ...).
    #[serde(rename = "type")]
    pub kind: String,
    /// Unique within `kind`.
    pub id: String,
    /// Assigned by the store on every write; grows monotonically across the whole store.
    pub version: u64,
    /// The payload. `Null` in a tombstone.
    pub data: serde_json::Value,
    /// Unix time of the last write, in milliseconds.
    pub modified_at: i64,
    /// Set when the record was deleted (a tombstone), Unix milliseconds.
    pub deleted_at: Option<i64>,
}

/// A record to write; the store assigns version and timestamps.
#[derive(Clone, Debug, PartialEq)]
pub struct NewRecord {
    pub kind: String,
    pub id: String,
    pub data: serde_json::Value,
    /// Write only if the stored record is live (not deleted) and at this version; otherwise
    /// the whole batch fails with [`Error::Conflict`] and nothing is written. `None` writes
    /// unconditionally. Set it with [`NewRecord::if_version`] for a read-modify-write that
    /// must not overwrite a concurrent change (or bring back a deleted record).
    pub expected_version: Option<u64>,
}

/// Which records [`Store::query`] returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query {
    pub kind: String,
    /// How many matching records to skip (records are ordered by id).
    pub offset: usize,
    /// At most this many records; capped at [`Query::MAX_LIMIT`].
    pub limit: usize,
}

/// One page of a query.
#[derive(Clone, Debug, PartialEq)]
pub struct QueryPage {
    pub records: Vec<Record>,
    /// How many live records of that type exist in all.
    pub total: usize,
}

/// The state of a store: its latest version and the identity of the store itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Versions {
    /// Changes when the store is recreated; a client seeing a new one must resync from scratch.
    pub server_version: u64,
    /// The version of the latest write.
    pub latest_record_version: u64,
}

/// Every live record (optionally of one type) and the versions they are current at.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    pub records: Vec<Record>,
    /// Follow [`Store::sync`] from `versions.latest_record_version` to stay current.
    pub versions: Versions,
}

/// [`Store::sync_latest`] delivered as it is read: the versions first, then the records, so
/// that a reader of a large snapshot holds one record (or one message of them) at a time.
pub struct SnapshotStream {
    /// Follow [`Store::sync`] from `versions.latest_record_version` to stay current.
    pub versions: Versions,
    pub records: RecordStream,
}

/// Every change after a version, in version order; waits for new ones when caught up.
pub type ChangeStream = Pin<Box<dyn Stream<Item = Result<Record, Error>> + Send>>;
/// Records as they arrive; ends after the last one.
pub type RecordStream = Pin<Box<dyn Stream<Item = Result<Record, Error>> + Send>>;

/// What can go wrong talking to a store.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The backend cannot be reached; callers must fail closed.
    #[error("databroker unavailable: {0}")]
    Unavailable(String),
    /// The changes after the requested version were compacted away: resync from scratch.
    #[error(
        "changes after version {requested} are no longer kept (oldest kept: {oldest}); resync"
    )]
    Compacted { requested: u64, oldest: u64 },
    /// The request itself is wrong (empty id, unknown type, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A conditional write ([`NewRecord::expected_version`]) found the record changed or
    /// deleted; nothing of the batch was written. Read again and decide anew.
    #[error("conflict: {0}")]
    Conflict(String),
}

// Leases: a named lease has at most one holder until its TTL runs out. A holder keeps it by
// renewing well within the TTL; when it stops (crash, partition) another holder can take it
// once the TTL has passed. Holder ids are chosen by the caller and must be unique per process.

/// Storage for records. Implementations must be cheap to share (`Arc<dyn Store>`).
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// The live record, or `None` when absent or deleted.
    async fn get(&self, kind: &str, id: &str) -> Result<Option<Record>, Error>;
    /// Writes a batch atomically; returns the records as stored, with their versions. Records
    /// with an [`NewRecord::expected_version`] are checked first, all under the same lock or
    /// transaction as the write: one mismatch fails the batch with [`Error::Conflict`].
    async fn put(&self, records: Vec<NewRecord>) -> Result<Vec<Record>, Error>;
    /// Deletes a record, leaving a tombstone; returns it, or `None` when there was nothing.
    async fn delete(&self, kind: &str, id: &str) -> Result<Option<Record>, Error>;
    /// Live records of one type, ordered by id.
    async fn query(&self, query: Query) -> Result<QueryPage, Error>;
    /// The store's current versions.
    async fn versions(&self) -> Result<Versions, Error>;
    /// Every change (writes and tombstones) with a version above `after`, then new ones as they come.
    async fn sync(&self, after: u64) -> Result<ChangeStream, Error>;
    /// Every live record (of `kind`, or of every type when `None`) as one consistent snapshot.
    async fn sync_latest(&self, kind: Option<&str>) -> Result<Snapshot, Error>;
    /// The same snapshot as [`Store::sync_latest`], delivered as it is read. A backend that
    /// holds the whole snapshot anyway may keep this default.
    async fn sync_latest_stream(&self, kind: Option<&str>) -> Result<SnapshotStream, Error> {
        let Snapshot { records, versions } = self.sync_latest(kind).await?;
        Ok(SnapshotStream {
            versions,
            records: Box::pin(futures::stream::iter(records.into_iter().map(Ok))),
        })
    }

    /// Takes the lease `name` for `holder` for `ttl` when it is free, expired or already
    /// `holder`'s (then it is extended). `true` when `holder` holds it afterwards.
    async fn acquire_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, Error>;
    /// Extends `holder`'s unexpired lease to `ttl` from now; `false` when `holder` lost it.
    async fn renew_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, Error>;
    /// Gives the lease up at once; `false` when `holder` did not hold it.
    async fn release_lease(&self, name: &str, holder: &str) -> Result<bool, Error>;
}

// === impl NewRecord ===

impl NewRecord {
    pub fn new(kind: impl Into<String>, id: impl Into<String>, data: serde_json::Value) -> Self {
        Self {
            kind: kind.into(),
            id: id.into(),
            data,
            expected_version: None,
        }
    }

    /// Makes the write conditional: only if the stored record is live and at `version`.
    pub fn if_version(mut self, version: u64) -> Self {
        self.expected_version = Some(version);
        self
    }
}

// === impl Query ===

impl Query {
    pub const MAX_LIMIT: usize = 1000;

    pub fn of_type(kind: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            offset: 0,
            limit: Self::MAX_LIMIT,
        }
    }
}

// === impl Record ===

impl Record {
    pub fn is_deleted(&self) -> bool {
        self.deleted_at.is_some()
    }
}

pub(crate) fn validate(records: &[NewRecord]) -> Result<(), Error> {
    match records
        .iter()
        .find(|r| r.kind.is_empty() || r.id.is_empty())
    {
        Some(bad) => Err(Error::InvalidArgument(format!(
            "record type and id must not be empty (type {:?}, id {:?})",
            bad.kind, bad.id
        ))),
        None => Ok(()),
    }
}

/// The [`Error::Conflict`] for `record`, whose stored version is `found` (`None`: absent or
/// deleted).
pub(crate) fn conflict(record: &NewRecord, expected: u64, found: Option<u64>) -> Error {
    let found = match found {
        Some(v) => format!("is at version {v}"),
        None => "is absent or deleted".to_owned(),
    };
    Error::Conflict(format!(
        "record {}/{} was expected at version {expected} but {found}",
        record.kind, record.id
    ))
}

pub(crate) fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
