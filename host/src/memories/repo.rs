//! SQL for memories and their history, one variant per backend.
//!
//! PostgreSQL statements run in [`Database::tenant_tx`], so row-level
//! security confines them to the org even beyond their `WHERE org_id`.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::types::Json;
use sqlx::{PgPool, Row, Sqlite, SqlitePool};
use uuid::Uuid;

use super::filter::{MetadataFilter, sqlite_path};
use super::index::OrgVectors;
use super::{Actor, EventKind, Memory, MemoryEvent, MemoryScope};
use crate::store::{Database, parse_sqlite_time, safe, sqlite_time};

const COLUMNS: &str = "id, text, metadata, created_at, updated_at";

/// A change to record in `memory_history`.
pub struct Change<'a> {
    pub kind: EventKind,
    pub memory_id: Uuid,
    pub old: Option<&'a Memory>,
    pub new: Option<&'a Memory>,
    pub actor: &'a Actor,
    pub at: DateTime<Utc>,
}

pub async fn insert(
    db: &Database,
    scope: &MemoryScope,
    m: &Memory,
    embedding: &[f32],
    actor: &Actor,
) -> sqlx::Result<()> {
    let change = Change { kind: EventKind::Add, memory_id: m.id, old: None, new: Some(m), actor, at: m.created_at };
    match db {
        Database::Sqlite(s) => {
            let mut tx = s.write.begin().await?;
            sqlx::query(
                "INSERT INTO memories (id, org_id, environment, text, metadata, embedding, created_at, updated_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(m.id.to_string())
            .bind(&scope.org_id)
            .bind(scope.environment.as_str())
            .bind(&m.text)
            .bind(Value::Object(m.metadata.clone()).to_string())
            .bind(vector_blob(embedding))
            .bind(sqlite_time(m.created_at))
            .bind(sqlite_time(m.updated_at))
            .execute(&mut *tx)
            .await?;
            history_sqlite(&mut tx, scope, &change).await?;
            tx.commit().await
        }
        Database::Postgres(p) => {
            let mut tx = Database::tenant_tx(p, &scope.org_id).await?;
            sqlx::query(
                "INSERT INTO memories (id, org_id, environment, text, metadata, embedding, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6::vector, $7, $8)",
            )
            .bind(m.id)
            .bind(&scope.org_id)
            .bind(scope.environment.as_str())
            .bind(&m.text)
            .bind(Json(&m.metadata))
            .bind(vector_text(embedding))
            .bind(m.created_at)
            .bind(m.updated_at)
            .execute(&mut *tx)
            .await?;
            history_pg(&mut tx, scope, &change).await?;
            tx.commit().await
        }
    }
}

pub async fn get(db: &Database, scope: &MemoryScope, id: Uuid) -> sqlx::Result<Option<Memory>> {
    match db {
        Database::Sqlite(s) => get_sqlite(&s.read, scope, id).await,
        Database::Postgres(p) => {
            let mut tx = Database::tenant_tx(p, &scope.org_id).await?;
            let memory = get_pg(&mut *tx, scope, id, false).await?;
            tx.commit().await?;
            Ok(memory)
        }
    }
}

async fn get_sqlite<'e, E: sqlx::Executor<'e, Database = Sqlite>>(
    executor: E,
    scope: &MemoryScope,
    id: Uuid,
) -> sqlx::Result<Option<Memory>> {
    sqlx::query(safe(format!("SELECT {COLUMNS} FROM memories WHERE org_id = ? AND environment = ? AND id = ?")))
        .bind(&scope.org_id)
        .bind(scope.environment.as_str())
        .bind(id.to_string())
        .fetch_optional(executor)
        .await?
        .as_ref()
        .map(memory_sqlite)
        .transpose()
}

/// One memory; `lock` takes a row lock for a following update.
async fn get_pg<'e, E: sqlx::Executor<'e, Database = sqlx::Postgres>>(
    executor: E,
    scope: &MemoryScope,
    id: Uuid,
    lock: bool,
) -> sqlx::Result<Option<Memory>> {
    let lock = if lock { " FOR UPDATE" } else { "" };
    sqlx::query(safe(format!(
        "SELECT {COLUMNS} FROM memories WHERE org_id = $1 AND environment = $2 AND id = $3{lock}"
    )))
    .bind(&scope.org_id)
    .bind(scope.environment.as_str())
    .bind(id)
    .fetch_optional(executor)
    .await?
    .as_ref()
    .map(memory_pg)
    .transpose()
}

/// Replaces text and/or metadata; returns (old, new), or `None` if absent.
pub async fn update(
    db: &Database,
    scope: &MemoryScope,
    id: Uuid,
    text: Option<&str>,
    metadata: Option<&Map<String, Value>>,
    embedding: Option<&[f32]>,
    actor: &Actor,
) -> sqlx::Result<Option<(Memory, Memory)>> {
    let at = crate::auth::now();
    let apply = |old: &Memory| Memory {
        id: old.id,
        text: text.map_or_else(|| old.text.clone(), str::to_string),
        metadata: metadata.cloned().unwrap_or_else(|| old.metadata.clone()),
        created_at: old.created_at,
        updated_at: at,
    };
    match db {
        Database::Sqlite(s) => {
            let mut tx = s.write.begin().await?;
            let Some(old) = get_sqlite(&mut *tx, scope, id).await? else {
                return Ok(None);
            };
            let new = apply(&old);
            sqlx::query(
                "UPDATE memories SET text = ?, metadata = ?, embedding = coalesce(?, embedding), updated_at = ? \
                 WHERE org_id = ? AND environment = ? AND id = ?",
            )
            .bind(&new.text)
            .bind(Value::Object(new.metadata.clone()).to_string())
            .bind(embedding.map(vector_blob))
            .bind(sqlite_time(at))
            .bind(&scope.org_id)
            .bind(scope.environment.as_str())
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
            let change = Change { kind: EventKind::Update, memory_id: id, old: Some(&old), new: Some(&new), actor, at };
            history_sqlite(&mut tx, scope, &change).await?;
            tx.commit().await?;
            Ok(Some((old, new)))
        }
        Database::Postgres(p) => {
            let mut tx = Database::tenant_tx(p, &scope.org_id).await?;
            let Some(old) = get_pg(&mut *tx, scope, id, true).await? else {
                return Ok(None);
            };
            let new = apply(&old);
            sqlx::query(
                "UPDATE memories SET text = $1, metadata = $2, embedding = coalesce($3::vector, embedding), \
                 updated_at = $4 WHERE org_id = $5 AND environment = $6 AND id = $7",
            )
            .bind(&new.text)
            .bind(Json(&new.metadata))
            .bind(embedding.map(vector_text))
            .bind(at)
            .bind(&scope.org_id)
            .bind(scope.environment.as_str())
            .bind(id)
            .execute(&mut *tx)
            .await?;
            let change = Change { kind: EventKind::Update, memory_id: id, old: Some(&old), new: Some(&new), actor, at };
            history_pg(&mut tx, scope, &change).await?;
            tx.commit().await?;
            Ok(Some((old, new)))
        }
    }
}

/// Deletes one memory; returns it, or `None` if absent.
pub async fn delete(db: &Database, scope: &MemoryScope, id: Uuid, actor: &Actor) -> sqlx::Result<Option<Memory>> {
    let at = crate::auth::now();
    match db {
        Database::Sqlite(s) => {
            let mut tx = s.write.begin().await?;
            let Some(old) = get_sqlite(&mut *tx, scope, id).await? else {
                return Ok(None);
            };
            sqlx::query("DELETE FROM memories WHERE org_id = ? AND environment = ? AND id = ?")
                .bind(&scope.org_id)
                .bind(scope.environment.as_str())
                .bind(id.to_string())
                .execute(&mut *tx)
                .await?;
            let change = Change { kind: EventKind::Delete, memory_id: id, old: Some(&old), new: None, actor, at };
            history_sqlite(&mut tx, scope, &change).await?;
            tx.commit().await?;
            Ok(Some(old))
        }
        Database::Postgres(p) => {
            let mut tx = Database::tenant_tx(p, &scope.org_id).await?;
            let row = sqlx::query(safe(format!(
                "DELETE FROM memories WHERE org_id = $1 AND environment = $2 AND id = $3 RETURNING {COLUMNS}"
            )))
            .bind(&scope.org_id)
            .bind(scope.environment.as_str())
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(old) = row.as_ref().map(memory_pg).transpose()? else {
                return Ok(None);
            };
            let change = Change { kind: EventKind::Delete, memory_id: id, old: Some(&old), new: None, actor, at };
            history_pg(&mut tx, scope, &change).await?;
            tx.commit().await?;
            Ok(Some(old))
        }
    }
}

/// Newest first; `before` is the id of the last memory of the previous page.
pub async fn list(
    db: &Database,
    scope: &MemoryScope,
    limit: u32,
    before: Option<Uuid>,
    filter: &MetadataFilter,
) -> sqlx::Result<Vec<Memory>> {
    match db {
        Database::Sqlite(s) => {
            let mut sql = format!("SELECT {COLUMNS} FROM memories WHERE org_id = ? AND environment = ?");
            if before.is_some() {
                sql.push_str(" AND id < ?");
            }
            sql.push_str(&sqlite_filter_sql(filter));
            sql.push_str(" ORDER BY id DESC LIMIT ?");
            let mut q = sqlx::query(safe(sql)).bind(&scope.org_id).bind(scope.environment.as_str());
            if let Some(b) = before {
                q = q.bind(b.to_string());
            }
            for (k, v) in filter.pairs() {
                q = q.bind(sqlite_path(k)).bind(sqlite_path(k)).bind(sqlite_path(k)).bind(v);
            }
            q.bind(limit as i64).fetch_all(&s.read).await?.iter().map(memory_sqlite).collect()
        }
        Database::Postgres(p) => {
            let mut sql = format!("SELECT {COLUMNS} FROM memories WHERE org_id = $1 AND environment = $2");
            let mut n = 2;
            if before.is_some() {
                n += 1;
                sql.push_str(&format!(" AND id < ${n}"));
            }
            sql.push_str(&pg_filter_sql(filter, &mut n));
            sql.push_str(&format!(" ORDER BY id DESC LIMIT ${}", n + 1));
            let mut q = sqlx::query(safe(sql)).bind(&scope.org_id).bind(scope.environment.as_str());
            if let Some(b) = before {
                q = q.bind(b);
            }
            for (k, v) in filter.pairs() {
                q = q.bind(k).bind(k).bind(v);
            }
            let mut tx = Database::tenant_tx(p, &scope.org_id).await?;
            let rows = q.bind(limit as i64).fetch_all(&mut *tx).await?;
            tx.commit().await?;
            rows.iter().map(memory_pg).collect()
        }
    }
}

/// Deletes every memory of the scope matching `filter`, recording a DELETE
/// event for each. Returns how many were deleted.
pub async fn delete_all(
    db: &Database,
    scope: &MemoryScope,
    filter: &MetadataFilter,
    actor: &Actor,
) -> sqlx::Result<u64> {
    let at = crate::auth::now();
    match db {
        Database::Sqlite(s) => {
            let mut tx = s.write.begin().await?;
            let cond = format!("org_id = ? AND environment = ?{}", sqlite_filter_sql(filter));
            let select_sql = format!("SELECT id FROM memories WHERE {cond}");
            let mut q =
                sqlx::query_scalar::<_, String>(safe(select_sql)).bind(&scope.org_id).bind(scope.environment.as_str());
            for (k, v) in filter.pairs() {
                q = q.bind(sqlite_path(k)).bind(sqlite_path(k)).bind(sqlite_path(k)).bind(v);
            }
            let ids = q.fetch_all(&mut *tx).await?;
            for id in &ids {
                sqlx::query(
                    "INSERT INTO memory_history (id, memory_id, org_id, environment, event, old_text, \
                     old_metadata, request_id, actor_key_id, created_at) \
                     SELECT ?, id, org_id, environment, 'DELETE', text, metadata, ?, ?, ? FROM memories WHERE id = ?",
                )
                .bind(Uuid::now_v7().to_string())
                .bind(&actor.request_id)
                .bind(&actor.key_id)
                .bind(sqlite_time(at))
                .bind(id)
                .execute(&mut *tx)
                .await?;
            }
            let delete_sql = format!("DELETE FROM memories WHERE {cond}");
            let mut q = sqlx::query(safe(delete_sql)).bind(&scope.org_id).bind(scope.environment.as_str());
            for (k, v) in filter.pairs() {
                q = q.bind(sqlite_path(k)).bind(sqlite_path(k)).bind(sqlite_path(k)).bind(v);
            }
            let n = q.execute(&mut *tx).await?.rows_affected();
            tx.commit().await?;
            Ok(n)
        }
        Database::Postgres(p) => {
            let mut n = 5;
            let cond = format!("org_id = $4 AND environment = $5{}", pg_filter_sql(filter, &mut n));
            let sql = format!(
                "WITH gone AS (DELETE FROM memories WHERE {cond} RETURNING id, org_id, environment, text, metadata) \
                 INSERT INTO memory_history (id, memory_id, org_id, environment, event, old_text, old_metadata, \
                 request_id, actor_key_id, created_at) \
                 SELECT gen_random_uuid(), id, org_id, environment, 'DELETE', text, metadata, $1, $2, $3 FROM gone"
            );
            let mut q = sqlx::query(safe(sql))
                .bind(&actor.request_id)
                .bind(&actor.key_id)
                .bind(at)
                .bind(&scope.org_id)
                .bind(scope.environment.as_str());
            for (k, v) in filter.pairs() {
                q = q.bind(k).bind(k).bind(v);
            }
            let mut tx = Database::tenant_tx(p, &scope.org_id).await?;
            let n = q.execute(&mut *tx).await?.rows_affected();
            tx.commit().await?;
            Ok(n)
        }
    }
}

pub async fn history(db: &Database, scope: &MemoryScope, memory_id: Uuid) -> sqlx::Result<Vec<MemoryEvent>> {
    const COLS: &str = "id, memory_id, event, old_text, new_text, old_metadata, new_metadata, request_id, \
                        actor_key_id, created_at";
    match db {
        Database::Sqlite(s) => {
            let rows = sqlx::query(safe(format!(
                "SELECT {COLS} FROM memory_history WHERE org_id = ? AND environment = ? AND memory_id = ? \
                 ORDER BY created_at, rowid"
            )))
            .bind(&scope.org_id)
            .bind(scope.environment.as_str())
            .bind(memory_id.to_string())
            .fetch_all(&s.read)
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(MemoryEvent {
                        id: r.try_get("id")?,
                        memory_id,
                        event: EventKind::parse(r.try_get("event")?),
                        old_text: r.try_get("old_text")?,
                        new_text: r.try_get("new_text")?,
                        old_metadata: json_col(r.try_get("old_metadata")?)?,
                        new_metadata: json_col(r.try_get("new_metadata")?)?,
                        request_id: r.try_get("request_id")?,
                        actor_key_id: r.try_get("actor_key_id")?,
                        created_at: parse_sqlite_time(r.try_get("created_at")?)?,
                    })
                })
                .collect()
        }
        Database::Postgres(p) => {
            let mut tx = Database::tenant_tx(p, &scope.org_id).await?;
            let rows = sqlx::query(safe(format!(
                "SELECT {COLS} FROM memory_history WHERE org_id = $1 AND environment = $2 AND memory_id = $3 \
                 ORDER BY created_at, id"
            )))
            .bind(&scope.org_id)
            .bind(scope.environment.as_str())
            .bind(memory_id)
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            rows.iter()
                .map(|r| {
                    Ok(MemoryEvent {
                        id: r.try_get::<Uuid, _>("id")?.to_string(),
                        memory_id,
                        event: EventKind::parse(r.try_get("event")?),
                        old_text: r.try_get("old_text")?,
                        new_text: r.try_get("new_text")?,
                        old_metadata: r.try_get::<Option<Json<Map<String, Value>>>, _>("old_metadata")?.map(|j| j.0),
                        new_metadata: r.try_get::<Option<Json<Map<String, Value>>>, _>("new_metadata")?.map(|j| j.0),
                        request_id: r.try_get("request_id")?,
                        actor_key_id: r.try_get("actor_key_id")?,
                        created_at: r.try_get("created_at")?,
                    })
                })
                .collect()
        }
    }
}

/// Rows by id (any order) from SQLite, for the hits of the in-process index.
pub async fn fetch_many_sqlite(pool: &SqlitePool, scope: &MemoryScope, ids: &[Uuid]) -> sqlx::Result<Vec<Memory>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let placeholders = vec!["?"; ids.len()].join(", ");
    let sql = format!("SELECT {COLUMNS} FROM memories WHERE org_id = ? AND environment = ? AND id IN ({placeholders})");
    let mut q = sqlx::query(safe(sql)).bind(&scope.org_id).bind(scope.environment.as_str());
    for id in ids {
        q = q.bind(id.to_string());
    }
    q.fetch_all(pool).await?.iter().map(memory_sqlite).collect()
}

/// Loads every vector of a scope into an in-process index.
pub async fn load_vectors_sqlite(pool: &SqlitePool, scope: &MemoryScope) -> sqlx::Result<OrgVectors> {
    use futures_util::TryStreamExt;
    let mut index = OrgVectors::default();
    let mut rows = sqlx::query("SELECT id, metadata, embedding FROM memories WHERE org_id = ? AND environment = ?")
        .bind(&scope.org_id)
        .bind(scope.environment.as_str())
        .fetch(pool);
    while let Some(r) = rows.try_next().await? {
        let id = parse_uuid(r.try_get("id")?)?;
        let metadata = json_obj(r.try_get("metadata")?)?;
        let blob: &[u8] = r.try_get("embedding")?;
        index.upsert(id, &blob_vector(blob), Arc::new(metadata));
    }
    Ok(index)
}

/// Nearest memories by cosine distance through the HNSW index.
pub async fn search_pg(
    pool: &PgPool,
    scope: &MemoryScope,
    embedding: &[f32],
    k: u32,
    filter: &MetadataFilter,
) -> sqlx::Result<Vec<(Memory, f32)>> {
    let mut n = 3;
    let filter_sql = pg_filter_sql(filter, &mut n);
    let sql = format!(
        "SELECT {COLUMNS}, 1 - (embedding <=> $1::vector) AS score FROM memories \
         WHERE org_id = $2 AND environment = $3{filter_sql} ORDER BY embedding <=> $1::vector LIMIT ${}",
        n + 1
    );
    let mut q =
        sqlx::query(safe(sql)).bind(vector_text(embedding)).bind(&scope.org_id).bind(scope.environment.as_str());
    for (key, v) in filter.pairs() {
        q = q.bind(key).bind(key).bind(v);
    }
    let mut tx = Database::tenant_tx(pool, &scope.org_id).await?;
    // Search wider than k, and keep scanning past rows the filters reject
    // (pgvector ≥ 0.8 iterative scans), so filtered queries still fill k.
    let ef = (k * 2).clamp(40, 1000);
    sqlx::query(safe(format!("SET LOCAL hnsw.ef_search = {ef}"))).execute(&mut *tx).await?;
    sqlx::query("SET LOCAL hnsw.iterative_scan = relaxed_order").execute(&mut *tx).await?;
    let rows = q.bind(k as i64).fetch_all(&mut *tx).await?;
    tx.commit().await?;
    rows.iter().map(|r| Ok((memory_pg(r)?, r.try_get::<f64, _>("score")? as f32))).collect()
}

async fn history_sqlite(
    tx: &mut sqlx::Transaction<'_, Sqlite>,
    scope: &MemoryScope,
    c: &Change<'_>,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO memory_history (id, memory_id, org_id, environment, event, old_text, new_text, old_metadata, \
         new_metadata, request_id, actor_key_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(Uuid::now_v7().to_string())
    .bind(c.memory_id.to_string())
    .bind(&scope.org_id)
    .bind(scope.environment.as_str())
    .bind(c.kind.as_str())
    .bind(c.old.map(|m| &m.text))
    .bind(c.new.map(|m| &m.text))
    .bind(c.old.map(|m| Value::Object(m.metadata.clone()).to_string()))
    .bind(c.new.map(|m| Value::Object(m.metadata.clone()).to_string()))
    .bind(&c.actor.request_id)
    .bind(&c.actor.key_id)
    .bind(sqlite_time(c.at))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn history_pg(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    scope: &MemoryScope,
    c: &Change<'_>,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO memory_history (id, memory_id, org_id, environment, event, old_text, new_text, old_metadata, \
         new_metadata, request_id, actor_key_id, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(Uuid::now_v7())
    .bind(c.memory_id)
    .bind(&scope.org_id)
    .bind(scope.environment.as_str())
    .bind(c.kind.as_str())
    .bind(c.old.map(|m| &m.text))
    .bind(c.new.map(|m| &m.text))
    .bind(c.old.map(|m| Json(&m.metadata)))
    .bind(c.new.map(|m| Json(&m.metadata)))
    .bind(&c.actor.request_id)
    .bind(&c.actor.key_id)
    .bind(c.at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// ` AND …` for each filter pair; binds per pair: path, path, path, value.
fn sqlite_filter_sql(filter: &MetadataFilter) -> String {
    filter
        .pairs()
        .iter()
        .map(|_| {
            " AND json_type(metadata, ?) IN ('text', 'integer', 'real', 'true', 'false') \
             AND (CASE json_type(metadata, ?) WHEN 'true' THEN 'true' WHEN 'false' THEN 'false' \
             ELSE CAST(json_extract(metadata, ?) AS TEXT) END) = ?"
        })
        .collect()
}

/// ` AND …` for each filter pair; binds per pair: key, key, value.
fn pg_filter_sql(filter: &MetadataFilter, n: &mut usize) -> String {
    let mut sql = String::new();
    for _ in filter.pairs() {
        sql.push_str(&format!(
            " AND jsonb_typeof(metadata -> ${}) IN ('string', 'number', 'boolean') AND metadata ->> ${} = ${}",
            *n + 1,
            *n + 2,
            *n + 3
        ));
        *n += 3;
    }
    sql
}

fn memory_sqlite(r: &SqliteRow) -> sqlx::Result<Memory> {
    Ok(Memory {
        id: parse_uuid(r.try_get("id")?)?,
        text: r.try_get("text")?,
        metadata: json_obj(r.try_get("metadata")?)?,
        created_at: parse_sqlite_time(r.try_get("created_at")?)?,
        updated_at: parse_sqlite_time(r.try_get("updated_at")?)?,
    })
}

fn memory_pg(r: &PgRow) -> sqlx::Result<Memory> {
    Ok(Memory {
        id: r.try_get("id")?,
        text: r.try_get("text")?,
        metadata: r.try_get::<Json<Map<String, Value>>, _>("metadata")?.0,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

fn parse_uuid(s: &str) -> sqlx::Result<Uuid> {
    Uuid::parse_str(s).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

fn json_obj(s: &str) -> sqlx::Result<Map<String, Value>> {
    serde_json::from_str(s).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

fn json_col(s: Option<String>) -> sqlx::Result<Option<Map<String, Value>>> {
    s.as_deref().map(json_obj).transpose()
}

fn vector_blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn blob_vector(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// pgvector's text form: `[0.1,0.2,…]`.
fn vector_text(v: &[f32]) -> String {
    let mut s = String::with_capacity(v.len() * 10 + 2);
    s.push('[');
    for (i, x) in v.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&x.to_string());
    }
    s.push(']');
    s
}
