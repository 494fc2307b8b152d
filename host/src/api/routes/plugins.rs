//! `/admin/plugins`: upload, inspect, activate, roll back and try plugins.
//! Only admin keys of an operator org reach these handlers (the request
//! path's `require_operator` layer): plugins decide every tenant's prices
//! and limits.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::api::AppState;
use crate::api::envelope::{ApiOk, Envelope, ErrorEnvelope};
use crate::api::error::ApiError;
use crate::api::extract::{ApiJson, ApiQuery, Auth, RawBody};
use crate::audit::{self, Actor, NewEntry};
use crate::auth::Principal;
use crate::plugins::uploads::{Phase, UploadInfo};
use crate::plugins::validate::UploadError;
use crate::plugins::{
    ActivateRequest, ActivationRecord, CallInput, DeactivateRequest, LimitOverrides, PluginError, PluginKind,
    PluginView, RollbackRequest, RunReport, Uploaded,
};

fn who(p: &Principal) -> String {
    format!("{}/{}", p.org_id, p.key_id)
}

/// Records an operator's plugin change in the audit log (after it took
/// effect: the registry commits the change itself).
async fn audit_plugin(state: &AppState, p: &Principal, action: &str, target: &str, after: serde_json::Value) {
    let entry = NewEntry::action(&Actor::key(&p.key_id), Some(&p.org_id), action, target, None, Some(after));
    if let Err(e) = audit::record(&state.db, vec![entry]).await {
        tracing::error!(error = %e, action, target, "could not write the audit entry of a plugin change");
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct UploadParams {
    /// The kind the plugin must be (`pricing`, `rate-limit`, `alert-channel`,
    /// `extractor`); default: inferred from the world it implements.
    pub kind: Option<String>,
    /// Per-plugin limit overrides (else the kind's configured limits).
    pub fuel: Option<u64>,
    pub deadline_ms: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub max_input_bytes: Option<u64>,
    pub max_output_bytes: Option<u64>,
    /// Seconds to wait for the compile and checks (0–60, default 10); past
    /// it the answer is 202 and `GET /admin/plugins/{id}` shows the phase.
    pub wait: Option<u64>,
}

const DEFAULT_UPLOAD_WAIT_SECS: u64 = 10;
const MAX_UPLOAD_WAIT_SECS: u64 = 60;

fn parse_kind(s: &str, field: &str) -> Result<PluginKind, ApiError> {
    PluginKind::parse(s).ok_or_else(|| {
        ApiError::invalid_field(
            field,
            format!("unknown plugin kind `{s}`; expected one of {}", PluginKind::ALL.map(|k| k.as_str()).join(", ")),
        )
    })
}

/// An upload not (yet) stored: where it stands.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UploadStatus {
    #[serde(flatten)]
    pub upload: UploadInfo,
    /// `queued` (waiting for a compile slot), `compiling` (compile and
    /// checks), `ready` (stored: `GET` it again for the plugin) or `refused`.
    pub state: &'static str,
    pub elapsed_ms: i64,
    /// Why it was refused, as the upload's own answer would have said.
    #[schema(value_type = Option<Object>)]
    pub error: Option<serde_json::Value>,
}

fn upload_status(info: UploadInfo, phase: &Phase) -> UploadStatus {
    let error = match phase {
        Phase::Done(Err(e)) => {
            let api = ApiError::from(e.as_ref());
            Some(serde_json::json!({ "code": api.code(), "message": api.to_string(), "details": api.details() }))
        }
        _ => None,
    };
    let elapsed_ms = (chrono::Utc::now() - info.started_at).num_milliseconds().max(0);
    UploadStatus { upload: info, state: phase.name(), elapsed_ms, error }
}

/// What `POST /admin/plugins` answers: the stored plugin, or the phase of
/// an upload still compiling.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum UploadAnswer {
    // Boxed: the stored plugin is twice the size of the pending phase.
    Stored(Box<Uploaded>),
    Pending(UploadStatus),
}

/// Reads an upload's body up to the plugin size cap, so an oversized plugin
/// is refused as `PLUGIN_TOO_LARGE` (with the sizes) before it is buffered.
async fn read_plugin_body(headers: &HeaderMap, body: Body, limit: u64) -> Result<Vec<u8>, ApiError> {
    use futures_util::StreamExt;
    let too_large = |size: u64| ApiError::from(PluginError::Upload(UploadError::TooLarge { size, limit }));
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(size) = declared
        && size > limit
    {
        return Err(too_large(size));
    }
    let mut bytes = Vec::with_capacity(declared.unwrap_or(0) as usize);
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::invalid(format!("could not read the request body: {e}")))?;
        if (bytes.len() + chunk.len()) as u64 > limit {
            return Err(too_large((bytes.len() + chunk.len()) as u64));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// Upload a plugin: the `.wasm` component as the raw body. It is compiled
/// and validated (component, world, WIT version, imports, `describe`,
/// self-check) in the background and stored by SHA-256; uploading the same
/// bytes again changes nothing. The answer waits up to `wait` seconds: a
/// large guest (Python, JavaScript) may answer 202 first.
#[utoipa::path(post, path = "/admin/plugins", tag = "plugins", params(UploadParams),
    request_body(content = Vec<u8>, content_type = "application/wasm", description = "The component (at most `plugins.max_plugin_bytes`, 32 MiB by default)"),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Stored", body = Envelope<Uploaded>),
        (status = 200, description = "These bytes were already stored", body = Envelope<Uploaded>),
        (status = 202, description = "Still compiling: poll `GET /admin/plugins/{id}` (Location)", body = Envelope<UploadStatus>),
        (status = 413, description = "PLUGIN_TOO_LARGE, with `details.size_bytes` and `details.limit_bytes`", body = ErrorEnvelope),
        (status = 422, description = "Refused: NOT_A_COMPONENT, INVALID_COMPONENT, WRONG_WORLD, MISSING_EXPORT, \
            WIT_VERSION_UNSUPPORTED, FORBIDDEN_IMPORT, SELF_CHECK_FAILED …; `details.reason` and `details.trap` say why", body = ErrorEnvelope),
        (status = 503, description = "UPLOADS_BUSY: too many uploads in flight; retry after `Retry-After`", body = ErrorEnvelope),
    ))]
pub async fn upload(
    State(state): State<AppState>,
    auth: Auth,
    ApiQuery(params): ApiQuery<UploadParams>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let principal = &auth.0;
    let kind = params.kind.as_deref().map(|k| parse_kind(k, "kind")).transpose()?;
    let wait = params.wait.unwrap_or(DEFAULT_UPLOAD_WAIT_SECS);
    if wait > MAX_UPLOAD_WAIT_SECS {
        return Err(ApiError::invalid_field(
            "wait",
            format!("wait is 0 to {MAX_UPLOAD_WAIT_SECS} seconds, got {wait}"),
        ));
    }
    let body = read_plugin_body(&headers, body, state.plugins.runtime().config().max_plugin_bytes).await?;
    if body.is_empty() {
        return Err(ApiError::invalid_field("body", "send the plugin's .wasm file as the request body"));
    }
    let limits = LimitOverrides {
        fuel: params.fuel,
        deadline_ms: params.deadline_ms,
        memory_bytes: params.memory_bytes,
        max_input_bytes: params.max_input_bytes,
        max_output_bytes: params.max_output_bytes,
    };
    let mut ticket = state.plugins.start_upload(body, kind, limits, &who(principal)).await?;
    if ticket.started {
        // Audited when stored, which may be after this request answered.
        let mut phase = ticket.phase.clone();
        let (state, principal) = (state.clone(), auth.0.clone());
        tokio::spawn(async move {
            let created = match phase.wait_for(Phase::is_done).await.as_deref() {
                Ok(Phase::Done(Ok(up))) if up.created => {
                    let p = &up.plugin;
                    let after = serde_json::json!({ "kind": p.kind, "name": p.name, "version": p.version, "size_bytes": p.size_bytes });
                    Some((p.id.clone(), after))
                }
                _ => None,
            };
            if let Some((id, after)) = created {
                audit_plugin(&state, &principal, "plugin.uploaded", &id, after).await;
            }
        });
    }
    let phase = ticket.settle(Duration::from_secs(wait)).await;
    match phase {
        Phase::Done(Ok(uploaded)) => {
            let answer = UploadAnswer::Stored(uploaded.clone());
            Ok(if uploaded.created { ApiOk::created(answer) } else { ApiOk::ok(answer) }.into_response())
        }
        Phase::Done(Err(e)) => Err(ApiError::from(e.as_ref())),
        pending => {
            let location = format!("/admin/plugins/{}", ticket.info.id);
            let status = upload_status(ticket.info.clone(), &pending);
            let mut response = ApiOk(StatusCode::ACCEPTED, UploadAnswer::Pending(status)).into_response();
            if let Ok(v) = axum::http::HeaderValue::from_str(&location) {
                response.headers_mut().insert(axum::http::header::LOCATION, v);
            }
            Ok(response)
        }
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Only plugins of this kind.
    pub kind: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PluginList {
    pub plugins: Vec<PluginView>,
}

/// Stored plugins, newest first, with where each is active.
#[utoipa::path(get, path = "/admin/plugins", tag = "plugins", params(ListParams), security(("bearer" = [])),
    responses((status = 200, body = Envelope<PluginList>)))]
pub async fn list(
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<ApiOk<PluginList>, ApiError> {
    let kind = params.kind.as_deref().map(|k| parse_kind(k, "kind")).transpose()?;
    Ok(ApiOk::ok(PluginList { plugins: state.plugins.list(kind).await? }))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PluginDetail {
    #[serde(flatten)]
    pub plugin: PluginView,
    /// Every activation of this plugin, current and past, newest first.
    pub history: Vec<ActivationRecord>,
}

/// One plugin by id (its SHA-256) or a unique prefix of at least 8
/// characters. An upload not stored yet answers with its phase
/// (`queued`, `compiling`, `refused` with the error) instead.
#[utoipa::path(get, path = "/admin/plugins/{id}", tag = "plugins", security(("bearer" = [])),
    params(("id" = String, Path, description = "SHA-256 of the component, or a unique prefix")),
    responses((status = 200, body = Envelope<PluginDetail>),
        (status = 200, description = "An upload still compiling or refused", body = Envelope<UploadStatus>),
        (status = 404, body = ErrorEnvelope)))]
pub async fn get(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    match state.plugins.get(&id).await {
        Ok((plugin, history)) => Ok(ApiOk::ok(PluginDetail { plugin, history }).into_response()),
        // Not stored (yet): an upload still compiling, or refused lately.
        Err(PluginError::NotFound(missing)) => match state.plugins.upload_progress(&id) {
            Some((info, phase)) => Ok(ApiOk::ok(upload_status(info, &phase)).into_response()),
            None => Err(PluginError::NotFound(missing).into()),
        },
        Err(e) => Err(e.into()),
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RecordedCalls {
    /// Newest first; at most `plugins.recorded_calls` per plugin, on this
    /// instance since it started.
    pub calls: Vec<crate::plugins::recorder::RecordedCall>,
}

/// The last calls the service made to this plugin, redacted per kind, each
/// in the fixture format `memhost plugin test` runs (`memhost plugin
/// fixtures pull` saves them).
#[utoipa::path(get, path = "/admin/plugins/{id}/calls", tag = "plugins", security(("bearer" = [])),
    params(("id" = String, Path, description = "SHA-256 of the component, or a unique prefix")),
    responses((status = 200, body = Envelope<RecordedCalls>), (status = 404, body = ErrorEnvelope)))]
pub async fn calls(State(state): State<AppState>, Path(id): Path<String>) -> Result<ApiOk<RecordedCalls>, ApiError> {
    Ok(ApiOk::ok(RecordedCalls { calls: state.plugins.recorded_calls(&id).await? }))
}

fn activation_json(a: &ActivationRecord) -> serde_json::Value {
    serde_json::json!({
        "kind": a.kind, "target": a.target, "activation_id": a.id, "config": a.config, "canary_percent": a.canary_percent,
    })
}

/// An optional JSON body: none, empty or `null` means the default request.
fn optional_body<T: serde::de::DeserializeOwned + Default>(body: &Bytes) -> Result<T, ApiError> {
    let trimmed = body.trim_ascii();
    if trimmed.is_empty() || trimmed == b"null" {
        return Ok(T::default());
    }
    crate::api::extract::parse_json(body)
}

/// Make this plugin the active one for a target (`global`, `plan:<plan>`,
/// `org:<org id>` or `canary` with `canary_percent`), with a config that must
/// match its schema. The swap is atomic; calls in flight finish on the old one.
#[utoipa::path(post, path = "/admin/plugins/{id}/activate", tag = "plugins", request_body = ActivateRequest,
    security(("bearer" = [])),
    params(("id" = String, Path, description = "SHA-256 of the component, or a unique prefix")),
    responses((status = 200, body = Envelope<ActivationRecord>), (status = 404, body = ErrorEnvelope),
        (status = 422, description = "INVALID_CONFIG or SELF_CHECK_FAILED", body = ErrorEnvelope)))]
pub async fn activate(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    RawBody(body): RawBody,
) -> Result<ApiOk<ActivationRecord>, ApiError> {
    let principal = &auth.0;
    let request: ActivateRequest = optional_body(&body)?;
    let activation = state.plugins.activate(&id, request, &who(principal)).await?;
    audit_plugin(&state, principal, "plugin.activated", &activation.plugin_id, activation_json(&activation)).await;
    Ok(ApiOk::ok(activation))
}

/// Go back from this plugin (active for the target) to the version active
/// before it, or to `to`.
#[utoipa::path(post, path = "/admin/plugins/{id}/rollback", tag = "plugins", request_body = RollbackRequest,
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The currently active plugin")),
    responses((status = 200, body = Envelope<ActivationRecord>), (status = 404, body = ErrorEnvelope),
        (status = 409, description = "Not active for the target, or nothing earlier", body = ErrorEnvelope)))]
pub async fn rollback(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    RawBody(body): RawBody,
) -> Result<ApiOk<ActivationRecord>, ApiError> {
    let principal = &auth.0;
    let request: RollbackRequest = optional_body(&body)?;
    let activation = state.plugins.rollback(&id, request, &who(principal)).await?;
    audit_plugin(&state, principal, "plugin.rolled_back", &activation.plugin_id, activation_json(&activation)).await;
    Ok(ApiOk::ok(activation))
}

/// Stop using this plugin for a target; lookups fall through to the next
/// route (org, plan, canary, global).
#[utoipa::path(post, path = "/admin/plugins/{id}/deactivate", tag = "plugins", request_body = DeactivateRequest,
    security(("bearer" = [])),
    params(("id" = String, Path, description = "SHA-256 of the component, or a unique prefix")),
    responses((status = 200, body = Envelope<PluginView>), (status = 404, body = ErrorEnvelope),
        (status = 409, body = ErrorEnvelope)))]
pub async fn deactivate(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    RawBody(body): RawBody,
) -> Result<ApiOk<PluginView>, ApiError> {
    let request: DeactivateRequest = optional_body(&body)?;
    let target = request.target.clone().unwrap_or_else(|| "global".into());
    let view = state.plugins.deactivate(&id, request).await?;
    audit_plugin(&state, &auth.0, "plugin.deactivated", &id, serde_json::json!({ "target": target })).await;
    Ok(ApiOk::ok(view))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// The call, e.g. `{"function": "rate", "plan": "starter", "usage": {"api_calls": 12000}}`.
    pub input: CallInput,
    /// The plugin's config for this run (default `{}`).
    #[schema(value_type = Option<Object>)]
    pub config: Option<serde_json::Value>,
}

/// Run a stored plugin on an input in the server's sandbox, with its limits:
/// returns its output (or its error), fuel, peak memory, time and digest.
#[utoipa::path(post, path = "/admin/plugins/{id}/run", tag = "plugins", request_body = RunRequest,
    security(("bearer" = [])),
    params(("id" = String, Path, description = "SHA-256 of the component, or a unique prefix")),
    responses((status = 200, body = Envelope<RunReport>), (status = 404, body = ErrorEnvelope),
        (status = 422, description = "PLUGIN_FAILED: trapped, out of fuel, over its deadline or memory", body = ErrorEnvelope)))]
pub async fn run(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<RunRequest>,
) -> Result<ApiOk<RunReport>, ApiError> {
    Ok(ApiOk::ok(state.plugins.run(&id, body.input, body.config).await?))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunActiveRequest {
    pub input: CallInput,
    /// Resolve the active plugin as for this org (org, plan, canary routes).
    pub org_id: Option<String>,
    /// Resolve as for this plan (default: the org's plan, if `org_id` is given).
    pub plan: Option<String>,
    /// Resolve as for a `live` (default) or `test` key: what a canary
    /// routing rule sees as `env`.
    pub env: Option<String>,
}

/// Run whichever plugin of a kind is active (for an org or plan, else
/// globally) with its activation's config.
#[utoipa::path(post, path = "/admin/plugins/active/{kind}/run", tag = "plugins", request_body = RunActiveRequest,
    security(("bearer" = [])),
    params(("kind" = String, Path, description = "pricing, rate-limit, alert-channel or extractor")),
    responses((status = 200, body = Envelope<RunReport>), (status = 404, body = ErrorEnvelope),
        (status = 422, body = ErrorEnvelope)))]
pub async fn run_active(
    State(state): State<AppState>,
    Path(kind): Path<String>,
    ApiJson(body): ApiJson<RunActiveRequest>,
) -> Result<ApiOk<RunReport>, ApiError> {
    let kind = parse_kind(&kind, "kind")?;
    let plan = match (&body.plan, &body.org_id) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(org)) => Some(state.auth.get_org(org).await?.plan),
        (None, None) => None,
    };
    let env = match body.env.as_deref() {
        None | Some("live") => "live",
        Some("test") => "test",
        Some(other) => return Err(ApiError::invalid_field("env", format!("env `{other}`: expected live or test"))),
    };
    Ok(ApiOk::ok(state.plugins.run_active(kind, body.org_id.as_deref(), plan.as_deref(), env, body.input).await?))
}
