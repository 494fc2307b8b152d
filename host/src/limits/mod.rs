//! Rate limits: the active rate-limit plugin says which rules apply to a
//! request; the host enforces them atomically on a counter store (in
//! process, or Redis shared by every instance). Before authentication, a
//! per-address rule counts requests that fail it, so key guessing and floods
//! without a key are limited too. (Quotas are billing's: `billing/`.)
//!
//! The rule cache. A plugin's answer is cached under (activation id, plugin
//! digest, plan, live/test, scopes, org overrides, method, route template).
//! That is safe because the plugin sees exactly those inputs and nothing
//! else: the request class carries no org id, key id or address; rate-limit
//! plugins are granted no clock, randomness or I/O (checked at upload), so
//! the same class always gets the same rules; and any activation, rollback
//! or config change makes a new activation id, so the next request misses.

pub mod algorithm;
pub mod store;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::auth::{Environment, Principal, Scope};
use crate::plugins::kind::RateLimitFailure;
use crate::plugins::{Active, LimiterAlgorithm, LimiterScope, PluginService, RequestClass};
use crate::supervisor::Shutdown;
use algorithm::{Algorithm, Limit, Verdict};
use store::{Clock, CounterRule, LocalStore, RedisStore, SystemClock};

/// The `[limits]` configuration section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Rate limits and quotas on the request path. Off only for trusted
    /// deployments and benchmarks.
    pub enabled: bool,
    /// When Redis cannot answer: `fail-open` counts on a local limiter with
    /// this instance's share of each limit; `fail-closed` refuses with 503.
    pub on_store_failure: RateLimitFailure,
    /// How long a Redis decision may take before it counts as a failure.
    pub redis_timeout_ms: u64,
    /// Prefix of every Redis key memhost writes.
    pub redis_prefix: String,
    /// Take the client address from the first `X-Forwarded-For` entry. Only
    /// behind a proxy that sets it; otherwise clients could pick their IP.
    pub trust_forwarded_for: bool,
    /// Requests a minute from one client address that may fail
    /// authentication (no key, malformed, unknown, revoked, expired). Past
    /// it, every request from the address gets 429 before its key is looked
    /// up, until the window frees. 0: no such limit.
    pub unauthenticated_per_address_per_minute: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            enabled: true,
            on_store_failure: RateLimitFailure::FailOpen,
            redis_timeout_ms: 250,
            redis_prefix: "memhost:rl:".into(),
            trust_forwarded_for: false,
            unauthenticated_per_address_per_minute: 600,
        }
    }
}

/// A rule as the plugin gave it, before identity is filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanRule {
    pub name: String,
    pub scope: LimiterScope,
    pub algorithm: Algorithm,
    pub limit: u64,
    pub window_ms: u64,
    pub burst: u64,
    pub cost: u64,
}

impl PlanRule {
    fn from_plugin(r: crate::plugins::LimiterRule) -> PlanRule {
        PlanRule {
            name: r.name,
            scope: r.scope,
            algorithm: match r.algorithm {
                LimiterAlgorithm::SlidingWindow => Algorithm::SlidingWindow,
                LimiterAlgorithm::FixedWindow => Algorithm::FixedWindow,
                LimiterAlgorithm::TokenBucket => Algorithm::TokenBucket,
                LimiterAlgorithm::Concurrency => Algorithm::Concurrency,
            },
            limit: r.limit,
            window_ms: r.window_ms.max(1),
            burst: r.burst,
            cost: r.cost,
        }
    }

    fn limit(&self, share: u64) -> Limit {
        let scaled = |v: u64| if v == 0 { 0 } else { (v / share.max(1)).max(1) };
        Limit {
            algorithm: self.algorithm,
            limit: scaled(self.limit),
            window_us: self.window_ms.saturating_mul(1000),
            burst: scaled(self.burst),
        }
    }

    fn scope_str(&self) -> &'static str {
        match self.scope {
            LimiterScope::Global => "global",
            LimiterScope::Org => "org",
            LimiterScope::Key => "key",
            LimiterScope::ClientIp => "client-ip",
        }
    }
}

/// Who is asking, for the counters' keys.
pub struct RequestFacts<'a> {
    pub principal: &'a Principal,
    pub method: &'a str,
    pub route: &'a str,
    pub client_ip: Option<IpAddr>,
}

/// The numbers for the `RateLimit-*` headers: the most constrained rule.
#[derive(Debug, Clone, Copy)]
pub struct RateHeaders {
    pub limit: u64,
    pub remaining: u64,
    pub reset_secs: u64,
}

/// A request the limits let through. Its concurrency leases are released
/// when it is dropped: at the end of the response, and also when the client
/// hangs up and the request's future is dropped halfway (a lease left
/// behind would hold a slot until it expires).
#[derive(Debug, Default)]
pub struct Admission {
    pub headers: Option<RateHeaders>,
    /// Held only to be dropped with the admission.
    #[allow(dead_code)]
    leases: Option<Leases>,
}

struct Leases {
    inner: Arc<Inner>,
    keys: Vec<String>,
    lease_id: String,
    on_redis: bool,
}

impl std::fmt::Debug for Leases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leases").field("keys", &self.keys).field("on_redis", &self.on_redis).finish()
    }
}

impl Drop for Leases {
    fn drop(&mut self) {
        let keys = std::mem::take(&mut self.keys);
        let lease_id = std::mem::take(&mut self.lease_id);
        if !self.on_redis {
            self.inner.local.release(&keys, &lease_id);
            return;
        }
        let inner = self.inner.clone();
        // Not awaited: the response need not wait for the release.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Some(redis) = &inner.redis
                    && let Err(e) = redis.release(&keys, &lease_id).await
                {
                    // The lease expires on its own after its window.
                    tracing::debug!(error = %e, "could not release a concurrency lease");
                }
            });
        }
    }
}

/// Why a request was not let through.
#[derive(Debug)]
pub enum Refusal {
    /// 429: `rule` is full.
    /// `concurrent`: a concurrency rule (in flight, not per window).
    Exceeded { rule: String, verdict: Verdict, window_ms: u64, concurrent: bool, headers: RateHeaders },
    /// 503: limits could not be decided and the policy is fail-closed.
    Unavailable(String),
}

/// One rule with its current state, for `GET /v1/account/limits`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RuleStatus {
    pub name: String,
    /// `org`, `key`, `client-ip` or `global`.
    pub scope: &'static str,
    pub algorithm: &'static str,
    pub limit: u64,
    pub window_ms: u64,
    /// Token bucket only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
    pub remaining: u64,
    pub reset_secs: u64,
}

/// An address that failed authentication lately.
#[derive(Debug, Clone, Copy)]
struct Suspect {
    /// When it last failed (ms since the epoch).
    last_failure_ms: u64,
    /// Its requests between the check and their authentication's outcome.
    checking: u64,
}

/// A request from a suspect address that passed the per-address check and
/// is being authenticated; dropped once the outcome is recorded. While the
/// address has `n` failures left, at most `n` of its requests are let
/// through to the key lookup at once (so a flood of concurrent guesses
/// cannot all slip past the check before the first failure is counted).
pub struct AddressCheck {
    held: Option<(Arc<Inner>, IpAddr)>,
}

impl Drop for AddressCheck {
    fn drop(&mut self) {
        if let Some((inner, ip)) = self.held.take()
            && let Some(s) = inner.suspects.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&ip)
        {
            s.checking = s.checking.saturating_sub(1);
        }
    }
}

impl std::fmt::Debug for AddressCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddressCheck").field("ip", &self.held.as_ref().map(|(_, ip)| ip)).finish()
    }
}

/// Counts the operator may want to see (`/ready`, logs).
#[derive(Debug, Default)]
pub struct LimitStats {
    pub redis_failures: AtomicU64,
    pub fallback_decisions: AtomicU64,
    pub plugin_failures: AtomicU64,
    pub unauthenticated_refusals: AtomicU64,
}

/// [`LimitStats`] at one moment, with the store's state.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LimitStatsSnapshot {
    pub enabled: bool,
    /// `in-process`, `redis`, or `local-fallback` while Redis is unreachable.
    pub store: &'static str,
    pub on_store_failure: RateLimitFailure,
    /// Redis calls that failed or timed out.
    pub redis_failures: u64,
    /// Requests decided by this instance's local share (fail-open).
    pub fallback_decisions: u64,
    /// Rate-limit plugin calls that failed (its failure policy applied).
    pub plugin_failures: u64,
    /// Requests refused before authentication: their address had failed it
    /// too often.
    pub unauthenticated_refusals: u64,
}

/// Cache entries kept before the caches start over.
const CACHE_MAX: usize = 10_000;
/// After a Redis failure, decisions go straight to the fallback this long
/// before Redis is tried again (so an outage does not add a timeout to
/// every request).
const REDIS_RETRY_AFTER_MS: u64 = 1_000;
/// How often an instance announces itself in Redis, and how long it counts.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);
const HEARTBEAT_TTL: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct LimitService {
    inner: Arc<Inner>,
}

struct Inner {
    config: LimitsConfig,
    plugin_failure: RateLimitFailure,
    plugins: PluginService,
    local: LocalStore,
    redis: Option<RedisStore>,
    redis_down_until_ms: AtomicU64,
    /// Live instances sharing Redis, as last seen (for the fallback share).
    instances: AtomicU64,
    rules: Mutex<HashMap<String, Arc<Vec<PlanRule>>>>,
    /// Addresses that failed authentication lately, and when: only these
    /// are checked against the shared per-address counter before
    /// authentication, so clean traffic costs no extra store round trip.
    suspects: Mutex<HashMap<IpAddr, Suspect>>,
    stats: LimitStats,
    instance_id: String,
}

impl LimitService {
    /// With `redis_url`, counters live in Redis; it must answer at start.
    pub async fn start(
        config: LimitsConfig,
        plugin_failure: RateLimitFailure,
        redis_url: Option<&str>,
        plugins: PluginService,
    ) -> anyhow::Result<LimitService> {
        let redis = match redis_url {
            Some(url) if config.enabled => Some(
                RedisStore::connect(url, &config.redis_prefix, Duration::from_millis(config.redis_timeout_ms)).await?,
            ),
            _ => None,
        };
        Ok(LimitService::with_parts(config, plugin_failure, redis, plugins, Box::new(SystemClock)))
    }

    fn with_parts(
        config: LimitsConfig,
        plugin_failure: RateLimitFailure,
        redis: Option<RedisStore>,
        plugins: PluginService,
        clock: Box<dyn Clock>,
    ) -> LimitService {
        LimitService {
            inner: Arc::new(Inner {
                config,
                plugin_failure,
                plugins,
                local: LocalStore::new(clock),
                redis,
                redis_down_until_ms: AtomicU64::new(0),
                instances: AtomicU64::new(1),
                rules: Mutex::default(),
                suspects: Mutex::default(),
                stats: LimitStats::default(),
                instance_id: format!("inst_{}", uuid::Uuid::now_v7().simple()),
            }),
        }
    }

    pub fn enabled(&self) -> bool {
        self.inner.config.enabled
    }

    pub fn trust_forwarded_for(&self) -> bool {
        self.inner.config.trust_forwarded_for
    }

    /// Whether counters live in Redis, shared with other instances (so
    /// [`Self::heartbeat_loop`] should run).
    pub fn shares_counters(&self) -> bool {
        self.inner.redis.is_some()
    }

    /// With Redis: announces this instance every few seconds and learns how
    /// many share the counters (for the fail-open share). Runs under the
    /// supervisor until shutdown; returns at once without Redis.
    pub async fn heartbeat_loop(self, mut shutdown: Shutdown) {
        let Some(redis) = &self.inner.redis else { return };
        let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.requested() => return,
            }
            if let Ok(n) = redis.heartbeat(&self.inner.instance_id, HEARTBEAT_TTL).await {
                self.inner.instances.store(n, Ordering::Relaxed);
            }
        }
    }

    /// The rule that counts failed authentication per client address.
    fn unauthenticated_rule(&self, ip: IpAddr, share: u64) -> Option<CounterRule> {
        let per_minute = self.inner.config.unauthenticated_per_address_per_minute;
        if per_minute == 0 || !self.enabled() {
            return None;
        }
        let rule = PlanRule {
            name: UNAUTHENTICATED_RULE.into(),
            scope: LimiterScope::ClientIp,
            algorithm: Algorithm::SlidingWindow,
            limit: per_minute,
            window_ms: 60_000,
            burst: 0,
            cost: 1,
        };
        Some(CounterRule { key: format!("ip:{ip}:{UNAUTHENTICATED_RULE}"), limit: rule.limit(share), cost: 1 })
    }

    /// Before authentication: refuses (429) an address that has failed
    /// authentication more often than the per-address rule allows. Only
    /// addresses this instance saw fail lately are checked on the store.
    /// Hold the returned check until the authentication's outcome is known.
    pub async fn check_address(&self, ip: Option<IpAddr>) -> Result<AddressCheck, Refusal> {
        let pass = AddressCheck { held: None };
        let Some(ip) = ip else { return Ok(pass) };
        let seen = self.inner.suspects.lock().unwrap_or_else(|e| e.into_inner()).get(&ip).copied();
        if seen.is_none_or(|s| now_ms().saturating_sub(s.last_failure_ms) > SUSPECT_FOR_MS) {
            return Ok(pass);
        }
        if self.unauthenticated_rule(ip, 1).is_none() {
            return Ok(pass);
        }
        // An empty lease only reads: would one more failure still fit?
        let (verdicts, _) =
            self.decide_counters(&|share| self.unauthenticated_rule(ip, share).into_iter().collect(), "").await?;
        let Some(v) = verdicts.first().copied() else { return Ok(pass) };
        let refuse = |verdict: Verdict| {
            self.inner.stats.unauthenticated_refusals.fetch_add(1, Ordering::Relaxed);
            let headers =
                RateHeaders { limit: verdict.limit, remaining: 0, reset_secs: verdict.reset_us.div_ceil(1_000_000) };
            Refusal::Exceeded {
                rule: UNAUTHENTICATED_RULE.into(),
                verdict,
                window_ms: 60_000,
                concurrent: false,
                headers,
            }
        };
        if !v.allowed {
            return Err(refuse(v));
        }
        // Failures left now (the peek counted this request as one).
        let left = v.remaining + 1;
        let mut suspects = self.inner.suspects.lock().unwrap_or_else(|e| e.into_inner());
        let Some(s) = suspects.get_mut(&ip) else { return Ok(pass) };
        if s.checking >= left {
            // As many of its requests as it has failures left are already
            // being authenticated: a slot frees within milliseconds.
            drop(suspects);
            return Err(refuse(Verdict { allowed: false, remaining: 0, retry_after_us: 1_000_000, ..v }));
        }
        s.checking += 1;
        Ok(AddressCheck { held: Some((self.inner.clone(), ip)) })
    }

    /// Counts a request from `ip` that failed authentication.
    pub async fn record_auth_failure(&self, ip: Option<IpAddr>) {
        let Some(ip) = ip else { return };
        if self.unauthenticated_rule(ip, 1).is_none() {
            return;
        }
        {
            let mut suspects = self.inner.suspects.lock().unwrap_or_else(|e| e.into_inner());
            let now = now_ms();
            if suspects.len() >= CACHE_MAX {
                suspects.retain(|_, s| s.checking > 0 || now.saturating_sub(s.last_failure_ms) <= SUSPECT_FOR_MS);
            }
            suspects.entry(ip).or_insert(Suspect { last_failure_ms: now, checking: 0 }).last_failure_ms = now;
        }
        let lease = "f";
        if let Err(e) =
            self.decide_counters(&|share| self.unauthenticated_rule(ip, share).into_iter().collect(), lease).await
        {
            tracing::debug!(?e, "could not count a failed authentication");
        }
    }

    /// Rate limits for one request: `Ok` lets it through (with headers).
    pub async fn admit(&self, facts: &RequestFacts<'_>) -> Result<Admission, Refusal> {
        if !self.enabled() {
            return Ok(Admission::default());
        }
        let Some(rules) = self.rules_for(facts).await? else {
            return Ok(Admission::default());
        };
        if rules.is_empty() {
            return Ok(Admission::default());
        }
        let lease_id = uuid::Uuid::now_v7().simple().to_string();
        let (verdicts, counters, on_redis) = self.decide(facts, &rules, &lease_id).await?;
        let headers = headers_for(&rules, &verdicts);
        if let Some((i, v)) =
            verdicts.iter().enumerate().filter(|(_, v)| !v.allowed).max_by_key(|(_, v)| v.retry_after_us)
        {
            let concurrent = rules[i].algorithm == Algorithm::Concurrency;
            let mut verdict = *v;
            if concurrent {
                // A slot frees when any request ends, usually long before
                // the oldest lease would expire.
                verdict.retry_after_us = verdict.retry_after_us.clamp(1, 1_000_000);
            }
            return Err(Refusal::Exceeded {
                rule: rules[i].name.clone(),
                verdict,
                window_ms: rules[i].window_ms,
                concurrent,
                headers,
            });
        }
        let keys: Vec<String> = rules
            .iter()
            .zip(counters)
            .filter(|(r, _)| r.algorithm == Algorithm::Concurrency)
            .map(|(_, c)| c.key)
            .collect();
        let leases = (!keys.is_empty()).then(|| Leases { inner: self.inner.clone(), keys, lease_id, on_redis });
        Ok(Admission { headers: Some(headers), leases })
    }

    /// Decides a request's rules on Redis when configured and reachable,
    /// else in process.
    async fn decide(
        &self,
        facts: &RequestFacts<'_>,
        rules: &[PlanRule],
        lease: &str,
    ) -> Result<(Vec<Verdict>, Vec<CounterRule>, bool), Refusal> {
        let counters = |share: u64| -> Vec<CounterRule> {
            rules
                .iter()
                .map(|r| CounterRule { key: counter_key(r, facts), limit: r.limit(share), cost: r.cost })
                .collect()
        };
        let (verdicts, on_redis) = self.decide_counters(&counters, lease).await?;
        Ok((verdicts, counters(1), on_redis))
    }

    /// Decides counter rules (built for a share of each limit: 1 normally,
    /// this instance's share in the fail-open fallback) atomically. Returns
    /// the verdicts and whether Redis decided them.
    async fn decide_counters(
        &self,
        counters: &(dyn Fn(u64) -> Vec<CounterRule> + Sync),
        lease: &str,
    ) -> Result<(Vec<Verdict>, bool), Refusal> {
        let Some(redis) = &self.inner.redis else {
            return Ok((self.inner.local.decide(&counters(1), lease), false));
        };
        let now_ms = now_ms();
        if self.inner.redis_down_until_ms.load(Ordering::Relaxed) <= now_ms {
            let c = counters(1);
            let timeout = Duration::from_millis(self.inner.config.redis_timeout_ms);
            let result = match tokio::time::timeout(timeout, redis.decide(&c, lease)).await {
                Ok(r) => r,
                Err(_) => Err(store::StoreError("timed out".into())),
            };
            match result {
                Ok(v) => {
                    if self.inner.redis_down_until_ms.swap(0, Ordering::Relaxed) != 0 {
                        tracing::warn!("Redis rate-limit store answers again; counters are shared again");
                    }
                    return Ok((v, true));
                }
                Err(e) => {
                    self.inner.stats.redis_failures.fetch_add(1, Ordering::Relaxed);
                    let was_up = self.inner.redis_down_until_ms.swap(now_ms + REDIS_RETRY_AFTER_MS, Ordering::Relaxed)
                        <= now_ms.saturating_sub(REDIS_RETRY_AFTER_MS);
                    if was_up {
                        tracing::warn!(error = %e, policy = ?self.inner.config.on_store_failure,
                            "Redis rate-limit store failed; using the failure policy until it answers");
                    }
                }
            }
        }
        match self.inner.config.on_store_failure {
            RateLimitFailure::FailClosed => Err(Refusal::Unavailable("the rate-limit store is unreachable".into())),
            RateLimitFailure::FailOpen => {
                self.inner.stats.fallback_decisions.fetch_add(1, Ordering::Relaxed);
                let share = self.inner.instances.load(Ordering::Relaxed).max(1);
                Ok((self.inner.local.decide(&counters(share), lease), false))
            }
        }
    }

    /// The rules for a request class, from the cache or the plugin. `None`:
    /// no rate-limit plugin is active (limits are off for this org).
    async fn rules_for(&self, facts: &RequestFacts<'_>) -> Result<Option<Arc<Vec<PlanRule>>>, Refusal> {
        let p = facts.principal;
        let plugins = self.inner.plugins.rate_limits();
        let live = p.environment == Environment::Live;
        let Some(active) = plugins.active(&p.org_id, &p.plan, if live { "live" } else { "test" }) else {
            return Ok(None);
        };
        let scopes = scope_list(p);
        let cache_key = format!(
            "{}|{}|{}|{}|{}|{}|{}|{}",
            active.activation.id,
            active.plugin.digest,
            p.plan,
            live,
            scopes.join(","),
            p.overrides,
            facts.method,
            facts.route
        );
        if let Some(hit) = self.inner.rules.lock().unwrap_or_else(|e| e.into_inner()).get(&cache_key) {
            return Ok(Some(hit.clone()));
        }
        let class = RequestClass {
            plan: p.plan.clone(),
            live,
            scopes,
            overrides: p.overrides.to_string(),
            method: facts.method.to_string(),
            route: facts.route.to_string(),
        };
        match plugins.rules(&active, &class).await {
            Ok(answer) => {
                let rules = Arc::new(answer.value.into_iter().map(PlanRule::from_plugin).collect::<Vec<_>>());
                // The previous version's answer stands in only while the
                // active one fails: not cached under the active one's name.
                if !answer.fallback {
                    let mut cache = self.inner.rules.lock().unwrap_or_else(|e| e.into_inner());
                    if cache.len() >= CACHE_MAX {
                        cache.clear();
                    }
                    cache.insert(cache_key, rules.clone());
                }
                Ok(Some(rules))
            }
            Err(failure) => self.plugin_failed(&active, &failure.to_string()).map(|()| None),
        }
    }

    /// No rules could be had (the plugin and any fallback failed): the
    /// configured failure policy decides.
    fn plugin_failed(&self, active: &Active, reason: &str) -> Result<(), Refusal> {
        self.inner.stats.plugin_failures.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(plugin = %active.plugin.digest, reason, policy = ?self.inner.plugin_failure,
            "rate-limit plugin failed");
        match self.inner.plugin_failure {
            RateLimitFailure::FailOpen => Ok(()),
            RateLimitFailure::FailClosed => {
                Err(Refusal::Unavailable(format!("the rate-limit policy could not be evaluated: {reason}")))
            }
        }
    }

    /// Where decisions are made now: `in-process`, `redis`, or
    /// `local-fallback` while Redis is unreachable.
    pub fn store_state(&self) -> &'static str {
        match &self.inner.redis {
            None => "in-process",
            Some(_) if self.inner.redis_down_until_ms.load(Ordering::Relaxed) > now_ms() => "local-fallback",
            Some(_) => "redis",
        }
    }

    /// The counts since start, for `/ready`.
    pub fn stats(&self) -> LimitStatsSnapshot {
        let s = &self.inner.stats;
        LimitStatsSnapshot {
            enabled: self.enabled(),
            store: self.store_state(),
            on_store_failure: self.inner.config.on_store_failure,
            redis_failures: s.redis_failures.load(Ordering::Relaxed),
            fallback_decisions: s.fallback_decisions.load(Ordering::Relaxed),
            plugin_failures: s.plugin_failures.load(Ordering::Relaxed),
            unauthenticated_refusals: s.unauthenticated_refusals.load(Ordering::Relaxed),
        }
    }

    /// The rules that apply to a request, with what is left of each now.
    pub async fn rule_status(&self, facts: &RequestFacts<'_>) -> Vec<RuleStatus> {
        if !self.enabled() {
            return Vec::new();
        }
        let Ok(Some(rules)) = self.rules_for(facts).await else { return Vec::new() };
        let verdicts = self.decide_peek(facts, &rules).await.unwrap_or_default();
        rules
            .iter()
            .zip(verdicts.iter().map(Some).chain(std::iter::repeat(None)))
            .map(|(r, v)| RuleStatus {
                name: r.name.clone(),
                scope: r.scope_str(),
                algorithm: r.algorithm.as_str(),
                limit: r.limit,
                window_ms: r.window_ms,
                burst: (r.algorithm == Algorithm::TokenBucket).then_some(if r.burst == 0 { r.limit } else { r.burst }),
                remaining: v.map_or(r.limit, |v| v.remaining),
                reset_secs: v.map_or(0, |v| v.reset_us.div_ceil(1_000_000)),
            })
            .collect()
    }

    async fn decide_peek(&self, facts: &RequestFacts<'_>, rules: &[PlanRule]) -> Option<Vec<Verdict>> {
        // A decision with an empty lease id only reads; cost 0 makes
        // `remaining` what is left now.
        let zero: Vec<PlanRule> = rules.iter().map(|r| PlanRule { cost: 0, ..r.clone() }).collect();
        self.decide(facts, &zero, "").await.ok().map(|(v, _, _)| v)
    }
}

/// The name of the per-address rule on failed authentication.
pub const UNAUTHENTICATED_RULE: &str = "unauthenticated-per-address";
/// How long an address that failed authentication is checked before
/// authentication (the per-address rule's window).
const SUSPECT_FOR_MS: u64 = 60_000;

fn scope_list(p: &Principal) -> Vec<String> {
    let mut scopes: Vec<String> = p.scopes.iter().map(|s| Scope::as_str(*s).to_string()).collect();
    scopes.sort();
    scopes
}

/// The counter a rule uses: its scope's identity plus the rule name. Live
/// and test traffic of an org count separately, like their data.
fn counter_key(rule: &PlanRule, facts: &RequestFacts<'_>) -> String {
    let p = facts.principal;
    match rule.scope {
        LimiterScope::Global => format!("g:{}", rule.name),
        LimiterScope::Org => format!("o:{}:{}:{}", p.org_id, p.environment.as_str(), rule.name),
        LimiterScope::Key => format!("k:{}:{}", p.key_id, rule.name),
        LimiterScope::ClientIp => match facts.client_ip {
            Some(ip) => format!("ip:{ip}:{}", rule.name),
            None => format!("ip:unknown:{}", rule.name),
        },
    }
}

/// The most constrained rule: fewest units left, then the longest reset.
/// `RateLimit-*` describe the tightest request-rate rule. Concurrency rules
/// are left out: they are not a quota that resets, and a request in flight
/// would otherwise show its own lease as the limit.
fn headers_for(rules: &[PlanRule], verdicts: &[Verdict]) -> RateHeaders {
    let rate = |(r, _): &(&PlanRule, &Verdict)| r.algorithm != Algorithm::Concurrency;
    let v = rules
        .iter()
        .zip(verdicts)
        .filter(rate)
        .map(|(_, v)| v)
        .min_by(|a, b| a.remaining.cmp(&b.remaining).then(b.reset_us.cmp(&a.reset_us)));
    match v {
        Some(v) => RateHeaders { limit: v.limit, remaining: v.remaining, reset_secs: v.reset_us.div_ceil(1_000_000) },
        None => RateHeaders { limit: 0, remaining: 0, reset_secs: 0 },
    }
}

fn now_ms() -> u64 {
    SystemClock.now_us() / 1000
}

impl Refusal {
    /// The error envelope's details.
    pub fn details(&self) -> Value {
        match self {
            Refusal::Exceeded { rule, verdict, window_ms, concurrent, .. } => json!({
                "rule": rule,
                "limit": verdict.limit,
                "window": if *concurrent { "concurrent".to_string() } else { format_window(*window_ms) },
                "window_ms": if *concurrent { None } else { Some(window_ms) },
                "retry_after": verdict.retry_after_secs(),
            }),
            Refusal::Unavailable(reason) => json!({ "reason": reason }),
        }
    }
}

/// `60000` ─▶ `1m`, `86400000` ─▶ `1d`, else seconds or milliseconds.
pub fn format_window(ms: u64) -> String {
    const UNITS: [(u64, &str); 4] = [(86_400_000, "d"), (3_600_000, "h"), (60_000, "m"), (1_000, "s")];
    for (size, unit) in UNITS {
        if ms >= size && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_read_as_people_write_them() {
        assert_eq!(format_window(60_000), "1m");
        assert_eq!(format_window(86_400_000), "1d");
        assert_eq!(format_window(1_000), "1s");
        assert_eq!(format_window(1_500), "1500ms");
    }

    #[test]
    fn the_fallback_share_never_reaches_zero() {
        let r = PlanRule {
            name: "m".into(),
            scope: LimiterScope::Org,
            algorithm: Algorithm::SlidingWindow,
            limit: 10,
            window_ms: 60_000,
            burst: 0,
            cost: 1,
        };
        assert_eq!(r.limit(3).limit, 3);
        assert_eq!(r.limit(30).limit, 1);
        assert_eq!(r.limit(1).limit, 10);
    }

    #[test]
    fn headers_show_the_tightest_rule() {
        let v = |remaining, reset_us| Verdict { allowed: true, limit: 10, remaining, reset_us, retry_after_us: 0 };
        let rule = |algorithm| PlanRule {
            name: "r".into(),
            scope: LimiterScope::Org,
            algorithm,
            limit: 10,
            window_ms: 60_000,
            burst: 0,
            cost: 1,
        };
        let rules = [
            rule(Algorithm::SlidingWindow),
            rule(Algorithm::FixedWindow),
            rule(Algorithm::TokenBucket),
            rule(Algorithm::Concurrency),
        ];
        let h = headers_for(&rules, &[v(5, 1_000_000), v(2, 500_000), v(2, 30_000_000), v(0, 60_000_000)]);
        assert_eq!((h.remaining, h.reset_secs), (2, 30), "the concurrency rule is not a rate");
    }
}
