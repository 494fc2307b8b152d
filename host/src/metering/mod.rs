//! Usage metering: one usage event per authenticated request, durable
//! before the response (`writer.rs`, group commit); period counters, daily
//! rollups and gauges updated in the same transaction as the events they
//! sum; billable metrics defined by policy (`policy.rs`); idempotency keys
//! (`idempotency.rs`); reads for the usage and metrics APIs (`query.rs`);
//! recomputation from the raw events (`reconcile.rs`); retention.
//!
//! Events are the source of truth: anything derived can be recomputed from
//! them, and `memhost usage reconcile` checks that it is.

pub mod export;
pub mod idempotency;
pub mod meter;
pub mod policy;
pub mod query;
pub mod reconcile;
pub mod writer;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use chrono::{DateTime, Datelike, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::auth::Environment;
pub use meter::UsageMeter;
use policy::{Field, Value};

/// The metric every metered request adds one to.
pub const API_CALLS: &str = "api_calls";
/// Tokens of text a request processed (stored, embedded, queried, generated).
pub const TOKENS_PROCESSED: &str = "tokens_processed";

/// The most tags one request may carry, and their sizes.
pub const MAX_TAGS: usize = 16;
pub const MAX_TAG_VALUE: usize = 128;

/// Counters a request accumulates as domain services do work for it.
#[derive(Debug, Default)]
pub struct RequestUsage {
    tokens_in: AtomicU64,
    tokens_out: AtomicU64,
    memories_read: AtomicU64,
    memories_created: AtomicU64,
    memories_updated: AtomicU64,
    memories_deleted: AtomicU64,
    embeddings: AtomicU64,
    model_calls: AtomicU64,
    cost_micros: AtomicI64,
    /// The provider model that served the request's model calls (the last one).
    model: Mutex<Option<String>>,
    /// Quantities reported by plugins and host calls, by name.
    quantities: Mutex<BTreeMap<String, u64>>,
}

/// A snapshot of [`RequestUsage`], as it appears in `meta.usage`.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct UsageSnapshot {
    /// Tokens in and out.
    pub tokens_processed: u64,
    /// Memories read, written or deleted.
    pub memories_accessed: u64,
    pub model_calls: u64,
    pub embeddings_generated: u64,
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

impl RequestUsage {
    /// Text the request brought in (stored, embedded, queried).
    pub fn add_tokens(&self, n: u64) {
        add(&self.tokens_in, n);
    }
    /// Text a model generated for the request.
    pub fn add_output_tokens(&self, n: u64) {
        add(&self.tokens_out, n);
    }
    pub fn add_read(&self, n: u64) {
        add(&self.memories_read, n);
    }
    pub fn add_created(&self, n: u64) {
        add(&self.memories_created, n);
    }
    pub fn add_updated(&self, n: u64) {
        add(&self.memories_updated, n);
    }
    pub fn add_deleted(&self, n: u64) {
        add(&self.memories_deleted, n);
    }
    pub fn add_embeddings(&self, n: u64) {
        add(&self.embeddings, n);
    }
    /// A call to a provider model (remote embedder, answerer, LLM), with
    /// its cost in micro-units of USD.
    pub fn add_model_call(&self, model: &str, cost_micros: i64) {
        add(&self.model_calls, 1);
        self.cost_micros.fetch_add(cost_micros, Ordering::Relaxed);
        *self.model.lock().unwrap_or_else(|e| e.into_inner()) = Some(model.to_string());
    }
    /// A named quantity (a plugin's or a host call's), summed per request.
    pub fn add_quantity(&self, name: &str, n: u64) {
        *self.quantities.lock().unwrap_or_else(|e| e.into_inner()).entry(name.to_string()).or_default() += n;
    }

    /// Provider cost so far, micro-USD.
    pub fn cost_micros(&self) -> i64 {
        self.cost_micros.load(Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> UsageSnapshot {
        UsageSnapshot {
            tokens_processed: get(&self.tokens_in) + get(&self.tokens_out),
            memories_accessed: get(&self.memories_read)
                + get(&self.memories_created)
                + get(&self.memories_updated)
                + get(&self.memories_deleted),
            model_calls: get(&self.model_calls),
            embeddings_generated: get(&self.embeddings),
        }
    }
}

/// Tokens in a text, estimated the usual way (about four characters a token)
/// when no model tokenizer is involved.
pub fn estimate_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

/// One authenticated request's usage (seed 000 §3.3, plus tags and reported
/// quantities). Written once, never changed.
#[derive(Debug, Clone, Serialize)]
pub struct UsageEvent {
    pub id: Uuid,
    pub org_id: String,
    pub environment: Environment,
    pub key_id: String,
    pub occurred_at: DateTime<Utc>,
    pub method: String,
    /// The route template (`/v1/memories/{id}`), never the raw path.
    pub route: String,
    pub status: u16,
    /// Counted by billable metrics: a metered route that did not fail with a
    /// server error.
    pub billable: bool,
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub memories_read: u64,
    pub memories_created: u64,
    pub memories_updated: u64,
    pub memories_deleted: u64,
    /// The org's stored memories after this request (filled by the writer).
    pub memories_stored: u64,
    pub embeddings_generated: u64,
    pub model_calls: u64,
    pub cost_micros: i64,
    pub model: Option<String>,
    pub request_id: String,
    pub processing_us: u64,
    pub tags: BTreeMap<String, String>,
    pub quantities: BTreeMap<String, u64>,
}

/// The request facts an event is made from, besides its usage.
pub struct EventFacts<'a> {
    pub org_id: &'a str,
    pub environment: Environment,
    pub key_id: &'a str,
    pub method: &'a str,
    pub route: &'a str,
    pub status: u16,
    pub billable: bool,
    pub request_id: &'a str,
    pub processing_us: u64,
    pub tags: BTreeMap<String, String>,
}

impl UsageEvent {
    pub fn new(facts: EventFacts<'_>, usage: &RequestUsage) -> UsageEvent {
        UsageEvent {
            id: Uuid::now_v7(),
            org_id: facts.org_id.to_string(),
            environment: facts.environment,
            key_id: facts.key_id.to_string(),
            occurred_at: micros(Utc::now()),
            method: facts.method.to_string(),
            route: facts.route.to_string(),
            status: facts.status,
            billable: facts.billable,
            tokens_in: get(&usage.tokens_in),
            tokens_out: get(&usage.tokens_out),
            memories_read: get(&usage.memories_read),
            memories_created: get(&usage.memories_created),
            memories_updated: get(&usage.memories_updated),
            memories_deleted: get(&usage.memories_deleted),
            memories_stored: 0,
            embeddings_generated: get(&usage.embeddings),
            model_calls: get(&usage.model_calls),
            cost_micros: usage.cost_micros.load(Ordering::Relaxed),
            model: usage.model.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            request_id: facts.request_id.to_string(),
            processing_us: facts.processing_us,
            tags: facts.tags,
            quantities: usage.quantities.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        }
    }

    /// The value of a field a metric reads (see `policy::EVENT_FIELDS`).
    pub fn value(&self, f: &Field) -> Option<Value> {
        let n = |v: u64| Some(Value::Num(i64::try_from(v).unwrap_or(i64::MAX)));
        match f {
            Field::Tag(t) => self.tags.get(t).map(|v| Value::Text(v.clone())),
            Field::Quantity(q) => self.quantities.get(q).and_then(|v| n(*v)),
            Field::Column(c) => match c.as_str() {
                "tokens_in" => n(self.tokens_in),
                "tokens_out" => n(self.tokens_out),
                "tokens" => n(self.tokens_in + self.tokens_out),
                "memories_read" => n(self.memories_read),
                "memories_created" => n(self.memories_created),
                "memories_updated" => n(self.memories_updated),
                "memories_deleted" => n(self.memories_deleted),
                "memories_written" => n(self.memories_created + self.memories_updated),
                "memories_stored" => n(self.memories_stored),
                "embeddings_generated" => n(self.embeddings_generated),
                "model_calls" => n(self.model_calls),
                "cost_micros" => Some(Value::Num(self.cost_micros)),
                "processing_us" => n(self.processing_us),
                "status" => n(self.status as u64),
                "key_id" => Some(Value::Text(self.key_id.clone())),
                "route" => Some(Value::Text(format!("{} {}", self.method, self.route))),
                "model" => self.model.clone().map(Value::Text),
                _ => None,
            },
        }
    }

    /// What this request changed in the org's stored memories.
    pub fn stored_delta(&self) -> i64 {
        self.memories_created as i64 - self.memories_deleted as i64
    }
}

/// A time truncated to microseconds: what both databases keep, so a value
/// read back equals the one written (the audit hash depends on it).
pub fn micros(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

/// The billing period an instant falls in: its UTC calendar month, `YYYY-MM`.
pub fn period_of(t: DateTime<Utc>) -> String {
    format!("{:04}-{:02}", t.year(), t.month())
}

/// The UTC day, `YYYY-MM-DD`.
pub fn day_of(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d").to_string()
}

/// The period's start: the first instant of its month.
pub fn period_start(t: DateTime<Utc>) -> DateTime<Utc> {
    chrono::NaiveDate::from_ymd_opt(t.year(), t.month(), 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|d| d.and_utc())
        .unwrap_or(t)
}

/// The period's end (the first instant of the next month).
pub fn period_end(t: DateTime<Utc>) -> DateTime<Utc> {
    let (y, m) = if t.month() == 12 { (t.year() + 1, 1) } else { (t.year(), t.month() + 1) };
    chrono::NaiveDate::from_ymd_opt(y, m, 1).and_then(|d| d.and_hms_opt(0, 0, 0)).map(|d| d.and_utc()).unwrap_or(t)
}

/// Parses `YYYY-MM` into the period's start.
pub fn parse_period(s: &str) -> Option<DateTime<Utc>> {
    let (y, m) = s.split_once('-')?;
    if y.len() != 4 || m.len() != 2 {
        return None;
    }
    chrono::NaiveDate::from_ymd_opt(y.parse().ok()?, m.parse().ok()?, 1)?.and_hms_opt(0, 0, 0).map(|d| d.and_utc())
}

/// Parses the `X-Usage-Tags` header: `team=search, feature=chat`.
pub fn parse_tags(header: &str) -> Result<BTreeMap<String, String>, String> {
    let mut tags = BTreeMap::new();
    for pair in header.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').ok_or_else(|| format!("tag `{pair}` is not name=value"))?;
        let (k, v) = (k.trim(), v.trim());
        policy::check_name(k, "tag name")?;
        if v.is_empty() || v.len() > MAX_TAG_VALUE || !v.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
            return Err(format!("tag `{k}`: the value must be 1-{MAX_TAG_VALUE} printable ASCII characters"));
        }
        if tags.insert(k.to_string(), v.to_string()).is_some() {
            return Err(format!("tag `{k}` is given twice"));
        }
    }
    if tags.len() > MAX_TAGS {
        return Err(format!("at most {MAX_TAGS} tags per request (got {})", tags.len()));
    }
    Ok(tags)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_are_utc_months() {
        let t: DateTime<Utc> = "2026-12-31T23:59:59Z".parse().unwrap();
        assert_eq!(period_of(t), "2026-12");
        assert_eq!(period_end(t).to_rfc3339(), "2027-01-01T00:00:00+00:00");
        assert_eq!(period_start(t).to_rfc3339(), "2026-12-01T00:00:00+00:00");
        let t: DateTime<Utc> = "2026-02-01T00:00:00Z".parse().unwrap();
        assert_eq!(period_of(t), "2026-02");
        assert_eq!(period_end(t).to_rfc3339(), "2026-03-01T00:00:00+00:00");
        assert_eq!(parse_period("2025-12").unwrap().to_rfc3339(), "2025-12-01T00:00:00+00:00");
        assert!(parse_period("2025-13").is_none() && parse_period("25-12").is_none());
    }

    #[test]
    fn tags_parse_or_say_what_is_wrong() {
        let t = parse_tags("team=search, feature = chat bot").unwrap();
        assert_eq!(t["team"], "search");
        assert_eq!(t["feature"], "chat bot");
        assert!(parse_tags("Team=x").unwrap_err().contains("tag name"));
        assert!(parse_tags("team").unwrap_err().contains("name=value"));
        assert!(parse_tags("a=1,a=2").unwrap_err().contains("twice"));
        let many: Vec<String> = (0..17).map(|i| format!("t{i}=v")).collect();
        assert!(parse_tags(&many.join(",")).unwrap_err().contains("at most"));
    }
}
