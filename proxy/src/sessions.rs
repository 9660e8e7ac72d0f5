//! The proxy's view of sessions: a moka cache in front of the databroker, kept honest by a
//! background task that follows the databroker's change stream.
//!
//! A lookup that hits the cache costs a hash and an `Arc` clone. A miss asks the store once
//! and fills the cache; concurrent misses for the same id share that one read. Every change the
//! store reports (a sign-out's tombstone, a refresh) evicts the entry at once, so a session
//! deleted through any replica stops working on all.
//! A client's later requests skip even the hit: the opened-cookie memo ([`opened`]) keeps the
//! session its cookie led to, and uses it while [`SessionCache::is_current`] says the cache
//! would still answer with it.
//!
//! The cache does not start cold: whenever the follower (re)starts from scratch it preloads
//! the live sessions of a snapshot of the store, newest first up to the cache's byte bound, and
//! follows the change stream from that snapshot's version, so that no change made meanwhile is
//! missed. Until the first preload has ended, [`SessionCache::first_preload_ended`] is false
//! (the proxy is not ready).
//!
//! When the databroker cannot be reached, cached sessions keep working for a bounded time
//! (`databroker_cache_staleness`) after the change stream was last in sync; after that a cached
//! entry is only used once the store confirms it again. Unknown sessions need the store, so
//! while it is down they fail closed (the caller answers 503).
//!
//! [`crate::identity_manager`] refreshes sessions with the IdP's refresh token.

pub mod opened;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use portcullis_auth::{AssertionSlot, Session};
use portcullis_databroker::{
    Error as StoreError, NewRecord, SnapshotStream, Store, Versions, SESSION_TYPE,
};
use portcullis_policy::Identity;
use tracing::{debug, info, warn};

use crate::observe::metrics::Metrics;

/// The longest wait between two attempts to reach the store again.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait for the next record of a preload's snapshot before it counts as failed.
const PRELOAD_IDLE: Duration = Duration::from_secs(10);
/// A preload lets other tasks run after this many sessions.
const PRELOAD_YIELD_EVERY: usize = 1024;

/// The outcome of one store read for a miss, shared with the misses for the same id that
/// arrived while it ran (`None` until it lands).
type Flight = Option<Result<Option<Arc<CachedSession>>, StoreError>>;
type FlightWatch = tokio::sync::watch::Receiver<Flight>;
/// Store reads under way, by session id.
type InFlight = Mutex<HashMap<Arc<str>, FlightWatch, foldhash::fast::RandomState>>;

/// What a request needs of a session, derived from it once, not per request.
///
/// Deliberately small (the proxy caches one per live session): no tokens and no second copy of
/// the claims. The claims, email and groups live in the policy [`Identity`] only. The rare
/// paths that need the tokens (`${portcullis.access_token}` / `${portcullis.id_token}` header
/// templates, sign-out's `id_token_hint`) read the whole session with [`SessionCache::full`].
#[derive(Debug)]
pub struct CachedSession {
    /// Shared with the cache's key.
    pub id: Arc<str>,
    pub issued_at: i64,
    pub expires_at: i64,
    pub identity: Identity,
    /// A fingerprint of what the identity assertion carries (user, email, name, groups): a
    /// cached assertion is reused only while it matches, so a changed session gets a new one.
    pub assertion_content: u64,
    /// The store version of the record this was read from: a change event for this version
    /// or an older one (a session's own creation, arriving after its first request) leaves
    /// the entry cached.
    pub version: u64,
    /// True while this is the cache's entry for its id: cleared when the entry is removed or
    /// evicted, for any reason. Lets a reference kept elsewhere (the opened-cookie memo) tell
    /// whether the cache would still answer with it.
    in_cache: AtomicBool,
    /// The cache's generation when this was read from the store (see
    /// [`SessionCache::invalidate_all`]).
    generation: u64,
    /// The identity assertion this session's last request sent, so that the next one skips
    /// the assertion cache's lookup by id (it answers only what that cache would).
    pub assertion: AssertionSlot,
}

/// Sessions by id.
pub struct SessionCache {
    /// Keyed by server-minted ids, so a fast keyed hash (foldhash) instead of SipHash.
    cache: moka::sync::Cache<Arc<str>, Arc<CachedSession>, foldhash::quality::RandomState>,
    /// Ids deleted recently: a miss racing a sign-out must not put the session back.
    deleted: moka::sync::Cache<String, ()>,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    /// How long cached entries stay usable after the follower lost the store.
    staleness: Duration,
    /// The follower is connected to the change stream: every cached entry is current.
    in_sync: AtomicBool,
    /// When the follower was last in sync, in milliseconds since `epoch`.
    last_in_sync_ms: AtomicU64,
    epoch: Instant,
    /// Raised by every [`SessionCache::invalidate_all`]: moka drops those entries lazily, so
    /// an entry read before the last raise is no longer current, whatever its flag says.
    generation: AtomicU64,
    /// The cache's bound in bytes, which a preload fills up to and never past.
    max_bytes: u64,
    /// Store reads under way for misses, by session id: a second miss for the same id waits
    /// for the first one's answer instead of asking the store again.
    in_flight: InFlight,
    /// Set once the follower's first preload has ended, filled or failed.
    first_preload_ended: AtomicBool,
}

/// Removes a miss's entry from [`SessionCache::in_flight`] when the read ends or is dropped.
struct Landing<'a> {
    in_flight: &'a InFlight,
    id: &'a str,
}

/// A session a preload may keep, ordered by when it was issued.
struct Preloaded(Arc<CachedSession>);

// === impl CachedSession ===

impl CachedSession {
    pub fn new(session: Session, version: u64) -> Self {
        let Session {
            id,
            user_id,
            email,
            name,
            groups,
            claims,
            issued_at,
            expires_at,
            ..
        } = session;
        let assertion_content = {
            use std::hash::{Hash as _, Hasher as _};
            let mut h = std::hash::DefaultHasher::new();
            (&user_id, &email, &name, &groups).hash(&mut h);
            h.finish()
        };
        Self {
            id: Arc::from(id),
            issued_at,
            expires_at,
            identity: Identity::new(user_id, email, groups, claims).with_name(name),
            assertion_content,
            version,
            in_cache: AtomicBool::new(false),
            generation: 0,
            assertion: AssertionSlot::default(),
        }
    }

    /// The IdP subject.
    pub fn user_id(&self) -> &str {
        self.identity.user()
    }

    pub fn email(&self) -> &str {
        self.identity.email()
    }

    pub fn name(&self) -> &str {
        self.identity.name()
    }

    /// Roughly the bytes this session costs in the cache: its own allocations and moka's
    /// bookkeeping per entry (about 320 bytes, measured as RSS growth over 100k entries with
    /// `Arc<str>` keys; see also `rss_per_100k_cached_sessions`), and what its assertion slot
    /// may keep of an assertion the assertion cache dropped.
    pub fn weight(&self) -> u32 {
        const ENTRY_OVERHEAD: usize = 320;
        let bytes = ENTRY_OVERHEAD
            + std::mem::size_of::<Self>()
            + AssertionSlot::RETAINED_BYTES
            + self.id.len()
            + self.identity.heap_bytes();
        u32::try_from(bytes).unwrap_or(u32::MAX)
    }

    pub fn is_expired(&self, now_unix: i64) -> bool {
        now_unix >= self.expires_at
    }
}

// === impl SessionCache ===

impl SessionCache {
    pub fn new(
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        max_bytes: u64,
        staleness: Duration,
    ) -> Self {
        Self {
            cache: moka::sync::Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|_, s: &Arc<CachedSession>| s.weight())
                // Any removal: an invalidation, a replacement or the size bound.
                .eviction_listener(|_, s: Arc<CachedSession>, _| {
                    s.in_cache.store(false, Ordering::Release);
                })
                .build_with_hasher(foldhash::quality::RandomState::default()),
            deleted: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(600))
                .build(),
            store,
            metrics,
            staleness,
            in_sync: AtomicBool::new(false),
            last_in_sync_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            generation: AtomicU64::new(0),
            max_bytes,
            in_flight: Mutex::new(HashMap::default()),
            first_preload_ended: AtomicBool::new(false),
        }
    }

    /// True once the follower's first preload has ended: the cache holds what the store's
    /// snapshot offered (up to the byte bound), or the store could not be reached at the
    /// first attempt (misses then go to the store as they come).
    pub fn first_preload_ended(&self) -> bool {
        self.first_preload_ended.load(Ordering::Acquire)
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// True while cached entries may be answered without asking the store: the follower is in
    /// sync, or lost the store less than the staleness bound ago.
    pub fn cache_is_trusted(&self) -> bool {
        if self.in_sync.load(Ordering::Acquire) {
            return true;
        }
        let since = self
            .elapsed_ms()
            .saturating_sub(self.last_in_sync_ms.load(Ordering::Acquire));
        u128::from(since) <= self.staleness.as_millis()
    }

    fn set_in_sync(&self, in_sync: bool) {
        self.last_in_sync_ms
            .store(self.elapsed_ms(), Ordering::Release);
        let was = self.in_sync.swap(in_sync, Ordering::AcqRel);
        self.metrics.session_sync_connected.set(i64::from(in_sync));
        if was && !in_sync {
            warn!(
                staleness_secs = self.staleness.as_secs(),
                "session sync: lost the databroker; cached sessions are served for the staleness bound"
            );
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Whether `session`, from an earlier [`SessionCache::get`], is still what `get` would
    /// answer from the cache now: still the cache's entry for its id, not older than the last
    /// [`SessionCache::invalidate_all`], not expired, and the cache trusted. A caller that uses
    /// it instead of `get` counts the hit ([`SessionCache::count_hit`]).
    pub fn is_current(&self, session: &CachedSession, now_unix: i64) -> bool {
        session.in_cache.load(Ordering::Acquire)
            && session.generation == self.generation.load(Ordering::Acquire)
            && !session.is_expired(now_unix)
            && self.cache_is_trusted()
    }

    /// Counts a session answered from the cache without [`SessionCache::get`].
    pub fn count_hit(&self) {
        self.metrics.session_cache_hits.inc();
    }

    /// The live session with this id, from the cache or the store.
    pub async fn get(
        &self,
        id: &str,
        now_unix: i64,
    ) -> Result<Option<Arc<CachedSession>>, StoreError> {
        if let Some(s) = self.cache.get(id) {
            if self.cache_is_trusted() {
                self.metrics.session_cache_hits.inc();
                return Ok((!s.is_expired(now_unix)).then_some(s));
            }
            // Too long without the change stream: the entry may have been signed out since.
        }
        self.metrics.session_cache_misses.inc();
        loop {
            let joined = {
                let mut in_flight = self.lock_in_flight();
                match in_flight.get(id) {
                    Some(flight) => Err(flight.clone()),
                    None => {
                        let (landed, flight) = tokio::sync::watch::channel(None);
                        in_flight.insert(Arc::from(id), flight);
                        Ok(landed)
                    }
                }
            };
            match joined {
                Ok(landed) => {
                    let _landing = Landing {
                        in_flight: &self.in_flight,
                        id,
                    };
                    let outcome = self.load(id, now_unix).await;
                    landed.send_replace(Some(outcome.clone()));
                    return outcome;
                }
                Err(mut flight) => {
                    // `None`: the read was dropped before it landed (its request went away);
                    // ask again, as the first of a new flight or behind one.
                    let outcome = match flight.wait_for(Option::is_some).await {
                        Ok(landed) => landed.clone(),
                        Err(_) => None,
                    };
                    if let Some(outcome) = outcome {
                        return outcome.map(|s| s.filter(|s| !s.is_expired(now_unix)));
                    }
                }
            }
        }
    }

    fn lock_in_flight(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, FlightWatch, foldhash::fast::RandomState>>
    {
        // Every critical section is one map operation: a poisoned lock holds a whole map.
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the session from the store and caches it, unless it was deleted or the cache
    /// invalidated meanwhile.
    async fn load(
        &self,
        id: &str,
        now_unix: i64,
    ) -> Result<Option<Arc<CachedSession>>, StoreError> {
        let generation = self.generation.load(Ordering::Acquire);
        let Some((session, version)) = self.read(id, now_unix).await? else {
            return Ok(None);
        };
        let mut cached = CachedSession::new(session, version);
        cached.generation = generation;
        let cached = Arc::new(cached);
        if !self.deleted.contains_key(id) && generation == self.generation.load(Ordering::Acquire) {
            cached.in_cache.store(true, Ordering::Release);
            self.cache.insert(Arc::clone(&cached.id), cached.clone());
        }
        Ok(Some(cached))
    }

    /// The whole live session with this id (tokens included), read from the store: the cache
    /// keeps only what every request needs.
    pub async fn full(&self, id: &str, now_unix: i64) -> Result<Option<Session>, StoreError> {
        Ok(self.read(id, now_unix).await?.map(|(s, _)| s))
    }

    /// The live session with this id and its record version.
    async fn read(&self, id: &str, now_unix: i64) -> Result<Option<(Session, u64)>, StoreError> {
        let Some(record) = self.store.get(SESSION_TYPE, id).await? else {
            return Ok(None);
        };
        let session: Session = match serde_json::from_value(record.data) {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "unreadable session record; treating as absent");
                return Ok(None);
            }
        };
        Ok((!session.is_expired(now_unix)).then_some((session, record.version)))
    }

    /// Stores a new or changed session.
    pub async fn put(&self, session: &Session) -> Result<(), StoreError> {
        self.write(session, None).await
    }

    /// Stores a changed session only if its record is still live and at `version` (the one
    /// it was read at); otherwise [`StoreError::Conflict`] and nothing is written, so a
    /// session signed out meanwhile stays signed out.
    pub async fn put_if_version(&self, session: &Session, version: u64) -> Result<(), StoreError> {
        self.write(session, Some(version)).await
    }

    async fn write(&self, session: &Session, expected: Option<u64>) -> Result<(), StoreError> {
        let data = serde_json::to_value(session)
            .map_err(|e| StoreError::InvalidArgument(format!("session does not serialize: {e}")))?;
        let mut record = NewRecord::new(SESSION_TYPE, session.id.clone(), data);
        record.expected_version = expected;
        self.store.put(vec![record]).await?;
        self.remove(session.id.as_str());
        Ok(())
    }

    /// Deletes a session everywhere: the record (so every replica's follower evicts it) and
    /// the local cache entry (at once, without waiting for the stream).
    pub async fn delete(&self, id: &str) -> Result<(), StoreError> {
        self.deleted.insert(id.to_string(), ());
        self.remove(id);
        self.store.delete(SESSION_TYPE, id).await?;
        Ok(())
    }

    /// Applies a change event: drops the cached entry unless it was read at this version or
    /// a later one.
    fn evict(&self, id: &str, version: u64, deleted: bool) {
        if deleted {
            self.deleted.insert(id.to_string(), ());
        } else if self.cache.get(id).is_some_and(|s| s.version >= version) {
            return;
        }
        self.remove(id);
    }

    /// Drops the cached entry for `id`, and marks it no longer current at once (moka's
    /// eviction listener would too, but not necessarily before this returns).
    fn remove(&self, id: &str) {
        if let Some(s) = self.cache.remove(id) {
            s.in_cache.store(false, Ordering::Release);
        }
    }

    /// Drops every cached entry. moka does this lazily, so the generation goes up first:
    /// from then on, no entry read before counts as current.
    fn invalidate_all(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.cache.invalidate_all();
    }

    /// Fills the (just invalidated) cache from a snapshot of the store's live sessions and
    /// returns the versions to follow changes from; `None` when `shutdown` came first.
    ///
    /// Newest sessions (by `issued_at`) first, and never past the byte bound: the sessions kept
    /// are chosen while the snapshot streams in (at most the bound's worth held at a time) and
    /// inserted only into free room, so that nothing already cached is evicted for them. An
    /// entry a request cached meanwhile is newer than the snapshot and stays. A session deleted
    /// here meanwhile (the `deleted` set) is left out; one deleted elsewhere after the snapshot
    /// is evicted by its tombstone on the change stream, which starts at the snapshot's version.
    async fn preload(
        &self,
        shutdown: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Result<Option<Versions>, StoreError> {
        let started = Instant::now();
        let generation = self.generation.load(Ordering::Acquire);
        let now_unix = crate::state::now_unix();
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

    /// Follows the store's change stream until `shutdown` turns true, evicting every session
    /// that changes. Reconnects with backoff and carries on where it stopped; a compacted
    /// history or a recreated store (a new `server_version`) clears the whole cache first.
    /// Starting from scratch (at first, or after such a clear) preloads the cache
    /// ([`SessionCache::preload`]) and follows from the preload's snapshot.
    pub async fn follow(&self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(100);
        let mut after = None;
        let mut server_version = None;
        loop {
            if *shutdown.borrow() {
                return;
            }
            let versions = match self.store.versions().await {
                Ok(v) => v,
                Err(e) => {
                    // Readiness does not wait for a store that is down.
                    self.first_preload_ended.store(true, Ordering::Release);
                    debug!(error = %e, "session sync: store unavailable; retrying");
                    sleep_or_shutdown(&mut shutdown, &mut backoff).await;
                    continue;
                }
            };
            let start = match after {
                Some(v) if server_version == Some(versions.server_version) => v,
                _ => {
                    if server_version.is_some_and(|s| s != versions.server_version) {
                        info!("session sync: the store was recreated; resyncing");
                    }
                    // Whatever was cached before we (re)started following may be stale.
                    self.invalidate_all();
                    let preloaded = self.preload(&mut shutdown).await;
                    self.first_preload_ended.store(true, Ordering::Release);
                    match preloaded {
                        Ok(Some(v)) => {
                            server_version = Some(v.server_version);
                            v.latest_record_version
                        }
                        Ok(None) => return,
                        Err(e) => {
                            warn!(error = %e, "session sync: cannot preload sessions; retrying");
                            sleep_or_shutdown(&mut shutdown, &mut backoff).await;
                            continue;
                        }
                    }
                }
            };
            let mut changes = match self.store.sync(start).await {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "session sync: cannot follow changes; retrying");
                    if matches!(e, StoreError::Compacted { .. }) {
                        after = None;
                    }
                    sleep_or_shutdown(&mut shutdown, &mut backoff).await;
                    continue;
                }
            };
            info!(after = start, "session sync: following changes");
            backoff = Duration::from_millis(100);
            after = Some(start);
            self.set_in_sync(true);
            loop {
                let next = tokio::select! {
                    next = changes.next() => next,
                    _ = shutdown.changed() => return,
                };
                match next {
                    Some(Ok(record)) => {
                        after = Some(record.version);
                        if record.kind == SESSION_TYPE {
                            debug!(version = record.version, "session changed; evicting");
                            self.evict(&record.id, record.version, record.is_deleted());
                        }
                    }
                    Some(Err(e)) => {
                        self.set_in_sync(false);
                        warn!(error = %e, "session sync interrupted; reconnecting");
                        if matches!(e, StoreError::Compacted { .. }) {
                            after = None;
                        }
                        break;
                    }
                    None => {
                        self.set_in_sync(false);
                        warn!("session sync stream ended; reconnecting");
                        break;
                    }
                }
            }
            sleep_or_shutdown(&mut shutdown, &mut backoff).await;
        }
    }
}

// === impl Landing ===

impl Drop for Landing<'_> {
    fn drop(&mut self) {
        self.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(self.id);
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

async fn sleep_or_shutdown(
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
    backoff: &mut Duration,
) {
    tokio::select! {
        _ = tokio::time::sleep(*backoff) => {}
        _ = shutdown.changed() => {}
    }
    // Capped low so that everything recovers within a second or two of the store coming back.
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use portcullis_databroker::{
        ChangeStream, MemoryStore, Query, QueryPage, Record, Snapshot, SnapshotStream,
    };

    use super::*;

    const NOW: i64 = 1_800_000_000;

    /// A memory store that counts `get` calls, can make them slow or fail, and can delete a
    /// session right after handing out a snapshot (a change between snapshot and stream).
    #[derive(Default)]
    struct Probe {
        inner: MemoryStore,
        gets: AtomicUsize,
        get_delay: Duration,
        failing_gets: AtomicUsize,
        delete_after_snapshot: Option<String>,
    }

    #[async_trait::async_trait]
    impl Store for Probe {
        async fn get(&self, kind: &str, id: &str) -> Result<Option<Record>, StoreError> {
            self.gets.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.get_delay).await;
            let failing = self
                .failing_gets
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
            if failing.is_ok() {
                return Err(StoreError::Unavailable("probe: down".into()));
            }
            self.inner.get(kind, id).await
        }
        async fn put(&self, records: Vec<NewRecord>) -> Result<Vec<Record>, StoreError> {
            self.inner.put(records).await
        }
        async fn delete(&self, kind: &str, id: &str) -> Result<Option<Record>, StoreError> {
            self.inner.delete(kind, id).await
        }
        async fn query(&self, query: Query) -> Result<QueryPage, StoreError> {
            self.inner.query(query).await
        }
        async fn versions(&self) -> Result<Versions, StoreError> {
            self.inner.versions().await
        }
        async fn sync(&self, after: u64) -> Result<ChangeStream, StoreError> {
            self.inner.sync(after).await
        }
        async fn sync_latest(&self, kind: Option<&str>) -> Result<Snapshot, StoreError> {
            self.inner.sync_latest(kind).await
        }
        async fn sync_latest_stream(
            &self,
            kind: Option<&str>,
        ) -> Result<SnapshotStream, StoreError> {
            let snapshot = self.inner.sync_latest_stream(kind).await?;
            if let Some(id) = &self.delete_after_snapshot {
                self.inner.delete(SESSION_TYPE, id).await?;
            }
            Ok(snapshot)
        }
        async fn acquire_lease(
            &self,
            name: &str,
            holder: &str,
            ttl: Duration,
        ) -> Result<bool, StoreError> {
            self.inner.acquire_lease(name, holder, ttl).await
        }
        async fn renew_lease(
            &self,
            name: &str,
            holder: &str,
            ttl: Duration,
        ) -> Result<bool, StoreError> {
            self.inner.renew_lease(name, holder, ttl).await
        }
        async fn release_lease(&self, name: &str, holder: &str) -> Result<bool, StoreError> {
            self.inner.release_lease(name, holder).await
        }
    }

    /// `n` live sessions issued one second apart (`issued_at` grows with the index), written
    /// into `probe`'s store, and a cache over it bounded by `max_bytes`.
    async fn probed_cache(
        probe: Probe,
        n: usize,
        max_bytes: u64,
    ) -> (Arc<SessionCache>, Arc<Probe>, Vec<Session>) {
        let now = crate::state::now_unix();
        let mut rng = rand::thread_rng();
        let sessions: Vec<Session> = (0..n)
            .map(|i| crate::seed::random_session(&mut rng, i, now - 3600 + i as i64, now + 3600))
            .collect();
        crate::seed::store_sessions(&probe.inner, &sessions)
            .await
            .expect("put");
        let probe = Arc::new(probe);
        let store: Arc<dyn Store> = probe.clone();
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let cache = SessionCache::new(store, metrics, max_bytes, Duration::from_secs(60));
        (Arc::new(cache), probe, sessions)
    }

    /// Starts the follower; stop it by dropping the sender.
    fn start_following(cache: &Arc<SessionCache>) -> tokio::sync::watch::Sender<bool> {
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let follower = cache.clone();
        tokio::spawn(async move { follower.follow(shutdown).await });
        stop
    }

    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "{what}: not within 10 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn following_preloads_live_sessions_without_reading_them_one_by_one() {
        let (cache, probe, sessions) = probed_cache(Probe::default(), 300, 64 << 20).await;
        // Signed out in the store, signed out here with the store's delete still under way,
        // and expired: none of them may come back through the preload.
        let tombstoned = &sessions[0].id;
        probe
            .inner
            .delete(SESSION_TYPE, tombstoned)
            .await
            .expect("delete");
        let signing_out = &sessions[1].id;
        cache.deleted.insert(signing_out.clone(), ());
        let mut expired = sessions[2].clone();
        expired.expires_at = crate::state::now_unix() - 1;
        crate::seed::store_sessions(&probe.inner, &[expired])
            .await
            .expect("put");

        assert!(!cache.first_preload_ended());
        let _stop = start_following(&cache);
        until("the first preload", || cache.first_preload_ended()).await;
        assert_eq!(cache.metrics.session_cache_preloaded.get(), 297);
        let now = crate::state::now_unix();
        for s in &sessions[3..] {
            let cached = cache.get(&s.id, now).await.expect("get").expect("live");
            assert_eq!(cached.email(), s.email);
        }
        assert_eq!(probe.gets.load(Ordering::SeqCst), 0, "no store reads");
        assert_eq!(cache.metrics.session_cache_misses.get(), 0);
        for id in [tombstoned, signing_out, &sessions[2].id] {
            assert!(!cache.cache.contains_key(id.as_str()), "{id} preloaded");
        }
    }

    #[tokio::test]
    async fn the_preload_keeps_the_newest_sessions_that_fit_the_bound_and_evicts_nothing() {
        let bound = 256 * 1024;
        let (cache, probe, sessions) = probed_cache(Probe::default(), 2_000, bound).await;
        let _stop = start_following(&cache);
        until("the first preload", || cache.first_preload_ended()).await;
        cache.cache.run_pending_tasks();
        let preloaded = cache.metrics.session_cache_preloaded.get();
        assert!(
            preloaded > 100 && preloaded < 2_000,
            "{preloaded} sessions preloaded"
        );
        assert_eq!(
            cache.cache.entry_count(),
            preloaded as u64,
            "the preload evicted some of its own sessions"
        );
        assert!(cache.cache.weighted_size() <= bound);
        // Sessions are issued in index order: the newest `preloaded` are the ones kept.
        let newest = sessions.len() - preloaded as usize;
        for (i, s) in sessions.iter().enumerate() {
            assert_eq!(
                cache.cache.contains_key(s.id.as_str()),
                i >= newest,
                "session {i} of {}",
                sessions.len()
            );
        }
        assert_eq!(probe.gets.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_change_between_the_snapshot_and_the_stream_is_not_lost() {
        let mut rng = rand::thread_rng();
        let now = crate::state::now_unix();
        let sessions: Vec<Session> = (0..20)
            .map(|i| crate::seed::random_session(&mut rng, i, now - 60, now + 3600))
            .collect();
        let probe = Probe {
            delete_after_snapshot: Some(sessions[0].id.clone()),
            ..Probe::default()
        };
        crate::seed::store_sessions(&probe.inner, &sessions)
            .await
            .expect("put");
        let probe = Arc::new(probe);
        let store: Arc<dyn Store> = probe.clone();
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let cache = Arc::new(SessionCache::new(
            store,
            metrics,
            1 << 20,
            Duration::from_secs(60),
        ));
        let _stop = start_following(&cache);
        until("the first preload", || cache.first_preload_ended()).await;
        // The deleted session was in the snapshot; its tombstone follows on the stream.
        until("the tombstone evicts the preloaded session", || {
            !cache.cache.contains_key(sessions[0].id.as_str())
        })
        .await;
        assert!(cache.deleted.contains_key(sessions[0].id.as_str()));
        assert!(cache
            .get(&sessions[0].id, now)
            .await
            .expect("get")
            .is_none());
        for s in &sessions[1..] {
            assert!(
                cache.cache.contains_key(s.id.as_str()),
                "{} preloaded",
                s.id
            );
        }
    }

    #[tokio::test]
    async fn concurrent_misses_for_one_session_read_the_store_once() {
        let probe = Probe {
            get_delay: Duration::from_millis(50),
            ..Probe::default()
        };
        let (cache, probe, sessions) = probed_cache(probe, 2, 1 << 20).await;
        let now = crate::state::now_unix();
        let id = sessions[0].id.as_str();
        let lookups = (0..32).map(|_| cache.get(id, now));
        let found = futures::future::join_all(lookups).await;
        assert_eq!(probe.gets.load(Ordering::SeqCst), 1, "one store read");
        let first = found[0].as_ref().expect("get").as_ref().expect("live");
        for f in &found {
            let s = f.as_ref().expect("get").as_ref().expect("live");
            assert!(Arc::ptr_eq(s, first));
        }
        assert!(cache.lock_in_flight().is_empty());

        // An error reaches every waiter and is not kept: the next miss reads again.
        probe.failing_gets.store(1, Ordering::SeqCst);
        let id = sessions[1].id.as_str();
        let found = futures::future::join_all((0..8).map(|_| cache.get(id, now))).await;
        assert!(found.iter().all(|f| f.is_err()), "{found:?}");
        assert_eq!(probe.gets.load(Ordering::SeqCst), 2);
        assert!(cache.get(id, now).await.expect("get").is_some());
        assert_eq!(probe.gets.load(Ordering::SeqCst), 3);

        // A miss whose read is dropped before it lands does not strand the ones behind it.
        cache.remove(id);
        let dropped = tokio::time::timeout(Duration::from_millis(10), cache.get(id, now));
        let behind = cache.get(id, now);
        let (dropped, behind) = tokio::join!(dropped, behind);
        assert!(dropped.is_err(), "timed out");
        assert!(behind.expect("get").is_some());
        assert!(cache.lock_in_flight().is_empty());

        // Signed out while the shared read ran: answered as read, but not cached.
        cache.remove(id);
        let reads = probe.gets.load(Ordering::SeqCst);
        let misses = futures::future::join_all((0..8).map(|_| cache.get(id, now)));
        let sign_out = async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            cache.delete(id).await
        };
        let (_, deleted) = tokio::join!(misses, sign_out);
        deleted.expect("delete");
        assert_eq!(probe.gets.load(Ordering::SeqCst), reads + 1);
        assert!(!cache.cache.contains_key(id));
        assert!(cache.get(id, now).await.expect("get").is_none());
    }

    #[tokio::test]
    async fn the_cache_is_bounded_by_the_bytes_its_sessions_hold() {
        let bound = 256 * 1024;
        let (cache, sessions, _) = cache_over(2_000, bound).await;
        let mut weights = Vec::new();
        for s in &sessions {
            let cached = cache.get(&s.id, NOW).await.expect("get").expect("live");
            weights.push(u64::from(cached.weight()));
        }
        cache.cache.run_pending_tasks();
        let mean = weights.iter().sum::<u64>() / weights.len() as u64;
        assert!(
            (300..2_000).contains(&mean),
            "a session weighs its own bytes and moka's: {mean}"
        );
        assert!(
            cache.cache.weighted_size() <= bound,
            "{} > {bound}",
            cache.cache.weighted_size()
        );
        assert!(
            cache.cache.entry_count() < 2_000 && cache.cache.entry_count() * mean > bound / 2,
            "{} entries of about {mean} bytes in {bound} bytes",
            cache.cache.entry_count()
        );
    }

    #[tokio::test]
    async fn a_change_event_evicts_only_entries_older_than_it() {
        let (cache, sessions, written) = cache_over(1, 1 << 20).await;
        let s = &sessions[0];
        let version = written[0].version;
        let cached = cache.get(&s.id, NOW).await.expect("get").expect("live");
        assert_eq!(cached.version, version);
        // The session's own write, arriving after its first request: nothing to evict.
        cache.evict(&s.id, version, false);
        assert!(cache.cache.contains_key(s.id.as_str()));
        // A later change evicts.
        cache.evict(&s.id, version + 1, false);
        assert!(!cache.cache.contains_key(s.id.as_str()));
        // A deletion always does, and keeps the id from coming back from a racing miss.
        cache.get(&s.id, NOW).await.expect("get").expect("live");
        cache.evict(&s.id, version, true);
        assert!(!cache.cache.contains_key(s.id.as_str()));
        assert!(cache.deleted.contains_key(s.id.as_str()));
    }

    /// A store holding `n` random live sessions (and their records as written), and the
    /// cache in front of it.
    async fn cache_over(n: usize, max_bytes: u64) -> (SessionCache, Vec<Session>, Vec<Record>) {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let mut rng = rand::thread_rng();
        let sessions: Vec<Session> = (0..n)
            .map(|i| crate::seed::random_session(&mut rng, i, NOW - 60, NOW + 3600))
            .collect();
        let written = crate::seed::store_sessions(store.as_ref(), &sessions)
            .await
            .expect("put");
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let cache = SessionCache::new(store, metrics, max_bytes, Duration::from_secs(60));
        (cache, sessions, written)
    }

    #[tokio::test]
    async fn a_session_kept_elsewhere_is_current_only_while_the_cache_would_answer_with_it() {
        let (mut cache, sessions, _) = cache_over(1, 1 << 20).await;
        let id = sessions[0].id.as_str();
        let first = cache.get(id, NOW).await.expect("get").expect("live");
        assert!(cache.is_current(&first, NOW));
        assert!(!cache.is_current(&first, first.expires_at), "expired");

        // A change event for a later version.
        cache.evict(id, first.version + 1, false);
        assert!(!cache.is_current(&first, NOW));
        let second = cache.get(id, NOW).await.expect("get").expect("live");
        assert!(cache.is_current(&second, NOW));

        // The follower restarting (moka drops these entries lazily).
        cache.invalidate_all();
        assert!(!cache.is_current(&second, NOW));
        let third = cache.get(id, NOW).await.expect("get").expect("live");
        assert!(cache.is_current(&third, NOW));

        // Too long without the change stream.
        cache.in_sync.store(false, Ordering::Release);
        cache.last_in_sync_ms.store(0, Ordering::Release);
        cache.staleness = Duration::ZERO;
        std::thread::sleep(Duration::from_millis(5));
        assert!(!cache.is_current(&third, NOW));
        cache.staleness = Duration::from_secs(60);
        assert!(cache.is_current(&third, NOW));

        // Sign-out.
        cache.delete(id).await.expect("delete");
        assert!(!cache.is_current(&third, NOW));
        assert!(cache.get(id, NOW).await.expect("get").is_none());
    }

    #[tokio::test]
    async fn a_session_the_size_bound_evicted_is_no_longer_current() {
        let (cache, sessions, _) = cache_over(2_000, 256 * 1024).await;
        let mut kept = Vec::new();
        for s in &sessions {
            kept.push(cache.get(&s.id, NOW).await.expect("get").expect("live"));
        }
        cache.cache.run_pending_tasks();
        let in_cache = kept
            .iter()
            .filter(|s| cache.cache.contains_key(&*s.id))
            .count();
        assert!(in_cache > 0 && in_cache < kept.len(), "{in_cache} cached");
        for s in &kept {
            assert_eq!(
                cache.is_current(s, NOW),
                cache.cache.contains_key(&*s.id),
                "session {}",
                s.id
            );
        }
    }

    #[tokio::test]
    async fn the_cookie_memo_answers_with_the_session_until_it_is_signed_out() {
        use portcullis_auth::{Cipher, Secret, SessionCookie};

        use super::opened::{Known, OpenedCookies};

        let (cache, sessions, _) = cache_over(1, 1 << 20).await;
        let id = sessions[0].id.as_str();
        let cipher = Cipher::new(&Secret::from_bytes([7; 32]));
        let value = SessionCookie {
            session_id: id.into(),
            scope: "app.localhost:443".into(),
            issued_at: NOW - 60,
            expires_at: NOW + 3600,
        }
        .seal(&cipher);
        let memo = OpenedCookies::new(1024);
        let lookup = || {
            memo.open(&cipher, &value, NOW, "app.localhost:443", |s| {
                cache.is_current(s, NOW)
            })
        };

        // First visit: the cookie only; the caller looks the session up and attaches it.
        let Some(Known::Cookie(opened)) = lookup() else {
            panic!("a first visit finds no session");
        };
        let session = cache
            .get(&opened.session_id, NOW)
            .await
            .expect("get")
            .expect("live");
        memo.attach(&value, &session);
        match lookup() {
            Some(Known::Session(s)) => assert!(Arc::ptr_eq(&s, &session)),
            other => panic!("the attached session, not {other:?}"),
        }

        // Signed out (here or on another replica, through the change stream): the memo no
        // longer answers with the session, and the cache finds none.
        cache.delete(id).await.expect("delete");
        let Some(Known::Cookie(opened)) = lookup() else {
            panic!("a signed-out session is not answered from the memo");
        };
        assert!(cache
            .get(&opened.session_id, NOW)
            .await
            .expect("get")
            .is_none());
    }
}
