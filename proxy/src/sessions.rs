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
mod preload;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use portcullis_auth::{AssertionSlot, Session};
use portcullis_databroker::{Error as StoreError, NewRecord, Store, SESSION_TYPE};
use portcullis_policy::Identity;
use tracing::{debug, info, warn};

use crate::observe::metrics::Metrics;

/// The longest wait between two attempts to reach the store again.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

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

    /// The cache's current entry for `id`, if it holds one that [`SessionCache::is_current`]
    /// would accept, without asking the store or counting a hit: for work off the request path
    /// (the identity assertions' renewal) that only needs what is cached.
    pub fn cached(&self, id: &str, now_unix: i64) -> Option<Arc<CachedSession>> {
        self.cache.get(id).filter(|s| self.is_current(s, now_unix))
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
mod tests;
