//! The response cache of `POST /v1/query/answer` (and, where the policy
//! turns it on, retrieval): seed 002's caching with a TTL per request type.
//!
//! An entry is keyed by org, environment, request type, the normalized
//! question and every option that changes the answer, and the org's
//! *memory version*: a counter every write to the org's memories moves on.
//! A write therefore invalidates all of the org's entries at once, without
//! finding them; they age out by their TTL. With `REDIS_URL` the versions
//! and entries live in Redis, shared by every instance; without it, in
//! process (embedded mode's one instance). PostgreSQL without Redis means
//! possibly many instances that cannot see each other's writes: the cache
//! is off there.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{MemoryScope, SearchParams};

/// The `cache:` policy (`policies/caching.yaml`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CachePolicy {
    /// Seconds an answer is reused; 0: answers are not cached.
    pub answer_ttl_secs: u64,
    /// Seconds a retrieval (`/v1/retrieve`, `/v1/query`) is reused; 0: off.
    pub retrieve_ttl_secs: u64,
    /// In-process cache only: entries kept at most (the oldest go first).
    pub max_entries: usize,
}

impl Default for CachePolicy {
    fn default() -> Self {
        CachePolicy { answer_ttl_secs: 300, retrieve_ttl_secs: 0, max_entries: 10_000 }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    cache: CachePolicy,
}

impl CachePolicy {
    pub fn bundled() -> CachePolicy {
        CachePolicy::parse(include_str!("../../../policies/caching.yaml")).unwrap_or_default()
    }

    pub fn parse(text: &str) -> Result<CachePolicy, String> {
        let file: PolicyFile = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
        Ok(file.cache)
    }
}

/// What kind of request an entry answers (its TTL comes from the policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Answer,
    Retrieve,
    /// `/v1/query`: a retrieval with a prompt-ready context (retrieval's TTL).
    Query,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Answer => "answer",
            Kind::Retrieve => "retrieve",
            Kind::Query => "query",
        }
    }
}

enum Backend {
    Off,
    Local(Mutex<Local>),
    Redis { conn: redis::aio::ConnectionManager, prefix: String },
}

#[derive(Default)]
struct Local {
    versions: HashMap<String, u64>,
    entries: HashMap<String, (Instant, Value)>,
}

pub struct ResponseCache {
    backend: Backend,
    policy: CachePolicy,
}

/// The seconds Redis may take before the cache is skipped for a request.
const REDIS_TIMEOUT: Duration = Duration::from_millis(250);

impl ResponseCache {
    pub fn off() -> ResponseCache {
        ResponseCache { backend: Backend::Off, policy: CachePolicy::default() }
    }

    pub fn local(policy: CachePolicy) -> ResponseCache {
        ResponseCache { backend: Backend::Local(Mutex::new(Local::default())), policy }
    }

    pub async fn redis(url: &str, policy: CachePolicy) -> anyhow::Result<ResponseCache> {
        let client = redis::Client::open(url).map_err(|e| anyhow::anyhow!("invalid REDIS_URL: {e}"))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(REDIS_TIMEOUT * 4)
            .set_response_timeout(REDIS_TIMEOUT)
            .set_number_of_retries(1)
            .set_max_delay(500);
        let conn = tokio::time::timeout(
            Duration::from_secs(5),
            redis::aio::ConnectionManager::new_with_config(client, config),
        )
        .await
        .map_err(|_| anyhow::anyhow!("connecting to Redis timed out"))?
        .map_err(|e| anyhow::anyhow!("connecting to Redis: {e}"))?;
        Ok(ResponseCache { backend: Backend::Redis { conn, prefix: "memhost:cache:".into() }, policy })
    }

    pub fn describe(&self) -> &'static str {
        match self.backend {
            Backend::Off => "off",
            Backend::Local(_) => "in process",
            Backend::Redis { .. } => "redis",
        }
    }

    fn ttl(&self, kind: Kind) -> u64 {
        match kind {
            Kind::Answer => self.policy.answer_ttl_secs,
            Kind::Retrieve | Kind::Query => self.policy.retrieve_ttl_secs,
        }
    }

    /// Whether requests of this kind are cached at all.
    pub fn enabled(&self, kind: Kind) -> bool {
        !matches!(self.backend, Backend::Off) && self.ttl(kind) > 0
    }

    /// The entry key for a request at the org's current memory version;
    /// `None` when the version cannot be read (the cache is skipped).
    pub async fn key(&self, scope: &MemoryScope, kind: Kind, params: &SearchParams) -> Option<String> {
        if !self.enabled(kind) {
            return None;
        }
        let version = self.version(scope).await?;
        let question = params.query.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase();
        let options = format!(
            "{}|{}|{}|{:?}|{:?}|{}",
            question, params.max_memories, params.relevance_threshold, params.filter, params.mode, params.rerank
        );
        let digest = Sha256::digest(options.as_bytes());
        let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
        Some(format!("{}:{}:{}:{version}:{hex}", kind.as_str(), scope.org_id, scope.environment.as_str()))
    }

    pub async fn get(&self, key: &str) -> Option<Value> {
        match &self.backend {
            Backend::Off => None,
            Backend::Local(local) => {
                let local = local.lock().unwrap_or_else(|e| e.into_inner());
                local.entries.get(key).filter(|(expires, _)| *expires > Instant::now()).map(|(_, v)| v.clone())
            }
            Backend::Redis { conn, prefix } => {
                let mut conn = conn.clone();
                let text: Option<String> = tokio::time::timeout(
                    REDIS_TIMEOUT,
                    redis::cmd("GET").arg(format!("{prefix}e:{key}")).query_async(&mut conn),
                )
                .await
                .ok()?
                .ok()?;
                text.and_then(|t| serde_json::from_str(&t).ok())
            }
        }
    }

    pub async fn put(&self, key: &str, kind: Kind, value: &Value) {
        let ttl = self.ttl(kind);
        match &self.backend {
            Backend::Off => {}
            Backend::Local(local) => {
                let mut local = local.lock().unwrap_or_else(|e| e.into_inner());
                let now = Instant::now();
                if local.entries.len() >= self.policy.max_entries.max(1) {
                    local.entries.retain(|_, (expires, _)| *expires > now);
                    if local.entries.len() >= self.policy.max_entries.max(1) {
                        // Still full of live entries: drop the soonest to expire.
                        if let Some(oldest) =
                            local.entries.iter().min_by_key(|(_, (expires, _))| *expires).map(|(k, _)| k.clone())
                        {
                            local.entries.remove(&oldest);
                        }
                    }
                }
                local.entries.insert(key.to_string(), (now + Duration::from_secs(ttl), value.clone()));
            }
            Backend::Redis { conn, prefix } => {
                let mut conn = conn.clone();
                let mut cmd = redis::cmd("SET");
                cmd.arg(format!("{prefix}e:{key}")).arg(value.to_string()).arg("EX").arg(ttl);
                let set = cmd.query_async::<()>(&mut conn);
                if let Ok(Err(e)) = tokio::time::timeout(REDIS_TIMEOUT, set).await {
                    tracing::debug!(error = %e, "response cache: store failed");
                }
            }
        }
    }

    async fn version(&self, scope: &MemoryScope) -> Option<u64> {
        let slot = format!("{}:{}", scope.org_id, scope.environment.as_str());
        match &self.backend {
            Backend::Off => None,
            Backend::Local(local) => {
                Some(local.lock().unwrap_or_else(|e| e.into_inner()).versions.get(&slot).copied().unwrap_or(0))
            }
            Backend::Redis { conn, prefix } => {
                let mut conn = conn.clone();
                let v: Option<u64> = tokio::time::timeout(
                    REDIS_TIMEOUT,
                    redis::cmd("GET").arg(format!("{prefix}v:{slot}")).query_async(&mut conn),
                )
                .await
                .ok()?
                .ok()?;
                Some(v.unwrap_or(0))
            }
        }
    }

    /// Moves the org's memory version on: every entry of the org is stale.
    pub async fn invalidate(&self, scope: &MemoryScope) {
        let slot = format!("{}:{}", scope.org_id, scope.environment.as_str());
        match &self.backend {
            Backend::Off => {}
            Backend::Local(local) => {
                let mut local = local.lock().unwrap_or_else(|e| e.into_inner());
                *local.versions.entry(slot.clone()).or_default() += 1;
                // Drop the org's entries now rather than at their TTL.
                let needle = format!(":{slot}:");
                local.entries.retain(|k, _| !k.contains(&needle));
            }
            Backend::Redis { conn, prefix } => {
                let mut conn = conn.clone();
                let mut cmd = redis::cmd("INCR");
                cmd.arg(format!("{prefix}v:{slot}"));
                let incr = cmd.query_async::<u64>(&mut conn);
                match tokio::time::timeout(REDIS_TIMEOUT * 4, incr).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "response cache: invalidation failed; entries expire by TTL")
                    }
                    Err(_) => tracing::warn!("response cache: invalidation timed out; entries expire by TTL"),
                }
            }
        }
    }
}
