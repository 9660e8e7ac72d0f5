//! The PostgreSQL backend: records shared by every databroker replica on one database.
//!
//! Tables (created and migrated at start, tracked in `portcullis_schema`):
//! - `portcullis_records`: the current state, one row per (type, id), tombstones included;
//! - `portcullis_changes`: the change log that [`Store::sync`] reads, kept for
//!   [`PgOptions::change_retention`]; a follower further behind gets [`Error::Compacted`];
//! - `portcullis_meta`: `server_version` (random, set once when the schema is created) and
//!   `compacted_through`;
//! - `portcullis_leases`: named leases, timed by the database clock so replicas agree.
//!
//! Versions come from one sequence, and every write transaction first takes one advisory lock,
//! so versions become visible in commit order: a follower that has seen version `v` can never
//! later find a committed version below `v`. Each write transaction ends with `pg_notify`; every
//! replica LISTENs on a dedicated connection and wakes its change streams at once, and the
//! streams also poll every [`PgOptions::poll_interval`] in case a notification is lost.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use futures::{stream, StreamExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, NoTls, Row};
use tracing::{debug, warn};

use crate::{
    conflict, now_millis, validate, ChangeStream, Error, NewRecord, Query, QueryPage, Record,
    Snapshot, Store, Versions,
};

/// The channel every write notifies.
const CHANNEL: &str = "portcullis_changes";
/// Serialises write transactions (per database) so versions commit in order.
const WRITE_LOCK: i64 = 0x706f_7274_6375_6c6c; // "portcull"
/// How many changes one poll of a change stream reads at most.
const SYNC_BATCH: i64 = 256;

const COLUMNS: &str = "type, id, version, data, modified_at, deleted_at";

/// The store's [`Versions`] as one row (read it with [`versions_from`]): the server version, and
/// the latest record version, which a compaction that emptied the change log still counts.
const VERSIONS: &str = "SELECT \
       (SELECT value FROM portcullis_meta WHERE key = 'server_version'), \
       GREATEST( \
         (SELECT COALESCE(MAX(version), 0) FROM portcullis_changes), \
         (SELECT value FROM portcullis_meta WHERE key = 'compacted_through'))";

/// Schema migrations, applied in order; the index + 1 is the schema version.
const MIGRATIONS: &[&str] = &[r#"
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

/// Tuning of a [`PgStore`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PgOptions {
    /// How long the change log keeps changes (and the records table its tombstones).
    pub change_retention: Duration,
    /// How often the store compacts the change log.
    pub compact_interval: Duration,
    /// Change streams look for new changes this often even without a notification.
    pub poll_interval: Duration,
    /// Connections in the pool.
    pub max_connections: usize,
    /// How long to wait for a connection before answering [`Error::Unavailable`].
    pub connect_timeout: Duration,
}

/// Records in PostgreSQL; cheap to clone (all clones share one pool).
#[derive(Clone)]
pub struct PgStore {
    shared: Arc<Shared>,
}

struct Shared {
    pool: Pool,
    options: PgOptions,
    /// The latest version some replica announced; change streams wait on it.
    latest: watch::Sender<u64>,
    tasks: Vec<JoinHandle<()>>,
}

// === impl PgOptions ===

impl Default for PgOptions {
    fn default() -> Self {
        Self {
            change_retention: Duration::from_secs(60 * 60),
            compact_interval: Duration::from_secs(60),
            poll_interval: Duration::from_secs(1),
            max_connections: 16,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

impl PgOptions {
    pub fn with_change_retention(mut self, retention: Duration) -> Self {
        self.change_retention = retention;
        self
    }
}

// === impl PgStore ===

impl PgStore {
    /// Connects, creates or migrates the schema, and starts listening for other replicas'
    /// writes. `url` is a libpq-style connection string (`postgres://user@host:port/db`).
    pub async fn connect(url: &str, options: PgOptions) -> Result<Self, Error> {
        let mut config = tokio_postgres::Config::from_str(url)
            .map_err(|e| Error::InvalidArgument(format!("connection string: {e}")))?;
        config.connect_timeout(options.connect_timeout);
        if config.get_application_name().is_none() {
            config.application_name("portcullis-databroker");
        }
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.max_connections)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(options.connect_timeout))
            .create_timeout(Some(options.connect_timeout))
            .recycle_timeout(Some(options.connect_timeout))
            .build()
            .map_err(|e| Error::InvalidArgument(format!("connection pool: {e}")))?;

        migrate(&mut *conn(&pool).await?).await?;

        let (latest, _) = watch::channel(0);
        let mut store = Shared {
            pool,
            options,
            latest,
            tasks: Vec::new(),
        };
        let initial = store.versions().await?.latest_record_version;
        store.latest.send_replace(initial);

        let listener = tokio::spawn(listen(config, store.latest.clone()));
        let compactor = {
            let pool = store.pool.clone();
            let options = store.options.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(options.compact_interval);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    if let Err(e) = compact(&pool, options.change_retention).await {
                        warn!(error = %e, "databroker compaction failed; will retry");
                    }
                }
            })
        };
        store.tasks = vec![listener, compactor];
        Ok(Self {
            shared: Arc::new(store),
        })
    }

    /// Drops changes (and tombstones) older than `retention` now; returns how many changes went.
    pub async fn compact(&self, retention: Duration) -> Result<u64, Error> {
        compact(&self.shared.pool, retention).await
    }

    async fn changes_after(&self, after: u64) -> Result<Vec<Record>, Error> {
        let client = conn(&self.shared.pool).await?;
        // Read the changes first and the compaction mark second: a compaction between the two
        // then shows up as an error instead of a silent gap.
        let rows = client
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM portcullis_changes WHERE version > $1 \
                     ORDER BY version LIMIT $2"
                ),
                &[&to_i64(after)?, &SYNC_BATCH],
            )
            .await
            .map_err(db)?;
        let compacted = meta(&client, "compacted_through").await?;
        if after < compacted {
            return Err(Error::Compacted {
                requested: after,
                oldest: compacted,
            });
        }
        rows.iter().map(record).collect()
    }
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("options", &self.shared.options)
            .finish_non_exhaustive()
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Shared {
    async fn versions(&self) -> Result<Versions, Error> {
        let client = conn(&self.pool).await?;
        let row = client.query_one(VERSIONS, &[]).await.map_err(db)?;
        versions_from(&row)
    }
}

#[async_trait::async_trait]
impl Store for PgStore {
    async fn get(&self, kind: &str, id: &str) -> Result<Option<Record>, Error> {
        let client = conn(&self.shared.pool).await?;
        let row = client
            .query_opt(
                &format!(
                    "SELECT {COLUMNS} FROM portcullis_records \
                     WHERE type = $1 AND id = $2 AND deleted_at IS NULL"
                ),
                &[&kind, &id],
            )
            .await
            .map_err(db)?;
        row.as_ref().map(record).transpose()
    }

    async fn put(&self, records: Vec<NewRecord>) -> Result<Vec<Record>, Error> {
        validate(&records)?;
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let now = now_millis();
        let mut client = conn(&self.shared.pool).await?;
        let tx = client.transaction().await.map_err(db)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])
            .await
            .map_err(db)?;
        // Conditions first, in this transaction: the write lock already keeps every other
        // writer (a delete included) out until we commit, and FOR UPDATE holds the rows even
        // against a writer that skipped it. A mismatch drops the transaction: nothing written.
        for new in records.iter() {
            let Some(expected) = new.expected_version else {
                continue;
            };
            let found = tx
                .query_opt(
                    "SELECT version FROM portcullis_records \
                     WHERE type = $1 AND id = $2 AND deleted_at IS NULL FOR UPDATE",
                    &[&new.kind, &new.id],
                )
                .await
                .map_err(db)?
                .map(|row| row.try_get::<_, i64>(0).map(|v| v as u64))
                .transpose()
                .map_err(db)?;
            if found != Some(expected) {
                return Err(conflict(new, expected, found));
            }
        }
        let statement = tx
            .prepare(
                "WITH v AS (SELECT nextval('portcullis_record_version') AS version), \
                 r AS ( \
                   INSERT INTO portcullis_records (type, id, version, data, modified_at, deleted_at) \
                   SELECT $1, $2, v.version, $3, $4, NULL FROM v \
                   ON CONFLICT (type, id) DO UPDATE SET version = EXCLUDED.version, \
                     data = EXCLUDED.data, modified_at = EXCLUDED.modified_at, deleted_at = NULL \
                   RETURNING version) \
                 INSERT INTO portcullis_changes (version, type, id, data, modified_at, deleted_at) \
                 SELECT version, $1, $2, $3, $4, NULL FROM r RETURNING version",
            )
            .await
            .map_err(db)?;
        let mut stored = Vec::with_capacity(records.len());
        for new in records {
            let row = tx
                .query_one(&statement, &[&new.kind, &new.id, &new.data, &now])
                .await
                .map_err(db)?;
            stored.push(Record {
                kind: new.kind,
                id: new.id,
                version: row.try_get::<_, i64>(0).map_err(db)? as u64,
                data: new.data,
                modified_at: now,
                deleted_at: None,
            });
        }
        if let Some(last) = stored.last() {
            notify(&tx, last.version).await?;
        }
        tx.commit().await.map_err(db)?;
        Ok(stored)
    }

    async fn delete(&self, kind: &str, id: &str) -> Result<Option<Record>, Error> {
        let now = now_millis();
        let mut client = conn(&self.shared.pool).await?;
        let tx = client.transaction().await.map_err(db)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])
            .await
            .map_err(db)?;
        let row = tx
            .query_opt(
                "WITH r AS ( \
                   UPDATE portcullis_records \
                   SET version = nextval('portcullis_record_version'), data = NULL, \
                       modified_at = $3, deleted_at = $3 \
                   WHERE type = $1 AND id = $2 AND deleted_at IS NULL RETURNING version) \
                 INSERT INTO portcullis_changes (version, type, id, data, modified_at, deleted_at) \
                 SELECT version, $1, $2, NULL, $3, $3 FROM r RETURNING version",
                &[&kind, &id, &now],
            )
            .await
            .map_err(db)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let version = row.try_get::<_, i64>(0).map_err(db)? as u64;
        notify(&tx, version).await?;
        tx.commit().await.map_err(db)?;
        Ok(Some(Record {
            kind: kind.to_owned(),
            id: id.to_owned(),
            version,
            data: serde_json::Value::Null,
            modified_at: now,
            deleted_at: Some(now),
        }))
    }

    async fn query(&self, query: Query) -> Result<QueryPage, Error> {
        let client = conn(&self.shared.pool).await?;
        let limit = to_i64(query.limit.min(Query::MAX_LIMIT) as u64)?;
        let offset = to_i64(query.offset as u64)?;
        let rows = client
            .query(
                &format!(
                    "SELECT {COLUMNS}, COUNT(*) OVER () FROM portcullis_records \
                     WHERE type = $1 AND deleted_at IS NULL ORDER BY id OFFSET $2 LIMIT $3"
                ),
                &[&query.kind, &offset, &limit],
            )
            .await
            .map_err(db)?;
        let total = match rows.first() {
            Some(row) => row.try_get::<_, i64>(6).map_err(db)? as usize,
            // The page is past the end (or there is nothing): count separately.
            None => client
                .query_one(
                    "SELECT COUNT(*) FROM portcullis_records WHERE type = $1 AND deleted_at IS NULL",
                    &[&query.kind],
                )
                .await
                .map_err(db)?
                .try_get::<_, i64>(0)
                .map_err(db)? as usize,
        };
        Ok(QueryPage {
            records: rows.iter().map(record).collect::<Result<_, _>>()?,
            total,
        })
    }

    async fn versions(&self) -> Result<Versions, Error> {
        self.shared.versions().await
    }

    async fn sync(&self, after: u64) -> Result<ChangeStream, Error> {
        // Fail early (not on first poll) when the follower is too far behind or the store is down.
        let first = self.changes_after(after).await?;
        let store = self.clone();
        let latest = self.shared.latest.subscribe();
        let poll = self.shared.options.poll_interval;
        let changes = stream::unfold(
            (store, latest, after, first.into_iter(), false),
            move |(store, mut latest, mut after, mut pending, done)| async move {
                if done {
                    return None;
                }
                loop {
                    if let Some(record) = pending.next() {
                        after = record.version;
                        return Some((Ok(record), (store, latest, after, pending, false)));
                    }
                    // Mark the announced version seen before reading, so no write slips between.
                    latest.borrow_and_update();
                    match store.changes_after(after).await {
                        Err(e) => return Some((Err(e), (store, latest, after, pending, true))),
                        Ok(batch) if !batch.is_empty() => pending = batch.into_iter(),
                        Ok(_) => {
                            // The sender lives as long as the store; a timeout is the fallback poll.
                            let _ = tokio::time::timeout(poll, latest.changed()).await;
                        }
                    }
                }
            },
        );
        Ok(Box::pin(changes))
    }

    async fn sync_latest(&self, kind: Option<&str>) -> Result<Snapshot, Error> {
        let mut client = conn(&self.shared.pool).await?;
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(db)?;
        let rows = tx
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM portcullis_records \
                     WHERE deleted_at IS NULL AND ($1::TEXT IS NULL OR type = $1) ORDER BY version"
                ),
                &[&kind],
            )
            .await
            .map_err(db)?;
        let row = tx.query_one(VERSIONS, &[]).await.map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(Snapshot {
            records: rows.iter().map(record).collect::<Result<_, _>>()?,
            versions: versions_from(&row)?,
        })
    }

    async fn acquire_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, Error> {
        let client = conn(&self.shared.pool).await?;
        let row = client
            .query_opt(
                "INSERT INTO portcullis_leases (name, holder, expires_at) \
                 VALUES ($1, $2, clock_timestamp() + $3::FLOAT8 * INTERVAL '1 millisecond') \
                 ON CONFLICT (name) DO UPDATE \
                   SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at \
                   WHERE portcullis_leases.holder = EXCLUDED.holder \
                      OR portcullis_leases.expires_at <= clock_timestamp() \
                 RETURNING holder",
                &[&name, &holder, &(ttl.as_millis() as f64)],
            )
            .await
            .map_err(db)?;
        Ok(row.is_some())
    }

    async fn renew_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, Error> {
        let client = conn(&self.shared.pool).await?;
        let n = client
            .execute(
                "UPDATE portcullis_leases \
                 SET expires_at = clock_timestamp() + $3::FLOAT8 * INTERVAL '1 millisecond' \
                 WHERE name = $1 AND holder = $2 AND expires_at > clock_timestamp()",
                &[&name, &holder, &(ttl.as_millis() as f64)],
            )
            .await
            .map_err(db)?;
        Ok(n == 1)
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<bool, Error> {
        let client = conn(&self.shared.pool).await?;
        let n = client
            .execute(
                "DELETE FROM portcullis_leases WHERE name = $1 AND holder = $2",
                &[&name, &holder],
            )
            .await
            .map_err(db)?;
        Ok(n == 1)
    }
}

/// Creates the schema or brings it up to date; concurrent starts wait for each other.
async fn migrate(client: &mut tokio_postgres::Client) -> Result<(), Error> {
    let tx = client.transaction().await.map_err(db)?;
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

async fn compact(pool: &Pool, retention: Duration) -> Result<u64, Error> {
    let cutoff = now_millis() - retention.as_millis() as i64;
    let mut client = conn(pool).await?;
    let tx = client.transaction().await.map_err(db)?;
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

/// LISTENs on a dedicated connection and announces every version some replica wrote;
/// reconnects with backoff for as long as the store lives.
async fn listen(config: tokio_postgres::Config, latest: watch::Sender<u64>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match config.connect(NoTls).await {
            Ok((client, mut connection)) => {
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                let driver = tokio::spawn(async move {
                    let mut messages = stream::poll_fn(move |cx| connection.poll_message(cx));
                    while let Some(message) = messages.next().await {
                        match message {
                            Ok(AsyncMessage::Notification(n)) => {
                                let _ = tx.send(n.payload().parse::<u64>().unwrap_or(0));
                            }
                            Ok(_) => {}
                            Err(e) => {
                                warn!(error = %e, "databroker: LISTEN connection failed");
                                break;
                            }
                        }
                    }
                });
                match client.batch_execute(&format!("LISTEN {CHANNEL}")).await {
                    Ok(()) => {
                        backoff = Duration::from_millis(100);
                        // Changes made while we were not listening: wake everyone once.
                        latest.send_modify(|_| {});
                        while let Some(version) = rx.recv().await {
                            latest.send_modify(|v| *v = (*v).max(version));
                        }
                    }
                    Err(e) => warn!(error = %e, "databroker: LISTEN failed"),
                }
                driver.abort();
            }
            Err(e) => warn!(error = %e, "databroker: cannot connect to LISTEN; retrying"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn notify(tx: &tokio_postgres::Transaction<'_>, version: u64) -> Result<(), Error> {
    tx.execute(
        "SELECT pg_notify($1, $2)",
        &[&CHANNEL, &version.to_string()],
    )
    .await
    .map_err(db)?;
    Ok(())
}

async fn conn(pool: &Pool) -> Result<Object, Error> {
    pool.get()
        .await
        .map_err(|e| Error::Unavailable(format!("postgres: {e}")))
}

async fn meta(client: &Object, key: &str) -> Result<u64, Error> {
    let value: i64 = client
        .query_one("SELECT value FROM portcullis_meta WHERE key = $1", &[&key])
        .await
        .map_err(db)?
        .try_get(0)
        .map_err(db)?;
    Ok(value as u64)
}

/// A row of [`VERSIONS`].
fn versions_from(row: &Row) -> Result<Versions, Error> {
    Ok(Versions {
        server_version: row.try_get::<_, i64>(0).map_err(db)? as u64,
        latest_record_version: row.try_get::<_, i64>(1).map_err(db)? as u64,
    })
}

fn record(row: &Row) -> Result<Record, Error> {
    Ok(Record {
        kind: row.try_get(0).map_err(db)?,
        id: row.try_get(1).map_err(db)?,
        version: row.try_get::<_, i64>(2).map_err(db)? as u64,
        data: row
            .try_get::<_, Option<serde_json::Value>>(3)
            .map_err(db)?
            .unwrap_or(serde_json::Value::Null),
        modified_at: row.try_get(4).map_err(db)?,
        deleted_at: row.try_get(5).map_err(db)?,
    })
}

fn to_i64(v: u64) -> Result<i64, Error> {
    i64::try_from(v).map_err(|_| Error::InvalidArgument(format!("{v} is out of range")))
}

fn db(e: tokio_postgres::Error) -> Error {
    Error::Unavailable(format!("postgres: {e}"))
}
