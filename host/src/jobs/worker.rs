//! The workers: claim a job, hold its lease, run its items, record each
//! outcome. See the module docs of `jobs` for the exactly-once argument.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::{Value, json};

use super::store::{self, Claimed, PendingItem};
use super::{ExtractItem, JobContext, JobKind, JobService, JobStatus, MemoryItem};
use crate::auth::Principal;
use crate::extraction::{Caller, ExtractionError, ExtractionPlan};
use crate::memories::{Actor, MemoryError, MemoryScope, is_applied_twice};
use crate::metering::writer::Submission;
use crate::metering::{EventFacts, RequestUsage, UsageEvent};
use crate::supervisor::Shutdown;

/// Memories re-embedded per step of an `embeddings` job.
const REEMBED_PAGE: u32 = 64;

/// Why an item (or a whole job) did not succeed.
struct Failure {
    /// The HTTP status the same failure answers on the request path.
    status: u16,
    code: String,
    message: String,
    /// Worth another attempt (an upstream or database failure).
    retryable: bool,
}

impl Failure {
    fn new(status: u16, code: &str, message: impl Into<String>, retryable: bool) -> Failure {
        Failure { status, code: code.to_string(), message: message.into(), retryable }
    }
    fn json(&self) -> Value {
        json!({"code": self.code, "message": self.message, "retryable": self.retryable})
    }
}

impl From<MemoryError> for Failure {
    fn from(e: MemoryError) -> Failure {
        match e {
            MemoryError::Invalid { field, message } => {
                Failure::new(400, "INVALID_REQUEST", format!("{field}: {message}"), false)
            }
            MemoryError::NotFound(id) => Failure::new(404, "MEMORY_NOT_FOUND", format!("memory {id} not found"), false),
            MemoryError::Provider(e) => Failure::new(502, "PROVIDER_ERROR", e.to_string(), true),
            MemoryError::Database(e) => Failure::new(503, "STORE_UNAVAILABLE", e.to_string(), true),
        }
    }
}

impl From<ExtractionError> for Failure {
    fn from(e: ExtractionError) -> Failure {
        let message = e.to_string();
        match e {
            ExtractionError::Invalid { .. } => Failure::new(400, "INVALID_REQUEST", message, false),
            ExtractionError::NoExtractor => Failure::new(422, "NO_EXTRACTOR", message, false),
            ExtractionError::Refused { retryable: true, spent: false, .. } => {
                Failure::new(502, "EXTRACTOR_FAILED", message, true)
            }
            ExtractionError::Refused { retryable, .. } => Failure::new(422, "EXTRACTION_REFUSED", message, retryable),
            ExtractionError::Failed(_) => Failure::new(502, "EXTRACTOR_FAILED", message, true),
            ExtractionError::Memory(m) => m.into(),
        }
    }
}

impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Failure {
        Failure::new(503, "STORE_UNAVAILABLE", e.to_string(), true)
    }
}

/// How a claimed job's run ended.
enum Ended {
    /// Finished (or handed back, or lost): nothing more to do here.
    Done,
    /// A retryable failure of the job itself (the database, metering):
    /// run again after a backoff; after `max_attempts` claims the job fails.
    Retry(Failure),
    /// A retryable failure of one item, at its `n`th attempt: run again
    /// after a backoff. Bounded per item (`run_item`), so it never fails
    /// the job however many items needed a retry.
    RetryItem(Failure, u32),
}

impl JobService {
    /// One worker (the supervisor runs `workers` of them): claims jobs while
    /// there are any, else waits `poll_ms`.
    pub async fn worker_loop(self, mut shutdown: Shutdown) {
        let poll = Duration::from_millis(self.inner.config.poll_ms.max(10));
        loop {
            let claimed = store::claim(
                &self.inner.db,
                &self.inner.owner,
                self.inner.config.lease_secs,
                self.inner.config.per_org_concurrency.max(1),
            )
            .await;
            match claimed {
                Ok(Some(job)) => {
                    let id = job.id.clone();
                    tokio::select! {
                        _ = self.run(job) => {}
                        // On shutdown the job goes back to the queue at once
                        // (its items done stay done); if even that fails, its
                        // lease lapses and another host resumes it.
                        _ = shutdown.requested() => {
                            let _ = store::release(&self.inner.db, &id, &self.inner.owner, Utc::now()).await;
                            return;
                        }
                    }
                    continue;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "jobs: claiming failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(poll) => {}
                _ = shutdown.requested() => return,
            }
        }
    }

    /// Runs a claimed job with its lease renewed beside it.
    async fn run(&self, job: Claimed) {
        let lost = Arc::new(AtomicBool::new(false));
        let renewer = {
            let (db, id, owner, lost) = (self.inner.db.clone(), job.id.clone(), self.inner.owner.clone(), lost.clone());
            let lease = self.inner.config.lease_secs.max(1);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(lease * 1000 / 3)).await;
                    match store::renew(&db, &id, &owner, lease).await {
                        Ok(true) => {}
                        Ok(false) => {
                            lost.store(true, Ordering::Relaxed);
                            return;
                        }
                        Err(e) => tracing::warn!(job = %id, error = %e, "jobs: renewing the lease failed"),
                    }
                }
            })
        };
        tracing::info!(job = %job.id, kind = job.kind.as_str(), attempt = job.attempts, "jobs: running");
        let ended = self.run_items(&job, &lost).await;
        renewer.abort();
        let (failure, attempt) = match ended {
            Ended::Done => return,
            Ended::Retry(failure) if job.attempts >= self.inner.config.max_attempts => {
                self.end(&job, JobStatus::Failed, Some(failure)).await;
                return;
            }
            Ended::Retry(failure) => (failure, job.attempts),
            Ended::RetryItem(failure, attempt) => (failure, attempt),
        };
        let after = Utc::now() + chrono::Duration::milliseconds(self.backoff(attempt).as_millis() as i64);
        tracing::warn!(job = %job.id, code = %failure.code, error = %failure.message, "jobs: will retry");
        if let Err(e) = store::release(&self.inner.db, &job.id, &self.inner.owner, after).await {
            tracing::warn!(job = %job.id, error = %e, "jobs: could not hand back; its lease will");
        }
    }

    fn backoff(&self, attempts: u32) -> Duration {
        let base = self.inner.config.backoff_ms.max(1);
        Duration::from_millis(base.saturating_mul(1 << attempts.saturating_sub(1).min(10)))
    }

    async fn end(&self, job: &Claimed, status: JobStatus, failure: Option<Failure>) {
        let error = failure.as_ref().map(Failure::json);
        match store::finish(&self.inner.db, &job.id, &self.inner.owner, status, error.as_ref()).await {
            Ok(true) => {
                crate::telemetry::inc(
                    "memhost_jobs_finished_total",
                    &[("kind", job.kind.as_str()), ("status", status.as_str())],
                    1,
                );
                tracing::info!(job = %job.id, status = status.as_str(), "jobs: finished");
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(job = %job.id, error = %e, "jobs: could not record the end; its lease will"),
        }
    }

    async fn run_items(&self, job: &Claimed, lost: &AtomicBool) -> Ended {
        let principal = match self.inner.auth.principal_of_key(&job.org_id, &job.key_id).await {
            Ok(p) => p,
            Err(e) => {
                let failure = Failure::new(401, "KEY_UNUSABLE", format!("the key that submitted the job: {e}"), false);
                self.end(job, JobStatus::Failed, Some(failure)).await;
                return Ended::Done;
            }
        };
        if principal.environment.as_str() != job.environment {
            self.end(job, JobStatus::Failed, Some(Failure::new(401, "KEY_UNUSABLE", "environment changed", false)))
                .await;
            return Ended::Done;
        }
        let context: JobContext = serde_json::from_str(&job.context).unwrap_or_default();
        // Claimed over and over without finishing: its worker dies on it.
        // (An item job counts this per item instead: `run_item`.)
        if job.kind == JobKind::Embeddings && job.attempts > self.inner.config.max_attempts.saturating_mul(2) {
            let failure = Failure::new(500, "ATTEMPTS_EXHAUSTED", "the job was claimed too often", false);
            self.end(job, JobStatus::Failed, Some(failure)).await;
            return Ended::Done;
        }
        match job.kind {
            JobKind::Embeddings => self.run_reembedding(job, &principal, &context, lost).await,
            JobKind::Extract | JobKind::Memories => {
                let items = match store::pending_items(&self.inner.db, &job.id).await {
                    Ok(items) => items,
                    Err(e) => return Ended::Retry(e.into()),
                };
                for item in items {
                    if let Some(ended) = self.before_step(job, &principal, lost).await {
                        return ended;
                    }
                    match self.run_item(job, &principal, &context, item).await {
                        Ok(()) => {}
                        Err(ended) => return ended,
                    }
                }
                self.end(job, JobStatus::Completed, None).await;
                Ended::Done
            }
        }
    }

    /// Before each step: stop if canceled or the lease is gone; end the job
    /// if the org's quota is used up.
    async fn before_step(&self, job: &Claimed, principal: &Principal, lost: &AtomicBool) -> Option<Ended> {
        if lost.load(Ordering::Relaxed) {
            return Some(Ended::Done);
        }
        match store::state(&self.inner.db, &job.id, &self.inner.owner).await {
            Ok((_, false)) => return Some(Ended::Done),
            Ok((true, true)) => {
                self.end(job, JobStatus::Canceled, None).await;
                return Some(Ended::Done);
            }
            Ok((false, true)) => {}
            Err(e) => return Some(Ended::Retry(e.into())),
        }
        if let Err(q) = self.inner.billing.check_quota(principal).await {
            let failure = Failure::new(
                402,
                "QUOTA_EXCEEDED",
                format!("the plan's `{}` quota is used up ({} of {})", q.metric, q.used, q.limit),
                false,
            );
            self.end(job, JobStatus::Failed, Some(failure)).await;
            return Some(Ended::Done);
        }
        None
    }

    /// Runs one item: its outcome is recorded (done or failed for good), or
    /// the job is handed back for a retry.
    async fn run_item(
        &self,
        job: &Claimed,
        principal: &Principal,
        context: &JobContext,
        item: PendingItem,
    ) -> Result<(), Ended> {
        let db = &self.inner.db;
        match store::start_item(db, &job.id, item.idx, &self.inner.owner).await {
            Ok(true) => {}
            Ok(false) => return Err(Ended::Done),
            Err(e) => return Err(Ended::Retry(e.into())),
        }
        let attempt = item.attempts + 1;
        let started = Instant::now();
        let usage = RequestUsage::default();
        let request_id = format!("{}:{}", job.id, item.idx);
        let outcome = if item.attempts >= self.inner.config.max_attempts {
            // Started this often and never finished: its worker died on it
            // each time. It fails alone rather than take the host down again.
            Err(Failure::new(500, "ATTEMPTS_EXHAUSTED", "the item was started too often without finishing", false))
        } else {
            match job.kind {
                JobKind::Extract => self.extract_item(job, principal, context, &item, &request_id, &usage).await,
                _ => self.create_item(principal, &item, &request_id, &usage).await,
            }
        };
        let (done, status, result, error) = match outcome {
            Ok(result) => (true, 200, Some(result), None),
            Err(f) if f.retryable && attempt < self.inner.config.max_attempts => {
                return Err(Ended::RetryItem(f, attempt));
            }
            Err(f) => (false, f.status, None, Some(f.json())),
        };
        // Usage first, then the outcome: a crash between them leaves the item
        // pending, and its retry finds the event and does not write another.
        let metered = attempt > 1
            && self
                .inner
                .meter
                .has_event(&job.org_id, principal.environment, &request_id, job.created_at)
                .await
                .map_err(|e| Ended::Retry(e.into()))?;
        if !metered {
            self.meter(job, principal, context, &request_id, status, started, &usage).await.map_err(Ended::Retry)?;
        }
        match store::finish_item(db, &job.id, item.idx, &self.inner.owner, done, result.as_ref(), error.as_ref()).await
        {
            Ok(true) => Ok(()),
            Ok(false) => Err(Ended::Done),
            Err(e) => Err(Ended::Retry(e.into())),
        }
    }

    /// Writes one usage event for work of the job (an item, a page), on
    /// the route the job was submitted on; durable when this returns.
    #[allow(clippy::too_many_arguments)]
    async fn meter(
        &self,
        job: &Claimed,
        principal: &Principal,
        context: &JobContext,
        request_id: &str,
        status: u16,
        started: Instant,
        usage: &RequestUsage,
    ) -> Result<(), Failure> {
        let facts = EventFacts {
            org_id: &job.org_id,
            environment: principal.environment,
            key_id: &principal.key_id,
            method: "POST",
            route: job.kind.route(),
            status,
            billable: status < 500,
            request_id,
            processing_us: started.elapsed().as_micros() as u64,
            tags: context.tags.clone(),
        };
        let submission =
            Submission { event: UsageEvent::new(facts, usage), ip: None, user_agent: None, completion: None };
        self.inner.meter.submit(submission).await.map_err(|e| Failure::new(503, "METERING_UNAVAILABLE", e, true))
    }

    async fn extract_item(
        &self,
        job: &Claimed,
        principal: &Principal,
        context: &JobContext,
        item: &PendingItem,
        request_id: &str,
        usage: &RequestUsage,
    ) -> Result<Value, Failure> {
        let input: ExtractItem = serde_json::from_str(&item.input)
            .map_err(|e| Failure::new(400, "INVALID_REQUEST", format!("the item is unreadable: {e}"), false))?;
        let scope: MemoryScope = principal.into();
        let caller = Caller {
            scope: &scope,
            org_id: &principal.org_id,
            plan: &principal.plan,
            may_delete: context.may_delete,
            strategy: context.strategy.as_deref(),
        };
        let scopes = input.scopes();
        // The plan of an earlier attempt, if it got that far: the same
        // operations are applied, whatever the extractor would say now.
        let plan: ExtractionPlan = match item.plan.as_deref().and_then(|p| serde_json::from_str(p).ok()) {
            Some(plan) => plan,
            None => {
                let plan = crate::extraction::plan(
                    &self.inner.memories,
                    &self.inner.plugins,
                    &caller,
                    &input.messages,
                    input.metadata.as_ref(),
                    &scopes,
                    usage,
                )
                .await?;
                store::save_plan(&self.inner.db, &job.id, item.idx, &json!(plan).to_string()).await?;
                plan
            }
        };
        let actor = Actor {
            request_id: Some(request_id.to_string()),
            key_id: Some(principal.key_id.clone()),
            source: None,
            op_key: None,
        };
        let result = crate::extraction::apply(
            &self.inner.memories,
            &caller,
            &plan,
            input.metadata,
            scopes,
            &actor,
            usage,
            Some(request_id),
        )
        .await?;
        Ok(json!(result))
    }

    async fn create_item(
        &self,
        principal: &Principal,
        item: &PendingItem,
        request_id: &str,
        usage: &RequestUsage,
    ) -> Result<Value, Failure> {
        let input: MemoryItem = serde_json::from_str(&item.input)
            .map_err(|e| Failure::new(400, "INVALID_REQUEST", format!("the item is unreadable: {e}"), false))?;
        let scope: MemoryScope = principal.into();
        let actor = Actor {
            request_id: Some(request_id.to_string()),
            key_id: Some(principal.key_id.clone()),
            source: None,
            op_key: Some(format!("{request_id}:0")),
        };
        let scopes = input.scopes();
        match self.inner.memories.create(&scope, input.text, input.metadata, scopes, &actor, usage).await {
            Ok(memory) => Ok(json!({"memory": memory})),
            Err(e) if is_applied_twice(&e) => Ok(json!({"memory": null, "note": "created by an earlier attempt"})),
            Err(e) => Err(e.into()),
        }
    }

    /// Re-embeds the org's memories page by page, from where an earlier
    /// attempt stopped; retrieval answers from the old vectors meanwhile.
    async fn run_reembedding(
        &self,
        job: &Claimed,
        principal: &Principal,
        context: &JobContext,
        lost: &AtomicBool,
    ) -> Ended {
        let scope: MemoryScope = principal.into();
        let mut cursor = job.cursor.as_deref().and_then(|c| uuid::Uuid::parse_str(c).ok());
        let mut page_no = 0u64;
        loop {
            if let Some(ended) = self.before_step(job, principal, lost).await {
                return ended;
            }
            let started = Instant::now();
            let usage = RequestUsage::default();
            let (n, last) = match self.inner.memories.reembed_page(&scope, cursor, REEMBED_PAGE, &usage).await {
                Ok(page) => page,
                Err(e) => return Ended::Retry(e.into()),
            };
            let Some(last) = last else { break };
            page_no += 1;
            // One event per page (re-embedding twice after a crash is
            // harmless, and metered as the work it is).
            let request_id = format!("{}:{}:{}", job.id, job.attempts, page_no);
            if let Err(f) = self.meter(job, principal, context, &request_id, 200, started, &usage).await {
                return Ended::Retry(f);
            }
            match store::advance(&self.inner.db, &job.id, &self.inner.owner, &last.to_string(), n as u64).await {
                Ok(true) => {}
                Ok(false) => return Ended::Done,
                Err(e) => return Ended::Retry(e.into()),
            }
            cursor = Some(last);
        }
        self.end(job, JobStatus::Completed, None).await;
        Ended::Done
    }
}
