//! `memhost plugin new <kind> <name>`: a plugin crate that builds as is.
//!
//! The scaffold vendors the SDK and the WIT package it was written against
//! (both compiled into this binary), as component projects conventionally
//! vendor their WIT: the project builds anywhere, with no checkout of memhost
//! and no registry beyond crates.io.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::plugins::PluginKind;
use crate::plugins::calls::fixture_json;

const SDK_LIB: &str = include_str!("../../../plugins/sdk/src/lib.rs");
/// The WIT version the scaffold vendors: the newest the host speaks (a
/// test below keeps them equal).
const WIT_VERSION: &str = "0.2.0";
const WIT_FILES: [(&str, &str); 5] = [
    ("types.wit", include_str!("../../../wit/0.2.0/types.wit")),
    ("pricing.wit", include_str!("../../../wit/0.2.0/pricing.wit")),
    ("rate-limit.wit", include_str!("../../../wit/0.2.0/rate-limit.wit")),
    ("alert-channel.wit", include_str!("../../../wit/0.2.0/alert-channel.wit")),
    ("extractor.wit", include_str!("../../../wit/0.2.0/extractor.wit")),
];

/// Plugin names follow `describe`'s rule: lowercase letters, digits, `-`.
pub fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !ok {
        bail!("plugin name `{name}`: use 1 to 64 characters of a-z, 0-9 and `-`, starting with a letter");
    }
    Ok(())
}

/// Writes the scaffold into `dir` (which must not exist or be empty).
pub fn create(kind: PluginKind, name: &str, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    check_name(name)?;
    if dir.exists() && dir.read_dir().map(|mut d| d.next().is_some()).unwrap_or(true) {
        bail!("{} already exists and is not empty", dir.display());
    }
    let feature = kind.as_str();
    let files: Vec<(PathBuf, String)> = vec![
        (dir.join("Cargo.toml"), cargo_toml(name, feature)),
        (dir.join("rust-toolchain.toml"), TOOLCHAIN.to_string()),
        (dir.join(".gitignore"), "/target\n".to_string()),
        (dir.join("src/lib.rs"), lib_rs(kind)),
        (dir.join("fixture.json"), serde_json::to_string_pretty(&fixture_json(kind))? + "\n"),
        (dir.join("README.md"), readme(kind, name)),
        (dir.join("sdk/memhost-sdk/Cargo.toml"), SDK_MANIFEST.to_string()),
        (dir.join("sdk/memhost-sdk/src/lib.rs"), SDK_LIB.to_string()),
    ]
    .into_iter()
    .chain(WIT_FILES.iter().map(|(f, text)| (dir.join(format!("wit/{WIT_VERSION}/{f}")), text.to_string())))
    .collect();
    let mut written = Vec::new();
    for (path, text) in files {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

const TOOLCHAIN: &str = r#"[toolchain]
channel = "1.95.0"
targets = ["wasm32-wasip2"]
profile = "minimal"
"#;

/// The SDK's manifest, standalone (in memhost's tree it inherits from the
/// plugins workspace).
const SDK_MANIFEST: &str = r#"[package]
name = "memhost-sdk"
version = "0.2.0"
description = "Write memhost plugins: implement one trait, call one export macro."
edition = "2024"
license = "Apache-2.0"
publish = false

[features]
pricing = []
rate-limit = []
alert-channel = []
extractor = []

[dependencies]
wit-bindgen = { version = "0.63", default-features = false, features = ["macros", "realloc", "std"] }
serde = { version = "1", default-features = false, features = ["derive", "std"] }
serde_json = { version = "1", default-features = false, features = ["std"] }
"#;

fn cargo_toml(name: &str, feature: &str) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
memhost-sdk = {{ path = "sdk/memhost-sdk", features = ["{feature}"] }}
serde = {{ version = "1", default-features = false, features = ["derive", "std"] }}
serde_json = {{ version = "1", default-features = false, features = ["std"] }}

# A workspace of its own, even inside another project.
[workspace]

# Plugins ship as one small .wasm: optimise for size.
[profile.release]
opt-level = "s"
lto = true
codegen-units = 1
strip = true
panic = "abort"
"#
    )
}

fn readme(kind: PluginKind, name: &str) -> String {
    let file = name.replace('-', "_");
    format!(
        r#"# {name}

A memhost `{kind}` plugin.

    memhost plugin build                         # -> target/wasm32-wasip2/release/{file}.wasm
    memhost plugin check target/wasm32-wasip2/release/{file}.wasm
    memhost plugin run target/wasm32-wasip2/release/{file}.wasm --input fixture.json
    memhost plugin upload target/wasm32-wasip2/release/{file}.wasm

`wit/{WIT_VERSION}/` is the WIT package this plugin implements and
`sdk/memhost-sdk/` the SDK that wraps it, vendored by `memhost plugin new`.
"#
    )
}

fn lib_rs(kind: PluginKind) -> String {
    let body = match kind {
        PluginKind::Pricing => PRICING,
        PluginKind::RateLimit => RATE_LIMIT,
        PluginKind::AlertChannel => ALERT_CHANNEL,
        PluginKind::Extractor => EXTRACTOR,
    };
    body.trim_start().to_string()
}

const PRICING: &str = r##"
//! A pricing plugin: a flat price per unit of each metric.
//! Config: `{"currency": "USD", "unit_price_micros": {"api_calls": 1000}}`.
use std::collections::BTreeMap;

use memhost_sdk::pricing::*;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "usd")]
    currency: String,
    #[serde(default)]
    unit_price_micros: BTreeMap<String, i64>,
}

fn usd() -> String {
    "USD".into()
}

struct Plugin;

impl Pricing for Plugin {
    const NAME: &'static str = env!("CARGO_PKG_NAME");
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn config_schema() -> &'static str {
        r#"{"type": "object", "additionalProperties": false, "properties": {
            "currency": {"type": "string", "minLength": 3, "maxLength": 3},
            "unit_price_micros": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}}
        }}"#
    }

    fn rate(config: &str, input: RatingInput) -> Result<Invoice, PluginError> {
        let config: Config = parse_config(config)?;
        let mut lines = Vec::new();
        for usage in &input.usage {
            let Some(price) = config.unit_price_micros.get(&usage.metric) else { continue };
            let amount = price
                .checked_mul(usage.quantity as i64)
                .ok_or_else(|| PluginError::new("overflow", format!("{} × {price} overflows", usage.quantity)))?;
            lines.push(InvoiceLine {
                kind: LineKind::Usage,
                metric: Some(usage.metric.clone()),
                reference: None,
                description: format!("{} {}", usage.quantity, usage.metric),
                quantity: usage.quantity,
                amount,
            });
        }
        let total = lines.iter().map(|l| l.amount).sum();
        Ok(Invoice { currency: config.currency, lines, total })
    }

    fn limits(_config: &str, _plan: &str, _plan_snapshot: Option<&str>, _overrides: &str) -> Result<Vec<MetricLimit>, PluginError> {
        // No included amounts: everything is billed per unit.
        Ok(Vec::new())
    }
}

memhost_sdk::export_pricing!(Plugin);
"##;

const RATE_LIMIT: &str = r##"
//! A rate-limit plugin: one per-minute limit per key, by plan.
//! Config: `{"per_minute": {"free": 10, "starter": 60}, "default_per_minute": 10}`.
use std::collections::BTreeMap;

use memhost_sdk::rate_limit::*;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    per_minute: BTreeMap<String, u64>,
    #[serde(default = "ten")]
    default_per_minute: u64,
}

fn ten() -> u64 {
    10
}

struct Plugin;

impl RateLimit for Plugin {
    const NAME: &'static str = env!("CARGO_PKG_NAME");
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn rules(config: &str, request: RequestClass) -> Result<Vec<Rule>, PluginError> {
        let config: Config = parse_config(config)?;
        let limit = config.per_minute.get(&request.plan).copied().unwrap_or(config.default_per_minute);
        Ok(vec![Rule {
            name: "per-minute".into(),
            scope: Scope::Key,
            algorithm: Algorithm::SlidingWindow,
            limit,
            window_ms: 60_000,
            burst: 0,
            cost: 1,
        }])
    }
}

memhost_sdk::export_rate_limit!(Plugin);
"##;

const ALERT_CHANNEL: &str = r##"
//! An alert channel: POSTs each alert as JSON to a URL.
//! Config: `{"url": "https://hooks.example.com/memhost"}` (the host must
//! allow the URL's host in `plugins.http_allow_hosts`).
use memhost_sdk::alert_channel::*;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    url: String,
}

struct Plugin;

impl AlertChannel for Plugin {
    const NAME: &'static str = env!("CARGO_PKG_NAME");
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn config_schema() -> &'static str {
        r#"{"type": "object", "required": ["url"], "additionalProperties": false,
            "properties": {"url": {"type": "string", "pattern": "^https?://"}}}"#
    }

    fn deliver(config: &str, alert: Alert) -> Result<(), PluginError> {
        let config: Config = parse_config(config)?;
        let body = serde_json::json!({
            "id": alert.id, "org_id": alert.org_id, "rule": alert.rule,
            "title": alert.title, "message": alert.message, "occurred_at": alert.occurred_at,
        });
        let request = HttpRequest {
            method: "POST".into(),
            url: config.url,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string().into_bytes(),
        };
        let response = http_send(&request).map_err(|e| PluginError::retryable("network", e))?;
        match response.status {
            200..=299 => Ok(()),
            429 | 500..=599 => Err(PluginError::retryable("http", format!("status {}", response.status))),
            status => Err(PluginError::new("http", format!("status {status}"))),
        }
    }
}

memhost_sdk::export_alert_channel!(Plugin);
"##;

const EXTRACTOR: &str = r##"
//! An extractor: remembers every user sentence that starts with "I ".
use memhost_sdk::extractor::*;

struct Plugin;

impl Extractor for Plugin {
    const NAME: &'static str = env!("CARGO_PKG_NAME");
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn extract(_config: &str, input: ExtractInput) -> Result<Vec<MemoryOp>, PluginError> {
        let mut ops = Vec::new();
        for turn in input.turns.iter().filter(|t| t.role == "user") {
            for sentence in turn.content.split(['.', '!', '?']).map(str::trim) {
                if sentence.starts_with("I ") && !input.existing.iter().any(|m| m.text == sentence) {
                    ops.push(MemoryOp::Add(NewMemory { text: format!("{sentence}."), metadata: "{}".into() }));
                }
            }
        }
        Ok(ops)
    }
}

memhost_sdk::export_extractor!(Plugin);
"##;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scaffold_vendors_the_newest_wit() {
        assert_eq!(WIT_VERSION, crate::plugins::wit::WitVersion::NEWEST.to_string());
    }
}
