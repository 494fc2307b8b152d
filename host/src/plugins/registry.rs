//! Plugin records and activations in the database, written once for both
//! backends (`store::sql`).

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use super::kind::{LimitOverrides, PluginKind};
use crate::store::Database;
use crate::store::sql::{Row, sql};

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
    /// Canary only: a Rhai expression deciding per call whether the canary
    /// serves it (`plugins/routing.rs`), with `canary_percent` if both.
    pub routing_rule: Option<String>,
    pub activated_by: String,
    pub activated_at: DateTime<Utc>,
    pub deactivated_at: Option<DateTime<Utc>>,
}

const PLUGIN_COLS: &str =
    "digest, kind, name, version, wit_version, sdk, config_schema, limits, size_bytes, uploaded_by, uploaded_at";
const ACTIVATION_COLS: &str =
    "id, kind, target, digest, config, canary_percent, activated_by, activated_at, deactivated_at, routing_rule";
/// The change feed other instances follow (see `PluginService::follow_changes`).
pub const CHANGES: &str = "memhost_plugins";

fn decode_kind(s: &str) -> sqlx::Result<PluginKind> {
    PluginKind::parse(s).ok_or_else(|| sqlx::Error::Decode(format!("unknown plugin kind `{s}`").into()))
}

fn plugin_from(r: &Row) -> sqlx::Result<PluginRecord> {
    Ok(PluginRecord {
        id: r.get("digest")?,
        kind: decode_kind(&r.get::<String>("kind")?)?,
        name: r.get("name")?,
        version: r.get("version")?,
        wit_version: r.get("wit_version")?,
        sdk: r.get("sdk")?,
        config_schema: r.json("config_schema")?,
        limits: r.json("limits")?,
        size_bytes: r.get("size_bytes")?,
        uploaded_by: r.get("uploaded_by")?,
        uploaded_at: r.time("uploaded_at")?,
    })
}

fn activation_from(r: &Row) -> sqlx::Result<ActivationRecord> {
    Ok(ActivationRecord {
        id: r.get("id")?,
        kind: decode_kind(&r.get::<String>("kind")?)?,
        target: r.get("target")?,
        plugin_id: r.get("digest")?,
        config: r.json("config")?,
        canary_percent: r.get("canary_percent")?,
        routing_rule: r.get("routing_rule")?,
        activated_by: r.get("activated_by")?,
        activated_at: r.time("activated_at")?,
        deactivated_at: r.opt_time("deactivated_at")?,
    })
}

pub async fn insert_plugin(db: &Database, p: &PluginRecord, wasm: &[u8]) -> sqlx::Result<()> {
    sql(format!(
        "INSERT INTO plugins ({PLUGIN_COLS}, wasm) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
         ON CONFLICT (digest) DO NOTHING"
    ))
    .bind(&p.id)
    .bind(p.kind.as_str())
    .bind(&p.name)
    .bind(&p.version)
    .bind(&p.wit_version)
    .bind(&p.sdk)
    .bind(p.config_schema.to_string())
    .bind(serde_json::to_string(&p.limits).unwrap_or_else(|_| "{}".into()))
    .bind(p.size_bytes)
    .bind(&p.uploaded_by)
    .bind(p.uploaded_at)
    .bind(wasm)
    .execute(db.write())
    .await?;
    Ok(())
}

pub async fn list_plugins(db: &Database, kind: Option<PluginKind>) -> sqlx::Result<Vec<PluginRecord>> {
    let rows = sql(format!(
        "SELECT {PLUGIN_COLS} FROM plugins WHERE ($1::text IS NULL OR kind = $1) ORDER BY uploaded_at DESC, digest"
    ))
    .bind(kind.map(|k| k.as_str()))
    .fetch_all(db.read())
    .await?;
    rows.iter().map(plugin_from).collect()
}

/// Plugins whose id starts with `prefix` (a full digest, or a unique prefix
/// of at least 8 characters).
pub async fn find_plugins(db: &Database, prefix: &str) -> sqlx::Result<Vec<PluginRecord>> {
    let rows = sql(format!("SELECT {PLUGIN_COLS} FROM plugins WHERE digest LIKE $1 ORDER BY digest LIMIT 2"))
        .bind(format!("{prefix}%"))
        .fetch_all(db.read())
        .await?;
    rows.iter().map(plugin_from).collect()
}

pub async fn plugin_wasm(db: &Database, digest: &str) -> sqlx::Result<Option<Vec<u8>>> {
    let row = sql("SELECT wasm FROM plugins WHERE digest = $1").bind(digest).fetch_optional(db.read()).await?;
    row.map(|r| r.get("wasm")).transpose()
}

/// Current activations (no `deactivated_at`), or the whole history of one
/// kind and target when `history` is given (newest first).
pub async fn activations(db: &Database, history: Option<(PluginKind, &str)>) -> sqlx::Result<Vec<ActivationRecord>> {
    let q = match history {
        None => sql(format!(
            "SELECT {ACTIVATION_COLS} FROM plugin_activations WHERE deactivated_at IS NULL ORDER BY kind, target"
        )),
        Some((kind, target)) => sql(format!(
            "SELECT {ACTIVATION_COLS} FROM plugin_activations WHERE kind = $1 AND target = $2 \
             ORDER BY activated_at DESC, id DESC"
        ))
        .bind(kind.as_str())
        .bind(target),
    };
    q.fetch_all(db.read()).await?.iter().map(activation_from).collect()
}

/// Every ended activation, newest first within each kind and target (to
/// find a target's previous version).
pub async fn ended_activations(db: &Database) -> sqlx::Result<Vec<ActivationRecord>> {
    let rows = sql(format!(
        "SELECT {ACTIVATION_COLS} FROM plugin_activations WHERE deactivated_at IS NOT NULL \
         ORDER BY kind, target, activated_at DESC, id DESC"
    ))
    .fetch_all(db.read())
    .await?;
    rows.iter().map(activation_from).collect()
}

/// Every activation of one plugin (current first).
pub async fn activations_of(db: &Database, digest: &str) -> sqlx::Result<Vec<ActivationRecord>> {
    let rows = sql(format!(
        "SELECT {ACTIVATION_COLS} FROM plugin_activations WHERE digest = $1 \
         ORDER BY deactivated_at IS NOT NULL, activated_at DESC"
    ))
    .bind(digest)
    .fetch_all(db.read())
    .await?;
    rows.iter().map(activation_from).collect()
}

const END_CURRENT: &str =
    "UPDATE plugin_activations SET deactivated_at = $1 WHERE kind = $2 AND target = $3 AND deactivated_at IS NULL";

/// Makes `a` the current activation of its kind and target, ending the
/// previous one, in one transaction, and tells the other instances (on
/// commit).
pub async fn activate(db: &Database, a: &ActivationRecord) -> sqlx::Result<()> {
    let mut tx = db.begin().await?;
    sql(END_CURRENT).bind(a.activated_at).bind(a.kind.as_str()).bind(&a.target).execute(&mut tx).await?;
    sql(format!(
        "INSERT INTO plugin_activations ({ACTIVATION_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, $9)"
    ))
    .bind(&a.id)
    .bind(a.kind.as_str())
    .bind(&a.target)
    .bind(&a.plugin_id)
    .bind(a.config.to_string())
    .bind(a.canary_percent)
    .bind(&a.activated_by)
    .bind(a.activated_at)
    .bind(&a.routing_rule)
    .execute(&mut tx)
    .await?;
    tx.notify(CHANGES, a.kind.as_str()).await?;
    tx.commit().await
}

/// Ends the current activation of a kind and target; returns whether there was one.
pub async fn deactivate(db: &Database, kind: PluginKind, target: &str, at: DateTime<Utc>) -> sqlx::Result<bool> {
    let mut tx = db.begin().await?;
    let n = sql(END_CURRENT).bind(at).bind(kind.as_str()).bind(target).execute(&mut tx).await?;
    tx.notify(CHANGES, kind.as_str()).await?;
    tx.commit().await?;
    Ok(n > 0)
}
