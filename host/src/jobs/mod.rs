//! Batch jobs: work that should not hold a request open (extraction from
//! many dialogues, bulk creation, re-embedding an org's memories), in a
//! durable queue in the database.
//!
//! A request stores the job and its items and answers 202 at once. Workers
//! in every host claim queued jobs (`FOR UPDATE SKIP LOCKED` in PostgreSQL;
//! SQLite's single writer serialises claims) and hold them with a lease they
//! renew; a job whose worker died (`kill -9`, a lost machine) is claimed
//! again when its lease runs out. Work is exactly once per item:
//!
//! - an extraction item's plan (the extractor's answer) is stored before any
//!   of it is applied, so a retry applies the same operations;
//! - each operation's history row carries a key (job, item, operation) under
//!   a unique index, so an operation applied before a crash is recognised,
//!   never applied twice (`memories::Actor::op_key`);
//! - an item's usage event is written once (request id `{job}:{item}`,
//!   checked on a retry) before the item is marked done.
//!
//! Retries back off; an org runs at most `per_org_concurrency` jobs at once;
//! orgs with the `priority_queue` add-on (seed 000) go first; quotas are
//! checked before a job starts and before each item.

mod store;
mod worker;

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::auth::{AuthService, Principal};
use crate::billing::BillingService;
use crate::extraction::Message;
use crate::memories::{MemoryScope, MemoryService, Scopes};
use crate::metering::UsageMeter;
use crate::plugins::PluginService;
use crate::store::Database;

/// Items in one job at most.
pub const MAX_ITEMS: usize = 1000;
/// The add-on (seed 000's `priority_queue`) that puts an org's jobs first.
pub const PRIORITY_ADDON: &str = "priority_queue";

/// The `[jobs]` configuration section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobsConfig {
    /// Jobs this host runs at once (0: this host runs none; others may).
    pub workers: u32,
    /// Jobs of one org running at once, over all hosts.
    pub per_org_concurrency: u32,
    /// Jobs an org may have queued or running; past it, 429.
    pub max_pending_per_org: u32,
    /// How long a claim holds without being renewed (a dead worker's job is
    /// claimed again after it).
    pub lease_secs: u64,
    /// Attempts per item (and per job, for failures outside items) before it
    /// fails for good; the wait between them doubles from `backoff_ms`.
    pub max_attempts: u32,
    pub backoff_ms: u64,
    /// How often an idle worker looks for work, in milliseconds.
    pub poll_ms: u64,
    /// Days a finished job (and its items' results) is kept; 0: for ever.
    pub retention_days: u32,
}

impl Default for JobsConfig {
    fn default() -> Self {
        JobsConfig {
            workers: 2,
            per_org_concurrency: 2,
            max_pending_per_org: 100,
            lease_secs: 30,
            max_attempts: 5,
            backoff_ms: 1000,
            poll_ms: 250,
            retention_days: 30,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    /// Memories from dialogues, with the org's extractor.
    Extract,
    /// Memories created from texts.
    Memories,
    /// The org's memories re-embedded with the current embedder.
    Embeddings,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Extract => "extract",
            JobKind::Memories => "memories",
            JobKind::Embeddings => "embeddings",
        }
    }
    fn parse(s: &str) -> Option<JobKind> {
        match s {
            "extract" => Some(JobKind::Extract),
            "memories" => Some(JobKind::Memories),
            "embeddings" => Some(JobKind::Embeddings),
            _ => None,
        }
    }
    /// The route a job of this kind is submitted on, for its usage events.
    fn route(self) -> &'static str {
        match self {
            JobKind::Extract => "/v1/batch/extract",
            JobKind::Memories => "/v1/batch/memories",
            JobKind::Embeddings => "/v1/batch/embeddings",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Queued,
    Running,
    /// Every item ran (some may have failed: see `failed_items`).
    Completed,
    /// The job itself failed (quota, revoked key, attempts used up).
    Failed,
    Canceled,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Canceled => "canceled",
        }
    }
    fn parse(s: &str) -> JobStatus {
        match s {
            "queued" => JobStatus::Queued,
            "running" => JobStatus::Running,
            "completed" => JobStatus::Completed,
            "canceled" => JobStatus::Canceled,
            _ => JobStatus::Failed,
        }
    }
    pub fn is_final(self) -> bool {
        matches!(self, JobStatus::Completed | JobStatus::Failed | JobStatus::Canceled)
    }
}

/// One dialogue to extract from (an item of an `extract` job).
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtractItem {
    pub messages: Vec<Message>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
    pub user_id: Option<String>,
    pub agent_id: Option<String>,
    pub app_id: Option<String>,
    pub run_id: Option<String>,
}

/// One memory to create (an item of a `memories` job).
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemoryItem {
    pub text: String,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
    pub user_id: Option<String>,
    pub agent_id: Option<String>,
    pub app_id: Option<String>,
    pub run_id: Option<String>,
}

impl ExtractItem {
    pub fn scopes(&self) -> Scopes {
        scopes(&self.user_id, &self.agent_id, &self.app_id, &self.run_id)
    }
}

impl MemoryItem {
    pub fn scopes(&self) -> Scopes {
        scopes(&self.user_id, &self.agent_id, &self.app_id, &self.run_id)
    }
}

fn scopes(u: &Option<String>, a: &Option<String>, p: &Option<String>, r: &Option<String>) -> Scopes {
    Scopes { user_id: u.clone(), agent_id: a.clone(), app_id: p.clone(), run_id: r.clone() }
}

/// What a job runs with besides its items (stored as JSON).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct JobContext {
    /// Whether the submitting key may delete (an extractor's deletes are
    /// skipped if not).
    may_delete: bool,
    /// The submitting request's usage tags, carried to every item's event.
    tags: BTreeMap<String, String>,
    /// The extractor the request chose by name (see `extraction::Caller`).
    #[serde(default)]
    strategy: Option<String>,
}

/// A job as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Job {
    pub id: String,
    pub kind: JobKind,
    pub status: JobStatus,
    /// `priority` (the org's `priority_queue` add-on) or `normal`.
    pub lane: &'static str,
    pub total_items: u64,
    pub done_items: u64,
    pub failed_items: u64,
    /// Claims so far (more than one: a worker died or a failure was retried).
    pub attempts: u32,
    pub cancel_requested: bool,
    /// Why the job failed: `{code, message}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub error: Option<Value>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Each item's outcome, in order (`GET /v1/batch/{id}` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub results: Option<Vec<ItemOutcome>>,
}

/// What became of one item.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ItemOutcome {
    pub index: u64,
    /// `pending`, `done` or `failed`.
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
    /// `{code, message, retryable?}` as in the error envelope.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub error: Option<Value>,
    pub attempts: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("{message}")]
    Invalid { field: &'static str, message: String },
    #[error("job {0} not found")]
    NotFound(String),
    #[error("the org has {0} jobs queued or running; wait for some to finish")]
    TooMany(u32),
    #[error("job {id} is already {status}")]
    Finished { id: String, status: &'static str },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// What a new job is.
pub enum NewJob {
    Extract(Vec<ExtractItem>),
    Memories(Vec<MemoryItem>),
    Embeddings,
}

/// The services a worker needs; cheap to clone.
#[derive(Clone)]
pub struct JobService {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    config: JobsConfig,
    memories: MemoryService,
    plugins: PluginService,
    auth: AuthService,
    billing: BillingService,
    meter: UsageMeter,
    /// This host's worker identity, for leases.
    owner: String,
}

impl JobService {
    pub fn new(
        db: Database,
        config: JobsConfig,
        memories: MemoryService,
        plugins: PluginService,
        auth: AuthService,
        billing: BillingService,
        meter: UsageMeter,
    ) -> JobService {
        let owner = format!("host_{}", crate::auth::keys::random_base62(12));
        JobService { inner: Arc::new(Inner { db, config, memories, plugins, auth, billing, meter, owner }) }
    }

    pub fn config(&self) -> &JobsConfig {
        &self.inner.config
    }

    /// Stores a job with its items, queued. Checks the items' shape here,
    /// so a job never fails for input the request could have refused.
    pub async fn submit(
        &self,
        principal: &Principal,
        job: NewJob,
        tags: BTreeMap<String, String>,
        strategy: Option<String>,
    ) -> Result<Job, JobError> {
        if let Some(name) = &strategy {
            self.inner
                .plugins
                .extractors()
                .choose(&principal.org_id, &principal.plan, Some(name))
                .map_err(|message| JobError::Invalid { field: "strategy", message })?;
        }
        let (kind, inputs): (JobKind, Vec<String>) = match &job {
            NewJob::Extract(items) => {
                check_count("dialogues", items.len())?;
                for (i, item) in items.iter().enumerate() {
                    crate::extraction::validate(&item.messages).map_err(|e| JobError::Invalid {
                        field: "dialogues",
                        message: format!("dialogues[{i}]: {e}"),
                    })?;
                }
                (JobKind::Extract, items.iter().map(|i| json!(i).to_string()).collect())
            }
            NewJob::Memories(items) => {
                check_count("memories", items.len())?;
                (JobKind::Memories, items.iter().map(|i| json!(i).to_string()).collect())
            }
            NewJob::Embeddings => (JobKind::Embeddings, Vec::new()),
        };
        let pending = store::pending_of_org(&self.inner.db, &principal.org_id).await?;
        if pending >= self.inner.config.max_pending_per_org as u64 {
            return Err(JobError::TooMany(self.inner.config.max_pending_per_org));
        }
        let scope: MemoryScope = principal.into();
        // A re-embedding job's items are the org's memories, read page by page.
        let total = match kind {
            JobKind::Embeddings => self.inner.memories.count(&scope).await?,
            _ => inputs.len() as u64,
        };
        let priority = self.in_priority_lane(&principal.org_id).await;
        let context = JobContext { may_delete: principal.has_scope(crate::auth::Scope::Delete), tags, strategy };
        let id = format!("job_{}", uuid::Uuid::now_v7().simple());
        let row = store::NewJobRow {
            id: &id,
            org_id: &principal.org_id,
            environment: principal.environment.as_str(),
            key_id: &principal.key_id,
            kind: kind.as_str(),
            priority: i64::from(priority),
            context: json!(context).to_string(),
            total: total as i64,
        };
        store::insert(&self.inner.db, &row, &inputs).await?;
        crate::telemetry::inc("memhost_jobs_submitted_total", &[("kind", kind.as_str())], 1);
        self.get(principal, &id, false).await
    }

    async fn in_priority_lane(&self, org_id: &str) -> bool {
        match self.inner.billing.customer_pricing(org_id).await {
            Ok(c) => c.addons.iter().any(|a| a.addon_id == PRIORITY_ADDON),
            Err(_) => false,
        }
    }

    /// A job of the principal's org and environment (another's is not found).
    pub async fn get(&self, principal: &Principal, id: &str, with_results: bool) -> Result<Job, JobError> {
        let mut job = store::get(&self.inner.db, &principal.org_id, principal.environment.as_str(), id)
            .await?
            .ok_or_else(|| JobError::NotFound(id.chars().take(64).collect()))?;
        if with_results && job.kind != JobKind::Embeddings {
            job.results = Some(store::items(&self.inner.db, id).await?);
        }
        Ok(job)
    }

    /// The org's jobs, newest first.
    pub async fn list(
        &self,
        principal: &Principal,
        status: Option<&str>,
        limit: u32,
        before: Option<&str>,
    ) -> Result<Vec<Job>, JobError> {
        if let Some(s) = status
            && !["queued", "running", "completed", "failed", "canceled"].contains(&s)
        {
            return Err(JobError::Invalid {
                field: "status",
                message: format!("status `{s}`: expected queued, running, completed, failed or canceled"),
            });
        }
        Ok(store::list(&self.inner.db, &principal.org_id, principal.environment.as_str(), status, limit, before)
            .await?)
    }

    /// Cancels a job: a queued one at once; a running one stops before its
    /// next item (items done stay done).
    pub async fn cancel(&self, principal: &Principal, id: &str) -> Result<Job, JobError> {
        let job = self.get(principal, id, false).await?;
        if job.status.is_final() {
            return Err(JobError::Finished { id: job.id, status: job.status.as_str() });
        }
        store::request_cancel(&self.inner.db, &job.id).await?;
        self.get(principal, id, false).await
    }

    /// Deletes finished jobs older than `retention_days`, hourly (under the
    /// supervisor).
    pub async fn retention_loop(self, mut shutdown: crate::supervisor::Shutdown) {
        loop {
            let days = self.inner.config.retention_days;
            if days > 0 {
                let before = chrono::Utc::now() - chrono::Duration::days(i64::from(days));
                match store::prune(&self.inner.db, before).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(jobs = n, "jobs: pruned finished jobs past retention"),
                    Err(e) => tracing::warn!(error = %e, "jobs: pruning failed"),
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_secs(3600)) => {}
                _ = shutdown.requested() => return,
            }
        }
    }

    /// Counts for `/metrics` and `/ready`.
    pub async fn depth(&self) -> sqlx::Result<(u64, u64)> {
        store::depth(&self.inner.db).await
    }
}

fn check_count(field: &'static str, n: usize) -> Result<(), JobError> {
    if n == 0 || n > MAX_ITEMS {
        return Err(JobError::Invalid { field, message: format!("give 1 to {MAX_ITEMS} items (got {n})") });
    }
    Ok(())
}
