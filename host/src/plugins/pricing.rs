//! Pricing plugins: rate a billing period into invoice lines, and give a
//! plan's limits per metric (what quotas check). Deterministic: no clock,
//! randomness or I/O, so answers can be cached per activation.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::kind::PluginKind;
use super::{Active, Answer, Loaded, PluginError, PluginFailure, PluginService, with_fallback};

/// Why a stored plugin could not rate.
#[derive(Debug, thiserror::Error)]
pub enum RateError {
    /// It could not be found or loaded.
    #[error(transparent)]
    Plugin(PluginError),
    #[error(transparent)]
    Failed(PluginFailure),
}

/// Aggregated usage of one metric over the period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UsageQuantity {
    pub metric: String,
    pub quantity: u64,
}

/// One stretch of the period on one plan (proration).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanSpan {
    pub plan: String,
    /// RFC 3339 instants; the span is [start, end).
    pub start: String,
    pub end: String,
}

/// An add-on the customer subscribes to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddonSubscription {
    pub id: String,
    #[serde(default = "one")]
    pub quantity: u32,
    /// A negotiated price per unit (micro-units), replacing the config's.
    #[serde(default)]
    pub price_override: Option<i64>,
}

fn one() -> u32 {
    1
}

/// A balance the customer holds before the invoice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreditBalance {
    pub id: String,
    /// `promotion`, `refund`, `manual` or `prepaid`.
    pub source: String,
    /// Micro-units.
    pub remaining: i64,
    /// RFC 3339 (UTC); none: never expires.
    #[serde(default)]
    pub expires_at: Option<String>,
}

/// A promotion the customer was given, and whether its condition holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AppliedPromotion {
    pub id: String,
    #[serde(default = "yes")]
    pub condition_met: bool,
}

fn yes() -> bool {
    true
}

/// Everything a pricing plugin is given to price one org's period (WIT
/// 0.2.0; a 0.1.0 plugin sees only plan, overrides, period and usage).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RatingInput {
    pub plan: String,
    /// The plan definition the org is held to (grandfathering, A/B), JSON.
    pub plan_snapshot: Option<String>,
    /// The org's `pricing` overrides as a JSON object (`{}` when none).
    pub overrides: String,
    pub region: Option<String>,
    /// RFC 3339 instants; the period is [start, end).
    pub period_start: String,
    pub period_end: String,
    pub usage: Vec<UsageQuantity>,
    /// Empty when one plan held the whole period.
    pub plan_spans: Vec<PlanSpan>,
    pub addons: Vec<AddonSubscription>,
    /// Soonest expiry first.
    pub credits: Vec<CreditBalance>,
    pub promotions: Vec<AppliedPromotion>,
}

/// What an invoice line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LineKind {
    Base,
    Usage,
    Addon,
    /// A reduction: amount ≤ 0.
    Discount,
    /// A balance drawn: amount ≤ 0, `reference` is the credit.
    Credit,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InvoiceLine {
    pub kind: LineKind,
    /// None for fixed fees such as the base price.
    pub metric: Option<String>,
    /// The add-on, credit or promotion the line comes from.
    pub reference: Option<String>,
    pub description: String,
    pub quantity: u64,
    /// Micro-units of the currency.
    pub amount: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Invoice {
    pub currency: String,
    pub lines: Vec<InvoiceLine>,
    /// Equals the sum of the lines (checked by the host).
    pub total: i64,
}

/// A plan's limit on one metric for the billing period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct MetricLimit {
    pub metric: String,
    /// Units included in the base price.
    pub included: u64,
    /// Above this the request is refused (402); none: unlimited.
    pub hard_limit: Option<u64>,
    /// Whether usage above `included` is allowed and billed as overage.
    pub overage_allowed: bool,
}

/// The pricing plugins, as callers use them (`PluginService::pricing`).
pub struct Pricing<'a> {
    pub(super) service: &'a PluginService,
}

impl Pricing<'_> {
    /// The activation that prices `org_id` on `plan`, if any. Its id and
    /// digest identify its answers.
    pub fn active(&self, org_id: &str, plan: &str) -> Option<Arc<Active>> {
        self.service.active(PluginKind::Pricing, Some(org_id), Some(plan))
    }

    /// The global activation (the pricing config most customers are on).
    pub fn global(&self) -> Option<Arc<Active>> {
        self.service.active(PluginKind::Pricing, None, None)
    }

    /// The plan's metric limits. On a sandbox failure the previous version
    /// answers, where fallback is on.
    pub async fn plan_limits(
        &self,
        active: &Active,
        plan: &str,
        plan_snapshot: Option<&str>,
        overrides: &str,
    ) -> Result<Answer<Vec<MetricLimit>>, PluginFailure> {
        let runtime = self.service.runtime();
        let result = with_fallback!(self.service, active, |p, config| runtime
            .plan_limits(&p.prepared, &p.limits, &p.digest, config, plan, plan_snapshot, overrides)
            .await);
        self.service.recorder().limits(active, plan, plan_snapshot, overrides, &result);
        result
    }

    /// Rates a period with exactly this activation: an invoice is never
    /// priced by another version behind the operator's back.
    pub async fn rate(&self, active: &Active, input: &RatingInput) -> Result<Invoice, PluginFailure> {
        let result = self.rate_with(&active.plugin, &active.config, input).await;
        self.service.recorder().rate(active, input, &result);
        result
    }

    /// Rates with a stored plugin (by id) and a given config, active or not:
    /// replaying a finalized invoice, or simulating a candidate.
    pub async fn rate_stored(&self, plugin_id: &str, config: &str, input: &RatingInput) -> Result<Invoice, RateError> {
        let loaded = self.service.load(plugin_id).await.map_err(RateError::Plugin)?;
        self.rate_with(&loaded, config, input).await.map_err(RateError::Failed)
    }

    async fn rate_with(&self, p: &Loaded, config: &str, input: &RatingInput) -> Result<Invoice, PluginFailure> {
        let outcome = self
            .service
            .runtime()
            .rate(&p.prepared, &p.limits, &p.digest, config, input)
            .await
            .map_err(PluginFailure::Call)?;
        let invoice = outcome.value.map_err(|e| PluginFailure::Guest(e, outcome.stats.host_usage))?;
        let sum: i64 = invoice.lines.iter().map(|l| l.amount).sum();
        if sum != invoice.total {
            return Err(PluginFailure::BadAnswer(format!(
                "invoice total {} is not the sum of its lines ({sum})",
                invoice.total
            )));
        }
        Ok(invoice)
    }
}
