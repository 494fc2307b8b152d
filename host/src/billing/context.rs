//! What an org's period is priced from: the facts the host owns (metered
//! usage, plan history, region, plan snapshot, add-ons, credits,
//! promotions, late usage of closed periods), gathered into the pricing
//! plugin's `RatingInput`. Read for a chunk of orgs at a time, so closing a
//! period for 100 000 orgs costs a few queries per chunk, not per org.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::auth::Environment;
use crate::metering::policy::{Aggregation, MetricsPolicy};
use crate::metering::{parse_period, period_end, period_of, period_start};
use crate::plugins::pricing::{
    AddonSubscription, AppliedPromotion, CreditBalance, PlanSpan, RatingInput, UsageQuantity,
};
use crate::store::Database;
use crate::store::sql::{Arg, Row, Sql, sql};

/// A billing period: a UTC calendar month, [start, end).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BillingPeriod {
    /// `YYYY-MM`.
    pub name: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

impl BillingPeriod {
    pub fn parse(s: &str) -> Option<BillingPeriod> {
        let start = parse_period(s)?;
        Some(BillingPeriod { name: period_of(start), start, end: period_end(start) })
    }

    pub fn containing(t: DateTime<Utc>) -> BillingPeriod {
        let start = period_start(t);
        BillingPeriod { name: period_of(start), start, end: period_end(start) }
    }

    /// The name of the period `n` months before this one.
    pub fn months_before(&self, n: u32) -> String {
        period_of(self.start.checked_sub_months(chrono::Months::new(n)).unwrap_or(self.start))
    }
}

/// How many closed periods back late usage is looked for. Usage reaches a
/// closed period only when a request straddles its close, so one would do;
/// three bounds the work (a chunk's query reads a few periods of counters,
/// not the org's whole history).
pub const LATE_USAGE_PERIODS: u32 = 3;

/// Units of a closed period counted after its invoice was made: billed on
/// the next invoice, and stated there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LateUsage {
    pub period: String,
    pub metric: String,
    pub quantity: u64,
}

/// An org as billing needs it.
#[derive(Debug, Clone)]
pub struct BilledOrg {
    pub id: String,
    /// The org's plan now (used when no plan history reaches the period).
    pub plan: String,
    /// Its overrides, JSON text.
    pub overrides: String,
}

/// An `orgs` row (`id, plan, overrides`) as billing needs it.
pub fn billed_org(r: &Row) -> sqlx::Result<BilledOrg> {
    Ok(BilledOrg { id: r.get("id")?, plan: r.get("plan")?, overrides: r.get("overrides")? })
}

/// Every org that existed before the period ended, by id.
pub async fn orgs_of(db: &Database, period: &BillingPeriod) -> sqlx::Result<Vec<BilledOrg>> {
    sql("SELECT id, plan, overrides FROM orgs WHERE created_at < $1 ORDER BY id")
        .bind(period.end)
        .fetch_all(db.read())
        .await?
        .iter()
        .map(billed_org)
        .collect()
}

/// One org's period, ready to price.
#[derive(Debug, Clone)]
pub struct OrgPeriod {
    pub org_id: String,
    /// The plan at the end of the period.
    pub plan: String,
    /// This period's own units per metric.
    pub usage: BTreeMap<String, u64>,
    pub late: Vec<LateUsage>,
    pub input: RatingInput,
}

/// `$first, …` for `n` values bound from position `first`.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
}

/// `statement` with `{orgs}` replaced by placeholders for the ids, bound
/// after `args`.
fn for_orgs(statement: &str, args: Vec<Arg>, ids: &[&str]) -> Sql {
    let text = statement.replace("{orgs}", &placeholders(args.len() + 1, ids.len()));
    let mut q = sql(text);
    for a in args {
        q = q.bind(a);
    }
    for id in ids {
        q = q.bind(*id);
    }
    q
}

fn by_org(rows: Vec<Row>) -> sqlx::Result<HashMap<String, Vec<Row>>> {
    let mut out: HashMap<String, Vec<Row>> = HashMap::new();
    for r in rows {
        out.entry(r.get::<String>("org_id")?).or_default().push(r);
    }
    Ok(out)
}

fn of<'a>(m: &'a HashMap<String, Vec<Row>>, org_id: &str) -> &'a [Row] {
    m.get(org_id).map(Vec::as_slice).unwrap_or(&[])
}

/// Metrics whose units add up across events, so units counted late can be
/// billed on a later invoice (a peak or a distinct count cannot).
pub fn additive(policy: &MetricsPolicy, metric: &str) -> bool {
    policy.get(metric).is_some_and(|m| matches!(m.aggregation, Aggregation::Sum | Aggregation::Count))
}

/// Gathers each org's period. `env` test: the sandbox's usage (previews
/// only; test usage is never invoiced, and has no late usage).
pub async fn load(
    db: &Database,
    policy: &MetricsPolicy,
    orgs: &[BilledOrg],
    env: Environment,
    period: &BillingPeriod,
) -> sqlx::Result<Vec<OrgPeriod>> {
    if orgs.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<&str> = orgs.iter().map(|o| o.id.as_str()).collect();
    let env_arg = || Arg::from(env.as_str());
    let period_arg = || Arg::from(period.name.as_str());

    let counters = by_org(
        for_orgs(
            "SELECT org_id, metric, quantity FROM usage_counters \
             WHERE environment = $1 AND period = $2 AND org_id IN ({orgs})",
            vec![env_arg(), period_arg()],
            &ids,
        )
        .fetch_all(db.read())
        .await?,
    )?;
    // The current period: a gauge with no counter yet (no request since the
    // period began) still holds its value.
    let now = Utc::now();
    let gauges = if period.start <= now && now < period.end {
        by_org(
            for_orgs(
                "SELECT org_id, value FROM usage_gauges \
                 WHERE environment = $1 AND name = 'memories_stored' AND org_id IN ({orgs})",
                vec![env_arg()],
                &ids,
            )
            .fetch_all(db.read())
            .await?,
        )?
    } else {
        HashMap::new()
    };
    let late = if env == Environment::Live {
        by_org(
            for_orgs(
                // Probes by key per counter row (scalar subqueries), whatever
                // the planner believes of the invoices' size: as a join,
                // PostgreSQL with stale statistics scanned every invoice
                // for each chunk while a period was being closed.
                "SELECT org_id, period, metric, late FROM (\
                 SELECT c.org_id, c.period, c.metric, c.quantity - COALESCE((SELECT u.quantity FROM invoiced_usage u \
                 WHERE u.org_id = c.org_id AND u.period = c.period AND u.metric = c.metric), 0) AS late, \
                 (SELECT 1 FROM invoices i WHERE i.org_id = c.org_id AND i.period = c.period LIMIT 1) AS invoiced \
                 FROM usage_counters c WHERE c.environment = 'live' AND c.period >= $1 AND c.period < $2 \
                 AND c.org_id IN ({orgs})) t WHERE invoiced IS NOT NULL AND late > 0 ORDER BY org_id, period, metric",
                vec![Arg::from(period.months_before(LATE_USAGE_PERIODS)), period_arg()],
                &ids,
            )
            .fetch_all(db.read())
            .await?,
        )?
    } else {
        HashMap::new()
    };
    let plans = by_org(
        for_orgs(
            "SELECT org_id, effective_at, plan FROM plan_changes WHERE effective_at < $1 AND org_id IN ({orgs}) \
             ORDER BY org_id, effective_at",
            vec![Arg::from(period.end)],
            &ids,
        )
        .fetch_all(db.read())
        .await?,
    )?;
    let pricing = by_org(
        for_orgs(
            "SELECT org_id, region, snapshot_plan, plan_snapshot, grandfathered_until FROM customer_pricing \
             WHERE org_id IN ({orgs})",
            vec![],
            &ids,
        )
        .fetch_all(db.read())
        .await?,
    )?;
    let addons = by_org(
        for_orgs(
            "SELECT org_id, addon_id, quantity, price_override FROM customer_addons WHERE org_id IN ({orgs}) \
             ORDER BY org_id, addon_id",
            vec![],
            &ids,
        )
        .fetch_all(db.read())
        .await?,
    )?;
    let credits = by_org(
        for_orgs(
            "SELECT org_id, id, source, remaining, expires_at FROM customer_credits \
             WHERE remaining > 0 AND (expires_at IS NULL OR expires_at > $1) AND org_id IN ({orgs})",
            vec![Arg::from(period.start)],
            &ids,
        )
        .fetch_all(db.read())
        .await?,
    )?;
    let promotions = by_org(
        for_orgs(
            "SELECT org_id, promotion_id, condition_met FROM customer_promotions WHERE org_id IN ({orgs}) \
             ORDER BY org_id, applied_at, promotion_id",
            vec![],
            &ids,
        )
        .fetch_all(db.read())
        .await?,
    )?;

    let mut out = Vec::with_capacity(orgs.len());
    for org in orgs {
        let mut usage = BTreeMap::new();
        for r in of(&counters, &org.id) {
            usage.insert(r.get::<String>("metric")?, r.quantity("quantity")?);
        }
        for r in of(&gauges, &org.id) {
            for m in policy.metrics.iter().filter(|m| m.carries_over()) {
                usage.entry(m.name.clone()).or_insert(r.quantity("value")?);
            }
        }
        let mut late_usage = Vec::new();
        for r in of(&late, &org.id) {
            let metric: String = r.get("metric")?;
            if additive(policy, &metric) {
                late_usage.push(LateUsage { period: r.get("period")?, metric, quantity: r.quantity("late")? });
            }
        }

        let changes: Vec<(DateTime<Utc>, String)> = of(&plans, &org.id)
            .iter()
            .map(|r| Ok((r.time("effective_at")?, r.get::<String>("plan")?)))
            .collect::<sqlx::Result<_>>()?;
        let spans = plan_spans(&changes, period, &org.plan);
        let plan = spans.last().map(|s| s.plan.clone()).unwrap_or_else(|| org.plan.clone());
        let whole_period = spans.len() == 1 && spans[0].start == rfc3339(period.start);
        let plan_spans = if whole_period { Vec::new() } else { spans };

        let (mut region, mut plan_snapshot) = (None, None);
        if let Some(r) = of(&pricing, &org.id).first() {
            region = r.get::<Option<String>>("region")?;
            let snapshot_plan: Option<String> = r.get("snapshot_plan")?;
            let until = r.opt_time("grandfathered_until")?;
            // A snapshot holds for the plan it was taken of, until its end.
            if snapshot_plan.as_deref() == Some(plan.as_str()) && until.is_none_or(|u| u > period.start) {
                plan_snapshot = r.get::<Option<String>>("plan_snapshot")?;
            }
        }
        let addons = of(&addons, &org.id)
            .iter()
            .map(|r| {
                Ok(AddonSubscription {
                    id: r.get("addon_id")?,
                    quantity: r.get::<i64>("quantity")?.clamp(1, u32::MAX as i64) as u32,
                    price_override: r.get("price_override")?,
                })
            })
            .collect::<sqlx::Result<Vec<_>>>()?;
        let mut credits = of(&credits, &org.id)
            .iter()
            .map(|r| {
                Ok((
                    r.opt_time("expires_at")?,
                    CreditBalance {
                        id: r.get("id")?,
                        source: r.get("source")?,
                        remaining: r.get("remaining")?,
                        expires_at: r.opt_time("expires_at")?.map(rfc3339),
                    },
                ))
            })
            .collect::<sqlx::Result<Vec<_>>>()?;
        // Soonest expiry first, never-expiring last; then by id (stable).
        credits.sort_by(|(a, x), (b, y)| match (a, b) {
            (Some(a), Some(b)) => a.cmp(b).then(x.id.cmp(&y.id)),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => x.id.cmp(&y.id),
        });
        let promotions = of(&promotions, &org.id)
            .iter()
            .map(|r| Ok(AppliedPromotion { id: r.get("promotion_id")?, condition_met: r.get("condition_met")? }))
            .collect::<sqlx::Result<Vec<_>>>()?;

        // Late units are billed with this period's, at this period's prices.
        let mut billed = usage.clone();
        for l in &late_usage {
            *billed.entry(l.metric.clone()).or_insert(0) += l.quantity;
        }
        let input = RatingInput {
            plan: plan.clone(),
            plan_snapshot,
            overrides: org.overrides.clone(),
            region,
            period_start: rfc3339(period.start),
            period_end: rfc3339(period.end),
            usage: billed.iter().map(|(m, q)| UsageQuantity { metric: m.clone(), quantity: *q }).collect(),
            plan_spans,
            addons,
            credits: credits.into_iter().map(|(_, c)| c).collect(),
            promotions,
        };
        out.push(OrgPeriod { org_id: org.id.clone(), plan, usage, late: late_usage, input });
    }
    Ok(out)
}

/// RFC 3339 with a `Z`, as the plugin reads it.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The plans an org was on over the period, from its plan history (sorted,
/// all before the period's end). An org created within the period starts
/// its first span then.
fn plan_spans(changes: &[(DateTime<Utc>, String)], period: &BillingPeriod, current: &str) -> Vec<PlanSpan> {
    let at_start = changes.iter().rfind(|(at, _)| *at <= period.start);
    let (mut from, mut plan) = match at_start {
        Some((_, p)) => (period.start, p.clone()),
        None => match changes.first() {
            Some((at, p)) => (*at, p.clone()),
            None => (period.start, current.to_string()),
        },
    };
    let mut spans = Vec::new();
    let first = from;
    for (at, p) in changes.iter().filter(|(at, _)| *at > first && *at < period.end) {
        if *p != plan {
            spans.push(PlanSpan { plan: plan.clone(), start: rfc3339(from), end: rfc3339(*at) });
            (from, plan) = (*at, p.clone());
        }
    }
    spans.push(PlanSpan { plan, start: rfc3339(from), end: rfc3339(period.end) });
    spans
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn spans_follow_plan_history() {
        let p = BillingPeriod::parse("2026-11").unwrap();
        let one = plan_spans(&[(t("2026-01-05T00:00:00Z"), "starter".into())], &p, "starter");
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].start, "2026-11-01T00:00:00Z");

        let changed = plan_spans(
            &[(t("2026-01-05T00:00:00Z"), "starter".into()), (t("2026-11-16T00:00:00Z"), "professional".into())],
            &p,
            "professional",
        );
        assert_eq!(changed.len(), 2);
        assert_eq!((changed[0].plan.as_str(), changed[0].end.as_str()), ("starter", "2026-11-16T00:00:00Z"));
        assert_eq!((changed[1].plan.as_str(), changed[1].end.as_str()), ("professional", "2026-12-01T00:00:00Z"));

        assert_eq!(BillingPeriod::parse("2026-02").unwrap().months_before(3), "2025-11");
        let created_within = plan_spans(&[(t("2026-11-21T00:00:00Z"), "starter".into())], &p, "starter");
        assert_eq!(created_within[0].start, "2026-11-21T00:00:00Z");
    }
}
