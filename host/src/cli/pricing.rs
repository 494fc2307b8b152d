//! `memhost pricing …`: the pricing config's versions and plans, and a
//! customer's pricing (region, plan version, add-ons, credits,
//! promotions), on the same database as the server. Each change is
//! validated by the active pricing plugin and audited, as through the API.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use clap::Subcommand;
use serde_json::json;

use super::admin::{Output, emit, table};
use super::invoices::{ProgressBar, billing};
use crate::audit::Actor;
use crate::billing::customers::{
    AddonUpdate, CustomerPricing, HoldRequest, NewCredit, PricingUpdate, PromotionRequest,
};
use crate::billing::invoices::decimal;
use crate::billing::plans::{CatalogueUpdate, PlanUpdate, PlanView};
use crate::billing::simulate::SimulateRequest;
use crate::config::Config;
use crate::plugins::PluginKind;

#[derive(Subcommand)]
pub enum PricingCommand {
    /// The pricing config in force and its version history.
    Show,
    /// Create or change a plan from a file (YAML or JSON): a new pricing
    /// version; the plan's customers keep its previous definition unless
    /// --no-grandfather.
    Plan {
        plan: String,
        #[arg(long)]
        file: PathBuf,
        /// The new version's name (default: the current one with `.N`).
        #[arg(long)]
        version: Option<String>,
        #[arg(long)]
        no_grandfather: bool,
        /// Grandfathering ends then (RFC 3339).
        #[arg(long)]
        until: Option<DateTime<Utc>>,
        #[command(flatten)]
        out: Output,
    },
    /// The plans in force: deprecated or not, customers, grandfathered.
    Plans {
        #[command(flatten)]
        out: Output,
    },
    /// Close a plan to new customers (its customers keep it), or --reopen it.
    Deprecate {
        plan: String,
        #[arg(long)]
        reopen: bool,
        #[command(flatten)]
        out: Output,
    },
    /// Create or change an add-on, a promotion or a metric's volume
    /// discounts from a file (YAML or JSON): a new pricing version.
    Set {
        /// addons, promotions or volume_discounts.
        section: String,
        id: String,
        #[arg(long)]
        file: PathBuf,
        #[arg(long)]
        version: Option<String>,
        #[command(flatten)]
        out: Output,
    },
    /// A customer's pricing.
    Customer {
        org: String,
        #[command(flatten)]
        out: Output,
    },
    /// Set (or with --clear, remove) a customer's region.
    Region {
        org: String,
        region: Option<String>,
        #[arg(long)]
        clear: bool,
        #[command(flatten)]
        out: Output,
    },
    /// Grant a credit.
    Credit {
        org: String,
        /// In currency units, e.g. 100 or 25.50.
        #[arg(long)]
        amount: String,
        /// manual, refund, promotion or prepaid.
        #[arg(long, default_value = "manual")]
        source: String,
        #[arg(long)]
        expires: Option<DateTime<Utc>>,
        #[arg(long)]
        note: Option<String>,
        #[command(flatten)]
        out: Output,
    },
    /// Apply a promotion of the pricing config by its code.
    Promote {
        org: String,
        code: String,
        /// The promotion's condition is not met (yet).
        #[arg(long)]
        condition_not_met: bool,
        #[command(flatten)]
        out: Output,
    },
    /// Subscribe a customer to an add-on (or --remove it).
    Addon {
        org: String,
        addon: String,
        #[arg(long)]
        quantity: Option<u32>,
        /// A negotiated price per unit, in currency units.
        #[arg(long)]
        price: Option<String>,
        #[arg(long)]
        remove: bool,
        #[command(flatten)]
        out: Output,
    },
    /// Hold a customer to its plan as a stored pricing version defines it
    /// (grandfathering; A/B tests), or with --release move it to the current one.
    Hold {
        org: String,
        #[arg(long)]
        version: Option<String>,
        #[arg(long)]
        until: Option<DateTime<Utc>>,
        #[arg(long)]
        release: bool,
        #[command(flatten)]
        out: Output,
    },
}

fn plans_table(plans: &[PlanView]) -> String {
    let mut t = table(["plan", "status", "customers", "grandfathered"]);
    for p in plans {
        t.add_row([
            p.plan.clone(),
            if p.deprecated { "deprecated" } else { "open" }.to_string(),
            p.customers.to_string(),
            p.grandfathered.to_string(),
        ]);
    }
    t.to_string()
}

fn summary(c: &CustomerPricing) -> String {
    let mut s = format!("{} on {}", c.org_id, c.plan);
    if let Some(r) = &c.region {
        s.push_str(&format!(", region {r}"));
    }
    if let Some(h) = &c.plan_version {
        s.push_str(&format!(
            "\nheld to {} as of version {} until {}",
            h.plan,
            h.pricing_version.as_deref().unwrap_or("(inline)"),
            h.until.map_or("moved".to_string(), |u| u.to_rfc3339())
        ));
    }
    for a in &c.addons {
        s.push_str(&format!("\nadd-on {} × {}", a.addon_id, a.quantity));
    }
    for cr in &c.credits {
        s.push_str(&format!("\ncredit {} ({}): {} left", cr.id, cr.source, cr.remaining));
    }
    for p in &c.promotions {
        s.push_str(&format!(
            "\npromotion {}{}",
            p.promotion_id,
            if p.condition_met { "" } else { " (condition not met)" }
        ));
    }
    s
}

pub async fn run(config: Config, cmd: PricingCommand) -> anyhow::Result<()> {
    let billing = billing(&config).await?;
    let actor = Actor::cli();
    match cmd {
        PricingCommand::Show => println!("{}", serde_json::to_string_pretty(&billing.pricing_view().await?)?),
        PricingCommand::Plan { plan, file, version, no_grandfather, until, out } => {
            let definition = super::plugin::read_config(&file)?;
            let req = PlanUpdate {
                definition,
                pricing_version: version,
                grandfather: Some(!no_grandfather),
                grandfathered_until: until,
            };
            let changed = billing.update_plan(&plan, req, &actor).await?;
            emit(out, &changed, || {
                format!(
                    "pricing version {} active ({} customer(s) keep the previous definition)",
                    changed.pricing_version.as_deref().unwrap_or("?"),
                    changed.grandfathered
                )
            })?;
        }
        PricingCommand::Plans { out } => {
            let plans = billing.plans().await?;
            emit(out, &plans, || plans_table(&plans))?;
        }
        PricingCommand::Deprecate { plan, reopen, out } => {
            let plans = billing.deprecate_plan(&plan, reopen, &actor).await?;
            emit(out, &plans, || plans_table(&plans))?;
        }
        PricingCommand::Set { section, id, file, version, out } => {
            let req = CatalogueUpdate { definition: super::plugin::read_config(&file)?, pricing_version: version };
            let changed = billing.update_catalogue(&section, &id, req, &actor).await?;
            emit(out, &changed, || {
                format!("pricing version {} active", changed.pricing_version.as_deref().unwrap_or("?"))
            })?;
        }
        PricingCommand::Customer { org, out } => {
            let c = billing.customer_pricing(&org).await?;
            emit(out, &c, || summary(&c))?;
        }
        PricingCommand::Region { org, region, clear, out } => {
            if region.is_none() && !clear {
                anyhow::bail!("give a region, or --clear");
            }
            let update = PricingUpdate {
                region: Some(if clear { None } else { region }),
                stripe_customer_id: None,
                overrides: None,
            };
            let c = billing.update_customer_pricing(&org, update, &actor).await?;
            emit(out, &c, || summary(&c))?;
        }
        PricingCommand::Credit { org, amount, source, expires, note, out } => {
            let credit = NewCredit { amount: json!(amount), source: Some(source), expires_at: expires, note };
            let made = billing.add_credit(&org, credit, &actor).await?;
            emit(out, &made, || format!("credit {} of {} granted", made.id, made.remaining))?;
        }
        PricingCommand::Promote { org, code, condition_not_met, out } => {
            let req = PromotionRequest { code, condition_met: Some(!condition_not_met) };
            let c = billing.apply_promotion(&org, req, &actor).await?;
            emit(out, &c, || summary(&c))?;
        }
        PricingCommand::Addon { org, addon, quantity, price, remove, out } => {
            let c = if remove {
                billing.remove_addon(&org, &addon, &actor).await?
            } else {
                let update = AddonUpdate { quantity, price: price.map(|p| json!(p)) };
                billing.set_addon(&org, &addon, update, &actor).await?
            };
            emit(out, &c, || summary(&c))?;
        }
        PricingCommand::Hold { org, version, until, release, out } => {
            let c = if release {
                billing.release_plan_version(&org, &actor).await?
            } else {
                let req = HoldRequest { pricing_version: version, definition: None, label: None, until };
                billing.hold_plan_version(&org, req, &actor).await?
            };
            emit(out, &c, || summary(&c))?;
        }
    }
    Ok(())
}

/// `memhost plugin simulate`: stores the candidate (inactive) and prices
/// the periods with it, with a progress bar on a terminal.
pub async fn simulate(config: &Config, wasm: &[u8], request: SimulateRequest, out: Output) -> anyhow::Result<()> {
    let billing = billing(config).await?;
    let uploaded =
        billing.plugins().upload(wasm, Some(PluginKind::Pricing), Default::default(), &Actor::cli().0).await?;
    let bar = ProgressBar::new();
    let report = billing.simulate(&uploaded.plugin.id, request, &|done, of| bar.draw(done, of)).await?;
    bar.finish();
    emit(out, &report, || {
        let s = &report.summary;
        let mut text = format!(
            "candidate {} over {}: {} org-periods priced: {} up, {} down, {} unchanged, {} failed",
            crate::plugins::short(&report.plugin_id),
            report.periods.join(", "),
            s.priced,
            s.up,
            s.down,
            s.unchanged,
            s.failed
        );
        for (currency, delta) in &s.revenue_delta_micros {
            let before = s.revenue_before_micros.get(currency).copied().unwrap_or(0);
            text.push_str(&format!(
                "\nrevenue {currency}: {} → {} ({}{})",
                decimal(before),
                decimal(before + delta),
                if *delta >= 0 { "+" } else { "" },
                decimal(*delta)
            ));
        }
        for r in &report.results {
            match &r.error {
                Some(e) => text.push_str(&format!("\n  {} {}: failed: {e}", r.org_id, r.period)),
                None => text.push_str(&format!(
                    "\n  {} {}: {} → {} {}",
                    r.org_id,
                    r.period,
                    decimal(r.before_micros.unwrap_or(0)),
                    decimal(r.after_micros.unwrap_or(0)),
                    r.currency
                )),
            }
        }
        if report.truncated {
            text.push_str("\n  … (more with --limit or --json)");
        }
        text
    })
}
