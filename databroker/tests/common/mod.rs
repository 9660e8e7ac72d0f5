//! The behaviour every [`Store`] must show, run against each backend.
#![allow(dead_code)]

use std::time::Duration;

use futures::StreamExt;
use portcullis_databroker::{ChangeStream, Error, NewRecord, Query, Record, Store};
use serde_json::json;

pub fn rec(kind: &str, id: &str, v: i64) -> NewRecord {
    NewRecord::new(kind, id, json!({ "v": v }))
}

/// The next change, or a panic after `within`.
pub async fn next_change(changes: &mut ChangeStream, within: Duration) -> Record {
    tokio::time::timeout(within, changes.next())
        .await
        .expect("a change arrives in time")
        .expect("the stream goes on")
        .expect("the change is not an error")
}

pub async fn put_get_delete(store: &dyn Store) {
    let a = store
        .put(vec![rec("session", "a", 1), rec("session", "b", 2)])
        .await
        .unwrap();
    assert_eq!(a.len(), 2);
    assert!(a[0].version < a[1].version);
    let a2 = store.put(vec![rec("session", "a", 3)]).await.unwrap();
    assert!(a2[0].version > a[1].version);
    let got = store.get("session", "a").await.unwrap().unwrap();
    assert_eq!(got.data, json!({"v": 3}));
    assert_eq!(got.version, a2[0].version);
    assert!(!got.is_deleted());

    let tomb = store.delete("session", "a").await.unwrap().unwrap();
    assert!(tomb.is_deleted());
    assert!(tomb.version > a2[0].version);
    assert!(store.get("session", "a").await.unwrap().is_none());
    assert!(store.delete("session", "a").await.unwrap().is_none());
    assert!(
        store.get("user", "b").await.unwrap().is_none(),
        "types are separate"
    );

    // A deleted record can be written again.
    let again = store.put(vec![rec("session", "a", 4)]).await.unwrap();
    assert!(again[0].version > tomb.version);
    assert_eq!(
        store.get("session", "a").await.unwrap().unwrap().data,
        json!({"v": 4})
    );
    let v = store.versions().await.unwrap();
    assert_eq!(v.latest_record_version, again[0].version);

    let err = store.put(vec![rec("session", "", 1)]).await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
}

/// Conditional writes: a stale or deleted record fails the whole batch and changes nothing.
pub async fn conditional_put(store: &dyn Store) {
    let first = store.put(vec![rec("cond", "a", 1)]).await.unwrap();
    let v1 = first[0].version;
    let second = store
        .put(vec![rec("cond", "a", 2).if_version(v1)])
        .await
        .unwrap();
    let v2 = second[0].version;
    assert!(v2 > v1);
    assert_eq!(
        store.get("cond", "a").await.unwrap().unwrap().data,
        json!({"v": 2})
    );

    // Stale: fails, and nothing of the batch is written (not even the unconditional record).
    let before = store.versions().await.unwrap();
    let err = store
        .put(vec![
            rec("cond", "b", 9),
            rec("cond", "a", 3).if_version(v1),
        ])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Conflict(_)), "{err:?}");
    let a = store.get("cond", "a").await.unwrap().unwrap();
    assert_eq!((a.version, a.data), (v2, json!({"v": 2})));
    assert!(
        store.get("cond", "b").await.unwrap().is_none(),
        "all or nothing"
    );
    assert_eq!(store.versions().await.unwrap(), before, "no version used");

    // Absent: fails.
    let err = store
        .put(vec![rec("cond", "never", 1).if_version(v2)])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Conflict(_)), "{err:?}");
    assert!(store.get("cond", "never").await.unwrap().is_none());

    // Deleted (a sign-out racing a refresh): fails, the record stays deleted, even when the
    // expected version is the one the record had before the delete.
    let tomb = store.delete("cond", "a").await.unwrap().unwrap();
    for expected in [v2, tomb.version] {
        let err = store
            .put(vec![rec("cond", "a", 4).if_version(expected)])
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Conflict(_)), "{err:?}");
        assert!(
            store.get("cond", "a").await.unwrap().is_none(),
            "stays deleted"
        );
    }
    // An unconditional write still brings it back.
    store.put(vec![rec("cond", "a", 5)]).await.unwrap();
    assert!(store.get("cond", "a").await.unwrap().is_some());
}

pub async fn query_pages(store: &dyn Store) {
    store
        .put((0..7).map(|i| rec("q", &format!("s{i}"), i)).collect())
        .await
        .unwrap();
    store.put(vec![rec("other", "x", 0)]).await.unwrap();
    store.delete("q", "s1").await.unwrap();
    let page = store
        .query(Query {
            kind: "q".into(),
            offset: 1,
            limit: 3,
        })
        .await
        .unwrap();
    assert_eq!(page.total, 6);
    let ids: Vec<_> = page.records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["s2", "s3", "s4"]);
    let past = store
        .query(Query {
            kind: "q".into(),
            offset: 100,
            limit: 3,
        })
        .await
        .unwrap();
    assert!(past.records.is_empty());
    assert_eq!(past.total, 6);
    let all = store.query(Query::of_type("q")).await.unwrap();
    assert_eq!(all.records.len(), 6);
}

pub async fn sync_follows_changes(store: &dyn Store) {
    let first = store.put(vec![rec("synced", "s1", 1)]).await.unwrap();
    let start = first[0].version - 1;
    let mut changes = store.sync(start).await.unwrap();
    let got = next_change(&mut changes, Duration::from_secs(2)).await;
    assert_eq!(got.id, "s1");

    // Caught up: the stream waits, then wakes for new writes and deletions.
    let pending = tokio::time::timeout(Duration::from_millis(100), changes.next()).await;
    assert!(pending.is_err(), "no change yet");
    store.put(vec![rec("synced", "s2", 2)]).await.unwrap();
    let got = next_change(&mut changes, Duration::from_secs(2)).await;
    assert_eq!(got.id, "s2");
    store.delete("synced", "s1").await.unwrap();
    let got = next_change(&mut changes, Duration::from_secs(2)).await;
    assert_eq!(got.id, "s1");
    assert!(got.is_deleted());

    let snapshot = store.sync_latest(Some("synced")).await.unwrap();
    let ids: Vec<_> = snapshot.records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["s2"]);
    assert_eq!(
        snapshot.versions,
        store.versions().await.unwrap(),
        "the snapshot is current"
    );
    let everything = store.sync_latest(None).await.unwrap();
    assert!(everything.records.len() >= snapshot.records.len());
}

pub async fn leases(store: &dyn Store) {
    let ttl = Duration::from_millis(300);
    assert!(store.acquire_lease("im", "a", ttl).await.unwrap());
    assert!(
        !store.acquire_lease("im", "b", ttl).await.unwrap(),
        "exclusive"
    );
    assert!(
        store.acquire_lease("im", "a", ttl).await.unwrap(),
        "re-entrant"
    );
    assert!(store.renew_lease("im", "a", ttl).await.unwrap());
    assert!(!store.renew_lease("im", "b", ttl).await.unwrap());
    assert!(!store.release_lease("im", "b").await.unwrap());
    assert!(
        store.acquire_lease("other", "b", ttl).await.unwrap(),
        "names are separate"
    );

    // Expiry: once the TTL has passed, another holder takes over and the old one cannot renew.
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    assert!(
        store.acquire_lease("im", "b", ttl).await.unwrap(),
        "takeover"
    );
    assert!(!store.renew_lease("im", "a", ttl).await.unwrap(), "lost");
    assert!(store.release_lease("im", "b").await.unwrap());
    assert!(
        store.acquire_lease("im", "a", ttl).await.unwrap(),
        "free after release"
    );
}

pub async fn full_contract(store: &dyn Store) {
    put_get_delete(store).await;
    conditional_put(store).await;
    query_pages(store).await;
    sync_follows_changes(store).await;
    leases(store).await;
}
