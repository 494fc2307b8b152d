//! `/v1/account` and self-service API keys.

use std::time::Duration;

use axum::Extension;
use axum::extract::{MatchedPath, Path, State};
use axum::http::Method;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::api::AppState;
use crate::api::envelope::{ApiOk, Envelope, ErrorEnvelope};
use crate::api::error::ApiError;
use crate::api::extract::{ApiJson, Auth};
use crate::api::request_path::ClientIp;
use crate::audit::Actor;
use crate::auth::{ApiKeyRecord, CreatedKey, Environment, KeyStatus, NewKey, Org, Scope};
use crate::billing::QuotaStatus;
use crate::limits::{RequestFacts, RuleStatus};

/// The caller's rate limits (the `limits` domain) and quotas (`billing`).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LimitsStatus {
    pub enabled: bool,
    /// `in-process` or `redis`; `local-fallback` while Redis is unreachable.
    pub store: &'static str,
    pub rules: Vec<RuleStatus>,
    pub quotas: Vec<QuotaStatus>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Account {
    pub org: Org,
    /// The key this request was made with.
    pub api_key: ApiKeyRecord,
    /// Rate limits with what is left now, and this period's quotas.
    pub limits: LimitsStatus,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ApiKeyList {
    pub api_keys: Vec<ApiKeyRecord>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    #[serde(default)]
    pub name: String,
    /// Default: `["read", "write"]`.
    pub scopes: Option<Vec<Scope>>,
    /// Default: the environment of the calling key. A test key can create only test keys.
    pub environment: Option<Environment>,
    /// When the key stops working (RFC 3339).
    pub expires_at: Option<DateTime<Utc>>,
    /// Alternatively, days from now until the key stops working (1 to 3650).
    #[schema(minimum = 1, maximum = 3650)]
    pub expires_in_days: Option<u32>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct RotateKeyRequest {
    /// How long the old key keeps working, in seconds (default 86400, at most 30 days).
    #[schema(maximum = 2592000)]
    pub grace_period_seconds: Option<u64>,
}

pub const DEFAULT_GRACE: Duration = Duration::from_secs(24 * 3600);
pub const MAX_GRACE: Duration = Duration::from_secs(30 * 24 * 3600);

/// The org, plan and calling key.
#[utoipa::path(get, path = "/v1/account", tag = "account", security(("bearer" = [])),
    responses((status = 200, body = Envelope<Account>), (status = 401, body = ErrorEnvelope)))]
pub async fn account(
    State(state): State<AppState>,
    auth: Auth,
    method: Method,
    route: MatchedPath,
    ip: Option<Extension<ClientIp>>,
) -> Result<ApiOk<Account>, ApiError> {
    let org = state.auth.get_org(&auth.0.org_id).await?;
    let api_key = state.auth.find_org_key(&auth.0.org_id, &auth.0.key_id).await?;
    let limits = limits_of(&state, &auth, &method, &route, ip).await;
    Ok(ApiOk::ok(Account { org, api_key, limits }))
}

/// Rate limits (with remaining amounts and reset times) and quotas (used,
/// remaining, overage) of the calling key's org.
#[utoipa::path(get, path = "/v1/account/limits", tag = "account", security(("bearer" = [])),
    responses((status = 200, body = Envelope<LimitsStatus>), (status = 401, body = ErrorEnvelope)))]
pub async fn limits(
    State(state): State<AppState>,
    auth: Auth,
    method: Method,
    route: MatchedPath,
    ip: Option<Extension<ClientIp>>,
) -> Result<ApiOk<LimitsStatus>, ApiError> {
    Ok(ApiOk::ok(limits_of(&state, &auth, &method, &route, ip).await))
}

async fn limits_of(
    state: &AppState,
    auth: &Auth,
    method: &Method,
    route: &MatchedPath,
    ip: Option<Extension<ClientIp>>,
) -> LimitsStatus {
    // The rules shown are the ones that applied to this very request.
    let client_ip = ip.and_then(|Extension(ClientIp(ip))| ip);
    let facts = RequestFacts { principal: &auth.0, method: method.as_str(), route: route.as_str(), client_ip };
    let enabled = state.limits.enabled();
    LimitsStatus {
        enabled,
        store: state.limits.store_state(),
        rules: state.limits.rule_status(&facts).await,
        quotas: if enabled { state.billing.quotas(&auth.0).await } else { Vec::new() },
    }
}

/// The org's API keys (admin scope).
#[utoipa::path(get, path = "/v1/account/api-keys", tag = "account", security(("bearer" = [])),
    responses((status = 200, body = Envelope<ApiKeyList>), (status = 403, body = ErrorEnvelope)))]
pub async fn list_keys(State(state): State<AppState>, auth: Auth) -> Result<ApiOk<ApiKeyList>, ApiError> {
    let principal = auth.require(Scope::Admin)?;
    let api_keys = state.auth.list_keys(Some(&principal.org_id)).await?;
    Ok(ApiOk::ok(ApiKeyList { api_keys }))
}

/// Create an API key (admin scope). The key is in the response only this once.
#[utoipa::path(post, path = "/v1/account/api-keys", tag = "account", request_body = CreateKeyRequest,
    security(("bearer" = [])),
    responses((status = 201, body = Envelope<CreatedKey>), (status = 400, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope)))]
pub async fn create_key(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(body): ApiJson<CreateKeyRequest>,
) -> Result<ApiOk<CreatedKey>, ApiError> {
    let principal = auth.require(Scope::Admin)?;
    let environment = body.environment.unwrap_or(principal.environment);
    if principal.environment == Environment::Test && environment == Environment::Live {
        return Err(ApiError::Forbidden("a test key cannot create live keys".into()));
    }
    let expires_at = match (body.expires_at, body.expires_in_days) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid_field("expires_at", "give expires_at or expires_in_days, not both"));
        }
        (Some(t), None) => Some(t),
        (None, Some(days)) if !(1..=3650).contains(&days) => {
            return Err(ApiError::invalid_field("expires_in_days", "expires_in_days must be from 1 to 3650"));
        }
        (None, Some(days)) => Some(Utc::now() + chrono::Duration::days(days as i64)),
        (None, None) => None,
    };
    let created = state
        .auth
        .create_key(
            NewKey {
                org_id: principal.org_id.clone(),
                name: body.name,
                environment,
                scopes: body.scopes.unwrap_or_else(|| vec![Scope::Read, Scope::Write]),
                expires_at,
            },
            &Actor::key(&principal.key_id),
        )
        .await?;
    Ok(ApiOk::created(created))
}

/// Revoke an API key of the org (admin scope). Revocation is immediate and permanent.
#[utoipa::path(delete, path = "/v1/account/api-keys/{key_id}", tag = "account", security(("bearer" = [])),
    params(("key_id" = String, Path)),
    responses((status = 200, body = Envelope<ApiKeyRecord>), (status = 404, body = ErrorEnvelope)))]
pub async fn revoke_key(
    State(state): State<AppState>,
    auth: Auth,
    Path(key_id): Path<String>,
) -> Result<ApiOk<ApiKeyRecord>, ApiError> {
    let principal = auth.require(Scope::Admin)?;
    let key = state.auth.find_org_key(&principal.org_id, &key_id).await?;
    Ok(ApiOk::ok(state.auth.set_status(&key.id, KeyStatus::Revoked, &Actor::key(&principal.key_id)).await?))
}

/// Rotate an API key (admin scope): the new key works at once, the old one
/// until the grace period ends.
#[utoipa::path(post, path = "/v1/account/api-keys/{key_id}/rotate", tag = "account", security(("bearer" = [])),
    params(("key_id" = String, Path)), request_body(content = RotateKeyRequest, content_type = "application/json"),
    responses((status = 201, body = Envelope<CreatedKey>), (status = 404, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope)))]
pub async fn rotate_key(
    State(state): State<AppState>,
    auth: Auth,
    Path(key_id): Path<String>,
    ApiJson(body): ApiJson<RotateKeyRequest>,
) -> Result<ApiOk<CreatedKey>, ApiError> {
    let principal = auth.require(Scope::Admin)?;
    let key = state.auth.find_org_key(&principal.org_id, &key_id).await?;
    let grace = body.grace_period_seconds.map_or(DEFAULT_GRACE, Duration::from_secs);
    if grace > MAX_GRACE {
        return Err(ApiError::invalid_field("grace_period_seconds", "the grace period is at most 30 days (2592000 s)"));
    }
    Ok(ApiOk::created(state.auth.rotate(&key.id, grace, &Actor::key(&principal.key_id)).await?))
}
