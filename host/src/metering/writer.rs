//! The group-commit event writer: requests hand their usage event (with the
//! audit entry of the call and, for an idempotent request, its response) to
//! one writer task and wait; the writer takes whatever is waiting, up to
//! [`MAX_BATCH`], and writes it in one transaction:
//!
//! 1. lock the audit chain's head (this orders the chain and serialises
//!    batches with recomputation, `reconcile.rs`, across instances);
//! 2. read the gauges of the batch's orgs, and give each event the org's
//!    stored memories after it;
//! 3. insert the events and the audit entries;
//! 4. add the batch to the period counters and daily rollups, as the
//!    metrics policy aggregates it, and move the gauges;
//! 5. store the idempotent responses; commit.
//!
//! Every request of the batch is answered after the commit: durable before
//! the response, one disk sync for the whole batch. A batch that fails
//! answers every one of its requests with an error (they answer 503, and
//! their work is not billed): nothing is acknowledged that was not written.
//! No deliberate waiting: while one batch commits the next one gathers, so
//! the delay a request sees is at most one commit.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::idempotency::{Completion, IdempotencyKeys};
use super::policy::{Aggregation, MetricsPolicy, Value};
use super::{UsageEvent, day_of, period_of};
use crate::audit::{self, EntryKind, NewEntry};
use crate::auth::Environment;
use crate::store::Database;
use crate::store::sql::{Tx, pow2_chunks, sql, value_rows};

/// Events written in one transaction at most.
pub const MAX_BATCH: usize = 1000;
/// Rows per multi-row INSERT at most (a power of two: `pow2_chunks`).
const INSERT_CHUNK: usize = 256;
/// Requests that may wait for the writer before new ones wait to hand over.
pub const QUEUE_CAPACITY: usize = 65_536;

/// What a request hands the writer.
pub struct Submission {
    pub event: UsageEvent,
    /// The client's address and user agent, for the audit entry.
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub completion: Option<Completion>,
}

pub(super) struct Job {
    pub submission: Submission,
    pub enqueued: Instant,
    pub done: oneshot::Sender<Result<(), String>>,
}

pub(super) type Queue = (mpsc::Sender<Job>, Arc<tokio::sync::Mutex<mpsc::Receiver<Job>>>);

pub(super) fn queue() -> Queue {
    let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
    (tx, Arc::new(tokio::sync::Mutex::new(rx)))
}

/// The bucket a counter or rollup adds to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Bucket {
    pub org_id: String,
    pub environment: Environment,
    /// `YYYY-MM` (a period counter) or `YYYY-MM-DD` (a daily rollup).
    pub bucket: String,
    pub metric: String,
}

/// How a batch changes one counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Update {
    Add(i64),
    Max(i64),
    Set(i64),
}

impl Update {
    pub fn apply(self, to: i64) -> i64 {
        match self {
            Update::Add(n) => to.saturating_add(n),
            Update::Max(n) => to.max(n),
            Update::Set(n) => n,
        }
    }
    fn merge(self, next: Update) -> Update {
        match (self, next) {
            (Update::Add(a), Update::Add(b)) => Update::Add(a.saturating_add(b)),
            (Update::Max(a), Update::Max(b)) => Update::Max(a.max(b)),
            (_, n) => n,
        }
    }
}

/// What a committed batch changed in the period counters (for the quota
/// cache) and how big it was.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    pub counters: Vec<(Bucket, Update)>,
    pub events: usize,
}

/// Writes one batch in one transaction (see the module docs).
pub(super) async fn write_batch(
    db: &Database,
    policy: &MetricsPolicy,
    batch: &mut [Job],
) -> sqlx::Result<BatchOutcome> {
    let mut tx = db.begin().await?;
    let mut head = audit::lock_head(&mut tx).await?;

    // Gauges: the org's stored memories, carried through the batch in order.
    let mut gauges: BTreeMap<(String, Environment), (i64, i64)> = BTreeMap::new(); // (before, now)
    for job in batch.iter() {
        let e = &job.submission.event;
        if let std::collections::btree_map::Entry::Vacant(slot) = gauges.entry((e.org_id.clone(), e.environment)) {
            let v = read_gauge(&mut tx, &e.org_id, e.environment).await?;
            slot.insert((v, v));
        }
    }

    let mut counters: BTreeMap<Bucket, Update> = BTreeMap::new();
    let mut rollups: BTreeMap<Bucket, Update> = BTreeMap::new();
    let mut distinct: BTreeSet<(Bucket, bool, String)> = BTreeSet::new(); // (bucket, is a period, value)
    for job in batch.iter_mut() {
        let e = &mut job.submission.event;
        let gauge = gauges.get_mut(&(e.org_id.clone(), e.environment)).expect("read above");
        let held_before = gauge.1;
        gauge.1 = (gauge.1 + e.stored_delta()).max(0);
        e.memories_stored = gauge.1 as u64;
        let buckets = [(period_of(e.occurred_at), true), (day_of(e.occurred_at), false)];
        for m in &policy.metrics {
            let value = m.value(e);
            for (bucket, is_period) in &buckets {
                let key = Bucket {
                    org_id: e.org_id.clone(),
                    environment: e.environment,
                    bucket: bucket.clone(),
                    metric: m.name.clone(),
                };
                let into = if *is_period { &mut counters } else { &mut rollups };
                let mut put = |u: Update| {
                    into.entry(key.clone()).and_modify(|x| *x = x.merge(u)).or_insert(u);
                };
                // A gauge's value held when the bucket began counts in it.
                if m.carries_over() && m.aggregation == Aggregation::Max {
                    put(Update::Max(held_before));
                }
                match (m.aggregation, value.clone()) {
                    (_, None) => {}
                    (Aggregation::Sum | Aggregation::Count, Some(Value::Num(n))) => put(Update::Add(n)),
                    (Aggregation::Max, Some(Value::Num(n))) => put(Update::Max(n)),
                    (Aggregation::Latest, Some(Value::Num(n))) => put(Update::Set(n)),
                    (Aggregation::UniqueCount, Some(v)) => {
                        let v = match v {
                            Value::Text(t) => t,
                            Value::Num(n) => n.to_string(),
                        };
                        distinct.insert((key.clone(), *is_period, v));
                    }
                    (_, Some(Value::Text(_))) => {}
                }
            }
        }
    }

    // Events and their audit entries.
    let events: Vec<&UsageEvent> = batch.iter().map(|j| &j.submission.event).collect();
    insert_events(&mut tx, &events).await?;
    let entries = batch
        .iter()
        .map(|j| {
            let e = &j.submission.event;
            NewEntry {
                occurred_at: Some(e.occurred_at),
                kind: Some(EntryKind::ApiCall),
                org_id: Some(e.org_id.clone()),
                actor: format!("key:{}", e.key_id),
                action: format!("{} {}", e.method, e.route),
                target: None,
                request_id: Some(e.request_id.clone()),
                ip: j.submission.ip.clone(),
                user_agent: j.submission.user_agent.clone(),
                status: Some(e.status),
                processing_us: Some(e.processing_us),
                tokens: Some(e.tokens_in + e.tokens_out),
                before: None,
                after: None,
            }
        })
        .collect();
    audit::append(&mut tx, &mut head, entries).await?;

    // Distinct values: only new ones add to their bucket's count.
    for (key, is_period, value) in distinct {
        let added =
            sql("INSERT INTO usage_distinct (org_id, environment, bucket, metric, value) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT DO NOTHING")
            .bind(&key.org_id)
            .bind(key.environment.as_str())
            .bind(&key.bucket)
            .bind(&key.metric)
            .bind(value)
            .execute(&mut tx)
            .await?;
        if added == 1 {
            let into = if is_period { &mut counters } else { &mut rollups };
            into.entry(key).and_modify(|x| *x = x.merge(Update::Add(1))).or_insert(Update::Add(1));
        }
    }
    upsert(&mut tx, "usage_counters", "period", &counters).await?;
    upsert(&mut tx, "usage_daily_rollup", "day", &rollups).await?;
    for ((org_id, env), (before, now)) in &gauges {
        if before != now {
            write_gauge(&mut tx, org_id, *env, *now).await?;
        }
    }
    for job in batch.iter() {
        if let Some(c) = &job.submission.completion {
            IdempotencyKeys::complete_in(&mut tx, c).await?;
        }
    }
    tx.commit().await?;
    Ok(BatchOutcome { counters: counters.into_iter().collect(), events: batch.len() })
}

pub(super) async fn read_gauge(tx: &mut Tx, org_id: &str, env: Environment) -> sqlx::Result<i64> {
    Ok(sql("SELECT value FROM usage_gauges WHERE org_id = $1 AND environment = $2 AND name = 'memories_stored'")
        .bind(org_id)
        .bind(env.as_str())
        .fetch_optional(&mut *tx)
        .await?
        .map(|r| r.get::<i64>("value"))
        .transpose()?
        .unwrap_or(0))
}

pub(super) async fn write_gauge(tx: &mut Tx, org_id: &str, env: Environment, value: i64) -> sqlx::Result<()> {
    sql("INSERT INTO usage_gauges (org_id, environment, name, value) VALUES ($1, $2, 'memories_stored', $3) \
         ON CONFLICT (org_id, environment, name) DO UPDATE SET value = excluded.value")
    .bind(org_id)
    .bind(env.as_str())
    .bind(value)
    .execute(tx)
    .await?;
    Ok(())
}

/// The columns of `usage_events`, in the order `insert_events` binds them.
const EVENT_COLUMNS: [&str; 24] = [
    "id",
    "org_id",
    "environment",
    "key_id",
    "occurred_at",
    "method",
    "route",
    "status",
    "billable",
    "tokens_in",
    "tokens_out",
    "memories_read",
    "memories_created",
    "memories_updated",
    "memories_deleted",
    "memories_stored",
    "embeddings_generated",
    "model_calls",
    "cost_micros",
    "model",
    "request_id",
    "processing_us",
    "tags",
    "quantities",
];

/// Inserts events: on PostgreSQL one statement of arrays for the whole batch
/// (one round trip, one prepared statement whatever the batch size); on
/// SQLite multi-row inserts in power-of-two chunks.
async fn insert_events(tx: &mut Tx, events: &[&UsageEvent]) -> sqlx::Result<()> {
    if let Some(conn) = tx.pg() {
        return insert_events_pg(conn, events).await;
    }
    for chunk in pow2_chunks(events, INSERT_CHUNK) {
        let mut text = format!("INSERT INTO usage_events ({}) VALUES ", EVENT_COLUMNS.join(", "));
        text.push_str(&value_rows(chunk.len(), EVENT_COLUMNS.len()));
        let mut q = sql(text);
        for e in chunk {
            q = q
                .bind(e.id)
                .bind(&e.org_id)
                .bind(e.environment.as_str())
                .bind(&e.key_id)
                .bind(e.occurred_at)
                .bind(&e.method)
                .bind(&e.route)
                .bind(e.status as i64)
                .bind(e.billable)
                .bind(e.tokens_in)
                .bind(e.tokens_out)
                .bind(e.memories_read)
                .bind(e.memories_created)
                .bind(e.memories_updated)
                .bind(e.memories_deleted)
                .bind(e.memories_stored)
                .bind(e.embeddings_generated)
                .bind(e.model_calls)
                .bind(e.cost_micros)
                .bind(&e.model)
                .bind(&e.request_id)
                .bind(e.processing_us)
                .bind(crate::store::sql::Arg::jsonb(&e.tags))
                .bind(crate::store::sql::Arg::jsonb(&e.quantities));
        }
        q.execute(&mut *tx).await?;
    }
    Ok(())
}

async fn insert_events_pg(conn: &mut sqlx::PgConnection, events: &[&UsageEvent]) -> sqlx::Result<()> {
    let col = |f: fn(&UsageEvent) -> i64| events.iter().map(|e| f(e)).collect::<Vec<i64>>();
    let text = |f: fn(&UsageEvent) -> String| events.iter().map(|e| f(e)).collect::<Vec<String>>();
    let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    sqlx::query(
        "INSERT INTO usage_events (id, org_id, environment, key_id, occurred_at, method, route, status, billable, \
         tokens_in, tokens_out, memories_read, memories_created, memories_updated, memories_deleted, memories_stored, \
         embeddings_generated, model_calls, cost_micros, model, request_id, processing_us, tags, quantities) \
         SELECT id, org_id, environment, key_id, occurred_at, method, route, status, billable, tokens_in, tokens_out, \
         memories_read, memories_created, memories_updated, memories_deleted, memories_stored, embeddings_generated, \
         model_calls, cost_micros, model, request_id, processing_us, tags::jsonb, quantities::jsonb \
         FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::text[], $7::text[], \
         $8::int4[], $9::bool[], $10::int8[], $11::int8[], $12::int8[], $13::int8[], $14::int8[], $15::int8[], \
         $16::int8[], $17::int8[], $18::int8[], $19::int8[], $20::text[], $21::text[], $22::int8[], $23::text[], \
         $24::text[]) AS u(id, org_id, environment, key_id, occurred_at, method, route, status, billable, tokens_in, \
         tokens_out, memories_read, memories_created, memories_updated, memories_deleted, memories_stored, \
         embeddings_generated, model_calls, cost_micros, model, request_id, processing_us, tags, quantities)",
    )
    .bind(events.iter().map(|e| e.id).collect::<Vec<_>>())
    .bind(text(|e| e.org_id.clone()))
    .bind(text(|e| e.environment.as_str().to_string()))
    .bind(text(|e| e.key_id.clone()))
    .bind(events.iter().map(|e| e.occurred_at).collect::<Vec<_>>())
    .bind(text(|e| e.method.clone()))
    .bind(text(|e| e.route.clone()))
    .bind(events.iter().map(|e| e.status as i32).collect::<Vec<i32>>())
    .bind(events.iter().map(|e| e.billable).collect::<Vec<bool>>())
    .bind(events.iter().map(|e| n(e.tokens_in)).collect::<Vec<_>>())
    .bind(events.iter().map(|e| n(e.tokens_out)).collect::<Vec<_>>())
    .bind(events.iter().map(|e| n(e.memories_read)).collect::<Vec<_>>())
    .bind(events.iter().map(|e| n(e.memories_created)).collect::<Vec<_>>())
    .bind(events.iter().map(|e| n(e.memories_updated)).collect::<Vec<_>>())
    .bind(events.iter().map(|e| n(e.memories_deleted)).collect::<Vec<_>>())
    .bind(events.iter().map(|e| n(e.memories_stored)).collect::<Vec<_>>())
    .bind(events.iter().map(|e| n(e.embeddings_generated)).collect::<Vec<_>>())
    .bind(events.iter().map(|e| n(e.model_calls)).collect::<Vec<_>>())
    .bind(col(|e| e.cost_micros))
    .bind(events.iter().map(|e| e.model.clone()).collect::<Vec<Option<String>>>())
    .bind(text(|e| e.request_id.clone()))
    .bind(events.iter().map(|e| n(e.processing_us)).collect::<Vec<_>>())
    .bind(text(|e| serde_json::to_string(&e.tags).unwrap_or_else(|_| "{}".into())))
    .bind(text(|e| serde_json::to_string(&e.quantities).unwrap_or_else(|_| "{}".into())))
    .execute(conn)
    .await?;
    Ok(())
}

/// Applies counter updates as multi-row upserts: one statement for the
/// whole batch (per 256 rows), each row adding, raising to a maximum or
/// setting by its metric's aggregation. Metric names are checked names
/// (`policy::check_name`), so they can stand in the statement; its text
/// changes only with the set of metrics, and stays prepared.
pub(super) async fn upsert(
    tx: &mut Tx,
    table: &str,
    bucket_col: &str,
    updates: &BTreeMap<Bucket, Update>,
) -> sqlx::Result<()> {
    let rows: Vec<(&Bucket, &Update)> = updates.iter().collect();
    let names = |pick: fn(&Update) -> bool| -> Vec<String> {
        let set: BTreeSet<&str> = rows.iter().filter(|(_, u)| pick(u)).map(|(b, _)| b.metric.as_str()).collect();
        set.into_iter().map(|m| format!("'{m}'")).collect()
    };
    let (max, set) = (names(|u| matches!(u, Update::Max(_))), names(|u| matches!(u, Update::Set(_))));
    let mut expr = String::from("CASE");
    if !max.is_empty() {
        expr.push_str(&format!(
            " WHEN excluded.metric IN ({}) THEN GREATEST({table}.quantity, excluded.quantity)",
            max.join(", ")
        ));
    }
    if !set.is_empty() {
        expr.push_str(&format!(" WHEN excluded.metric IN ({}) THEN excluded.quantity", set.join(", ")));
    }
    expr.push_str(&format!(" ELSE {table}.quantity + excluded.quantity END"));
    for chunk in rows.chunks(INSERT_CHUNK) {
        let text = format!(
            "INSERT INTO {table} (org_id, environment, {bucket_col}, metric, quantity) VALUES {} \
             ON CONFLICT (org_id, environment, {bucket_col}, metric) DO UPDATE SET quantity = {expr}",
            value_rows(chunk.len(), 5)
        );
        let mut q = sql(text);
        for (b, u) in chunk {
            let (Update::Add(v) | Update::Max(v) | Update::Set(v)) = u;
            q = q.bind(&b.org_id).bind(b.environment.as_str()).bind(&b.bucket).bind(&b.metric).bind(*v);
        }
        q.execute(&mut *tx).await?;
    }
    Ok(())
}
