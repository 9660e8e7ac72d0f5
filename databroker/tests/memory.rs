//! The store contract on the in-process backend.

mod common;

use portcullis_databroker::MemoryStore;

#[tokio::test]
async fn memory_store_keeps_the_contract() {
    common::full_contract(&MemoryStore::new()).await;
}
