//! The in-process backend: a map of records plus an index by version.
//!
//! Each key appears once in the version index, at its latest version, so the index is the
//! change log compacted to what a follower needs. Tombstones are kept for
//! [`MemoryStore::TOMBSTONE_RETENTION_MS`]; a follower that fell further behind than that gets
//! [`Error::Compacted`] and must resync from scratch.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use futures::stream;
use tokio::sync::watch;

use std::time::{Duration, Instant};

use crate::{
    conflict, now_millis, validate, ChangeStream, Error, NewRecord, Query, QueryPage, Record,
    Snapshot, Store, Versions,
};

type Key = (String, String);

/// Records in memory; cheap to clone (all clones share one store).
#[derive(Clone)]
pub struct MemoryStore {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Carries the latest version; followers wait on it when caught up.
    latest: watch::Sender<u64>,
    server_version: u64,
}

#[derive(Default)]
struct State {
    records: HashMap<Key, Record>,
    by_version: BTreeMap<u64, Key>,
    version: u64,
    /// Every version up to and including this one may have been compacted away.
    compacted_through: u64,
    /// Lease name → (holder, expiry).
    leases: HashMap<String, (String, Instant)>,
}

/// How many changes one poll of a change stream hands out at most.
const SYNC_BATCH: usize = 256;

// === impl MemoryStore ===

impl MemoryStore {
    /// Tombstones are kept this long so that followers see deletions.
    pub const TOMBSTONE_RETENTION_MS: i64 = 60 * 60 * 1000;

    pub fn new() -> Self {
        let (latest, _) = watch::channel(0);
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                latest,
                server_version: rand_server_version(),
            }),
        }
    }

    /// Drops tombstones older than the retention; returns how many went.
    pub fn compact(&self, now_ms: i64) -> usize {
        let mut state = self.shared.lock();
        let cutoff = now_ms - Self::TOMBSTONE_RETENTION_MS;
        let expired: Vec<(u64, Key)> = state
            .records
            .iter()
            .filter(|(_, r)| r.deleted_at.is_some_and(|d| d < cutoff))
            .map(|(k, r)| (r.version, k.clone()))
            .collect();
        for (version, key) in &expired {
            state.records.remove(key);
            state.by_version.remove(version);
            state.compacted_through = state.compacted_through.max(*version);
        }
        expired.len()
    }

    fn changes_after(&self, after: u64) -> Result<Vec<Record>, Error> {
        let state = self.shared.lock();
        if after < state.compacted_through {
            return Err(Error::Compacted {
                requested: after,
                oldest: state.compacted_through,
            });
        }
        Ok(state
            .by_version
            .range(after + 1..)
            .take(SYNC_BATCH)
            .filter_map(|(_, key)| state.records.get(key).cloned())
            .collect())
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("server_version", &self.shared.server_version)
            .finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl Store for MemoryStore {
    async fn get(&self, kind: &str, id: &str) -> Result<Option<Record>, Error> {
        let state = self.shared.lock();
        Ok(state
            .records
            .get(&(kind.to_owned(), id.to_owned()))
            .filter(|r| !r.is_deleted())
            .cloned())
    }

    async fn put(&self, records: Vec<NewRecord>) -> Result<Vec<Record>, Error> {
        validate(&records)?;
        let now = now_millis();
        let stored = {
            let mut state = self.shared.lock();
            // Every condition is checked before anything is written: all or nothing.
            for new in &records {
                if let Some(expected) = new.expected_version {
                    let found = state
                        .records
                        .get(&(new.kind.clone(), new.id.clone()))
                        .filter(|r| !r.is_deleted())
                        .map(|r| r.version);
                    if found != Some(expected) {
                        return Err(conflict(new, expected, found));
                    }
                }
            }
            records
                .into_iter()
                .map(|new| {
                    let record = Record {
                        kind: new.kind,
                        id: new.id,
                        version: 0,
                        data: new.data,
                        modified_at: now,
                        deleted_at: None,
                    };
                    state.write(record)
                })
                .collect::<Vec<_>>()
        };
        if let Some(last) = stored.last() {
            self.shared.latest.send_replace(last.version);
        }
        Ok(stored)
    }

    async fn delete(&self, kind: &str, id: &str) -> Result<Option<Record>, Error> {
        let key = (kind.to_owned(), id.to_owned());
        let now = now_millis();
        let tombstone = {
            let mut state = self.shared.lock();
            match state.records.get(&key) {
                Some(r) if !r.is_deleted() => {}
                _ => return Ok(None),
            }
            state.write(Record {
                kind: key.0,
                id: key.1,
                version: 0,
                data: serde_json::Value::Null,
                modified_at: now,
                deleted_at: Some(now),
            })
        };
        self.shared.latest.send_replace(tombstone.version);
        Ok(Some(tombstone))
    }

    async fn query(&self, query: Query) -> Result<QueryPage, Error> {
        let state = self.shared.lock();
        let mut live: Vec<&Record> = state
            .records
            .values()
            .filter(|r| r.kind == query.kind && !r.is_deleted())
            .collect();
        live.sort_by(|a, b| a.id.cmp(&b.id));
        let total = live.len();
        let records = live
            .into_iter()
            .skip(query.offset)
            .take(query.limit.min(Query::MAX_LIMIT))
            .cloned()
            .collect();
        Ok(QueryPage { records, total })
    }

    async fn versions(&self) -> Result<Versions, Error> {
        Ok(Versions {
            server_version: self.shared.server_version,
            latest_record_version: self.shared.lock().version,
        })
    }

    async fn sync(&self, after: u64) -> Result<ChangeStream, Error> {
        // Fail early (not on first poll) when the follower is too far behind.
        self.changes_after(after)?;
        let store = self.clone();
        let latest = self.shared.latest.subscribe();
        let changes = stream::unfold(
            (store, latest, after, Vec::<Record>::new().into_iter()),
            |(store, mut latest, mut after, mut pending)| async move {
                loop {
                    if let Some(record) = pending.next() {
                        after = record.version;
                        return Some((Ok(record), (store, latest, after, pending)));
                    }
                    // Mark the current value seen before reading, so no write slips between.
                    latest.borrow_and_update();
                    match store.changes_after(after) {
                        Err(e) => return Some((Err(e), (store, latest, u64::MAX, pending))),
                        Ok(batch) if !batch.is_empty() => pending = batch.into_iter(),
                        Ok(_) => {
                            if after == u64::MAX || latest.changed().await.is_err() {
                                return None;
                            }
                        }
                    }
                }
            },
        );
        Ok(Box::pin(changes))
    }

    async fn sync_latest(&self, kind: Option<&str>) -> Result<Snapshot, Error> {
        let state = self.shared.lock();
        let mut records: Vec<Record> = state
            .records
            .values()
            .filter(|r| !r.is_deleted() && kind.is_none_or(|k| r.kind == k))
            .cloned()
            .collect();
        records.sort_by_key(|r| r.version);
        Ok(Snapshot {
            records,
            versions: Versions {
                server_version: self.shared.server_version,
                latest_record_version: state.version,
            },
        })
    }

    async fn acquire_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, Error> {
        let now = Instant::now();
        let mut state = self.shared.lock();
        match state.leases.get(name) {
            Some((h, expires)) if h != holder && *expires > now => Ok(false),
            _ => {
                state
                    .leases
                    .insert(name.to_owned(), (holder.to_owned(), now + ttl));
                Ok(true)
            }
        }
    }

    async fn renew_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, Error> {
        let now = Instant::now();
        let mut state = self.shared.lock();
        match state.leases.get_mut(name) {
            Some((h, expires)) if h == holder && *expires > now => {
                *expires = now + ttl;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<bool, Error> {
        let mut state = self.shared.lock();
        match state.leases.get(name) {
            Some((h, _)) if h == holder => {
                state.leases.remove(name);
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

// === impl Shared ===

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave State half-written (every write is a
        // pair of inserts after all checks), so a poisoned lock is safe to keep using.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

// === impl State ===

impl State {
    fn write(&mut self, mut record: Record) -> Record {
        self.version += 1;
        record.version = self.version;
        let key = (record.kind.clone(), record.id.clone());
        if let Some(old) = self.records.get(&key) {
            self.by_version.remove(&old.version);
        }
        self.by_version.insert(record.version, key.clone());
        self.records.insert(key, record.clone());
        record
    }
}

fn rand_server_version() -> u64 {
    // Distinct per store instance: start time mixed with a process-wide counter is plenty for
    // "did the store I follow get recreated?".
    static INSTANCES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let n = INSTANCES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    nanos ^ n.rotate_left(48)
}

#[cfg(test)]
mod tests;
