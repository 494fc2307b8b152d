//! Counter stores: where rate-limit state lives. In process when embedded;
//! Redis in production, so every instance counts against the same numbers.
//! Either way all of a request's rules are decided in one atomic step.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::algorithm::{self, Algorithm, Limit, State, Verdict};

/// One rule with the counter it uses.
#[derive(Debug, Clone)]
pub struct CounterRule {
    /// The counter's key, identity included (`org:…`, `key:…`, `ip:…`).
    pub key: String,
    pub limit: Limit,
    pub cost: u64,
}

/// The store could not answer (Redis down or slow).
#[derive(Debug, thiserror::Error)]
#[error("counter store unavailable: {0}")]
pub struct StoreError(pub String);

/// Microseconds since the Unix epoch; injected so tests control time.
pub trait Clock: Send + Sync {
    fn now_us(&self) -> u64;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now_us(&self) -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
    }
}

/// How many counter states the in-process store keeps before it sweeps
/// expired ones.
const SWEEP_AT: usize = 50_000;

/// Counters in this process: a map under one mutex. A decision holds the
/// lock for a few hundred nanoseconds; nothing awaits under it.
pub struct LocalStore {
    clock: Box<dyn Clock>,
    counters: Mutex<HashMap<String, (Limit, State)>>,
    sweep_after: AtomicU64,
}

impl LocalStore {
    pub fn new(clock: Box<dyn Clock>) -> LocalStore {
        LocalStore { clock, counters: Mutex::new(HashMap::new()), sweep_after: AtomicU64::new(SWEEP_AT as u64) }
    }

    /// Checks every rule; takes the units only if all allow the request.
    /// An empty `lease` only reads.
    pub fn decide(&self, rules: &[CounterRule], lease: &str) -> Vec<Verdict> {
        let now = self.clock.now_us();
        let mut counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        let empty = State::Empty;
        let verdicts: Vec<Verdict> = rules
            .iter()
            .map(|r| {
                let state = counters.get(&r.key).filter(|(l, _)| *l == r.limit).map_or(&empty, |(_, s)| s);
                algorithm::check(state, &r.limit, r.cost, now)
            })
            .collect();
        if !lease.is_empty() && verdicts.iter().all(|v| v.allowed) {
            for r in rules {
                let entry = counters.entry(r.key.clone()).or_insert((r.limit, State::Empty));
                if entry.0 != r.limit {
                    // The rule changed (a tier edit): start its counter afresh.
                    *entry = (r.limit, State::Empty);
                }
                algorithm::commit(&mut entry.1, &r.limit, r.cost, now, lease);
            }
        }
        if counters.len() as u64 > self.sweep_after.load(Ordering::Relaxed) {
            counters.retain(|_, (limit, state)| state.expires_at(limit) > now);
            self.sweep_after.store((counters.len() + SWEEP_AT) as u64, Ordering::Relaxed);
        }
        verdicts
    }

    pub fn release(&self, keys: &[String], lease: &str) {
        let mut counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        for key in keys {
            if let Some((_, state)) = counters.get_mut(key) {
                algorithm::release(state, lease);
            }
        }
    }
}

/// Counters in Redis, shared by every instance. One `EVALSHA` per decision.
pub struct RedisStore {
    conn: redis::aio::ConnectionManager,
    script: redis::Script,
    prefix: String,
}

impl RedisStore {
    /// Connects (or fails fast); later outages are retried by the
    /// connection manager on its own.
    pub async fn connect(url: &str, prefix: &str, timeout: Duration) -> anyhow::Result<RedisStore> {
        let conn = crate::store::redis_connection(url, timeout).await?;
        Ok(RedisStore { conn, script: redis::Script::new(include_str!("redis.lua")), prefix: prefix.to_string() })
    }

    pub async fn decide(&self, rules: &[CounterRule], lease: &str) -> Result<Vec<Verdict>, StoreError> {
        let mut invocation = self.script.prepare_invoke();
        invocation.arg(lease);
        for r in rules {
            invocation.key(format!("{}{}", self.prefix, r.key));
            let code = match r.limit.algorithm {
                Algorithm::FixedWindow => 1,
                Algorithm::SlidingWindow => 2,
                Algorithm::TokenBucket => 3,
                Algorithm::Concurrency => 4,
            };
            invocation.arg(code).arg(r.limit.limit).arg(r.limit.window_us).arg(r.limit.burst).arg(r.cost);
        }
        let mut conn = self.conn.clone();
        let rows: Vec<(u8, u64, u64, i64, i64)> =
            invocation.invoke_async(&mut conn).await.map_err(|e| StoreError(e.to_string()))?;
        if rows.len() != rules.len() {
            return Err(StoreError(format!("script answered {} rules of {}", rows.len(), rules.len())));
        }
        Ok(rows
            .into_iter()
            .map(|(ok, limit, remaining, reset, retry)| Verdict {
                allowed: ok == 1,
                limit,
                remaining,
                reset_us: reset.max(0) as u64,
                retry_after_us: retry.max(0) as u64,
            })
            .collect())
    }

    pub async fn release(&self, keys: &[String], lease: &str) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.cmd("ZREM").arg(format!("{}{key}", self.prefix)).arg(lease).ignore();
        }
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn).await.map_err(|e| StoreError(e.to_string()))
    }

    /// Registers this instance and returns how many are alive: the local
    /// fallback uses it to take only this instance's share of a limit.
    pub async fn heartbeat(&self, instance: &str, ttl: Duration) -> Result<u64, StoreError> {
        let key = format!("{}instances", self.prefix);
        let now_ms = SystemClock.now_us() / 1000;
        let mut conn = self.conn.clone();
        let (_, _, alive): (i64, i64, u64) = redis::pipe()
            .atomic()
            .cmd("ZADD")
            .arg(&key)
            .arg(now_ms)
            .arg(instance)
            .cmd("ZREMRANGEBYSCORE")
            .arg(&key)
            .arg("-inf")
            .arg(now_ms.saturating_sub(ttl.as_millis() as u64))
            .cmd("ZCARD")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .map_err(|e| StoreError(e.to_string()))?;
        Ok(alive.max(1))
    }
}
