//! The per-tenant usage export of a period (seed 004's columns, plus each
//! billable metric as billing reads it): `GET /admin/usage/export` and
//! `memhost usage export`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::policy::Metric;
use super::query;
use crate::auth::Environment;

/// One tenant's row of the export.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ExportRow {
    pub tenant_id: String,
    pub tenant_name: String,
    pub plan: String,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    /// Each billable metric of the policy, as billing reads it.
    pub metrics: BTreeMap<String, i64>,
    pub requests: i64,
    pub llm_calls: i64,
    pub llm_tokens: i64,
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub memory_creates: i64,
    pub memory_updates: i64,
    pub memory_deletes: i64,
    pub memory_reads: i64,
    pub embeddings: i64,
    /// Provider cost, micro-units of USD (internal).
    pub cost_micros: i64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UsageExport {
    pub period: String,
    pub rows: Vec<ExportRow>,
}

/// The export's rows: every org, live usage only.
pub async fn build(
    db: &crate::store::Database,
    metrics: &[Metric],
    orgs: &[crate::auth::Org],
    period: &str,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> sqlx::Result<Vec<ExportRow>> {
    let counters = query::period_counters(db, Environment::Live, period).await?;
    let totals = query::raw_totals(db, Environment::Live, start, end).await?;
    let mut rows = Vec::new();
    for org in orgs {
        let t = totals.get(&org.id).cloned().unwrap_or_default();
        let mut values = BTreeMap::new();
        for m in metrics {
            let stored = counters.get(&(org.id.clone(), m.name.clone())).copied();
            let v = match stored {
                Some(v) => v,
                // A gauge with no request in the period held its last value throughout.
                None if m.carries_over() => {
                    query::carried_value(db, &org.id, Environment::Live, start).await?.unwrap_or(0)
                }
                None => 0,
            };
            values.insert(m.name.clone(), v);
        }
        rows.push(ExportRow {
            tenant_id: org.id.clone(),
            tenant_name: org.name.clone(),
            plan: org.plan.clone(),
            period_start: start,
            period_end: end,
            metrics: values,
            requests: t.requests,
            llm_calls: t.model_calls,
            llm_tokens: t.tokens_in + t.tokens_out,
            tokens_in: t.tokens_in,
            tokens_out: t.tokens_out,
            memory_creates: t.memories_created,
            memory_updates: t.memories_updated,
            memory_deletes: t.memories_deleted,
            memory_reads: t.memories_read,
            embeddings: t.embeddings_generated,
            cost_micros: t.cost_micros,
        });
    }
    Ok(rows)
}

pub fn csv(export: &UsageExport, metric_names: &[String]) -> String {
    let mut header: Vec<&str> = vec!["tenant_id", "tenant_name", "plan", "period_start", "period_end"];
    header.extend(metric_names.iter().map(String::as_str));
    header.extend([
        "requests",
        "llm_calls",
        "llm_tokens",
        "tokens_in",
        "tokens_out",
        "memory_creates",
        "memory_updates",
        "memory_deletes",
        "memory_reads",
        "embeddings",
        "cost_usd",
    ]);
    let time = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    query::csv(
        &header,
        export.rows.iter().map(|r| {
            let mut row = vec![
                r.tenant_id.clone(),
                r.tenant_name.clone(),
                r.plan.clone(),
                time(r.period_start),
                time(r.period_end),
            ];
            row.extend(metric_names.iter().map(|n| r.metrics.get(n).copied().unwrap_or(0).to_string()));
            row.extend(
                [
                    r.requests,
                    r.llm_calls,
                    r.llm_tokens,
                    r.tokens_in,
                    r.tokens_out,
                    r.memory_creates,
                    r.memory_updates,
                    r.memory_deletes,
                    r.memory_reads,
                    r.embeddings,
                ]
                .iter()
                .map(i64::to_string),
            );
            row.push(format!("{:.6}", r.cost_micros as f64 / 1e6));
            row
        }),
    )
}
