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
//!
//! Every call has a deadline, [`PgOptions::timeout`], that covers waiting for a pooled
//! connection, connecting and every statement: a server that stops answering (frozen, or cut
//! off without a reset) makes calls fail with [`Error::Unavailable`] in time, so that callers
//! fail closed instead of hanging. The server enforces the same bound as `statement_timeout`,
//! so a statement the client gave up on does not go on holding locks. A connection whose call
//! ran out of time is closed, not pooled again; the pool connects anew once the server answers.
//!
//! TLS follows the connection string's `sslmode` and `sslrootcert` as libpq does ([`tls`]).

mod connection;
mod schema;
mod tls;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use futures::stream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::Row;
use tracing::warn;

use self::connection::{db, describe, listen, within};
use self::schema::{compact, migrate, MAINTENANCE_TIMEOUT};

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
    /// The deadline of every call (waiting for a pooled connection, connecting, the
    /// statements), past which it fails with [`Error::Unavailable`]; also the server's
    /// `statement_timeout` unless the connection string's `options` set one.
    pub timeout: Duration,
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
            timeout: Self::DEFAULT_TIMEOUT,
        }
    }
}

impl PgOptions {
    /// [`PgOptions::timeout`] unless changed: a caller that answers 503 on
    /// [`Error::Unavailable`] does so within 5 s even with a gRPC hop in between.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn with_change_retention(mut self, retention: Duration) -> Self {
        self.change_retention = retention;
        self
    }
}

// === impl PgStore ===

impl PgStore {
    /// Connects, creates or migrates the schema, and starts listening for other replicas'
    /// writes. `url` is a libpq-style connection string, a URL
    /// (`postgres://user@host:port/db?sslmode=verify-full`) or `key=value` words.
    pub async fn connect(url: &str, options: PgOptions) -> Result<Self, Error> {
        if options.timeout.is_zero() {
            return Err(Error::InvalidArgument(
                "the timeout must not be zero".into(),
            ));
        }
        let (url, tls) = tls::split(url)?;
        let mut config = tokio_postgres::Config::from_str(&url)
            .map_err(|e| Error::InvalidArgument(format!("connection string: {}", describe(&e))))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(options.timeout);
        }
        if config.get_application_name().is_none() {
            config.application_name("portcullis-databroker");
        }
        let statement_timeout = format!("-c statement_timeout={}", options.timeout.as_millis());
        match config.get_options() {
            Some(own) if own.contains("statement_timeout") => {}
            Some(own) => {
                let both = format!("{own} {statement_timeout}");
                config.options(&both);
            }
            None => {
                config.options(&statement_timeout);
            }
        }
        let tls = tls::connector(&tls)?;
        let manager = Manager::from_config(
            config.clone(),
            tls.clone(),
            ManagerConfig {
                // A connection that failed is closed and seen as such; one that stopped
                // answering is dropped by `within` when its call runs out of time.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.max_connections)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(options.timeout))
            .create_timeout(Some(options.timeout))
            .recycle_timeout(Some(options.timeout))
            .build()
            .map_err(|e| Error::InvalidArgument(format!("connection pool: {e}")))?;

        within(&pool, MAINTENANCE_TIMEOUT, async |client| {
            migrate(client).await
        })
        .await?;

        let (latest, _) = watch::channel(0);
        let mut store = Shared {
            pool,
            options,
            latest,
            tasks: Vec::new(),
        };
        let initial = store.versions().await?.latest_record_version;
        store.latest.send_replace(initial);

        let listener = tokio::spawn(listen(
            config,
            tls,
            store.options.timeout,
            store.latest.clone(),
        ));
        let compactor = {
            let pool = store.pool.clone();
            let options = store.options.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(options.compact_interval);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let retention = options.change_retention;
                    let compacted = within(&pool, MAINTENANCE_TIMEOUT, async |c| {
                        compact(c, retention).await
                    });
                    if let Err(e) = compacted.await {
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
        within(&self.shared.pool, MAINTENANCE_TIMEOUT, async |client| {
            compact(client, retention).await
        })
        .await
    }

    async fn changes_after(&self, after: u64) -> Result<Vec<Record>, Error> {
        self.shared
            .call(async |client| {
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
                let compacted = meta(client, "compacted_through").await?;
                if after < compacted {
                    return Err(Error::Compacted {
                        requested: after,
                        oldest: compacted,
                    });
                }
                rows.iter().map(record).collect()
            })
            .await
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
    /// Runs `call` on a pooled connection within [`PgOptions::timeout`].
    async fn call<T>(
        &self,
        call: impl AsyncFnOnce(&mut Object) -> Result<T, Error>,
    ) -> Result<T, Error> {
        within(&self.pool, self.options.timeout, call).await
    }

    async fn versions(&self) -> Result<Versions, Error> {
        self.call(async |client| {
            let row = client.query_one(VERSIONS, &[]).await.map_err(db)?;
            versions_from(&row)
        })
        .await
    }
}

#[async_trait::async_trait]
impl Store for PgStore {
    async fn get(&self, kind: &str, id: &str) -> Result<Option<Record>, Error> {
        self.shared
            .call(async |client| {
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
            })
            .await
    }

    async fn put(&self, records: Vec<NewRecord>) -> Result<Vec<Record>, Error> {
        validate(&records)?;
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let now = now_millis();
        self.shared.call(async |client| {
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
        })
        .await
    }

    async fn delete(&self, kind: &str, id: &str) -> Result<Option<Record>, Error> {
        let now = now_millis();
        self.shared.call(async |client| {
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
        })
        .await
    }

    async fn query(&self, query: Query) -> Result<QueryPage, Error> {
        self.shared.call(async |client| {
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
        })
        .await
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
        self.shared.call(async |client| {
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
        })
        .await
    }

    async fn acquire_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, Error> {
        self.shared
            .call(async |client| {
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
            })
            .await
    }

    async fn renew_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, Error> {
        self.shared
            .call(async |client| {
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
            })
            .await
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<bool, Error> {
        self.shared
            .call(async |client| {
                let n = client
                    .execute(
                        "DELETE FROM portcullis_leases WHERE name = $1 AND holder = $2",
                        &[&name, &holder],
                    )
                    .await
                    .map_err(db)?;
                Ok(n == 1)
            })
            .await
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
