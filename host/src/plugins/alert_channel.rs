//! Alert-channel plugins: deliver one alert event to a channel (webhook,
//! Slack, an email gateway) through the host's allow-listed outbound HTTP.

use std::sync::Arc;

use serde::Serialize;
use utoipa::ToSchema;

use super::kind::PluginKind;
use super::{Active, Answer, PluginFailure, PluginService, with_fallback};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn parse(s: &str) -> Option<Severity> {
        match s {
            "info" => Some(Severity::Info),
            "warning" => Some(Severity::Warning),
            "critical" => Some(Severity::Critical),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Alert {
    pub id: String,
    pub org_id: String,
    /// The alert rule that fired, e.g. `usage-80-percent`.
    pub rule: String,
    pub severity: Severity,
    pub title: String,
    pub message: String,
    /// Extra fields as a JSON object.
    pub data: String,
    /// RFC 3339.
    pub occurred_at: String,
}

/// The alert-channel plugins, as callers use them
/// (`PluginService::alert_channels`).
pub struct AlertChannels<'a> {
    pub(super) service: &'a PluginService,
}

impl AlertChannels<'_> {
    /// The channel plugin active for `org_id` on `plan`, if any.
    pub fn active(&self, org_id: &str, plan: &str) -> Option<Arc<Active>> {
        self.service.active(PluginKind::AlertChannel, Some(org_id), Some(plan))
    }

    /// Delivers one alert. A retryable plugin error asks to try again later;
    /// on a sandbox failure the previous version delivers, where fallback is on.
    pub async fn deliver(&self, active: &Active, alert: &Alert) -> Result<Answer<()>, PluginFailure> {
        let runtime = self.service.runtime();
        let host = self.service.host_calls();
        let result = with_fallback!(self.service, active, |p, config| runtime
            .deliver(&p.prepared, &p.limits, &p.digest, host.clone(), config, alert)
            .await);
        self.service.recorder().deliver(active, alert, &result);
        result
    }
}
