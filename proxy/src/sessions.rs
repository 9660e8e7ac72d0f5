//! The proxy's view of sessions: a moka cache in front of the databroker, kept honest by a
//! background task that follows the databroker's change stream.
//!
//! A lookup that hits the cache costs a hash and an `Arc` clone. A miss asks the store once
//! and fills the cache. Every change the store reports (a sign-out's tombstone, a refresh)
//! evicts the entry at once, so a session deleted through any replica stops working on all.
//! A client's later requests skip even the hit: the opened-cookie memo ([`opened`]) keeps the
//! session its cookie led to, and uses it while [`SessionCache::is_current`] says the cache
//! would still answer with it.
//!
//! When the databroker cannot be reached, cached sessions keep working for a bounded time
//! (`databroker_cache_staleness`) after the change stream was last in sync; after that a cached
//! entry is only used once the store confirms it again. Unknown sessions need the store, so
//! while it is down they fail closed (the caller answers 503).
//!
//! [`crate::identity_manager`] refreshes sessions with the IdP's refresh token.

pub mod opened;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use portcullis_auth::{AssertionSlot, Session};
use portcullis_databroker::{Error as StoreError, NewRecord, Store, SESSION_TYPE};
use portcullis_policy::Identity;
use tracing::{debug, info, warn};

use crate::observe::metrics::Metrics;

/// The longest wait between two attempts to reach the store again.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

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
        }
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
        let generation = self.generation.load(Ordering::Acquire);
        let Some((session, version)) = self.read(id, now_unix).await? else {
            return Ok(None);
        };
        let mut cached = CachedSession::new(session, version);
        cached.generation = generation;
        let cached = Arc::new(cached);
        if !self.deleted.contains_key(id) {
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
                    server_version = Some(versions.server_version);
                    versions.latest_record_version
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
    use portcullis_databroker::{MemoryStore, Record};

    use super::*;

    const NOW: i64 = 1_800_000_000;

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
