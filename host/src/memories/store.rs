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

use super::filter::MemoryFilter;
use super::index::{Attributes, OrgVectors, VectorIndex};
use super::ranking::Neighbours;
use super::{Actor, Embedding, EventKind, Memory, MemoryEvent, MemoryScope, Scopes};
use crate::store::Database;
use crate::store::sql::{Arg, Backend, Row, Tx, sql};

const COLUMNS: &str = "id, text, metadata, created_at, updated_at, user_id, agent_id, app_id, run_id";
const HISTORY_COLUMNS: &str = "id, memory_id, org_id, environment, event, old_text, new_text, old_metadata, \
                               new_metadata, request_id, actor_key_id, created_at, source, op_key";
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
    /// The models stored vectors come from (all orgs): one, except while a
    /// change of embedder is being caught up with.
    models: Arc<std::sync::RwLock<Vec<String>>>,
    /// PostgreSQL only: lexeme frequencies, when they were read.
    lexeme_stats: Arc<std::sync::Mutex<Option<LexemeStats>>>,
}

type LexemeStats = (std::time::Instant, Arc<std::collections::HashMap<String, u64>>);

/// A memory whose vector another model made, to re-embed.
pub struct Stale {
    pub scope: MemoryScope,
    pub id: Uuid,
    pub text: String,
    pub model: String,
}

impl MemoryStore {
    pub fn new(db: Database) -> MemoryStore {
        let vectors = (db.backend() == Backend::Sqlite).then(Default::default);
        MemoryStore { db, vectors, models: Default::default(), lexeme_stats: Default::default() }
    }

    pub fn models_in_use(&self) -> Vec<String> {
        self.models.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn note_model(&self, model: &str) {
        if !self.models.read().unwrap_or_else(|e| e.into_inner()).iter().any(|m| m == model) {
            self.models.write().unwrap_or_else(|e| e.into_inner()).push(model.to_string());
        }
    }

    /// Reads which models the stored vectors come from (at start, and after
    /// re-embedding, when an old model may be gone).
    pub async fn refresh_models(&self) -> sqlx::Result<Vec<String>> {
        let rows = sql("SELECT DISTINCT embedding_model FROM memories").fetch_all(self.db.read()).await?;
        let models = rows.iter().map(|r| r.get::<String>("embedding_model")).collect::<sqlx::Result<Vec<_>>>()?;
        *self.models.write().unwrap_or_else(|e| e.into_inner()) = models.clone();
        Ok(models)
    }

    /// Up to `limit` memories (any org) whose vectors `old_model` made
    /// (an equality, so the index finds them however many are done).
    pub async fn stale(&self, old_model: &str, limit: u32) -> sqlx::Result<Vec<Stale>> {
        let rows = sql("SELECT id, org_id, environment, text, embedding_model FROM memories \
                        WHERE embedding_model = $1 LIMIT $2")
        .bind(old_model)
        .bind(limit as i64)
        .fetch_all(self.db.read())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Stale {
                    scope: MemoryScope {
                        org_id: r.get("org_id")?,
                        environment: crate::auth::Environment::parse(&r.get::<String>("environment")?)
                            .unwrap_or(crate::auth::Environment::Live),
                    },
                    id: r.uuid("id")?,
                    text: r.get("text")?,
                    model: r.get("embedding_model")?,
                })
            })
            .collect()
    }

    /// Up to `limit` of the scope's memories after `after`, in id order,
    /// with the model of their vectors (a re-embedding job's page).
    pub async fn page_for_reembedding(
        &self,
        scope: &MemoryScope,
        after: Option<Uuid>,
        limit: u32,
    ) -> sqlx::Result<Vec<Stale>> {
        let text = format!(
            "SELECT id, text, embedding_model FROM memories WHERE org_id = $1 AND environment = $2{} \
             ORDER BY id LIMIT $3",
            if after.is_some() { " AND id > $4" } else { "" }
        );
        let mut q = sql(text).bind(&scope.org_id).bind(scope.environment.as_str()).bind(limit as i64);
        if let Some(a) = after {
            q = q.bind(a);
        }
        let mut tx = self.db.tenant_reads(&scope.org_id).await?;
        let rows = q.fetch_all(&mut tx).await?;
        tx.commit().await?;
        rows.iter()
            .map(|r| {
                Ok(Stale {
                    scope: scope.clone(),
                    id: r.uuid("id")?,
                    text: r.get("text")?,
                    model: r.get("embedding_model")?,
                })
            })
            .collect()
    }

    pub async fn count(&self, scope: &MemoryScope) -> sqlx::Result<u64> {
        let mut tx = self.db.tenant_reads(&scope.org_id).await?;
        let row = sql("SELECT COUNT(*) AS n FROM memories WHERE org_id = $1 AND environment = $2")
            .bind(&scope.org_id)
            .bind(scope.environment.as_str())
            .fetch_one(&mut tx)
            .await?;
        tx.commit().await?;
        row.quantity("n")
    }

    /// Which of `keys` the scope's history holds (applied operations).
    pub async fn applied_ops(&self, scope: &MemoryScope, keys: &[String]) -> sqlx::Result<Vec<String>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let list = (0..keys.len()).map(|i| format!("${}", i + 2)).collect::<Vec<_>>().join(", ");
        let mut q = sql(format!("SELECT op_key FROM memory_history WHERE org_id = $1 AND op_key IN ({list})"))
            .bind(&scope.org_id);
        for k in keys {
            q = q.bind(k);
        }
        let mut tx = self.db.tenant_reads(&scope.org_id).await?;
        let rows = q.fetch_all(&mut tx).await?;
        tx.commit().await?;
        rows.iter().map(|r| r.get::<String>("op_key")).collect()
    }

    /// Replaces a stale vector, unless the memory's text or vector changed
    /// since it was read (its own write then made a current vector). Not a
    /// change of the memory: no history row, `updated_at` kept.
    pub async fn replace_vector(&self, stale: &Stale, embedding: &Embedding) -> sqlx::Result<bool> {
        let mut slot = self.lock_vectors(&stale.scope).await;
        let mut tx = self.db.begin_tenant(&stale.scope.org_id).await?;
        let done = sql("UPDATE memories SET embedding = $1::vector, embedding_model = $2 \
                        WHERE org_id = $3 AND environment = $4 AND id = $5 AND embedding_model = $6 AND text = $7")
        .bind(Arg::Vector(Some(embedding.vector.clone())))
        .bind(&embedding.model)
        .bind(&stale.scope.org_id)
        .bind(stale.scope.environment.as_str())
        .bind(stale.id)
        .bind(&stale.model)
        .bind(&stale.text)
        .execute(&mut tx)
        .await?
            > 0;
        tx.commit().await?;
        self.note_model(&embedding.model);
        if done && let Some(vectors) = slot.as_mut().and_then(|s| s.as_mut()) {
            vectors.set_vector(stale.id, &embedding.vector, &embedding.model);
        }
        Ok(done)
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

    pub async fn insert(
        &self,
        scope: &MemoryScope,
        m: &Memory,
        embedding: &Embedding,
        actor: &Actor,
    ) -> sqlx::Result<()> {
        let mut tx = self.db.begin_tenant(&scope.org_id).await?;
        sql("INSERT INTO memories (id, org_id, environment, text, metadata, embedding, embedding_model, \
             created_at, updated_at, user_id, agent_id, app_id, run_id) \
             VALUES ($1, $2, $3, $4, $5, $6::vector, $7, $8, $9, $10, $11, $12, $13)")
        .bind(m.id)
        .bind(&scope.org_id)
        .bind(scope.environment.as_str())
        .bind(&m.text)
        .bind(Arg::jsonb(&m.metadata))
        .bind(Arg::Vector(Some(embedding.vector.clone())))
        .bind(&embedding.model)
        .bind(m.created_at)
        .bind(m.updated_at)
        .bind(&m.scopes.user_id)
        .bind(&m.scopes.agent_id)
        .bind(&m.scopes.app_id)
        .bind(&m.scopes.run_id)
        .execute(&mut tx)
        .await?;
        let change = Change { kind: EventKind::Add, memory_id: m.id, old: None, new: Some(m), actor, at: m.created_at };
        record(&mut tx, scope, &[change]).await?;
        // The id is new: no earlier write of it can race this one.
        tx.commit().await?;
        self.note_model(&embedding.model);
        if let Some(mut slot) = self.lock_vectors(scope).await
            && let Some(vectors) = slot.as_mut()
        {
            vectors.upsert(m.id, &embedding.vector, &embedding.model, Arc::new(attributes(m)));
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
        embedding: Option<&Embedding>,
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
            scopes: old.scopes.clone(),
            created_at: old.created_at,
            updated_at: at,
        };
        sql("UPDATE memories SET text = $1, metadata = $2, embedding = coalesce($3::vector, embedding), \
             embedding_model = coalesce($4, embedding_model), updated_at = $5 \
             WHERE org_id = $6 AND environment = $7 AND id = $8")
        .bind(&new.text)
        .bind(Arg::jsonb(&new.metadata))
        .bind(Arg::Vector(embedding.map(|e| e.vector.clone())))
        .bind(embedding.map(|e| e.model.clone()))
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
            let attrs = Arc::new(attributes(&new));
            match embedding {
                Some(e) => vectors.upsert(id, &e.vector, &e.model, attrs),
                None => vectors.set_attributes(id, attrs),
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
        filter: &MemoryFilter,
    ) -> sqlx::Result<Vec<Memory>> {
        let mut text = format!("SELECT {COLUMNS} FROM memories WHERE org_id = $1 AND environment = $2");
        let mut n = 2;
        if before.is_some() {
            n += 1;
            text.push_str(&format!(" AND id < ${n}"));
        }
        let (filter_sql, filter_args) = filter.sql(self.db.backend(), "", &mut n);
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
    pub async fn delete_all(&self, scope: &MemoryScope, filter: &MemoryFilter, actor: &Actor) -> sqlx::Result<u64> {
        let mut slot = self.lock_vectors(scope).await;
        let at = crate::auth::now();
        let mut n = 2;
        let (filter_sql, filter_args) = filter.sql(self.db.backend(), "", &mut n);
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
                    source: r.opt_json("source")?,
                    created_at: r.time("created_at")?,
                })
            })
            .collect()
    }

    /// The `n` memories nearest the query, best first, as (id, cosine), at or
    /// above `threshold`. `queries` holds the query's vector for each model
    /// the scope's vectors may come from (one, except while re-embedding);
    /// each model's vectors are searched with its own query vector and the
    /// lists interleaved by rank.
    pub async fn vector_candidates(
        &self,
        scope: &MemoryScope,
        queries: &[(String, Vec<f32>)],
        n: u32,
        threshold: f32,
        filter: &MemoryFilter,
    ) -> sqlx::Result<Vec<(Uuid, f32)>> {
        let mut lists = Vec::with_capacity(queries.len());
        // Only while re-embedding do the vectors of several models live side
        // by side; otherwise a model predicate would steer PostgreSQL away
        // from the HNSW index (onto the embedding_model index and a sort).
        let by_model = queries.len() > 1;
        for (model, vector) in queries {
            let mut hits = match &self.vectors {
                None => self.search_pgvector(scope, vector, by_model.then_some(model.as_str()), n, filter).await?,
                Some(index) => {
                    self.search_in_process(index, scope, vector.clone(), model, n, threshold, filter).await?
                }
            };
            hits.retain(|(_, score)| *score >= threshold);
            hits.sort_by(|a, b| b.1.total_cmp(&a.1));
            lists.push(hits);
        }
        if lists.len() == 1 {
            return Ok(lists.pop().unwrap_or_default());
        }
        let mut merged = Vec::new();
        for rank in 0..n as usize {
            for list in &lists {
                if let Some(hit) = list.get(rank) {
                    merged.push(*hit);
                }
            }
        }
        merged.truncate(n as usize);
        Ok(merged)
    }

    /// PostgreSQL: through the HNSW index; the vectors of `model` only when given.
    async fn search_pgvector(
        &self,
        scope: &MemoryScope,
        embedding: &[f32],
        model: Option<&str>,
        k: u32,
        filter: &MemoryFilter,
    ) -> sqlx::Result<Vec<(Uuid, f32)>> {
        let mut n = 4;
        let (filter_sql, filter_args) = filter.sql(Backend::Postgres, "", &mut n);
        let model_sql = if model.is_some() { " AND embedding_model = $4" } else { " AND $4::text IS NULL" };
        let mut q = sql(format!(
            "SELECT id, 1 - (embedding <=> $1::vector) AS score FROM memories \
             WHERE org_id = $2 AND environment = $3{model_sql}{filter_sql} \
             ORDER BY embedding <=> $1::vector LIMIT ${}",
            n + 1
        ))
        .bind(Arg::Vector(Some(embedding.to_vec())))
        .bind(&scope.org_id)
        .bind(scope.environment.as_str())
        .bind(model);
        for a in filter_args {
            q = q.bind(a);
        }
        let mut tx = self.db.tenant_reads(&scope.org_id).await?;
        // Search wider than k, and keep scanning past rows the filters reject
        // (pgvector ≥ 0.8 iterative scans), so filtered queries still fill k.
        // A plan for these parameters each time: after five runs on a
        // connection PostgreSQL may switch to a generic plan, which chose the
        // HNSW scan where the org's rows sort faster (measured 18-29 ms
        // against 2 ms for 419 memories, on every other request). One round
        // trip for the three settings.
        let ef = (k * 2).clamp(40, 1000);
        sql(
            "SELECT set_config('hnsw.ef_search', $1, true), set_config('hnsw.iterative_scan', 'relaxed_order', true), \
             set_config('plan_cache_mode', 'force_custom_plan', true)",
        )
        .bind(ef.to_string())
        .execute(&mut tx)
        .await?;
        let rows = q.bind(k as i64).fetch_all(&mut tx).await?;
        tx.commit().await?;
        rows.iter().map(|r| Ok((r.uuid("id")?, (r.get::<f64>("score")? as f32).clamp(0.0, 1.0)))).collect()
    }

    /// SQLite: an exact scan of the scope's vectors, loaded on first use.
    #[allow(clippy::too_many_arguments)]
    async fn search_in_process(
        &self,
        index: &VectorIndex,
        scope: &MemoryScope,
        query: Vec<f32>,
        model: &str,
        k: u32,
        threshold: f32,
        filter: &MemoryFilter,
    ) -> sqlx::Result<Vec<(Uuid, f32)>> {
        let guard = self.loaded_vectors(index, scope).await?;
        let filter = filter.clone();
        let model = model.to_string();
        // The scan is CPU work: keep it off the async worker threads. It
        // ranks by int8 codes: take twice as many, then rescore exactly.
        let wide = (k as usize).saturating_mul(2).max(k as usize + 16);
        let (approx, query) = tokio::task::spawn_blocking(move || {
            let hits = guard.as_ref().map_or_else(Vec::new, |v| v.search(&query, &model, wide, threshold, &filter));
            (hits, query)
        })
        .await
        .map_err(|e| sqlx::Error::Protocol(format!("search task failed: {e}")))?;
        let ids: Vec<Uuid> = approx.iter().map(|h| h.0).collect();
        let mut exact: Vec<(Uuid, f32)> = self
            .vectors_of(scope, &ids)
            .await?
            .into_iter()
            .map(|(id, v)| (id, crate::providers::embedding::dot(&query, &v).clamp(0.0, 1.0)))
            .collect();
        exact.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        exact.truncate(k as usize);
        Ok(exact)
    }

    /// The stored (exact) vectors of some memories.
    async fn vectors_of(&self, scope: &MemoryScope, ids: &[Uuid]) -> sqlx::Result<Vec<(Uuid, Vec<f32>)>> {
        let rows = self.rows_by_id(scope, "id, embedding", ids).await?;
        rows.iter().map(|r| Ok((r.uuid("id")?, r.vector("embedding")?))).collect()
    }

    /// `columns` of the scope's memories with these ids, in any order.
    async fn rows_by_id(&self, scope: &MemoryScope, columns: &str, ids: &[Uuid]) -> sqlx::Result<Vec<Row>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let placeholders = (3..ids.len() + 3).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ");
        let mut q = sql(format!(
            "SELECT {columns} FROM memories WHERE org_id = $1 AND environment = $2 AND id IN ({placeholders})"
        ))
        .bind(&scope.org_id)
        .bind(scope.environment.as_str());
        for id in ids {
            q = q.bind(*id);
        }
        let mut tx = self.db.tenant_reads(&scope.org_id).await?;
        let rows = q.fetch_all(&mut tx).await?;
        tx.commit().await?;
        Ok(rows)
    }

    /// The scope's in-process vectors, loading them on first use.
    async fn loaded_vectors(
        &self,
        index: &VectorIndex,
        scope: &MemoryScope,
    ) -> sqlx::Result<tokio::sync::OwnedRwLockReadGuard<Option<OrgVectors>>> {
        let slot = index.slot(scope);
        let guard = slot.clone().read_owned().await;
        if guard.is_some() {
            return Ok(guard);
        }
        drop(guard);
        let mut write = slot.clone().write_owned().await;
        if write.is_none() {
            *write = Some(self.load_vectors(scope).await?);
        }
        Ok(write.downgrade())
    }

    /// Cosine similarity of the given memories to the query (each memory
    /// against the query vector of its own model), for candidates the
    /// vector list did not hold.
    pub async fn similarities(
        &self,
        scope: &MemoryScope,
        ids: &[Uuid],
        queries: &[(String, Vec<f32>)],
    ) -> sqlx::Result<Vec<(Uuid, f32)>> {
        if ids.is_empty() || queries.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(index) = &self.vectors {
            let guard = self.loaded_vectors(index, scope).await?;
            return Ok(guard.as_ref().map_or_else(Vec::new, |v| v.similarities(ids, queries)));
        }
        let mut out = Vec::with_capacity(ids.len());
        for (model, vector) in queries {
            let placeholders = (5..ids.len() + 5).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ");
            let mut q = sql(format!(
                "SELECT id, 1 - (embedding <=> $1::vector) AS score FROM memories \
                 WHERE org_id = $2 AND environment = $3 AND embedding_model = $4 AND id IN ({placeholders})"
            ))
            .bind(Arg::Vector(Some(vector.clone())))
            .bind(&scope.org_id)
            .bind(scope.environment.as_str())
            .bind(model);
            for id in ids {
                q = q.bind(*id);
            }
            let mut tx = self.db.tenant_reads(&scope.org_id).await?;
            let rows = q.fetch_all(&mut tx).await?;
            tx.commit().await?;
            for r in &rows {
                out.push((r.uuid("id")?, (r.get::<f64>("score")? as f32).clamp(0.0, 1.0)));
            }
        }
        Ok(out)
    }

    /// Full-text search: the `n` best memories of the scope containing any
    /// of `terms` (plain lowercase words, see `ranking::keyword_terms`),
    /// best first, as (id, score; higher is better). SQLite ranks by FTS5's
    /// BM25, PostgreSQL by `ts_rank` over the English `tsvector`. When the
    /// terms together match more than `budget` rows, the most common ones
    /// are left out of the match (`ranking::match_terms`); PostgreSQL still
    /// ranks the rows by every term. In SQLite, when even the rarest term
    /// matches more than `budget` of the scope's rows (after filters), only
    /// the newest `budget` of them are ranked.
    pub async fn keyword_candidates(
        &self,
        scope: &MemoryScope,
        terms: &[String],
        n: u32,
        filter: &MemoryFilter,
        budget: u64,
    ) -> sqlx::Result<Vec<(Uuid, f32)>> {
        if terms.is_empty() {
            return Ok(Vec::new());
        }
        // Not in a tenant transaction: under row-level security PostgreSQL
        // may not use the GIN index (`@@` is not leakproof, so it must not
        // run before the policy's check) and scans every org's memories (85
        // ms at 100 000). The statement confines itself: `org_id = $2` and
        // `environment = $3` come from the authenticated scope, as in SQLite.
        let mut tx = self.db.service_reads().await?;
        // One term: nothing to leave out; only SQLite's newest window needs its count.
        let (matched, over_budget) = if budget > 0 && (terms.len() > 1 || self.db.backend() == Backend::Sqlite) {
            let docs = self.term_docs(&mut tx, terms, budget).await?;
            let matched = super::ranking::match_terms(terms, &docs, budget);
            let used: u64 = terms.iter().zip(&docs).filter(|(t, _)| matched.contains(t)).map(|(_, d)| d).sum();
            (matched, used > budget)
        } else {
            (terms.to_vec(), false)
        };
        let mut p = 3;
        let prefix = if self.db.backend() == Backend::Sqlite { "m." } else { "" };
        let (filter_sql, filter_args) = filter.sql(self.db.backend(), prefix, &mut p);
        // SQLite: the matches of this org and filter. CROSS JOIN keeps the
        // full-text match as the outer loop (a plain join may walk the org's
        // memories and run the match once per row).
        let sqlite_matches = format!(
            "FROM memories_fts CROSS JOIN memories m ON m.rowid = memories_fts.rowid \
             WHERE memories_fts MATCH $1 AND m.org_id = $2 AND m.environment = $3{filter_sql}"
        );
        let fts_query = fts5_any(&matched);
        // SQLite, when even the rarest term matches more than the budget:
        // BM25 ranks the newest `budget` matches of this org and filter
        // only (found newest first through the index, without scoring).
        let newest_window = if over_budget && self.db.backend() == Backend::Sqlite {
            let mut q = sql(format!(
                "SELECT memories_fts.rowid AS r {sqlite_matches} ORDER BY memories_fts.rowid DESC LIMIT 1 OFFSET ${}",
                p + 1
            ))
            .bind(fts_query.clone())
            .bind(&scope.org_id)
            .bind(scope.environment.as_str());
            for a in filter_args.iter().cloned() {
                q = q.bind(a);
            }
            let offset = budget.saturating_sub(1).min(i64::MAX as u64) as i64;
            q.bind(offset).fetch_optional(&mut tx).await?.map(|r| r.get::<i64>("r")).transpose()?
        } else {
            None
        };
        let (text, query) = match self.db.backend() {
            Backend::Sqlite => (
                format!(
                    "SELECT m.id AS id, -bm25(memories_fts) AS score {sqlite_matches}{} \
                     ORDER BY bm25(memories_fts) LIMIT ${}",
                    if newest_window.is_some() {
                        format!(" AND memories_fts.rowid >= ${}", p + 2)
                    } else {
                        String::new()
                    },
                    p + 1
                ),
                fts_query,
            ),
            Backend::Postgres => (
                format!(
                    // Each tsquery parsed once (in a generic plan a call in
                    // the select list would run per row).
                    "SELECT id, ts_rank(text_search, r)::float8 AS score \
                     FROM memories, to_tsquery('english', $1) q, to_tsquery('english', ${}) r \
                     WHERE org_id = $2 AND environment = $3 AND text_search @@ q{filter_sql} \
                     ORDER BY score DESC, id DESC LIMIT ${}",
                    p + 2,
                    p + 1
                ),
                matched.join(" | "),
            ),
        };
        let mut q = sql(text).bind(query).bind(&scope.org_id).bind(scope.environment.as_str());
        for a in filter_args {
            q = q.bind(a);
        }
        q = q.bind(n as i64);
        if self.db.backend() == Backend::Postgres {
            q = q.bind(terms.join(" | "));
        }
        if let Some(from) = newest_window {
            q = q.bind(from);
        }
        let rows = q.fetch_all(&mut tx).await?;
        tx.commit().await?;
        rows.iter().map(|r| Ok((r.uuid("id")?, r.get::<f64>("score")? as f32))).collect()
    }

    /// How many rows (of all orgs: the engines' statistics are global) each
    /// term matches, as far as it matters against `budget`. SQLite counts
    /// in the full-text index, stopping past the budget; PostgreSQL reads
    /// the lexeme frequencies `ANALYZE` keeps for the `tsvector` column (a
    /// term absent from them is rarer than every term there, counted 0).
    async fn term_docs(&self, tx: &mut Tx, terms: &[String], budget: u64) -> sqlx::Result<Vec<u64>> {
        match self.db.backend() {
            Backend::Sqlite => {
                let mut docs = Vec::with_capacity(terms.len());
                for t in terms {
                    let row = sql("SELECT count(*) AS n FROM \
                         (SELECT 1 FROM memories_fts WHERE memories_fts MATCH $1 LIMIT $2)")
                    .bind(fts5_any(std::slice::from_ref(t)))
                    .bind(budget.saturating_add(1).min(i64::MAX as u64) as i64)
                    .fetch_one(&mut *tx)
                    .await?;
                    docs.push(row.get::<i64>("n")?.max(0) as u64);
                }
                Ok(docs)
            }
            Backend::Postgres => {
                let stats = self.lexeme_stats().await?;
                if stats.is_empty() {
                    return Ok(vec![0; terms.len()]);
                }
                // The English configuration's lexemes of each term (its stem;
                // none for a stop word).
                let rows = sql(
                    "SELECT t.i, array_to_string(tsvector_to_array(to_tsvector('english', t.term)), ' ') AS lexemes \
                     FROM regexp_split_to_table($1, ' ') WITH ORDINALITY AS t(term, i)",
                )
                .bind(terms.join(" "))
                .fetch_all(&mut *tx)
                .await?;
                let mut docs = vec![0u64; terms.len()];
                for r in &rows {
                    let i = r.get::<i64>("i")? as usize;
                    let lexemes: String = r.get("lexemes")?;
                    if let Some(d) = docs.get_mut(i.wrapping_sub(1)) {
                        *d = lexemes.split(' ').filter_map(|l| stats.get(l)).copied().max().unwrap_or(0);
                    }
                }
                Ok(docs)
            }
        }
    }

    /// For each of `ids`, the `depth` memories written just before it and
    /// just after it in its thread, nearest first. A thread is the memories
    /// of one entity scope (equal `user_id`, `agent_id`, `app_id`, `run_id`)
    /// in the order they were written (ids are UUIDv7: time-ordered); a
    /// neighbour must pass `filter` and lie within `window` writes of the
    /// org and environment (so each lookup reads at most `window` index rows,
    /// however the org's writes interleave).
    pub async fn thread_neighbours(
        &self,
        scope: &MemoryScope,
        ids: &[Uuid],
        filter: &MemoryFilter,
        depth: usize,
        window: u32,
    ) -> sqlx::Result<Vec<Neighbours>> {
        if ids.is_empty() || depth == 0 || window == 0 {
            return Ok(Vec::new());
        }
        let backend = self.db.backend();
        let mut p = 3;
        let mut args = Vec::new();
        // What the window's rows must carry: the thread's columns, and what
        // the filter reads.
        let window_columns = if filter.is_empty() {
            "id, user_id, agent_id, app_id, run_id"
        } else {
            "id, metadata, created_at, updated_at, user_id, agent_id, app_id, run_id"
        };
        let mut sides = Vec::with_capacity(2);
        for (side, cmp, order) in [("before_ids", "<", "DESC"), ("after_ids", ">", "ASC")] {
            let (filter_sql, filter_args) = filter.sql(backend, "w.", &mut p);
            args.extend(filter_args);
            // One walk of the window per side; the nearest `depth` as a list.
            sides.push(format!(
                "(SELECT string_agg(CAST(t.id AS TEXT), ',' ORDER BY t.id {order}) FROM \
                   (SELECT w.id FROM (SELECT {window_columns} FROM memories x \
                      WHERE x.org_id = $1 AND x.environment = $2 AND x.id {cmp} c.id ORDER BY x.id {order} LIMIT $3) w \
                    WHERE w.user_id IS NOT DISTINCT FROM c.user_id AND w.agent_id IS NOT DISTINCT FROM c.agent_id \
                      AND w.app_id IS NOT DISTINCT FROM c.app_id AND w.run_id IS NOT DISTINCT FROM c.run_id{filter_sql} \
                    ORDER BY w.id {order} LIMIT {depth}) t) AS {side}"
            ));
        }
        let placeholders = (p + 1..=p + ids.len()).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ");
        let mut q = sql(format!(
            "SELECT c.id AS id, {} FROM memories c WHERE c.org_id = $1 AND c.environment = $2 AND c.id IN ({placeholders})",
            sides.join(", ")
        ))
        .bind(&scope.org_id)
        .bind(scope.environment.as_str())
        .bind(window as i64);
        for a in args {
            q = q.bind(a);
        }
        for id in ids {
            q = q.bind(*id);
        }
        let mut tx = self.db.tenant_reads(&scope.org_id).await?;
        let rows = q.fetch_all(&mut tx).await?;
        tx.commit().await?;
        rows.iter()
            .map(|r| {
                Ok(Neighbours {
                    id: r.uuid("id")?,
                    before: r.uuid_list("before_ids")?,
                    after: r.uuid_list("after_ids")?,
                })
            })
            .collect()
    }

    /// Rows by id, in any order.
    pub async fn fetch_many(&self, scope: &MemoryScope, ids: &[Uuid]) -> sqlx::Result<Vec<Memory>> {
        self.rows_by_id(scope, COLUMNS, ids).await?.iter().map(memory_from).collect()
    }

    /// Every vector of a scope, for the in-process index.
    async fn load_vectors(&self, scope: &MemoryScope) -> sqlx::Result<OrgVectors> {
        let mut index = OrgVectors::default();
        sql(format!(
            "SELECT {COLUMNS}, embedding, embedding_model FROM memories WHERE org_id = $1 AND environment = $2"
        ))
        .bind(&scope.org_id)
        .bind(scope.environment.as_str())
        .for_each(&self.db, |r| {
            let model: String = r.get("embedding_model")?;
            let memory = memory_from(&r)?;
            index.upsert(memory.id, &r.vector("embedding")?, &model, Arc::new(attributes(&memory)));
            Ok(())
        })
        .await?;
        Ok(index)
    }

    /// PostgreSQL: rows per lexeme for the lexemes `ANALYZE` found most
    /// common in `memories.text_search` (empty before the first
    /// `ANALYZE`). `pg_stats` takes milliseconds to read, so the figures
    /// are kept for [`LEXEME_STATS_TTL`]; they only change at the next
    /// `ANALYZE` anyway. Read as the service's own role, not in a tenant's
    /// transaction: `pg_stats` hides the statistics of a table whose
    /// row-level security applies to the reader (they are global figures,
    /// and only their counts are used).
    async fn lexeme_stats(&self) -> sqlx::Result<Arc<std::collections::HashMap<String, u64>>> {
        if let Some((at, stats)) = self.lexeme_stats.lock().unwrap_or_else(|e| e.into_inner()).as_ref()
            && at.elapsed() < LEXEME_STATS_TTL
        {
            return Ok(stats.clone());
        }
        let rows = sql("SELECT u.elem, u.freq::float8 * greatest(c.reltuples, 0)::float8 AS docs \
             FROM pg_stats s \
             CROSS JOIN (SELECT reltuples FROM pg_class WHERE oid = 'memories'::regclass) c \
             CROSS JOIN unnest(s.most_common_elems::text::text[], s.most_common_elem_freqs) AS u(elem, freq) \
             WHERE s.schemaname = current_schema() AND s.tablename = 'memories' AND s.attname = 'text_search' \
               AND u.elem IS NOT NULL")
        .fetch_all(self.db.read())
        .await?;
        let mut stats = std::collections::HashMap::with_capacity(rows.len());
        for r in &rows {
            let docs = r.get::<f64>("docs")?;
            stats.insert(r.get::<String>("elem")?, if docs.is_finite() { docs.max(0.0) as u64 } else { 0 });
        }
        let stats = Arc::new(stats);
        *self.lexeme_stats.lock().unwrap_or_else(|e| e.into_inner()) = Some((std::time::Instant::now(), stats.clone()));
        Ok(stats)
    }
}

/// How long PostgreSQL's lexeme statistics are reused (see `lexeme_stats`).
const LEXEME_STATS_TTL: std::time::Duration = std::time::Duration::from_secs(300);

/// An FTS5 query matching any of `terms`, each quoted: a phrase of one
/// word, never an operator.
fn fts5_any(terms: &[String]) -> String {
    terms.iter().map(|t| format!("\"{t}\"")).collect::<Vec<_>>().join(" OR ")
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
    const COLS: usize = 14;
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
            .bind(c.at)
            .bind(Arg::Jsonb(c.actor.source.clone()))
            .bind(&c.actor.op_key);
    }
    q.execute(tx).await?;
    Ok(())
}

/// What the in-process vector scan filters on.
fn attributes(m: &Memory) -> Attributes {
    Attributes {
        metadata: m.metadata.clone(),
        scopes: m.scopes.clone(),
        created_at: m.created_at,
        updated_at: m.updated_at,
    }
}

fn memory_from(r: &Row) -> sqlx::Result<Memory> {
    Ok(Memory {
        id: r.uuid("id")?,
        text: r.get("text")?,
        metadata: r.json("metadata")?,
        scopes: Scopes {
            user_id: r.get("user_id")?,
            agent_id: r.get("agent_id")?,
            app_id: r.get("app_id")?,
            run_id: r.get("run_id")?,
        },
        created_at: r.time("created_at")?,
        updated_at: r.time("updated_at")?,
    })
}
