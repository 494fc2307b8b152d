//! `/health` (the process answers) and `/ready` (it can serve: database reachable).

use axum::extract::State;
use serde::Serialize;

use crate::api::AppState;
use crate::api::envelope::{ApiOk, Envelope, ErrorEnvelope};
use crate::api::error::ApiError;

#[derive(Serialize, utoipa::ToSchema)]
pub struct Health {
    pub status: &'static str,
    pub version: &'static str,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Ready {
    pub status: &'static str,
    pub database: &'static str,
    /// Rate limits: where they are decided, and failures counted since start.
    /// Ready even in `local-fallback` (fail-open serves on).
    pub limits: crate::limits::LimitStatsSnapshot,
    /// Plugin calls the sandbox stopped, and those a previous version answered.
    pub plugins: crate::plugins::PluginStats,
    /// The request path: handler panics answered with 500 since start.
    pub requests: crate::api::request_path::PathStatsSnapshot,
    /// Background loops, and how often each had to be restarted.
    pub background: Vec<crate::supervisor::LoopStatus>,
}

/// Liveness.
#[utoipa::path(get, path = "/health", tag = "operations", responses((status = 200, body = Envelope<Health>)))]
pub async fn health() -> ApiOk<Health> {
    ApiOk::ok(Health { status: "ok", version: env!("CARGO_PKG_VERSION") })
}

/// Readiness: the database answers.
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses((status = 200, body = Envelope<Ready>), (status = 503, body = ErrorEnvelope)))]
pub async fn ready(State(state): State<AppState>) -> Result<ApiOk<Ready>, ApiError> {
    state.db.ping().await.map_err(|e| ApiError::NotReady(format!("database: {e}")))?;
    Ok(ApiOk::ok(Ready {
        status: "ready",
        database: state.db.backend().as_str(),
        limits: state.limits.stats(),
        plugins: state.plugins.stats(),
        requests: state.path_stats.snapshot(),
        background: state.supervisor.status(),
    }))
}

/// `GET /v1/debug/panic`, mounted only with `fault_injection = true` (tests):
/// a handler that panics, to show the request path answers 500 and serves on.
pub async fn panic_on_purpose() -> ApiOk<Health> {
    panic!("fault injection: this handler panics on purpose")
}
