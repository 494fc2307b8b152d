//! Database pools and migrations for both modes.
//!
//! Embedded mode uses SQLite in WAL mode with two pools: many readers and a
//! single writer (SQLite admits one writer at a time, so queueing writes in
//! our pool beats busy-waiting on the file lock). Production mode uses one
//! PostgreSQL pool; tenant queries run in a transaction that sets the org for
//! row-level security (see [`Database::tenant_tx`]).

pub mod sql;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Postgres, Transaction};

use sql::sql;

/// Where the database is: what `Database::connect` needs of the configuration.
#[derive(Debug, Clone)]
pub struct StoreConfig<'a> {
    /// `postgres://…`, `sqlite:…`, or none for SQLite under `data_dir`.
    pub database_url: Option<&'a str>,
    pub data_dir: &'a Path,
    /// PostgreSQL pool size.
    pub max_connections: u32,
}

impl StoreConfig<'_> {
    /// True when the URL selects PostgreSQL (production mode).
    pub fn is_postgres(&self) -> bool {
        is_postgres_url(self.database_url)
    }
}

pub fn is_postgres_url(url: Option<&str>) -> bool {
    url.is_some_and(|u| u.starts_with("postgres://") || u.starts_with("postgresql://"))
}

/// The database behind every domain service.
#[derive(Clone, Debug)]
pub enum Database {
    Sqlite(SqliteDb),
    Postgres(PgPool),
}

#[derive(Clone, Debug)]
pub struct SqliteDb {
    pub read: SqlitePool,
    pub write: SqlitePool,
    pub path: PathBuf,
}

/// What `memhost db info` shows.
#[derive(Debug, Serialize)]
pub struct DbInfo {
    pub backend: &'static str,
    pub location: String,
    pub server_version: String,
    pub migrations_applied: i64,
    pub orgs: i64,
    pub api_keys: i64,
    pub memories: i64,
    pub memory_history: i64,
    pub vector_extension: Option<String>,
}

impl Database {
    /// Connects as the configuration says and applies pending migrations.
    pub async fn connect(config: &StoreConfig<'_>) -> anyhow::Result<Database> {
        if config.is_postgres() {
            let url = config.database_url.unwrap_or_default();
            let pool = PgPoolOptions::new()
                .max_connections(config.max_connections)
                .acquire_timeout(Duration::from_secs(10))
                .after_connect(|_, _| {
                    Box::pin(async {
                        tcp_nodelay();
                        Ok(())
                    })
                })
                .connect(url)
                .await
                .context("connecting to PostgreSQL (DATABASE_URL)")?;
            sqlx::migrate!("../migrations/postgres")
                .run(&pool)
                .await
                .context("applying PostgreSQL migrations (is the pgvector extension installed?)")?;
            return Ok(Database::Postgres(pool));
        }

        let path = match config.database_url {
            Some(url) if url.starts_with("sqlite:") => {
                PathBuf::from(url.trim_start_matches("sqlite://").trim_start_matches("sqlite:"))
            }
            Some(other) => anyhow::bail!(
                "DATABASE_URL must start with postgres:// or sqlite: (got a URL with scheme `{}`)",
                other.split(':').next().unwrap_or("")
            ),
            None => config.data_dir.join("memhost.db"),
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).with_context(|| format!("creating data directory {}", parent.display()))?;
        }
        let options = SqliteConnectOptions::from_str("sqlite://")?
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10))
            // Reads through a memory map instead of a read() per page: the
            // full-text and row lookups of a retrieval touch thousands of
            // pages (a 100 000-memory keyword query: 42 ms instead of ~90).
            // SQLite caps it at its compile-time maximum (2 GiB).
            .pragma("mmap_size", "2147418112");
        // No ping on each acquire (sqlx's default): a connection to a local
        // file does not go stale, and the ping is a round trip to the
        // connection's thread before every statement or transaction.
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .connect_with(options.clone())
            .await
            .with_context(|| format!("opening SQLite database {}", path.display()))?;
        sqlx::migrate!("../migrations/sqlite").run(&write).await.context("applying SQLite migrations")?;
        let readers = std::thread::available_parallelism().map_or(4, |n| n.get() * 2).max(4) as u32;
        let read = SqlitePoolOptions::new()
            .max_connections(readers)
            .test_before_acquire(false)
            .connect_with(options.read_only(true))
            .await?;
        Ok(Database::Sqlite(SqliteDb { read, write, path }))
    }

    /// Opens a PostgreSQL transaction bound to one org: it runs as role
    /// `memhost_tenant` with `memhost.org_id` set, so row-level security
    /// confines every statement in it to that org. `BEGIN` and the settings
    /// travel in one round trip (a simple query may hold several statements;
    /// it cannot take parameters, hence the strict check on the org id).
    pub async fn tenant_tx(pool: &PgPool, org_id: &str) -> sqlx::Result<Transaction<'static, Postgres>> {
        if org_id.is_empty() || org_id.len() > 64 || !org_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(sqlx::Error::Protocol(format!("refusing unexpected org id {org_id:?}")));
        }
        begin_pg(
            pool,
            Some(format!(
                "BEGIN; SELECT set_config('memhost.org_id', '{org_id}', true), \
                 set_config('role', 'memhost_tenant', true)"
            )),
        )
        .await
    }

    /// A trivial query, for readiness.
    pub async fn ping(&self) -> sqlx::Result<()> {
        sql("SELECT 1").execute(self.read()).await.map(drop)
    }

    pub async fn info(&self) -> anyhow::Result<DbInfo> {
        let count = async |table: &str| -> sqlx::Result<i64> {
            sql(format!("SELECT COUNT(*) AS n FROM {table}")).fetch_one(self.read()).await?.get("n")
        };
        let (location, server_version, vector_extension) = match self {
            // Where the engines describe themselves differently.
            Database::Sqlite(db) => {
                let version: String = sql("SELECT sqlite_version() AS v").fetch_one(self.read()).await?.get("v")?;
                (db.path.display().to_string(), format!("SQLite {version}"), None)
            }
            Database::Postgres(_) => {
                let version: String = sql("SELECT version() AS v").fetch_one(self.read()).await?.get("v")?;
                let location: String = sql(
                    "SELECT current_database() || ' on ' || coalesce(inet_server_addr()::text, 'local socket') AS l",
                )
                .fetch_one(self.read())
                .await?
                .get("l")?;
                let vector = sql("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
                    .fetch_optional(self.read())
                    .await?
                    .map(|r| r.get::<String>("extversion"))
                    .transpose()?;
                let version = version.split(" on ").next().unwrap_or(&version).to_string();
                (location, version, vector.map(|v| format!("pgvector {v}")))
            }
        };
        Ok(DbInfo {
            backend: self.backend().as_str(),
            location,
            server_version,
            migrations_applied: sql("SELECT COUNT(*) AS n FROM _sqlx_migrations WHERE success")
                .fetch_one(self.read())
                .await?
                .get("n")?,
            orgs: count("orgs").await?,
            api_keys: count("api_keys").await?,
            memories: count("memories").await?,
            memory_history: count("memory_history").await?,
            vector_extension,
        })
    }

    /// Each pool's (name, open connections, idle ones), for `/metrics`.
    pub fn pool_use(&self) -> Vec<(&'static str, u32, usize)> {
        match self {
            Database::Sqlite(db) => {
                vec![
                    ("sqlite_read", db.read.size(), db.read.num_idle()),
                    ("sqlite_write", db.write.size(), db.write.num_idle()),
                ]
            }
            Database::Postgres(pool) => vec![("postgres", pool.size(), pool.num_idle())],
        }
    }

    /// Closes the pools (waits for checked-out connections to return).
    pub async fn close(&self) {
        match self {
            Database::Sqlite(db) => {
                db.read.close().await;
                db.write.close().await;
            }
            Database::Postgres(pool) => pool.close().await,
        }
    }
}

/// Turns Nagle's algorithm off on this process's TCP sockets (those that
/// have it on already ignore it; anything that is not a TCP socket refuses
/// and is skipped).
///
/// sqlx 0.9.0 no longer sets TCP_NODELAY on its connections (sqlx issues
/// #4335 and #4336, fixed upstream but not released). A message written in
/// two pieces (a statement over 16 KB is two TLS records) then waits for the
/// server's delayed ACK: measured here, 40–50 ms for a 64-event insert
/// instead of 2 ms, and the same for any memory over 16 KB. Called for every
/// new pooled connection; remove once sqlx sets it again.
pub fn tcp_nodelay() {
    #[cfg(target_os = "linux")]
    {
        let Ok(fds) = std::fs::read_dir("/proc/self/fd") else { return };
        for fd in fds.flatten().filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok())) {
            let on: libc::c_int = 1;
            // SAFETY: setsockopt reads `on` for the given length and touches
            // nothing else; on a descriptor that is not a TCP socket (or no
            // longer open) it fails with an error that is ignored.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::IPPROTO_TCP,
                    libc::TCP_NODELAY,
                    (&on as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
    }
}

/// Starts a PostgreSQL transaction (with `statement` instead of a bare
/// `BEGIN` if given) that a cancelled caller cannot leave open.
///
/// sqlx 0.9.0's `begin` counts the transaction only once the server has
/// answered `BEGIN`; dropped in between (a client hanging up mid-request
/// drops its handler), nothing rolls back, and the pool hands the connection
/// on still inside that transaction (sqlx issue #4393). Later borrowers then
/// run in it, as `memhost_tenant` with another org set, and after its first
/// error every statement on that connection fails with "current transaction
/// is aborted" until the connection is recycled. Here the begin runs in a
/// task of its own, so it always completes; if nobody awaits it anymore, the
/// finished `Transaction` is dropped there, which queues its `ROLLBACK`.
pub async fn begin_pg(pool: &PgPool, statement: Option<String>) -> sqlx::Result<Transaction<'static, Postgres>> {
    let pool = pool.clone();
    tokio::spawn(async move {
        match statement {
            Some(sql) => pool.begin_with(safe(sql)).await,
            None => pool.begin().await,
        }
    })
    .await
    .map_err(|e| sqlx::Error::Protocol(format!("transaction start failed: {e}")))?
}

/// Where other instances announce changes (plugin activations, policy
/// edits): PostgreSQL LISTEN/NOTIFY. Embedded mode has none: it is the only
/// instance. Changes are announced with [`sql::Tx::notify`].
pub struct ChangeFeed {
    pool: PgPool,
}

/// One channel of the [`ChangeFeed`].
pub struct ChangeListener(sqlx::postgres::PgListener);

impl Database {
    /// `None` in embedded mode.
    pub fn change_feed(&self) -> Option<ChangeFeed> {
        match self {
            Database::Sqlite(_) => None,
            Database::Postgres(pool) => Some(ChangeFeed { pool: pool.clone() }),
        }
    }
}

impl ChangeFeed {
    pub async fn listen(&self, channel: &str) -> sqlx::Result<ChangeListener> {
        let mut listener = sqlx::postgres::PgListener::connect_with(&self.pool).await?;
        listener.listen(channel).await?;
        Ok(ChangeListener(listener))
    }
}

impl ChangeListener {
    /// Waits for the next announcement; an error means the connection was
    /// lost (listen again).
    pub async fn next(&mut self) -> sqlx::Result<()> {
        self.0.recv().await.map(drop)
    }
}

/// Timestamps as SQLite stores them: RFC 3339 UTC with microseconds, so that
/// text order is time order.
/// A Redis connection (rate-limit counters, the response cache): connects
/// or fails fast (`timeout` per attempt, four times that in all); later
/// outages are retried by the connection manager on its own, every command
/// answering within `timeout` or failing.
pub async fn redis_connection(url: &str, timeout: Duration) -> anyhow::Result<redis::aio::ConnectionManager> {
    let client = redis::Client::open(url).map_err(|e| anyhow::anyhow!("invalid REDIS_URL: {e}"))?;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(timeout)
        .set_response_timeout(timeout)
        .set_number_of_retries(1)
        .set_max_delay(500);
    tokio::time::timeout(timeout * 4, redis::aio::ConnectionManager::new_with_config(client, config))
        .await
        .map_err(|_| anyhow::anyhow!("connecting to Redis timed out"))?
        .map_err(|e| anyhow::anyhow!("connecting to Redis: {e}"))
}

pub fn sqlite_time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// Reads a timestamp written by [`sqlite_time`].
pub fn parse_sqlite_time(s: &str) -> sqlx::Result<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| sqlx::Error::Decode(format!("bad timestamp `{s}`: {e}").into()))
}

/// Marks SQL assembled at run time as safe to run. Callers build it only from
/// static fragments and numbered placeholders; every value is bound.
pub fn safe(sql: impl Into<String>) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(sql.into())
}
