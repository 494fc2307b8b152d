//! `/health` (the process answers) and `/ready` (it can serve: database reachable).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
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
    /// The usage-event writer: batches, events, failures, queue depth.
    pub usage_writer: crate::metering::meter::WriterStatsSnapshot,
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
        usage_writer: state.meter.stats(),
    }))
}

/// Prometheus series (text exposition format). With `metrics_token` set,
/// only `Authorization: Bearer <metrics_token>` may read it.
pub async fn metrics(State(state): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    if let Some(token) = state.config.metrics_token.as_deref() {
        let presented = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !crate::auth::constant_time_eq(presented.trim().as_bytes(), token.as_bytes()) {
            return ApiError::InvalidApiKey {
                reason: "metrics_token",
                message: "/metrics needs `Authorization: Bearer <metrics_token>`".into(),
            }
            .into_response();
        }
    }
    use crate::telemetry::GaugeValue;
    let mut gauges = vec![GaugeValue {
        name: "memhost_usage_queue_depth",
        labels: vec![],
        value: state.meter.stats().queue_depth as f64,
    }];
    if let Ok((queued, running)) = state.jobs.depth().await {
        for (status, n) in [("queued", queued), ("running", running)] {
            gauges.push(GaugeValue { name: "memhost_jobs", labels: vec![("status", status.into())], value: n as f64 });
        }
    }
    for (pool, size, idle) in state.db.pool_use() {
        gauges.push(GaugeValue {
            name: "memhost_db_pool_connections",
            labels: vec![("pool", pool.into()), ("state", "idle".into())],
            value: idle as f64,
        });
        gauges.push(GaugeValue {
            name: "memhost_db_pool_connections",
            labels: vec![("pool", pool.into()), ("state", "in_use".into())],
            value: (size as usize).saturating_sub(idle) as f64,
        });
    }
    for l in state.supervisor.status() {
        gauges.push(GaugeValue {
            name: "memhost_background_loop_running",
            labels: vec![("loop", l.name.into())],
            value: if l.running { 1.0 } else { 0.0 },
        });
        gauges.push(GaugeValue {
            name: "memhost_background_loop_restarts_total",
            labels: vec![("loop", l.name.into())],
            value: l.restarts as f64,
        });
    }
    (
        [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        crate::telemetry::render(&gauges),
    )
        .into_response()
}

/// `GET /v1/debug/panic`, mounted only with `fault_injection = true` (tests):
/// a handler that panics, to show the request path answers 500 and serves on.
pub async fn panic_on_purpose() -> ApiOk<Health> {
    panic!("fault injection: this handler panics on purpose")
}
