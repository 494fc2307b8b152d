//! [`UsageMeter`]: the metering service the request path and other domains
//! use. It owns the event writer's queue, the metrics policy (reloaded on
//! change), the idempotency keys and the period usage the quota check reads.
//!
//! Period usage (`used`) is read from `usage_counters`, which the writer
//! updates in the same transaction as the events: it is cached for at most
//! [`USAGE_CACHE_TTL`] per org, and each batch this instance commits is
//! applied to the cache, so within one instance a quota check sees every
//! acknowledged request; another instance's requests show within the TTL.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use chrono::Utc;
use serde::Serialize;
use tokio::sync::oneshot;

use super::idempotency::IdempotencyKeys;
use super::policy::{Metric, MetricsPolicy};
use super::writer::{self, Job, Queue, Submission};
use super::{period_of, reconcile};
use crate::auth::Environment;
use crate::store::Database;
use crate::store::sql::sql;
use crate::supervisor::Shutdown;
use crate::telemetry;

/// How long a read of the stored period usage is trusted.
pub const USAGE_CACHE_TTL: Duration = Duration::from_secs(1);
/// How often the policy file is checked for changes.
pub const POLICY_POLL: Duration = Duration::from_secs(1);
/// How often retention runs.
pub const RETENTION_EVERY: Duration = Duration::from_secs(3600);

/// The metering writer's figures, for `/ready` and `/metrics`.
#[derive(Debug, Default)]
pub struct WriterStats {
    pub batches: AtomicU64,
    pub events: AtomicU64,
    pub failed_batches: AtomicU64,
    pub failed_events: AtomicU64,
    /// Sum of commit times, in µs (with `batches`, the mean).
    pub commit_us_total: AtomicU64,
    pub largest_batch: AtomicU64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct WriterStatsSnapshot {
    pub batches: u64,
    pub events: u64,
    pub failed_batches: u64,
    pub failed_events: u64,
    pub queue_depth: u64,
    pub mean_commit_ms: f64,
    pub largest_batch: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Slot {
    org_id: String,
    environment: Environment,
    period: String,
}

#[derive(Default)]
struct UsageCache {
    entries: HashMap<Slot, (Instant, HashMap<String, i64>)>,
    /// Bumped when a batch starts committing and when it is applied: a read
    /// that saw a change of epoch (or a commit in progress) is not cached.
    epoch: u64,
    committing: bool,
}

/// Where the metrics policy comes from.
#[derive(Debug, Clone)]
pub enum PolicySource {
    /// The bundled `policies/metrics.yaml`.
    Bundled,
    /// A file, reloaded when it changes.
    File(PathBuf),
}

#[derive(Clone)]
pub struct UsageMeter {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    policy: ArcSwap<MetricsPolicy>,
    source: PolicySource,
    /// The last reload's refusal, if the file on disk is not valid.
    policy_error: Mutex<Option<String>>,
    queue: Queue,
    idempotency: IdempotencyKeys,
    cache: Mutex<UsageCache>,
    stats: WriterStats,
    /// Events per transaction at most ([`writer::MAX_BATCH`]; 1 turns group
    /// commit off, the baseline of the ingest benchmark).
    max_batch: std::sync::atomic::AtomicUsize,
}

impl UsageMeter {
    /// Loads the policy (an invalid file is an error at start).
    pub fn new(db: Database, source: PolicySource) -> anyhow::Result<UsageMeter> {
        let policy = match &source {
            PolicySource::Bundled => MetricsPolicy::bundled(),
            PolicySource::File(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("reading the metrics policy {}: {e}", path.display()))?;
                MetricsPolicy::parse(&text)
                    .map_err(|e| anyhow::anyhow!("the metrics policy {} is not valid: {e}", path.display()))?
            }
        };
        let idempotency = IdempotencyKeys::new(db.clone(), policy.retention.idempotency_hours);
        Ok(UsageMeter {
            inner: Arc::new(Inner {
                db,
                policy: ArcSwap::from_pointee(policy),
                source,
                policy_error: Mutex::default(),
                queue: writer::queue(),
                idempotency,
                cache: Mutex::default(),
                stats: WriterStats::default(),
                max_batch: writer::MAX_BATCH.into(),
            }),
        })
    }

    /// Caps the events written per transaction (1: one transaction per event).
    pub fn set_max_batch(&self, n: usize) {
        self.inner.max_batch.store(n.clamp(1, writer::MAX_BATCH), Ordering::Relaxed);
    }

    pub fn policy(&self) -> Arc<MetricsPolicy> {
        self.inner.policy.load_full()
    }

    pub fn policy_error(&self) -> Option<String> {
        self.inner.policy_error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn idempotency(&self) -> &IdempotencyKeys {
        &self.inner.idempotency
    }

    pub fn db(&self) -> &Database {
        &self.inner.db
    }

    pub fn stats(&self) -> WriterStatsSnapshot {
        let s = &self.inner.stats;
        let batches = s.batches.load(Ordering::Relaxed);
        WriterStatsSnapshot {
            batches,
            events: s.events.load(Ordering::Relaxed),
            failed_batches: s.failed_batches.load(Ordering::Relaxed),
            failed_events: s.failed_events.load(Ordering::Relaxed),
            queue_depth: (writer::QUEUE_CAPACITY - self.inner.queue.0.capacity()) as u64,
            mean_commit_ms: if batches == 0 {
                0.0
            } else {
                s.commit_us_total.load(Ordering::Relaxed) as f64 / batches as f64 / 1000.0
            },
            largest_batch: s.largest_batch.load(Ordering::Relaxed),
        }
    }

    /// Hands an event to the writer and waits until its batch committed.
    /// An error means it was not written (the caller answers 503).
    pub async fn submit(&self, submission: Submission) -> Result<(), String> {
        let (done, answer) = oneshot::channel();
        let job = Job { submission, enqueued: Instant::now(), done };
        self.inner.queue.0.send(job).await.map_err(|_| "the usage writer has stopped".to_string())?;
        answer.await.unwrap_or_else(|_| Err("the usage writer stopped before writing".into()))
    }

    /// The writer task (under the supervisor): batches, writes, answers.
    /// On shutdown it writes what is queued and returns.
    pub async fn writer_loop(self, mut shutdown: Shutdown) {
        let receiver = self.inner.queue.1.clone();
        let mut rx = receiver.lock().await;
        loop {
            let first = tokio::select! {
                job = rx.recv() => job,
                _ = shutdown.requested() => None,
            };
            let mut batch: Vec<Job> = match first {
                Some(j) => vec![j],
                None => {
                    // Shutting down: what is already queued is still written.
                    let mut rest = Vec::new();
                    while let Ok(j) = rx.try_recv() {
                        rest.push(j);
                    }
                    if rest.is_empty() {
                        return;
                    }
                    rest
                }
            };
            let max_batch = self.inner.max_batch.load(Ordering::Relaxed);
            while batch.len() < max_batch {
                match rx.try_recv() {
                    Ok(j) => batch.push(j),
                    Err(_) => break,
                }
            }
            self.write(batch).await;
            if shutdown.is_requested() && rx.is_empty() {
                return;
            }
        }
    }

    async fn write(&self, mut batch: Vec<Job>) {
        let policy = self.policy();
        {
            let mut c = self.cache();
            c.committing = true;
            c.epoch += 1;
        }
        let started = Instant::now();
        let result = writer::write_batch(&self.inner.db, &policy, &mut batch).await;
        let elapsed = started.elapsed();
        let stats = &self.inner.stats;
        {
            let mut c = self.cache();
            if let Ok(outcome) = &result {
                for (bucket, update) in &outcome.counters {
                    let slot = Slot {
                        org_id: bucket.org_id.clone(),
                        environment: bucket.environment,
                        period: bucket.bucket.clone(),
                    };
                    if let Some((_, used)) = c.entries.get_mut(&slot) {
                        let v = used.entry(bucket.metric.clone()).or_insert(0);
                        *v = update.apply(*v);
                    }
                }
            }
            c.committing = false;
            c.epoch += 1;
        }
        let n = batch.len() as u64;
        telemetry::observe("memhost_usage_commit_seconds", &[], elapsed.as_secs_f64());
        telemetry::observe_with("memhost_usage_batch_events", &[], n as f64, telemetry::SIZE_BUCKETS);
        let answer = match result {
            Ok(_) => {
                stats.batches.fetch_add(1, Ordering::Relaxed);
                stats.events.fetch_add(n, Ordering::Relaxed);
                stats.commit_us_total.fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
                stats.largest_batch.fetch_max(n, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                stats.failed_batches.fetch_add(1, Ordering::Relaxed);
                stats.failed_events.fetch_add(n, Ordering::Relaxed);
                tracing::error!(error = %e, events = n, "could not write a batch of usage events; its requests answer 503");
                Err(format!("usage could not be recorded: {e}"))
            }
        };
        for job in batch {
            telemetry::observe("memhost_usage_event_wait_seconds", &[], job.enqueued.elapsed().as_secs_f64());
            let _ = job.done.send(answer.clone());
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, UsageCache> {
        self.inner.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether an event with `request_id` was written for the org since
    /// `since` (a batch job item retried after a crash checks it, so its
    /// usage counts once).
    pub async fn has_event(
        &self,
        org_id: &str,
        environment: Environment,
        request_id: &str,
        since: chrono::DateTime<Utc>,
    ) -> sqlx::Result<bool> {
        let row = crate::store::sql::sql(
            "SELECT 1 AS found FROM usage_events WHERE org_id = $1 AND environment = $2 AND occurred_at >= $3 \
             AND request_id = $4 LIMIT 1",
        )
        .bind(org_id)
        .bind(environment.as_str())
        .bind(since)
        .bind(request_id)
        .fetch_optional(self.inner.db.read())
        .await?;
        Ok(row.is_some())
    }

    /// The org's usage in the current period, per metric of the policy.
    pub async fn used(&self, org_id: &str, environment: Environment) -> sqlx::Result<HashMap<String, u64>> {
        let slot = Slot { org_id: org_id.to_string(), environment, period: period_of(Utc::now()) };
        let epoch = {
            let c = self.cache();
            if let Some((at, used)) = c.entries.get(&slot)
                && at.elapsed() < USAGE_CACHE_TTL
            {
                return Ok(to_u64(used));
            }
            (!c.committing).then_some(c.epoch)
        };
        let used = self.read_period(&slot).await?;
        let mut c = self.cache();
        if epoch.is_some_and(|e| e == c.epoch && !c.committing) {
            if c.entries.len() > 100_000 {
                c.entries.clear();
            }
            c.entries.insert(slot, (Instant::now(), used.clone()));
        }
        Ok(to_u64(&used))
    }

    /// Stored counters of a period; a carried-over metric with no counter
    /// yet this period (no request since it began) reads the gauge.
    async fn read_period(&self, slot: &Slot) -> sqlx::Result<HashMap<String, i64>> {
        let rows =
            sql("SELECT metric, quantity FROM usage_counters WHERE org_id = $1 AND environment = $2 AND period = $3")
                .bind(&slot.org_id)
                .bind(slot.environment.as_str())
                .bind(&slot.period)
                .fetch_all(self.inner.db.read())
                .await?;
        let mut used = HashMap::new();
        for r in &rows {
            used.insert(r.get::<String>("metric")?, r.get::<i64>("quantity")?);
        }
        let policy = self.policy();
        let missing: Vec<&Metric> =
            policy.metrics.iter().filter(|m| m.carries_over() && !used.contains_key(&m.name)).collect();
        for m in missing {
            let gauge = sql(
                "SELECT value FROM usage_gauges WHERE org_id = $1 AND environment = $2 AND name = 'memories_stored'",
            )
            .bind(&slot.org_id)
            .bind(slot.environment.as_str())
            .fetch_optional(self.inner.db.read())
            .await?;
            if let Some(g) = gauge {
                used.insert(m.name.clone(), g.get::<i64>("value")?);
            }
        }
        Ok(used)
    }

    /// Forgets cached usage (after counters were rewritten by recomputation).
    pub fn forget_cached(&self) {
        let mut c = self.cache();
        c.entries.clear();
        c.epoch += 1;
    }

    /// Reloads the policy file when it changes (every [`POLICY_POLL`]). A
    /// valid change is applied at once, the current period's counters and
    /// rollups of new or changed metrics are recomputed from the events, and
    /// the change is in the audit log; an invalid file is refused (logged,
    /// shown in `/admin/metrics`) and the running policy stays.
    pub async fn policy_loop(self, mut shutdown: Shutdown) {
        let PolicySource::File(path) = self.inner.source.clone() else { return shutdown.requested().await };
        let mut seen = modified(&path);
        let mut tick = tokio::time::interval(POLICY_POLL);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.requested() => return,
            }
            let now = modified(&path);
            if now == seen {
                continue;
            }
            seen = now;
            if let Err(e) = self.reload(&path).await {
                tracing::warn!(error = %e, path = %path.display(), "metrics policy not reloaded; the previous one stays");
                *self.inner.policy_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
            }
        }
    }

    async fn reload(&self, path: &std::path::Path) -> Result<(), String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        let new = MetricsPolicy::parse(&text)?;
        *self.inner.policy_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let old = self.policy();
        if *old == new {
            return Ok(());
        }
        let changed: Vec<Metric> =
            new.metrics.iter().filter(|m| old.get(&m.name).is_none_or(|o| o != *m)).cloned().collect();
        self.inner.policy.store(Arc::new(new.clone()));
        tracing::info!(changed = changed.len(), "metrics policy reloaded");
        if !changed.is_empty() {
            let period = period_of(Utc::now());
            reconcile::recompute(&self.inner.db, &new, &period, Some(&changed), true)
                .await
                .map_err(|e| format!("recomputing the changed metrics: {e}"))?;
            self.forget_cached();
        }
        let entry = crate::audit::NewEntry {
            kind: Some(crate::audit::EntryKind::System),
            actor: crate::audit::Actor::system().0,
            action: "policy.metrics.changed".into(),
            target: Some(path.display().to_string()),
            before: serde_json::to_value(&*old).ok(),
            after: serde_json::to_value(&new).ok(),
            ..Default::default()
        };
        crate::audit::record(&self.inner.db, vec![entry]).await.map_err(|e| e.to_string())
    }

    /// Deletes raw events, audit entries and idempotency keys past their
    /// retention, every [`RETENTION_EVERY`] (first a minute after start).
    pub async fn retention_loop(self, mut shutdown: Shutdown) {
        let mut wait = Duration::from_secs(60);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.requested() => return,
            }
            wait = RETENTION_EVERY;
            match self.prune().await {
                Ok(p) if p.events + p.audit_entries + p.idempotency_keys > 0 => {
                    tracing::info!(
                        events = p.events,
                        audit = p.audit_entries,
                        keys = p.idempotency_keys,
                        "retention pruned"
                    )
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "retention could not prune; will retry"),
            }
        }
    }

    /// One retention pass (also `memhost usage prune`).
    pub async fn prune(&self) -> sqlx::Result<Pruned> {
        let r = self.policy().retention;
        let now = Utc::now();
        let events_before = now - chrono::Duration::days(r.events_days as i64);
        let events = crate::audit::calls::prune_events(&self.inner.db, events_before).await?;
        let distinct_before = period_of(events_before);
        sql("DELETE FROM usage_distinct WHERE bucket < $1")
            .bind(distinct_before)
            .execute(self.inner.db.write())
            .await?;
        let audit_entries =
            crate::audit::prune(&self.inner.db, now - chrono::Duration::days(r.audit_days as i64)).await?;
        let idempotency_keys = self.inner.idempotency.prune().await?;
        Ok(Pruned { events, audit_entries, idempotency_keys })
    }
}

/// What a retention pass deleted.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Pruned {
    pub events: u64,
    pub audit_entries: u64,
    pub idempotency_keys: u64,
}

fn to_u64(m: &HashMap<String, i64>) -> HashMap<String, u64> {
    m.iter().map(|(k, v)| (k.clone(), (*v).max(0) as u64)).collect()
}

fn modified(path: &std::path::Path) -> Option<(SystemTime, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
}
