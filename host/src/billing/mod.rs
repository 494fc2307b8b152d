//! Billing: plans and their quotas, and invoices (`invoices.rs`: preview,
//! period close, replay) priced by the active pricing plugin from the facts
//! the host gathers (`context.rs`), shown as JSON, CSV or HTML (`render.rs`).
//!
//! A plan's limits per metric come from the active pricing plugin; the
//! quota check compares them with the period's metered usage before any
//! work starts, so a plan without overage is refused (402) rather than
//! billed for what it does not include.

pub mod context;
pub mod customers;
pub mod invoices;
pub mod payments;
pub mod plans;
pub mod render;
pub mod simulate;

pub use context::{BilledOrg, BillingPeriod, LateUsage};
pub use invoices::{BillingError, FinalizeReport, InvoiceFilter, InvoiceVerification, InvoiceView};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::{Value, json};

use crate::auth::Principal;
use crate::metering::API_CALLS;
use crate::metering::{UsageMeter, period_end, period_of};
use crate::plugins::{MetricLimit, PluginService};

/// Cache entries kept before the cache starts over.
const CACHE_MAX: usize = 10_000;
/// When an org's held plan definition was read, and what it was.
type HeldEntry = (std::time::Instant, Option<Arc<str>>);

/// How long a held plan definition is trusted before it is read again (a
/// change made on another instance shows within this).
const HELD_TTL: std::time::Duration = std::time::Duration::from_secs(5);

/// One metric's quota for the current period.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct QuotaStatus {
    pub metric: String,
    /// `YYYY-MM`.
    pub period: String,
    pub resets_at: chrono::DateTime<chrono::Utc>,
    pub included: u64,
    pub used: u64,
    /// Included units left (0 once in overage).
    pub remaining: u64,
    pub overage_allowed: bool,
    /// Usage above this is refused even with overage.
    pub hard_limit: Option<u64>,
    /// Units above `included` this period, billed as overage.
    pub overage: u64,
}

/// 402: the period's quota of a metric is used up.
#[derive(Debug, Clone)]
pub struct QuotaExceeded {
    pub metric: String,
    pub limit: u64,
    pub used: u64,
    /// A hard limit (refused even with overage) rather than a plan without overage.
    pub hard: bool,
}

impl QuotaExceeded {
    pub fn message(&self) -> String {
        let QuotaExceeded { metric, limit, used, hard } = self;
        if *hard {
            format!("hard limit of {limit} {metric} this billing period reached ({used} used)")
        } else {
            format!(
                "quota of {limit} {metric} this billing period used up ({used} used); \
                 the plan allows no overage: upgrade the plan to continue"
            )
        }
    }

    /// The error envelope's details.
    pub fn details(&self) -> Value {
        json!({ "metric": self.metric, "limit": self.limit, "used": self.used, "hard_limit": self.hard })
    }
}

#[derive(Clone)]
pub struct BillingService {
    inner: Arc<Inner>,
}

struct Inner {
    plugins: PluginService,
    meter: UsageMeter,
    /// Plan limits per (activation, digest, plan, overrides): pricing
    /// plugins are deterministic, and any activation change is a new id.
    plan_limits: Mutex<HashMap<String, Arc<Vec<MetricLimit>>>>,
    /// The plan definition each org is held to, if any (grandfathering,
    /// A/B), as read at most [`HELD_TTL`] ago: quotas follow it too.
    held: Mutex<HashMap<String, HeldEntry>>,
    /// Why the pricing policy file was last refused (cleared once applied).
    pricing_policy_error: Mutex<Option<String>>,
    /// A candidate pricing every live preview beside the active plugin.
    shadow: Mutex<Option<simulate::Shadow>>,
}

impl BillingService {
    pub fn new(plugins: PluginService, meter: UsageMeter) -> BillingService {
        BillingService {
            inner: Arc::new(Inner {
                plugins,
                meter,
                plan_limits: Mutex::default(),
                held: Mutex::default(),
                pricing_policy_error: Mutex::default(),
                shadow: Mutex::default(),
            }),
        }
    }

    pub fn plugins(&self) -> &PluginService {
        &self.inner.plugins
    }

    /// The plan's metric limits from the active pricing plugin; `None` if
    /// there is no pricing plugin or it cannot answer (logged).
    pub async fn plan_limits(&self, p: &Principal) -> Option<Arc<Vec<MetricLimit>>> {
        let pricing = self.inner.plugins.pricing();
        let active = pricing.active(&p.org_id, &p.plan)?;
        let held = self.held_definition(&p.org_id, &p.plan).await;
        let held_hash = held.as_deref().map_or(0, |h| {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            h.hash(&mut hasher);
            hasher.finish()
        });
        let key = format!("{}|{}|{}|{}|{held_hash:x}", active.activation.id, active.plugin.digest, p.plan, p.overrides);
        if let Some(hit) = self.inner.plan_limits.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Some(hit.clone());
        }
        match pricing.plan_limits(&active, &p.plan, held.as_deref(), &p.overrides).await {
            Ok(answer) => {
                let limits = Arc::new(answer.value);
                // A fallback's answer stands in only while the active version fails.
                if !answer.fallback {
                    let mut cache = self.inner.plan_limits.lock().unwrap_or_else(|e| e.into_inner());
                    if cache.len() >= CACHE_MAX {
                        cache.clear();
                    }
                    cache.insert(key, limits.clone());
                }
                Some(limits)
            }
            Err(failure) => {
                let reason = failure.to_string();
                // Quotas cannot be known; the request is served and metered,
                // and pricing reports the error when the period is rated.
                tracing::warn!(plugin = %active.plugin.digest, reason, plan = %p.plan,
                    "pricing plugin could not give plan limits; quotas not checked");
                None
            }
        }
    }

    /// The plan definition the org is held to on `plan`, if any.
    async fn held_definition(&self, org_id: &str, plan: &str) -> Option<Arc<str>> {
        if let Some((at, held)) = self.inner.held.lock().unwrap_or_else(|e| e.into_inner()).get(org_id)
            && at.elapsed() < HELD_TTL
        {
            return held.clone();
        }
        let row = crate::store::sql::sql(
            "SELECT snapshot_plan, plan_snapshot, grandfathered_until FROM customer_pricing WHERE org_id = $1",
        )
        .bind(org_id)
        .fetch_optional(self.inner.meter.db().read())
        .await;
        let held = match row {
            Ok(Some(r)) => {
                let applies = r.get::<Option<String>>("snapshot_plan").ok().flatten().as_deref() == Some(plan)
                    && r.opt_time("grandfathered_until").ok().flatten().is_none_or(|u| u > chrono::Utc::now());
                if applies { r.get::<Option<String>>("plan_snapshot").ok().flatten().map(Arc::from) } else { None }
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the org's held plan version; quotas use the current plan");
                return None;
            }
        };
        let mut cache = self.inner.held.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(org_id.to_string(), (std::time::Instant::now(), held.clone()));
        held
    }

    /// Forgets cached plan limits and held definitions (after a pricing change here).
    fn forget_pricing(&self) {
        self.inner.plan_limits.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.inner.held.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Before work starts: one more API call must fit, and no metric may be
    /// past a limit that refuses (no overage, or a hard limit).
    pub async fn check_quota(&self, p: &Principal) -> Result<(), QuotaExceeded> {
        let Some(limits) = self.plan_limits(p).await else { return Ok(()) };
        let used = match self.inner.meter.used(&p.org_id, p.environment).await {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(error = %e, "could not read usage; quotas not checked");
                return Ok(());
            }
        };
        for l in limits.iter() {
            let u = used.get(&l.metric).copied().unwrap_or(0);
            // API calls: this request is one more. Other metrics are known
            // only after the work: refuse once they are already at the limit.
            let after = if l.metric == API_CALLS { u + 1 } else { u.max(1) };
            if let Some(hard) = l.hard_limit
                && after > hard
            {
                return Err(QuotaExceeded { metric: l.metric.clone(), limit: hard, used: u, hard: true });
            }
            if !l.overage_allowed && after > l.included {
                return Err(QuotaExceeded { metric: l.metric.clone(), limit: l.included, used: u, hard: false });
            }
        }
        Ok(())
    }

    /// The principal's quotas this period with what is used and left.
    pub async fn quotas(&self, p: &Principal) -> Vec<QuotaStatus> {
        let Some(limits) = self.plan_limits(p).await else { return Vec::new() };
        let used = self.inner.meter.used(&p.org_id, p.environment).await.unwrap_or_default();
        let now = chrono::Utc::now();
        limits
            .iter()
            .map(|l| {
                let u = used.get(&l.metric).copied().unwrap_or(0);
                QuotaStatus {
                    metric: l.metric.clone(),
                    period: period_of(now),
                    resets_at: period_end(now),
                    included: l.included,
                    used: u,
                    remaining: l.included.saturating_sub(u),
                    overage_allowed: l.overage_allowed,
                    hard_limit: l.hard_limit,
                    overage: if l.overage_allowed { u.saturating_sub(l.included) } else { 0 },
                }
            })
            .collect()
    }
}
