//! Recomputation from the raw events: what the period counters and daily
//! rollups of a period should hold, by the metrics policy evaluated in SQL
//! over `usage_events`, against what the writer stored; with `fix`, the
//! stored values are replaced. Also checks the memories-stored gauge against
//! the memories themselves.
//!
//! Runs holding the audit head's lock, which every metering batch takes
//! first: no batch commits while it reads and writes, on any instance.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::policy::{Aggregation, Metric, MetricsPolicy};
use super::writer::{Bucket, Update, upsert};
use super::{parse_period, period_end};
use crate::auth::Environment;
use crate::store::Database;
use crate::store::sql::{Backend, Tx, sql, utc_day};

/// One stored value that differs from the events.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Difference {
    /// `usage_counters`, `usage_daily_rollup` or `usage_gauges`.
    pub table: &'static str,
    pub org_id: String,
    pub environment: Environment,
    /// The period, the day, or the gauge's name.
    pub bucket: String,
    pub metric: String,
    pub stored: i64,
    pub expected: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub period: String,
    /// Counter and rollup values compared.
    pub checked: usize,
    pub differences: Vec<Difference>,
    /// True when the differences were repaired.
    pub fixed: bool,
}

/// Compares (and with `fix`, repairs) one period; `only` limits it to some
/// metrics (and skips the gauge check).
pub async fn recompute(
    db: &Database,
    policy: &MetricsPolicy,
    period: &str,
    only: Option<&[Metric]>,
    fix: bool,
) -> sqlx::Result<Report> {
    let start = parse_period(period).ok_or_else(|| sqlx::Error::Protocol(format!("bad period `{period}`")))?;
    let end = period_end(start);
    let metrics: Vec<&Metric> = match only {
        Some(list) => list.iter().collect(),
        None => policy.metrics.iter().collect(),
    };
    let mut tx = db.begin().await?;
    crate::audit::lock_head(&mut tx).await?;
    let backend = tx.backend();

    let mut expected_counters: BTreeMap<Bucket, i64> = BTreeMap::new();
    let mut expected_rollups: BTreeMap<Bucket, i64> = BTreeMap::new();
    for m in &metrics {
        let value = m.sql_value(backend);
        for (is_period, group) in [(true, format!("'{period}'")), (false, utc_day(backend, "occurred_at"))] {
            let into = if is_period { &mut expected_counters } else { &mut expected_rollups };
            if m.aggregation == Aggregation::Latest {
                let rows = sql(format!(
                    "SELECT org_id, environment, {group} AS bucket, {value} AS v FROM usage_events \
                     WHERE occurred_at >= $1 AND occurred_at < $2 AND {value} IS NOT NULL ORDER BY occurred_at, id"
                ))
                .bind(start)
                .bind(end)
                .fetch_all(&mut tx)
                .await?;
                for r in rows {
                    into.insert(bucket(&r, &m.name)?, r.get::<i64>("v")?);
                }
                continue;
            }
            let rows = sql(format!(
                "SELECT org_id, environment, {group} AS bucket, {} AS q FROM usage_events \
                 WHERE occurred_at >= $1 AND occurred_at < $2 GROUP BY 1, 2, 3",
                m.sql_aggregate(&value)
            ))
            .bind(start)
            .bind(end)
            .fetch_all(&mut tx)
            .await?;
            for r in rows {
                let q = r.get::<Option<i64>>("q")?;
                let b = bucket(&r, &m.name)?;
                if m.carries_over() {
                    let bucket_start = if is_period { start } else { day_start(&b.bucket).unwrap_or(start) };
                    let carried =
                        super::query::carried_value_on(&mut tx, &b.org_id, b.environment, bucket_start).await?;
                    let v = q.into_iter().chain(carried).max();
                    if let Some(v) = v {
                        into.insert(b, v);
                    }
                } else if let Some(q) = q
                    && (q != 0 || m.aggregation == Aggregation::Max)
                {
                    into.insert(b, q);
                }
            }
        }
    }

    let names: BTreeSet<&str> = metrics.iter().map(|m| m.name.as_str()).collect();
    let stored_counters = stored(&mut tx, "usage_counters", "period", "period = $1", period, &names).await?;
    let day_prefix = format!("{period}-%");
    let stored_rollups = stored(&mut tx, "usage_daily_rollup", "day", "day LIKE $1", &day_prefix, &names).await?;

    let mut differences = Vec::new();
    let mut checked = 0;
    let mut repairs: [(&str, &str, BTreeMap<Bucket, Update>); 2] =
        [("usage_counters", "period", BTreeMap::new()), ("usage_daily_rollup", "day", BTreeMap::new())];
    for (i, (expected, stored)) in
        [(&expected_counters, &stored_counters), (&expected_rollups, &stored_rollups)].into_iter().enumerate()
    {
        let keys: BTreeSet<&Bucket> = expected.keys().chain(stored.keys()).collect();
        for k in keys {
            checked += 1;
            let (e, s) = (expected.get(k).copied().unwrap_or(0), stored.get(k).copied().unwrap_or(0));
            if e != s {
                differences.push(Difference {
                    table: repairs[i].0,
                    org_id: k.org_id.clone(),
                    environment: k.environment,
                    bucket: k.bucket.clone(),
                    metric: k.metric.clone(),
                    stored: s,
                    expected: e,
                });
                repairs[i].2.insert(k.clone(), Update::Set(e));
            }
        }
    }

    if only.is_none() {
        differences.extend(gauge_differences(&mut tx, backend).await?);
    }

    if fix {
        for (table, col, updates) in &repairs {
            upsert(&mut tx, table, col, updates).await?;
        }
        for m in metrics.iter().filter(|m| m.aggregation == Aggregation::UniqueCount) {
            rebuild_distinct(&mut tx, backend, m, period, start, end).await?;
        }
        let gauges: Vec<super::writer::GaugeValue> = differences
            .iter()
            .filter(|d| d.table == "usage_gauges")
            .map(|d| (d.org_id.as_str(), d.environment, d.expected))
            .collect();
        super::writer::write_gauges(&mut tx, &gauges).await?;
        tx.commit().await?;
    }
    Ok(Report { period: period.to_string(), checked, differences, fixed: fix })
}

fn bucket(r: &crate::store::sql::Row, metric: &str) -> sqlx::Result<Bucket> {
    let env: String = r.get("environment")?;
    Ok(Bucket {
        org_id: r.get("org_id")?,
        environment: Environment::parse(&env).unwrap_or(Environment::Live),
        bucket: r.get("bucket")?,
        metric: metric.to_string(),
    })
}

fn day_start(day: &str) -> Option<DateTime<Utc>> {
    chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d").ok()?.and_hms_opt(0, 0, 0).map(|d| d.and_utc())
}

async fn stored(
    tx: &mut Tx,
    table: &str,
    col: &str,
    condition: &str,
    value: &str,
    metrics: &BTreeSet<&str>,
) -> sqlx::Result<BTreeMap<Bucket, i64>> {
    let rows =
        sql(format!("SELECT org_id, environment, {col} AS bucket, metric, quantity FROM {table} WHERE {condition}"))
            .bind(value)
            .fetch_all(&mut *tx)
            .await?;
    let mut out = BTreeMap::new();
    for r in rows {
        let metric: String = r.get("metric")?;
        if metrics.contains(metric.as_str()) {
            out.insert(bucket(&r, &metric)?, r.get::<i64>("quantity")?);
        }
    }
    Ok(out)
}

/// The memories-stored gauge against the memories themselves.
async fn gauge_differences(tx: &mut Tx, _backend: Backend) -> sqlx::Result<Vec<Difference>> {
    let counted = sql("SELECT org_id, environment, COUNT(*) AS n FROM memories GROUP BY org_id, environment")
        .fetch_all(&mut *tx)
        .await?;
    let gauges = sql("SELECT org_id, environment, value FROM usage_gauges WHERE name = 'memories_stored'")
        .fetch_all(&mut *tx)
        .await?;
    let mut expected: BTreeMap<(String, String), i64> = BTreeMap::new();
    for r in counted {
        expected.insert((r.get("org_id")?, r.get("environment")?), r.get("n")?);
    }
    let mut stored: BTreeMap<(String, String), i64> = BTreeMap::new();
    for r in gauges {
        stored.insert((r.get("org_id")?, r.get("environment")?), r.get("value")?);
    }
    let keys: BTreeSet<&(String, String)> = expected.keys().chain(stored.keys()).collect();
    Ok(keys
        .into_iter()
        .filter_map(|k| {
            let (e, s) = (expected.get(k).copied().unwrap_or(0), stored.get(k).copied().unwrap_or(0));
            (e != s).then(|| Difference {
                table: "usage_gauges",
                org_id: k.0.clone(),
                environment: Environment::parse(&k.1).unwrap_or(Environment::Live),
                bucket: "memories_stored".into(),
                metric: "memories_stored".into(),
                stored: s,
                expected: e,
            })
        })
        .collect())
}

/// Rebuilds the distinct values a unique_count metric has seen in the
/// period and its days.
async fn rebuild_distinct(
    tx: &mut Tx,
    backend: Backend,
    m: &Metric,
    period: &str,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> sqlx::Result<()> {
    sql("DELETE FROM usage_distinct WHERE metric = $1 AND (bucket = $2 OR bucket LIKE $3)")
        .bind(&m.name)
        .bind(period)
        .bind(format!("{period}-%"))
        .execute(&mut *tx)
        .await?;
    let value = m.sql_value(backend);
    for group in [format!("'{period}'"), utc_day(backend, "occurred_at")] {
        sql(format!(
            "INSERT INTO usage_distinct (org_id, environment, bucket, metric, value) \
             SELECT DISTINCT org_id, environment, {group}, $1, {value} FROM usage_events \
             WHERE occurred_at >= $2 AND occurred_at < $3 AND {value} IS NOT NULL"
        ))
        .bind(&m.name)
        .bind(start)
        .bind(end)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}
