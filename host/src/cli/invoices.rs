//! `memhost invoices …`: close a period, list, show (JSON, CSV, HTML),
//! preview and verify invoices, on the same database as the server.

use std::io::IsTerminal;

use anyhow::Context;
use clap::Subcommand;

use super::admin::{Output, emit, table};
use crate::audit::Actor;
use crate::auth::Environment;
use crate::billing::payments::PaymentRequest;
use crate::billing::{BillingService, InvoiceFilter, InvoiceView, invoices::decimal, render};
use crate::config::Config;
use crate::metering::UsageMeter;
use crate::plugins::PluginService;
use crate::providers::Providers;
use crate::store::Database;

#[derive(Subcommand)]
pub enum InvoicesCommand {
    /// Close a period: an immutable invoice for every org (idempotent).
    Finalize {
        /// `YYYY-MM`; it must be over.
        #[arg(long)]
        period: String,
        /// Only this org (repeatable).
        #[arg(long = "org")]
        orgs: Vec<String>,
        #[command(flatten)]
        out: Output,
    },
    /// List finalized invoices.
    List {
        #[arg(long)]
        org: Option<String>,
        #[arg(long)]
        period: Option<String>,
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[command(flatten)]
        out: Output,
    },
    /// Show an invoice.
    Show {
        id: String,
        /// json, csv or html.
        #[arg(long, default_value = "json")]
        format: String,
    },
    /// The current period of an org priced now (nothing stored).
    Upcoming {
        org: String,
        /// json, csv or html.
        #[arg(long, default_value = "json")]
        format: String,
    },
    /// Record a payment (or with --failed, a failed payment) on an invoice.
    Pay {
        id: String,
        #[arg(long)]
        failed: bool,
        /// Micro-units; default: what is due.
        #[arg(long)]
        amount_micros: Option<i64>,
        #[arg(long)]
        reference: Option<String>,
        /// Why it failed.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        out: Output,
    },
    /// A finalized period's usage as Stripe meter events (JSON lines).
    StripeExport {
        #[arg(long)]
        period: String,
    },
    /// Re-price an invoice with the plugin and config it records; exit code
    /// 1 unless it matches to the micro-unit.
    Verify {
        id: String,
        #[command(flatten)]
        out: Output,
    },
}

pub(super) async fn billing(config: &Config) -> anyhow::Result<BillingService> {
    let db = Database::connect(&config.store()).await?;
    // Pricing needs no embedder: the hashing one, no model loaded.
    let providers = Providers::from_config(&config.embeddings, &config.answers, &config.completions, None)?;
    let cache_dir = config.plugin_cache_dir.clone().unwrap_or_else(|| config.data_dir.join("plugin-cache"));
    let plugins = PluginService::start(db.clone(), config.plugins.clone(), cache_dir, providers)
        .await
        .context("starting the plugin runtime")?;
    let meter = UsageMeter::new(db, config.metrics_policy()?)?;
    Ok(BillingService::new(plugins, meter))
}

fn print(inv: &InvoiceView, format: &str) -> anyhow::Result<()> {
    match format {
        "json" => println!("{}", serde_json::to_string_pretty(inv)?),
        "csv" => print!("{}", render::csv(inv)),
        "html" => print!("{}", render::html(inv)),
        other => anyhow::bail!("--format must be json, csv or html (got `{other}`)"),
    }
    Ok(())
}

/// `[#####     ] done/of orgs` on stderr, redrawn in place; only on a terminal.
pub(super) struct ProgressBar {
    tty: bool,
}

impl ProgressBar {
    pub(super) fn new() -> ProgressBar {
        ProgressBar { tty: std::io::stderr().is_terminal() }
    }

    pub(super) fn draw(&self, done: usize, of: usize) {
        if !self.tty || of == 0 {
            return;
        }
        let (width, done) = (30, done.min(of));
        let filled = done * width / of;
        eprint!("\r[{}{}] {done}/{of} orgs", "#".repeat(filled), " ".repeat(width - filled));
    }

    /// Ends the bar's line.
    pub(super) fn finish(&self) {
        if self.tty {
            eprintln!();
        }
    }
}

pub async fn run(config: Config, cmd: InvoicesCommand) -> anyhow::Result<()> {
    let billing = billing(&config).await?;
    match cmd {
        InvoicesCommand::Finalize { period, orgs, out } => {
            let only = (!orgs.is_empty()).then_some(orgs.as_slice());
            let bar = ProgressBar::new();
            let report = billing.finalize(&period, only, &Actor::cli(), &|done, of| bar.draw(done, of)).await?;
            bar.finish();
            let failed = report.failed.len();
            emit(out, &report, || {
                let mut s = format!(
                    "period {}: {} orgs, {} invoices made, {} already invoiced, {} failed ({} ms)",
                    report.period, report.orgs, report.created, report.unchanged, failed, report.duration_ms
                );
                for (currency, total) in &report.totals_micros {
                    s.push_str(&format!("\ninvoiced {} {currency}", decimal(*total)));
                }
                for f in &report.failed {
                    s.push_str(&format!("\nfailed {}: {}", f.org_id, f.error));
                }
                s
            })?;
            if failed > 0 {
                anyhow::bail!("{failed} org(s) could not be invoiced; fix the cause and rerun (it is idempotent)");
            }
        }
        InvoicesCommand::List { org, period, status, limit, out } => {
            let list = billing.invoices(&InvoiceFilter { org_id: org, period, status, limit }).await?;
            emit(out, &list, || {
                let mut t = table(["id", "org", "period", "plan", "status", "total"]);
                for i in &list {
                    t.add_row([
                        i.id.clone().unwrap_or_default(),
                        i.org_id.clone(),
                        i.period.clone(),
                        i.plan.clone(),
                        i.status.clone(),
                        format!("{} {}", i.total, i.currency),
                    ]);
                }
                format!("{t}\n{} invoice(s)", list.len())
            })?;
        }
        InvoicesCommand::Show { id, format } => print(&billing.invoice(&id, None).await?, &format)?,
        InvoicesCommand::Upcoming { org, format } => {
            let org = billing.billed_org(&org).await?;
            print(&billing.preview(org, Environment::Live).await?, &format)?;
        }
        InvoicesCommand::Pay { id, failed, amount_micros, reference, reason, out } => {
            let req = PaymentRequest {
                status: if failed { "failed" } else { "succeeded" }.into(),
                amount_micros,
                reference,
                failure_reason: reason,
            };
            let p = billing.record_payment(&id, req, "manual", &Actor::cli()).await?;
            emit(out, &p, || format!("{} {} of {} on {id}", p.id, p.status, decimal(p.amount_micros)))?;
        }
        InvoicesCommand::StripeExport { period } => {
            for e in billing.stripe_meter_events(&period).await? {
                println!("{e}");
            }
        }
        InvoicesCommand::Verify { id, out } => {
            let v = billing.verify(&id).await?;
            emit(out, &v, || {
                if v.matches {
                    format!("{id}: replay matches ({} micro-units)", v.stored_total_micros)
                } else {
                    format!("{id}: replay DIFFERS\n{}", v.differences.join("\n"))
                }
            })?;
            if !v.matches {
                anyhow::bail!("invoice {id} does not replay to the same amounts");
            }
        }
    }
    Ok(())
}
