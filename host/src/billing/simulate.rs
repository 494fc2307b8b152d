//! Before a pricing plugin or policy is activated: price recorded periods
//! with it and compare (simulation), or price every live preview with it
//! beside the active one (shadow mode).
//!
//! A finalized period is re-priced from the exact input its invoice
//! recorded, against the invoice's total; a period without invoices is
//! priced from its metered usage by both the active plugin and the
//! candidate. Nothing is stored either way.

use std::collections::{BTreeMap, HashSet, VecDeque};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::BillingService;
use super::context::{self, BillingPeriod};
use super::invoices::BillingError;
use crate::auth::Environment;
use crate::plugins::pricing::{Invoice, InvoiceLine, RateError, RatingInput};
use crate::store::sql::sql;

/// Orgs read per query when a period has no invoices.
const CHUNK: usize = 500;
/// Shadow differences kept for `GET /admin/plugins/{id}/shadow`.
const SHADOW_KEPT: usize = 100;

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SimulateRequest {
    /// Periods to price, `YYYY-MM`.
    pub periods: Vec<String>,
    /// Only these orgs (default: every org of each period).
    pub orgs: Option<Vec<String>>,
    /// The candidate's config (a candidate policy); default: the active
    /// global pricing config.
    #[schema(value_type = Option<Object>)]
    pub config: Option<Value>,
    /// Orgs listed in the answer at most (the summary counts all); default 1000.
    pub limit: Option<usize>,
}

#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct SimulationSummary {
    /// Org-periods priced.
    pub priced: usize,
    pub up: usize,
    pub down: usize,
    pub unchanged: usize,
    /// Org-periods the candidate (or the active plugin) could not price.
    pub failed: usize,
    /// Totals per currency, micro-units.
    pub revenue_before_micros: BTreeMap<String, i64>,
    pub revenue_after_micros: BTreeMap<String, i64>,
    pub revenue_delta_micros: BTreeMap<String, i64>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LineChange {
    pub description: String,
    pub before_micros: Option<i64>,
    pub after_micros: Option<i64>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct OrgSimulation {
    pub org_id: String,
    pub period: String,
    /// `invoice` (a finalized invoice's input and total) or `usage`.
    pub basis: String,
    pub currency: String,
    pub before_micros: Option<i64>,
    pub after_micros: Option<i64>,
    pub delta_micros: Option<i64>,
    pub changed_lines: Vec<LineChange>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SimulationReport {
    pub plugin_id: String,
    pub config_digest: String,
    pub periods: Vec<String>,
    pub summary: SimulationSummary,
    /// Orgs whose total changed or that failed, largest change first.
    pub results: Vec<OrgSimulation>,
    /// More orgs changed than `limit` lists.
    pub truncated: bool,
    pub duration_ms: u64,
}

fn failure_text(f: &RateError) -> String {
    match f {
        RateError::Failed(f) => super::invoices::failure_text(f),
        other => other.to_string(),
    }
}

fn key(l: &InvoiceLine) -> String {
    format!(
        "{:?}|{}|{}|{}",
        l.kind,
        l.metric.as_deref().unwrap_or(""),
        l.reference.as_deref().unwrap_or(""),
        l.description
    )
}

/// Lines that differ between two invoices (matched by kind, metric,
/// reference and description).
fn changed_lines(before: &[InvoiceLine], after: &[InvoiceLine]) -> Vec<LineChange> {
    let mut b: BTreeMap<String, (String, i64)> = BTreeMap::new();
    for l in before {
        b.entry(key(l)).or_insert((l.description.clone(), 0)).1 += l.amount;
    }
    let mut a: BTreeMap<String, (String, i64)> = BTreeMap::new();
    for l in after {
        a.entry(key(l)).or_insert((l.description.clone(), 0)).1 += l.amount;
    }
    let keys: std::collections::BTreeSet<&String> = b.keys().chain(a.keys()).collect();
    keys.into_iter()
        .filter_map(|k| {
            let (x, y) = (b.get(k), a.get(k));
            if x.map(|v| v.1) == y.map(|v| v.1) {
                return None;
            }
            Some(LineChange {
                description: x.or(y).map(|v| v.0.clone()).unwrap_or_default(),
                before_micros: x.map(|v| v.1),
                after_micros: y.map(|v| v.1),
            })
        })
        .collect()
}

impl BillingService {
    /// Prices recorded periods with a candidate pricing plugin (and config)
    /// and compares with what was, or would be, invoiced.
    pub async fn simulate(
        &self,
        plugin_id: &str,
        req: SimulateRequest,
        progress: &(dyn Fn(usize, usize) + Sync),
    ) -> Result<SimulationReport, BillingError> {
        let started = std::time::Instant::now();
        if req.periods.is_empty() || req.periods.len() > 24 {
            return Err(BillingError::Invalid("periods must name 1 to 24 periods (YYYY-MM)".into()));
        }
        let periods = req
            .periods
            .iter()
            .map(|p| {
                BillingPeriod::parse(p)
                    .ok_or_else(|| BillingError::Invalid(format!("period must be YYYY-MM (got `{p}`)")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let plugin = self.inner.plugins.find(plugin_id).await.map_err(BillingError::Plugin)?;
        if plugin.kind != crate::plugins::PluginKind::Pricing {
            return Err(BillingError::Invalid(format!("plugin {plugin_id} is a {} plugin, not pricing", plugin.kind)));
        }
        let pricing = self.inner.plugins.pricing();
        let config = match &req.config {
            Some(c) => c.to_string(),
            None => pricing.global().map(|a| a.config.clone()).unwrap_or_else(|| "{}".into()),
        };
        let limit = req.limit.unwrap_or(1000).min(100_000);
        let only: Option<HashSet<&str>> = req.orgs.as_ref().map(|o| o.iter().map(String::as_str).collect());
        let db = self.inner.meter.db();
        let policy = self.inner.meter.policy();

        let mut summary = SimulationSummary::default();
        let mut results = Vec::new();
        let mut record = |org_id: &str,
                          period: &str,
                          basis: &str,
                          before: Result<Invoice, String>,
                          after: Result<Invoice, String>| {
            summary.priced += 1;
            let r = match (before, after) {
                (Ok(b), Ok(a)) => {
                    *summary.revenue_before_micros.entry(b.currency.clone()).or_insert(0) += b.total;
                    *summary.revenue_after_micros.entry(a.currency.clone()).or_insert(0) += a.total;
                    let delta = a.total - b.total;
                    match delta.cmp(&0) {
                        std::cmp::Ordering::Greater => summary.up += 1,
                        std::cmp::Ordering::Less => summary.down += 1,
                        std::cmp::Ordering::Equal => summary.unchanged += 1,
                    }
                    let changed = changed_lines(&b.lines, &a.lines);
                    if delta == 0 && changed.is_empty() && a.currency == b.currency {
                        return;
                    }
                    OrgSimulation {
                        org_id: org_id.into(),
                        period: period.into(),
                        basis: basis.into(),
                        currency: a.currency,
                        before_micros: Some(b.total),
                        after_micros: Some(a.total),
                        delta_micros: Some(delta),
                        changed_lines: changed,
                        error: None,
                    }
                }
                (b, a) => {
                    summary.failed += 1;
                    let error = [
                        b.as_ref().err().map(|e| format!("before: {e}")),
                        a.as_ref().err().map(|e| format!("candidate: {e}")),
                    ]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join("; ");
                    OrgSimulation {
                        org_id: org_id.into(),
                        period: period.into(),
                        basis: basis.into(),
                        currency: b.as_ref().or(a.as_ref()).map(|i| i.currency.clone()).unwrap_or_default(),
                        before_micros: b.as_ref().ok().map(|i| i.total),
                        after_micros: a.as_ref().ok().map(|i| i.total),
                        delta_micros: None,
                        changed_lines: Vec::new(),
                        error: Some(error),
                    }
                }
            };
            results.push(r);
        };

        for period in &periods {
            // Finalized invoices: their own input and total.
            let invoiced = sql(
                "SELECT org_id, lines, total, currency, rating_input FROM invoices WHERE period = $1 ORDER BY org_id",
            )
            .bind(&period.name)
            .fetch_all(db.read())
            .await?;
            let mut done: HashSet<String> = HashSet::new();
            let total_orgs = invoiced.len();
            for (i, r) in invoiced.iter().enumerate() {
                let org_id: String = r.get("org_id")?;
                if only.as_ref().is_some_and(|o| !o.contains(org_id.as_str())) {
                    continue;
                }
                let before = Invoice { currency: r.get("currency")?, lines: r.json("lines")?, total: r.get("total")? };
                let input: RatingInput = r.json("rating_input")?;
                let after = pricing.rate_stored(&plugin.id, &config, &input).await.map_err(|e| failure_text(&e));
                record(&org_id, &period.name, "invoice", Ok(before), after);
                done.insert(org_id);
                if i % CHUNK == 0 {
                    progress(i, total_orgs);
                }
            }
            // Orgs of the period without an invoice: priced from usage.
            let orgs = context::orgs_of(db, period)
                .await?
                .into_iter()
                .filter(|o| !done.contains(&o.id) && only.as_ref().is_none_or(|s| s.contains(o.id.as_str())))
                .collect::<Vec<_>>();
            let n = orgs.len();
            for (c, chunk) in orgs.chunks(CHUNK).enumerate() {
                for ctx in context::load(db, &policy, chunk, Environment::Live, period).await? {
                    let before = match pricing.active(&ctx.org_id, &ctx.plan) {
                        Some(active) => pricing.rate(&active, &ctx.input).await.map_err(|f| f.to_string()),
                        None => Err(format!("no pricing plugin is active for plan `{}`", ctx.plan)),
                    };
                    let after =
                        pricing.rate_stored(&plugin.id, &config, &ctx.input).await.map_err(|e| failure_text(&e));
                    record(&ctx.org_id, &period.name, "usage", before, after);
                }
                progress((c + 1) * CHUNK, n);
            }
        }
        for (currency, after) in &summary.revenue_after_micros {
            let before = summary.revenue_before_micros.get(currency).copied().unwrap_or(0);
            summary.revenue_delta_micros.insert(currency.clone(), after - before);
        }
        for (currency, before) in &summary.revenue_before_micros {
            summary.revenue_delta_micros.entry(currency.clone()).or_insert(-before);
        }
        results.sort_by_key(|r| (r.error.is_none(), std::cmp::Reverse(r.delta_micros.map_or(0, i64::abs))));
        let truncated = results.len() > limit;
        results.truncate(limit);
        Ok(SimulationReport {
            plugin_id: plugin.id,
            config_digest: super::invoices::config_digest(&config),
            periods: periods.into_iter().map(|p| p.name).collect(),
            summary,
            results,
            truncated,
            duration_ms: started.elapsed().as_millis() as u64,
        })
    }

    /// Starts pricing every live preview with this candidate too.
    pub async fn start_shadow(&self, plugin_id: &str, config: Option<Value>) -> Result<ShadowView, BillingError> {
        let plugin = self.inner.plugins.find(plugin_id).await.map_err(BillingError::Plugin)?;
        if plugin.kind != crate::plugins::PluginKind::Pricing {
            return Err(BillingError::Invalid(format!("plugin {plugin_id} is a {} plugin, not pricing", plugin.kind)));
        }
        let config = match config {
            Some(c) => c.to_string(),
            None => self.inner.plugins.pricing().global().map(|a| a.config.clone()).unwrap_or_else(|| "{}".into()),
        };
        let shadow = Shadow {
            plugin_id: plugin.id.clone(),
            config,
            started_at: Utc::now(),
            compared: 0,
            differed: 0,
            failed: 0,
            recent: VecDeque::new(),
        };
        *self.inner.shadow.lock().unwrap_or_else(|e| e.into_inner()) = Some(shadow);
        self.shadow(plugin_id).await
    }

    pub fn stop_shadow(&self) -> Option<ShadowView> {
        self.inner.shadow.lock().unwrap_or_else(|e| e.into_inner()).take().map(|s| s.view())
    }

    pub async fn shadow(&self, plugin_id: &str) -> Result<ShadowView, BillingError> {
        let plugin = self.inner.plugins.find(plugin_id).await.map_err(BillingError::Plugin)?;
        let guard = self.inner.shadow.lock().unwrap_or_else(|e| e.into_inner());
        match guard.as_ref().filter(|s| s.plugin_id == plugin.id) {
            Some(s) => Ok(s.view()),
            None => Err(BillingError::Invalid(format!("plugin {} is not in shadow mode", plugin.id))),
        }
    }

    /// Prices a preview's input with the shadow candidate, if any, and
    /// records whether it differs (in the background: the caller does not wait).
    pub(super) fn compare_in_shadow(&self, org_id: &str, input: &RatingInput, active: &Invoice) {
        let Some((plugin_id, config)) = self
            .inner
            .shadow
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|s| (s.plugin_id.clone(), s.config.clone()))
        else {
            return;
        };
        let (this, org_id, input, active) = (self.clone(), org_id.to_string(), input.clone(), active.clone());
        tokio::spawn(async move {
            let candidate = this.inner.plugins.pricing().rate_stored(&plugin_id, &config, &input).await;
            let mut guard = this.inner.shadow.lock().unwrap_or_else(|e| e.into_inner());
            let Some(s) = guard.as_mut().filter(|s| s.plugin_id == plugin_id) else { return };
            s.compared += 1;
            let outcome = match candidate {
                Ok(c) if c.total == active.total && c.lines == active.lines => "same",
                Ok(c) => {
                    s.differed += 1;
                    s.push(ShadowDiff {
                        org_id,
                        at: Utc::now(),
                        active_micros: active.total,
                        candidate_micros: Some(c.total),
                        changed_lines: changed_lines(&active.lines, &c.lines),
                        error: None,
                    });
                    "different"
                }
                Err(e) => {
                    s.failed += 1;
                    s.push(ShadowDiff {
                        org_id,
                        at: Utc::now(),
                        active_micros: active.total,
                        candidate_micros: None,
                        changed_lines: Vec::new(),
                        error: Some(failure_text(&e)),
                    });
                    "failed"
                }
            };
            crate::telemetry::inc("memhost_pricing_shadow_comparisons_total", &[("outcome", outcome)], 1);
        });
    }
}

/// The shadow candidate and what it has seen (this instance only).
pub(super) struct Shadow {
    plugin_id: String,
    config: String,
    started_at: DateTime<Utc>,
    compared: u64,
    differed: u64,
    failed: u64,
    recent: VecDeque<ShadowDiff>,
}

impl Shadow {
    fn push(&mut self, d: ShadowDiff) {
        if self.recent.len() == SHADOW_KEPT {
            self.recent.pop_front();
        }
        self.recent.push_back(d);
    }

    fn view(&self) -> ShadowView {
        ShadowView {
            plugin_id: self.plugin_id.clone(),
            config_digest: super::invoices::config_digest(&self.config),
            started_at: self.started_at,
            compared: self.compared,
            differed: self.differed,
            failed: self.failed,
            recent: self.recent.iter().rev().cloned().collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ShadowDiff {
    pub org_id: String,
    pub at: DateTime<Utc>,
    pub active_micros: i64,
    pub candidate_micros: Option<i64>,
    pub changed_lines: Vec<LineChange>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ShadowView {
    pub plugin_id: String,
    pub config_digest: String,
    pub started_at: DateTime<Utc>,
    /// Previews priced by both since it started (on this instance).
    pub compared: u64,
    pub differed: u64,
    pub failed: u64,
    /// The latest differences, newest first (at most 100).
    pub recent: Vec<ShadowDiff>,
}
