//! Plugin records and activations in the database (both backends). SQL is
//! written once with `$n` placeholders; SQLite gets `?n`, its numbered form.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Row;
use utoipa::ToSchema;

use super::kind::{LimitOverrides, PluginKind};
use crate::store::{Database, begin_pg, parse_sqlite_time, safe, sqlite_time};

/// A stored plugin (without its bytes).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PluginRecord {
    /// SHA-256 of the component (hex): the plugin's id.
    pub id: String,
    pub kind: PluginKind,
    pub name: String,
    pub version: String,
    pub wit_version: String,
    /// The SDK stamp found in the component, if it was built with memhost-sdk.
    pub sdk: Option<String>,
    /// JSON Schema of the plugin's config.
    #[schema(value_type = Object)]
    pub config_schema: serde_json::Value,
    pub limits: LimitOverrides,
    pub size_bytes: i64,
    pub uploaded_by: String,
    pub uploaded_at: DateTime<Utc>,
}

/// An activation: which plugin serves which target, with which config.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ActivationRecord {
    pub id: String,
    pub kind: PluginKind,
    /// `global`, `plan:<plan>`, `org:<org id>` or `canary`.
    pub target: String,
    pub plugin_id: String,
    #[schema(value_type = Object)]
    pub config: serde_json::Value,
    /// Canary only: the share of orgs (0–100) routed to this plugin.
    pub canary_percent: Option<i32>,
    pub activated_by: String,
    pub activated_at: DateTime<Utc>,
    pub deactivated_at: Option<DateTime<Utc>>,
}

fn sqlite_sql(sql: &str) -> String {
    sql.replace('$', "?")
}

const PLUGIN_COLS: &str =
    "digest, kind, name, version, wit_version, sdk, config_schema, limits, size_bytes, uploaded_by, uploaded_at";
const ACTIVATION_COLS: &str =
    "id, kind, target, digest, config, canary_percent, activated_by, activated_at, deactivated_at";

fn decode_kind(s: &str) -> sqlx::Result<PluginKind> {
    PluginKind::parse(s).ok_or_else(|| sqlx::Error::Decode(format!("unknown plugin kind `{s}`").into()))
}

fn decode_json<T: serde::de::DeserializeOwned>(s: &str) -> sqlx::Result<T> {
    serde_json::from_str(s).map_err(|e| sqlx::Error::Decode(e.into()))
}

macro_rules! plugin_from_row {
    ($r:expr, $time:expr) => {{
        let r = $r;
        PluginRecord {
            id: r.try_get("digest")?,
            kind: decode_kind(r.try_get::<&str, _>("kind")?)?,
            name: r.try_get("name")?,
            version: r.try_get("version")?,
            wit_version: r.try_get("wit_version")?,
            sdk: r.try_get("sdk")?,
            config_schema: decode_json(r.try_get::<&str, _>("config_schema")?)?,
            limits: decode_json(r.try_get::<&str, _>("limits")?)?,
            size_bytes: r.try_get("size_bytes")?,
            uploaded_by: r.try_get("uploaded_by")?,
            uploaded_at: $time(r, "uploaded_at")?,
        }
    }};
}

macro_rules! activation_from_row {
    ($r:expr, $time:expr, $opt_time:expr) => {{
        let r = $r;
        ActivationRecord {
            id: r.try_get("id")?,
            kind: decode_kind(r.try_get::<&str, _>("kind")?)?,
            target: r.try_get("target")?,
            plugin_id: r.try_get("digest")?,
            config: decode_json(r.try_get::<&str, _>("config")?)?,
            canary_percent: r.try_get("canary_percent")?,
            activated_by: r.try_get("activated_by")?,
            activated_at: $time(r, "activated_at")?,
            deactivated_at: $opt_time(r, "deactivated_at")?,
        }
    }};
}

fn sqlite_t(r: &sqlx::sqlite::SqliteRow, col: &str) -> sqlx::Result<DateTime<Utc>> {
    parse_sqlite_time(r.try_get::<&str, _>(col)?)
}
fn sqlite_opt_t(r: &sqlx::sqlite::SqliteRow, col: &str) -> sqlx::Result<Option<DateTime<Utc>>> {
    r.try_get::<Option<&str>, _>(col)?.map(parse_sqlite_time).transpose()
}
fn pg_t(r: &sqlx::postgres::PgRow, col: &str) -> sqlx::Result<DateTime<Utc>> {
    r.try_get(col)
}
fn pg_opt_t(r: &sqlx::postgres::PgRow, col: &str) -> sqlx::Result<Option<DateTime<Utc>>> {
    r.try_get(col)
}

pub async fn insert_plugin(db: &Database, p: &PluginRecord, wasm: &[u8]) -> sqlx::Result<()> {
    let sql = format!(
        "INSERT INTO plugins ({PLUGIN_COLS}, wasm) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
         ON CONFLICT (digest) DO NOTHING"
    );
    let schema = p.config_schema.to_string();
    let limits = serde_json::to_string(&p.limits).unwrap_or_else(|_| "{}".into());
    macro_rules! bind_all {
        ($q:expr, $t:expr) => {
            $q.bind(&p.id)
                .bind(p.kind.as_str())
                .bind(&p.name)
                .bind(&p.version)
                .bind(&p.wit_version)
                .bind(&p.sdk)
                .bind(&schema)
                .bind(&limits)
                .bind(p.size_bytes)
                .bind(&p.uploaded_by)
                .bind($t)
                .bind(wasm)
        };
    }
    match db {
        Database::Sqlite(s) => {
            bind_all!(sqlx::query(safe(sqlite_sql(&sql))), sqlite_time(p.uploaded_at)).execute(&s.write).await?;
        }
        Database::Postgres(pg) => {
            bind_all!(sqlx::query(safe(sql)), p.uploaded_at).execute(pg).await?;
        }
    }
    Ok(())
}

pub async fn list_plugins(db: &Database, kind: Option<PluginKind>) -> sqlx::Result<Vec<PluginRecord>> {
    let sql =
        format!("SELECT {PLUGIN_COLS} FROM plugins WHERE ($1 IS NULL OR kind = $1) ORDER BY uploaded_at DESC, digest");
    let kind = kind.map(|k| k.as_str());
    match db {
        Database::Sqlite(s) => {
            let rows = sqlx::query(safe(sqlite_sql(&sql))).bind(kind).fetch_all(&s.read).await?;
            rows.iter().map(|r| Ok(plugin_from_row!(r, sqlite_t))).collect()
        }
        Database::Postgres(pg) => {
            let rows =
                sqlx::query(safe(sql.replace("$1 IS NULL", "$1::text IS NULL"))).bind(kind).fetch_all(pg).await?;
            rows.iter().map(|r| Ok(plugin_from_row!(r, pg_t))).collect()
        }
    }
}

/// Plugins whose id starts with `prefix` (a full digest, or a unique prefix
/// of at least 8 characters).
pub async fn find_plugins(db: &Database, prefix: &str) -> sqlx::Result<Vec<PluginRecord>> {
    let sql = format!("SELECT {PLUGIN_COLS} FROM plugins WHERE digest LIKE $1 ORDER BY digest LIMIT 2");
    let pattern = format!("{prefix}%");
    match db {
        Database::Sqlite(s) => {
            let rows = sqlx::query(safe(sqlite_sql(&sql))).bind(pattern).fetch_all(&s.read).await?;
            rows.iter().map(|r| Ok(plugin_from_row!(r, sqlite_t))).collect()
        }
        Database::Postgres(pg) => {
            let rows = sqlx::query(safe(sql)).bind(pattern).fetch_all(pg).await?;
            rows.iter().map(|r| Ok(plugin_from_row!(r, pg_t))).collect()
        }
    }
}

pub async fn plugin_wasm(db: &Database, digest: &str) -> sqlx::Result<Option<Vec<u8>>> {
    let sql = "SELECT wasm FROM plugins WHERE digest = $1";
    match db {
        Database::Sqlite(s) => sqlx::query_scalar(safe(sqlite_sql(sql))).bind(digest).fetch_optional(&s.read).await,
        Database::Postgres(pg) => sqlx::query_scalar(sql).bind(digest).fetch_optional(pg).await,
    }
}

/// Current activations (no `deactivated_at`), or the whole history of one
/// kind and target when `history` is given.
pub async fn activations(db: &Database, history: Option<(PluginKind, &str)>) -> sqlx::Result<Vec<ActivationRecord>> {
    let (sql, kind, target) = match history {
        None => (
            format!(
                "SELECT {ACTIVATION_COLS} FROM plugin_activations WHERE deactivated_at IS NULL ORDER BY kind, target"
            ),
            None,
            None,
        ),
        Some((k, t)) => (
            format!(
                "SELECT {ACTIVATION_COLS} FROM plugin_activations WHERE kind = $1 AND target = $2 ORDER BY activated_at DESC, id DESC"
            ),
            Some(k.as_str()),
            Some(t),
        ),
    };
    match db {
        Database::Sqlite(s) => {
            let mut q = sqlx::query(safe(sqlite_sql(&sql)));
            if let (Some(k), Some(t)) = (kind, target) {
                q = q.bind(k).bind(t);
            }
            let rows = q.fetch_all(&s.read).await?;
            rows.iter().map(|r| Ok(activation_from_row!(r, sqlite_t, sqlite_opt_t))).collect()
        }
        Database::Postgres(pg) => {
            let mut q = sqlx::query(safe(sql));
            if let (Some(k), Some(t)) = (kind, target) {
                q = q.bind(k).bind(t);
            }
            let rows = q.fetch_all(pg).await?;
            rows.iter().map(|r| Ok(activation_from_row!(r, pg_t, pg_opt_t))).collect()
        }
    }
}

/// Every activation of one plugin (current first).
pub async fn activations_of(db: &Database, digest: &str) -> sqlx::Result<Vec<ActivationRecord>> {
    let sql = format!(
        "SELECT {ACTIVATION_COLS} FROM plugin_activations WHERE digest = $1 \
         ORDER BY deactivated_at IS NOT NULL, activated_at DESC"
    );
    match db {
        Database::Sqlite(s) => {
            let rows = sqlx::query(safe(sqlite_sql(&sql))).bind(digest).fetch_all(&s.read).await?;
            rows.iter().map(|r| Ok(activation_from_row!(r, sqlite_t, sqlite_opt_t))).collect()
        }
        Database::Postgres(pg) => {
            let rows = sqlx::query(safe(sql)).bind(digest).fetch_all(pg).await?;
            rows.iter().map(|r| Ok(activation_from_row!(r, pg_t, pg_opt_t))).collect()
        }
    }
}

/// Makes `a` the current activation of its kind and target, ending the
/// previous one, in one transaction; in PostgreSQL also notifies the other
/// instances (delivered at commit).
pub async fn activate(db: &Database, a: &ActivationRecord) -> sqlx::Result<()> {
    let end =
        "UPDATE plugin_activations SET deactivated_at = $1 WHERE kind = $2 AND target = $3 AND deactivated_at IS NULL";
    let insert =
        format!("INSERT INTO plugin_activations ({ACTIVATION_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL)");
    let config = a.config.to_string();
    match db {
        Database::Sqlite(s) => {
            let mut tx = s.write.begin().await?;
            let now = sqlite_time(a.activated_at);
            sqlx::query(safe(sqlite_sql(end)))
                .bind(&now)
                .bind(a.kind.as_str())
                .bind(&a.target)
                .execute(&mut *tx)
                .await?;
            sqlx::query(safe(sqlite_sql(&insert)))
                .bind(&a.id)
                .bind(a.kind.as_str())
                .bind(&a.target)
                .bind(&a.plugin_id)
                .bind(&config)
                .bind(a.canary_percent)
                .bind(&a.activated_by)
                .bind(&now)
                .execute(&mut *tx)
                .await?;
            tx.commit().await
        }
        Database::Postgres(pg) => {
            let mut tx = begin_pg(pg, None).await?;
            sqlx::query(end).bind(a.activated_at).bind(a.kind.as_str()).bind(&a.target).execute(&mut *tx).await?;
            sqlx::query(safe(insert))
                .bind(&a.id)
                .bind(a.kind.as_str())
                .bind(&a.target)
                .bind(&a.plugin_id)
                .bind(&config)
                .bind(a.canary_percent)
                .bind(&a.activated_by)
                .bind(a.activated_at)
                .execute(&mut *tx)
                .await?;
            sqlx::query("SELECT pg_notify('memhost_plugins', $1)").bind(a.kind.as_str()).execute(&mut *tx).await?;
            tx.commit().await
        }
    }
}

/// Ends the current activation of a kind and target; returns whether there was one.
pub async fn deactivate(db: &Database, kind: PluginKind, target: &str, at: DateTime<Utc>) -> sqlx::Result<bool> {
    let end =
        "UPDATE plugin_activations SET deactivated_at = $1 WHERE kind = $2 AND target = $3 AND deactivated_at IS NULL";
    let n = match db {
        Database::Sqlite(s) => sqlx::query(safe(sqlite_sql(end)))
            .bind(sqlite_time(at))
            .bind(kind.as_str())
            .bind(target)
            .execute(&s.write)
            .await?
            .rows_affected(),
        Database::Postgres(pg) => {
            let mut tx = begin_pg(pg, None).await?;
            let n = sqlx::query(end).bind(at).bind(kind.as_str()).bind(target).execute(&mut *tx).await?.rows_affected();
            sqlx::query("SELECT pg_notify('memhost_plugins', $1)").bind(kind.as_str()).execute(&mut *tx).await?;
            tx.commit().await?;
            n
        }
    };
    Ok(n > 0)
}
