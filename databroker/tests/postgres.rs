//! The store contract on PostgreSQL (127.0.0.1:5432, user `postgres`, trust auth). Each test
//! makes its own database and drops it afterwards.

mod common;

use std::time::Duration;

use common::{next_change, rec};
use portcullis_databroker::{Error, PgOptions, PgStore, Store};
use portcullis_harness::TestDb;

/// A database of the test's own (dropped at the end, even on panic).
fn test_db() -> TestDb {
    TestDb::create("portcullis_test")
}

async fn store(db: &TestDb) -> PgStore {
    store_with(db, PgOptions::default()).await
}

async fn store_with(db: &TestDb, options: PgOptions) -> PgStore {
    PgStore::connect(&db.url(), options).await.expect("connect")
}

#[tokio::test]
async fn put_get_delete() {
    let db = test_db();
    common::put_get_delete(&store(&db).await).await;
}

#[tokio::test]
async fn conditional_put() {
    let db = test_db();
    common::conditional_put(&store(&db).await).await;
}

/// Many conditional writers race one deleter on the same record: exactly the writes that
/// commit before the delete succeed, and the record ends up deleted.
#[tokio::test]
async fn conditional_puts_never_resurrect_a_concurrently_deleted_record() {
    let db = test_db();
    let (a, b) = (store(&db).await, store(&db).await);
    for round in 0..20 {
        let id = format!("r{round}");
        let v = a.put(vec![rec("session", &id, 0)]).await.unwrap()[0].version;
        let writer = {
            let a = a.clone();
            let id = id.clone();
            tokio::spawn(async move { a.put(vec![rec("session", &id, 1).if_version(v)]).await })
        };
        let deleted = b.delete("session", &id).await.unwrap();
        let written = writer.await.unwrap();
        assert!(deleted.is_some(), "the delete always finds a live record");
        match written {
            Ok(_) | Err(Error::Conflict(_)) => {}
            Err(e) => panic!("round {round}: {e:?}"),
        }
        assert!(
            a.get("session", &id).await.unwrap().is_none(),
            "round {round}: deleted stays deleted"
        );
    }
}

#[tokio::test]
async fn query_pages() {
    let db = test_db();
    common::query_pages(&store(&db).await).await;
}

#[tokio::test]
async fn sync_follows_changes() {
    let db = test_db();
    common::sync_follows_changes(&store(&db).await).await;
}

#[tokio::test]
async fn leases_are_exclusive_expire_and_can_be_taken_over() {
    let db = test_db();
    common::leases(&store(&db).await).await;
}

#[tokio::test]
async fn leases_are_shared_by_replicas() {
    let db = test_db();
    let (a, b) = (store(&db).await, store(&db).await);
    let ttl = Duration::from_millis(300);
    assert!(a.acquire_lease("identity_manager", "a", ttl).await.unwrap());
    assert!(!b.acquire_lease("identity_manager", "b", ttl).await.unwrap());
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    assert!(b.acquire_lease("identity_manager", "b", ttl).await.unwrap());
    assert!(!a.renew_lease("identity_manager", "a", ttl).await.unwrap());
}

/// Change streams poll only once a minute here, so a change that reaches one within the two
/// seconds `next_change` waits was announced by the notification, not found by a poll.
#[tokio::test]
async fn two_replicas_see_each_others_writes_through_sync_by_notification() {
    let db = test_db();
    let mut slow_poll = PgOptions::default();
    slow_poll.poll_interval = Duration::from_secs(60);
    let a = store_with(&db, slow_poll.clone()).await;
    let b = store_with(&db, slow_poll).await;
    let start = b.versions().await.unwrap().latest_record_version;
    let mut changes = b.sync(start).await.unwrap();
    for i in 0..20 {
        let put = a
            .put(vec![rec("session", &format!("s{i}"), i)])
            .await
            .unwrap();
        let seen = next_change(&mut changes, Duration::from_secs(2)).await;
        assert_eq!(seen.version, put[0].version);
        assert_eq!(seen.id, format!("s{i}"));
    }

    // A deletion on B reaches a follower on A the same way.
    let mut on_a = a
        .sync(a.versions().await.unwrap().latest_record_version)
        .await
        .unwrap();
    b.delete("session", "s3").await.unwrap();
    let seen = next_change(&mut on_a, Duration::from_secs(2)).await;
    assert!(seen.is_deleted());
    assert!(a.get("session", "s3").await.unwrap().is_none());
}

#[tokio::test]
async fn versions_are_monotonic_across_concurrent_replicas() {
    let db = test_db();
    let stores = [store(&db).await, store(&db).await];
    let follower = store(&db).await;
    let mut changes = follower.sync(0).await.unwrap();
    let mut writers = Vec::new();
    for (n, store) in stores.iter().enumerate() {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..25 {
                store
                    .put(vec![rec("session", &format!("w{n}-{i}"), i)])
                    .await
                    .unwrap();
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let mut last = 0;
    for _ in 0..50 {
        let r = next_change(&mut changes, Duration::from_secs(3)).await;
        assert!(r.version > last, "in version order");
        last = r.version;
    }
}

#[tokio::test]
async fn compaction_drops_old_changes_and_tombstones() {
    let db = test_db();
    let store = store(&db).await;
    store
        .put(vec![rec("session", "a", 1), rec("session", "b", 2)])
        .await
        .unwrap();
    let tomb = store.delete("session", "a").await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let removed = store.compact(Duration::ZERO).await.unwrap();
    assert_eq!(removed, 3);
    // The live record stays; a follower from before the compaction must resync.
    assert!(store.get("session", "b").await.unwrap().is_some());
    match store.sync(0).await {
        Err(Error::Compacted { requested, oldest }) => {
            assert_eq!(requested, 0);
            assert_eq!(oldest, tomb.version);
        }
        Err(e) => panic!("expected Compacted, got {e:?}"),
        Ok(_) => panic!("expected Compacted, got a stream"),
    }
    // The versions stay where they were, and following from there works.
    let v = store.versions().await.unwrap();
    assert_eq!(v.latest_record_version, tomb.version);
    let mut changes = store.sync(v.latest_record_version).await.unwrap();
    store.put(vec![rec("session", "c", 3)]).await.unwrap();
    assert_eq!(
        next_change(&mut changes, Duration::from_secs(2)).await.id,
        "c"
    );
    let snapshot = store.sync_latest(None).await.unwrap();
    let ids: Vec<_> = snapshot.records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["b", "c"]);
}

#[tokio::test]
async fn server_version_survives_restarts_and_data_persists() {
    let db = test_db();
    let first = store(&db).await;
    let v1 = first.versions().await.unwrap();
    first.put(vec![rec("session", "a", 1)]).await.unwrap();
    drop(first);
    let second = store(&db).await;
    let v2 = second.versions().await.unwrap();
    assert_eq!(
        v1.server_version, v2.server_version,
        "same database, same store"
    );
    assert!(second.get("session", "a").await.unwrap().is_some());

    // A recreated database is a new store.
    let other = test_db();
    let v3 = store(&other).await.versions().await.unwrap();
    assert_ne!(v1.server_version, v3.server_version);
}

#[tokio::test]
async fn an_unreachable_database_is_unavailable() {
    // Nothing listens on port 1.
    let err = PgStore::connect("postgres://postgres@127.0.0.1:1/none", PgOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
}
