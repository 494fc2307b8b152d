//! `/v1/usage`: the caller's usage this period per metric (with what the
//! plan includes and a projection), and its history by day or hour, grouped
//! by metric, endpoint, key or a tag; JSON in the envelope or CSV. Usage
//! reads are not billed (`request_path::metered`).

use axum::extract::State;
use axum::http::header::{CONTENT_DISPOSITION, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::api::AppState;
use crate::api::envelope::{ApiOk, Envelope, ErrorEnvelope};
use crate::api::error::ApiError;
use crate::api::extract::{ApiQuery, Auth};
use crate::metering::policy::Aggregation;
use crate::metering::query::{self, Label, SeriesQuery};
use crate::metering::{period_end, period_of, period_start};

/// One metric this period.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct MetricUsage {
    pub metric: String,
    pub display_name: String,
    pub unit: String,
    pub aggregation: Aggregation,
    pub used: u64,
    /// What the plan includes; absent when the plan sets no limit.
    pub included: Option<u64>,
    pub remaining: Option<u64>,
    /// Used, as a percentage of what is included.
    pub percent: Option<f64>,
    /// Where the period will end at the pace so far (sums and counts); the
    /// current value for peaks and latest values.
    pub projected: u64,
    pub overage_allowed: Option<bool>,
    /// Units above what is included.
    pub overage: u64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct UsageReport {
    pub period: String,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    /// `live` or `test` (a test key sees its sandbox's usage, never billed).
    pub environment: String,
    pub plan: String,
    pub metrics: Vec<MetricUsage>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct FormatParam {
    /// `json` (default) or `csv`.
    pub format: Option<String>,
}

fn wants_csv(format: Option<&str>) -> Result<bool, ApiError> {
    match format {
        None | Some("json") => Ok(false),
        Some("csv") => Ok(true),
        Some(other) => Err(ApiError::invalid_field("format", format!("format must be json or csv (got `{other}`)"))),
    }
}

pub(crate) fn csv_response(filename: &str, body: String) -> Response {
    (
        [
            (CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (CONTENT_DISPOSITION, format!("attachment; filename=\"{filename}\"")),
        ],
        body,
    )
        .into_response()
}

/// This period's usage per metric: used, included, remaining, percent and
/// the projected end-of-period figure.
#[utoipa::path(get, path = "/v1/usage", tag = "usage", security(("bearer" = [])), params(FormatParam),
    responses((status = 200, body = Envelope<UsageReport>), (status = 401, body = ErrorEnvelope)))]
pub async fn usage(
    State(state): State<AppState>,
    auth: Auth,
    ApiQuery(params): ApiQuery<FormatParam>,
) -> Result<Response, ApiError> {
    let csv = wants_csv(params.format.as_deref())?;
    let p = &auth.0;
    let now = Utc::now();
    let (start, end) = (period_start(now), period_end(now));
    let used = state.meter.used(&p.org_id, p.environment).await.map_err(|e| ApiError::Internal(e.into()))?;
    let limits = state.billing.plan_limits(p).await;
    // Share of the period gone, at least an hour's worth (a projection from
    // the first minutes would mean nothing).
    let elapsed = (now - start).num_seconds().max(3600) as f64;
    let length = (end - start).num_seconds().max(1) as f64;
    let metrics: Vec<MetricUsage> = state
        .meter
        .policy()
        .metrics
        .iter()
        .map(|m| {
            let u = used.get(&m.name).copied().unwrap_or(0);
            let limit = limits.as_ref().and_then(|l| l.iter().find(|l| l.metric == m.name));
            let included = limit.map(|l| l.included);
            let projected = match m.aggregation {
                Aggregation::Sum | Aggregation::Count => (u as f64 * (length / elapsed).max(1.0)).round() as u64,
                _ => u,
            };
            MetricUsage {
                metric: m.name.clone(),
                display_name: m.display_name.clone(),
                unit: m.unit.clone(),
                aggregation: m.aggregation,
                used: u,
                included,
                remaining: included.map(|i| i.saturating_sub(u)),
                percent: included.map(|i| if i == 0 { 100.0 } else { (u as f64 * 10000.0 / i as f64).round() / 100.0 }),
                projected,
                overage_allowed: limit.map(|l| l.overage_allowed),
                overage: included.map_or(0, |i| u.saturating_sub(i)),
            }
        })
        .collect();
    let report = UsageReport {
        period: period_of(now),
        period_start: start,
        period_end: end,
        environment: p.environment.as_str().to_string(),
        plan: p.plan.clone(),
        metrics,
    };
    if !csv {
        return Ok(ApiOk::ok(report).into_response());
    }
    let opt = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_default();
    let body = query::csv(
        &[
            "period",
            "metric",
            "display_name",
            "unit",
            "used",
            "included",
            "remaining",
            "percent",
            "projected",
            "overage",
        ],
        report.metrics.iter().map(|m| {
            vec![
                report.period.clone(),
                m.metric.clone(),
                m.display_name.clone(),
                m.unit.clone(),
                m.used.to_string(),
                opt(m.included),
                opt(m.remaining),
                m.percent.map(|v| v.to_string()).unwrap_or_default(),
                m.projected.to_string(),
                m.overage.to_string(),
            ]
        }),
    );
    Ok(csv_response(&format!("usage-{}.csv", report.period), body))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct HistoryParams {
    /// Start (RFC 3339, or `YYYY-MM-DD` for midnight UTC); default: the period's start.
    pub start: Option<String>,
    /// End, exclusive; default: now.
    pub end: Option<String>,
    /// `day` (default) or `hour`.
    pub granularity: Option<String>,
    /// `metric` (default), `endpoint`, `key` or `tag.<name>`.
    pub group_by: Option<String>,
    /// Only this metric.
    pub metric: Option<String>,
    /// `json` (default) or `csv`.
    pub format: Option<String>,
}

/// One value of the history.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct HistoryPoint {
    pub timestamp: DateTime<Utc>,
    pub metric: String,
    /// The endpoint, key or tag value when grouped by one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub value: i64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct UsageHistory {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub granularity: String,
    pub group_by: String,
    pub environment: String,
    pub points: Vec<HistoryPoint>,
}

/// Parses RFC 3339 or a date (midnight UTC).
pub(crate) fn parse_time(field: &'static str, s: &str) -> Result<DateTime<Utc>, ApiError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|d| d.and_utc())
        .ok_or_else(|| ApiError::invalid_field(field, format!("`{field}` must be RFC 3339 or YYYY-MM-DD (got `{s}`)")))
}

/// Usage over time: per day (from the daily rollups when grouped by
/// metric) or per hour, grouped by metric, endpoint, key or a tag.
#[utoipa::path(get, path = "/v1/usage/history", tag = "usage", security(("bearer" = [])), params(HistoryParams),
    responses((status = 200, body = Envelope<UsageHistory>), (status = 400, body = ErrorEnvelope)))]
pub async fn history(
    State(state): State<AppState>,
    auth: Auth,
    ApiQuery(params): ApiQuery<HistoryParams>,
) -> Result<Response, ApiError> {
    let csv = wants_csv(params.format.as_deref())?;
    let p = &auth.0;
    let now = Utc::now();
    let start = params.start.as_deref().map(|s| parse_time("start", s)).transpose()?.unwrap_or(period_start(now));
    let end = params.end.as_deref().map(|s| parse_time("end", s)).transpose()?.unwrap_or(now);
    if end <= start {
        return Err(ApiError::invalid_field("end", "end must be after start"));
    }
    let (granularity, step, max_days) = match params.granularity.as_deref().unwrap_or("day") {
        "day" => ("day", 86_400u64, 400),
        "hour" => ("hour", 3_600, 31),
        other => {
            return Err(ApiError::invalid_field(
                "granularity",
                format!("granularity must be day or hour (got `{other}`)"),
            ));
        }
    };
    if (end - start).num_days() > max_days {
        return Err(ApiError::invalid_field("start", format!("at most {max_days} days at {granularity} granularity")));
    }
    let group_by = params.group_by.as_deref().unwrap_or("metric");
    let label = match group_by {
        "metric" => None,
        "endpoint" => Some(Label::Endpoint),
        "key" => Some(Label::Key),
        other => match other.strip_prefix("tag.") {
            Some(tag) => Some(Label::parse(&format!("tag.{tag}")).map_err(|e| ApiError::invalid_field("group_by", e))?),
            None => {
                return Err(ApiError::invalid_field(
                    "group_by",
                    format!("group_by must be metric, endpoint, key or tag.<name> (got `{other}`)"),
                ));
            }
        },
    };
    let policy = state.meter.policy();
    let metrics: Vec<_> = match &params.metric {
        Some(name) => vec![policy.get(name).ok_or_else(|| {
            ApiError::invalid_field("metric", format!("unknown metric `{name}`; the catalogue is in GET /v1/usage"))
        })?],
        None => policy.metrics.iter().collect(),
    };
    let db = state.meter.db();
    let internal = |e: sqlx::Error| ApiError::Internal(e.into());
    let mut points = Vec::new();
    if granularity == "day" && label.is_none() {
        // The rollups: the same numbers as the period counters, day by day.
        let first = start.format("%Y-%m-%d").to_string();
        let last = (end - chrono::Duration::microseconds(1)).format("%Y-%m-%d").to_string();
        for (day, metric, value) in
            query::daily_rollups(db, &p.org_id, p.environment, &first, &last).await.map_err(internal)?
        {
            if metrics.iter().any(|m| m.name == metric) {
                let timestamp = parse_time("start", &day)?;
                points.push(HistoryPoint { timestamp, metric, group: None, value });
            }
        }
    } else {
        for m in &metrics {
            let q = SeriesQuery {
                metric: m,
                start,
                end,
                step_secs: Some(step),
                filters: vec![(Label::Org, p.org_id.clone()), (Label::Environment, p.environment.as_str().into())],
                group_by: label.clone(),
            };
            for point in query::series(db, &q, Some(&p.org_id)).await.map_err(internal)? {
                points.push(HistoryPoint {
                    timestamp: point.timestamp,
                    metric: m.name.clone(),
                    group: point.group,
                    value: point.value,
                });
            }
        }
        points.sort_by(|a, b| (a.timestamp, &a.metric, &a.group).cmp(&(b.timestamp, &b.metric, &b.group)));
    }
    let history = UsageHistory {
        start,
        end,
        granularity: granularity.into(),
        group_by: group_by.into(),
        environment: p.environment.as_str().into(),
        points,
    };
    if !csv {
        return Ok(ApiOk::ok(history).into_response());
    }
    let body = query::csv(
        &["timestamp", "metric", "group", "value"],
        history.points.iter().map(|pt| {
            vec![
                pt.timestamp.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                pt.metric.clone(),
                pt.group.clone().unwrap_or_default(),
                pt.value.to_string(),
            ]
        }),
    );
    Ok(csv_response("usage-history.csv", body))
}
