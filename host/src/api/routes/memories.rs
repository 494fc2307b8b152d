//! `/v1/memories`: create, read, update, delete, list, clear, history.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::api::AppState;
use crate::api::envelope::{ApiOk, Ctx, Envelope, ErrorEnvelope};
use crate::api::error::ApiError;
use crate::api::extract::{ApiJson, Auth};
use crate::auth::Scope;
use crate::memories::filter::{Entity, MemoryFilter};
use crate::memories::{Actor, Memory, MemoryError, MemoryEvent, MemoryPage, MemoryScope, Scopes};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateMemory {
    /// The memory, in natural language. Give `text` or `messages`.
    #[schema(example = "Alice prefers green tea in the morning.", min_length = 1, max_length = 100000)]
    pub text: Option<String>,
    /// Dialogue turns to extract memories from with the org's extractor
    /// plugin, instead of `text`: the answer lists what was added, updated,
    /// deleted or skipped (mem0's add).
    pub messages: Option<Vec<crate::extraction::Message>>,
    /// With `messages`: extract as a batch job instead of waiting (202 with
    /// the job; poll `GET /v1/batch/{job_id}`).
    #[serde(rename = "async", default)]
    pub run_async: bool,
    /// With `messages`: the extractor to use, by plugin name, among those
    /// offered to the org (activated for it, its plan or globally).
    pub strategy: Option<String>,
    /// Any JSON object; filterable by top-level keys.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
    /// Whom or what the memory is about (mem0's entity scopes): indexed,
    /// filterable, listable; 1 to 128 characters each.
    pub user_id: Option<String>,
    pub agent_id: Option<String>,
    pub app_id: Option<String>,
    pub run_id: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateMemory {
    #[schema(min_length = 1, max_length = 100000)]
    pub text: Option<String>,
    /// Replaces the whole metadata object.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Deleted {
    pub deleted: u64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MemoryHistory {
    pub memory_id: String,
    pub events: Vec<MemoryEvent>,
}

fn actor(ctx: &Ctx, auth: &Auth) -> Actor {
    Actor {
        request_id: Some(ctx.0.request_id.clone()),
        key_id: Some(auth.0.key_id.clone()),
        source: None,
        op_key: None,
    }
}

/// Create a memory from `text`, or extract memories from `messages`
/// (dialogue turns) with the org's extractor plugin.
#[utoipa::path(post, path = "/v1/memories", tag = "memories", request_body = CreateMemory,
    security(("bearer" = [])),
    responses((status = 201, body = Envelope<Memory>),
        (status = 200, description = "`messages`: what the extractor did", body = Envelope<crate::extraction::ExtractionResult>),
        (status = 202, description = "`messages` with `async`: the job", body = Envelope<crate::jobs::Job>),
        (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope),
        (status = 422, description = "NO_EXTRACTOR or EXTRACTION_REFUSED", body = ErrorEnvelope),
        (status = 502, description = "EXTRACTOR_FAILED", body = ErrorEnvelope)))]
pub async fn create(
    State(state): State<AppState>,
    ctx: Ctx,
    auth: Auth,
    tags: crate::api::extract::UsageTags,
    ApiJson(body): ApiJson<CreateMemory>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let principal = auth.require(Scope::Write)?;
    let scopes = Scopes { user_id: body.user_id, agent_id: body.agent_id, app_id: body.app_id, run_id: body.run_id };
    let actor = actor(&ctx, &auth);
    match (body.text, body.messages) {
        (Some(_), None) if body.run_async => {
            Err(ApiError::invalid_field("async", "`async` applies to `messages`; a `text` memory is stored at once"))
        }
        (Some(_), None) if body.strategy.is_some() => {
            Err(ApiError::invalid_field("strategy", "`strategy` (an extractor) applies to `messages`"))
        }
        (Some(text), None) => {
            let memory =
                state.memories.create(&principal.into(), text, body.metadata, scopes, &actor, &ctx.0.usage).await?;
            Ok(ApiOk::created(memory).into_response())
        }
        (None, Some(messages)) if body.run_async => {
            let principal = super::batch::extractor_principal(&auth)?;
            let item = crate::jobs::ExtractItem {
                messages,
                metadata: body.metadata,
                user_id: scopes.user_id,
                agent_id: scopes.agent_id,
                app_id: scopes.app_id,
                run_id: scopes.run_id,
            };
            let job =
                state.jobs.submit(principal, crate::jobs::NewJob::Extract(vec![item]), tags.0, body.strategy).await?;
            Ok(super::batch::accepted(job))
        }
        (None, Some(messages)) => {
            // The extractor reads existing memories, and the answer shows
            // what it changed: extraction needs `read` as well.
            let principal = auth.require(Scope::Read)?;
            let scope: MemoryScope = principal.into();
            let caller = crate::extraction::Caller {
                scope: &scope,
                org_id: &principal.org_id,
                plan: &principal.plan,
                may_delete: principal.has_scope(Scope::Delete),
                strategy: body.strategy.as_deref(),
            };
            let result = crate::extraction::extract(
                &state.memories,
                &state.plugins,
                caller,
                messages,
                body.metadata,
                scopes,
                &actor,
                &ctx.0.usage,
            )
            .await?;
            Ok(ApiOk::ok(result).into_response())
        }
        (Some(_), Some(_)) => Err(ApiError::invalid_field("text", "give `text` or `messages`, not both")),
        (None, None) => {
            Err(ApiError::invalid_field("text", "give `text` (a memory) or `messages` (dialogue to extract from)"))
        }
    }
}

/// Most items in one `POST /v1/batch/memories`.
pub const MAX_BATCH_ITEMS: usize = 1000;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchCreate {
    /// 1 to 1 000 memories, each created on its own: one that fails does
    /// not stop the others.
    pub memories: Vec<crate::jobs::MemoryItem>,
    /// Create them in a batch job instead of waiting (202 with the job).
    #[serde(rename = "async", default)]
    pub run_async: bool,
}

/// What became of one item of a batch.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BatchItemResult {
    /// The item's position in the request.
    pub index: usize,
    /// `created` or `failed`.
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,
    /// Why it failed: `{code, message, field?}` as in the error envelope.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub error: Option<Value>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BatchResult {
    pub created: usize,
    pub failed: usize,
    pub results: Vec<BatchItemResult>,
}

/// Create up to 1 000 memories in one request, each on its own: the answer
/// has a result per item, in order, and says which failed and why.
#[utoipa::path(post, path = "/v1/batch/memories", tag = "memories", request_body = BatchCreate,
    security(("bearer" = [])),
    responses((status = 200, body = Envelope<BatchResult>),
        (status = 202, description = "`async`: the job", body = Envelope<crate::jobs::Job>), (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope)))]
pub async fn batch_create(
    State(state): State<AppState>,
    ctx: Ctx,
    auth: Auth,
    tags: crate::api::extract::UsageTags,
    ApiJson(body): ApiJson<BatchCreate>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let principal = auth.require(Scope::Write)?;
    if body.memories.is_empty() || body.memories.len() > MAX_BATCH_ITEMS {
        return Err(ApiError::invalid_field(
            "memories",
            format!("give 1 to {MAX_BATCH_ITEMS} memories (got {})", body.memories.len()),
        ));
    }
    if body.run_async {
        let items = body.memories;
        let job = state.jobs.submit(principal, crate::jobs::NewJob::Memories(items), tags.0, None).await?;
        return Ok(super::batch::accepted(job));
    }
    let scope: MemoryScope = principal.into();
    let actor = actor(&ctx, &auth);
    let mut results = Vec::with_capacity(body.memories.len());
    for (index, item) in body.memories.into_iter().enumerate() {
        let scopes = item.scopes();
        match state.memories.create(&scope, item.text, item.metadata, scopes, &actor, &ctx.0.usage).await {
            Ok(memory) => results.push(BatchItemResult { index, status: "created", memory: Some(memory), error: None }),
            Err(MemoryError::Invalid { field, message }) => {
                let error = serde_json::json!({"code": "INVALID_REQUEST", "message": message, "field": field});
                results.push(BatchItemResult { index, status: "failed", memory: None, error: Some(error) });
            }
            Err(MemoryError::Provider(e)) => {
                let error = serde_json::json!({"code": "PROVIDER_ERROR", "message": e.to_string()});
                results.push(BatchItemResult { index, status: "failed", memory: None, error: Some(error) });
            }
            // The store itself failing fails the request (items before it are kept).
            Err(e) => return Err(e.into()),
        }
    }
    let created = results.iter().filter(|r| r.status == "created").count();
    Ok(ApiOk::ok(BatchResult { created, failed: results.len() - created, results }).into_response())
}

/// Get a memory.
#[utoipa::path(get, path = "/v1/memories/{id}", tag = "memories", security(("bearer" = [])),
    params(("id" = String, Path, description = "memory id (UUID)")),
    responses((status = 200, body = Envelope<Memory>), (status = 404, body = ErrorEnvelope)))]
pub async fn get(
    State(state): State<AppState>,
    ctx: Ctx,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<ApiOk<Memory>, ApiError> {
    let principal = auth.require(Scope::Read)?;
    Ok(ApiOk::ok(state.memories.get(&principal.into(), &id, &ctx.0.usage).await?))
}

/// Update a memory's text and/or metadata.
#[utoipa::path(put, path = "/v1/memories/{id}", tag = "memories", request_body = UpdateMemory,
    security(("bearer" = [])), params(("id" = String, Path, description = "memory id (UUID)")),
    responses((status = 200, body = Envelope<Memory>), (status = 400, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope)))]
pub async fn update(
    State(state): State<AppState>,
    ctx: Ctx,
    auth: Auth,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateMemory>,
) -> Result<ApiOk<Memory>, ApiError> {
    let principal = auth.require(Scope::Write)?;
    let memory = state
        .memories
        .update(&principal.into(), &id, body.text, body.metadata, &actor(&ctx, &auth), &ctx.0.usage)
        .await?;
    Ok(ApiOk::ok(memory))
}

/// Delete a memory. Its history stays readable.
#[utoipa::path(delete, path = "/v1/memories/{id}", tag = "memories", security(("bearer" = [])),
    params(("id" = String, Path, description = "memory id (UUID)")),
    responses((status = 200, body = Envelope<Deleted>), (status = 404, body = ErrorEnvelope)))]
pub async fn delete(
    State(state): State<AppState>,
    ctx: Ctx,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<ApiOk<Deleted>, ApiError> {
    let principal = auth.require(Scope::Delete)?;
    state.memories.delete(&principal.into(), &id, &actor(&ctx, &auth), &ctx.0.usage).await?;
    Ok(ApiOk::ok(Deleted { deleted: 1 }))
}

/// The history of a memory: every change, oldest first.
#[utoipa::path(get, path = "/v1/memories/{id}/history", tag = "memories", security(("bearer" = [])),
    params(("id" = String, Path, description = "memory id (UUID)")),
    responses((status = 200, body = Envelope<MemoryHistory>), (status = 404, body = ErrorEnvelope)))]
pub async fn history(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<ApiOk<MemoryHistory>, ApiError> {
    let principal = auth.require(Scope::Read)?;
    let events = state.memories.history(&principal.into(), &id).await?;
    Ok(ApiOk::ok(MemoryHistory { memory_id: id, events }))
}

/// List memories, newest first, with cursor pagination and metadata filters.
#[utoipa::path(get, path = "/v1/memories", tag = "memories", security(("bearer" = [])),
    params(
        ("limit" = Option<u32>, Query, description = "1 to 100, default 20", minimum = 1, maximum = 100),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
        ("metadata.<key>" = Option<String>, Query, description = "only memories whose metadata `<key>` equals this value; repeatable with other keys"),
        ("user_id" = Option<String>, Query, description = "only this user's memories (also `agent_id`, `app_id`, `run_id`)"),
        ("filters" = Option<String>, Query, description = "a filter in the JSON grammar of `POST /v1/retrieve` (AND, OR, NOT, operators), URL-encoded"),
    ),
    responses((status = 200, body = Envelope<MemoryPage>), (status = 400, body = ErrorEnvelope)))]
pub async fn list(
    State(state): State<AppState>,
    ctx: Ctx,
    auth: Auth,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<ApiOk<MemoryPage>, ApiError> {
    let principal = auth.require(Scope::Read)?;
    let query = ListQuery::parse(params, &["limit", "cursor"])?;
    let limit = query
        .single
        .get("limit")
        .map(|l| {
            l.parse::<u32>().map_err(|_| ApiError::invalid_field("limit", "limit must be a whole number from 1 to 100"))
        })
        .transpose()?;
    let page = state
        .memories
        .list(&principal.into(), limit, query.single.get("cursor").map(String::as_str), &query.filter, &ctx.0.usage)
        .await?;
    Ok(ApiOk::ok(page))
}

/// Delete every memory of the environment (or those matching `metadata.<key>`
/// filters). Requires `confirm=true`.
#[utoipa::path(delete, path = "/v1/memories", tag = "memories", security(("bearer" = [])),
    params(
        ("confirm" = bool, Query, description = "must be `true`"),
        ("metadata.<key>" = Option<String>, Query, description = "only memories whose metadata `<key>` equals this value"),
        ("user_id" = Option<String>, Query, description = "only this user's memories (also `agent_id`, `app_id`, `run_id`)"),
        ("filters" = Option<String>, Query, description = "a filter in the JSON grammar of `POST /v1/retrieve`, URL-encoded"),
    ),
    responses((status = 200, body = Envelope<Deleted>), (status = 400, body = ErrorEnvelope)))]
pub async fn delete_all(
    State(state): State<AppState>,
    ctx: Ctx,
    auth: Auth,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<ApiOk<Deleted>, ApiError> {
    let principal = auth.require(Scope::Delete)?;
    let query = ListQuery::parse(params, &["confirm"])?;
    if query.single.get("confirm").map(String::as_str) != Some("true") {
        return Err(ApiError::invalid_field(
            "confirm",
            "deleting all memories needs explicit confirmation: add `?confirm=true`",
        ));
    }
    let scope: MemoryScope = principal.into();
    let deleted = state.memories.delete_all(&scope, &query.filter, &actor(&ctx, &auth)).await?;
    ctx.0.usage.add_deleted(deleted);
    Ok(ApiOk(StatusCode::OK, Deleted { deleted }))
}

/// Query parameters split into known single values and filters
/// (`metadata.*`, the entity ids, `filters`); anything else is refused so a
/// typo does not silently widen a query.
struct ListQuery {
    single: HashMap<String, String>,
    filter: MemoryFilter,
}

impl ListQuery {
    fn parse(params: Vec<(String, String)>, known: &[&str]) -> Result<ListQuery, ApiError> {
        let mut single = HashMap::new();
        let mut pairs = Vec::new();
        for (k, v) in params {
            if k.starts_with("metadata.") || k == "filters" || Entity::parse(&k).is_some() {
                pairs.push((k, v));
            } else if known.contains(&k.as_str()) {
                if single.insert(k.clone(), v).is_some() {
                    return Err(ApiError::invalid_field(k.clone(), format!("`{k}` given more than once")));
                }
            } else {
                return Err(ApiError::invalid_field(
                    k.clone(),
                    format!(
                        "unknown query parameter `{k}` (expected {}, user_id, agent_id, app_id, run_id, filters or \
                         metadata.<key>)",
                        known.join(", ")
                    ),
                ));
            }
        }
        let filter = MemoryFilter::from_query(&pairs).map_err(|e| ApiError::invalid_field("filters", e.0))?;
        Ok(ListQuery { single, filter })
    }
}
