//! The adapter for `wit/0.2.0` (`memhost:plugin@0.2.0`): the generated
//! bindings, one module per world, and the conversions between their types
//! and the host's. Nothing generated leaves this file. Only pricing changed
//! since 0.1.0; the other kinds come from [`unchanged_kinds!`].

use wasmtime::Store;
use wasmtime::component::{HasSelf, InstancePre, Linker};

use super::{Version, WrongKind};
use crate::plugins::alert_channel::{Alert, Severity};
use crate::plugins::extractor::{ExtractInput, MemoryOp};
use crate::plugins::host_calls::{HttpRequest, HttpResponse};
use crate::plugins::kind::PluginKind;
use crate::plugins::pricing::{Invoice, InvoiceLine, LineKind, MetricLimit, RatingInput};
use crate::plugins::rate_limit::{LimiterAlgorithm, LimiterRule, LimiterScope, RequestClass};
use crate::plugins::runtime::CallState;
use crate::plugins::types::{GuestError, LogLevel, PluginInfo};
use crate::providers::{CompletionMessage, CompletionRequest};

pub const VERSION: Version = Version { major: 0, minor: 2, patch: 0 };

world_bindings!("../wit/0.2.0");

unchanged_kinds!();

// Pricing as 0.2.0 has it: the customer's whole pricing context in, a kind
// and a reference on every line out.
impl Prepared {
    pub async fn rate(
        &self,
        s: &mut Store<CallState>,
        config: &str,
        i: &RatingInput,
    ) -> wasmtime::Result<Result<Invoice, GuestError>> {
        let Prepared::Pricing(pre) = self else { return Err(wrong(self.kind(), "rate")) };
        let input = wit_price::RatingInput {
            plan: i.plan.clone(),
            plan_snapshot: i.plan_snapshot.clone(),
            overrides: i.overrides.clone(),
            region: i.region.clone(),
            period_start: i.period_start.clone(),
            period_end: i.period_end.clone(),
            usage: i
                .usage
                .iter()
                .map(|u| wit_price::Usage { metric: u.metric.clone(), quantity: u.quantity })
                .collect(),
            plan_spans: i
                .plan_spans
                .iter()
                .map(|p| wit_price::PlanSpan { plan: p.plan.clone(), start: p.start.clone(), end: p.end.clone() })
                .collect(),
            addons: i
                .addons
                .iter()
                .map(|a| wit_price::Addon { id: a.id.clone(), quantity: a.quantity, price_override: a.price_override })
                .collect(),
            credits: i
                .credits
                .iter()
                .map(|c| wit_price::Credit {
                    id: c.id.clone(),
                    source: c.source.clone(),
                    remaining: c.remaining,
                    expires_at: c.expires_at.clone(),
                })
                .collect(),
            promotions: i
                .promotions
                .iter()
                .map(|p| wit_price::Promotion { id: p.id.clone(), condition_met: p.condition_met })
                .collect(),
        };
        let out = pre.instantiate_async(&mut *s).await?.memhost_plugin_pricer().call_rate(s, config, &input).await?;
        Ok(out.map_err(guest_error).map(|inv| Invoice {
            currency: inv.currency,
            lines: inv
                .lines
                .into_iter()
                .map(|l| InvoiceLine {
                    kind: match l.kind {
                        wit_price::LineKind::Base => LineKind::Base,
                        wit_price::LineKind::Usage => LineKind::Usage,
                        wit_price::LineKind::Addon => LineKind::Addon,
                        wit_price::LineKind::Discount => LineKind::Discount,
                        wit_price::LineKind::Credit => LineKind::Credit,
                    },
                    metric: l.metric,
                    reference: l.reference,
                    description: l.description,
                    quantity: l.quantity,
                    amount: l.amount,
                })
                .collect(),
            total: inv.total,
        }))
    }

    pub async fn plan_limits(
        &self,
        s: &mut Store<CallState>,
        config: &str,
        plan: &str,
        plan_snapshot: Option<&str>,
        overrides: &str,
    ) -> wasmtime::Result<Result<Vec<MetricLimit>, GuestError>> {
        let Prepared::Pricing(pre) = self else { return Err(wrong(self.kind(), "limits")) };
        let out = pre
            .instantiate_async(&mut *s)
            .await?
            .memhost_plugin_pricer()
            .call_limits(s, config, plan, plan_snapshot, overrides)
            .await?;
        Ok(out.map_err(guest_error).map(|limits| limits.into_iter().map(metric_limit).collect()))
    }
}
