//! Memories: storage, embeddings, retrieval and answers.
//!
//! [`MemoryService`] is what routes call. Every operation is confined to a
//! [`MemoryScope`] (an org and its live or test environment).

pub mod cache;
pub mod filter;
pub mod index;
mod quantized;
pub mod ranking;
mod store;

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::auth::{Environment, Principal};
use crate::metering::{RequestUsage, estimate_tokens};
use crate::providers::prices;
use crate::providers::rerank::Reranker;
use crate::providers::routing::{ModelRouter, RouteFacts};
use crate::providers::{Answerer, Embedders, ProviderError};
use crate::store::Database;
use cache::ResponseCache;
use filter::MemoryFilter;
use ranking::{Mode, RankingPolicy};
use store::MemoryStore;

/// Largest memory text, in bytes.
pub const MAX_TEXT_BYTES: usize = 100_000;
/// Largest metadata object, serialised, in bytes.
pub const MAX_METADATA_BYTES: usize = 64 * 1024;
pub const MAX_PAGE: u32 = 100;
pub const DEFAULT_PAGE: u32 = 20;
pub const MAX_RESULTS: u32 = 100;
pub const DEFAULT_RESULTS: u32 = 10;
pub const DEFAULT_THRESHOLD: f32 = 0.05;

/// The org and environment an operation is confined to.
#[derive(Debug, Clone)]
pub struct MemoryScope {
    pub org_id: String,
    pub environment: Environment,
}

impl From<&Principal> for MemoryScope {
    fn from(p: &Principal) -> Self {
        MemoryScope { org_id: p.org_id.clone(), environment: p.environment }
    }
}

/// Who made a change, for the history.
#[derive(Debug, Clone, Default)]
pub struct Actor {
    pub request_id: Option<String>,
    pub key_id: Option<String>,
    /// What made the change when it was not the caller's own text: an
    /// extraction's operation, source turns and extractor (JSON).
    pub source: Option<Value>,
    /// A batch job's key for this operation (job, item, operation): stored
    /// with the history row under a unique index, so the same operation can
    /// never be applied twice (a retried job item is recognised).
    pub op_key: Option<String>,
}

impl Actor {
    pub fn with_source(&self, source: Value) -> Actor {
        Actor { source: Some(source), ..self.clone() }
    }
    pub fn with_op_key(&self, op_key: String) -> Actor {
        Actor { op_key: Some(op_key), ..self.clone() }
    }
}

/// Whether a write failed because its operation key was already applied
/// (see [`Actor::op_key`]).
pub fn is_applied_twice(e: &MemoryError) -> bool {
    match e {
        MemoryError::Database(sqlx::Error::Database(d)) => {
            d.is_unique_violation()
                && (d.constraint() == Some("memory_history_op_key") || d.message().contains("op_key"))
        }
        _ => false,
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Memory {
    pub id: Uuid,
    pub text: String,
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
    #[serde(flatten)]
    pub scopes: Scopes,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// mem0's entity scopes: whom or what a memory is about. Set when the
/// memory is created; indexed and filterable.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Scopes {
    pub user_id: Option<String>,
    pub agent_id: Option<String>,
    pub app_id: Option<String>,
    pub run_id: Option<String>,
}

impl Scopes {
    pub fn as_array(&self) -> [Option<&str>; 4] {
        [self.user_id.as_deref(), self.agent_id.as_deref(), self.app_id.as_deref(), self.run_id.as_deref()]
    }

    fn validate(&self) -> Result<(), MemoryError> {
        for (entity, value) in filter::Entity::ALL.iter().zip(self.as_array()) {
            if let Some(v) = value
                && (v.is_empty() || v.chars().count() > 128 || v.chars().any(char::is_control))
            {
                return Err(invalid(
                    entity.column(),
                    format!("{} must be 1 to 128 characters, no control characters", entity.column()),
                ));
            }
        }
        Ok(())
    }
}

/// A retrieved memory. Results come best first by the fused ranking;
/// `score` is the memory's semantic similarity to the query (cosine of the
/// embeddings, 0 to 1), the scale `relevance_threshold` applies to.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ScoredMemory {
    #[serde(flatten)]
    pub memory: Memory,
    pub score: f32,
    pub scores: RankScores,
}

/// How a retrieved memory ranked.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RankScores {
    /// The fused score (score fusion: 0 to 1 from the two lists, plus what
    /// thread context lent; recency and boosts applied): what
    /// the order follows.
    pub fused: f32,
    /// Full-text score (BM25 in SQLite, `ts_rank` in PostgreSQL; higher is
    /// better); absent when the keyword search did not find the memory.
    pub keyword: Option<f32>,
    /// The reranker's score, when the request asked for `rerank`; the order
    /// then follows it.
    pub rerank: Option<f32>,
}

/// A vector and the model that made it.
#[derive(Debug, Clone)]
pub struct Embedding {
    pub vector: Vec<f32>,
    pub model: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum EventKind {
    Add,
    Update,
    Delete,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Add => "ADD",
            EventKind::Update => "UPDATE",
            EventKind::Delete => "DELETE",
        }
    }

    pub(crate) fn parse(s: &str) -> EventKind {
        match s {
            "ADD" => EventKind::Add,
            "UPDATE" => EventKind::Update,
            _ => EventKind::Delete,
        }
    }
}

/// One change of a memory.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct MemoryEvent {
    pub id: String,
    pub memory_id: Uuid,
    pub event: EventKind,
    pub old_text: Option<String>,
    pub new_text: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub old_metadata: Option<Map<String, Value>>,
    #[schema(value_type = Option<Object>)]
    pub new_metadata: Option<Map<String, Value>>,
    pub request_id: Option<String>,
    pub actor_key_id: Option<String>,
    /// For changes an extractor made: the operation, the ids of the turns
    /// it read and the extractor plugin (id = digest, name, version).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub source: Option<Value>,
    pub created_at: DateTime<Utc>,
}

/// A page of memories, newest first.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct MemoryPage {
    pub memories: Vec<Memory>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
    pub has_more: bool,
}

/// What a retrieval asks for.
#[derive(Debug, Clone)]
pub struct SearchParams {
    pub query: String,
    pub max_memories: u32,
    pub relevance_threshold: f32,
    pub filter: MemoryFilter,
    pub mode: Mode,
    /// Reorder the best candidates with the configured reranker.
    pub rerank: bool,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AnswerResult {
    pub answer: String,
    pub model: String,
    pub memories: Vec<ScoredMemory>,
    /// Served from the response cache (see `policies/caching.yaml`).
    pub cached: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("memory {0} not found")]
    NotFound(String),
    /// Bad input; `field` names what was wrong.
    #[error("{message}")]
    Invalid { field: &'static str, message: String },
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

fn invalid(field: &'static str, message: impl Into<String>) -> MemoryError {
    MemoryError::Invalid { field, message: message.into() }
}

#[derive(Clone)]
pub struct MemoryService {
    store: MemoryStore,
    embedders: Arc<Embedders>,
    answerer: Arc<dyn Answerer>,
    ranking: Arc<RankingPolicy>,
    reranker: Option<Arc<dyn Reranker>>,
    cache: Arc<ResponseCache>,
    router: Arc<ModelRouter>,
}

/// The usage quantities a cache hit reports (metrics in `metrics.yaml`).
pub const CACHE_HITS: &str = "cache_hits";
pub const CACHE_SAVED_TOKENS: &str = "cache_saved_tokens";
pub const CACHE_SAVED_COST: &str = "cache_saved_cost_micros";

impl MemoryService {
    pub fn new(
        db: Database,
        embedders: Arc<Embedders>,
        answerer: Arc<dyn Answerer>,
        ranking: RankingPolicy,
    ) -> MemoryService {
        MemoryService {
            store: MemoryStore::new(db),
            embedders,
            answerer,
            ranking: Arc::new(ranking),
            reranker: None,
            cache: Arc::new(ResponseCache::off()),
            router: Arc::new(ModelRouter::none()),
        }
    }

    /// Extractions and answers pick their LLM model with this policy.
    pub fn with_router(mut self, router: ModelRouter) -> MemoryService {
        self.router = Arc::new(router);
        self
    }

    /// The model the routing policy picks for a request (`None`: the
    /// configured one).
    pub fn route_model(&self, facts: RouteFacts<'_>) -> Option<String> {
        self.router.pick(facts)
    }

    /// Answers (and, where the policy says, retrievals) are reused from this cache.
    pub fn with_cache(mut self, cache: ResponseCache) -> MemoryService {
        self.cache = Arc::new(cache);
        self
    }

    pub fn cache(&self) -> &ResponseCache {
        &self.cache
    }

    /// A cacheable read (answer, retrieval): the cached result for the same
    /// request at the org's current memory version, else `compute`'s, then
    /// kept. The result carries `cached`. A hit processes no tokens: it
    /// reports the tokens it saved instead.
    pub async fn cached<F, Fut>(
        &self,
        scope: &MemoryScope,
        kind: cache::Kind,
        params: &SearchParams,
        usage: &RequestUsage,
        compute: F,
    ) -> Result<Value, MemoryError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Value, MemoryError>>,
    {
        let key = self.cache.key(scope, kind, params).await;
        if let Some(k) = &key
            && let Some(hit) = self.cache.get(k).await
        {
            let saved = hit["tokens"].as_u64().unwrap_or(0);
            let saved_cost = hit["cost_micros"].as_u64().unwrap_or(0);
            usage.add_quantity(CACHE_HITS, 1);
            usage.add_quantity(CACHE_SAVED_TOKENS, saved);
            usage.add_quantity(CACHE_SAVED_COST, saved_cost);
            crate::telemetry::inc(
                "memhost_response_cache_saved_cost_micros_total",
                &[("kind", kind.as_str())],
                saved_cost,
            );
            usage.add_read(hit["result"]["memories"].as_array().map_or(0, |m| m.len() as u64));
            crate::telemetry::inc("memhost_response_cache_total", &[("kind", kind.as_str()), ("result", "hit")], 1);
            crate::telemetry::inc("memhost_response_cache_saved_tokens_total", &[("kind", kind.as_str())], saved);
            let mut result = hit["result"].clone();
            result["cached"] = Value::Bool(true);
            return Ok(result);
        }
        let (before, before_cost) = (usage.snapshot().tokens_processed, usage.cost_micros());
        let mut result = compute().await?;
        result["cached"] = Value::Bool(false);
        if let Some(k) = key {
            let tokens = usage.snapshot().tokens_processed.saturating_sub(before);
            let cost = usage.cost_micros().saturating_sub(before_cost).max(0);
            let entry = serde_json::json!({"result": result, "tokens": tokens, "cost_micros": cost});
            self.cache.put(&k, kind, &entry).await;
            crate::telemetry::inc("memhost_response_cache_total", &[("kind", kind.as_str()), ("result", "miss")], 1);
        }
        Ok(result)
    }

    /// Retrievals asking for `rerank` use this one.
    pub fn with_reranker(mut self, reranker: Option<Arc<dyn Reranker>>) -> MemoryService {
        self.reranker = reranker;
        self
    }

    /// Learns which models the stored vectors come from (call once at start).
    pub async fn load_models(&self) -> Result<Vec<String>, MemoryError> {
        Ok(self.store.refresh_models().await?)
    }

    pub async fn create(
        &self,
        scope: &MemoryScope,
        text: String,
        metadata: Option<Map<String, Value>>,
        scopes: Scopes,
        actor: &Actor,
        usage: &RequestUsage,
    ) -> Result<Memory, MemoryError> {
        validate_text(&text)?;
        let metadata = metadata.unwrap_or_default();
        validate_metadata(&metadata)?;
        scopes.validate()?;
        let embedding = self.embed(&text, usage).await?;
        let now = crate::auth::now();
        let memory = Memory { id: Uuid::now_v7(), text, metadata, scopes, created_at: now, updated_at: now };
        self.store.insert(scope, &memory, &embedding, actor).await?;
        self.cache.invalidate(scope).await;
        usage.add_created(1);
        Ok(memory)
    }

    pub async fn get(&self, scope: &MemoryScope, id: &str, usage: &RequestUsage) -> Result<Memory, MemoryError> {
        let uuid = parse_id(id)?;
        let memory = self.store.get(scope, uuid).await?.ok_or_else(|| MemoryError::NotFound(id.to_string()))?;
        usage.add_read(1);
        Ok(memory)
    }

    pub async fn update(
        &self,
        scope: &MemoryScope,
        id: &str,
        text: Option<String>,
        metadata: Option<Map<String, Value>>,
        actor: &Actor,
        usage: &RequestUsage,
    ) -> Result<Memory, MemoryError> {
        let uuid = parse_id(id)?;
        if text.is_none() && metadata.is_none() {
            return Err(invalid("body", "give `text`, `metadata` or both"));
        }
        if let Some(t) = &text {
            validate_text(t)?;
        }
        if let Some(m) = &metadata {
            validate_metadata(m)?;
        }
        let embedding = match &text {
            Some(t) => Some(self.embed(t, usage).await?),
            None => None,
        };
        let (_, new) = self
            .store
            .update(scope, uuid, text.as_deref(), metadata.as_ref(), embedding.as_ref(), actor)
            .await?
            .ok_or_else(|| MemoryError::NotFound(id.to_string()))?;
        self.cache.invalidate(scope).await;
        usage.add_updated(1);
        Ok(new)
    }

    pub async fn delete(
        &self,
        scope: &MemoryScope,
        id: &str,
        actor: &Actor,
        usage: &RequestUsage,
    ) -> Result<(), MemoryError> {
        let uuid = parse_id(id)?;
        self.store.delete(scope, uuid, actor).await?.ok_or_else(|| MemoryError::NotFound(id.to_string()))?;
        self.cache.invalidate(scope).await;
        usage.add_deleted(1);
        Ok(())
    }

    pub async fn list(
        &self,
        scope: &MemoryScope,
        limit: Option<u32>,
        cursor: Option<&str>,
        filter: &MemoryFilter,
        usage: &RequestUsage,
    ) -> Result<MemoryPage, MemoryError> {
        let limit = limit.unwrap_or(DEFAULT_PAGE);
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(invalid("limit", format!("limit must be between 1 and {MAX_PAGE}")));
        }
        let before = cursor.map(decode_cursor).transpose()?;
        let mut memories = self.store.list(scope, limit + 1, before, filter).await?;
        let has_more = memories.len() > limit as usize;
        memories.truncate(limit as usize);
        let next_cursor = if has_more { memories.last().map(|m| encode_cursor(m.id)) } else { None };
        usage.add_read(memories.len() as u64);
        Ok(MemoryPage { memories, next_cursor, has_more })
    }

    pub async fn delete_all(
        &self,
        scope: &MemoryScope,
        filter: &MemoryFilter,
        actor: &Actor,
    ) -> Result<u64, MemoryError> {
        let deleted = self.store.delete_all(scope, filter, actor).await?;
        if deleted > 0 {
            self.cache.invalidate(scope).await;
        }
        Ok(deleted)
    }

    pub async fn history(&self, scope: &MemoryScope, id: &str) -> Result<Vec<MemoryEvent>, MemoryError> {
        let uuid = parse_id(id)?;
        let events = self.store.history(scope, uuid).await?;
        if events.is_empty() {
            return Err(MemoryError::NotFound(id.to_string()));
        }
        Ok(events)
    }

    /// The memories most relevant to `params.query`, best first.
    pub async fn search(
        &self,
        scope: &MemoryScope,
        params: &SearchParams,
        usage: &RequestUsage,
    ) -> Result<Vec<ScoredMemory>, MemoryError> {
        if params.query.trim().is_empty() {
            return Err(invalid("query", "the query text must not be empty"));
        }
        validate_text(&params.query)
            .map_err(|_| invalid("query", format!("the query must be at most {MAX_TEXT_BYTES} bytes")))?;
        if !(1..=MAX_RESULTS).contains(&params.max_memories) {
            return Err(invalid("max_memories", format!("max_memories must be between 1 and {MAX_RESULTS}")));
        }
        if !(0.0..=1.0).contains(&params.relevance_threshold) {
            return Err(invalid("relevance_threshold", "relevance_threshold must be between 0 and 1"));
        }
        let reranker = match (params.rerank, &self.reranker) {
            (false, _) => None,
            (true, Some(r)) => Some(r.clone()),
            (true, None) => {
                return Err(invalid("rerank", "no reranker is configured on this server (`[rerank]`)"));
            }
        };
        let k = params.max_memories;
        let n = self.ranking.candidates(k);
        let queries = self.query_vectors(&params.query, usage).await?;
        // The two lists at once: the vector scan runs on the blocking pool
        // (or in PostgreSQL), the full-text query on a database connection.
        let vector = async {
            match params.mode {
                Mode::Keyword => Ok(Vec::new()),
                _ => self.store.vector_candidates(scope, &queries, n, params.relevance_threshold, &params.filter).await,
            }
        };
        let keyword = async {
            match params.mode {
                Mode::Vector => Ok(Vec::new()),
                _ => {
                    let terms = ranking::keyword_terms(&params.query);
                    let budget = self.ranking.keyword_match_budget;
                    self.store.keyword_candidates(scope, &terms, n, &params.filter, budget).await
                }
            }
        };
        let (vector, keyword) = tokio::try_join!(vector, keyword)?;
        let (vector_weight, keyword_weight) = match params.mode {
            Mode::Vector => (1.0, 0.0),
            Mode::Keyword => (0.0, 1.0),
            Mode::Hybrid if queries[0].0 == crate::providers::embedding::HASH_MODEL => {
                (self.ranking.hashing_vector_weight, self.ranking.keyword_weight)
            }
            Mode::Hybrid => (self.ranking.vector_weight, self.ranking.keyword_weight),
        };
        // Keyword-only candidates: their similarity counts in the fusion and
        // decides the threshold too.
        let in_vector: std::collections::HashSet<Uuid> = vector.iter().map(|(id, _)| *id).collect();
        let unknown: Vec<Uuid> = keyword.iter().map(|(id, _)| *id).filter(|id| !in_vector.contains(id)).collect();
        let similarity: std::collections::HashMap<Uuid, f32> = if unknown.is_empty() {
            Default::default()
        } else {
            self.store.similarities(scope, &unknown, &queries).await?.into_iter().collect()
        };
        let mut fused = ranking::fuse(&self.ranking, vector_weight, keyword_weight, &vector, &keyword, &similarity);
        let depth = self.ranking.context_depth();
        if params.mode == Mode::Hybrid && depth > 0 && !fused.is_empty() {
            let lenders: Vec<Uuid> = fused.iter().take(self.ranking.context_lenders(k)).map(|f| f.id).collect();
            let window = self.ranking.context_window;
            let neighbours = self.store.thread_neighbours(scope, &lenders, &params.filter, depth, window).await?;
            let joined = ranking::lend_context(&self.ranking, &mut fused, &neighbours);
            if !joined.is_empty() {
                let found: std::collections::HashMap<Uuid, f32> =
                    self.store.similarities(scope, &joined, &queries).await?.into_iter().collect();
                for f in fused.iter_mut().filter(|f| f.semantic.is_none()) {
                    f.semantic = found.get(&f.id).copied();
                }
            }
        }
        fused.retain(|f| f.semantic.unwrap_or(0.0) >= params.relevance_threshold);
        // The reranker sees a few more than asked for: it may promote them.
        let keep = if reranker.is_some() { (k as usize * 3).max(20) } else { k as usize };
        if !self.ranking.needs_rows() {
            fused.truncate(keep);
        }
        let ids: Vec<Uuid> = fused.iter().map(|f| f.id).collect();
        let mut rows: std::collections::HashMap<Uuid, Memory> =
            self.store.fetch_many(scope, &ids).await?.into_iter().map(|m| (m.id, m)).collect();
        let now = crate::auth::now();
        let mut results: Vec<ScoredMemory> = fused
            .into_iter()
            .filter_map(|f| {
                let memory = rows.remove(&f.id)?;
                let age_days = (now - memory.created_at).num_seconds() as f64 / 86_400.0;
                let fused = f.fused * self.ranking.adjustment(age_days, &memory.metadata);
                Some(ScoredMemory {
                    memory,
                    score: f.semantic.unwrap_or(0.0),
                    scores: RankScores { fused, keyword: f.keyword, rerank: None },
                })
            })
            .collect();
        results.sort_by(|a, b| b.scores.fused.total_cmp(&a.scores.fused));
        if let Some(reranker) = reranker {
            results.truncate(keep);
            let texts: Vec<&str> = results.iter().map(|r| r.memory.text.as_str()).collect();
            let scores = reranker.rerank(&params.query, &texts).await?;
            let tokens = estimate_tokens(&params.query) * texts.len() as u64
                + texts.iter().map(|t| estimate_tokens(t)).sum::<u64>();
            usage.add_model_call(reranker.model(), prices::cost(reranker.model(), tokens, 0));
            for (r, s) in results.iter_mut().zip(scores) {
                r.scores.rerank = Some(s);
            }
            results.sort_by(|a, b| {
                b.scores.rerank.unwrap_or(f32::NEG_INFINITY).total_cmp(&a.scores.rerank.unwrap_or(f32::NEG_INFINITY))
            });
        }
        results.truncate(k as usize);
        usage.add_read(results.len() as u64);
        Ok(results)
    }

    /// The query's vector for each model the stored vectors come from that
    /// this process can run (the current one always; an old one while
    /// re-embedding). Embedding usage counts once.
    async fn query_vectors(&self, query: &str, usage: &RequestUsage) -> Result<Vec<(String, Vec<f32>)>, MemoryError> {
        let current = self.embed(query, usage).await?;
        let mut out = vec![(current.model.clone(), current.vector)];
        for model in self.store.models_in_use() {
            if model == current.model {
                continue;
            }
            if let Some(embedder) = self.embedders.for_model(&model)
                && !embedder.is_remote()
                && let Ok(mut v) = embedder.embed(&[query]).await
                && let Some(vector) = v.pop()
            {
                out.push((model, vector));
            }
        }
        Ok(out)
    }

    /// Retrieves memories for `question` and answers from them.
    pub async fn answer(
        &self,
        scope: &MemoryScope,
        params: &SearchParams,
        plan: &str,
        usage: &RequestUsage,
    ) -> Result<AnswerResult, MemoryError> {
        let memories = self.search(scope, params, usage).await?;
        let texts: Vec<&str> = memories.iter().map(|m| m.memory.text.as_str()).collect();
        let model = self.router.pick(RouteFacts {
            task: "answer",
            chars: params.query.chars().count() + texts.iter().map(|t| t.chars().count()).sum::<usize>(),
            turns: 0,
            memories: texts.len(),
            plan,
            strategy: "",
        });
        let answer = self.answerer.answer(&params.query, &texts, model.as_deref()).await?;
        // What the answer was made from (in) and the answer itself (out),
        // as the provider reports them or estimated.
        let context_tokens = texts.iter().map(|t| estimate_tokens(t)).sum::<u64>();
        let answer_tokens = estimate_tokens(&answer.text);
        let (tokens_in, tokens_out) = match answer.tokens {
            Some(total) => (total.saturating_sub(answer_tokens.min(total)), answer_tokens.min(total)),
            None => (context_tokens, answer_tokens),
        };
        usage.add_tokens(tokens_in);
        usage.add_output_tokens(tokens_out);
        if self.answerer.is_remote() {
            usage.add_model_call(&answer.model, prices::cost(&answer.model, tokens_in, tokens_out));
        }
        Ok(AnswerResult { answer: answer.text, model: answer.model, memories, cached: false })
    }

    async fn embed(&self, text: &str, usage: &RequestUsage) -> Result<Embedding, MemoryError> {
        let embedder = self.embedders.current();
        let mut vectors = embedder.embed(&[text]).await?;
        usage.add_tokens(estimate_tokens(text));
        usage.add_embeddings(1);
        if embedder.is_remote() {
            usage.add_model_call(embedder.model(), prices::cost(embedder.model(), estimate_tokens(text), 0));
        }
        let vector = vectors.pop().ok_or_else(|| ProviderError("no embedding returned".into()))?;
        Ok(Embedding { vector, model: embedder.model().to_string() })
    }

    /// Re-embeds, in the background, memories whose vectors an earlier
    /// embedder made (after a change of `[embeddings]`, or when the local
    /// model arrived after start). Retrieval meanwhile queries old vectors
    /// with the old model, so it never fails or goes blind.
    pub async fn reembed_loop(self, mut shutdown: crate::supervisor::Shutdown) {
        const BATCH: u32 = 32;
        let mut idle = std::time::Duration::from_millis(500);
        loop {
            let current = self.embedders.current();
            let old = self.store.models_in_use().into_iter().find(|m| m != current.model());
            let mut progressed = false;
            if let Some(old) = old {
                match self.reembed_batch(&current, &old, BATCH).await {
                    Ok(0) => {
                        // Caught up with this model: read what is left.
                        let _ = self.store.refresh_models().await;
                        tracing::info!(model = current.model(), from = %old, "re-embedding done");
                        progressed = true;
                    }
                    Ok(_) => progressed = true,
                    Err(e) => tracing::warn!(error = %e, "re-embedding failed; retrying"),
                }
            }
            let pause = if progressed { std::time::Duration::ZERO } else { idle };
            idle = if progressed {
                std::time::Duration::from_millis(500)
            } else {
                (idle * 2).min(std::time::Duration::from_secs(5))
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.requested() => return,
            }
        }
    }

    /// How many memories the scope holds.
    pub async fn count(&self, scope: &MemoryScope) -> sqlx::Result<u64> {
        self.store.count(scope).await
    }

    /// Which of the operation keys `keys` were already applied in the
    /// scope (a retried batch job item skips them).
    pub async fn applied_ops(&self, scope: &MemoryScope, keys: &[String]) -> Result<Vec<String>, MemoryError> {
        Ok(self.store.applied_ops(scope, keys).await?)
    }

    /// Re-embeds with the current embedder up to `limit` of the scope's
    /// memories after `after` (in id order), for a re-embedding job.
    /// Returns how many were read and the last id; retrieval meanwhile keeps
    /// answering from the vectors not yet replaced.
    pub async fn reembed_page(
        &self,
        scope: &MemoryScope,
        after: Option<Uuid>,
        limit: u32,
        usage: &RequestUsage,
    ) -> Result<(usize, Option<Uuid>), MemoryError> {
        let page = self.store.page_for_reembedding(scope, after, limit).await?;
        let Some(last) = page.last().map(|s| s.id) else { return Ok((0, None)) };
        let embedder = self.embedders.current();
        let texts: Vec<&str> = page.iter().map(|s| s.text.as_str()).collect();
        let vectors = embedder.embed(&texts).await?;
        let tokens: u64 = texts.iter().map(|t| estimate_tokens(t)).sum();
        usage.add_embeddings(page.len() as u64);
        usage.add_tokens(tokens);
        if embedder.is_remote() {
            usage.add_model_call(embedder.model(), prices::cost(embedder.model(), tokens, 0));
        }
        for (s, vector) in page.iter().zip(vectors) {
            let embedding = Embedding { vector, model: embedder.model().to_string() };
            self.store.replace_vector(s, &embedding).await?;
        }
        self.store.note_model(embedder.model());
        self.cache.invalidate(scope).await;
        Ok((page.len(), Some(last)))
    }

    /// Re-embeds up to `limit` memories of `old_model`; returns how many it found.
    async fn reembed_batch(
        &self,
        embedder: &Arc<dyn crate::providers::Embedder>,
        old_model: &str,
        limit: u32,
    ) -> Result<usize, MemoryError> {
        let stale = self.store.stale(old_model, limit).await?;
        if stale.is_empty() {
            return Ok(0);
        }
        let texts: Vec<&str> = stale.iter().map(|s| s.text.as_str()).collect();
        let vectors = embedder.embed(&texts).await?;
        for (s, vector) in stale.iter().zip(vectors) {
            let embedding = Embedding { vector, model: embedder.model().to_string() };
            self.store.replace_vector(s, &embedding).await?;
        }
        Ok(stale.len())
    }
}

fn validate_text(text: &str) -> Result<(), MemoryError> {
    if text.trim().is_empty() {
        return Err(invalid("text", "text must not be empty"));
    }
    if text.len() > MAX_TEXT_BYTES {
        return Err(invalid("text", format!("text must be at most {MAX_TEXT_BYTES} bytes (got {})", text.len())));
    }
    Ok(())
}

fn validate_metadata(metadata: &Map<String, Value>) -> Result<(), MemoryError> {
    let size = serde_json::to_vec(metadata).map(|v| v.len()).unwrap_or(usize::MAX);
    if size > MAX_METADATA_BYTES {
        return Err(invalid(
            "metadata",
            format!("metadata must be at most {MAX_METADATA_BYTES} bytes as JSON (got {size})"),
        ));
    }
    Ok(())
}

fn parse_id(id: &str) -> Result<Uuid, MemoryError> {
    // A malformed id cannot name a memory: answer as for any unknown id.
    Uuid::parse_str(id).map_err(|_| MemoryError::NotFound(id.chars().take(64).collect()))
}

fn encode_cursor(id: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(id.as_bytes())
}

fn decode_cursor(cursor: &str) -> Result<Uuid, MemoryError> {
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|b| Uuid::from_slice(&b).ok())
        .ok_or_else(|| invalid("cursor", "cursor is not one this API returned"))
}
