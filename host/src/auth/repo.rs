//! SQL for orgs and API keys, written once for both backends (`store::sql`).

use chrono::{DateTime, Utc};

use super::{ApiKeyRecord, Environment, KeyOwner, KeyStatus, Org, Scope};
use crate::store::Database;
use crate::store::sql::{Row, Tx, sql};

const ORG_COLUMNS: &str = "id, name, plan, operator, overrides, created_at";
const KEY_COLUMNS: &str = "k.id, k.org_id, k.name, k.environment, k.prefix, k.scopes, k.status, k.expires_at, \
                           k.created_at, k.last_used_at, k.revoked_at, k.rotated_from, k.rotated_to";

pub async fn insert_org(tx: &mut Tx, org: &Org) -> sqlx::Result<()> {
    sql("INSERT INTO orgs (id, name, plan, operator, created_at) VALUES ($1, $2, $3, $4, $5)")
        .bind(&org.id)
        .bind(&org.name)
        .bind(&org.plan)
        .bind(org.operator)
        .bind(org.created_at)
        .execute(tx)
        .await?;
    Ok(())
}

/// The plan an org is on from `at` (the spans of a period come from these).
pub async fn insert_plan_change(tx: &mut Tx, org_id: &str, at: DateTime<Utc>, plan: &str) -> sqlx::Result<()> {
    sql("INSERT INTO plan_changes (org_id, effective_at, plan) VALUES ($1, $2, $3) \
         ON CONFLICT (org_id, effective_at) DO UPDATE SET plan = excluded.plan")
    .bind(org_id)
    .bind(at)
    .bind(plan)
    .execute(tx)
    .await?;
    Ok(())
}

pub async fn plan_deprecated(db: &Database, plan: &str) -> sqlx::Result<bool> {
    Ok(sql("SELECT 1 AS one FROM deprecated_plans WHERE plan = $1")
        .bind(plan)
        .fetch_optional(db.read())
        .await?
        .is_some())
}

pub async fn list_orgs(db: &Database) -> sqlx::Result<Vec<Org>> {
    let rows = sql(format!("SELECT {ORG_COLUMNS} FROM orgs ORDER BY created_at, id")).fetch_all(db.read()).await?;
    rows.iter().map(org_from).collect()
}

pub async fn get_org(db: &Database, id: &str) -> sqlx::Result<Option<Org>> {
    let row = sql(format!("SELECT {ORG_COLUMNS} FROM orgs WHERE id = $1")).bind(id).fetch_optional(db.read()).await?;
    row.as_ref().map(org_from).transpose()
}

pub async fn set_org(tx: &mut Tx, id: &str, plan: &str, overrides: &serde_json::Value) -> sqlx::Result<bool> {
    let n = sql("UPDATE orgs SET plan = $1, overrides = $2 WHERE id = $3")
        .bind(plan)
        .bind(overrides.to_string())
        .bind(id)
        .execute(tx)
        .await?;
    Ok(n == 1)
}

pub async fn insert_key(tx: &mut Tx, k: &ApiKeyRecord, hash: &str) -> sqlx::Result<()> {
    sql("INSERT INTO api_keys (id, org_id, name, environment, prefix, key_hash, scopes, status, expires_at, \
         created_at, rotated_from) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)")
    .bind(&k.id)
    .bind(&k.org_id)
    .bind(&k.name)
    .bind(k.environment.as_str())
    .bind(&k.prefix)
    .bind(hash)
    .bind(Scope::join(&k.scopes))
    .bind(k.status.as_str())
    .bind(k.expires_at)
    .bind(k.created_at)
    .bind(&k.rotated_from)
    .execute(tx)
    .await?;
    Ok(())
}

pub async fn list_keys(db: &Database, org_id: Option<&str>) -> sqlx::Result<Vec<ApiKeyRecord>> {
    let rows = sql(format!(
        "SELECT {KEY_COLUMNS} FROM api_keys k WHERE ($1::text IS NULL OR k.org_id = $1) ORDER BY k.created_at, k.id"
    ))
    .bind(org_id)
    .fetch_all(db.read())
    .await?;
    rows.iter().map(key_from).collect()
}

pub async fn get_key(db: &Database, id: &str) -> sqlx::Result<Option<ApiKeyRecord>> {
    let row =
        sql(format!("SELECT {KEY_COLUMNS} FROM api_keys k WHERE k.id = $1")).bind(id).fetch_optional(db.read()).await?;
    row.as_ref().map(key_from).transpose()
}

/// The key with this hash, its org's plan, and whether the org is an operator.
pub async fn key_by_hash(db: &Database, hash: &str) -> sqlx::Result<Option<(ApiKeyRecord, KeyOwner)>> {
    let row = sql(format!(
        "SELECT {KEY_COLUMNS}, o.plan, o.operator, o.overrides FROM api_keys k JOIN orgs o ON o.id = k.org_id \
         WHERE k.key_hash = $1"
    ))
    .bind(hash)
    .fetch_optional(db.read())
    .await?;
    row.map(|r| {
        let owner = KeyOwner {
            plan: r.get("plan")?,
            operator: r.get("operator")?,
            overrides: parse_overrides(r.get("overrides")?).to_string().into(),
        };
        Ok((key_from(&r)?, owner))
    })
    .transpose()
}

pub async fn mark_rotated(tx: &mut Tx, old_id: &str, new_id: &str, expires_at: DateTime<Utc>) -> sqlx::Result<()> {
    sql("UPDATE api_keys SET rotated_to = $1, expires_at = $2 WHERE id = $3")
        .bind(new_id)
        .bind(expires_at)
        .bind(old_id)
        .execute(tx)
        .await?;
    Ok(())
}

pub async fn set_key_status(
    tx: &mut Tx,
    id: &str,
    status: KeyStatus,
    revoked_at: Option<DateTime<Utc>>,
) -> sqlx::Result<()> {
    sql("UPDATE api_keys SET status = $1, revoked_at = $2 WHERE id = $3")
        .bind(status.as_str())
        .bind(revoked_at)
        .bind(id)
        .execute(tx)
        .await?;
    Ok(())
}

pub async fn touch_key(db: &Database, id: &str, at: DateTime<Utc>) -> sqlx::Result<()> {
    sql("UPDATE api_keys SET last_used_at = $1 WHERE id = $2").bind(at).bind(id).execute(db.write()).await?;
    Ok(())
}

fn org_from(r: &Row) -> sqlx::Result<Org> {
    Ok(Org {
        id: r.get("id")?,
        name: r.get("name")?,
        plan: r.get("plan")?,
        operator: r.get("operator")?,
        overrides: parse_overrides(r.get("overrides")?),
        created_at: r.time("created_at")?,
    })
}

/// Overrides are written only as JSON objects; anything else reads as none.
fn parse_overrides(text: String) -> serde_json::Value {
    serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .filter(|v| v.is_object())
        .unwrap_or_else(|| serde_json::json!({}))
}

fn decode_err(column: &str, value: &str) -> sqlx::Error {
    sqlx::Error::ColumnDecode { index: column.to_string(), source: format!("unexpected value `{value}`").into() }
}

fn key_from(r: &Row) -> sqlx::Result<ApiKeyRecord> {
    let env: String = r.get("environment")?;
    let scopes: String = r.get("scopes")?;
    let status: String = r.get("status")?;
    Ok(ApiKeyRecord {
        id: r.get("id")?,
        org_id: r.get("org_id")?,
        name: r.get("name")?,
        environment: Environment::parse(&env).ok_or_else(|| decode_err("environment", &env))?,
        prefix: r.get("prefix")?,
        scopes: Scope::parse_list(&scopes).map_err(|_| decode_err("scopes", &scopes))?,
        status: KeyStatus::parse(&status).ok_or_else(|| decode_err("status", &status))?,
        expires_at: r.opt_time("expires_at")?,
        created_at: r.time("created_at")?,
        last_used_at: r.opt_time("last_used_at")?,
        revoked_at: r.opt_time("revoked_at")?,
        rotated_from: r.get("rotated_from")?,
        rotated_to: r.get("rotated_to")?,
    })
}
