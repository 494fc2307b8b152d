//! Memories and their history in the database, written once for both
//! backends (`store::sql`). Two things the engines really do differently
//! stay per backend here, and only here:
//!
//! - vector search: pgvector's HNSW index in PostgreSQL; an exact scan of an
//!   in-process copy of the vectors in SQLite (`index.rs`), kept current by
//!   the writes below;
//! - metadata filters: `jsonb` operators in PostgreSQL, `json_*` functions in
//!   SQLite.
//!
//! Tenant statements run in `Database::begin_tenant`/`tenant_reads`, so in
//! PostgreSQL row-level security confines them to the org even beyond their
//! `WHERE org_id`.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::filter::{MetadataFilter, sqlite_path};
use super::index::{OrgVectors, VectorIndex};
use super::{Actor, EventKind, Memory, MemoryEvent, MemoryScope};
use crate::store::Database;
use crate::store::sql::{Arg, Backend, Row, Tx, sql};

const COLUMNS: &str = "id, text, metadata, created_at, updated_at";
const HISTORY_COLUMNS: &str = "id, memory_id, org_id, environment, event, old_text, new_text, old_metadata, \
                               new_metadata, request_id, actor_key_id, created_at";
/// History rows per multi-row INSERT when many memories go at once.
const HISTORY_BATCH: usize = 200;

/// A change to record in `memory_history`.
struct Change<'a> {
    kind: EventKind,
    memory_id: Uuid,
    old: Option<&'a Memory>,
    new: Option<&'a Memory>,
    actor: &'a Actor,
    at: DateTime<Utc>,
}

/// The storage side of [`super::MemoryService`].
#[derive(Clone)]
pub struct MemoryStore {
    db: Database,
    /// SQLite only: the vectors in process (SQLite has no vector index).
    vectors: Option<Arc<VectorIndex>>,
}

impl MemoryStore {
    pub fn new(db: Database) -> MemoryStore {
        let vectors = (db.backend() == Backend::Sqlite).then(Default::default);
        MemoryStore { db, vectors }
    }

    /// Holds the scope's in-process vectors (if any) for the duration of a
    /// write, so the index applies concurrent writes in commit order.
    async fn lock_vectors(
        &self,
        scope: &MemoryScope,
    ) -> Option<tokio::sync::OwnedRwLockWriteGuard<Option<OrgVectors>>> {
        match &self.vectors {
            Some(index) => Some(index.slot(scope).write_owned().await),
            None => None,
        }
    }

    pub async fn insert(&self, scope: &MemoryScope, m: &Memory, embedding: &[f32], actor: &Actor) -> sqlx::Result<()> {
        let mut tx = self.db.begin_tenant(&scope.org_id).await?;
        sql("INSERT INTO memories (id, org_id, environment, text, metadata, embedding, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6::vector, $7, $8)")
        .bind(m.id)
        .bind(&scope.org_id)
        .bind(scope.environment.as_str())
        .bind(&m.text)
        .bind(Arg::jsonb(&m.metadata))
        .bind(Arg::Vector(Some(embedding.to_vec())))
        .bind(m.created_at)
        .bind(m.updated_at)
        .execute(&mut tx)
        .await?;
        let change = Change { kind: EventKind::Add, memory_id: m.id, old: None, new: Some(m), actor, at: m.created_at };
        record(&mut tx, scope, &[change]).await?;
        // The id is new: no earlier write of it can race this one.
        tx.commit().await?;
        if let Some(mut slot) = self.lock_vectors(scope).await
            && let Some(vectors) = slot.as_mut()
        {
            vectors.upsert(m.id, embedding, Arc::new(m.metadata.clone()));
        }
        Ok(())
    }

    pub async fn get(&self, scope: &MemoryScope, id: Uuid) -> sqlx::Result<Option<Memory>> {
        let mut tx = self.db.tenant_reads(&scope.org_id).await?;
        let memory = select_one(&mut tx, scope, id, "").await?;
        tx.commit().await?;
        Ok(memory)
    }

    /// Replaces text and/or metadata; returns (old, new), or `None` if absent.
    #[allow(clippy::too_many_arguments)]
    pub async fn update(
        &self,
        scope: &MemoryScope,
        id: Uuid,
        text: Option<&str>,
        metadata: Option<&Map<String, Value>>,
        embedding: Option<&[f32]>,
        actor: &Actor,
    ) -> sqlx::Result<Option<(Memory, Memory)>> {
        let mut slot = self.lock_vectors(scope).await;
        let at = crate::auth::now();
        let mut tx = self.db.begin_tenant(&scope.org_id).await?;
        let Some(old) = select_one(&mut tx, scope, id, " FOR UPDATE").await? else {
            return Ok(None);
        };
        let new = Memory {
            id,
            text: text.map_or_else(|| old.text.clone(), str::to_string),
            metadata: metadata.cloned().unwrap_or_else(|| old.metadata.clone()),
            created_at: old.created_at,
            updated_at: at,
        };
        sql("UPDATE memories SET text = $1, metadata = $2, embedding = coalesce($3::vector, embedding), \
             updated_at = $4 WHERE org_id = $5 AND environment = $6 AND id = $7")
        .bind(&new.text)
        .bind(Arg::jsonb(&new.metadata))
        .bind(Arg::Vector(embedding.map(<[f32]>::to_vec)))
        .bind(at)
        .bind(&scope.org_id)
        .bind(scope.environment.as_str())
        .bind(id)
        .execute(&mut tx)
        .await?;
        let change = Change { kind: EventKind::Update, memory_id: id, old: Some(&old), new: Some(&new), actor, at };
        record(&mut tx, scope, &[change]).await?;
        tx.commit().await?;
        if let Some(vectors) = slot.as_mut().and_then(|s| s.as_mut()) {
            let metadata = Arc::new(new.metadata.clone());
            match embedding {
                Some(vector) => vectors.upsert(id, vector, metadata),
                None => vectors.set_metadata(id, metadata),
            }
        }
        Ok(Some((old, new)))
    }

    /// Deletes one memory; returns it, or `None` if absent.
    pub async fn delete(&self, scope: &MemoryScope, id: Uuid, actor: &Actor) -> sqlx::Result<Option<Memory>> {
        let mut slot = self.lock_vectors(scope).await;
        let at = crate::auth::now();
        let mut tx = self.db.begin_tenant(&scope.org_id).await?;
        let row =
            sql(format!("DELETE FROM memories WHERE org_id = $1 AND environment = $2 AND id = $3 RETURNING {COLUMNS}"))
                .bind(&scope.org_id)
                .bind(scope.environment.as_str())
                .bind(id)
                .fetch_optional(&mut tx)
                .await?;
        let Some(old) = row.as_ref().map(memory_from).transpose()? else {
            return Ok(None);
        };
        let change = Change { kind: EventKind::Delete, memory_id: id, old: Some(&old), new: None, actor, at };
        record(&mut tx, scope, &[change]).await?;
        tx.commit().await?;
        if let Some(vectors) = slot.as_mut().and_then(|s| s.as_mut()) {
            vectors.remove(id);
        }
        Ok(Some(old))
    }

    /// Newest first; `before` is the id of the last memory of the previous page.
    pub async fn list(
        &self,
        scope: &MemoryScope,
        limit: u32,
        before: Option<Uuid>,
        filter: &MetadataFilter,
    ) -> sqlx::Result<Vec<Memory>> {
        let mut text = format!("SELECT {COLUMNS} FROM memories WHERE org_id = $1 AND environment = $2");
        let mut n = 2;
        if before.is_some() {
            n += 1;
            text.push_str(&format!(" AND id < ${n}"));
        }
        let (filter_sql, filter_args) = filter_clause(self.db.backend(), filter, &mut n);
        text.push_str(&filter_sql);
        text.push_str(&format!(" ORDER BY id DESC LIMIT ${}", n + 1));
        let mut q = sql(text).bind(&scope.org_id).bind(scope.environment.as_str());
        if let Some(b) = before {
            q = q.bind(b);
        }
        for a in filter_args {
            q = q.bind(a);
        }
        let mut tx = self.db.tenant_reads(&scope.org_id).await?;
        let rows = q.bind(limit as i64).fetch_all(&mut tx).await?;
        tx.commit().await?;
        rows.iter().map(memory_from).collect()
    }

    /// Deletes every memory of the scope matching `filter`, recording a
    /// DELETE event for each. Returns how many were deleted.
    pub async fn delete_all(&self, scope: &MemoryScope, filter: &MetadataFilter, actor: &Actor) -> sqlx::Result<u64> {
        let mut slot = self.lock_vectors(scope).await;
        let at = crate::auth::now();
        let mut n = 2;
        let (filter_sql, filter_args) = filter_clause(self.db.backend(), filter, &mut n);
        let mut q =
            sql(format!("DELETE FROM memories WHERE org_id = $1 AND environment = $2{filter_sql} RETURNING {COLUMNS}"))
                .bind(&scope.org_id)
                .bind(scope.environment.as_str());
        for a in filter_args {
            q = q.bind(a);
        }
        let mut tx = self.db.begin_tenant(&scope.org_id).await?;
        let gone = q.fetch_all(&mut tx).await?.iter().map(memory_from).collect::<sqlx::Result<Vec<_>>>()?;
        let changes: Vec<Change<'_>> = gone
            .iter()
            .map(|m| Change { kind: EventKind::Delete, memory_id: m.id, old: Some(m), new: None, actor, at })
            .collect();
        for batch in changes.chunks(HISTORY_BATCH) {
            record(&mut tx, scope, batch).await?;
        }
        tx.commit().await?;
        if let Some(s) = slot.as_mut() {
            // Reloaded from the database on the next search.
            **s = None;
        }
        Ok(gone.len() as u64)
    }

    pub async fn history(&self, scope: &MemoryScope, memory_id: Uuid) -> sqlx::Result<Vec<MemoryEvent>> {
        let mut tx = self.db.tenant_reads(&scope.org_id).await?;
        let rows = sql(format!(
            "SELECT {HISTORY_COLUMNS} FROM memory_history WHERE org_id = $1 AND environment = $2 AND memory_id = $3 \
             ORDER BY created_at, id"
        ))
        .bind(&scope.org_id)
        .bind(scope.environment.as_str())
        .bind(memory_id)
        .fetch_all(&mut tx)
        .await?;
        tx.commit().await?;
        rows.iter()
            .map(|r| {
                Ok(MemoryEvent {
                    id: r.uuid_text("id")?,
                    memory_id,
                    event: EventKind::parse(&r.get::<String>("event")?),
                    old_text: r.get("old_text")?,
                    new_text: r.get("new_text")?,
                    old_metadata: r.opt_json("old_metadata")?,
                    new_metadata: r.opt_json("new_metadata")?,
                    request_id: r.get("request_id")?,
                    actor_key_id: r.get("actor_key_id")?,
                    created_at: r.time("created_at")?,
                })
            })
            .collect()
    }

    /// The `k` memories nearest to `embedding` (cosine), with their scores,
    /// best first, at or above `threshold`.
    pub async fn search(
        &self,
        scope: &MemoryScope,
        embedding: Vec<f32>,
        k: u32,
        threshold: f32,
        filter: &MetadataFilter,
    ) -> sqlx::Result<Vec<(Memory, f32)>> {
        let mut hits = match &self.vectors {
            None => self.search_pgvector(scope, &embedding, k, filter).await?,
            Some(index) => self.search_in_process(index, scope, embedding, k, threshold, filter).await?,
        };
        hits.retain(|(_, score)| *score >= threshold);
        hits.sort_by(|a, b| b.1.total_cmp(&a.1));
        Ok(hits)
    }

    /// PostgreSQL: through the HNSW index.
    async fn search_pgvector(
        &self,
        scope: &MemoryScope,
        embedding: &[f32],
        k: u32,
        filter: &MetadataFilter,
    ) -> sqlx::Result<Vec<(Memory, f32)>> {
        let mut n = 3;
        let (filter_sql, filter_args) = filter_clause(Backend::Postgres, filter, &mut n);
        let mut q = sql(format!(
            "SELECT {COLUMNS}, 1 - (embedding <=> $1::vector) AS score FROM memories \
             WHERE org_id = $2 AND environment = $3{filter_sql} ORDER BY embedding <=> $1::vector LIMIT ${}",
            n + 1
        ))
        .bind(Arg::Vector(Some(embedding.to_vec())))
        .bind(&scope.org_id)
        .bind(scope.environment.as_str());
        for a in filter_args {
            q = q.bind(a);
        }
        let mut tx = self.db.tenant_reads(&scope.org_id).await?;
        // Search wider than k, and keep scanning past rows the filters reject
        // (pgvector ≥ 0.8 iterative scans), so filtered queries still fill k.
        let ef = (k * 2).clamp(40, 1000);
        sql(format!("SET LOCAL hnsw.ef_search = {ef}")).execute(&mut tx).await?;
        sql("SET LOCAL hnsw.iterative_scan = relaxed_order").execute(&mut tx).await?;
        let rows = q.bind(k as i64).fetch_all(&mut tx).await?;
        tx.commit().await?;
        rows.iter().map(|r| Ok((memory_from(r)?, (r.get::<f64>("score")? as f32).clamp(0.0, 1.0)))).collect()
    }

    /// SQLite: an exact scan of the scope's vectors, loaded on first use.
    async fn search_in_process(
        &self,
        index: &VectorIndex,
        scope: &MemoryScope,
        query: Vec<f32>,
        k: u32,
        threshold: f32,
        filter: &MetadataFilter,
    ) -> sqlx::Result<Vec<(Memory, f32)>> {
        let slot = index.slot(scope);
        let mut guard = slot.clone().read_owned().await;
        if guard.is_none() {
            drop(guard);
            let mut write = slot.clone().write_owned().await;
            if write.is_none() {
                *write = Some(self.load_vectors(scope).await?);
            }
            guard = write.downgrade();
        }
        let filter = filter.clone();
        // The scan is CPU work: keep it off the async worker threads.
        let hits = tokio::task::spawn_blocking(move || {
            guard.as_ref().map_or_else(Vec::new, |v| v.search(&query, k as usize, threshold, &filter))
        })
        .await
        .map_err(|e| sqlx::Error::Protocol(format!("search task failed: {e}")))?;
        let ids: Vec<Uuid> = hits.iter().map(|h| h.0).collect();
        let mut rows = self.fetch_many(scope, &ids).await?;
        Ok(hits
            .into_iter()
            .filter_map(|(id, score)| {
                let i = rows.iter().position(|m| m.id == id)?;
                Some((rows.swap_remove(i), score))
            })
            .collect())
    }

    /// Rows by id, in any order.
    async fn fetch_many(&self, scope: &MemoryScope, ids: &[Uuid]) -> sqlx::Result<Vec<Memory>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let placeholders = (3..ids.len() + 3).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ");
        let mut q = sql(format!(
            "SELECT {COLUMNS} FROM memories WHERE org_id = $1 AND environment = $2 AND id IN ({placeholders})"
        ))
        .bind(&scope.org_id)
        .bind(scope.environment.as_str());
        for id in ids {
            q = q.bind(*id);
        }
        let mut tx = self.db.tenant_reads(&scope.org_id).await?;
        let rows = q.fetch_all(&mut tx).await?;
        tx.commit().await?;
        rows.iter().map(memory_from).collect()
    }

    /// Every vector of a scope, for the in-process index.
    async fn load_vectors(&self, scope: &MemoryScope) -> sqlx::Result<OrgVectors> {
        let mut index = OrgVectors::default();
        sql("SELECT id, metadata, embedding FROM memories WHERE org_id = $1 AND environment = $2")
            .bind(&scope.org_id)
            .bind(scope.environment.as_str())
            .for_each(&self.db, |r| {
                index.upsert(r.uuid("id")?, &r.vector("embedding")?, Arc::new(r.json("metadata")?));
                Ok(())
            })
            .await?;
        Ok(index)
    }
}

async fn select_one(tx: &mut Tx, scope: &MemoryScope, id: Uuid, lock: &str) -> sqlx::Result<Option<Memory>> {
    sql(format!("SELECT {COLUMNS} FROM memories WHERE org_id = $1 AND environment = $2 AND id = $3{lock}"))
        .bind(&scope.org_id)
        .bind(scope.environment.as_str())
        .bind(id)
        .fetch_optional(tx)
        .await?
        .as_ref()
        .map(memory_from)
        .transpose()
}

/// Writes history rows, one multi-row INSERT per call.
async fn record(tx: &mut Tx, scope: &MemoryScope, changes: &[Change<'_>]) -> sqlx::Result<()> {
    if changes.is_empty() {
        return Ok(());
    }
    const COLS: usize = 12;
    let values = (0..changes.len())
        .map(|row| {
            let params = (1..=COLS).map(|c| format!("${}", row * COLS + c)).collect::<Vec<_>>().join(", ");
            format!("({params})")
        })
        .collect::<Vec<_>>()
        .join(", ");
    let mut q = sql(format!("INSERT INTO memory_history ({HISTORY_COLUMNS}) VALUES {values}"));
    for c in changes {
        q = q
            .bind(Uuid::now_v7())
            .bind(c.memory_id)
            .bind(&scope.org_id)
            .bind(scope.environment.as_str())
            .bind(c.kind.as_str())
            .bind(c.old.map(|m| m.text.clone()))
            .bind(c.new.map(|m| m.text.clone()))
            .bind(Arg::Jsonb(c.old.map(|m| Value::Object(m.metadata.clone()))))
            .bind(Arg::Jsonb(c.new.map(|m| Value::Object(m.metadata.clone()))))
            .bind(&c.actor.request_id)
            .bind(&c.actor.key_id)
            .bind(c.at);
    }
    q.execute(tx).await?;
    Ok(())
}

/// ` AND …` per filter pair, numbering parameters after `n`, with their
/// values. A pair matches a scalar whose text form equals the value (see
/// `filter.rs`); the engines spell that differently.
fn filter_clause(backend: Backend, filter: &MetadataFilter, n: &mut usize) -> (String, Vec<Arg>) {
    let mut text = String::new();
    let mut args = Vec::new();
    for (key, value) in filter.pairs() {
        let (k, v) = (*n + 1, *n + 2);
        *n += 2;
        match backend {
            Backend::Postgres => {
                text.push_str(&format!(
                    " AND jsonb_typeof(metadata -> ${k}) IN ('string', 'number', 'boolean') AND metadata ->> ${k} = ${v}"
                ));
                args.push(Arg::from(key.as_str()));
            }
            Backend::Sqlite => {
                text.push_str(&format!(
                    " AND json_type(metadata, ${k}) IN ('text', 'integer', 'real', 'true', 'false') \
                     AND (CASE json_type(metadata, ${k}) WHEN 'true' THEN 'true' WHEN 'false' THEN 'false' \
                     ELSE CAST(json_extract(metadata, ${k}) AS TEXT) END) = ${v}"
                ));
                args.push(Arg::from(sqlite_path(key)));
            }
        }
        args.push(Arg::from(value.as_str()));
    }
    (text, args)
}

fn memory_from(r: &Row) -> sqlx::Result<Memory> {
    Ok(Memory {
        id: r.uuid("id")?,
        text: r.get("text")?,
        metadata: r.json("metadata")?,
        created_at: r.time("created_at")?,
        updated_at: r.time("updated_at")?,
    })
}
