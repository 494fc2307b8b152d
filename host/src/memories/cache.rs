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
    Redis {
        conn: redis::aio::ConnectionManager,
        prefix: String,
        /// How long a command may take before the cache is skipped for it.
        timeout: Duration,
    },
}

/// The in-process cache: entries grouped by org and environment, so a write
/// drops its org's entries without looking at any other org's.
#[derive(Default)]
struct Local {
    versions: HashMap<String, u64>,
    /// slot ─▶ entry ─▶ (expires, value)
    entries: HashMap<String, HashMap<String, (Instant, Value)>>,
    /// Entries over all slots.
    len: usize,
}

impl Local {
    /// Makes room for one more entry: drops expired ones, then, if still
    /// full, the one soonest to expire. Only when full.
    fn make_room(&mut self, max: usize, now: Instant) {
        if self.len < max {
            return;
        }
        for slot in self.entries.values_mut() {
            slot.retain(|_, (expires, _)| *expires > now);
        }
        self.entries.retain(|_, slot| !slot.is_empty());
        self.len = self.entries.values().map(HashMap::len).sum();
        if self.len < max {
            return;
        }
        let soonest = self
            .entries
            .iter()
            .flat_map(|(slot, entries)| entries.iter().map(move |(entry, (expires, _))| (*expires, slot, entry)))
            .min()
            .map(|(_, slot, entry)| (slot.clone(), entry.clone()));
        if let Some((slot, entry)) = soonest
            && let Some(entries) = self.entries.get_mut(&slot)
            && entries.remove(&entry).is_some()
        {
            self.len -= 1;
        }
    }
}

/// Where an entry lives: its org and environment (`slot`, what a write
/// invalidates) and the request at the slot's memory version (`entry`).
pub struct CacheKey {
    slot: String,
    entry: String,
}

pub struct ResponseCache {
    backend: Backend,
    policy: CachePolicy,
}

impl ResponseCache {
    pub fn off() -> ResponseCache {
        ResponseCache { backend: Backend::Off, policy: CachePolicy::default() }
    }

    pub fn local(policy: CachePolicy) -> ResponseCache {
        ResponseCache { backend: Backend::Local(Mutex::new(Local::default())), policy }
    }

    /// Shared through Redis; `timeout`: the rate limits' Redis timeout.
    pub async fn redis(url: &str, timeout: Duration, policy: CachePolicy) -> anyhow::Result<ResponseCache> {
        let conn = crate::store::redis_connection(url, timeout).await?;
        Ok(ResponseCache { backend: Backend::Redis { conn, prefix: "memhost:cache:".into(), timeout }, policy })
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
    pub async fn key(&self, scope: &MemoryScope, kind: Kind, params: &SearchParams) -> Option<CacheKey> {
        if !self.enabled(kind) {
            return None;
        }
        let slot = slot(scope);
        let version = self.version(&slot).await?;
        let question = params.query.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase();
        let options = format!(
            "{}|{}|{}|{:?}|{:?}|{}",
            question, params.max_memories, params.relevance_threshold, params.filter, params.mode, params.rerank
        );
        let digest = Sha256::digest(options.as_bytes());
        let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
        Some(CacheKey { slot, entry: format!("{}:{version}:{hex}", kind.as_str()) })
    }

    pub async fn get(&self, key: &CacheKey) -> Option<Value> {
        match &self.backend {
            Backend::Off => None,
            Backend::Local(local) => {
                let local = local.lock().unwrap_or_else(|e| e.into_inner());
                let (expires, value) = local.entries.get(&key.slot)?.get(&key.entry)?;
                (*expires > Instant::now()).then(|| value.clone())
            }
            Backend::Redis { conn, prefix, timeout } => {
                let mut conn = conn.clone();
                let text: Option<String> = tokio::time::timeout(
                    *timeout,
                    redis::cmd("GET").arg(format!("{prefix}e:{}:{}", key.slot, key.entry)).query_async(&mut conn),
                )
                .await
                .ok()?
                .ok()?;
                text.and_then(|t| serde_json::from_str(&t).ok())
            }
        }
    }

    pub async fn put(&self, key: &CacheKey, kind: Kind, value: &Value) {
        let ttl = self.ttl(kind);
        match &self.backend {
            Backend::Off => {}
            Backend::Local(local) => {
                let mut local = local.lock().unwrap_or_else(|e| e.into_inner());
                let now = Instant::now();
                local.make_room(self.policy.max_entries.max(1), now);
                let entry = (now + Duration::from_secs(ttl), value.clone());
                if local.entries.entry(key.slot.clone()).or_default().insert(key.entry.clone(), entry).is_none() {
                    local.len += 1;
                }
            }
            Backend::Redis { conn, prefix, timeout } => {
                let mut conn = conn.clone();
                let mut cmd = redis::cmd("SET");
                cmd.arg(format!("{prefix}e:{}:{}", key.slot, key.entry)).arg(value.to_string()).arg("EX").arg(ttl);
                let set = cmd.query_async::<()>(&mut conn);
                if let Ok(Err(e)) = tokio::time::timeout(*timeout, set).await {
                    tracing::debug!(error = %e, "response cache: store failed");
                }
            }
        }
    }

    async fn version(&self, slot: &str) -> Option<u64> {
        match &self.backend {
            Backend::Off => None,
            Backend::Local(local) => {
                Some(local.lock().unwrap_or_else(|e| e.into_inner()).versions.get(slot).copied().unwrap_or(0))
            }
            Backend::Redis { conn, prefix, timeout } => {
                let mut conn = conn.clone();
                let v: Option<u64> = tokio::time::timeout(
                    *timeout,
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
        let slot = slot(scope);
        match &self.backend {
            Backend::Off => {}
            Backend::Local(local) => {
                let mut local = local.lock().unwrap_or_else(|e| e.into_inner());
                // The version keeps an answer computed before this write out
                // (it is put under the old version); dropping the org's
                // entries frees their room now rather than at their TTL.
                *local.versions.entry(slot.clone()).or_default() += 1;
                if let Some(dropped) = local.entries.remove(&slot) {
                    local.len -= dropped.len();
                }
            }
            Backend::Redis { conn, prefix, timeout } => {
                let mut conn = conn.clone();
                let mut cmd = redis::cmd("INCR");
                cmd.arg(format!("{prefix}v:{slot}"));
                let incr = cmd.query_async::<u64>(&mut conn);
                match tokio::time::timeout(*timeout * 4, incr).await {
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

/// An org and environment: what one write invalidates.
fn slot(scope: &MemoryScope) -> String {
    format!("{}:{}", scope.org_id, scope.environment.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Environment;
    use crate::memories::filter::MemoryFilter;
    use crate::memories::ranking::Mode;

    fn scope(org: &str) -> MemoryScope {
        MemoryScope { org_id: org.into(), environment: Environment::Live }
    }

    fn ask(q: &str) -> SearchParams {
        SearchParams {
            query: q.into(),
            max_memories: 5,
            relevance_threshold: 0.0,
            filter: MemoryFilter::all(),
            mode: Mode::Hybrid,
            rerank: false,
        }
    }

    #[tokio::test]
    async fn a_write_drops_its_orgs_entries_and_a_full_cache_makes_room() {
        let cache = ResponseCache::local(CachePolicy { answer_ttl_secs: 60, retrieve_ttl_secs: 0, max_entries: 3 });
        assert!(cache.key(&scope("a"), Kind::Retrieve, &ask("q")).await.is_none(), "retrieval: TTL 0, not cached");
        let (a, b) = (scope("a"), scope("b"));
        for (s, q) in [(&a, "one"), (&a, "two"), (&b, "one")] {
            let k = cache.key(s, Kind::Answer, &ask(q)).await.unwrap();
            cache.put(&k, Kind::Answer, &Value::from(q)).await;
        }
        let hit = cache.key(&a, Kind::Answer, &ask("  ONE ")).await.unwrap();
        assert_eq!(cache.get(&hit).await, Some(Value::from("one")), "normalized question");

        // Full: a fourth entry evicts one, never grows past the bound.
        let k = cache.key(&b, Kind::Answer, &ask("two")).await.unwrap();
        cache.put(&k, Kind::Answer, &Value::from("two")).await;
        let len = |c: &ResponseCache| match &c.backend {
            Backend::Local(l) => l.lock().unwrap().len,
            _ => unreachable!(),
        };
        assert_eq!(len(&cache), 3);

        // A write to org a: its entries are gone, org b's stay.
        cache.invalidate(&a).await;
        assert_eq!(cache.get(&hit).await, None, "the old key is gone");
        let again = cache.key(&a, Kind::Answer, &ask("one")).await.unwrap();
        assert_eq!(cache.get(&again).await, None, "a new version: a miss");
        assert_eq!(cache.get(&k).await, Some(Value::from("two")));
        assert!(len(&cache) <= 2);
    }
}
