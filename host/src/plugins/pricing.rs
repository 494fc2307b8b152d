//! Pricing plugins: rate a billing period into invoice lines, and give a
//! plan's limits per metric (what quotas check). Deterministic: no clock,
//! randomness or I/O, so answers can be cached per activation.

use std::sync::Arc;

use serde::Serialize;
use utoipa::ToSchema;

use super::kind::PluginKind;
use super::{Active, Answer, PluginFailure, PluginService, with_fallback};

/// Aggregated usage of one metric over the period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct UsageQuantity {
    pub metric: String,
    pub quantity: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct RatingInput {
    pub plan: String,
    /// The org's `pricing` overrides as a JSON object (`{}` when none).
    pub overrides: String,
    /// RFC 3339 instants; the period is [start, end).
    pub period_start: String,
    pub period_end: String,
    pub usage: Vec<UsageQuantity>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct InvoiceLine {
    /// None for fixed fees such as the base price.
    pub metric: Option<String>,
    pub description: String,
    pub quantity: u64,
    /// Micro-units of the currency.
    pub amount: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
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

    /// The plan's metric limits. On a sandbox failure the previous version
    /// answers, where fallback is on.
    pub async fn plan_limits(
        &self,
        active: &Active,
        plan: &str,
        overrides: &str,
    ) -> Result<Answer<Vec<MetricLimit>>, PluginFailure> {
        let runtime = self.service.runtime();
        with_fallback!(self.service, active, |p, config| runtime
            .plan_limits(&p.prepared, &p.limits, &p.digest, config, plan, overrides)
            .await)
    }

    /// Rates a period with exactly this activation: an invoice is never
    /// priced by another version behind the operator's back.
    pub async fn rate(&self, active: &Active, input: &RatingInput) -> Result<Invoice, PluginFailure> {
        let p = &active.plugin;
        let outcome = self
            .service
            .runtime()
            .rate(&p.prepared, &p.limits, &p.digest, &active.config, input)
            .await
            .map_err(PluginFailure::Call)?;
        let invoice = outcome.value.map_err(PluginFailure::Guest)?;
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
