//! `/v1/retrieve`, `/v1/query` and `/v1/query/answer`.

use axum::extract::State;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::api::AppState;
use crate::api::envelope::{ApiOk, Ctx, Envelope, ErrorEnvelope};
use crate::api::error::ApiError;
use crate::api::extract::{ApiJson, Auth};
use crate::auth::Scope;
use crate::memories::cache::Kind;
use crate::memories::filter::MemoryFilter;
use crate::memories::ranking::Mode;
use crate::memories::{AnswerResult, DEFAULT_RESULTS, DEFAULT_THRESHOLD, ScoredMemory, SearchParams};

/// A retrieval request. `context` (or its alias `query`) is the text to match.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetrievalRequest {
    #[serde(alias = "query")]
    #[schema(example = "What does Alice drink in the morning?", min_length = 1, max_length = 100000)]
    pub context: String,
    /// 1 to 100, default 10.
    #[schema(minimum = 1, maximum = 100)]
    pub max_memories: Option<u32>,
    /// 0 to 1, default 0.05: memories scoring below are left out.
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub relevance_threshold: Option<f32>,
    /// mem0's v2 filter grammar: `{"user_id": "alice"}`, `{"AND": [...]}`,
    /// `{"OR": [...]}`, `{"NOT": {...}}`, operators `eq ne in nin gt gte lt
    /// lte contains icontains` and `"*"` over `user_id`, `agent_id`,
    /// `app_id`, `run_id`, `created_at`, `updated_at` and metadata keys
    /// (bare, or `metadata.<key>`). See docs/retrieval.md.
    #[schema(value_type = Option<Object>)]
    pub filters: Option<Value>,
    /// `hybrid` (default): nearest embeddings and full-text search, fused by
    /// reciprocal rank; `vector` or `keyword`: one list only.
    pub mode: Option<Mode>,
    /// Reorder the best candidates with the server's reranker (a
    /// cross-encoder behind `[rerank]`); 400 when none is configured.
    pub rerank: Option<bool>,
}

impl RetrievalRequest {
    fn params(self) -> Result<SearchParams, ApiError> {
        let filter = match &self.filters {
            Some(f) => MemoryFilter::from_json(f, "filters").map_err(|e| ApiError::invalid_field("filters", e.0))?,
            None => MemoryFilter::all(),
        };
        Ok(SearchParams {
            query: self.context,
            max_memories: self.max_memories.unwrap_or(DEFAULT_RESULTS),
            relevance_threshold: self.relevance_threshold.unwrap_or(DEFAULT_THRESHOLD),
            filter,
            mode: self.mode.unwrap_or_default(),
            rerank: self.rerank.unwrap_or(false),
        })
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RetrievalResult {
    /// Best first.
    pub memories: Vec<ScoredMemory>,
    /// Served from the response cache (`policies/caching.yaml`).
    pub cached: bool,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct QueryResult {
    /// Best first.
    pub memories: Vec<ScoredMemory>,
    /// The memories as a numbered list, ready to put in a prompt.
    pub context: String,
    /// Served from the response cache (`policies/caching.yaml`).
    pub cached: bool,
}

/// Retrieve the memories most relevant to a text, with relevance scores.
#[utoipa::path(post, path = "/v1/retrieve", tag = "retrieval", request_body = RetrievalRequest,
    security(("bearer" = [])),
    responses((status = 200, body = Envelope<RetrievalResult>), (status = 400, body = ErrorEnvelope)))]
pub async fn retrieve(
    State(state): State<AppState>,
    ctx: Ctx,
    auth: Auth,
    ApiJson(body): ApiJson<RetrievalRequest>,
) -> Result<ApiOk<Value>, ApiError> {
    let principal = auth.require(Scope::Read)?;
    let (scope, params, usage) = (principal.into(), body.params()?, &ctx.0.usage);
    let m = &state.memories;
    let result = m
        .cached(&scope, Kind::Retrieve, &params, usage, || async {
            let memories = m.search(&scope, &params, usage).await?;
            Ok(json!(RetrievalResult { memories, cached: false }))
        })
        .await?;
    Ok(ApiOk::ok(result))
}

/// Query memories with a context: the relevant memories and a prompt-ready context block.
#[utoipa::path(post, path = "/v1/query", tag = "retrieval", request_body = RetrievalRequest,
    security(("bearer" = [])),
    responses((status = 200, body = Envelope<QueryResult>), (status = 400, body = ErrorEnvelope)))]
pub async fn query(
    State(state): State<AppState>,
    ctx: Ctx,
    auth: Auth,
    ApiJson(body): ApiJson<RetrievalRequest>,
) -> Result<ApiOk<Value>, ApiError> {
    let principal = auth.require(Scope::Read)?;
    let (scope, params, usage) = (principal.into(), body.params()?, &ctx.0.usage);
    let m = &state.memories;
    let result = m
        .cached(&scope, Kind::Query, &params, usage, || async {
            let memories = m.search(&scope, &params, usage).await?;
            let context = memories
                .iter()
                .enumerate()
                .map(|(i, m)| format!("{}. {}", i + 1, m.memory.text))
                .collect::<Vec<_>>()
                .join("\n");
            Ok(json!(QueryResult { memories, context, cached: false }))
        })
        .await?;
    Ok(ApiOk::ok(result))
}

/// Answer a question from memory: the answer and the memories it used.
#[utoipa::path(post, path = "/v1/query/answer", tag = "retrieval", request_body = RetrievalRequest,
    security(("bearer" = [])),
    responses((status = 200, body = Envelope<AnswerResult>), (status = 400, body = ErrorEnvelope), (status = 502, body = ErrorEnvelope)))]
pub async fn answer(
    State(state): State<AppState>,
    ctx: Ctx,
    auth: Auth,
    ApiJson(body): ApiJson<RetrievalRequest>,
) -> Result<ApiOk<Value>, ApiError> {
    let principal = auth.require(Scope::Read)?;
    let (scope, params, usage) = (principal.into(), body.params()?, &ctx.0.usage);
    let m = &state.memories;
    let plan = principal.plan.as_str();
    let result = m
        .cached(&scope, Kind::Answer, &params, usage, || async {
            Ok(json!(m.answer(&scope, &params, plan, usage).await?))
        })
        .await?;
    Ok(ApiOk::ok(result))
}
