//! The session cache: lookups, eviction, the cookie memo, preloading and coalesced misses.

use std::sync::atomic::AtomicUsize;

use portcullis_databroker::{
    ChangeStream, MemoryStore, Query, QueryPage, Record, Snapshot, SnapshotStream, Versions,
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
    async fn sync_latest_stream(&self, kind: Option<&str>) -> Result<SnapshotStream, StoreError> {
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
    let now = crate::clock::now_unix();
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
    expired.expires_at = crate::clock::now_unix() - 1;
    crate::seed::store_sessions(&probe.inner, &[expired])
        .await
        .expect("put");

    assert!(!cache.first_preload_ended());
    let _stop = start_following(&cache);
    until("the first preload", || cache.first_preload_ended()).await;
    assert_eq!(cache.metrics.session_cache_preloaded.get(), 297);
    let now = crate::clock::now_unix();
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
    let now = crate::clock::now_unix();
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
    let now = crate::clock::now_unix();
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
    memo.attach(&opened, &session);
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
