//! `memhost plugin new <kind> <name> [--lang rust|python|js]`: a plugin
//! project that builds as is.
//!
//! The scaffold vendors the WIT package it was written against (and, for
//! Rust, the SDK), both compiled into this binary, as component projects
//! conventionally vendor their WIT: the project builds anywhere, with no
//! checkout of memhost. Python and JavaScript projects pin their toolchain
//! (componentize-py from PyPI; jco and the preview2-shim from npm), which
//! `memhost plugin build` installs into the project on first use. Every
//! language gets the same behaviour per kind, the same `fixtures/` and
//! `config.example.json`, so `memhost plugin test` checks any of them.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::project::{Lang, MANIFEST};
use crate::plugins::PluginKind;
use crate::plugins::calls::fixture_json;

/// Pinned guest toolchains: the versions the templates were built and
/// tested with (docs/plugins.md, "Other languages").
pub const COMPONENTIZE_PY: &str = "0.25.0";
pub const JCO: &str = "1.35.0";
/// jco 1.35 pulls preview2-shim 0.26, which breaks every `--wit` path
/// ("failed to get path metadata"); 0.25 works.
pub const PREVIEW2_SHIM: &str = "0.25.0";

/// Per kind: the shared config example and fixtures, and the source in
/// each guest language (Rust's is below, with the SDK).
struct KindTemplate {
    config: &'static str,
    fixtures: &'static [(&'static str, &'static str)],
    python: &'static str,
    js: &'static str,
}

macro_rules! fixtures {
    ($kind:literal: $($file:literal),* $(,)?) => {
        &[$(($file, include_str!(concat!("templates/fixtures/", $kind, "/", $file)))),*]
    };
}

fn template(kind: PluginKind) -> KindTemplate {
    match kind {
        PluginKind::Pricing => KindTemplate {
            config: include_str!("templates/config/pricing.json"),
            fixtures: fixtures!("pricing": "starter-overage.json", "free-within-quota.json", "unknown-plan.json",
                "limits-free.json", "limits-starter.json"),
            python: include_str!("templates/python/pricing.py"),
            js: include_str!("templates/js/pricing.js"),
        },
        PluginKind::RateLimit => KindTemplate {
            config: include_str!("templates/config/rate-limit.json"),
            fixtures: fixtures!("rate-limit": "starter.json", "unknown-plan.json"),
            python: include_str!("templates/python/rate-limit.py"),
            js: include_str!("templates/js/rate-limit.js"),
        },
        PluginKind::AlertChannel => KindTemplate {
            config: include_str!("templates/config/alert-channel.json"),
            fixtures: fixtures!("alert-channel": "deliver.json", "no-url.json"),
            python: include_str!("templates/python/alert-channel.py"),
            js: include_str!("templates/js/alert-channel.js"),
        },
        PluginKind::Extractor => KindTemplate {
            config: include_str!("templates/config/extractor.json"),
            fixtures: fixtures!("extractor": "first-person.json", "default-prefix.json"),
            python: include_str!("templates/python/extractor.py"),
            js: include_str!("templates/js/extractor.js"),
        },
    }
}

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
pub fn create(kind: PluginKind, name: &str, lang: Lang, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    check_name(name)?;
    if dir.exists() && dir.read_dir().map(|mut d| d.next().is_some()).unwrap_or(true) {
        bail!("{} already exists and is not empty", dir.display());
    }
    let t = template(kind);
    let lang_name = match lang {
        Lang::Rust => "rust",
        Lang::Python => "python",
        Lang::Js => "js",
    };
    let mut files: Vec<(PathBuf, String)> = vec![
        (dir.join(MANIFEST), manifest(kind, name, lang_name)),
        (dir.join("config.example.json"), t.config.to_string()),
        (dir.join("fixture.json"), serde_json::to_string_pretty(&fixture_json(kind))? + "\n"),
        (dir.join("README.md"), readme(kind, name, lang)),
    ];
    files.extend(t.fixtures.iter().map(|(f, text)| (dir.join("fixtures").join(f), text.to_string())));
    files.extend(WIT_FILES.iter().map(|(f, text)| (dir.join(format!("wit/{WIT_VERSION}/{f}")), text.to_string())));
    let source = |text: &str| text.replace("{{name}}", name);
    match lang {
        Lang::Rust => files.extend([
            (dir.join("Cargo.toml"), cargo_toml(name, kind.as_str())),
            (dir.join("rust-toolchain.toml"), TOOLCHAIN.to_string()),
            (dir.join(".gitignore"), "/target\n".to_string()),
            (dir.join("src/lib.rs"), lib_rs(kind)),
            (dir.join("sdk/memhost-sdk/Cargo.toml"), SDK_MANIFEST.to_string()),
            (dir.join("sdk/memhost-sdk/src/lib.rs"), SDK_LIB.to_string()),
        ]),
        Lang::Python => files.extend([
            (dir.join("app.py"), source(t.python)),
            (dir.join("requirements.txt"), format!("componentize-py=={COMPONENTIZE_PY}\n")),
            (dir.join(".gitignore"), format!("/.venv\n/{name}.wasm\n__pycache__/\n")),
        ]),
        Lang::Js => files.extend([
            (dir.join("app.js"), source(t.js)),
            (dir.join("package.json"), package_json(name)),
            (dir.join(".gitignore"), format!("/node_modules\n/{name}.wasm\n")),
        ]),
    }
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

fn manifest(kind: PluginKind, name: &str, lang: &str) -> String {
    let backend = if lang == "js" {
        "# QuickJS: ~1.6 MB, fast calls, `u64`/`s64` are Numbers. \"starlingmonkey\":\n\
         # ~12.5 MB, `u64`/`s64` are BigInts (docs/plugins.md, \"Other languages\").\n\
         js_backend = \"quickjs\"\n"
    } else {
        ""
    };
    format!(
        "# A memhost plugin project: `memhost plugin build` and `memhost plugin test` read this.\n\
         name = \"{name}\"\nkind = \"{kind}\"\nlang = \"{lang}\"\n{backend}"
    )
}

fn package_json(name: &str) -> String {
    let package = serde_json::json!({
        "name": name,
        "version": "0.1.0",
        "private": true,
        "type": "module",
        "scripts": { "build": "memhost plugin build", "test": "memhost plugin test" },
        "devDependencies": {
            "@bytecodealliance/jco": JCO,
            "@bytecodealliance/preview2-shim": PREVIEW2_SHIM,
        },
        "overrides": { "@bytecodealliance/preview2-shim": PREVIEW2_SHIM },
    });
    serde_json::to_string_pretty(&package).unwrap_or_default() + "\n"
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

fn readme(kind: PluginKind, name: &str, lang: Lang) -> String {
    let (wasm, toolchain) = match lang {
        Lang::Rust => (
            format!("target/wasm32-wasip2/release/{}.wasm", name.replace('-', "_")),
            "`sdk/memhost-sdk/` is the SDK that wraps the WIT package; `cargo` and the\n`wasm32-wasip2` target build it (`rust-toolchain.toml`).",
        ),
        Lang::Python => (
            format!("{name}.wasm"),
            "The first build makes `.venv/` and installs componentize-py (pinned in\n`requirements.txt`) from PyPI. Your code is `app.py`.",
        ),
        Lang::Js => (
            format!("{name}.wasm"),
            "The first build installs jco (pinned in `package.json`) from npm into\n`node_modules/`. Your code is `app.js`; the backend is set in\n`memhost-plugin.toml`.",
        ),
    };
    format!(
        r#"# {name}

A memhost `{kind}` plugin.

    memhost plugin build                  # -> {wasm}
    memhost plugin test                   # fixtures/*.json against the build
    memhost plugin check {wasm}
    memhost plugin run {wasm} --input fixture.json --plugin-config config.example.json
    memhost plugin upload {wasm}

`wit/{WIT_VERSION}/` is the WIT package this plugin implements, vendored by
`memhost plugin new`. {toolchain}

Each file in `fixtures/` is a call (`input`), what it must answer
(`expect`: `{{"ok": …}}` or `{{"error": {{"code": …}}}}`, only the fields
named are compared) and optionally its own `config` (else
`config.example.json`). `memhost plugin fixtures pull ID` saves real calls
from a server as more fixtures.
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
//! A pricing plugin: a base price per plan, units included, the rest billed
//! per unit, and hard limits. The config is `config.example.json`.
use std::collections::BTreeMap;

use memhost_sdk::pricing::*;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "usd")]
    currency: String,
    plans: BTreeMap<String, Plan>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Plan {
    #[serde(default)]
    base_micros: i64,
    #[serde(default)]
    metrics: BTreeMap<String, MetricRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricRule {
    #[serde(default)]
    included: u64,
    #[serde(default)]
    unit_price_micros: i64,
    hard_limit: Option<u64>,
}

fn usd() -> String {
    "USD".into()
}

fn plan_of(config: &str, plan: &str) -> Result<(String, Plan), PluginError> {
    let mut config: Config = parse_config(config)?;
    let rules = config
        .plans
        .remove(plan)
        .ok_or_else(|| PluginError::new("unknown-plan", format!("plan `{plan}` is not in the config")))?;
    Ok((config.currency, rules))
}

struct Plugin;

impl Pricing for Plugin {
    const NAME: &'static str = env!("CARGO_PKG_NAME");
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn config_schema() -> &'static str {
        r#"{"type": "object", "required": ["plans"], "additionalProperties": false, "properties": {
            "currency": {"type": "string", "minLength": 3, "maxLength": 3},
            "plans": {"type": "object", "additionalProperties": {
                "type": "object", "additionalProperties": false, "properties": {
                    "base_micros": {"type": "integer", "minimum": 0},
                    "metrics": {"type": "object", "additionalProperties": {
                        "type": "object", "additionalProperties": false, "properties": {
                            "included": {"type": "integer", "minimum": 0},
                            "unit_price_micros": {"type": "integer", "minimum": 0},
                            "hard_limit": {"type": "integer", "minimum": 0}}}}}}}
        }}"#
    }

    fn rate(config: &str, input: RatingInput) -> Result<Invoice, PluginError> {
        let (currency, plan) = plan_of(config, &input.plan)?;
        let mut lines = Vec::new();
        if plan.base_micros > 0 {
            lines.push(InvoiceLine {
                kind: LineKind::Base,
                metric: None,
                reference: None,
                description: format!("{} plan", input.plan),
                quantity: 0,
                amount: plan.base_micros,
            });
        }
        for usage in &input.usage {
            let Some(rule) = plan.metrics.get(&usage.metric) else { continue };
            let billable = usage.quantity.saturating_sub(rule.included);
            if billable == 0 || rule.unit_price_micros == 0 {
                continue;
            }
            let amount = rule
                .unit_price_micros
                .checked_mul(billable as i64)
                .ok_or_else(|| PluginError::new("overflow", format!("{billable} × {} overflows", rule.unit_price_micros)))?;
            lines.push(InvoiceLine {
                kind: LineKind::Usage,
                metric: Some(usage.metric.clone()),
                reference: None,
                description: format!("{billable} {} over the {} included", usage.metric, rule.included),
                quantity: billable,
                amount,
            });
        }
        let total = lines.iter().map(|l| l.amount).sum();
        Ok(Invoice { currency, lines, total })
    }

    fn limits(config: &str, plan: &str, _plan_snapshot: Option<&str>, _overrides: &str) -> Result<Vec<MetricLimit>, PluginError> {
        let (_, plan) = plan_of(config, plan)?;
        Ok(plan
            .metrics
            .iter()
            .map(|(metric, rule)| MetricLimit {
                metric: metric.clone(),
                included: rule.included,
                hard_limit: rule.hard_limit,
                overage_allowed: rule.unit_price_micros > 0,
            })
            .collect())
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
//! An extractor: remembers every user sentence that starts with one of the
//! config's `prefixes` (default "I ") and is not already remembered.
use memhost_sdk::extractor::*;

struct Plugin;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_prefixes")]
    prefixes: Vec<String>,
}

fn default_prefixes() -> Vec<String> {
    vec!["I ".into()]
}

impl Extractor for Plugin {
    const NAME: &'static str = env!("CARGO_PKG_NAME");
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn config_schema() -> &'static str {
        r#"{"type": "object", "additionalProperties": false, "properties": {
            "prefixes": {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}}}}"#
    }

    fn extract(config: &str, input: ExtractInput) -> Result<Vec<MemoryOp>, PluginError> {
        let config: Config = parse_config(config)?;
        let mut ops = Vec::new();
        for turn in input.turns.iter().filter(|t| t.role == "user") {
            for sentence in turn.content.split(['.', '!', '?']).map(str::trim) {
                let text = format!("{sentence}.");
                let known = input.existing.iter().any(|m| m.text == text)
                    || ops.iter().any(|op| matches!(op, MemoryOp::Add(m) if m.text == text));
                if config.prefixes.iter().any(|p| sentence.starts_with(p.as_str())) && !known {
                    ops.push(MemoryOp::Add(NewMemory { text, metadata: "{}".into() }));
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
