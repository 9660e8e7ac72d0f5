//! The tables: created or migrated at start, and the change log compacted as it ages.
//!
//! Both run longer than a request's call may (a migration waits for a concurrent start, a
//! compaction may delete many rows), so they get [`MAINTENANCE_TIMEOUT`] instead of
//! [`super::PgOptions::timeout`], on the server too.

use std::time::Duration;

use tracing::debug;

use super::connection::db;
use super::WRITE_LOCK;
use crate::{now_millis, Error};

/// The deadline of a migration or a compaction.
pub(super) const MAINTENANCE_TIMEOUT: Duration = Duration::from_secs(60);
/// [`MAINTENANCE_TIMEOUT`] for the server, in place of the connection's own statement timeout.
const MAINTENANCE_STATEMENT_TIMEOUT: &str = "SET LOCAL statement_timeout = '60s'";

/// Schema migrations, applied in order; the index + 1 is the schema version.
pub(super) const MIGRATIONS: &[&str] = &[r#"
CREATE SEQUENCE portcullis_record_version;
CREATE TABLE portcullis_meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL);
INSERT INTO portcullis_meta (key, value) VALUES
    ('server_version', (random() * 9007199254740991)::BIGINT),
    ('compacted_through', 0);
CREATE TABLE portcullis_records (
    type        TEXT   NOT NULL,
    id          TEXT   NOT NULL,
    version     BIGINT NOT NULL,
    data        JSONB,
    modified_at BIGINT NOT NULL,
    deleted_at  BIGINT,
    PRIMARY KEY (type, id)
);
CREATE INDEX portcullis_records_tombstones ON portcullis_records (version)
    WHERE deleted_at IS NOT NULL;
CREATE TABLE portcullis_changes (
    version     BIGINT PRIMARY KEY,
    type        TEXT   NOT NULL,
    id          TEXT   NOT NULL,
    data        JSONB,
    modified_at BIGINT NOT NULL,
    deleted_at  BIGINT
);
CREATE TABLE portcullis_leases (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
"#];

/// Creates the schema or brings it up to date; concurrent starts wait for each other.
pub(super) async fn migrate(client: &mut tokio_postgres::Client) -> Result<(), Error> {
    let tx = client.transaction().await.map_err(db)?;
    tx.batch_execute(MAINTENANCE_STATEMENT_TIMEOUT)
        .await
        .map_err(db)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&(WRITE_LOCK + 1)])
        .await
        .map_err(db)?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS portcullis_schema (version INT NOT NULL)")
        .await
        .map_err(db)?;
    let current: i32 = tx
        .query_opt("SELECT version FROM portcullis_schema", &[])
        .await
        .map_err(db)?
        .map(|row| row.try_get(0))
        .transpose()
        .map_err(db)?
        .unwrap_or(0);
    let target = MIGRATIONS.len() as i32;
    if current > target {
        return Err(Error::InvalidArgument(format!(
            "the database schema (version {current}) is newer than this build knows ({target})"
        )));
    }
    for (i, migration) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        debug!(version = i + 1, "databroker: migrating schema");
        tx.batch_execute(migration).await.map_err(db)?;
    }
    if current == 0 {
        tx.execute(
            "INSERT INTO portcullis_schema (version) VALUES ($1)",
            &[&target],
        )
        .await
        .map_err(db)?;
    } else if current < target {
        tx.execute("UPDATE portcullis_schema SET version = $1", &[&target])
            .await
            .map_err(db)?;
    }
    tx.commit().await.map_err(db)
}

/// Drops changes (and tombstones) older than `retention`; returns how many changes went.
pub(super) async fn compact(
    client: &mut tokio_postgres::Client,
    retention: Duration,
) -> Result<u64, Error> {
    let cutoff = now_millis() - retention.as_millis() as i64;
    let tx = client.transaction().await.map_err(db)?;
    tx.batch_execute(MAINTENANCE_STATEMENT_TIMEOUT)
        .await
        .map_err(db)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])
        .await
        .map_err(db)?;
    let through: Option<i64> = tx
        .query_one(
            "SELECT MAX(version) FROM portcullis_changes WHERE modified_at < $1",
            &[&cutoff],
        )
        .await
        .map_err(db)?
        .try_get(0)
        .map_err(db)?;
    let Some(through) = through else {
        return Ok(0);
    };
    let removed = tx
        .execute(
            "DELETE FROM portcullis_changes WHERE version <= $1",
            &[&through],
        )
        .await
        .map_err(db)?;
    tx.execute(
        "DELETE FROM portcullis_records WHERE deleted_at IS NOT NULL AND version <= $1",
        &[&through],
    )
    .await
    .map_err(db)?;
    tx.execute(
        "UPDATE portcullis_meta SET value = GREATEST(value, $1) WHERE key = 'compacted_through'",
        &[&through],
    )
    .await
    .map_err(db)?;
    tx.commit().await.map_err(db)?;
    debug!(removed, through, "databroker: compacted the change log");
    Ok(removed)
}
