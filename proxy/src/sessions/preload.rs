//! Filling the session cache from the store's snapshot when the follower starts from scratch
//! ([`SessionCache::preload`]), so that a restarted proxy answers its first requests from the
//! cache instead of one store read each.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use portcullis_auth::Session;
use portcullis_databroker::{Error as StoreError, SnapshotStream, Versions, SESSION_TYPE};
use tracing::{info, warn};

use super::{CachedSession, SessionCache};
use crate::clock::now_unix;

/// The longest wait for the next record of a preload's snapshot before it counts as failed.
const PRELOAD_IDLE: Duration = Duration::from_secs(10);
/// A preload lets other tasks run after this many sessions.
const PRELOAD_YIELD_EVERY: usize = 1024;

/// A session a preload may keep, ordered by when it was issued.
struct Preloaded(Arc<CachedSession>);

// === impl SessionCache ===

impl SessionCache {
    /// Fills the (just invalidated) cache from a snapshot of the store's live sessions and
    /// returns the versions to follow changes from; `None` when `shutdown` came first.
    ///
    /// Newest sessions (by `issued_at`) first, and never past the byte bound: the sessions kept
    /// are chosen while the snapshot streams in (at most the bound's worth held at a time) and
    /// inserted only into free room, so that nothing already cached is evicted for them. An
    /// entry a request cached meanwhile is newer than the snapshot and stays. A session deleted
    /// here meanwhile (the `deleted` set) is left out; one deleted elsewhere after the snapshot
    /// is evicted by its tombstone on the change stream, which starts at the snapshot's version.
    pub(super) async fn preload(
        &self,
        shutdown: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Result<Option<Versions>, StoreError> {
        let started = Instant::now();
        let generation = self.generation.load(Ordering::Acquire);
        let now_unix = now_unix();
        // Entries dropped by the invalidation still count against the bound until moka's
        // maintenance removes them.
        if self.cache.entry_count() > 0 {
            let cache = self.cache.clone();
            let _ = tokio::task::spawn_blocking(move || {
                // Each round removes a batch; misses may add entries meanwhile.
                let mut before = u64::MAX;
                while cache.entry_count() > 0 && cache.entry_count() < before {
                    before = cache.entry_count();
                    cache.run_pending_tasks();
                }
            })
            .await;
        }
        let budget = self.max_bytes.saturating_sub(self.cache.weighted_size());
        let SnapshotStream {
            versions,
            mut records,
        } = self.store.sync_latest_stream(Some(SESSION_TYPE)).await?;

        let mut kept = BinaryHeap::<Reverse<Preloaded>>::new();
        let (mut bytes, mut live, mut unreadable) = (0u64, 0usize, 0usize);
        loop {
            let next = tokio::select! {
                next = tokio::time::timeout(PRELOAD_IDLE, records.next()) => next,
                _ = shutdown.changed() => return Ok(None),
            };
            let record = match next {
                Ok(Some(record)) => record?,
                Ok(None) => break,
                Err(_) => {
                    return Err(StoreError::Unavailable(format!(
                        "the session snapshot stalled for {PRELOAD_IDLE:?}"
                    )))
                }
            };
            if record.kind != SESSION_TYPE || record.is_deleted() {
                continue;
            }
            let session: Session = match serde_json::from_value(record.data) {
                Ok(s) => s,
                Err(_) => {
                    unreadable += 1;
                    continue;
                }
            };
            if session.is_expired(now_unix) {
                continue;
            }
            live += 1;
            let mut cached = CachedSession::new(session, record.version);
            cached.generation = generation;
            bytes += u64::from(cached.weight());
            kept.push(Reverse(Preloaded(Arc::new(cached))));
            while bytes > budget {
                let Some(Reverse(Preloaded(oldest))) = kept.pop() else {
                    break;
                };
                bytes -= u64::from(oldest.weight());
            }
            if live.is_multiple_of(PRELOAD_YIELD_EVERY) {
                tokio::task::yield_now().await;
            }
        }
        if unreadable > 0 {
            warn!(
                unreadable,
                "session preload: unreadable session records skipped"
            );
        }

        // Oldest first, so that the newest are the most recently used in moka's order.
        let mut kept: Vec<Arc<CachedSession>> =
            kept.into_vec().into_iter().map(|Reverse(p)| p.0).collect();
        kept.sort_by_key(|s| s.issued_at);
        let mut preloaded = 0usize;
        for (i, session) in kept.into_iter().enumerate() {
            if self.deleted.contains_key(&*session.id) {
                continue;
            }
            session.in_cache.store(true, Ordering::Release);
            let entry = self
                .cache
                .entry(Arc::clone(&session.id))
                .or_insert_with(|| session.clone());
            if entry.is_fresh() {
                preloaded += 1;
            }
            if (i + 1).is_multiple_of(PRELOAD_YIELD_EVERY) {
                tokio::task::yield_now().await;
            }
        }
        let preloaded_i64 = i64::try_from(preloaded).unwrap_or(i64::MAX);
        self.metrics.session_cache_preloaded.set(preloaded_i64);
        info!(
            preloaded,
            live,
            left_out_over_bound = live.saturating_sub(preloaded),
            elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            after = versions.latest_record_version,
            "session cache: preloaded sessions from the store's snapshot"
        );
        Ok(Some(versions))
    }
}

// === impl Preloaded ===

impl PartialEq for Preloaded {
    fn eq(&self, other: &Self) -> bool {
        self.0.issued_at == other.0.issued_at
    }
}

impl Eq for Preloaded {}

impl PartialOrd for Preloaded {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Preloaded {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.issued_at.cmp(&other.0.issued_at)
    }
}
