//! `pricing-tiered`: the whole of seed 000's `calculate_invoice`, and more.
//!
//! Config: `policies/pricing.yaml` as JSON (see `config.rs`). An invoice is
//! built in this order, each line rounded once to a cent (half away from
//! zero) from an exact fraction, so the lines always sum to the total:
//!
//! 1. **base**: the plan's base price, or the customer's negotiated price;
//!    prorated by time over the plan spans when the plan changed within the
//!    period (each span at its own plan's price);
//! 2. **usage**: per metric, the units above the included amount, charged
//!    by the metric's model (standard, graduated, volume, package,
//!    percentage, graduated percentage) on the plan in force at the end of
//!    the period; then the metric's **volume discount**, by the highest
//!    threshold its total usage reached, as a discount line;
//! 3. **add-ons**: price (or the customer's price) × quantity;
//! 4. **discounts** on the subtotal so far: the customer's
//!    `discount_percent`, then each percentage promotion whose condition
//!    holds, in the order given, each on what is left after the previous;
//! 5. **credits**: drawn in order of expiry (never-expiring last), skipping
//!    those expired by the end of the period, each up to what is still owed.
//!
//! Units above the included amount on a plan without overage are refused by
//! the quota before they happen; any that slip through (concurrent
//! requests) are not billed. The plan comes from `plan_snapshot` when the
//! customer is held to one (grandfathering, A/B versions), else from the
//! config; the customer's overrides apply within their contract dates; a
//! region replaces the prices it names.

mod config;
mod money;

use std::collections::BTreeMap;

use memhost_sdk::pricing::*;

use config::{Charge, Config, CustomWord, Limits, Model, OrgOverrides, Overrides, Plan, Price, Tier};
use money::{Fixed, Ratio, share};

fn err(code: &str, message: impl Into<String>) -> PluginError {
    PluginError::new(code, message)
}

/// The plan as it applies to one customer.
struct Effective {
    name: String,
    currency: String,
    /// None: a custom price nobody negotiated.
    base: Option<i128>,
    overage_allowed: bool,
    limits: BTreeMap<String, u64>,
    charges: BTreeMap<String, Charge>,
    discount_percent: Option<Fixed>,
}

fn price_micros(price: Option<Price>, micros: Option<i64>) -> Option<Option<i128>> {
    match (micros, price) {
        (Some(m), _) => Some(Some(m as i128)),
        (None, Some(Price::Amount(a))) => Some(Some(a.micros())),
        (None, Some(Price::Custom(CustomWord::Custom))) => Some(None),
        (None, None) => None,
    }
}

fn parse_overrides(overrides: &str) -> Result<Overrides, PluginError> {
    if overrides.trim().is_empty() {
        return Ok(Overrides::default());
    }
    serde_json::from_str::<OrgOverrides>(overrides)
        .map(|o| o.pricing)
        .map_err(|e| err("invalid-overrides", format!("overrides: {e}")))
}

fn plan_def(config: &Config, plan: &str, snapshot: Option<&str>) -> Result<Plan, PluginError> {
    match snapshot {
        Some(s) if !s.trim().is_empty() && s.trim() != "{}" => {
            serde_json::from_str(s).map_err(|e| err("invalid-plan-snapshot", format!("plan snapshot: {e}")))
        }
        _ => config
            .plans
            .get(plan)
            .cloned()
            .ok_or_else(|| err("unknown-plan", format!("plan `{plan}` is not in the pricing config"))),
    }
}

/// Whether `day` (`YYYY-MM-DD…`) lies within the contract's dates.
fn within_contract(o: &Overrides, day: &str) -> bool {
    if day.is_empty() {
        return true; // no period: the terms as they stand
    }
    let day = day.get(..10).unwrap_or(day);
    o.contract_start.as_deref().is_none_or(|s| s <= day) && o.contract_end.as_deref().is_none_or(|e| day <= e)
}

fn effective(
    config: &Config,
    plan: &str,
    snapshot: Option<&str>,
    overrides: &str,
    region: Option<&str>,
    period_start: &str,
) -> Result<Effective, PluginError> {
    let p = plan_def(config, plan, snapshot)?;
    let mut e = Effective {
        name: p.display_name.clone().unwrap_or_else(|| plan.to_string()),
        currency: config.currency.clone(),
        base: price_micros(p.base_price, p.base_price_micros).unwrap_or(Some(0)),
        overage_allowed: p.overage_allowed.unwrap_or(!p.overage.is_empty()),
        limits: match &p.limits {
            Limits::Units(l) => l.clone(),
            Limits::Custom(_) => BTreeMap::new(),
        },
        charges: p.overage.clone(),
        discount_percent: None,
    };
    // A region the plan does not name keeps the plan's own prices.
    if let Some(prices) = region.and_then(|r| p.regions.get(r)) {
        if let Some(c) = &prices.currency {
            e.currency = c.clone();
        }
        if let Some(b) = price_micros(prices.base_price, prices.base_price_micros) {
            e.base = b;
        }
        e.charges.extend(prices.overage.clone());
    }
    let o = parse_overrides(overrides)?;
    if within_contract(&o, period_start) {
        if let Some(b) = price_micros(o.base_price.map(Price::Amount), o.base_price_micros) {
            e.base = b;
        }
        if let Some(n) = o.negotiated_price {
            e.base = Some(n.micros());
        }
        if let Some(a) = o.overage_allowed {
            e.overage_allowed = a;
        }
        e.limits.extend(o.limits);
        e.charges.extend(o.overage);
        e.discount_percent = o.discount_percent;
    }
    for (metric, c) in &e.charges {
        check_charge(metric, c)?;
    }
    Ok(e)
}

fn check_charge(metric: &str, c: &Charge) -> Result<(), PluginError> {
    let bad = |m: &str| Err(err("invalid-config", format!("overage.{metric}: {m}")));
    let needs_tiers = matches!(c.model, Model::Graduated | Model::Volume | Model::GraduatedPercentage);
    if needs_tiers && c.tiers.is_empty() {
        return bad("this model needs `tiers`");
    }
    if c.per == Some(0) || c.size == Some(0) || c.tiers.iter().any(|t| t.per == Some(0)) {
        return bad("`per` and `size` must be at least 1");
    }
    let mut last = 0u64;
    for (i, t) in c.tiers.iter().enumerate() {
        match t.up_to {
            Some(u) if u <= last && i > 0 => return bad("tiers must rise: each `up_to` above the previous"),
            Some(u) => last = u,
            None if i + 1 != c.tiers.len() => return bad("only the last tier may have no `up_to`"),
            None => {}
        }
    }
    match c.model {
        Model::Standard if c.price.is_none() && c.price_micros.is_none() => bad("standard needs `price`"),
        Model::Package if c.price.is_none() || c.size.is_none() => bad("package needs `price` and `size`"),
        Model::Percentage if c.rate.is_none() => bad("percentage needs `rate`"),
        _ => Ok(()),
    }
}

fn unit_price(price: Option<Fixed>, micros: Option<i64>) -> i128 {
    micros.map(|m| m as i128).or(price.map(Fixed::micros)).unwrap_or(0)
}

/// `units × price / per`, exact.
fn priced(units: u64, price: i128, per: Option<u64>) -> Ratio {
    Ratio::new(units as i128 * price, per.unwrap_or(1) as i128)
}

/// The units of `over` that fall in each tier, with the tier.
fn tier_parts(tiers: &[Tier], over: u64) -> Vec<(u64, &Tier)> {
    let mut parts = Vec::new();
    let mut from = 0u64;
    for t in tiers {
        let to = t.up_to.unwrap_or(u64::MAX).min(over);
        if to > from {
            parts.push((to - from, t));
        }
        from = from.max(to);
        if from >= over {
            break;
        }
    }
    parts
}

fn fee(f: Option<Fixed>) -> Ratio {
    Ratio::whole(f.map_or(0, Fixed::micros))
}

/// A metric's charge on `over` billable units, exact (rounded by the caller).
fn charge(c: &Charge, over: u64) -> Ratio {
    match c.model {
        Model::Standard => priced(over, unit_price(c.price, c.price_micros), c.per),
        Model::Package => {
            let packages = over.div_ceil(c.size.unwrap_or(1));
            Ratio::whole(packages as i128 * unit_price(c.price, c.price_micros))
        }
        Model::Graduated => tier_parts(&c.tiers, over).into_iter().fold(Ratio::ZERO, |acc, (units, t)| {
            acc.add(priced(units, unit_price(t.price, None), t.per)).add(fee(t.flat_fee))
        }),
        Model::Volume => {
            let tier = c.tiers.iter().find(|t| t.up_to.is_none_or(|u| over <= u)).or(c.tiers.last());
            tier.map_or(Ratio::ZERO, |t| priced(over, unit_price(t.price, None), t.per).add(fee(t.flat_fee)))
        }
        Model::Percentage => {
            let rate = c.rate.unwrap_or_default().micros();
            Ratio::new(over as i128 * rate, 1_000_000).add(fee(c.fixed_fee))
        }
        Model::GraduatedPercentage => {
            tier_parts(&c.tiers, over).into_iter().fold(fee(c.fixed_fee), |acc, (units, t)| {
                let rate = t.rate.unwrap_or_default().micros();
                acc.add(Ratio::new(units as i128 * rate, 1_000_000)).add(fee(t.flat_fee))
            })
        }
    }
}

fn model_name(m: Model) -> &'static str {
    match m {
        Model::Standard => "standard",
        Model::Graduated => "graduated",
        Model::Volume => "volume",
        Model::Package => "package",
        Model::Percentage => "percentage",
        Model::GraduatedPercentage => "graduated percentage",
    }
}

struct Tiered;

impl Tiered {
    fn base_lines(config: &Config, input: &RatingInput, e: &Effective) -> Result<Vec<InvoiceLine>, PluginError> {
        let custom = |name: &str| {
            err(
                "custom-price-missing",
                format!("plan `{name}` has a custom base price and the customer has no negotiated price"),
            )
        };
        if input.plan_spans.is_empty() {
            let base = e.base.ok_or_else(|| custom(&input.plan))?;
            return Ok(vec![line(
                LineKind::Base,
                None,
                None,
                format!("{} plan, base price", e.name),
                0,
                Ratio::whole(base).to_cents(),
            )?]);
        }
        let (start, end) = (epoch_seconds(&input.period_start)?, epoch_seconds(&input.period_end)?);
        let period = (end - start).max(1) as i128;
        let mut lines = Vec::new();
        for span in &input.plan_spans {
            let (s, t) = (epoch_seconds(&span.start)?.max(start), epoch_seconds(&span.end)?.min(end));
            if t <= s {
                continue;
            }
            // The final plan is the customer's effective one; earlier ones at their list price.
            let (name, base) = if span.plan == input.plan {
                (e.name.clone(), e.base.ok_or_else(|| custom(&span.plan))?)
            } else {
                let p = plan_def(config, &span.plan, None)?;
                let base = price_micros(p.base_price, p.base_price_micros)
                    .unwrap_or(Some(0))
                    .ok_or_else(|| custom(&span.plan))?;
                (p.display_name.unwrap_or_else(|| span.plan.clone()), base)
            };
            let days = |secs: i64| (secs as f64 / 86_400.0 * 10.0).round() / 10.0;
            let description = format!("{name} plan, base price, {} of {} days", days(t - s), days(period as i64));
            let amount = Ratio::new(base * (t - s) as i128, period).to_cents();
            lines.push(line(LineKind::Base, None, Some(&span.plan), description, 0, amount)?);
        }
        Ok(lines)
    }
}

impl Pricing for Tiered {
    const NAME: &'static str = env!("CARGO_PKG_NAME");
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn config_schema() -> &'static str {
        include_str!("../config.schema.json")
    }

    fn rate(config: &str, input: RatingInput) -> Result<Invoice, PluginError> {
        let config: Config = parse_config(config)?;
        let e = effective(
            &config,
            &input.plan,
            input.plan_snapshot.as_deref(),
            &input.overrides,
            input.region.as_deref(),
            &input.period_start,
        )?;
        let mut lines = Tiered::base_lines(&config, &input, &e)?;

        for u in &input.usage {
            let Some(c) = e.charges.get(&u.metric).filter(|_| e.overage_allowed) else { continue };
            let included = e.limits.get(&u.metric).copied().unwrap_or(0);
            let over = u.quantity.saturating_sub(included);
            if over == 0 {
                continue;
            }
            let amount = charge(c, over).to_cents();
            let what = if included > 0 { format!("{over} over {included} included") } else { format!("{over}") };
            let description = format!("{} ({}): {what}", u.metric, model_name(c.model));
            lines.push(line(LineKind::Usage, Some(&u.metric), None, description, over, amount)?);
            let discount = config
                .volume_discounts
                .get(&u.metric)
                .and_then(|tiers| tiers.iter().filter(|t| u.quantity >= t.threshold).max_by_key(|t| t.threshold));
            if let Some(t) = discount.filter(|t| t.discount.0 > 0 && amount > 0) {
                let pct = t.discount.0 as f64 / 10_000.0;
                let description = format!("{} volume discount: {pct}% from {} units", u.metric, t.threshold);
                lines.push(line(
                    LineKind::Discount,
                    Some(&u.metric),
                    Some("volume"),
                    description,
                    0,
                    -share(amount, t.discount),
                )?);
            }
        }

        for a in &input.addons {
            let def = config
                .addons
                .get(&a.id)
                .ok_or_else(|| err("unknown-addon", format!("add-on `{}` is not in the pricing config", a.id)))?;
            let unit = a.price_override.map_or(def.price.micros(), |p| p as i128);
            let name = def.display_name.clone().unwrap_or_else(|| a.id.clone());
            let description = format!("{name} × {} at {}", a.quantity, money(unit));
            lines.push(line(
                LineKind::Addon,
                None,
                Some(&a.id),
                description,
                a.quantity as u64,
                Ratio::whole(unit * a.quantity as i128).to_cents(),
            )?);
        }

        let owed = |lines: &[InvoiceLine]| lines.iter().map(|l| l.amount as i128).sum::<i128>();
        if let Some(pct) = e.discount_percent.filter(|p| p.0 > 0) {
            let subtotal = owed(&lines);
            if subtotal > 0 {
                let amount = -Ratio::new(subtotal * pct.micros(), 100 * 1_000_000).to_cents();
                let description = format!("Customer discount {}%", pct.0 as f64 / 1_000_000.0);
                lines.push(line(LineKind::Discount, None, Some("customer"), description, 0, amount)?);
            }
        }
        for p in &input.promotions {
            let def = config.promotions.get(&p.id).ok_or_else(|| {
                err("unknown-promotion", format!("promotion `{}` is not in the pricing config", p.id))
            })?;
            let config::PromotionDef::Percentage { discount, condition } = def else { continue };
            let left = owed(&lines);
            if !p.condition_met || left <= 0 {
                continue;
            }
            let when = condition.as_deref().map(|c| format!(" ({c})")).unwrap_or_default();
            let description = format!("Promotion {}{when}: {}%", p.id, discount.0 as f64 / 10_000.0);
            lines.push(line(LineKind::Discount, None, Some(&p.id), description, 0, -share(left, *discount))?);
        }

        let due = owed(&lines);
        lines.extend(credit_lines(&input.credits, &input.period_end, due)?);

        let total = lines
            .iter()
            .try_fold(0i64, |acc, l| acc.checked_add(l.amount))
            .ok_or_else(|| err("overflow", "invoice total does not fit in 64 bits"))?;
        Ok(Invoice { currency: e.currency, lines, total })
    }

    fn limits(
        config: &str,
        plan: &str,
        plan_snapshot: Option<&str>,
        overrides: &str,
    ) -> Result<Vec<MetricLimit>, PluginError> {
        let config: Config = parse_config(config)?;
        // Limits hold for the current contract; the period's date is the host's, not ours.
        let e = effective(&config, plan, plan_snapshot, overrides, None, "")?;
        Ok(e.limits
            .iter()
            .map(|(metric, &included)| {
                let overage = e.overage_allowed && e.charges.contains_key(metric);
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
