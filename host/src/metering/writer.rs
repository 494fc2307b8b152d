//! The group-commit event writer: requests hand their usage event (with the
//! audit entry of the call and, for an idempotent request, its response) to
//! one writer task and wait; the writer takes whatever is waiting, up to
//! [`MAX_BATCH`], and writes it in one transaction:
//!
//! 1. lock the audit chain's head (this orders the chain and serialises
//!    batches with recomputation, `reconcile.rs`, across instances);
//! 2. read the gauges of the batch's orgs (one statement), and give each
//!    event the org's stored memories after it;
//! 3. insert the events, and seal them with one audit entry: an event is
//!    its API call's audit record (`audit/calls.rs`), so a request writes
//!    one row;
//! 4. add the batch to the period counters and daily rollups, as the
//!    metrics policy aggregates it, and move the gauges;
//! 5. store the idempotent responses; commit.
//!
//! On PostgreSQL step 1 rides with `BEGIN`, step 2 is one statement and
//! steps 3–4 another (one data-modifying `WITH`): with `COMMIT`, four round
//! trips a batch, whatever its size (plus one per idempotent response, and one per
//! new value of a `unique_count` metric). On SQLite each statement is a
//! hand-over to the connection's thread, so the batch keeps them few:
//! `BEGIN IMMEDIATE`, step 2 in one statement, the events (one insert per
//! power-of-two chunk), the rest of steps 3–4 in one command, `COMMIT`.
//!
//! Every request of the batch is answered after the commit: durable before
//! the response, one disk sync for the whole batch. A batch that fails
//! answers every one of its requests with an error (they answer 503, and
//! their work is not billed): nothing is acknowledged that was not written.
//! No deliberate waiting: while one batch commits the next one gathers, so
//! the delay a request sees is at most one commit.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::idempotency::{Completion, IdempotencyKeys};
use super::policy::{Aggregation, MetricsPolicy, Value};
use super::{UsageEvent, day_of, period_of};
use crate::audit::calls::{self, CallRecord};
use crate::audit::{self, Actor, EntryKind, NewEntry};
use crate::auth::Environment;
use crate::store::sql::{Tx, pow2_chunks, sql, value_rows};
use crate::store::{Database, safe};

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
    // The audit head's lock rides with BEGIN; every read below starts after
    // it was granted, so it sees the batch committed before this one.
    let mut tx = db.begin_locking(audit::LOCK_HEAD).await?;
    // Gauges: the org's stored memories, carried through the batch in order.
    let orgs: BTreeSet<(String, Environment)> =
        batch.iter().map(|j| (j.submission.event.org_id.clone(), j.submission.event.environment)).collect();
    let (mut head, gauges) = lock_head_and_read_gauges(&mut tx, &orgs).await?;
    // The head is locked: the seal made below takes the next position.
    let seal_seq = head.seq + 1;

    // Counting works on small indexes (the batch's orgs, the distinct days
    // and periods its events fall in, the policy's metrics), so an event
    // costs no allocation; the buckets are named once per distinct key.
    let slots: Vec<(String, Environment)> = orgs.into_iter().collect();
    let mut held: Vec<(i64, i64)> = slots.iter().map(|k| gauges.get(k).copied().unwrap_or((0, 0))).collect();
    let mut labels: Vec<(String, bool)> = Vec::new(); // (period or day, is a period)
    let mut last_day: Option<(chrono::NaiveDate, usize, usize)> = None;
    // (org slot, label, metric index) ─▶ update, merged in batch order.
    let mut tally: HashMap<(usize, usize, usize), Update> = HashMap::new();
    let mut distinct: BTreeSet<(Bucket, bool, String)> = BTreeSet::new(); // (bucket, is a period, value)
    for job in batch.iter_mut() {
        let e = &mut job.submission.event;
        let slot = slots
            .binary_search_by(|(o, env)| (o.as_str(), *env).cmp(&(e.org_id.as_str(), e.environment)))
            .expect("every event's org is a slot");
        let gauge = &mut held[slot];
        let held_before = gauge.1;
        gauge.1 = (gauge.1 + e.stored_delta()).max(0);
        e.memories_stored = gauge.1 as u64;
        let date = e.occurred_at.date_naive();
        let (period, day) = match last_day {
            Some((d, p, dy)) if d == date => (p, dy),
            _ => {
                let mut label = |text: String, is_period: bool| {
                    labels.iter().position(|l| l.0 == text).unwrap_or_else(|| {
                        labels.push((text, is_period));
                        labels.len() - 1
                    })
                };
                let (p, dy) = (label(period_of(e.occurred_at), true), label(day_of(e.occurred_at), false));
                last_day = Some((date, p, dy));
                (p, dy)
            }
        };
        for (mi, m) in policy.metrics.iter().enumerate() {
            let value = m.value(e);
            for label in [period, day] {
                let mut put = |u: Update| {
                    tally.entry((slot, label, mi)).and_modify(|x| *x = x.merge(u)).or_insert(u);
                };
                // A gauge's value held when the bucket began counts in it.
                if m.carries_over() && m.aggregation == Aggregation::Max {
                    put(Update::Max(held_before));
                }
                match (m.aggregation, &value) {
                    (_, None) => {}
                    (Aggregation::Sum | Aggregation::Count, Some(Value::Num(n))) => put(Update::Add(*n)),
                    (Aggregation::Max, Some(Value::Num(n))) => put(Update::Max(*n)),
                    (Aggregation::Latest, Some(Value::Num(n))) => put(Update::Set(*n)),
                    (Aggregation::UniqueCount, Some(v)) => {
                        let v = match v {
                            Value::Text(t) => t.clone(),
                            Value::Num(n) => n.to_string(),
                        };
                        let key = Bucket {
                            org_id: e.org_id.clone(),
                            environment: e.environment,
                            bucket: labels[label].0.clone(),
                            metric: m.name.clone(),
                        };
                        distinct.insert((key, label == period, v));
                    }
                    (_, Some(Value::Text(_))) => {}
                }
            }
        }
    }
    let mut counters: BTreeMap<Bucket, Update> = BTreeMap::new();
    let mut rollups: BTreeMap<Bucket, Update> = BTreeMap::new();
    for ((slot, label, mi), update) in tally {
        let key = Bucket {
            org_id: slots[slot].0.clone(),
            environment: slots[slot].1,
            bucket: labels[label].0.clone(),
            metric: policy.metrics[mi].name.clone(),
        };
        let into = if labels[label].1 { &mut counters } else { &mut rollups };
        into.insert(key, update);
    }

    // The seal whose digest covers the events.
    let mut records: Vec<CallRecord> = batch.iter().map(call_record).collect();
    let seal = NewEntry {
        kind: Some(EntryKind::System),
        actor: Actor::system().0,
        action: calls::SEAL_ACTION.into(),
        after: Some(calls::seal_details(records.len(), &calls::digest(&mut records))),
        ..NewEntry::default()
    };

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
    let moved: Vec<GaugeValue> = slots
        .iter()
        .zip(&held)
        .filter(|(_, (before, now))| before != now)
        .map(|((o, e), (_, now))| (o.as_str(), *e, *now))
        .collect();
    let sealed = audit::chain(&mut head, vec![seal]);
    if let Some(conn) = tx.pg() {
        write_pg(conn, batch, &sealed[0], &counters, &rollups, &moved).await?;
    } else {
        write_sqlite(&mut tx, batch, &sealed[0], &counters, &rollups, &moved).await?;
    }
    debug_assert_eq!(head.seq, seal_seq);
    for job in batch.iter() {
        if let Some(c) = &job.submission.completion {
            IdempotencyKeys::complete_in(&mut tx, c).await?;
        }
    }
    tx.commit().await?;
    Ok(BatchOutcome { counters: counters.into_iter().collect(), events: batch.len() })
}

type Gauges = BTreeMap<(String, Environment), (i64, i64)>;
/// A gauge to set: org, environment, memories stored.
pub(super) type GaugeValue<'a> = (&'a str, Environment, i64);

/// Reads the audit chain's head (locked by the transaction's BEGIN) and the
/// batch's orgs' gauges, in one statement on either backend (on SQLite the
/// `IMMEDIATE` transaction already excludes every other writer). Not one
/// statement that both locks and reads: at READ COMMITTED it would read the
/// gauges from before the batch it waited for (a lost update).
async fn lock_head_and_read_gauges(
    tx: &mut Tx,
    orgs: &BTreeSet<(String, Environment)>,
) -> sqlx::Result<(audit::Head, Gauges)> {
    // (head seq, head hash, then one gauge, or none, per row).
    type GaugeRow = (i64, String, Option<String>, Option<String>, Option<i64>);
    let ids: Vec<&str> = orgs.iter().map(|(o, _)| o.as_str()).collect::<BTreeSet<_>>().into_iter().collect();
    let rows: Vec<GaugeRow> = if let Some(conn) = tx.pg() {
        use sqlx::Row as _;
        let rows = sqlx::query(
            "SELECT h.seq, h.hash, g.org_id, g.environment, g.value FROM audit_head h \
             LEFT JOIN usage_gauges g ON g.name = 'memories_stored' AND g.org_id = ANY($1::text[]) WHERE h.id = 1",
        )
        .bind(&ids)
        .fetch_all(conn)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?, r.try_get(4)?)))
            .collect::<sqlx::Result<_>>()?
    } else {
        let rows = sql("SELECT h.seq, h.hash, g.org_id, g.environment, g.value FROM audit_head h \
             LEFT JOIN usage_gauges g ON g.name = 'memories_stored' AND g.org_id IN (SELECT value FROM json_each($1)) \
             WHERE h.id = 1")
        .bind(serde_json::to_string(&ids).unwrap_or_else(|_| "[]".into()))
        .fetch_all(&mut *tx)
        .await?;
        rows.iter()
            .map(|r| Ok((r.get("seq")?, r.get("hash")?, r.get("org_id")?, r.get("environment")?, r.get("value")?)))
            .collect::<sqlx::Result<_>>()?
    };
    let (seq, hash) = rows.first().map(|r| (r.0, r.1.clone())).ok_or(sqlx::Error::RowNotFound)?;
    let mut gauges: Gauges = orgs.iter().map(|k| (k.clone(), (0, 0))).collect();
    for (_, _, org, env, value) in rows {
        let (Some(org), Some(env), Some(v)) = (org, env, value) else {
            continue;
        };
        if let Some(g) = gauges.get_mut(&(org, Environment::parse(&env).unwrap_or(Environment::Live))) {
            *g = (v, v);
        }
    }
    Ok((audit::Head { seq, hash }, gauges))
}

/// Sets gauges: multi-row upserts in power-of-two chunks.
pub(super) async fn write_gauges(tx: &mut Tx, gauges: &[GaugeValue<'_>]) -> sqlx::Result<()> {
    for chunk in pow2_chunks(gauges, INSERT_CHUNK) {
        let mut q = sql(format!(
            "INSERT INTO usage_gauges (org_id, environment, name, value) VALUES {} \
             ON CONFLICT (org_id, environment, name) DO UPDATE SET value = excluded.value",
            value_rows(chunk.len(), 4)
        ));
        for (org_id, env, value) in chunk {
            q = q.bind(*org_id).bind(env.as_str()).bind("memories_stored").bind(*value);
        }
        q.execute(&mut *tx).await?;
    }
    Ok(())
}

/// An event as its seal's digest covers it.
fn call_record(job: &Job) -> CallRecord {
    let e = &job.submission.event;
    let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    CallRecord {
        id: e.id,
        org_id: e.org_id.clone(),
        environment: e.environment.as_str().to_string(),
        key_id: e.key_id.clone(),
        occurred_at: e.occurred_at,
        method: e.method.clone(),
        route: e.route.clone(),
        status: e.status as i64,
        billable: e.billable,
        numbers: [
            n(e.tokens_in),
            n(e.tokens_out),
            n(e.memories_read),
            n(e.memories_created),
            n(e.memories_updated),
            n(e.memories_deleted),
            n(e.memories_stored),
            n(e.embeddings_generated),
            n(e.model_calls),
            e.cost_micros,
            n(e.processing_us),
        ],
        model: e.model.clone(),
        request_id: e.request_id.clone(),
        tags: serde_json::to_value(&e.tags).unwrap_or_default(),
        quantities: serde_json::to_value(&e.quantities).unwrap_or_default(),
        ip: job.submission.ip.clone(),
        user_agent: job.submission.user_agent.clone(),
    }
}

/// The columns of `usage_events`, in the order `insert_events` binds them.
const EVENT_COLUMNS: [&str; 27] = [
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
    "ip",
    "user_agent",
    "audit_seq",
];

/// SQLite: the events (multi-row inserts in power-of-two chunks, so a few
/// statement texts serve every batch size), then the seal, the chain's
/// head, the counters, the rollups and the gauges in one command of five
/// statements, each row set there one JSON array unpacked by `json_each`.
/// Every parameter is an anonymous `?`, bound in the order it appears:
/// SQLite looks a numbered parameter up by a linear scan (27 per event made
/// binding quadratic in the batch), and sqlx binds numbered parameters of a
/// later statement in one command wrongly.
async fn write_sqlite(
    tx: &mut Tx,
    batch: &[Job],
    seal: &audit::Prepared,
    counters: &BTreeMap<Bucket, Update>,
    rollups: &BTreeMap<Bucket, Update>,
    gauges: &[GaugeValue<'_>],
) -> sqlx::Result<()> {
    use serde_json::Value as J;
    // The seal is the chain's new head.
    let (seq, hash) = (seal.0, &seal.7);
    let row = format!("({})", ["?"; EVENT_COLUMNS.len()].join(", "));
    for chunk in pow2_chunks(batch, INSERT_CHUNK) {
        let mut q = sql(format!(
            "INSERT INTO usage_events ({}) VALUES {}",
            EVENT_COLUMNS.join(", "),
            vec![row.as_str(); chunk.len()].join(", ")
        ));
        for job in chunk {
            let e = &job.submission.event;
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
                .bind(crate::store::sql::Arg::jsonb(&e.quantities))
                .bind(&job.submission.ip)
                .bind(&job.submission.user_agent)
                .bind(seq);
        }
        q.execute(&mut *tx).await?;
    }
    let buckets = |updates: &BTreeMap<Bucket, Update>| -> String {
        let rows = updates.iter().map(|(b, u)| {
            let (Update::Add(v) | Update::Max(v) | Update::Set(v)) = u;
            serde_json::json!([b.org_id, b.environment.as_str(), b.bucket, b.metric, v])
        });
        J::Array(rows.collect()).to_string()
    };
    let gauge_rows: Vec<J> = gauges.iter().map(|(o, e, v)| serde_json::json!([o, e.as_str(), v])).collect();
    // `WHERE true`: SQLite needs it between a SELECT and an upsert's ON CONFLICT.
    let text = format!(
        "{}; \
         UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1; \
         INSERT INTO usage_counters (org_id, environment, period, metric, quantity) \
         SELECT value->>0, value->>1, value->>2, value->>3, value->>4 FROM json_each(?) WHERE true \
         ON CONFLICT (org_id, environment, period, metric) DO UPDATE SET quantity = {}; \
         INSERT INTO usage_daily_rollup (org_id, environment, day, metric, quantity) \
         SELECT value->>0, value->>1, value->>2, value->>3, value->>4 FROM json_each(?) WHERE true \
         ON CONFLICT (org_id, environment, day, metric) DO UPDATE SET quantity = {}; \
         INSERT INTO usage_gauges (org_id, environment, name, value) \
         SELECT value->>0, value->>1, 'memories_stored', value->>2 FROM json_each(?) WHERE true \
         ON CONFLICT (org_id, environment, name) DO UPDATE SET value = excluded.value",
        audit::sqlite_insert(),
        conflict_expr("usage_counters", counters),
        conflict_expr("usage_daily_rollup", rollups),
    );
    audit::sqlite_rows(sql(text), std::slice::from_ref(seal))
        .bind(seq)
        .bind(hash)
        .bind(buckets(counters))
        .bind(buckets(rollups))
        .bind(J::Array(gauge_rows).to_string())
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Counter or rollup rows as arrays: org, environment, bucket, metric, quantity.
type BucketColumns = (Vec<String>, Vec<&'static str>, Vec<String>, Vec<String>, Vec<i64>);

/// PostgreSQL: the events, the seal (and the chain's head), the counters,
/// the rollups and the gauges in one statement (one round trip; each part
/// binds arrays, so the text stays the same whatever the batch size).
async fn write_pg(
    conn: &mut sqlx::PgConnection,
    batch: &[Job],
    seal: &audit::Prepared,
    counters: &BTreeMap<Bucket, Update>,
    rollups: &BTreeMap<Bucket, Update>,
    gauges: &[GaugeValue<'_>],
) -> sqlx::Result<()> {
    let events: Vec<&UsageEvent> = batch.iter().map(|j| &j.submission.event).collect();
    let col = |f: fn(&UsageEvent) -> i64| events.iter().map(|e| f(e)).collect::<Vec<i64>>();
    let text = |f: fn(&UsageEvent) -> String| events.iter().map(|e| f(e)).collect::<Vec<String>>();
    let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let bucket_rows = |updates: &BTreeMap<Bucket, Update>| {
        let mut cols: BucketColumns = Default::default();
        for (b, u) in updates {
            let (Update::Add(v) | Update::Max(v) | Update::Set(v)) = u;
            cols.0.push(b.org_id.clone());
            cols.1.push(b.environment.as_str());
            cols.2.push(b.bucket.clone());
            cols.3.push(b.metric.clone());
            cols.4.push(*v);
        }
        cols
    };
    let (c, r) = (bucket_rows(counters), bucket_rows(rollups));
    let (seq, occurred_at, _, entry, _, after, prev_hash, hash) = seal;
    let statement = format!(
        "WITH events AS (INSERT INTO usage_events (id, org_id, environment, key_id, occurred_at, method, route, status, \
         billable, tokens_in, tokens_out, memories_read, memories_created, memories_updated, memories_deleted, \
         memories_stored, embeddings_generated, model_calls, cost_micros, model, request_id, processing_us, tags, \
         quantities, ip, user_agent, audit_seq) \
         SELECT id, org_id, environment, key_id, occurred_at, method, route, status, billable, tokens_in, tokens_out, \
         memories_read, memories_created, memories_updated, memories_deleted, memories_stored, embeddings_generated, \
         model_calls, cost_micros, model, request_id, processing_us, tags::jsonb, quantities::jsonb, ip, user_agent, \
         $27::int8 \
         FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::text[], $7::text[], \
         $8::int4[], $9::bool[], $10::int8[], $11::int8[], $12::int8[], $13::int8[], $14::int8[], $15::int8[], \
         $16::int8[], $17::int8[], $18::int8[], $19::int8[], $20::text[], $21::text[], $22::int8[], $23::text[], \
         $24::text[], $25::text[], $26::text[]) AS u(id, org_id, environment, key_id, occurred_at, method, route, \
         status, billable, tokens_in, tokens_out, memories_read, memories_created, memories_updated, memories_deleted, \
         memories_stored, embeddings_generated, model_calls, cost_micros, model, request_id, processing_us, tags, \
         quantities, ip, user_agent)), \
         seal AS (INSERT INTO audit_log (seq, occurred_at, kind, actor, action, after, prev_hash, hash) \
         VALUES ($27::int8, $28::timestamptz, 'system', $29::text, $30::text, $31::text, $32::text, $33::text)), \
         head AS (UPDATE audit_head SET seq = $27::int8, hash = $33::text WHERE id = 1), \
         counters AS (INSERT INTO usage_counters (org_id, environment, period, metric, quantity) \
         SELECT * FROM UNNEST($34::text[], $35::text[], $36::text[], $37::text[], $38::int8[]) \
         ON CONFLICT (org_id, environment, period, metric) DO UPDATE SET quantity = {}), \
         rollups AS (INSERT INTO usage_daily_rollup (org_id, environment, day, metric, quantity) \
         SELECT * FROM UNNEST($39::text[], $40::text[], $41::text[], $42::text[], $43::int8[]) \
         ON CONFLICT (org_id, environment, day, metric) DO UPDATE SET quantity = {}), \
         gauges AS (INSERT INTO usage_gauges (org_id, environment, name, value) \
         SELECT o, e, 'memories_stored', v FROM UNNEST($44::text[], $45::text[], $46::int8[]) AS g(o, e, v) \
         ON CONFLICT (org_id, environment, name) DO UPDATE SET value = excluded.value) \
         SELECT 1",
        conflict_expr("usage_counters", counters),
        conflict_expr("usage_daily_rollup", rollups),
    );
    sqlx::query(safe(statement))
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
        .bind(batch.iter().map(|j| j.submission.ip.clone()).collect::<Vec<Option<String>>>())
        .bind(batch.iter().map(|j| j.submission.user_agent.clone()).collect::<Vec<Option<String>>>())
        .bind(*seq)
        .bind(*occurred_at)
        .bind(&entry.actor)
        .bind(&entry.action)
        .bind(after.as_deref())
        .bind(prev_hash)
        .bind(hash)
        .bind(c.0)
        .bind(c.1)
        .bind(c.2)
        .bind(c.3)
        .bind(c.4)
        .bind(r.0)
        .bind(r.1)
        .bind(r.2)
        .bind(r.3)
        .bind(r.4)
        .bind(gauges.iter().map(|(o, _, _)| *o).collect::<Vec<&str>>())
        .bind(gauges.iter().map(|(_, e, _)| e.as_str()).collect::<Vec<&str>>())
        .bind(gauges.iter().map(|(_, _, v)| *v).collect::<Vec<i64>>())
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
    let expr = conflict_expr(table, updates);
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

/// The new quantity of a counter row an upsert hits: added to, raised to a
/// maximum or set, by the row's metric's aggregation in this batch.
fn conflict_expr(table: &str, updates: &BTreeMap<Bucket, Update>) -> String {
    let names = |pick: fn(&Update) -> bool| -> Vec<String> {
        let set: BTreeSet<&str> = updates.iter().filter(|(_, u)| pick(u)).map(|(b, _)| b.metric.as_str()).collect();
        set.into_iter().map(|m| format!("'{m}'")).collect()
    };
    let (max, set) = (names(|u| matches!(u, Update::Max(_))), names(|u| matches!(u, Update::Set(_))));
    let add = format!("{table}.quantity + excluded.quantity");
    if max.is_empty() && set.is_empty() {
        // A CASE needs at least one WHEN.
        return add;
    }
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
    expr.push_str(&format!(" ELSE {add} END"));
    expr
}
