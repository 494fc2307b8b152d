//! The job queue's tables (`batch_jobs`, `batch_job_items`), for both
//! backends. Every write of a claimed job names its lease owner, so a worker
//! that lost its lease (it stalled past it, another host took the job) can
//! no longer change the job.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{ItemOutcome, Job, JobKind, JobStatus};
use crate::store::Database;
use crate::store::sql::{Arg, Row, pow2_chunks, sql, value_rows};

const JOB_COLUMNS: &str = "id, kind, status, priority, total_items, done_items, failed_items, attempts, \
                           cancel_requested, error, created_at, started_at, finished_at";

pub struct NewJobRow<'a> {
    pub id: &'a str,
    pub org_id: &'a str,
    pub environment: &'a str,
    pub key_id: &'a str,
    pub kind: &'a str,
    pub priority: i64,
    pub context: String,
    pub total: i64,
}

/// Stores a job and its items in one transaction.
pub async fn insert(db: &Database, job: &NewJobRow<'_>, inputs: &[String]) -> sqlx::Result<()> {
    let now = Utc::now();
    let mut tx = db.begin().await?;
    sql("INSERT INTO batch_jobs (id, org_id, environment, key_id, kind, status, priority, context, total_items, \
         run_after, created_at) VALUES ($1, $2, $3, $4, $5, 'queued', $6, $7, $8, $9, $9)")
    .bind(job.id)
    .bind(job.org_id)
    .bind(job.environment)
    .bind(job.key_id)
    .bind(job.kind)
    .bind(job.priority)
    .bind(job.context.as_str())
    .bind(job.total)
    .bind(now)
    .execute(&mut tx)
    .await?;
    let mut idx = 0i64;
    for chunk in pow2_chunks(inputs, 128) {
        let mut q = sql(format!(
            "INSERT INTO batch_job_items (job_id, idx, status, input) VALUES {}",
            value_rows(chunk.len(), 4)
        ));
        for input in chunk {
            q = q.bind(job.id).bind(idx).bind("pending").bind(input.as_str());
            idx += 1;
        }
        q.execute(&mut tx).await?;
    }
    tx.commit().await
}

/// Jobs of the org queued or running.
pub async fn pending_of_org(db: &Database, org_id: &str) -> sqlx::Result<u64> {
    sql("SELECT COUNT(*) AS n FROM batch_jobs WHERE org_id = $1 AND status IN ('queued', 'running')")
        .bind(org_id)
        .fetch_one(db.read())
        .await?
        .quantity("n")
}

fn job_from(r: &Row) -> sqlx::Result<Job> {
    let kind: String = r.get("kind")?;
    Ok(Job {
        id: r.get("id")?,
        kind: JobKind::parse(&kind).unwrap_or(JobKind::Extract),
        status: JobStatus::parse(&r.get::<String>("status")?),
        lane: if r.get::<i64>("priority")? > 0 { "priority" } else { "normal" },
        total_items: r.quantity("total_items")?,
        done_items: r.quantity("done_items")?,
        failed_items: r.quantity("failed_items")?,
        attempts: r.quantity("attempts")? as u32,
        cancel_requested: r.get("cancel_requested")?,
        error: r.get::<Option<String>>("error")?.and_then(|e| serde_json::from_str(&e).ok()),
        created_at: r.time("created_at")?,
        started_at: r.opt_time("started_at")?,
        finished_at: r.opt_time("finished_at")?,
        results: None,
    })
}

pub async fn get(db: &Database, org_id: &str, environment: &str, id: &str) -> sqlx::Result<Option<Job>> {
    sql(format!("SELECT {JOB_COLUMNS} FROM batch_jobs WHERE id = $1 AND org_id = $2 AND environment = $3"))
        .bind(id)
        .bind(org_id)
        .bind(environment)
        .fetch_optional(db.read())
        .await?
        .as_ref()
        .map(job_from)
        .transpose()
}

pub async fn list(
    db: &Database,
    org_id: &str,
    environment: &str,
    status: Option<&str>,
    limit: u32,
    before: Option<&str>,
) -> sqlx::Result<Vec<Job>> {
    // Job ids are UUIDv7 (time-ordered): newest first is descending id.
    let rows = sql(format!(
        "SELECT {JOB_COLUMNS} FROM batch_jobs WHERE org_id = $1 AND environment = $2 \
         AND ($3::text IS NULL OR status = $3) AND ($4::text IS NULL OR id < $4) ORDER BY id DESC LIMIT $5"
    ))
    .bind(org_id)
    .bind(environment)
    .bind(status)
    .bind(before)
    .bind(limit as i64)
    .fetch_all(db.read())
    .await?;
    rows.iter().map(job_from).collect()
}

pub async fn items(db: &Database, job_id: &str) -> sqlx::Result<Vec<ItemOutcome>> {
    let rows = sql("SELECT idx, status, result, error, attempts FROM batch_job_items WHERE job_id = $1 ORDER BY idx")
        .bind(job_id)
        .fetch_all(db.read())
        .await?;
    let json = |r: &Row, col: &str| -> sqlx::Result<Option<Value>> {
        Ok(r.get::<Option<String>>(col)?.and_then(|t| serde_json::from_str(&t).ok()))
    };
    rows.iter()
        .map(|r| {
            Ok(ItemOutcome {
                index: r.quantity("idx")?,
                status: r.get("status")?,
                result: json(r, "result")?,
                error: json(r, "error")?,
                attempts: r.quantity("attempts")? as u32,
            })
        })
        .collect()
}

/// Asks for a job to stop: a queued one is canceled at once, a running one
/// by its worker before its next item.
pub async fn request_cancel(db: &Database, id: &str) -> sqlx::Result<()> {
    let mut tx = db.begin().await?;
    sql("UPDATE batch_jobs SET cancel_requested = TRUE WHERE id = $1").bind(id).execute(&mut tx).await?;
    sql("UPDATE batch_jobs SET status = 'canceled', finished_at = $2 WHERE id = $1 AND status = 'queued'")
        .bind(id)
        .bind(Utc::now())
        .execute(&mut tx)
        .await?;
    tx.commit().await
}

/// Deletes jobs that finished before `before`, with their items.
pub async fn prune(db: &Database, before: DateTime<Utc>) -> sqlx::Result<u64> {
    let mut tx = db.begin().await?;
    let finished = "SELECT id FROM batch_jobs WHERE status IN ('completed', 'failed', 'canceled') AND finished_at < $1";
    sql(format!("DELETE FROM batch_job_items WHERE job_id IN ({finished})")).bind(before).execute(&mut tx).await?;
    let n = sql(format!("DELETE FROM batch_jobs WHERE id IN ({finished})")).bind(before).execute(&mut tx).await?;
    tx.commit().await?;
    Ok(n)
}

/// Queued and running jobs over all orgs.
pub async fn depth(db: &Database) -> sqlx::Result<(u64, u64)> {
    let row = sql("SELECT COALESCE(SUM(CASE WHEN status = 'queued' THEN 1 ELSE 0 END), 0) AS queued, \
                   COALESCE(SUM(CASE WHEN status = 'running' THEN 1 ELSE 0 END), 0) AS running \
                   FROM batch_jobs WHERE status IN ('queued', 'running')")
    .fetch_one(db.read())
    .await?;
    Ok((row.quantity("queued")?, row.quantity("running")?))
}

/// A job a worker holds.
pub struct Claimed {
    pub id: String,
    pub org_id: String,
    pub environment: String,
    pub key_id: String,
    pub kind: JobKind,
    pub context: String,
    pub attempts: u32,
    pub cursor: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// Claims the next job: queued (or running with a lapsed lease: its worker
/// died), due, of an org under its concurrency cap; the priority lane
/// first, then oldest first.
pub async fn claim(db: &Database, owner: &str, lease_secs: u64, per_org: u32) -> sqlx::Result<Option<Claimed>> {
    let now = Utc::now();
    let mut tx = db.begin().await?;
    let row =
        sql("SELECT id, org_id, environment, key_id, kind, context, attempts, cursor, created_at FROM batch_jobs j \
         WHERE (status = 'queued' OR (status = 'running' AND lease_until < $1)) AND run_after <= $1 \
         AND (SELECT COUNT(*) FROM batch_jobs r WHERE r.org_id = j.org_id AND r.status = 'running' \
              AND r.lease_until >= $1) < $2 \
         ORDER BY priority DESC, created_at LIMIT 1 FOR UPDATE SKIP LOCKED")
        .bind(now)
        .bind(per_org as i64)
        .fetch_optional(&mut tx)
        .await?;
    let Some(r) = row else { return Ok(None) };
    let id: String = r.get("id")?;
    sql("UPDATE batch_jobs SET status = 'running', lease_owner = $2, lease_until = $3, attempts = attempts + 1, \
         started_at = COALESCE(started_at, $4) WHERE id = $1")
    .bind(id.as_str())
    .bind(owner)
    .bind(now + chrono::Duration::seconds(lease_secs as i64))
    .bind(now)
    .execute(&mut tx)
    .await?;
    tx.commit().await?;
    Ok(Some(Claimed {
        id,
        org_id: r.get("org_id")?,
        environment: r.get("environment")?,
        key_id: r.get("key_id")?,
        kind: JobKind::parse(&r.get::<String>("kind")?).unwrap_or(JobKind::Extract),
        context: r.get("context")?,
        attempts: r.quantity("attempts")? as u32 + 1,
        cursor: r.get("cursor")?,
        created_at: r.time("created_at")?,
    }))
}

/// Extends the lease; false when this worker no longer holds the job.
pub async fn renew(db: &Database, id: &str, owner: &str, lease_secs: u64) -> sqlx::Result<bool> {
    let n = sql("UPDATE batch_jobs SET lease_until = $3 WHERE id = $1 AND lease_owner = $2 AND status = 'running'")
        .bind(id)
        .bind(owner)
        .bind(Utc::now() + chrono::Duration::seconds(lease_secs as i64))
        .execute(db.write())
        .await?;
    Ok(n == 1)
}

/// Whether a stop was asked for, and whether this worker still holds it.
pub async fn state(db: &Database, id: &str, owner: &str) -> sqlx::Result<(bool, bool)> {
    let r = sql("SELECT cancel_requested, lease_owner, status FROM batch_jobs WHERE id = $1")
        .bind(id)
        .fetch_one(db.read())
        .await?;
    let held =
        r.get::<Option<String>>("lease_owner")?.as_deref() == Some(owner) && r.get::<String>("status")? == "running";
    Ok((r.get("cancel_requested")?, held))
}

/// An item still to run.
pub struct PendingItem {
    pub idx: i64,
    pub input: String,
    pub plan: Option<String>,
    pub attempts: u32,
}

pub async fn pending_items(db: &Database, job_id: &str) -> sqlx::Result<Vec<PendingItem>> {
    let rows = sql("SELECT idx, input, plan, attempts FROM batch_job_items WHERE job_id = $1 AND status = 'pending' \
                    ORDER BY idx")
    .bind(job_id)
    .fetch_all(db.read())
    .await?;
    rows.iter()
        .map(|r| {
            Ok(PendingItem {
                idx: r.get("idx")?,
                input: r.get("input")?,
                plan: r.get("plan")?,
                attempts: r.quantity("attempts")? as u32,
            })
        })
        .collect()
}

/// Counts an attempt at an item (before it runs: a crash mid-item shows).
pub async fn start_item(db: &Database, job_id: &str, idx: i64, owner: &str) -> sqlx::Result<bool> {
    let n = sql("UPDATE batch_job_items SET attempts = attempts + 1 WHERE job_id = $1 AND idx = $2 AND EXISTS \
                 (SELECT 1 FROM batch_jobs WHERE id = $1 AND lease_owner = $3 AND status = 'running')")
    .bind(job_id)
    .bind(idx)
    .bind(owner)
    .execute(db.write())
    .await?;
    Ok(n == 1)
}

/// Keeps an extraction item's plan before any of it is applied.
pub async fn save_plan(db: &Database, job_id: &str, idx: i64, plan: &str) -> sqlx::Result<()> {
    sql("UPDATE batch_job_items SET plan = $3 WHERE job_id = $1 AND idx = $2")
        .bind(job_id)
        .bind(idx)
        .bind(plan)
        .execute(db.write())
        .await?;
    Ok(())
}

/// Records an item's outcome and counts it on the job, in one transaction,
/// if this worker still holds the job.
pub async fn finish_item(
    db: &Database,
    job_id: &str,
    idx: i64,
    owner: &str,
    done: bool,
    result: Option<&Value>,
    error: Option<&Value>,
) -> sqlx::Result<bool> {
    let mut tx = db.begin().await?;
    let counter = if done { "done_items" } else { "failed_items" };
    let n = sql(format!(
        "UPDATE batch_jobs SET {counter} = {counter} + 1 WHERE id = $1 AND lease_owner = $2 AND status = 'running'"
    ))
    .bind(job_id)
    .bind(owner)
    .execute(&mut tx)
    .await?;
    if n != 1 {
        return Ok(false);
    }
    sql("UPDATE batch_job_items SET status = $3, result = $4, error = $5 WHERE job_id = $1 AND idx = $2 \
         AND status = 'pending'")
    .bind(job_id)
    .bind(idx)
    .bind(if done { "done" } else { "failed" })
    .bind(result.map(Value::to_string))
    .bind(error.map(Value::to_string))
    .execute(&mut tx)
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// A re-embedding job's progress: the last memory done.
pub async fn advance(db: &Database, job_id: &str, owner: &str, cursor: &str, done: u64) -> sqlx::Result<bool> {
    let n = sql("UPDATE batch_jobs SET cursor = $3, done_items = done_items + $4 \
                 WHERE id = $1 AND lease_owner = $2 AND status = 'running'")
    .bind(job_id)
    .bind(owner)
    .bind(cursor)
    .bind(done as i64)
    .execute(db.write())
    .await?;
    Ok(n == 1)
}

/// Ends a job (completed, failed or canceled).
pub async fn finish(
    db: &Database,
    job_id: &str,
    owner: &str,
    status: JobStatus,
    error: Option<&Value>,
) -> sqlx::Result<bool> {
    let n = sql("UPDATE batch_jobs SET status = $3, error = $4, finished_at = $5, lease_owner = NULL, \
                 lease_until = NULL WHERE id = $1 AND lease_owner = $2 AND status = 'running'")
    .bind(job_id)
    .bind(owner)
    .bind(status.as_str())
    .bind(error.map(Value::to_string))
    .bind(Utc::now())
    .execute(db.write())
    .await?;
    Ok(n == 1)
}

/// Gives a job back to the queue, to run again after `after`.
pub async fn release(db: &Database, job_id: &str, owner: &str, after: DateTime<Utc>) -> sqlx::Result<bool> {
    let n = sql("UPDATE batch_jobs SET status = 'queued', lease_owner = NULL, lease_until = NULL, run_after = $3 \
                 WHERE id = $1 AND lease_owner = $2 AND status = 'running'")
    .bind(job_id)
    .bind(owner)
    .bind(Arg::Time(Some(after)))
    .execute(db.write())
    .await?;
    Ok(n == 1)
}
