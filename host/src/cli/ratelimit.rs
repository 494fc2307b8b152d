//! `memhost ratelimit info <key>` (seed 001): what a key may still do, asked
//! of a running server, so the numbers are the ones it enforces (shared
//! counters included), not a local guess.

use anyhow::Context;
use clap::Subcommand;
use serde_json::Value;

use super::admin::{Output, emit, table};

#[derive(Subcommand)]
pub enum RatelimitCommand {
    /// A key's rate limits (remaining, reset) and quotas for this period.
    Info {
        /// The API key (else $MEMHOST_API_KEY; the environment is safer:
        /// arguments are visible to other users of the machine).
        #[arg(env = "MEMHOST_API_KEY", hide_env_values = true)]
        key: String,
        /// Server URL.
        #[arg(long, env = "MEMHOST_URL", default_value = "http://127.0.0.1:8080")]
        server: String,
        #[command(flatten)]
        out: Output,
    },
}

pub async fn run(cmd: RatelimitCommand) -> anyhow::Result<()> {
    let RatelimitCommand::Info { key, server, out } = cmd;
    let url = format!("{}/v1/account/limits", server.trim_end_matches('/'));
    let response = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()?
        .get(&url)
        .bearer_auth(key.trim())
        .send()
        .await
        .with_context(|| format!("could not reach {url} (is the server running? see --server)"))?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let body: Value = serde_json::from_str(&text).with_context(|| format!("server answered {status}: {text}"))?;
    if body["success"] != true {
        let error = &body["error"];
        anyhow::bail!(
            "{} {}: {}",
            status.as_u16(),
            error["code"].as_str().unwrap_or("ERROR"),
            error["message"].as_str().unwrap_or(&text)
        );
    }
    let data = &body["data"];
    emit(out, data, || human(data))
}

fn human(data: &Value) -> String {
    let mut text = String::new();
    if data["enabled"] == false {
        text.push_str("Rate limits are disabled on this server.\n");
    } else {
        let mut rules = table(["rule", "scope", "algorithm", "limit", "window", "remaining", "resets in"]);
        for r in data["rules"].as_array().into_iter().flatten() {
            let limit = match r["burst"].as_u64() {
                Some(b) => format!("{} (burst {b})", r["limit"]),
                None => r["limit"].to_string(),
            };
            let window = match r["algorithm"].as_str() {
                Some("concurrency") => "in flight".to_string(),
                _ => crate::limits::format_window(r["window_ms"].as_u64().unwrap_or(0)),
            };
            rules.add_row([
                str(&r["name"]),
                str(&r["scope"]),
                str(&r["algorithm"]),
                limit,
                window,
                r["remaining"].to_string(),
                format!("{}s", r["reset_secs"]),
            ]);
        }
        text.push_str(&format!("Rate limits (counter store: {})\n{rules}\n", str(&data["store"])));
    }
    let quotas = data["quotas"].as_array().cloned().unwrap_or_default();
    if quotas.is_empty() {
        text.push_str("No quotas on this plan.");
    } else {
        let mut t = table(["metric", "period", "included", "used", "remaining", "overage", "on exceeding"]);
        for q in &quotas {
            let policy = match (q["overage_allowed"].as_bool(), q["hard_limit"].as_u64()) {
                (Some(true), Some(h)) => format!("billed as overage up to {h}"),
                (Some(true), None) => "billed as overage".to_string(),
                _ => "refused (402)".to_string(),
            };
            t.add_row([
                str(&q["metric"]),
                str(&q["period"]),
                q["included"].to_string(),
                q["used"].to_string(),
                q["remaining"].to_string(),
                q["overage"].to_string(),
                policy,
            ]);
        }
        text.push_str(&format!("Quotas (resets {})\n{t}", str(&quotas[0]["resets_at"])));
    }
    text
}

fn str(v: &Value) -> String {
    v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())
}
