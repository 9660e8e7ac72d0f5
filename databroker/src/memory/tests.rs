use std::time::Duration;

use futures::StreamExt;
use serde_json::json;

use super::*;

fn rec(id: &str, v: i64) -> NewRecord {
    NewRecord::new("session", id, json!({ "v": v }))
}

#[tokio::test]
async fn put_get_delete_versions_grow() {
    let store = MemoryStore::new();
    let a = store.put(vec![rec("a", 1), rec("b", 2)]).await.unwrap();
    assert_eq!(a[0].version + 1, a[1].version);
    let a2 = store.put(vec![rec("a", 3)]).await.unwrap();
    assert!(a2[0].version > a[1].version);
    let got = store.get("session", "a").await.unwrap().unwrap();
    assert_eq!(got.data, json!({"v": 3}));
    assert_eq!(got.version, a2[0].version);

    let tomb = store.delete("session", "a").await.unwrap().unwrap();
    assert!(tomb.is_deleted());
    assert!(tomb.version > a2[0].version);
    assert!(store.get("session", "a").await.unwrap().is_none());
    assert!(store.delete("session", "a").await.unwrap().is_none());
    assert!(
        store.get("user", "b").await.unwrap().is_none(),
        "types are separate"
    );
    let v = store.versions().await.unwrap();
    assert_eq!(v.latest_record_version, tomb.version);
}

#[tokio::test]
async fn empty_ids_are_refused() {
    let store = MemoryStore::new();
    let err = store.put(vec![rec("", 1)]).await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)));
}

#[tokio::test]
async fn query_pages_live_records_by_id() {
    let store = MemoryStore::new();
    store
        .put((0..5).map(|i| rec(&format!("s{i}"), i)).collect())
        .await
        .unwrap();
    store.delete("session", "s1").await.unwrap();
    let page = store
        .query(Query {
            kind: "session".into(),
            offset: 1,
            limit: 2,
        })
        .await
        .unwrap();
    assert_eq!(page.total, 4);
    let ids: Vec<_> = page.records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["s2", "s3"]);
}

#[tokio::test]
async fn sync_replays_then_follows_new_changes() {
    let store = MemoryStore::new();
    let first = store.put(vec![rec("a", 1)]).await.unwrap()[0].version;
    store.put(vec![rec("b", 1)]).await.unwrap();
    let mut changes = store.sync(first).await.unwrap();
    assert_eq!(changes.next().await.unwrap().unwrap().id, "b");

    let writer = store.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        writer.delete("session", "a").await.unwrap();
    });
    let next = tokio::time::timeout(Duration::from_secs(2), changes.next())
        .await
        .expect("a deletion wakes the follower")
        .unwrap()
        .unwrap();
    assert_eq!(next.id, "a");
    assert!(next.is_deleted());
}

#[tokio::test]
async fn sync_sees_only_latest_version_of_each_key() {
    let store = MemoryStore::new();
    store.put(vec![rec("a", 1)]).await.unwrap();
    store.put(vec![rec("a", 2)]).await.unwrap();
    let mut changes = store.sync(0).await.unwrap();
    let only = changes.next().await.unwrap().unwrap();
    assert_eq!(only.data, json!({"v": 2}));
    let pending = tokio::time::timeout(Duration::from_millis(50), changes.next()).await;
    assert!(pending.is_err(), "nothing more until a new write");
}

#[tokio::test]
async fn compacted_history_asks_for_resync() {
    let store = MemoryStore::new();
    store.put(vec![rec("a", 1)]).await.unwrap();
    let tomb = store.delete("session", "a").await.unwrap().unwrap();
    let later = tomb.modified_at + MemoryStore::TOMBSTONE_RETENTION_MS + 1;
    assert_eq!(store.compact(later), 1);
    assert!(matches!(
        store.sync(0).await.err(),
        Some(Error::Compacted { .. })
    ));
    assert!(store.sync(tomb.version).await.is_ok());
}

#[tokio::test]
async fn recreated_store_has_new_server_version() {
    let a = MemoryStore::new().versions().await.unwrap().server_version;
    let b = MemoryStore::new().versions().await.unwrap().server_version;
    assert_ne!(a, b);
}
