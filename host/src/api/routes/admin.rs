//! `/admin` reads over usage and the audit log (operators only): the metric
//! catalogue, a metric over time with label filters (seed 004's shape), the
//! per-tenant export of a period, the audit log and its verification.

use std::collections::BTreeMap;

use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::usage::{csv_response, parse_time};
use crate::api::AppState;
use crate::api::envelope::{ApiOk, Envelope, ErrorEnvelope};
use crate::api::error::ApiError;
use crate::audit::{self, AuditFilter, Entry, EntryKind, Verification};
use crate::auth::Environment;
use crate::metering::export::{self, UsageExport};
use crate::metering::policy::{Aggregation, Metric};
use crate::metering::query::{self, Label, Point, SeriesQuery};
use crate::metering::{parse_period, period_end};

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MetricCatalogue {
    pub metrics: Vec<Metric>,
    /// Labels `GET /admin/metrics/{name}` filters and groups by (any tag too).
    pub labels: Vec<&'static str>,
    /// Why the policy file on disk was not loaded, if it is not valid (the
    /// previous policy stays in force).
    pub policy_error: Option<String>,
}

/// The billable metrics of the policy in force.
#[utoipa::path(get, path = "/admin/metrics", tag = "operations", security(("bearer" = [])),
    responses((status = 200, body = Envelope<MetricCatalogue>), (status = 403, body = ErrorEnvelope)))]
pub async fn metrics(State(state): State<AppState>) -> ApiOk<MetricCatalogue> {
    ApiOk::ok(MetricCatalogue {
        metrics: state.meter.policy().metrics.clone(),
        labels: vec!["tenant_id", "environment", "key_id", "endpoint", "model", "<tag name>"],
        policy_error: state.meter.policy_error(),
    })
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MetricSeries {
    pub name: String,
    pub display_name: String,
    pub unit: String,
    pub aggregation: Aggregation,
    pub start_time: DateTime<Utc>,
    pub end_time: DateTime<Utc>,
    pub step_seconds: u64,
    pub labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_by: Option<String>,
    pub points: Vec<Point>,
    /// The metric over the whole range (for sums and counts, the points' sum).
    pub total: i64,
}

/// Query pairs, with repeated or unknown names refused.
fn pairs(raw: Option<String>) -> Result<Vec<(String, String)>, ApiError> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(raw.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::invalid(format!("invalid query parameters: {e}")))
}

/// `60`, `60s`, `5m`, `1h`, `1d`.
fn parse_step(s: &str) -> Result<u64, ApiError> {
    let (num, unit) = s.find(|c: char| !c.is_ascii_digit()).map_or((s, ""), |i| s.split_at(i));
    let n: u64 = num.parse().map_err(|_| ApiError::invalid_field("step", format!("bad step `{s}`")))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => {
            return Err(ApiError::invalid_field("step", format!("bad step `{s}`: a number of seconds, or 5m, 1h, 1d")));
        }
    };
    if secs == 0 {
        return Err(ApiError::invalid_field("step", "step must be positive"));
    }
    Ok(secs)
}

/// A metric over `start_time`..`end_time` in `step` buckets, filtered by
/// `labels.<name>=<value>` (tenant_id, environment (default live), key_id,
/// endpoint, model, or a tag) and optionally grouped by one label.
#[utoipa::path(get, path = "/admin/metrics/{name}", tag = "operations", security(("bearer" = [])),
    params(("name" = String, Path), ("start_time" = Option<String>, Query), ("end_time" = Option<String>, Query),
        ("step" = Option<String>, Query), ("group_by" = Option<String>, Query)),
    responses((status = 200, body = Envelope<MetricSeries>), (status = 400, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope)))]
pub async fn metric(
    State(state): State<AppState>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<ApiOk<MetricSeries>, ApiError> {
    let policy = state.meter.policy();
    let metric = policy.get(&name).ok_or_else(|| ApiError::NotFound {
        kind: "metric",
        code: "METRIC_NOT_FOUND",
        id: name.chars().take(64).collect(),
    })?;
    let now = Utc::now();
    let (mut start, mut end, mut step, mut group_by) = (None, None, 86_400u64, None);
    let mut labels: BTreeMap<String, String> = BTreeMap::new();
    let mut filters = Vec::new();
    for (k, v) in pairs(raw)? {
        match k.as_str() {
            "start_time" | "start" => start = Some(parse_time("start_time", &v)?),
            "end_time" | "end" => end = Some(parse_time("end_time", &v)?),
            "step" => step = parse_step(&v)?,
            "group_by" => group_by = Some(Label::parse(&v).map_err(|e| ApiError::invalid_field("group_by", e))?),
            "limit" => {} // seed 004's client sends it; every bucket is returned
            other => {
                let Some(label) = other.strip_prefix("labels.") else {
                    return Err(ApiError::invalid_field(other.to_string(), format!("unknown parameter `{other}`")));
                };
                let l = Label::parse(label).map_err(|e| ApiError::invalid_field(other.to_string(), e))?;
                if l == Label::Environment && Environment::parse(&v).is_none() {
                    return Err(ApiError::invalid_field(other.to_string(), "environment must be live or test"));
                }
                labels.insert(l.name(), v.clone());
                filters.push((l, v));
            }
        }
    }
    if !filters.iter().any(|(l, _)| *l == Label::Environment) {
        // Test-mode usage is recorded but never counted as live usage.
        labels.insert("environment".into(), "live".into());
        filters.push((Label::Environment, "live".into()));
    }
    let start = start.unwrap_or(crate::metering::period_start(now));
    let end = end.unwrap_or(now);
    if end <= start {
        return Err(ApiError::invalid_field("end_time", "end_time must be after start_time"));
    }
    let buckets = (end - start).num_seconds() as u64 / step;
    if buckets > 10_000 {
        return Err(ApiError::invalid_field("step", format!("{buckets} buckets: at most 10 000; use a larger step")));
    }
    let db = state.meter.db();
    let internal = |e: sqlx::Error| ApiError::Internal(e.into());
    let mut q = SeriesQuery { metric, start, end, step_secs: Some(step), filters, group_by: group_by.clone() };
    let points = query::series(db, &q, None).await.map_err(internal)?;
    q.step_secs = None;
    q.group_by = None;
    let total = query::series(db, &q, None).await.map_err(internal)?.first().map_or(0, |p| p.value);
    Ok(ApiOk::ok(MetricSeries {
        name: metric.name.clone(),
        display_name: metric.display_name.clone(),
        unit: metric.unit.clone(),
        aggregation: metric.aggregation,
        start_time: start,
        end_time: end,
        step_seconds: step,
        labels,
        group_by: group_by.map(|g| g.name()),
        points,
        total,
    }))
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ExportParams {
    /// `YYYY-MM`; default: the current period.
    pub period: Option<String>,
    /// `csv` (default) or `json`.
    pub format: Option<String>,
}

/// Every tenant's live usage over a period (seed 004's columns, plus each
/// billable metric), for invoicing outside memhost.
#[utoipa::path(get, path = "/admin/usage/export", tag = "operations", security(("bearer" = [])), params(ExportParams),
    responses((status = 200, body = Envelope<UsageExport>), (status = 400, body = ErrorEnvelope)))]
pub async fn export(
    State(state): State<AppState>,
    crate::api::extract::ApiQuery(params): crate::api::extract::ApiQuery<ExportParams>,
) -> Result<Response, ApiError> {
    let csv = match params.format.as_deref() {
        None | Some("csv") => true,
        Some("json") => false,
        Some(other) => {
            return Err(ApiError::invalid_field("format", format!("format must be csv or json (got `{other}`)")));
        }
    };
    let period = params.period.unwrap_or_else(|| crate::metering::period_of(Utc::now()));
    let export = export_period(&state, &period).await?;
    if !csv {
        return Ok(ApiOk::ok(export).into_response());
    }
    let names: Vec<String> = state.meter.policy().metrics.iter().map(|m| m.name.clone()).collect();
    Ok(csv_response(&format!("usage-{period}.csv"), export::csv(&export, &names)))
}

pub async fn export_period(state: &AppState, period: &str) -> Result<UsageExport, ApiError> {
    let start = parse_period(period)
        .ok_or_else(|| ApiError::invalid_field("period", format!("period must be YYYY-MM (got `{period}`)")))?;
    let end = period_end(start);
    let rows = export::build(
        state.meter.db(),
        &state.meter.policy().metrics,
        &state.auth.list_orgs().await?,
        period,
        start,
        end,
    )
    .await
    .map_err(|e| ApiError::Internal(e.into()))?;
    Ok(UsageExport { period: period.to_string(), rows })
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuditPage {
    pub entries: Vec<Entry>,
    /// Pass as `cursor` for the next page; absent on the last one.
    pub next_cursor: Option<String>,
}

/// The audit log, oldest first, filtered by `org_id`, `kind` (api_call,
/// operator, system), `actor`, `action`, `start_time`, `end_time`; pages of
/// `limit` (default 100, at most 1000) from `cursor`. API calls are read
/// from their usage events (`event_id`; `seq` is the entry sealing them).
#[utoipa::path(get, path = "/admin/audit", tag = "operations", security(("bearer" = [])),
    params(("org_id" = Option<String>, Query), ("kind" = Option<String>, Query), ("actor" = Option<String>, Query),
        ("action" = Option<String>, Query), ("start_time" = Option<String>, Query), ("end_time" = Option<String>, Query),
        ("cursor" = Option<String>, Query), ("limit" = Option<u32>, Query)),
    responses((status = 200, body = Envelope<AuditPage>), (status = 400, body = ErrorEnvelope)))]
pub async fn audit_log(State(state): State<AppState>, RawQuery(raw): RawQuery) -> Result<ApiOk<AuditPage>, ApiError> {
    let mut f = AuditFilter { limit: 100, ..AuditFilter::default() };
    for (k, v) in pairs(raw)? {
        match k.as_str() {
            "org_id" => f.org_id = Some(v),
            "kind" => {
                f.kind = Some(match v.as_str() {
                    "api_call" => EntryKind::ApiCall,
                    "operator" => EntryKind::Operator,
                    "system" => EntryKind::System,
                    _ => return Err(ApiError::invalid_field("kind", "kind must be api_call, operator or system")),
                })
            }
            "actor" => f.actor = Some(v),
            "action" => f.action = Some(v),
            "start_time" => f.start = Some(parse_time("start_time", &v)?),
            "end_time" => f.end = Some(parse_time("end_time", &v)?),
            "cursor" => {
                f.cursor = audit::Cursor::parse(&v)
                    .ok_or_else(|| ApiError::invalid_field("cursor", "cursor is not one this API returned"))?
            }
            "limit" => {
                f.limit = v
                    .parse()
                    .ok()
                    .filter(|l| (1..=1000).contains(l))
                    .ok_or_else(|| ApiError::invalid_field("limit", "limit must be from 1 to 1000"))?
            }
            other => return Err(ApiError::invalid_field(other.to_string(), format!("unknown parameter `{other}`"))),
        }
    }
    let page = audit::list(&state.db, &f).await.map_err(|e| ApiError::Internal(e.into()))?;
    Ok(ApiOk::ok(AuditPage { entries: page.entries, next_cursor: page.next.map(|c| c.encode()) }))
}

/// Recomputes the audit log's hash chain: `ok` false names the first entry
/// that was edited, removed or reordered.
#[utoipa::path(get, path = "/admin/audit/verify", tag = "operations", security(("bearer" = [])),
    responses((status = 200, body = Envelope<Verification>)))]
pub async fn audit_verify(State(state): State<AppState>) -> Result<ApiOk<Verification>, ApiError> {
    Ok(ApiOk::ok(audit::verify(&state.db).await.map_err(|e| ApiError::Internal(e.into()))?))
}
