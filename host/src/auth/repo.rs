//! SQL for orgs and API keys, one variant per backend.

use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;

use super::{ApiKeyRecord, Environment, KeyOwner, KeyStatus, Org, Scope};
use crate::store::{Database, parse_sqlite_time, safe, sqlite_time};

const KEY_COLUMNS: &str = "id, org_id, name, environment, prefix, scopes, status, expires_at, created_at, \
                           last_used_at, revoked_at, rotated_from, rotated_to";

pub async fn insert_org(db: &Database, org: &Org) -> sqlx::Result<()> {
    match db {
        Database::Sqlite(s) => {
            sqlx::query("INSERT INTO orgs (id, name, plan, operator, created_at) VALUES (?, ?, ?, ?, ?)")
                .bind(&org.id)
                .bind(&org.name)
                .bind(&org.plan)
                .bind(org.operator)
                .bind(sqlite_time(org.created_at))
                .execute(&s.write)
                .await?;
        }
        Database::Postgres(p) => {
            sqlx::query("INSERT INTO orgs (id, name, plan, operator, created_at) VALUES ($1, $2, $3, $4, $5)")
                .bind(&org.id)
                .bind(&org.name)
                .bind(&org.plan)
                .bind(org.operator)
                .bind(org.created_at)
                .execute(p)
                .await?;
        }
    }
    Ok(())
}

pub async fn list_orgs(db: &Database) -> sqlx::Result<Vec<Org>> {
    let sql = "SELECT id, name, plan, operator, overrides, created_at FROM orgs ORDER BY created_at, id";
    match db {
        Database::Sqlite(s) => sqlx::query(sql).fetch_all(&s.read).await?.iter().map(org_sqlite).collect(),
        Database::Postgres(p) => sqlx::query(sql).fetch_all(p).await?.iter().map(org_pg).collect(),
    }
}

pub async fn get_org(db: &Database, id: &str) -> sqlx::Result<Option<Org>> {
    match db {
        Database::Sqlite(s) => {
            sqlx::query("SELECT id, name, plan, operator, overrides, created_at FROM orgs WHERE id = ?")
                .bind(id)
                .fetch_optional(&s.read)
                .await?
                .as_ref()
                .map(org_sqlite)
                .transpose()
        }
        Database::Postgres(p) => {
            sqlx::query("SELECT id, name, plan, operator, overrides, created_at FROM orgs WHERE id = $1")
                .bind(id)
                .fetch_optional(p)
                .await?
                .as_ref()
                .map(org_pg)
                .transpose()
        }
    }
}

pub async fn insert_key(db: &Database, k: &ApiKeyRecord, hash: &str) -> sqlx::Result<()> {
    let scopes = Scope::join(&k.scopes);
    match db {
        Database::Sqlite(s) => {
            sqlx::query(
                "INSERT INTO api_keys (id, org_id, name, environment, prefix, key_hash, scopes, status, expires_at, \
                 created_at, rotated_from) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&k.id)
            .bind(&k.org_id)
            .bind(&k.name)
            .bind(k.environment.as_str())
            .bind(&k.prefix)
            .bind(hash)
            .bind(scopes)
            .bind(k.status.as_str())
            .bind(k.expires_at.map(sqlite_time))
            .bind(sqlite_time(k.created_at))
            .bind(&k.rotated_from)
            .execute(&s.write)
            .await?;
        }
        Database::Postgres(p) => {
            sqlx::query(
                "INSERT INTO api_keys (id, org_id, name, environment, prefix, key_hash, scopes, status, expires_at, \
                 created_at, rotated_from) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            )
            .bind(&k.id)
            .bind(&k.org_id)
            .bind(&k.name)
            .bind(k.environment.as_str())
            .bind(&k.prefix)
            .bind(hash)
            .bind(scopes)
            .bind(k.status.as_str())
            .bind(k.expires_at)
            .bind(k.created_at)
            .bind(&k.rotated_from)
            .execute(p)
            .await?;
        }
    }
    Ok(())
}

pub async fn list_keys(db: &Database, org_id: Option<&str>) -> sqlx::Result<Vec<ApiKeyRecord>> {
    match db {
        Database::Sqlite(s) => {
            let sql =
                format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE (?1 IS NULL OR org_id = ?1) ORDER BY created_at, id");
            sqlx::query(safe(sql)).bind(org_id).fetch_all(&s.read).await?.iter().map(key_sqlite).collect()
        }
        Database::Postgres(p) => {
            let sql = format!(
                "SELECT {KEY_COLUMNS} FROM api_keys WHERE ($1::text IS NULL OR org_id = $1) ORDER BY created_at, id"
            );
            sqlx::query(safe(sql)).bind(org_id).fetch_all(p).await?.iter().map(key_pg).collect()
        }
    }
}

pub async fn get_key(db: &Database, id: &str) -> sqlx::Result<Option<ApiKeyRecord>> {
    match db {
        Database::Sqlite(s) => sqlx::query(safe(format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = ?")))
            .bind(id)
            .fetch_optional(&s.read)
            .await?
            .as_ref()
            .map(key_sqlite)
            .transpose(),
        Database::Postgres(p) => sqlx::query(safe(format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1")))
            .bind(id)
            .fetch_optional(p)
            .await?
            .as_ref()
            .map(key_pg)
            .transpose(),
    }
}

/// The key with this hash, its org's plan, and whether the org is an operator.
pub async fn key_by_hash(db: &Database, hash: &str) -> sqlx::Result<Option<(ApiKeyRecord, KeyOwner)>> {
    let cols = KEY_COLUMNS.split(", ").map(|c| format!("k.{c}")).collect::<Vec<_>>().join(", ");
    match db {
        Database::Sqlite(s) => {
            let sql = format!(
                "SELECT {cols}, o.plan, o.operator, o.overrides FROM api_keys k JOIN orgs o ON o.id = k.org_id WHERE k.key_hash = ?"
            );
            let row = sqlx::query(safe(sql)).bind(hash).fetch_optional(&s.read).await?;
            row.map(|r| {
                Ok((key_sqlite(&r)?, owner(r.try_get("plan")?, r.try_get("operator")?, r.try_get("overrides")?)))
            })
            .transpose()
        }
        Database::Postgres(p) => {
            let sql = format!(
                "SELECT {cols}, o.plan, o.operator, o.overrides FROM api_keys k JOIN orgs o ON o.id = k.org_id WHERE k.key_hash = $1"
            );
            let row = sqlx::query(safe(sql)).bind(hash).fetch_optional(p).await?;
            row.map(|r| Ok((key_pg(&r)?, owner(r.try_get("plan")?, r.try_get("operator")?, r.try_get("overrides")?))))
                .transpose()
        }
    }
}

pub async fn mark_rotated(db: &Database, old_id: &str, new_id: &str, expires_at: DateTime<Utc>) -> sqlx::Result<()> {
    match db {
        Database::Sqlite(s) => {
            sqlx::query("UPDATE api_keys SET rotated_to = ?, expires_at = ? WHERE id = ?")
                .bind(new_id)
                .bind(sqlite_time(expires_at))
                .bind(old_id)
                .execute(&s.write)
                .await?;
        }
        Database::Postgres(p) => {
            sqlx::query("UPDATE api_keys SET rotated_to = $1, expires_at = $2 WHERE id = $3")
                .bind(new_id)
                .bind(expires_at)
                .bind(old_id)
                .execute(p)
                .await?;
        }
    }
    Ok(())
}

pub async fn set_key_status(
    db: &Database,
    id: &str,
    status: KeyStatus,
    revoked_at: Option<DateTime<Utc>>,
) -> sqlx::Result<()> {
    match db {
        Database::Sqlite(s) => {
            sqlx::query("UPDATE api_keys SET status = ?, revoked_at = ? WHERE id = ?")
                .bind(status.as_str())
                .bind(revoked_at.map(sqlite_time))
                .bind(id)
                .execute(&s.write)
                .await?;
        }
        Database::Postgres(p) => {
            sqlx::query("UPDATE api_keys SET status = $1, revoked_at = $2 WHERE id = $3")
                .bind(status.as_str())
                .bind(revoked_at)
                .bind(id)
                .execute(p)
                .await?;
        }
    }
    Ok(())
}

pub async fn touch_key(db: &Database, id: &str, at: DateTime<Utc>) -> sqlx::Result<()> {
    match db {
        Database::Sqlite(s) => {
            sqlx::query("UPDATE api_keys SET last_used_at = ? WHERE id = ?")
                .bind(sqlite_time(at))
                .bind(id)
                .execute(&s.write)
                .await?;
        }
        Database::Postgres(p) => {
            sqlx::query("UPDATE api_keys SET last_used_at = $1 WHERE id = $2").bind(at).bind(id).execute(p).await?;
        }
    }
    Ok(())
}

fn org_sqlite(r: &SqliteRow) -> sqlx::Result<Org> {
    Ok(Org {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        plan: r.try_get("plan")?,
        operator: r.try_get("operator")?,
        overrides: parse_overrides(r.try_get("overrides")?),
        created_at: parse_sqlite_time(r.try_get("created_at")?)?,
    })
}

fn org_pg(r: &PgRow) -> sqlx::Result<Org> {
    Ok(Org {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        plan: r.try_get("plan")?,
        operator: r.try_get("operator")?,
        overrides: parse_overrides(r.try_get("overrides")?),
        created_at: r.try_get("created_at")?,
    })
}

/// Overrides are written only as JSON objects; anything else reads as none.
fn parse_overrides(text: String) -> serde_json::Value {
    serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .filter(|v| v.is_object())
        .unwrap_or_else(|| serde_json::json!({}))
}

fn owner(plan: String, operator: bool, overrides: String) -> KeyOwner {
    KeyOwner { plan, operator, overrides: parse_overrides(overrides).to_string().into() }
}

pub async fn set_org(db: &Database, id: &str, plan: &str, overrides: &serde_json::Value) -> sqlx::Result<bool> {
    let overrides = overrides.to_string();
    let done = match db {
        Database::Sqlite(s) => sqlx::query("UPDATE orgs SET plan = ?, overrides = ? WHERE id = ?")
            .bind(plan)
            .bind(&overrides)
            .bind(id)
            .execute(&s.write)
            .await?
            .rows_affected(),
        Database::Postgres(p) => sqlx::query("UPDATE orgs SET plan = $1, overrides = $2 WHERE id = $3")
            .bind(plan)
            .bind(&overrides)
            .bind(id)
            .execute(p)
            .await?
            .rows_affected(),
    };
    Ok(done == 1)
}

fn decode_err(column: &str, value: &str) -> sqlx::Error {
    sqlx::Error::ColumnDecode { index: column.to_string(), source: format!("unexpected value `{value}`").into() }
}

fn parse_enum_columns(env: &str, scopes: &str, status: &str) -> sqlx::Result<(Environment, Vec<Scope>, KeyStatus)> {
    Ok((
        Environment::parse(env).ok_or_else(|| decode_err("environment", env))?,
        Scope::parse_list(scopes).map_err(|_| decode_err("scopes", scopes))?,
        KeyStatus::parse(status).ok_or_else(|| decode_err("status", status))?,
    ))
}

fn key_sqlite(r: &SqliteRow) -> sqlx::Result<ApiKeyRecord> {
    let (environment, scopes, status) =
        parse_enum_columns(r.try_get("environment")?, r.try_get("scopes")?, r.try_get("status")?)?;
    let opt_time = |c: &str| -> sqlx::Result<Option<DateTime<Utc>>> {
        r.try_get::<Option<String>, _>(c)?.as_deref().map(parse_sqlite_time).transpose()
    };
    Ok(ApiKeyRecord {
        id: r.try_get("id")?,
        org_id: r.try_get("org_id")?,
        name: r.try_get("name")?,
        environment,
        prefix: r.try_get("prefix")?,
        scopes,
        status,
        expires_at: opt_time("expires_at")?,
        created_at: parse_sqlite_time(r.try_get("created_at")?)?,
        last_used_at: opt_time("last_used_at")?,
        revoked_at: opt_time("revoked_at")?,
        rotated_from: r.try_get("rotated_from")?,
        rotated_to: r.try_get("rotated_to")?,
    })
}

fn key_pg(r: &PgRow) -> sqlx::Result<ApiKeyRecord> {
    let (environment, scopes, status) =
        parse_enum_columns(r.try_get("environment")?, r.try_get("scopes")?, r.try_get("status")?)?;
    Ok(ApiKeyRecord {
        id: r.try_get("id")?,
        org_id: r.try_get("org_id")?,
        name: r.try_get("name")?,
        environment,
        prefix: r.try_get("prefix")?,
        scopes,
        status,
        expires_at: r.try_get("expires_at")?,
        created_at: r.try_get("created_at")?,
        last_used_at: r.try_get("last_used_at")?,
        revoked_at: r.try_get("revoked_at")?,
        rotated_from: r.try_get("rotated_from")?,
        rotated_to: r.try_get("rotated_to")?,
    })
}
