//! `/v1/batch`: jobs off the request path (extraction from many dialogues,
//! bulk creation, re-embedding), their status, results and cancellation.
//! Submitting answers 202 with the job and a `Location` to poll.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::api::AppState;
use crate::api::envelope::{ApiOk, Envelope, ErrorEnvelope};
use crate::api::error::ApiError;
use crate::api::extract::{ApiJson, ApiQuery, Auth, UsageTags};
use crate::auth::{Principal, Scope};
use crate::jobs::{ExtractItem, Job, NewJob};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchExtract {
    /// 1 to 1 000 dialogues, each extracted on its own with the org's
    /// extractor (each item's outcome is in the job's `results`).
    pub dialogues: Vec<ExtractItem>,
    /// The extractor to use, by plugin name, among those offered to the org
    /// (activated for it, its plan or globally); default: its active one.
    pub strategy: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListJobs {
    /// Only jobs in this status.
    pub status: Option<String>,
    /// 1 to 100 (default 20).
    pub limit: Option<u32>,
    /// A job id from the previous page: older jobs.
    pub before: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JobList {
    pub jobs: Vec<Job>,
    /// Pass as `before` for the next page.
    pub next_before: Option<String>,
}

/// A 202 with the job and where to poll it.
pub fn accepted(job: Job) -> Response {
    let location = format!("/v1/batch/{}", job.id);
    let mut response = ApiOk(StatusCode::ACCEPTED, job).into_response();
    if let Ok(v) = axum::http::HeaderValue::from_str(&location) {
        response.headers_mut().insert(axum::http::header::LOCATION, v);
    }
    response
}

/// Extract memories from many dialogues, as a job.
#[utoipa::path(post, path = "/v1/batch/extract", tag = "batch", request_body = BatchExtract,
    security(("bearer" = [])),
    responses((status = 202, description = "queued; poll `Location`", body = Envelope<Job>),
        (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope),
        (status = 429, description = "TOO_MANY_JOBS", body = ErrorEnvelope)))]
pub async fn extract(
    State(state): State<AppState>,
    auth: Auth,
    tags: UsageTags,
    ApiJson(body): ApiJson<BatchExtract>,
) -> Result<Response, ApiError> {
    let principal = extractor_principal(&auth)?;
    let job = state.jobs.submit(principal, NewJob::Extract(body.dialogues), tags.0, body.strategy).await?;
    Ok(accepted(job))
}

/// Extraction reads and writes memories: both scopes.
pub fn extractor_principal(auth: &Auth) -> Result<&Principal, ApiError> {
    auth.require(Scope::Write)?;
    auth.require(Scope::Read)
}

/// Re-embed the org's memories with the current embedder, as a job;
/// retrieval keeps answering from the old vectors until each is replaced.
#[utoipa::path(post, path = "/v1/batch/embeddings", tag = "batch",
    security(("bearer" = [])),
    responses((status = 202, description = "queued; poll `Location`", body = Envelope<Job>),
        (status = 401, body = ErrorEnvelope), (status = 429, description = "TOO_MANY_JOBS", body = ErrorEnvelope)))]
pub async fn embeddings(State(state): State<AppState>, auth: Auth, tags: UsageTags) -> Result<Response, ApiError> {
    let principal = auth.require(Scope::Write)?;
    let job = state.jobs.submit(principal, NewJob::Embeddings, tags.0, None).await?;
    Ok(accepted(job))
}

/// A job: status, progress, and each item's result or error.
#[utoipa::path(get, path = "/v1/batch/{job_id}", tag = "batch", security(("bearer" = [])),
    params(("job_id" = String, Path, description = "the job's id")),
    responses((status = 200, body = Envelope<Job>), (status = 404, body = ErrorEnvelope)))]
pub async fn get(State(state): State<AppState>, auth: Auth, Path(id): Path<String>) -> Result<ApiOk<Job>, ApiError> {
    let principal = auth.require(Scope::Read)?;
    Ok(ApiOk::ok(state.jobs.get(principal, &id, true).await?))
}

/// The org's jobs, newest first (without item results).
#[utoipa::path(get, path = "/v1/batch", tag = "batch", security(("bearer" = [])), params(ListJobs),
    responses((status = 200, body = Envelope<JobList>), (status = 400, body = ErrorEnvelope)))]
pub async fn list(
    State(state): State<AppState>,
    auth: Auth,
    ApiQuery(q): ApiQuery<ListJobs>,
) -> Result<ApiOk<JobList>, ApiError> {
    let principal = auth.require(Scope::Read)?;
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::invalid_field("limit", format!("limit must be 1 to 100 (got {limit})")));
    }
    let jobs = state.jobs.list(principal, q.status.as_deref(), limit, q.before.as_deref()).await?;
    let next_before = (jobs.len() == limit as usize).then(|| jobs.last().map(|j| j.id.clone())).flatten();
    Ok(ApiOk::ok(JobList { jobs, next_before }))
}

/// Cancel a job: a queued one at once, a running one before its next item
/// (what is done stays done).
#[utoipa::path(post, path = "/v1/batch/{job_id}/cancel", tag = "batch", security(("bearer" = [])),
    params(("job_id" = String, Path, description = "the job's id")),
    responses((status = 200, body = Envelope<Job>), (status = 404, body = ErrorEnvelope),
        (status = 409, description = "JOB_FINISHED", body = ErrorEnvelope)))]
pub async fn cancel(State(state): State<AppState>, auth: Auth, Path(id): Path<String>) -> Result<ApiOk<Job>, ApiError> {
    let principal = auth.require(Scope::Write)?;
    Ok(ApiOk::ok(state.jobs.cancel(principal, &id).await?))
}
