//! `pricing-payg`: pay as you go. No plan fee and no included units: every
//! unit of every metric is charged from the first, on graduated tiers (the
//! price falls as usage grows), and storage-like metrics are charged per
//! started block (per 1 000 memories stored, like per-GB storage). A
//! monthly minimum tops the usage up to it. Credits pay what is owed.
//!
//! Config (`config.example.yaml`):
//!
//! ```yaml
//! currency: USD
//! minimum: 5.00              # per period, before credits; 0: none
//! metrics:
//!   api_calls:
//!     tiers: [{up_to: 100000, price: 0.0004}, {price: 0.0002}]
//!   memories_stored:
//!     block: 1000            # priced per started block of 1 000 units
//!     tiers: [{up_to: 100, price: 0.50}, {price: 0.25}]
//! ```
//!
//! Amounts are exact in micro-units (a price has at most 6 decimals); each
//! line is rounded once to a cent, half away from zero. Limits: none (the
//! quota never refuses a pay-as-you-go customer).

use std::collections::BTreeMap;

use memhost_sdk::pricing::*;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "usd")]
    currency: String,
    #[serde(default)]
    minimum: Option<serde_json::Value>,
    metrics: BTreeMap<String, Metric>,
    /// The host reads it; prices do not depend on it.
    #[serde(default, rename = "pricing_version")]
    _pricing_version: Option<serde_json::Value>,
}

fn usd() -> String {
    "USD".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Metric {
    #[serde(default)]
    display_name: Option<String>,
    /// Units per block (charged per started block); default 1.
    #[serde(default)]
    block: Option<u64>,
    tiers: Vec<Tier>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Tier {
    /// The last block of the tier (inclusive); only the last tier may leave it out.
    #[serde(default)]
    up_to: Option<u64>,
    /// Per block (or unit).
    price: serde_json::Value,
}

fn err(code: &str, message: impl Into<String>) -> PluginError {
    PluginError::new(code, message)
}

/// Graduated: each block at its tier's price.
fn graduated(name: &str, m: &Metric, blocks: u64) -> Result<i128, PluginError> {
    let mut total = 0i128;
    let mut from = 0u64;
    for (i, t) in m.tiers.iter().enumerate() {
        let last = i + 1 == m.tiers.len();
        let up_to = match t.up_to {
            Some(u) if u > from => u,
            Some(_) => return Err(err("invalid-config", format!("metrics.{name}.tiers[{i}].up_to must rise"))),
            None if last => u64::MAX,
            None => {
                return Err(err("invalid-config", format!("metrics.{name}.tiers[{i}] needs up_to (not the last tier)")));
            }
        };
        let price = millionths(&t.price, &format!("metrics.{name}.tiers[{i}].price"))?;
        let in_tier = blocks.min(up_to).saturating_sub(from);
        total += in_tier as i128 * price;
        if blocks <= up_to {
            break;
        }
        from = up_to;
    }
    Ok(total)
}

struct Payg;

impl Pricing for Payg {
    const NAME: &'static str = "pricing-payg";
    const VERSION: &'static str = "1.0.0";

    fn config_schema() -> &'static str {
        include_str!("../config.schema.json")
    }

    fn rate(config: &str, input: RatingInput) -> Result<Invoice, PluginError> {
        let config: Config = parse_config(config)?;
        if config.metrics.is_empty() {
            return Err(err("invalid-config", "metrics must price at least one metric"));
        }
        let mut lines = Vec::new();
        for u in &input.usage {
            let Some(m) = config.metrics.get(&u.metric) else { continue };
            if u.quantity == 0 {
                continue;
            }
            let block = m.block.unwrap_or(1).max(1);
            let blocks = u.quantity.div_ceil(block);
            let amount = round_to_cent(graduated(&u.metric, m, blocks)?, 1);
            let name = m.display_name.clone().unwrap_or_else(|| u.metric.clone());
            let description = if block > 1 {
                format!("{name}: {} ({blocks} blocks of {block})", u.quantity)
            } else {
                format!("{name}: {}", u.quantity)
            };
            lines.push(line(LineKind::Usage, Some(&u.metric), None, description, u.quantity, amount)?);
        }
        let usage: i128 = lines.iter().map(|l| l.amount as i128).sum();
        let minimum = match &config.minimum {
            Some(v) => round_to_cent(millionths(v, "minimum")?, 1),
            None => 0,
        };
        if usage < minimum {
            lines.push(line(
                LineKind::Base,
                None,
                None,
                format!("Monthly minimum {}", money(minimum)),
                0,
                minimum - usage,
            )?);
        }
        let due: i128 = lines.iter().map(|l| l.amount as i128).sum();
        lines.extend(credit_lines(&input.credits, &input.period_end, due)?);
        let total = lines.iter().map(|l| l.amount).sum();
        Ok(Invoice { currency: config.currency, lines, total })
    }

    fn limits(
        config: &str,
        _plan: &str,
        _snapshot: Option<&str>,
        _overrides: &str,
    ) -> Result<Vec<MetricLimit>, PluginError> {
        let _: Config = parse_config(config)?;
        Ok(Vec::new())
    }
}

memhost_sdk::export_pricing!(Payg);
