//! Reads over the usage events for the usage and metrics APIs, the export
//! and `memhost usage stats`: a metric of the policy evaluated in SQL over
//! time buckets, filtered and grouped by labels.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::policy::{Aggregation, Metric, check_name};
use crate::auth::Environment;
use crate::store::Database;
use crate::store::sql::{Arg, Backend, Row, Sql, epoch_bucket, json_text, sql};

/// What a series can be filtered or grouped by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Label {
    Org,
    Environment,
    Key,
    /// `METHOD /route/template`.
    Endpoint,
    Model,
    Tag(String),
}

impl Label {
    /// `tenant_id` (or `org_id`), `environment`, `key_id`, `endpoint`,
    /// `model`, or a tag name (`team` or `tag.team`).
    pub fn parse(s: &str) -> Result<Label, String> {
        Ok(match s {
            "tenant_id" | "org_id" | "org" => Label::Org,
            "environment" => Label::Environment,
            "key_id" | "key" => Label::Key,
            "endpoint" | "route" => Label::Endpoint,
            "model" => Label::Model,
            other => {
                let name = other.strip_prefix("tag.").or_else(|| other.strip_prefix("tags.")).unwrap_or(other);
                check_name(name, "label").map_err(|_| {
                    format!(
                        "unknown label `{other}`: tenant_id, environment, key_id, endpoint, model or a tag name \
                         (letters, digits, `_`, `-`)"
                    )
                })?;
                Label::Tag(name.to_string())
            }
        })
    }

    pub fn name(&self) -> String {
        match self {
            Label::Org => "tenant_id".into(),
            Label::Environment => "environment".into(),
            Label::Key => "key_id".into(),
            Label::Endpoint => "endpoint".into(),
            Label::Model => "model".into(),
            Label::Tag(t) => format!("tag.{t}"),
        }
    }

    fn sql(&self, backend: Backend) -> String {
        match self {
            Label::Org => "org_id".into(),
            Label::Environment => "environment".into(),
            Label::Key => "key_id".into(),
            Label::Endpoint => "(method || ' ' || route)".into(),
            Label::Model => "model".into(),
            Label::Tag(t) => json_text(backend, "tags", t),
        }
    }
}

/// One series query.
#[derive(Debug, Clone)]
pub struct SeriesQuery<'a> {
    pub metric: &'a Metric,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    /// Bucket width; `None`: one bucket for the whole range.
    pub step_secs: Option<u64>,
    pub filters: Vec<(Label, String)>,
    pub group_by: Option<Label>,
}

/// One bucket's value.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Point {
    pub timestamp: DateTime<Utc>,
    /// The group's value when grouped (absent tags read as `""`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub value: i64,
}

/// Evaluates a metric over the events: one point per (bucket, group) that
/// has events. `tenant`: the reads run confined to that org (row-level
/// security in PostgreSQL) besides filtering by it.
pub async fn series(db: &Database, q: &SeriesQuery<'_>, tenant: Option<&str>) -> sqlx::Result<Vec<Point>> {
    let backend = db.backend();
    let value = q.metric.sql_value(backend);
    let bucket = match q.step_secs {
        Some(step) => epoch_bucket(backend, "occurred_at", step),
        None => "0::bigint".to_string(),
    };
    let group = q.group_by.as_ref().map_or_else(|| "NULL".to_string(), |g| format!("COALESCE({}, '')", g.sql(backend)));
    let mut conditions = vec!["occurred_at >= $1".to_string(), "occurred_at < $2".to_string()];
    let mut args: Vec<Arg> = vec![q.start.into(), q.end.into()];
    for (label, v) in &q.filters {
        args.push(v.clone().into());
        conditions.push(format!("{} = ${}", label.sql(backend), args.len()));
    }
    let latest = q.metric.aggregation == Aggregation::Latest;
    let text = if latest {
        format!(
            "SELECT {bucket} AS bucket, {group} AS grp, {value} AS q FROM usage_events WHERE {} AND {value} IS NOT NULL \
             ORDER BY occurred_at, id",
            conditions.join(" AND ")
        )
    } else {
        format!(
            "SELECT {bucket} AS bucket, {group} AS grp, {} AS q FROM usage_events WHERE {} \
             GROUP BY 1, 2 ORDER BY 1, 2",
            q.metric.sql_aggregate(&value),
            conditions.join(" AND ")
        )
    };
    let rows = fetch(db, bind_all(sql(text), args), tenant).await?;
    let mut points: BTreeMap<(i64, Option<String>), i64> = BTreeMap::new();
    for r in rows {
        let Some(v) = r.get::<Option<i64>>("q")? else { continue };
        let b: i64 = r.get("bucket")?;
        let g: Option<String> = r.get("grp")?;
        points.insert((b, g), v); // latest: the last row wins
    }
    Ok(points
        .into_iter()
        .filter(|(_, v)| *v != 0 || matches!(q.metric.aggregation, Aggregation::Max | Aggregation::Latest))
        .map(|((b, group), value)| Point {
            timestamp: if q.step_secs.is_some() { DateTime::from_timestamp(b, 0).unwrap_or(q.start) } else { q.start },
            group,
            value,
        })
        .collect())
}

fn bind_all(mut s: Sql, args: Vec<Arg>) -> Sql {
    for a in args {
        s = s.bind(a);
    }
    s
}

async fn fetch(db: &Database, q: Sql, tenant: Option<&str>) -> sqlx::Result<Vec<Row>> {
    match tenant {
        Some(org) => {
            let mut tx = db.tenant_reads(org).await?;
            let rows = q.fetch_all(&mut tx).await?;
            tx.commit().await?;
            Ok(rows)
        }
        None => q.fetch_all(db.read()).await,
    }
}

/// The daily rollups of an org between two days (inclusive), per metric.
pub async fn daily_rollups(
    db: &Database,
    org_id: &str,
    env: Environment,
    first_day: &str,
    last_day: &str,
) -> sqlx::Result<Vec<(String, String, i64)>> {
    let q = sql("SELECT day, metric, quantity FROM usage_daily_rollup WHERE org_id = $1 AND environment = $2 \
                 AND day >= $3 AND day <= $4 ORDER BY day, metric")
    .bind(org_id)
    .bind(env.as_str())
    .bind(first_day)
    .bind(last_day);
    fetch(db, q, Some(org_id))
        .await?
        .iter()
        .map(|r| Ok((r.get("day")?, r.get("metric")?, r.get("quantity")?)))
        .collect()
}

/// The memories-stored gauge's value held at `before`: the org's last event
/// before then (none: no event yet).
pub async fn carried_value(
    db: &Database,
    org_id: &str,
    env: Environment,
    before: DateTime<Utc>,
) -> sqlx::Result<Option<i64>> {
    carried_value_on(db.read(), org_id, env, before).await
}

pub async fn carried_value_on<'c>(
    on: impl Into<crate::store::sql::On<'c>>,
    org_id: &str,
    env: Environment,
    before: DateTime<Utc>,
) -> sqlx::Result<Option<i64>> {
    sql("SELECT memories_stored FROM usage_events WHERE org_id = $1 AND environment = $2 AND occurred_at < $3 \
         ORDER BY occurred_at DESC, id DESC LIMIT 1")
    .bind(org_id)
    .bind(env.as_str())
    .bind(before)
    .fetch_optional(on)
    .await?
    .map(|r| r.get::<i64>("memories_stored"))
    .transpose()
}

/// A period's stored counters for every org of an environment.
pub async fn period_counters(
    db: &Database,
    env: Environment,
    period: &str,
) -> sqlx::Result<BTreeMap<(String, String), i64>> {
    let rows = sql("SELECT org_id, metric, quantity FROM usage_counters WHERE environment = $1 AND period = $2")
        .bind(env.as_str())
        .bind(period)
        .fetch_all(db.read())
        .await?;
    let mut out = BTreeMap::new();
    for r in rows {
        out.insert((r.get("org_id")?, r.get("metric")?), r.get("quantity")?);
    }
    Ok(out)
}

/// Raw totals of the events of a period per org (the export's plain columns).
#[derive(Debug, Clone, Default, Serialize)]
pub struct RawTotals {
    pub requests: i64,
    pub billable_requests: i64,
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub memories_read: i64,
    pub memories_created: i64,
    pub memories_updated: i64,
    pub memories_deleted: i64,
    pub embeddings_generated: i64,
    pub model_calls: i64,
    pub cost_micros: i64,
}

pub async fn raw_totals(
    db: &Database,
    env: Environment,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> sqlx::Result<BTreeMap<String, RawTotals>> {
    let rows = sql(
        "SELECT org_id, COUNT(*) AS requests, COUNT(CASE WHEN billable THEN 1 END) AS billable_requests, \
         COALESCE(SUM(tokens_in), 0)::bigint AS tokens_in, COALESCE(SUM(tokens_out), 0)::bigint AS tokens_out, \
         COALESCE(SUM(memories_read), 0)::bigint AS memories_read, COALESCE(SUM(memories_created), 0)::bigint AS memories_created, \
         COALESCE(SUM(memories_updated), 0)::bigint AS memories_updated, \
         COALESCE(SUM(memories_deleted), 0)::bigint AS memories_deleted, \
         COALESCE(SUM(embeddings_generated), 0)::bigint AS embeddings_generated, \
         COALESCE(SUM(model_calls), 0)::bigint AS model_calls, COALESCE(SUM(cost_micros), 0)::bigint AS cost_micros \
         FROM usage_events WHERE environment = $1 AND occurred_at >= $2 AND occurred_at < $3 GROUP BY org_id",
    )
    .bind(env.as_str())
    .bind(start)
    .bind(end)
    .fetch_all(db.read())
    .await?;
    let mut out = BTreeMap::new();
    for r in rows {
        let n = |c: &str| r.get::<i64>(c);
        out.insert(
            r.get("org_id")?,
            RawTotals {
                requests: n("requests")?,
                billable_requests: n("billable_requests")?,
                tokens_in: n("tokens_in")?,
                tokens_out: n("tokens_out")?,
                memories_read: n("memories_read")?,
                memories_created: n("memories_created")?,
                memories_updated: n("memories_updated")?,
                memories_deleted: n("memories_deleted")?,
                embeddings_generated: n("embeddings_generated")?,
                model_calls: n("model_calls")?,
                cost_micros: n("cost_micros")?,
            },
        );
    }
    Ok(out)
}

/// Requests, tokens and first/last use grouped one way (`memhost usage stats`).
#[derive(Debug, Clone, Serialize)]
pub struct Breakdown {
    pub group: String,
    pub requests: i64,
    pub tokens: i64,
    pub memories_written: i64,
    pub first_used: Option<DateTime<Utc>>,
    pub last_used: Option<DateTime<Utc>>,
}

/// `scope`: `org_id` or `key_id` equal to `id`. `by`: a grouping label, or
/// `None` for the totals.
pub async fn breakdown(
    db: &Database,
    scope: Label,
    id: &str,
    since: DateTime<Utc>,
    by: Option<Label>,
) -> sqlx::Result<Vec<Breakdown>> {
    let backend = db.backend();
    let group = by.as_ref().map_or_else(|| "'total'".to_string(), |g| format!("COALESCE({}, '-')", g.sql(backend)));
    let rows = sql(format!(
        "SELECT {group} AS grp, COUNT(*) AS requests, COALESCE(SUM(tokens_in + tokens_out), 0)::bigint AS tokens, \
         COALESCE(SUM(memories_created + memories_updated), 0)::bigint AS written, \
         MIN(occurred_at) AS first_used, MAX(occurred_at) AS last_used \
         FROM usage_events WHERE {} = $1 AND occurred_at >= $2 GROUP BY 1 ORDER BY requests DESC, grp",
        scope.sql(backend)
    ))
    .bind(id)
    .bind(since)
    .fetch_all(db.read())
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Breakdown {
                group: r.get("grp")?,
                requests: r.get("requests")?,
                tokens: r.get("tokens")?,
                memories_written: r.get("written")?,
                first_used: r.opt_time("first_used")?,
                last_used: r.opt_time("last_used")?,
            })
        })
        .collect()
}

/// Writes CSV: a header row, then rows; fields quoted when they need it.
pub fn csv(header: &[&str], rows: impl IntoIterator<Item = Vec<String>>) -> String {
    fn field(s: &str) -> String {
        if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
    }
    let mut out = header.iter().map(|h| field(h)).collect::<Vec<_>>().join(",");
    out.push('\n');
    for row in rows {
        out.push_str(&row.iter().map(|f| field(f)).collect::<Vec<_>>().join(","));
        out.push('\n');
    }
    out
}
