//! Tokens at rest: [`SealedStore`] encrypts the IdP tokens inside records before they reach
//! the backend and decrypts them on the way back, so the database (or a dump of it, or a
//! separate databroker service) only ever holds ciphertext for them.
//!
//! The top-level string fields named in [`SEALED_FIELDS`] are replaced by
//! `"sealed:v1:" + base64url(nonce ‖ AES-256-GCM ciphertext)`, bound by the associated data
//! to the record's type, id and the field name, so a sealed value copied into another record
//! does not open. Everything else stays plain JSON, so the store can still be queried. Values
//! written before sealing was turned on (no prefix) are read as they are.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use futures::StreamExt;
use rand::RngCore;
use std::time::Duration;
use tracing::warn;

use crate::{
    ChangeStream, Error, NewRecord, Query, QueryPage, Record, Snapshot, SnapshotStream, Store,
    Versions,
};

/// The HKDF `info` under which the at-rest key is derived from `shared_secret`.
pub const AT_REST_KEY_INFO: &str = "portcullis-databroker-at-rest";
/// The fields that are sealed wherever they appear at the top level of a record's data.
pub const SEALED_FIELDS: [&str; 3] = ["id_token", "access_token", "refresh_token"];

const PREFIX: &str = "sealed:v1:";
const NONCE_LEN: usize = 12;

/// A [`Store`] that seals [`SEALED_FIELDS`] in every record it writes and opens them in every
/// record it reads.
pub struct SealedStore<S> {
    inner: S,
    cipher: Aes256Gcm,
}

// === impl SealedStore ===

impl<S: Store> SealedStore<S> {
    /// `key` is 32 bytes derived from `shared_secret` with HKDF-SHA256 and
    /// [`AT_REST_KEY_INFO`]; every replica must use the same.
    pub fn new(inner: S, key: [u8; 32]) -> Self {
        Self {
            inner,
            cipher: Aes256Gcm::new(&key.into()),
        }
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    fn seal(&self, mut record: NewRecord) -> Result<NewRecord, Error> {
        if let Some(fields) = record.data.as_object_mut() {
            for name in SEALED_FIELDS {
                let Some(serde_json::Value::String(plain)) = fields.get(name) else {
                    continue;
                };
                if plain.starts_with(PREFIX) {
                    continue;
                }
                let mut nonce = [0u8; NONCE_LEN];
                rand::rngs::OsRng.fill_bytes(&mut nonce);
                let aad = associated_data(&record.kind, &record.id, name);
                let sealed = self
                    .cipher
                    .encrypt(
                        &Nonce::from(nonce),
                        Payload {
                            msg: plain.as_bytes(),
                            aad: &aad,
                        },
                    )
                    .map_err(|_| Error::InvalidArgument(format!("cannot seal {name}")))?;
                let mut blob = nonce.to_vec();
                blob.extend_from_slice(&sealed);
                let value = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(blob));
                fields.insert(name.to_owned(), serde_json::Value::String(value));
            }
        }
        Ok(record)
    }

    fn open(&self, record: Record) -> Record {
        open_record(&self.cipher, record)
    }
}

fn open_record(cipher: &Aes256Gcm, mut record: Record) -> Record {
    let (kind, id) = (record.kind.as_str(), record.id.as_str());
    if let Some(fields) = record.data.as_object_mut() {
        for name in SEALED_FIELDS {
            let Some(serde_json::Value::String(sealed)) = fields.get(name) else {
                continue;
            };
            let Some(encoded) = sealed.strip_prefix(PREFIX) else {
                continue;
            };
            let aad = associated_data(kind, id, name);
            let opened = URL_SAFE_NO_PAD
                .decode(encoded)
                .ok()
                .filter(|blob| blob.len() > NONCE_LEN)
                .and_then(|blob| {
                    let (nonce, ciphertext) = blob.split_at(NONCE_LEN);
                    let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
                    cipher
                        .decrypt(
                            &Nonce::from(nonce),
                            Payload {
                                msg: ciphertext,
                                aad: &aad,
                            },
                        )
                        .ok()
                })
                .and_then(|plain| String::from_utf8(plain).ok());
            let value = match opened {
                Some(plain) => serde_json::Value::String(plain),
                None => {
                    // Another key (a rotated shared_secret) or tampering: the token is lost,
                    // the rest of the record is still good.
                    warn!(
                        kind,
                        id,
                        field = name,
                        "sealed field does not open; dropping it"
                    );
                    serde_json::Value::Null
                }
            };
            fields.insert(name.to_owned(), value);
        }
    }
    record
}

fn associated_data(kind: &str, id: &str, field: &str) -> Vec<u8> {
    [kind.as_bytes(), id.as_bytes(), field.as_bytes()].join(&0u8)
}

impl<S> std::fmt::Debug for SealedStore<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedStore").finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl<S: Store> Store for SealedStore<S> {
    async fn get(&self, kind: &str, id: &str) -> Result<Option<Record>, Error> {
        Ok(self.inner.get(kind, id).await?.map(|r| self.open(r)))
    }

    async fn put(&self, records: Vec<NewRecord>) -> Result<Vec<Record>, Error> {
        let plain: Vec<serde_json::Value> = records.iter().map(|r| r.data.clone()).collect();
        let sealed = records
            .into_iter()
            .map(|r| self.seal(r))
            .collect::<Result<Vec<_>, _>>()?;
        let mut stored = self.inner.put(sealed).await?;
        // Hand back what the caller wrote, not the ciphertext.
        for (record, data) in stored.iter_mut().zip(plain) {
            record.data = data;
        }
        Ok(stored)
    }

    async fn delete(&self, kind: &str, id: &str) -> Result<Option<Record>, Error> {
        self.inner.delete(kind, id).await
    }

    async fn query(&self, query: Query) -> Result<QueryPage, Error> {
        let mut page = self.inner.query(query).await?;
        page.records = page.records.into_iter().map(|r| self.open(r)).collect();
        Ok(page)
    }

    async fn versions(&self) -> Result<Versions, Error> {
        self.inner.versions().await
    }

    async fn sync(&self, after: u64) -> Result<ChangeStream, Error> {
        let cipher = self.cipher.clone();
        let changes = self.inner.sync(after).await?;
        Ok(Box::pin(changes.map(move |change| {
            change.map(|r| open_record(&cipher, r))
        })))
    }

    async fn sync_latest(&self, kind: Option<&str>) -> Result<Snapshot, Error> {
        let mut snapshot = self.inner.sync_latest(kind).await?;
        snapshot.records = snapshot.records.into_iter().map(|r| self.open(r)).collect();
        Ok(snapshot)
    }

    async fn sync_latest_stream(&self, kind: Option<&str>) -> Result<SnapshotStream, Error> {
        let cipher = self.cipher.clone();
        let SnapshotStream { versions, records } = self.inner.sync_latest_stream(kind).await?;
        Ok(SnapshotStream {
            versions,
            records: Box::pin(records.map(move |r| r.map(|r| open_record(&cipher, r)))),
        })
    }

    async fn acquire_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, Error> {
        self.inner.acquire_lease(name, holder, ttl).await
    }

    async fn renew_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, Error> {
        self.inner.renew_lease(name, holder, ttl).await
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<bool, Error> {
        self.inner.release_lease(name, holder).await
    }
}

/// `Arc<dyn Store>` is a store too, so wrappers like [`SealedStore`] can take one.
#[async_trait::async_trait]
impl Store for std::sync::Arc<dyn Store> {
    async fn get(&self, kind: &str, id: &str) -> Result<Option<Record>, Error> {
        (**self).get(kind, id).await
    }
    async fn put(&self, records: Vec<NewRecord>) -> Result<Vec<Record>, Error> {
        (**self).put(records).await
    }
    async fn delete(&self, kind: &str, id: &str) -> Result<Option<Record>, Error> {
        (**self).delete(kind, id).await
    }
    async fn query(&self, query: Query) -> Result<QueryPage, Error> {
        (**self).query(query).await
    }
    async fn versions(&self) -> Result<Versions, Error> {
        (**self).versions().await
    }
    async fn sync(&self, after: u64) -> Result<ChangeStream, Error> {
        (**self).sync(after).await
    }
    async fn sync_latest(&self, kind: Option<&str>) -> Result<Snapshot, Error> {
        (**self).sync_latest(kind).await
    }
    async fn sync_latest_stream(&self, kind: Option<&str>) -> Result<SnapshotStream, Error> {
        (**self).sync_latest_stream(kind).await
    }
    async fn acquire_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, Error> {
        (**self).acquire_lease(name, holder, ttl).await
    }
    async fn renew_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, Error> {
        (**self).renew_lease(name, holder, ttl).await
    }
    async fn release_lease(&self, name: &str, holder: &str) -> Result<bool, Error> {
        (**self).release_lease(name, holder).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryStore;
    use serde_json::json;

    #[tokio::test]
    async fn conditional_writes_pass_through() {
        let store = SealedStore::new(MemoryStore::new(), [7; 32]);
        let data = json!({"refresh_token": "rt"});
        let v = store
            .put(vec![NewRecord::new("session", "s1", data.clone())])
            .await
            .unwrap()[0]
            .version;
        let stale = NewRecord::new("session", "s1", data.clone()).if_version(v + 100);
        let err = store.put(vec![stale]).await.unwrap_err();
        assert!(matches!(err, Error::Conflict(_)), "{err:?}");
        let current =
            NewRecord::new("session", "s1", json!({"refresh_token": "rt2"})).if_version(v);
        store.put(vec![current]).await.unwrap();
        store.delete("session", "s1").await.unwrap();
        let deleted = NewRecord::new("session", "s1", data).if_version(v);
        let err = store.put(vec![deleted]).await.unwrap_err();
        assert!(matches!(err, Error::Conflict(_)), "{err:?}");
        assert!(store.get("session", "s1").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn tokens_are_ciphertext_in_the_backend_and_plain_to_the_caller() {
        let backend = MemoryStore::new();
        let store = SealedStore::new(backend.clone(), [7; 32]);
        let data = json!({"user_id": "u1", "id_token": "idt", "access_token": "at", "refresh_token": "rt", "email": "a@b"});
        let put = store
            .put(vec![NewRecord::new("session", "s1", data.clone())])
            .await
            .unwrap();
        assert_eq!(put[0].data, data);
        let raw = backend.get("session", "s1").await.unwrap().unwrap();
        for field in SEALED_FIELDS {
            let v = raw.data[field].as_str().unwrap();
            assert!(v.starts_with(PREFIX), "{field} is sealed: {v}");
        }
        assert_eq!(raw.data["email"], "a@b", "other fields stay plain");
        assert_eq!(
            store.get("session", "s1").await.unwrap().unwrap().data,
            data
        );
        let mut changes = store.sync(0).await.unwrap();
        assert_eq!(changes.next().await.unwrap().unwrap().data, data);
        let snap = store.sync_latest(Some("session")).await.unwrap();
        assert_eq!(snap.records[0].data, data);
    }

    #[tokio::test]
    async fn a_sealed_value_does_not_open_under_another_key_or_record() {
        let backend = MemoryStore::new();
        let store = SealedStore::new(backend.clone(), [7; 32]);
        store
            .put(vec![NewRecord::new(
                "session",
                "s1",
                json!({"refresh_token": "rt"}),
            )])
            .await
            .unwrap();
        let other = SealedStore::new(backend.clone(), [8; 32]);
        let got = other.get("session", "s1").await.unwrap().unwrap();
        assert!(got.data["refresh_token"].is_null());

        // Copy the ciphertext into another record: it must not open there.
        let raw = backend.get("session", "s1").await.unwrap().unwrap();
        backend
            .put(vec![NewRecord::new("session", "s2", raw.data)])
            .await
            .unwrap();
        let moved = store.get("session", "s2").await.unwrap().unwrap();
        assert!(moved.data["refresh_token"].is_null());
    }

    #[tokio::test]
    async fn plain_values_from_before_sealing_are_read_as_they_are() {
        let backend = MemoryStore::new();
        backend
            .put(vec![NewRecord::new(
                "session",
                "s1",
                json!({"access_token": "old"}),
            )])
            .await
            .unwrap();
        let store = SealedStore::new(backend, [7; 32]);
        let got = store.get("session", "s1").await.unwrap().unwrap();
        assert_eq!(got.data["access_token"], "old");
    }
}
