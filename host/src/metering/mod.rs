//! Usage accounting. For now: the per-request counters reported in every
//! response's `meta.usage`; durable usage events build on these.

pub mod meter;

pub use meter::UsageMeter;

/// The metric every metered request adds one to.
pub const API_CALLS: &str = "api_calls";
/// Tokens of text a request processed (stored, embedded, queried).
pub const TOKENS_PROCESSED: &str = "tokens_processed";

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Counters a request accumulates as domain services do work for it.
#[derive(Debug, Default)]
pub struct RequestUsage {
    tokens_processed: AtomicU64,
    memories_accessed: AtomicU64,
    model_calls: AtomicU64,
}

/// A snapshot of [`RequestUsage`], as it appears in `meta.usage`.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct UsageSnapshot {
    pub tokens_processed: u64,
    pub memories_accessed: u64,
    pub model_calls: u64,
}

impl RequestUsage {
    pub fn add_tokens(&self, n: u64) {
        self.tokens_processed.fetch_add(n, Ordering::Relaxed);
    }
    pub fn add_memories(&self, n: u64) {
        self.memories_accessed.fetch_add(n, Ordering::Relaxed);
    }
    pub fn add_model_call(&self) {
        self.model_calls.fetch_add(1, Ordering::Relaxed);
    }
    pub fn snapshot(&self) -> UsageSnapshot {
        UsageSnapshot {
            tokens_processed: self.tokens_processed.load(Ordering::Relaxed),
            memories_accessed: self.memories_accessed.load(Ordering::Relaxed),
            model_calls: self.model_calls.load(Ordering::Relaxed),
        }
    }
}

/// Tokens in a text, estimated the usual way (about four characters a token)
/// when no model tokenizer is involved.
pub fn estimate_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}
