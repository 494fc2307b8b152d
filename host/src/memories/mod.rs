//! Memories: storage, embeddings, retrieval and answers.
//!
//! [`MemoryService`] is what routes call. Every operation is confined to a
//! [`MemoryScope`] (an org and its live or test environment).

pub mod filter;
mod index;
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
use crate::providers::{Answerer, Embedder, ProviderError};
use crate::store::Database;
use filter::MetadataFilter;
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
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Memory {
    pub id: Uuid,
    pub text: String,
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A retrieved memory with its relevance (cosine similarity, 0 to 1).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ScoredMemory {
    #[serde(flatten)]
    pub memory: Memory,
    pub score: f32,
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
    pub filter: MetadataFilter,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AnswerResult {
    pub answer: String,
    pub model: String,
    pub memories: Vec<ScoredMemory>,
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
    embedder: Arc<dyn Embedder>,
    answerer: Arc<dyn Answerer>,
}

impl MemoryService {
    pub fn new(db: Database, embedder: Arc<dyn Embedder>, answerer: Arc<dyn Answerer>) -> MemoryService {
        MemoryService { store: MemoryStore::new(db), embedder, answerer }
    }

    pub async fn create(
        &self,
        scope: &MemoryScope,
        text: String,
        metadata: Option<Map<String, Value>>,
        actor: &Actor,
        usage: &RequestUsage,
    ) -> Result<Memory, MemoryError> {
        validate_text(&text)?;
        let metadata = metadata.unwrap_or_default();
        validate_metadata(&metadata)?;
        let embedding = self.embed(&text, usage).await?;
        let now = crate::auth::now();
        let memory = Memory { id: Uuid::now_v7(), text, metadata, created_at: now, updated_at: now };
        self.store.insert(scope, &memory, &embedding, actor).await?;
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
            .update(scope, uuid, text.as_deref(), metadata.as_ref(), embedding.as_deref(), actor)
            .await?
            .ok_or_else(|| MemoryError::NotFound(id.to_string()))?;
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
        usage.add_deleted(1);
        Ok(())
    }

    pub async fn list(
        &self,
        scope: &MemoryScope,
        limit: Option<u32>,
        cursor: Option<&str>,
        filter: &MetadataFilter,
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
        filter: &MetadataFilter,
        actor: &Actor,
    ) -> Result<u64, MemoryError> {
        Ok(self.store.delete_all(scope, filter, actor).await?)
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
        let query = self.embed(&params.query, usage).await?;
        let results: Vec<ScoredMemory> = self
            .store
            .search(scope, query, params.max_memories, params.relevance_threshold, &params.filter)
            .await?
            .into_iter()
            .map(|(memory, score)| ScoredMemory { memory, score })
            .collect();
        usage.add_read(results.len() as u64);
        Ok(results)
    }

    /// Retrieves memories for `question` and answers from them.
    pub async fn answer(
        &self,
        scope: &MemoryScope,
        params: &SearchParams,
        usage: &RequestUsage,
    ) -> Result<AnswerResult, MemoryError> {
        let memories = self.search(scope, params, usage).await?;
        let texts: Vec<&str> = memories.iter().map(|m| m.memory.text.as_str()).collect();
        let answer = self.answerer.answer(&params.query, &texts).await?;
        if self.answerer.is_remote() {
            usage.add_model_call(&answer.model, 0);
        }
        // What the answer was made from (in) and the answer itself (out),
        // as the provider reports them or estimated.
        let context_tokens = texts.iter().map(|t| estimate_tokens(t)).sum::<u64>();
        let answer_tokens = estimate_tokens(&answer.text);
        match answer.tokens {
            Some(total) => {
                usage.add_output_tokens(answer_tokens.min(total));
                usage.add_tokens(total.saturating_sub(answer_tokens.min(total)));
            }
            None => {
                usage.add_tokens(context_tokens);
                usage.add_output_tokens(answer_tokens);
            }
        }
        Ok(AnswerResult { answer: answer.text, model: answer.model, memories })
    }

    async fn embed(&self, text: &str, usage: &RequestUsage) -> Result<Vec<f32>, MemoryError> {
        let mut vectors = self.embedder.embed(&[text]).await?;
        usage.add_tokens(estimate_tokens(text));
        usage.add_embeddings(1);
        if self.embedder.is_remote() {
            usage.add_model_call(self.embedder.model(), 0);
        }
        vectors.pop().ok_or_else(|| ProviderError("no embedding returned".into()).into())
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
