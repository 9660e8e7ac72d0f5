//! Setup shared by the proxy's microbenches (each bench file is its own crate and includes this
//! with `mod common;`).

use std::sync::Arc;
use std::time::Duration;

use portcullis::observe::metrics::Metrics;
use portcullis::sessions::SessionCache;
use portcullis_auth::Session;
use portcullis_databroker::{MemoryStore, Store};

/// `count` seeded sessions (as `portcullis sessions seed` makes them, valid from `now - 60` for
/// an hour) in an in-memory store, the session cache in front of it (nothing cached yet), and
/// its metrics.
pub fn seeded_cache(
    rt: &tokio::runtime::Runtime,
    count: usize,
    now: i64,
) -> (Arc<SessionCache>, Arc<Metrics>, Vec<Session>) {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let mut rng = rand::thread_rng();
    let sessions: Vec<_> = (0..count)
        .map(|i| portcullis::seed::random_session(&mut rng, i, now - 60, now + 3600))
        .collect();
    rt.block_on(portcullis::seed::store_sessions(store.as_ref(), &sessions))
        .expect("put");
    let metrics = Arc::new(Metrics::new().expect("metrics"));
    let cache = Arc::new(SessionCache::new(
        store,
        metrics.clone(),
        512 << 20,
        Duration::from_secs(60),
    ));
    (cache, metrics, sessions)
}
