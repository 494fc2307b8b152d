//! `pricing-commitment`: committed-use pricing. The customer commits to a
//! monthly spend and gets a discount off list rates for it; usage is
//! charged at list rates, the discount follows as its own line, and when
//! the discounted usage falls short of the commitment a true-up line bills
//! the difference (the commitment is owed whatever the usage). Usage beyond
//! the commitment is billed at the discounted rates. Credits pay what is owed.
//!
//! Config (`config.example.yaml`):
//!
//! ```yaml
//! currency: USD
//! rates:                       # list price per `per` units
//!   api_calls: { price: 0.50, per: 1000 }
//! plans:
//!   committed: { commitment: 1000, discount: 0.20 }
//! ```
//!
//! A customer's `{"pricing": {"commitment": …, "discount": …}}` overrides
//! replace its plan's. Amounts are exact in micro-units until each line is
//! rounded once to a cent, half away from zero.

use std::collections::BTreeMap;

use memhost_sdk::pricing::*;
use serde::Deserialize;
use serde_json::Value;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "usd")]
    currency: String,
    rates: BTreeMap<String, Rate>,
    #[serde(default)]
    plans: BTreeMap<String, Commitment>,
    #[serde(default, rename = "pricing_version")]
    _pricing_version: Option<Value>,
}

fn usd() -> String {
    "USD".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rate {
    price: Value,
    #[serde(default)]
    per: Option<u64>,
    #[serde(default)]
    display_name: Option<String>,
}

#[derive(Deserialize, Default, Clone)]
struct Commitment {
    #[serde(default)]
    commitment: Option<Value>,
    #[serde(default)]
    discount: Option<Value>,
}

#[derive(Deserialize, Default)]
struct Overrides {
    #[serde(default)]
    pricing: Commitment,
}

fn err(code: &str, message: impl Into<String>) -> PluginError {
    PluginError::new(code, message)
}

struct Committed;

impl Committed {
    /// The commitment (micro-units) and discount (millionths) for the customer.
    fn terms(config: &Config, plan: &str, overrides: &str) -> Result<(i128, i128), PluginError> {
        let o: Overrides = if overrides.trim().is_empty() {
            Overrides::default()
        } else {
            serde_json::from_str(overrides).map_err(|e| err("invalid-overrides", format!("overrides: {e}")))?
        };
        let base = config.plans.get(plan).cloned().unwrap_or_default();
        let commitment = o.pricing.commitment.as_ref().or(base.commitment.as_ref()).ok_or_else(|| {
            err("no-commitment", format!("plan `{plan}` has no commitment and the customer has none of its own"))
        })?;
        let commitment = millionths(commitment, "commitment")?;
        let discount = match o.pricing.discount.as_ref().or(base.discount.as_ref()) {
            Some(d) => millionths(d, "discount")?,
            None => 0,
        };
        if discount > 1_000_000 {
            return Err(err("invalid-config", "discount must be at most 1 (100 %)"));
        }
        Ok((commitment, discount))
    }
}

impl Pricing for Committed {
    const NAME: &'static str = "pricing-commitment";
    const VERSION: &'static str = "1.0.0";

    fn config_schema() -> &'static str {
        include_str!("../config.schema.json")
    }

    fn rate(config: &str, input: RatingInput) -> Result<Invoice, PluginError> {
        let config: Config = parse_config(config)?;
        let (commitment, discount) = Self::terms(&config, &input.plan, &input.overrides)?;
        let mut lines = Vec::new();
        for u in input.usage.iter().filter(|u| u.quantity > 0) {
            let Some(r) = config.rates.get(&u.metric) else { continue };
            let price = millionths(&r.price, &format!("rates.{}.price", u.metric))?;
            let per = r.per.unwrap_or(1).max(1) as i128;
            let amount = round_to_cent(u.quantity as i128 * price, per);
            let name = r.display_name.clone().unwrap_or_else(|| u.metric.clone());
            lines.push(line(
                LineKind::Usage,
                Some(&u.metric),
                None,
                format!("{name}: {} at list price", u.quantity),
                u.quantity,
                amount,
            )?);
        }
        let usage: i128 = lines.iter().map(|l| l.amount as i128).sum();
        let off = if discount > 0 && usage > 0 { round_to_cent(usage * discount, 1_000_000) } else { 0 };
        if off > 0 {
            let percent = discount as f64 / 10_000.0;
            lines.push(line(LineKind::Discount, None, None, format!("Committed-use discount {percent}%"), 0, -off)?);
        }
        let discounted = usage - off;
        if discounted < commitment {
            let description =
                format!("Commitment {} (usage {} short of it)", money(commitment), money(commitment - discounted));
            lines.push(line(LineKind::Base, None, None, description, 0, commitment - discounted)?);
        }
        let due: i128 = lines.iter().map(|l| l.amount as i128).sum();
        lines.extend(credit_lines(&input.credits, &input.period_end, due)?);
        let total = lines.iter().map(|l| l.amount).sum();
        Ok(Invoice { currency: config.currency, lines, total })
    }

    fn limits(
        config: &str,
        plan: &str,
        _snapshot: Option<&str>,
        overrides: &str,
    ) -> Result<Vec<MetricLimit>, PluginError> {
        let config: Config = parse_config(config)?;
        Self::terms(&config, plan, overrides)?;
        Ok(Vec::new())
    }
}

memhost_sdk::export_pricing!(Committed);
