//! Invoices: the live preview of the current period, period close
//! (finalize), reads, and the deterministic replay that verifies a
//! finalized invoice.
//!
//! Finalizing is idempotent: an org has at most one invoice per period
//! (a unique key), and its credits are drawn, its usage marked invoiced and
//! its `invoice.created` event recorded in the transaction that inserts it,
//! so a rerun or a concurrent run changes nothing. Usage counted for a
//! closed period after its invoice goes on the next invoice, stated there.
//! Test-environment usage is previewed but never invoiced.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::BillingService;
use super::context::{self, BilledOrg, BillingPeriod, LateUsage, OrgPeriod};
use super::plans::version_of;
use crate::audit::{self, Actor, NewEntry};
use crate::auth::Environment;
use crate::auth::keys::random_base62;
use crate::plugins::pricing::{Invoice, InvoiceLine, LineKind, RateError, RatingInput};
use crate::plugins::{Active, PluginFailure};
use crate::store::Database;
use crate::store::sql::{Row, pow2_chunks, sql, value_rows};

/// Orgs priced and written per transaction when closing a period.
const CHUNK: usize = 500;

/// Failures of billing operations, mapped once to the envelope in `api::error`.
#[derive(Debug, thiserror::Error)]
pub enum BillingError {
    #[error("{0}")]
    Invalid(String),
    #[error("period {period} is not over yet (it ends {ends}); only a closed period can be finalized")]
    PeriodOpen { period: String, ends: DateTime<Utc> },
    #[error("invoice {0} not found")]
    NotFound(String),
    #[error("org {0} not found")]
    OrgNotFound(String),
    #[error("no pricing plugin is active for plan `{0}`")]
    NoPricing(String),
    #[error("pricing failed: {0}")]
    Pricing(String),
    /// A pricing change the active plugin refuses.
    #[error("{0}")]
    Rejected(String),
    #[error("{0}")]
    Conflict(String),
    /// Activating a pricing version failed (an invalid config names its fields).
    #[error(transparent)]
    Plugin(crate::plugins::PluginError),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

/// One line as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InvoiceLineView {
    pub kind: LineKind,
    pub metric: Option<String>,
    pub reference: Option<String>,
    pub description: String,
    pub quantity: u64,
    /// Micro-units of the currency.
    pub amount_micros: i64,
    /// The same, as a decimal (`"49.00"`).
    pub amount: String,
}

/// What priced an invoice: enough to replay it exactly.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PricedBy {
    pub plugin_id: String,
    pub plugin_name: String,
    pub plugin_version: String,
    pub activation_id: String,
    /// SHA-256 of the pricing config (the policy) the plugin was given.
    pub config_digest: String,
    /// The config's `pricing_version`, if it has one.
    pub pricing_version: Option<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct InvoiceView {
    /// None for a preview (`status: draft`).
    pub id: Option<String>,
    pub org_id: String,
    /// `YYYY-MM`.
    pub period: String,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    /// `draft` (a preview), `finalized`, `paid`, `payment_failed` or `void`.
    pub status: String,
    /// false for a test key's preview of its sandbox usage.
    pub livemode: bool,
    /// The plan at the end of the period.
    pub plan: String,
    pub currency: String,
    pub lines: Vec<InvoiceLineView>,
    /// Base, usage and add-on lines, in micro-units.
    pub subtotal_micros: i64,
    /// Discount lines (≤ 0).
    pub discounts_micros: i64,
    /// Credits drawn (≤ 0).
    pub credits_applied_micros: i64,
    /// What is due: the sum of all lines. No tax is computed.
    pub total_micros: i64,
    /// `total_micros` as a decimal.
    pub total: String,
    /// Payments recorded so far.
    pub amount_paid_micros: i64,
    /// What is left to pay.
    pub amount_due_micros: i64,
    /// This period's units per metric.
    pub usage: BTreeMap<String, u64>,
    /// Units of earlier, closed periods counted after their invoice.
    pub late_usage: Vec<LateUsage>,
    pub pricing: PricedBy,
    pub created_at: Option<DateTime<Utc>>,
}

/// Micro-units as a decimal with at least two places: `49000000` → `49.00`.
pub fn decimal(micros: i64) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let m = micros.unsigned_abs();
    let frac = format!("{:06}", m % 1_000_000);
    let frac = frac.trim_end_matches('0');
    let frac = if frac.len() < 2 { &format!("{frac:0<2}") } else { frac };
    format!("{sign}{}.{frac}", m / 1_000_000)
}

/// (subtotal, discounts, credits) of the lines.
fn totals(lines: &[InvoiceLine]) -> (i64, i64, i64) {
    let sum = |kinds: &[LineKind]| lines.iter().filter(|l| kinds.contains(&l.kind)).map(|l| l.amount).sum::<i64>();
    (sum(&[LineKind::Base, LineKind::Usage, LineKind::Addon]), sum(&[LineKind::Discount]), sum(&[LineKind::Credit]))
}

fn line_views(lines: &[InvoiceLine]) -> Vec<InvoiceLineView> {
    lines
        .iter()
        .map(|l| InvoiceLineView {
            kind: l.kind,
            metric: l.metric.clone(),
            reference: l.reference.clone(),
            description: l.description.clone(),
            quantity: l.quantity,
            amount_micros: l.amount,
            amount: decimal(l.amount),
        })
        .collect()
}

pub fn config_digest(config: &str) -> String {
    hex::encode(Sha256::digest(config.as_bytes()))
}

fn pricing_version(config: &str) -> Option<String> {
    version_of(&serde_json::from_str(config).ok()?)
}

fn priced_by(active: &Active) -> PricedBy {
    PricedBy {
        plugin_id: active.plugin.record.id.clone(),
        plugin_name: active.plugin.record.name.clone(),
        plugin_version: active.plugin.record.version.clone(),
        activation_id: active.activation.id.clone(),
        config_digest: config_digest(&active.config),
        pricing_version: pricing_version(&active.config),
    }
}

/// A plugin's refusal as its message and code; any other failure as itself.
pub(super) fn failure_text(f: &PluginFailure) -> String {
    match f {
        PluginFailure::Guest(g, _) => format!("{} ({})", g.message, g.code),
        other => other.to_string(),
    }
}

/// How a period close went.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct FinalizeReport {
    pub period: String,
    /// Orgs that existed before the period ended (and were asked for).
    pub orgs: usize,
    /// Invoices made by this run.
    pub created: usize,
    /// Orgs already invoiced for the period: nothing changed.
    pub unchanged: usize,
    /// Orgs that could not be priced; a rerun retries them.
    pub failed: Vec<FinalizeFailure>,
    /// Sum of the totals of the invoices made, per currency (micro-units).
    pub totals_micros: BTreeMap<String, i64>,
    pub duration_ms: u64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FinalizeFailure {
    pub org_id: String,
    pub error: String,
}

/// Result of replaying a finalized invoice.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct InvoiceVerification {
    pub invoice_id: String,
    /// The replay gave the same lines and totals, to the micro-unit.
    pub matches: bool,
    pub plugin_id: String,
    pub config_digest: String,
    pub stored_total_micros: i64,
    pub replayed_total_micros: Option<i64>,
    /// What differs (empty when it matches).
    pub differences: Vec<String>,
}

/// Filters of the invoice list.
#[derive(Debug, Clone, Default)]
pub struct InvoiceFilter {
    pub org_id: Option<String>,
    pub period: Option<String>,
    pub status: Option<String>,
    pub limit: usize,
}

/// One org priced, waiting to be written.
struct Priced {
    ctx: OrgPeriod,
    invoice: Invoice,
    by: Arc<PricedBy>,
    active: Arc<Active>,
    draws: Vec<(String, i64)>,
}

impl BillingService {
    fn db(&self) -> &Database {
        self.inner.meter.db()
    }

    /// The current period priced now by the active plugin (nothing stored).
    pub async fn preview(&self, org: BilledOrg, env: Environment) -> Result<InvoiceView, BillingError> {
        let period = BillingPeriod::containing(Utc::now());
        let policy = self.inner.meter.policy();
        let ctx = context::load(self.db(), &policy, std::slice::from_ref(&org), env, &period)
            .await?
            .pop()
            .ok_or_else(|| BillingError::OrgNotFound(org.id.clone()))?;
        let pricing = self.inner.plugins.pricing();
        let active = pricing.active(&org.id, &ctx.plan).ok_or_else(|| BillingError::NoPricing(ctx.plan.clone()))?;
        let invoice = pricing.rate(&active, &ctx.input).await.map_err(|f| BillingError::Pricing(failure_text(&f)))?;
        if env == Environment::Live {
            self.compare_in_shadow(&org.id, &ctx.input, &invoice);
        }
        Ok(draft(&ctx, &period, &invoice, priced_by(&active), env == Environment::Live))
    }

    /// An org as billing sees it.
    pub async fn billed_org(&self, org_id: &str) -> Result<BilledOrg, BillingError> {
        let row = sql("SELECT id, plan, overrides FROM orgs WHERE id = $1")
            .bind(org_id)
            .fetch_optional(self.db().read())
            .await?
            .ok_or_else(|| BillingError::OrgNotFound(org_id.to_string()))?;
        context::billed_org(&row).map_err(Into::into)
    }

    /// Closes a period: an immutable invoice for every org (or the ones
    /// named) that existed before it ended and has none yet. `progress` is
    /// told (done, of) after each chunk.
    pub async fn finalize(
        &self,
        period: &str,
        only: Option<&[String]>,
        actor: &Actor,
        progress: &(dyn Fn(usize, usize) + Sync),
    ) -> Result<FinalizeReport, BillingError> {
        let started = std::time::Instant::now();
        let period = BillingPeriod::parse(period)
            .ok_or_else(|| BillingError::Invalid(format!("period must be YYYY-MM (got `{period}`)")))?;
        if period.end > Utc::now() {
            return Err(BillingError::PeriodOpen { period: period.name, ends: period.end });
        }
        let db = self.db();
        let mut orgs = context::orgs_of(db, &period).await?;
        if let Some(only) = only {
            let wanted: HashSet<&str> = only.iter().map(String::as_str).collect();
            let known: HashSet<&str> = orgs.iter().map(|o| o.id.as_str()).collect();
            if let Some(missing) = wanted.iter().find(|id| !known.contains(**id)) {
                return Err(BillingError::OrgNotFound(format!("{missing} (or it was created after {})", period.name)));
            }
            orgs.retain(|o| wanted.contains(o.id.as_str()));
        }
        let invoiced: HashSet<String> = sql("SELECT org_id FROM invoices WHERE period = $1")
            .bind(&period.name)
            .fetch_all(db.read())
            .await?
            .iter()
            .map(|r| r.get::<String>("org_id"))
            .collect::<sqlx::Result<_>>()?;
        let mut report = FinalizeReport { period: period.name.clone(), orgs: orgs.len(), ..Default::default() };
        let todo: Vec<BilledOrg> = orgs.into_iter().filter(|o| !invoiced.contains(&o.id)).collect();
        report.unchanged = report.orgs - todo.len();
        progress(report.unchanged, report.orgs);

        let policy = self.inner.meter.policy();
        let pricing = self.inner.plugins.pricing();
        let mut done = report.unchanged;
        // What priced an invoice is the same for every org of an activation:
        // its config is hashed and parsed once per run, not once per org.
        let mut priced_by_activation: HashMap<String, Arc<PricedBy>> = HashMap::new();
        for chunk in todo.chunks(CHUNK) {
            let contexts = context::load(db, &policy, chunk, Environment::Live, &period).await?;
            let mut priced = Vec::with_capacity(contexts.len());
            for ctx in contexts {
                let Some(active) = pricing.active(&ctx.org_id, &ctx.plan) else {
                    report.failed.push(FinalizeFailure {
                        org_id: ctx.org_id.clone(),
                        error: BillingError::NoPricing(ctx.plan.clone()).to_string(),
                    });
                    continue;
                };
                let invoice = match pricing.rate(&active, &ctx.input).await {
                    Ok(i) => i,
                    Err(f) => {
                        report.failed.push(FinalizeFailure { org_id: ctx.org_id.clone(), error: failure_text(&f) });
                        continue;
                    }
                };
                match credit_draws(&ctx.input, &invoice) {
                    Ok(draws) => {
                        let by = priced_by_activation
                            .entry(active.activation.id.clone())
                            .or_insert_with(|| Arc::new(priced_by(&active)))
                            .clone();
                        priced.push(Priced { by, active, ctx, invoice, draws })
                    }
                    Err(e) => report.failed.push(FinalizeFailure { org_id: ctx.org_id.clone(), error: e }),
                }
            }
            match write_chunk(db, &period, &priced, &policy).await {
                Ok(created) => {
                    for (p, made) in priced.iter().zip(created) {
                        if made {
                            report.created += 1;
                            *report.totals_micros.entry(p.invoice.currency.clone()).or_insert(0) += p.invoice.total;
                        } else {
                            report.unchanged += 1;
                        }
                    }
                }
                // Nothing of the chunk was written; a rerun retries it.
                Err(e) => {
                    tracing::warn!(error = %e, period = %period.name, "finalizing a chunk of orgs failed");
                    for p in &priced {
                        report.failed.push(FinalizeFailure { org_id: p.ctx.org_id.clone(), error: e.to_string() });
                    }
                }
            }
            done += chunk.len();
            progress(done, report.orgs);
        }
        report.duration_ms = started.elapsed().as_millis() as u64;
        let after = json!({
            "orgs": report.orgs, "created": report.created, "unchanged": report.unchanged,
            "failed": report.failed.len(), "totals_micros": report.totals_micros,
        });
        audit::record(db, vec![NewEntry::action(actor, None, "invoices.finalized", &period.name, None, Some(after))])
            .await?;
        Ok(report)
    }

    pub async fn invoice(&self, id: &str, org_id: Option<&str>) -> Result<InvoiceView, BillingError> {
        let row = sql(format!(
            "SELECT {COLUMNS} FROM invoices i JOIN plugins p ON p.digest = i.plugin_digest WHERE i.id = $1"
        ))
        .bind(id)
        .fetch_optional(self.db().read())
        .await?
        .ok_or_else(|| BillingError::NotFound(id.to_string()))?;
        let view = stored_view(&row)?;
        // Another org's invoice does not exist for this caller.
        if org_id.is_some_and(|o| o != view.org_id) {
            return Err(BillingError::NotFound(id.to_string()));
        }
        Ok(view)
    }

    pub async fn invoices(&self, f: &InvoiceFilter) -> Result<Vec<InvoiceView>, BillingError> {
        let mut q =
            format!("SELECT {COLUMNS} FROM invoices i JOIN plugins p ON p.digest = i.plugin_digest WHERE 1 = 1");
        let mut args = Vec::new();
        for (col, v) in [("i.org_id", &f.org_id), ("i.period", &f.period), ("i.status", &f.status)] {
            if let Some(v) = v {
                args.push(v.clone());
                q.push_str(&format!(" AND {col} = ${}", args.len()));
            }
        }
        q.push_str(&format!(" ORDER BY i.period DESC, i.org_id LIMIT {}", f.limit.clamp(1, 1000)));
        let mut s = sql(q);
        for a in args {
            s = s.bind(a);
        }
        s.fetch_all(self.db().read()).await?.iter().map(|r| stored_view(r).map_err(Into::into)).collect()
    }

    /// Re-prices a finalized invoice with the plugin and config it records,
    /// from the input it records, and compares to the micro-unit.
    pub async fn verify(&self, id: &str) -> Result<InvoiceVerification, BillingError> {
        let row = sql(
            "SELECT i.id, i.lines, i.subtotal, i.discounts, i.credits_applied, i.total, i.currency, i.rating_input, \
             i.plugin_digest AS plugin_id, i.config_digest, c.config FROM invoices i JOIN pricing_configs c ON c.digest = i.config_digest \
             WHERE i.id = $1",
        )
        .bind(id)
        .fetch_optional(self.db().read())
        .await?
        .ok_or_else(|| BillingError::NotFound(id.to_string()))?;
        let lines: Vec<InvoiceLine> = row.json("lines")?;
        let input: RatingInput = row.json("rating_input")?;
        let config: String = row.get("config")?;
        let mut v = InvoiceVerification {
            invoice_id: id.to_string(),
            matches: false,
            plugin_id: row.get("plugin_id")?,
            config_digest: row.get("config_digest")?,
            stored_total_micros: row.get("total")?,
            replayed_total_micros: None,
            differences: Vec::new(),
        };
        if config_digest(&config) != v.config_digest {
            v.differences.push("the stored pricing config does not match its digest".into());
        }
        let stored = (row.get::<i64>("subtotal")?, row.get::<i64>("discounts")?, row.get::<i64>("credits_applied")?);
        if totals(&lines) != stored || lines.iter().map(|l| l.amount).sum::<i64>() != v.stored_total_micros {
            v.differences.push("the stored totals are not the sums of the stored lines".into());
        }
        match self.inner.plugins.pricing().rate_stored(&v.plugin_id, &config, &input).await {
            Ok(replayed) => {
                v.replayed_total_micros = Some(replayed.total);
                let currency: String = row.get("currency")?;
                if replayed.currency != currency {
                    v.differences.push(format!("currency: stored {currency}, replayed {}", replayed.currency));
                }
                if replayed.total != v.stored_total_micros {
                    v.differences.push(format!("total: stored {}, replayed {}", v.stored_total_micros, replayed.total));
                }
                let n = lines.len().max(replayed.lines.len());
                for i in 0..n {
                    match (lines.get(i), replayed.lines.get(i)) {
                        (Some(a), Some(b)) if a == b => {}
                        (a, b) => v.differences.push(format!(
                            "line {}: stored {}, replayed {}",
                            i + 1,
                            a.map_or("nothing".into(), |l| format!("{} {}", l.description, l.amount)),
                            b.map_or("nothing".into(), |l| format!("{} {}", l.description, l.amount)),
                        )),
                    }
                }
            }
            Err(RateError::Plugin(e)) => v.differences.push(format!("the plugin that priced it cannot be loaded: {e}")),
            Err(RateError::Failed(f)) => v.differences.push(format!("replay failed: {}", failure_text(&f))),
        }
        v.matches = v.differences.is_empty();
        Ok(v)
    }
}

/// How much each credit the invoice names is drawn; refused if the plugin
/// draws a credit the org does not hold, or more than is left.
fn credit_draws(input: &RatingInput, invoice: &Invoice) -> Result<Vec<(String, i64)>, String> {
    let mut draws: BTreeMap<String, i64> = BTreeMap::new();
    for l in invoice.lines.iter().filter(|l| l.kind == LineKind::Credit) {
        let Some(id) = &l.reference else {
            return Err(format!("credit line `{}` names no credit", l.description));
        };
        if l.amount > 0 {
            return Err(format!("credit line `{}` adds to the total", l.description));
        }
        *draws.entry(id.clone()).or_insert(0) += -l.amount;
    }
    for (id, amount) in &draws {
        let held = input.credits.iter().find(|c| &c.id == id).map(|c| c.remaining);
        match held {
            None => return Err(format!("the invoice draws credit {id}, which the org does not hold")),
            Some(left) if left < *amount => {
                return Err(format!("the invoice draws {amount} from credit {id}, which has {left} left"));
            }
            _ => {}
        }
    }
    Ok(draws.into_iter().filter(|(_, a)| *a > 0).collect())
}

/// Writes a chunk's invoices in one transaction, a few multi-row
/// statements for the whole chunk (per-org statements made closing 100 000
/// orgs on PostgreSQL a matter of round trips); for each, whether this run
/// made it (false: another run had).
async fn write_chunk(
    db: &Database,
    period: &BillingPeriod,
    priced: &[Priced],
    policy: &crate::metering::policy::MetricsPolicy,
) -> sqlx::Result<Vec<bool>> {
    if priced.is_empty() {
        return Ok(Vec::new());
    }
    let now = crate::auth::now();
    let mut tx = db.begin().await?;
    let mut configs: HashMap<&str, &Priced> = HashMap::new();
    for p in priced {
        configs.entry(p.by.config_digest.as_str()).or_insert(p);
    }
    for (digest, p) in configs {
        sql("INSERT INTO pricing_configs (digest, pricing_version, config, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (digest) DO NOTHING")
        .bind(digest)
        .bind(&p.by.pricing_version)
        .bind(&p.active.config)
        .bind(now)
        .execute(&mut tx)
        .await?;
    }

    // The invoices; the unique (org, period) key keeps a concurrent run's.
    let rows: Vec<(&Priced, String)> = priced.iter().map(|p| (p, format!("inv_{}", random_base62(20)))).collect();
    let mut made: HashSet<&str> = HashSet::new();
    for part in pow2_chunks(&rows, 128) {
        let mut q = sql(format!(
            "INSERT INTO invoices (id, org_id, period, status, plan, currency, subtotal, discounts, credits_applied, \
             total, lines, usage, late_usage, rating_input, plugin_digest, activation_id, config_digest, created_at) \
             VALUES {} ON CONFLICT (org_id, period) DO NOTHING RETURNING org_id",
            value_rows(part.len(), 18)
        ));
        for (p, id) in part {
            let (subtotal, discounts, credits) = totals(&p.invoice.lines);
            q = q
                .bind(id)
                .bind(&p.ctx.org_id)
                .bind(&period.name)
                .bind("finalized")
                .bind(&p.ctx.plan)
                .bind(&p.invoice.currency)
                .bind(subtotal)
                .bind(discounts)
                .bind(credits)
                .bind(p.invoice.total)
                .bind(to_json(&p.invoice.lines))
                .bind(to_json(&p.ctx.usage))
                .bind(to_json(&p.ctx.late))
                .bind(to_json(&p.ctx.input))
                .bind(&p.by.plugin_id)
                .bind(&p.by.activation_id)
                .bind(&p.by.config_digest)
                .bind(now);
        }
        for r in q.fetch_all(&mut tx).await? {
            let org: String = r.get("org_id")?;
            if let Some((p, _)) = part.iter().find(|(p, _)| p.ctx.org_id == org) {
                made.insert(p.ctx.org_id.as_str());
            }
        }
    }

    // For the invoices made: credits drawn, usage marked invoiced, events.
    let mut covered: Vec<(&str, &str, &str, u64)> = Vec::new();
    let mut events: Vec<(String, &str, String)> = Vec::new();
    for (p, id) in rows.iter().filter(|(p, _)| made.contains(p.ctx.org_id.as_str())) {
        for (credit, amount) in &p.draws {
            let n = sql(
                "UPDATE customer_credits SET remaining = remaining - $1 WHERE id = $2 AND org_id = $3 AND remaining >= $1",
            )
            .bind(*amount)
            .bind(credit)
            .bind(&p.ctx.org_id)
            .execute(&mut tx)
            .await?;
            if n != 1 {
                // Changed since it was read (revoked, or drawn by a concurrent run).
                return Err(sqlx::Error::Protocol(format!(
                    "credit {credit} changed while the invoice was priced; rerun"
                )));
            }
        }
        let org = p.ctx.org_id.as_str();
        covered.extend(p.ctx.usage.iter().map(|(m, q)| (org, period.name.as_str(), m.as_str(), *q)));
        covered.extend(
            p.ctx
                .late
                .iter()
                .filter(|l| context::additive(policy, &l.metric))
                .map(|l| (org, l.period.as_str(), l.metric.as_str(), l.quantity)),
        );
        let payload = json!({
            "invoice_id": id, "org_id": org, "period": period.name, "currency": p.invoice.currency,
            "total_micros": p.invoice.total, "total": decimal(p.invoice.total),
        });
        events.push((format!("evt_{}", random_base62(20)), org, payload.to_string()));
    }
    for part in pow2_chunks(&covered, 256) {
        let mut q = sql(format!(
            "INSERT INTO invoiced_usage (org_id, period, metric, quantity) VALUES {} ON CONFLICT (org_id, period, metric) \
             DO UPDATE SET quantity = invoiced_usage.quantity + excluded.quantity",
            value_rows(part.len(), 4)
        ));
        for (org, of_period, metric, quantity) in part {
            q = q.bind(*org).bind(*of_period).bind(*metric).bind(*quantity);
        }
        q.execute(&mut tx).await?;
    }
    for part in pow2_chunks(&events, 128) {
        let mut q = sql(format!(
            "INSERT INTO billing_events (id, type, org_id, payload, occurred_at) VALUES {}",
            value_rows(part.len(), 5)
        ));
        for (id, org, payload) in part {
            q = q.bind(id).bind("invoice.created").bind(*org).bind(payload).bind(now);
        }
        q.execute(&mut tx).await?;
    }
    tx.commit().await?;
    Ok(priced.iter().map(|p| made.contains(p.ctx.org_id.as_str())).collect())
}

/// A stored column's JSON (these types cannot fail to serialize).
fn to_json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

const COLUMNS: &str = "i.id, i.org_id, i.period, i.status, i.plan, i.currency, i.subtotal, i.discounts, \
    i.credits_applied, i.total, i.amount_paid, i.lines, i.usage, i.late_usage, i.plugin_digest AS plugin_id, i.activation_id, i.config_digest, \
    i.created_at, p.name AS plugin_name, p.version AS plugin_version, \
    (SELECT pricing_version FROM pricing_configs c WHERE c.digest = i.config_digest) AS pricing_version";

fn stored_view(r: &Row) -> sqlx::Result<InvoiceView> {
    let period = BillingPeriod::parse(&r.get::<String>("period")?)
        .ok_or_else(|| sqlx::Error::Decode("invoice with a malformed period".into()))?;
    let lines: Vec<InvoiceLine> = r.json("lines")?;
    let total: i64 = r.get("total")?;
    Ok(InvoiceView {
        id: Some(r.get("id")?),
        org_id: r.get("org_id")?,
        period: period.name,
        period_start: period.start,
        period_end: period.end,
        status: r.get("status")?,
        livemode: true,
        plan: r.get("plan")?,
        currency: r.get("currency")?,
        lines: line_views(&lines),
        subtotal_micros: r.get("subtotal")?,
        discounts_micros: r.get("discounts")?,
        credits_applied_micros: r.get("credits_applied")?,
        total_micros: total,
        total: decimal(total),
        amount_paid_micros: r.get("amount_paid")?,
        amount_due_micros: (total - r.get::<i64>("amount_paid")?).max(0),
        usage: r.json("usage")?,
        late_usage: r.json("late_usage")?,
        pricing: PricedBy {
            plugin_id: r.get("plugin_id")?,
            plugin_name: r.get("plugin_name")?,
            plugin_version: r.get("plugin_version")?,
            activation_id: r.get("activation_id")?,
            config_digest: r.get("config_digest")?,
            pricing_version: r.get("pricing_version")?,
        },
        created_at: Some(r.time("created_at")?),
    })
}

/// A preview: priced, not stored.
fn draft(ctx: &OrgPeriod, period: &BillingPeriod, invoice: &Invoice, pricing: PricedBy, livemode: bool) -> InvoiceView {
    let (subtotal, discounts, credits) = totals(&invoice.lines);
    InvoiceView {
        id: None,
        org_id: ctx.org_id.clone(),
        period: period.name.clone(),
        period_start: period.start,
        period_end: period.end,
        status: "draft".into(),
        livemode,
        plan: ctx.plan.clone(),
        currency: invoice.currency.clone(),
        lines: line_views(&invoice.lines),
        subtotal_micros: subtotal,
        discounts_micros: discounts,
        credits_applied_micros: credits,
        total_micros: invoice.total,
        total: decimal(invoice.total),
        amount_paid_micros: 0,
        amount_due_micros: invoice.total.max(0),
        usage: ctx.usage.clone(),
        late_usage: ctx.late.clone(),
        pricing,
        created_at: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals() {
        assert_eq!(decimal(49_000_000), "49.00");
        assert_eq!(decimal(0), "0.00");
        assert_eq!(decimal(-1_230_000), "-1.23");
        assert_eq!(decimal(1_234_500), "1.2345");
        assert_eq!(decimal(5), "0.000005");
    }
}
