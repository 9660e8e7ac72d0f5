//! The identity manager: renews sessions with the IdP's refresh token before their access
//! token expires, so sessions live as long as the IdP allows.
//!
//! - **One refresher.** Every proxy runs [`run`], but only the holder of the
//!   [`LEASE_NAME`] lease in the databroker works; the others wait and take over within
//!   [`LEASE_TTL`] when the holder dies (a holder that shuts down gives the lease up at once).
//!   Inside the holder a session has at most one refresh in flight.
//! - **What is due.** The holder reads every session once (paged), then follows the change
//!   stream, keeping only each session's due time in memory: a quarter of the access token's
//!   lifetime before it expires (at most [`MAX_MARGIN`] early, never more than once a
//!   [`MIN_INTERVAL`]).
//! - **Outcomes.** Success writes the session back through the store (new tokens and claims from
//!   the new ID token), so every proxy evicts its cached copy. `invalid_grant` (or an ID token
//!   for another subject) deletes the session: every proxy signs it out. Anything else (timeouts,
//!   5xx, an unreachable store) keeps the session until its hard expiry and retries with
//!   exponential backoff from [`RETRY_MIN`] to [`RETRY_MAX`].
//! - A refresh never resurrects a session signed out meanwhile: the write-back is a conditional
//!   put ([`SessionCache::put_if_version`]) that the store applies only while the record is
//!   live and still the version the refresh started from, checked atomically with the write.
//!
//! [`SessionCache::put_if_version`]: crate::sessions::SessionCache::put_if_version

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use portcullis_auth::{AuthError, Session};
use portcullis_databroker::{Error as StoreError, Query, Record, Store, SESSION_TYPE};
use tokio::sync::{mpsc, watch, Semaphore};
use tracing::{debug, info, warn};

use crate::sessions::SessionCache;
use crate::state::State;

/// The lease whose holder refreshes sessions.
pub const LEASE_NAME: &str = "identity_manager";
/// How long a holder keeps the lease without renewing it; a dead holder is replaced this long
/// after its last renewal at most.
pub const LEASE_TTL: Duration = Duration::from_secs(10);
/// How often the holder renews (and others try to acquire).
const RENEW_EVERY: Duration = Duration::from_secs(2);
/// How often the holder looks for due sessions.
const TICK: Duration = Duration::from_millis(200);
/// Refreshes in flight at once.
const MAX_CONCURRENT: usize = 16;
/// The longest a refresh (one IdP call) may take before it counts as a transient failure.
const REFRESH_TIMEOUT: Duration = Duration::from_secs(15);
/// A refresh happens at most this long before the access token expires.
pub const MAX_MARGIN: Duration = Duration::from_secs(60);
/// And at least this long after the previous write of the session.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Backoff after a transient failure: doubles from here...
pub const RETRY_MIN: Duration = Duration::from_secs(1);
/// ...up to here.
pub const RETRY_MAX: Duration = Duration::from_secs(60);

/// Sessions with a refresh running in this process (shared by every [`manage`] run, so a
/// refresh started before a store hiccup is not started twice).
type InFlight = Arc<std::sync::Mutex<HashSet<String>>>;

/// What became of one refresh attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Refreshed (or found refreshed already); next due at this Unix millisecond, if ever.
    Due(Option<i64>),
    /// Deleted, expired, signed out or not refreshable: forget it.
    Gone,
    /// A transient failure: try again after the backoff.
    Retry,
}

#[derive(Debug, Clone, Copy, Default)]
struct Entry {
    due: i64,
    retry_at: i64,
    failures: u32,
    in_flight: bool,
}

/// Due times of the sessions the holder knows, ordered for the tick.
#[derive(Default)]
struct Schedule {
    entries: HashMap<String, Entry>,
    queue: BTreeSet<(i64, String)>,
}

// === impl Entry / Schedule ===

impl Entry {
    fn key(&self) -> i64 {
        self.due.max(self.retry_at)
    }
}

impl Schedule {
    fn len(&self) -> usize {
        self.entries.len()
    }

    /// A session was written: `due` is its next refresh time (`None`: never).
    fn upsert(&mut self, id: &str, due: Option<i64>) {
        let Some(due) = due else {
            self.remove(id);
            return;
        };
        let entry = self.entries.entry(id.to_owned()).or_default();
        if !entry.in_flight && entry.due != 0 {
            self.queue.remove(&(entry.key(), id.to_owned()));
        }
        entry.due = due;
        if !entry.in_flight {
            self.queue.insert((entry.key(), id.to_owned()));
        }
    }

    fn remove(&mut self, id: &str) {
        if let Some(entry) = self.entries.remove(id) {
            if !entry.in_flight {
                self.queue.remove(&(entry.key(), id.to_owned()));
            }
        }
    }

    /// The next session due at `now_ms`, marked in flight.
    fn pop_due(&mut self, now_ms: i64) -> Option<String> {
        let first = self.queue.first()?;
        if first.0 > now_ms {
            return None;
        }
        let (_, id) = self.queue.pop_first()?;
        if let Some(entry) = self.entries.get_mut(&id) {
            entry.in_flight = true;
        }
        Some(id)
    }

    /// Records a refresh's outcome and puts the session back in the queue.
    fn finish(&mut self, id: &str, outcome: Outcome, now_ms: i64) {
        let Some(entry) = self.entries.get_mut(id) else {
            return;
        };
        entry.in_flight = false;
        match outcome {
            Outcome::Gone | Outcome::Due(None) => {
                self.entries.remove(id);
                return;
            }
            Outcome::Due(Some(due)) => {
                entry.due = due;
                entry.retry_at = 0;
                entry.failures = 0;
            }
            Outcome::Retry => {
                entry.failures = entry.failures.saturating_add(1);
                entry.retry_at = now_ms.saturating_add(millis(retry_delay(entry.failures)));
            }
        }
        let key = entry.key();
        self.queue.insert((key, id.to_owned()));
    }
}

/// The backoff after `failures` transient failures in a row.
fn retry_delay(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    (RETRY_MIN * 2u32.pow(exp)).min(RETRY_MAX)
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn now_ms() -> i64 {
    crate::clock::now_unix()
        .saturating_mul(1000)
        .saturating_add(i64::from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_millis())
                .unwrap_or(0),
        ))
}

/// When `session` (written at `modified_ms`) should be refreshed, in Unix milliseconds; `None`
/// when it cannot be (no refresh token, no known access-token expiry) or ends first.
pub fn due_at(session: &Session, modified_ms: i64) -> Option<i64> {
    session.refresh_token.as_ref()?;
    let expires_ms = session.access_token_expires_at?.saturating_mul(1000);
    let lifetime = expires_ms.saturating_sub(modified_ms).max(0);
    let margin = (lifetime / 4).min(millis(MAX_MARGIN));
    let due = expires_ms
        .saturating_sub(margin)
        .max(modified_ms.saturating_add(millis(MIN_INTERVAL)));
    (due < session.expires_at.saturating_mul(1000)).then_some(due)
}

fn parse(record: &Record) -> Option<Session> {
    if record.is_deleted() {
        return None;
    }
    serde_json::from_value(record.data.clone()).ok()
}

fn record_due(record: &Record) -> Option<i64> {
    parse(record).and_then(|s| due_at(&s, record.modified_at))
}

/// Competes for the lease and, while holding it, refreshes sessions; returns when `shutdown`
/// turns true (giving the lease up).
pub async fn run(state: Arc<State>, mut shutdown: watch::Receiver<bool>) {
    if state.runtime.load().config.idp.is_none() {
        return;
    }
    let holder = format!("{}-{}", std::process::id(), Session::new_id());
    let store = state.sessions.store().clone();
    let in_flight = InFlight::default();
    info!(holder = %holder, "identity manager: started");
    loop {
        if *shutdown.borrow() {
            return;
        }
        match store.acquire_lease(LEASE_NAME, &holder, LEASE_TTL).await {
            Ok(true) => {
                info!(holder = %holder, "identity manager: holding the lease; refreshing sessions");
                state.metrics.identity_manager_leader.set(1);
                let stop = lead(&state, &store, &holder, &in_flight, &mut shutdown).await;
                state.metrics.identity_manager_leader.set(0);
                if stop {
                    match store.release_lease(LEASE_NAME, &holder).await {
                        Ok(_) => info!("identity manager: lease released"),
                        Err(e) => warn!(error = %e, "identity manager: cannot release the lease"),
                    }
                    return;
                }
                warn!(holder = %holder, "identity manager: lost the lease");
            }
            Ok(false) => debug!("identity manager: another replica holds the lease"),
            Err(e) => debug!(error = %e, "identity manager: store unavailable"),
        }
        tokio::select! {
            _ = tokio::time::sleep(RENEW_EVERY) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// Works while the lease is held. `true` when it stopped for shutdown, `false` when the lease
/// was lost (or could not be renewed in time).
async fn lead(
    state: &Arc<State>,
    store: &Arc<dyn Store>,
    holder: &str,
    in_flight: &InFlight,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    let renew = async {
        let mut renewed = Instant::now();
        loop {
            tokio::time::sleep(RENEW_EVERY).await;
            match store.renew_lease(LEASE_NAME, holder, LEASE_TTL).await {
                Ok(true) => renewed = Instant::now(),
                Ok(false) => return,
                Err(e) => {
                    warn!(error = %e, "identity manager: cannot renew the lease");
                    // Stop well before another replica may take over.
                    if renewed.elapsed() + RENEW_EVERY >= LEASE_TTL {
                        return;
                    }
                }
            }
        }
    };
    let work = async {
        let mut backoff = Duration::from_millis(200);
        loop {
            if let Err(e) = manage(state, store, in_flight).await {
                warn!(error = %e, "identity manager: store unavailable; retrying");
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    };
    tokio::select! {
        _ = renew => false,
        _ = work => false,
        _ = shutdown.changed() => true,
    }
}

/// Loads every session's due time, then follows changes and starts refreshes as they fall due.
/// Returns only on a store error. Refreshes already started finish even when this is dropped
/// (an IdP that rotated a refresh token must see the new one stored).
async fn manage(
    state: &Arc<State>,
    store: &Arc<dyn Store>,
    in_flight: &InFlight,
) -> Result<(), StoreError> {
    let versions = store.versions().await?;
    let mut schedule = Schedule::default();
    let mut offset = 0;
    loop {
        let page = store
            .query(Query {
                kind: SESSION_TYPE.to_owned(),
                offset,
                limit: Query::MAX_LIMIT,
            })
            .await?;
        let n = page.records.len();
        for record in &page.records {
            schedule.upsert(&record.id, record_due(record));
        }
        offset += n;
        if n == 0 || offset >= page.total {
            break;
        }
    }
    info!(
        sessions = schedule.len(),
        "identity manager: sessions to refresh loaded"
    );
    let mut changes = store.sync(versions.latest_record_version).await?;
    let permits = Arc::new(Semaphore::new(MAX_CONCURRENT));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(String, Outcome)>();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            next = changes.next() => match next {
                Some(Ok(record)) if record.kind == SESSION_TYPE => {
                    if record.is_deleted() {
                        schedule.remove(&record.id);
                    } else {
                        schedule.upsert(&record.id, record_due(&record));
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => return Err(StoreError::Unavailable("change stream ended".into())),
            },
            Some((id, outcome)) = done_rx.recv() => {
                schedule.finish(&id, outcome, now_ms());
            }
            _ = tick.tick() => {
                let now = now_ms();
                while let Ok(permit) = permits.clone().try_acquire_owned() {
                    let Some(id) = schedule.pop_due(now) else { break };
                    let started = in_flight
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(id.clone());
                    if !started {
                        // Still running from before the schedule was reloaded: look again later.
                        schedule.finish(&id, Outcome::Retry, now);
                        continue;
                    }
                    let state = state.clone();
                    let done = done_tx.clone();
                    let in_flight = in_flight.clone();
                    tokio::spawn(async move {
                        let outcome = refresh(&state, &id).await;
                        drop(permit);
                        in_flight.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                        let _ = done.send((id, outcome));
                    });
                }
            }
        }
    }
}

/// Refreshes one session with the IdP and writes it back.
async fn refresh(state: &State, id: &str) -> Outcome {
    let store = state.sessions.store();
    let metric = |result: &str| {
        state
            .metrics
            .session_refreshes
            .with_label_values(&[result])
            .inc()
    };
    let record = match store.get(SESSION_TYPE, id).await {
        Ok(Some(r)) => r,
        Ok(None) => return Outcome::Gone,
        Err(e) => {
            debug!(error = %e, "identity manager: cannot read the session");
            metric("store_error");
            return Outcome::Retry;
        }
    };
    let Some(mut session) = parse(&record) else {
        return Outcome::Gone;
    };
    let now = crate::clock::now_unix();
    if session.is_expired(now) {
        return Outcome::Gone;
    }
    match due_at(&session, record.modified_at) {
        None => return Outcome::Gone,
        // Written since it was scheduled (a sign-in again, another refresher): not due yet.
        Some(due) if due > now_ms() => return Outcome::Due(Some(due)),
        Some(_) => {}
    }
    let Some(refresh_token) = session.refresh_token.clone() else {
        return Outcome::Gone;
    };
    let Some(provider) = state.oidc().await else {
        metric("idp_unavailable");
        return Outcome::Retry;
    };
    let result = tokio::time::timeout(REFRESH_TIMEOUT, provider.refresh(&refresh_token)).await;
    let tokens = match result {
        Ok(Ok(tokens)) => tokens,
        Ok(Err(AuthError::InvalidGrant)) => {
            // Unless the session changed meanwhile (then this refresh token was simply old),
            // the IdP has ended the grant: end the session everywhere.
            if !unchanged(store, &record).await {
                return Outcome::Retry;
            }
            info!(session = %id, user = %session.user_id, "identity manager: grant revoked at the IdP; ending the session");
            metric("invalid_grant");
            end(state, id).await;
            return Outcome::Gone;
        }
        Ok(Err(e)) => {
            warn!(session = %id, error = %e, "identity manager: refresh failed; will retry");
            metric("transient");
            return Outcome::Retry;
        }
        Err(_) => {
            warn!(session = %id, "identity manager: refresh timed out; will retry");
            metric("transient");
            return Outcome::Retry;
        }
    };
    if let Some(subject) = &tokens.subject {
        if *subject != session.user_id {
            warn!(session = %id, "identity manager: refreshed ID token is for another subject; ending the session");
            metric("subject_mismatch");
            end(state, id).await;
            return Outcome::Gone;
        }
    }
    session.apply_refresh(tokens, crate::clock::now_unix());
    let outcome = write_back(&state.sessions, &session, record.version).await;
    match outcome {
        Outcome::Due(_) => metric("success"),
        Outcome::Gone => metric("superseded"),
        Outcome::Retry => metric("store_error"),
    }
    outcome
}

/// Stores a refreshed `session` read at `version`, unless the record changed meanwhile: a
/// sign-out (delete) or another write during the IdP call wins, and the refresh is dropped
/// ([`Outcome::Gone`]; a rewrite comes back through the change stream). The check is the
/// store's, atomic with the write, so a sign-out cannot slip in between.
async fn write_back(sessions: &SessionCache, session: &Session, version: u64) -> Outcome {
    let id = &session.id;
    // The IdP may have rotated the refresh token: keep trying to store the new one.
    let mut delay = Duration::from_millis(200);
    for attempt in 1..=6 {
        match sessions.put_if_version(session, version).await {
            Ok(()) => {
                debug!(session = %id, "identity manager: session refreshed");
                return Outcome::Due(due_at(session, now_ms()));
            }
            Err(StoreError::Conflict(e)) => {
                // Also what an earlier attempt that did commit (its answer lost) looks like;
                // then the change stream reschedules the session from the stored copy.
                info!(session = %id, attempt, reason = %e, "identity manager: session changed or signed out during the refresh; dropping the refreshed tokens");
                return Outcome::Gone;
            }
            Err(e) => {
                warn!(session = %id, attempt, error = %e, "identity manager: cannot store the refreshed session");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
    Outcome::Retry
}

/// Whether the stored record is still `record` (same version, not deleted).
async fn unchanged(store: &Arc<dyn Store>, record: &Record) -> bool {
    matches!(
        store.get(SESSION_TYPE, &record.id).await,
        Ok(Some(now)) if now.version == record.version
    )
}

async fn end(state: &State, id: &str) {
    if let Err(e) = state.sessions.delete(id).await {
        warn!(session = %id, error = %e, "identity manager: cannot delete the session; will retry");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(access_exp: Option<i64>, refresh: bool) -> Session {
        Session {
            id: "s".into(),
            user_id: "u".into(),
            email: String::new(),
            name: String::new(),
            groups: Vec::new(),
            claims: serde_json::Map::new(),
            issued_at: 0,
            expires_at: 100_000,
            id_token: None,
            access_token: Some("a".into()),
            refresh_token: refresh.then(|| "r".into()),
            access_token_expires_at: access_exp,
        }
    }

    #[test]
    fn due_is_a_quarter_of_the_lifetime_early_within_bounds() {
        // 3 s token written at t=1000 s: due 750 ms before expiry.
        assert_eq!(
            due_at(&session(Some(1003), true), 1_000_000),
            Some(1_002_250)
        );
        // 1 h token: 60 s early at most.
        assert_eq!(
            due_at(&session(Some(4600), true), 1_000_000),
            Some(4_540_000)
        );
        // Already expired: not before MIN_INTERVAL after the write.
        assert_eq!(
            due_at(&session(Some(900), true), 1_000_000),
            Some(1_001_000)
        );
        assert_eq!(due_at(&session(Some(1003), false), 1_000_000), None);
        assert_eq!(due_at(&session(None, true), 1_000_000), None);
        // The session ends before the refresh would be due.
        assert_eq!(due_at(&session(Some(200_000), true), 1_000_000), None);
    }

    #[test]
    fn schedule_hands_out_each_due_session_once() {
        let mut s = Schedule::default();
        s.upsert("a", Some(10));
        s.upsert("b", Some(20));
        s.upsert("c", Some(5_000));
        assert_eq!(s.pop_due(15).as_deref(), Some("a"));
        assert_eq!(s.pop_due(15), None);
        // An update while in flight does not requeue it.
        s.upsert("a", Some(12));
        assert_eq!(s.pop_due(100).as_deref(), Some("b"));
        assert_eq!(s.pop_due(100), None);
        s.finish("a", Outcome::Retry, 100);
        assert_eq!(s.pop_due(100 + 999), None);
        assert_eq!(s.pop_due(100 + 1000).as_deref(), Some("a"));
        s.finish("a", Outcome::Retry, 2000);
        assert_eq!(s.pop_due(2000 + 1999), None);
        assert_eq!(s.pop_due(2000 + 2000).as_deref(), Some("a"));
        s.finish("a", Outcome::Due(Some(3000)), 4000);
        s.finish("b", Outcome::Gone, 4000);
        assert_eq!(s.len(), 2);
        assert_eq!(s.pop_due(4000).as_deref(), Some("a"));
        s.remove("c");
        assert_eq!(s.pop_due(i64::MAX), None);
    }

    fn cache(store: Arc<dyn Store>) -> SessionCache {
        let metrics = Arc::new(crate::observe::metrics::Metrics::new().expect("metrics"));
        SessionCache::new(store, metrics, 100, Duration::from_secs(60))
    }

    #[tokio::test]
    async fn a_refresh_does_not_bring_back_a_session_signed_out_during_it() {
        let store: Arc<dyn Store> = Arc::new(portcullis_databroker::MemoryStore::new());
        let sessions = cache(store.clone());
        let mut s = session(Some(1003), true);
        sessions.put(&s).await.unwrap();
        let read = store.get(SESSION_TYPE, "s").await.unwrap().unwrap();

        // Signed out while the IdP call ran: the refreshed copy is dropped.
        sessions.delete("s").await.unwrap();
        s.access_token = Some("refreshed".into());
        assert_eq!(write_back(&sessions, &s, read.version).await, Outcome::Gone);
        assert!(store.get(SESSION_TYPE, "s").await.unwrap().is_none());

        // Rewritten meanwhile (signed in again): the newer copy stays.
        sessions.put(&session(Some(1003), true)).await.unwrap();
        let newer = store.get(SESSION_TYPE, "s").await.unwrap().unwrap();
        assert_eq!(write_back(&sessions, &s, read.version).await, Outcome::Gone);
        assert_eq!(store.get(SESSION_TYPE, "s").await.unwrap().unwrap(), newer);

        // Unchanged: stored.
        assert!(matches!(
            write_back(&sessions, &s, newer.version).await,
            Outcome::Due(_)
        ));
        let stored = store.get(SESSION_TYPE, "s").await.unwrap().unwrap();
        assert_eq!(stored.data["access_token"], "refreshed");
    }

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(retry_delay(1), RETRY_MIN);
        assert_eq!(retry_delay(2), RETRY_MIN * 2);
        assert_eq!(retry_delay(30), RETRY_MAX);
    }
}
