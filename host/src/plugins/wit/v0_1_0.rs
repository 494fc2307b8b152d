//! The adapter for `wit/0.1.0` (`memhost:plugin@0.1.0`): the generated
//! bindings, one module per world, and the conversions between their types
//! and the host's. Nothing generated leaves this file.

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

pub const VERSION: Version = Version { major: 0, minor: 1, patch: 0 };

world_bindings!("../wit/0.1.0");

unchanged_kinds!();

// Pricing as 0.1.0 has it: no customer context (a 0.1.0 plugin prices plan,
// overrides and usage only, and draws no credits), and lines without a kind
// (a metric's line is usage, a negative one a discount, the rest base).
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
            overrides: i.overrides.clone(),
            period_start: i.period_start.clone(),
            period_end: i.period_end.clone(),
            usage: i
                .usage
                .iter()
                .map(|u| wit_price::Usage { metric: u.metric.clone(), quantity: u.quantity })
                .collect(),
        };
        let out = pre.instantiate_async(&mut *s).await?.memhost_plugin_pricer().call_rate(s, config, &input).await?;
        Ok(out.map_err(guest_error).map(|inv| Invoice {
            currency: inv.currency,
            lines: inv
                .lines
                .into_iter()
                .map(|l| InvoiceLine {
                    kind: match (&l.metric, l.amount < 0) {
                        (_, true) => LineKind::Discount,
                        (Some(_), false) => LineKind::Usage,
                        (None, false) => LineKind::Base,
                    },
                    metric: l.metric,
                    reference: None,
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
        _plan_snapshot: Option<&str>,
        overrides: &str,
    ) -> wasmtime::Result<Result<Vec<MetricLimit>, GuestError>> {
        let Prepared::Pricing(pre) = self else { return Err(wrong(self.kind(), "limits")) };
        let out = pre
            .instantiate_async(&mut *s)
            .await?
            .memhost_plugin_pricer()
            .call_limits(s, config, plan, overrides)
            .await?;
        Ok(out.map_err(guest_error).map(|limits| limits.into_iter().map(metric_limit).collect()))
    }
}
