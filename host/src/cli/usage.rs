//! `memhost usage …` (stats, export, reconcile, prune) and `memhost audit …`
//! (verify, list): operator commands on the same database as the server.

use chrono::Utc;
use clap::Subcommand;

use super::admin::{Output, emit, table};
use crate::audit::{self, AuditFilter};
use crate::auth::{self, AuthService};
use crate::config::Config;
use crate::metering::query::{self, Label};
use crate::metering::{UsageMeter, export, parse_period, period_end, period_of, reconcile};
use crate::store::Database;

#[derive(Subcommand)]
pub enum UsageCommand {
    /// Usage of a key or an org: totals, by endpoint, by model, by key, with
    /// first and last use (from the raw usage events).
    Stats {
        /// A key id (key_…), the key itself, or an org id (org_…).
        who: String,
        /// Days back from now.
        #[arg(long, default_value_t = 30)]
        days: u32,
        /// Also break down by endpoint, model and key.
        #[arg(long)]
        detailed: bool,
        #[command(flatten)]
        out: Output,
    },
    /// Every tenant's live usage over a billing period, for invoicing.
    Export {
        /// `YYYY-MM`; default: the current period.
        #[arg(long)]
        period: Option<String>,
        /// csv or json.
        #[arg(long, default_value = "csv")]
        format: String,
    },
    /// Recomputes a period's counters and daily rollups from the raw events
    /// and reports any difference; with --fix, repairs them. Exit code 1
    /// when differences remain.
    Reconcile {
        /// `YYYY-MM`; default: the current period.
        #[arg(long)]
        period: Option<String>,
        #[arg(long)]
        fix: bool,
        #[command(flatten)]
        out: Output,
    },
    /// Deletes raw events, audit entries and idempotency keys past their
    /// retention now (the server also does this every hour).
    Prune {
        #[command(flatten)]
        out: Output,
    },
}

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Recomputes the audit log's hash chain. Exit code 1 if it is broken.
    Verify {
        #[command(flatten)]
        out: Output,
    },
    /// Audit entries, oldest first.
    List {
        #[arg(long)]
        org: Option<String>,
        /// Where to resume: the `next` cursor a previous listing printed
        /// (a bare sequence number works too).
        #[arg(long)]
        after: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[command(flatten)]
        out: Output,
    },
}

async fn open(config: &Config) -> anyhow::Result<(Database, UsageMeter)> {
    let db = Database::connect(&config.store()).await?;
    let meter = UsageMeter::new(db.clone(), config.metrics_policy()?)?;
    Ok((db, meter))
}

pub async fn usage(config: Config, cmd: UsageCommand) -> anyhow::Result<()> {
    let (db, meter) = open(&config).await?;
    let result = run_usage(&config, &db, &meter, cmd).await;
    db.close().await;
    result
}

async fn run_usage(config: &Config, db: &Database, meter: &UsageMeter, cmd: UsageCommand) -> anyhow::Result<()> {
    match cmd {
        UsageCommand::Stats { who, days, detailed, out } => {
            let (scope, id) = if who.starts_with("org_") {
                (Label::Org, who.clone())
            } else {
                let secret =
                    auth::secret::load_or_create(config.secret.as_deref(), config.is_postgres(), &config.data_dir)?;
                let auth = AuthService::new(db.clone(), secret, std::time::Duration::ZERO);
                let key = auth.find_key(&who).await?;
                (Label::Key, key.id)
            };
            let since = Utc::now() - chrono::Duration::days(days as i64);
            let totals = query::breakdown(db, scope.clone(), &id, since, None).await?;
            let mut sections = vec![("total", totals)];
            if detailed {
                for (name, label) in
                    [("by endpoint", Label::Endpoint), ("by model", Label::Model), ("by key", Label::Key)]
                {
                    sections.push((name, query::breakdown(db, scope.clone(), &id, since, Some(label)).await?));
                }
            }
            let report: std::collections::BTreeMap<&str, &Vec<query::Breakdown>> =
                sections.iter().map(|(n, b)| (*n, b)).collect();
            emit(out, &report, || {
                let mut text = format!(
                    "Usage of {} {id} over the last {days} days\n",
                    if scope == Label::Org { "org" } else { "key" }
                );
                for (name, rows) in &sections {
                    let mut t = table([name, "requests", "tokens", "memories written", "first used", "last used"]);
                    for r in rows.iter() {
                        let time = |t: Option<chrono::DateTime<Utc>>| {
                            t.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string()).unwrap_or_default()
                        };
                        t.add_row([
                            r.group.clone(),
                            r.requests.to_string(),
                            r.tokens.to_string(),
                            r.memories_written.to_string(),
                            time(r.first_used),
                            time(r.last_used),
                        ]);
                    }
                    if rows.is_empty() {
                        t.add_row(["(no usage)", "0", "0", "0", "", ""]);
                    }
                    text.push_str(&format!("\n{t}\n"));
                }
                text
            })
        }
        UsageCommand::Export { period, format } => {
            let period = period.unwrap_or_else(|| period_of(Utc::now()));
            let start =
                parse_period(&period).ok_or_else(|| anyhow::anyhow!("--period must be YYYY-MM (got `{period}`)"))?;
            let secret =
                auth::secret::load_or_create(config.secret.as_deref(), config.is_postgres(), &config.data_dir)?;
            let orgs = AuthService::new(db.clone(), secret, std::time::Duration::ZERO).list_orgs().await?;
            let policy = meter.policy();
            let rows = export::build(db, &policy.metrics, &orgs, &period, start, period_end(start)).await?;
            let export = export::UsageExport { period: period.clone(), rows };
            match format.as_str() {
                "csv" => {
                    let names: Vec<String> = policy.metrics.iter().map(|m| m.name.clone()).collect();
                    print!("{}", export::csv(&export, &names));
                }
                "json" => println!("{}", serde_json::to_string_pretty(&export)?),
                other => anyhow::bail!("--format must be csv or json (got `{other}`)"),
            }
            Ok(())
        }
        UsageCommand::Reconcile { period, fix, out } => {
            let period = period.unwrap_or_else(|| period_of(Utc::now()));
            if parse_period(&period).is_none() {
                anyhow::bail!("--period must be YYYY-MM (got `{period}`)");
            }
            let report = reconcile::recompute(db, &meter.policy(), &period, None, fix).await?;
            emit(out, &report, || {
                let mut text = format!(
                    "Period {}: {} counter and rollup values checked against the raw events, {} differ{}.\n",
                    report.period,
                    report.checked,
                    report.differences.len(),
                    if fix && !report.differences.is_empty() { " (repaired)" } else { "" }
                );
                if !report.differences.is_empty() {
                    let mut t = table(["table", "org", "env", "bucket", "metric", "stored", "from events"]);
                    for d in &report.differences {
                        t.add_row([
                            d.table.to_string(),
                            d.org_id.clone(),
                            d.environment.to_string(),
                            d.bucket.clone(),
                            d.metric.clone(),
                            d.stored.to_string(),
                            d.expected.to_string(),
                        ]);
                    }
                    text.push_str(&t.to_string());
                }
                text
            })?;
            if !fix && !report.differences.is_empty() {
                std::process::exit(1);
            }
            Ok(())
        }
        UsageCommand::Prune { out } => {
            let pruned = meter.prune().await?;
            emit(out, &pruned, || {
                format!(
                    "Deleted {} usage events, {} audit entries and {} idempotency keys past their retention.",
                    pruned.events, pruned.audit_entries, pruned.idempotency_keys
                )
            })
        }
    }
}

pub async fn audit(config: Config, cmd: AuditCommand) -> anyhow::Result<()> {
    let db = Database::connect(&config.store()).await?;
    let result = match cmd {
        AuditCommand::Verify { out } => {
            let v = audit::verify(&db).await?;
            emit(out, &v, || {
                if v.ok {
                    format!(
                        "The audit log is intact: {} entries ({}–{}) chain to the head; {} API calls match their seals.",
                        v.entries,
                        v.first_seq.unwrap_or(0),
                        v.last_seq.unwrap_or(0),
                        v.sealed_calls
                    )
                } else {
                    format!(
                        "The audit log is BROKEN at entry {}: {}",
                        v.broken_at.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
                        v.problem.clone().unwrap_or_default()
                    )
                }
            })?;
            if !v.ok {
                db.close().await;
                std::process::exit(1);
            }
            Ok(())
        }
        AuditCommand::List { org, after, limit, out } => {
            let cursor = match after {
                None => audit::Cursor::default(),
                Some(a) => audit::Cursor::parse(&a)
                    .ok_or_else(|| anyhow::anyhow!("--after {a} is not a cursor a listing printed"))?,
            };
            let page = audit::list(&db, &AuditFilter { org_id: org, cursor, limit, ..Default::default() }).await?;
            let next = page.next.map(|c| c.encode());
            let entries = page.entries;
            emit(out, &entries, || {
                let mut t = table(["seq", "time", "kind", "org", "actor", "action", "target", "status"]);
                for e in &entries {
                    t.add_row([
                        e.seq.to_string(),
                        e.occurred_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                        e.kind.as_str().to_string(),
                        e.org_id.clone().unwrap_or_default(),
                        e.actor.clone(),
                        e.action.clone(),
                        e.target.clone().unwrap_or_default(),
                        e.status.map(|s| s.to_string()).unwrap_or_default(),
                    ]);
                }
                match &next {
                    Some(n) => format!("{t}\nnext: --after {n}"),
                    None => t.to_string(),
                }
            })
        }
    };
    db.close().await;
    result
}
