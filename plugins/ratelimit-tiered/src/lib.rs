//! `ratelimit-tiered`: seed 000 §2.2 tiers, per plan, plus per-IP and global
//! limits.
//!
//! Config (JSON, usually generated from `policies/rate-limits.yaml`):
//! `{"tiers": {"free": {"requests_per_minute": 10, "requests_per_day": 100,
//!   "concurrent": 2}, …}, "per_ip": {"requests_per_minute": 600},
//!   "global": {"requests_per_second": 5000}}`
//!
//! An org's overrides (`{"rate_limits": {"requests_per_minute": …, …}}`)
//! replace its tier's values field by field: that is how Enterprise limits are
//! set per customer. The per-IP limit counts every request from one address,
//! whichever org sends it; a tier or an org may set its own
//! `per_ip_requests_per_minute` (0: none, for a customer whose backend sends
//! everything from one address). A plan without a tier and without overrides is an error,
//! so a missing tier is noticed rather than left unlimited.

use std::collections::BTreeMap;

use memhost_sdk::rate_limit::*;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    tiers: BTreeMap<String, Tier>,
    #[serde(default)]
    per_ip: Option<PerIp>,
    #[serde(default)]
    global: Option<Global>,
    /// How the per-minute limit is counted: `sliding-window` (default) or
    /// `token-bucket` (allows bursts of `burst`).
    #[serde(default)]
    minute_algorithm: MinuteAlgorithm,
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "kebab-case")]
enum MinuteAlgorithm {
    #[default]
    SlidingWindow,
    TokenBucket,
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(deny_unknown_fields)]
struct Tier {
    requests_per_minute: Option<u64>,
    requests_per_day: Option<u64>,
    concurrent: Option<u64>,
    /// Token bucket burst; defaults to the per-minute limit.
    burst: Option<u64>,
    /// Replaces `per_ip.requests_per_minute` for this tier or org; 0: no
    /// per-IP rule.
    per_ip_requests_per_minute: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PerIp {
    requests_per_minute: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Global {
    requests_per_second: u64,
}

#[derive(Deserialize, Default)]
struct Overrides {
    #[serde(default)]
    rate_limits: Option<Tier>,
}

const MINUTE: u64 = 60_000;
const DAY: u64 = 86_400_000;
/// A concurrency lease outlives any sane request; it expires if a host dies
/// while holding it.
const LEASE_MS: u64 = 60_000;

struct Tiered;

impl RateLimit for Tiered {
    const NAME: &'static str = env!("CARGO_PKG_NAME");
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn config_schema() -> &'static str {
        include_str!("../config.schema.json")
    }

    fn rules(config: &str, request: RequestClass) -> Result<Vec<Rule>, PluginError> {
        let config: Config = parse_config(config)?;
        let overrides: Overrides = if request.overrides.trim().is_empty() {
            Overrides::default()
        } else {
            serde_json::from_str(&request.overrides)
                .map_err(|e| PluginError::new("invalid-overrides", format!("overrides: {e}")))?
        };
        let base = config.tiers.get(&request.plan).copied();
        let tier = match (base, overrides.rate_limits) {
            (None, None) => {
                return Err(PluginError::new(
                    "unknown-plan",
                    format!("no rate-limit tier for plan `{}` and no per-org overrides", request.plan),
                ));
            }
            (base, over) => {
                let b = base.unwrap_or_default();
                let o = over.unwrap_or_default();
                Tier {
                    requests_per_minute: o.requests_per_minute.or(b.requests_per_minute),
                    requests_per_day: o.requests_per_day.or(b.requests_per_day),
                    concurrent: o.concurrent.or(b.concurrent),
                    burst: o.burst.or(b.burst),
                    per_ip_requests_per_minute: o.per_ip_requests_per_minute.or(b.per_ip_requests_per_minute),
                }
            }
        };
        let rule = |name: &str, scope, algorithm, limit, window_ms, burst| Rule {
            name: name.into(),
            scope,
            algorithm,
            limit,
            window_ms,
            burst,
            cost: 1,
        };
        let mut rules = Vec::with_capacity(5);
        if let Some(limit) = tier.requests_per_minute {
            rules.push(match config.minute_algorithm {
                MinuteAlgorithm::SlidingWindow => {
                    rule("per-minute", Scope::Org, Algorithm::SlidingWindow, limit, MINUTE, 0)
                }
                MinuteAlgorithm::TokenBucket => {
                    rule("per-minute", Scope::Org, Algorithm::TokenBucket, limit, MINUTE, tier.burst.unwrap_or(limit))
                }
            });
        }
        if let Some(limit) = tier.requests_per_day {
            rules.push(rule("per-day", Scope::Org, Algorithm::FixedWindow, limit, DAY, 0));
        }
        if let Some(limit) = tier.concurrent {
            rules.push(rule("concurrent", Scope::Org, Algorithm::Concurrency, limit, LEASE_MS, 0));
        }
        let per_ip = tier.per_ip_requests_per_minute.or(config.per_ip.map(|ip| ip.requests_per_minute));
        if let Some(limit) = per_ip.filter(|&l| l > 0) {
            rules.push(rule("per-ip", Scope::ClientIp, Algorithm::SlidingWindow, limit, MINUTE, 0));
        }
        if let Some(g) = config.global {
            rules.push(rule(
                "global",
                Scope::Global,
                Algorithm::TokenBucket,
                g.requests_per_second,
                1_000,
                g.requests_per_second,
            ));
        }
        Ok(rules)
    }
}

memhost_sdk::export_rate_limit!(Tiered);
