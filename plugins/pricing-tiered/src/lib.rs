//! `pricing-tiered`: a base price per plan plus overage per metric.
//!
//! Config (JSON, usually generated from `policies/pricing.yaml`):
//! `{"currency": "USD", "plans": {"starter": {"base_price_micros": 49000000,
//!   "overage_allowed": true, "limits": {"api_calls": 10000},
//!   "overage": {"api_calls": {"price_micros": 500000, "per": 1000}}}}}`
//!
//! Overage is billed pro rata: `over × price / per`, rounded half up to a
//! micro-unit. Per-customer overrides (`{"pricing": {"base_price_micros": …,
//! "limits": {…}, "overage": {…}, "overage_allowed": …}}`) replace the plan's
//! values field by field. An org's overrides object is shared by the plugin
//! kinds, one section each (`rate_limits` belongs to the rate-limit plugin),
//! so sections other than `pricing` are ignored here. Volume discounts, add-ons and credits belong to the billing
//! work and are not priced here.

use std::collections::BTreeMap;

use memhost_sdk::pricing::*;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "usd")]
    currency: String,
    plans: BTreeMap<String, Plan>,
}

fn usd() -> String {
    "USD".into()
}

#[derive(Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
struct Plan {
    #[serde(default)]
    display_name: Option<String>,
    #[serde(default)]
    base_price_micros: i64,
    #[serde(default)]
    overage_allowed: bool,
    /// Units included per period, per metric.
    #[serde(default)]
    limits: BTreeMap<String, u64>,
    #[serde(default)]
    overage: BTreeMap<String, Overage>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(deny_unknown_fields)]
struct Overage {
    price_micros: i64,
    per: u64,
}

/// The org's overrides: only the `pricing` section is ours.
#[derive(Deserialize, Default)]
struct OrgOverrides {
    #[serde(default)]
    pricing: Overrides,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Overrides {
    base_price_micros: Option<i64>,
    overage_allowed: Option<bool>,
    #[serde(default)]
    limits: BTreeMap<String, u64>,
    #[serde(default)]
    overage: BTreeMap<String, Overage>,
}

fn effective_plan(config: &str, plan: &str, overrides: &str) -> Result<(Config, Plan), PluginError> {
    let config: Config = parse_config(config)?;
    let overrides: Overrides = if overrides.trim().is_empty() {
        Overrides::default()
    } else {
        serde_json::from_str::<OrgOverrides>(overrides)
            .map_err(|e| PluginError::new("invalid-overrides", format!("overrides: {e}")))?
            .pricing
    };
    let mut p = config
        .plans
        .get(plan)
        .cloned()
        .ok_or_else(|| PluginError::new("unknown-plan", format!("plan `{plan}` is not in the pricing config")))?;
    if let Some(b) = overrides.base_price_micros {
        p.base_price_micros = b;
    }
    if let Some(o) = overrides.overage_allowed {
        p.overage_allowed = o;
    }
    p.limits.extend(overrides.limits);
    p.overage.extend(overrides.overage);
    for (metric, o) in &p.overage {
        if o.per == 0 {
            return Err(PluginError::new("invalid-config", format!("overage.{metric}.per must be at least 1")));
        }
    }
    Ok((config, p))
}

/// `over × price / per`, rounded half up, without overflow.
fn overage_amount(over: u64, o: Overage) -> Result<i64, PluginError> {
    let num = over as i128 * o.price_micros as i128;
    let per = o.per as i128;
    let amount = (num + per / 2).div_euclid(per);
    i64::try_from(amount).map_err(|_| PluginError::new("overflow", "overage amount does not fit in 64 bits"))
}

struct Tiered;

impl Pricing for Tiered {
    const NAME: &'static str = env!("CARGO_PKG_NAME");
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn config_schema() -> &'static str {
        include_str!("../config.schema.json")
    }

    fn rate(config: &str, input: RatingInput) -> Result<Invoice, PluginError> {
        let (config, plan) = effective_plan(config, &input.plan, &input.overrides)?;
        let name = plan.display_name.clone().unwrap_or_else(|| input.plan.clone());
        let mut lines = vec![InvoiceLine {
            metric: None,
            description: format!("{name} plan, base price"),
            quantity: 0,
            amount: plan.base_price_micros,
        }];
        for u in &input.usage {
            let included = plan.limits.get(&u.metric).copied().unwrap_or(u64::MAX);
            let over = u.quantity.saturating_sub(included);
            if over == 0 {
                continue;
            }
            let rule = plan.overage.get(&u.metric).copied().filter(|_| plan.overage_allowed).ok_or_else(|| {
                PluginError::new(
                    "overage-not-priced",
                    format!(
                        "{} {} over the included {included}, and plan `{}` prices no overage for it",
                        over, u.metric, input.plan
                    ),
                )
            })?;
            lines.push(InvoiceLine {
                metric: Some(u.metric.clone()),
                description: format!("{} overage: {over} over {included} included", u.metric),
                quantity: over,
                amount: overage_amount(over, rule)?,
            });
        }
        let total = lines
            .iter()
            .try_fold(0i64, |acc, l| acc.checked_add(l.amount))
            .ok_or_else(|| PluginError::new("overflow", "invoice total does not fit in 64 bits"))?;
        Ok(Invoice { currency: config.currency, lines, total })
    }

    fn limits(config: &str, plan: &str, overrides: &str) -> Result<Vec<MetricLimit>, PluginError> {
        let (_, p) = effective_plan(config, plan, overrides)?;
        Ok(p.limits
            .iter()
            .map(|(metric, &included)| {
                let overage = p.overage_allowed && p.overage.contains_key(metric);
                MetricLimit {
                    metric: metric.clone(),
                    included,
                    hard_limit: if overage { None } else { Some(included) },
                    overage_allowed: overage,
                }
            })
            .collect())
    }
}

memhost_sdk::export_pricing!(Tiered);
