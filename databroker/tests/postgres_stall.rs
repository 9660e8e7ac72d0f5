//! PostgreSQL that stops answering: a server of the test's own ([`PrivatePostgres`]) frozen
//! with SIGSTOP keeps its connections open and lets the kernel accept new ones, but never
//! answers. Every call must fail within the store's timeout (so the proxy can answer 503 in
//! time), and the same store must work again once the server runs again.

mod common;

use std::time::{Duration, Instant};

use common::rec;
use futures::StreamExt;
use portcullis_databroker::{Error, PgOptions, PgStore, Query, Store};
use portcullis_harness::PrivatePostgres;

/// [`PgOptions`]'s default timeout, and what a call may take on top of it.
const TIMEOUT: Duration = Duration::from_secs(2);
const SLACK: Duration = Duration::from_millis(500);

/// Runs `call` and returns how long it took to fail; panics when it succeeds or takes far
/// longer than the timeout (the old behaviour: waiting forever).
async fn fails_in_time<T: std::fmt::Debug>(
    what: &str,
    call: impl std::future::Future<Output = Result<T, Error>>,
) -> Duration {
    let t0 = Instant::now();
    match tokio::time::timeout(TIMEOUT * 5, call).await {
        Err(_) => panic!("{what}: no answer after {:?}", t0.elapsed()),
        Ok(Ok(v)) => panic!("{what}: succeeded on a frozen server: {v:?}"),
        Ok(Err(Error::Unavailable(_))) => t0.elapsed(),
        Ok(Err(e)) => panic!("{what}: expected Unavailable, got {e:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_server_fails_every_call_in_time_and_the_store_recovers_by_itself() {
    let pg = PrivatePostgres::start();
    let store = PgStore::connect(&pg.url(), PgOptions::default())
        .await
        .expect("connect");
    store.put(vec![rec("session", "a", 1)]).await.unwrap();
    let mut changes = store.sync(0).await.unwrap();
    assert_eq!(changes.next().await.unwrap().unwrap().id, "a");
    // Several pooled connections, each of which will be caught mid-call.
    let warm: Vec<_> = (0..6)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.get("session", "a").await })
        })
        .collect();
    for call in warm {
        assert!(call.await.unwrap().unwrap().is_some());
    }

    pg.pause();
    let frozen = Instant::now();
    // Calls on pooled connections, on new ones (more at once than the pool holds idle), and
    // a write holding a transaction: each fails on its own deadline.
    let calls: Vec<_> = (0..20)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let what = format!("call {i}");
                match i % 4 {
                    0 => fails_in_time(&what, store.put(vec![rec("session", "b", i)])).await,
                    1 => fails_in_time(&what, store.versions()).await,
                    2 => fails_in_time(&what, store.query(Query::of_type("session"))).await,
                    _ => fails_in_time(&what, store.get("session", "a")).await,
                }
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    for call in calls {
        slowest = slowest.max(call.await.expect("call task"));
    }
    println!("20 calls on a frozen server: the slowest failed after {slowest:?}");
    assert!(slowest <= TIMEOUT + SLACK, "{slowest:?}");
    // The change stream fails too, so that a follower knows it is no longer in sync.
    let t0 = Instant::now();
    match tokio::time::timeout(TIMEOUT * 5, changes.next()).await {
        Ok(Some(Err(Error::Unavailable(_)))) => {}
        other => panic!("change stream on a frozen server: {other:?}"),
    }
    assert!(
        t0.elapsed() <= TIMEOUT + store_poll() + SLACK,
        "{:?}",
        t0.elapsed()
    );
    // Still frozen: a second round fails just as fast (no call waits behind a stuck one).
    let again = fails_in_time("again", store.get("session", "a")).await;
    assert!(again <= TIMEOUT + SLACK, "{again:?}");

    pg.resume();
    let resumed = Instant::now();
    println!("frozen for {:?}", resumed - frozen);
    let recovered = loop {
        let round: Vec<_> = (0..8)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    store.put(vec![rec("session", &format!("r{i}"), 1)]).await?;
                    store.get("session", "a").await
                })
            })
            .collect();
        let mut ok = true;
        for call in round {
            ok &= matches!(call.await.expect("call task"), Ok(Some(_)));
        }
        if ok {
            break resumed.elapsed();
        }
        assert!(resumed.elapsed() < Duration::from_secs(5), "not recovered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!("every call worked again {recovered:?} after SIGCONT");
    let mut changes = store.sync(0).await.expect("follow again");
    assert_eq!(changes.next().await.unwrap().unwrap().id, "a");
}

/// How long an idle change stream waits before it looks for changes again.
fn store_poll() -> Duration {
    Duration::from_secs(1)
}
