//! `alert-webhook`: POSTs an alert as JSON to a URL through the host's
//! outbound HTTP (the host allows only the hosts on the channel's allow-list).
//!
//! Config: `{"url": "https://hooks.example.com/memhost", "format": "json" |
//! "slack", "headers": {"Authorization": "Bearer …"}}`.
//! `json` sends the whole alert; `slack` sends `{"text": …}` for a Slack
//! incoming webhook. 5xx, 429 and transport errors are retryable; other 4xx
//! are not (retrying would not help).

use std::collections::BTreeMap;

use memhost_sdk::alert_channel::*;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    url: String,
    #[serde(default)]
    format: Format,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum Format {
    #[default]
    Json,
    Slack,
}

fn severity(s: Severity) -> &'static str {
    match s {
        Severity::Info => "info",
        Severity::Warning => "warning",
        Severity::Critical => "critical",
    }
}

struct Webhook;

impl AlertChannel for Webhook {
    const NAME: &'static str = env!("CARGO_PKG_NAME");
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn config_schema() -> &'static str {
        include_str!("../config.schema.json")
    }

    fn deliver(config: &str, alert: Alert) -> Result<(), PluginError> {
        let config: Config = parse_config(config)?;
        let data: serde_json::Value = serde_json::from_str(&alert.data).unwrap_or(serde_json::Value::Null);
        let body = match config.format {
            Format::Json => serde_json::json!({
                "id": alert.id,
                "org_id": alert.org_id,
                "rule": alert.rule,
                "severity": severity(alert.severity),
                "title": alert.title,
                "message": alert.message,
                "data": data,
                "occurred_at": alert.occurred_at,
            }),
            Format::Slack => serde_json::json!({
                "text": format!("[{}] {}: {}", severity(alert.severity), alert.title, alert.message),
            }),
        };
        let mut headers: Vec<(String, String)> =
            vec![("content-type".into(), "application/json".into()), ("idempotency-key".into(), alert.id.clone())];
        headers.extend(config.headers);
        let request = HttpRequest {
            method: "POST".into(),
            url: config.url,
            headers,
            body: serde_json::to_vec(&body).map_err(|e| PluginError::new("encode", e.to_string()))?,
        };
        let response = http_send(&request).map_err(|e| PluginError::retryable("transport", e))?;
        match response.status {
            200..=299 => Ok(()),
            429 | 500..=599 => {
                Err(PluginError::retryable("http-status", format!("webhook answered {}", response.status)))
            }
            s => Err(PluginError::new("http-status", format!("webhook answered {s}; not retrying"))),
        }
    }
}

memhost_sdk::export_alert_channel!(Webhook);
