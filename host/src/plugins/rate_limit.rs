//! Rate-limit plugins: which rules apply to a request class. The host
//! enforces them (`limits/`). The class carries no identity (org, key,
//! address) and the plugin gets no clock, randomness or I/O, so the same
//! class always gets the same rules and answers can be cached per activation.

use std::sync::Arc;

use serde::Serialize;
use utoipa::ToSchema;

use super::kind::PluginKind;
use super::{Active, Answer, PluginFailure, PluginService, with_fallback};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct RequestClass {
    pub plan: String,
    /// true for `mem_live_` keys, false for `mem_test_` keys.
    pub live: bool,
    /// The key's scopes, sorted.
    pub scopes: Vec<String>,
    /// The org's overrides as a JSON object (`{}` when none).
    pub overrides: String,
    pub method: String,
    /// The route template, e.g. `/v1/memories/{id}`.
    pub route: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum LimiterAlgorithm {
    SlidingWindow,
    FixedWindow,
    /// GCRA: `limit` per `window_ms`, bursts up to `burst`.
    TokenBucket,
    /// At most `limit` requests in flight; leases expire after `window_ms`.
    Concurrency,
}

/// Whose counter a rule uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum LimiterScope {
    Global,
    Org,
    Key,
    ClientIp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct LimiterRule {
    pub name: String,
    pub scope: LimiterScope,
    pub algorithm: LimiterAlgorithm,
    pub limit: u64,
    pub window_ms: u64,
    /// Token bucket only; 0 means `limit`.
    pub burst: u64,
    pub cost: u64,
}

/// The rate-limit plugins, as callers use them (`PluginService::rate_limits`).
pub struct RateLimits<'a> {
    pub(super) service: &'a PluginService,
}

impl RateLimits<'_> {
    /// The activation that decides `org_id`'s rules on `plan` for a `live`
    /// or `test` key, if any.
    pub fn active(&self, org_id: &str, plan: &str, env: &str) -> Option<Arc<Active>> {
        self.service.active_in(PluginKind::RateLimit, Some(org_id), Some(plan), env)
    }

    /// The rules for a request class. On a sandbox failure the previous
    /// version answers, where fallback is on.
    pub async fn rules(
        &self,
        active: &Active,
        class: &RequestClass,
    ) -> Result<Answer<Vec<LimiterRule>>, PluginFailure> {
        let runtime = self.service.runtime();
        let result = with_fallback!(self.service, active, |p, config| runtime
            .rules(&p.prepared, &p.limits, &p.digest, config, class)
            .await);
        self.service.recorder().rules(active, class, &result);
        result
    }
}
