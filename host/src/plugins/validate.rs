//! Upload validation: before a plugin is stored it must be a component (not a
//! core module, not a precompiled artifact), implement its kind's world at a
//! WIT version this host supports, import nothing its kind is not granted,
//! answer `describe` consistently, publish a valid config schema, and pass a
//! self-check on fixture input within its limits. Each refusal names the exact
//! reason.

use std::sync::Arc;

use serde::Serialize;
use utoipa::ToSchema;
use wasmtime::Engine;
use wasmtime::component::Component;
use wasmtime::component::types::ComponentItem;

use super::calls::{self, CallInput, RunError};
use super::host_calls::{HostCalls, HttpGate};
use super::kind::{LimitOverrides, Limits, PluginKind};
use super::runtime::{CallError, Runtime};
use super::types::PluginInfo;
use super::wit::{Prepared, Unsupported, Version, WitVersion};

const WIT_PACKAGE: &str = "memhost:plugin/";

/// Why an upload was refused. Each maps to 422 with a stable code.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("plugin is {} ({size} bytes); the limit is {} ({limit} bytes, `plugins.max_plugin_bytes`)", mib(*.size), mib(*.limit))]
    TooLarge { size: u64, limit: u64 },
    #[error("not a WebAssembly component: {0}")]
    NotAComponent(String),
    #[error("invalid component: {0}")]
    Invalid(String),
    #[error("wrong world: uploaded as a {expected} plugin, but the component implements the `{found}` world")]
    WrongWorld { expected: PluginKind, found: PluginKind },
    #[error(
        "the component implements no memhost plugin world: it exports none of memhost:plugin/{{pricer, limiter, notifier, extraction}} (its exports: {exports})"
    )]
    NoWorld { exports: String },
    #[error("missing export `{export}`: every {kind} plugin must export it")]
    MissingExport { kind: PluginKind, export: String },
    #[error(
        "built against WIT memhost:plugin@{found}, newer than this server supports ({supported}); upgrade the server or rebuild the plugin with an SDK for {supported}"
    )]
    WitTooNew { found: String, supported: String },
    #[error(
        "built against WIT memhost:plugin@{found}, which this server no longer supports ({supported}); rebuild the plugin with the current SDK"
    )]
    WitTooOld { found: String, supported: String },
    #[error("forbidden import `{import}`: a {kind} plugin may import only {granted}")]
    ForbiddenImport { import: String, kind: PluginKind, granted: String },
    #[error("`describe` failed: {0}")]
    Describe(CallError),
    #[error("`describe` answered badly: {0}")]
    BadDescribe(String),
    #[error("the config schema from `describe` is not a valid JSON Schema: {0}")]
    BadSchema(String),
    #[error("self-check failed: {0}")]
    SelfCheck(CallError),
    #[error("self-check failed: {0}")]
    SelfCheckOutput(String),
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

impl UploadError {
    pub fn code(&self) -> &'static str {
        match self {
            UploadError::TooLarge { .. } => "PLUGIN_TOO_LARGE",
            UploadError::NotAComponent(_) => "NOT_A_COMPONENT",
            UploadError::Invalid(_) => "INVALID_COMPONENT",
            UploadError::WrongWorld { .. } | UploadError::NoWorld { .. } => "WRONG_WORLD",
            UploadError::MissingExport { .. } => "MISSING_EXPORT",
            UploadError::WitTooNew { .. } | UploadError::WitTooOld { .. } => "WIT_VERSION_UNSUPPORTED",
            UploadError::ForbiddenImport { .. } => "FORBIDDEN_IMPORT",
            UploadError::Describe(_) | UploadError::BadDescribe(_) => "INVALID_DESCRIBE",
            UploadError::BadSchema(_) => "INVALID_CONFIG_SCHEMA",
            UploadError::SelfCheck(_) | UploadError::SelfCheckOutput(_) => "SELF_CHECK_FAILED",
        }
    }

    /// For self-check traps: which limit or trap (`out_of_fuel`, …).
    pub fn trap(&self) -> Option<&'static str> {
        match self {
            UploadError::SelfCheck(e) | UploadError::Describe(e) => Some(e.code()),
            _ => None,
        }
    }
}

/// What inspecting a component found.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Inspection {
    pub kind: PluginKind,
    pub wit_version: String,
    /// The adapter it is dispatched to.
    #[serde(skip)]
    pub wit: Option<WitVersion>,
    /// The SDK stamp (`{"wit": …, "sdk": …}`) if built with memhost-sdk.
    pub sdk: Option<String>,
    pub imports: Vec<String>,
    pub exports: Vec<String>,
}

/// A plugin that passed every check, ready to store.
pub struct Validated {
    pub inspection: Inspection,
    pub info: PluginInfo,
    pub component: Component,
    pub prepared: Prepared,
    pub self_check: super::runtime::CallStats,
}

/// Size and first bytes: a component, a core module, a precompiled artifact,
/// or junk.
/// A compile error with what to do about the known causes.
fn compile_error(text: String) -> String {
    if text.contains("component model async feature") {
        format!(
            "{text}: the component uses the component-model async ABI, which this server's \
             `plugins.component_model_async` turns off (jco: build with `--backend-qjs-disable-async`)"
        )
    } else {
        text
    }
}

pub fn check_header(bytes: &[u8], max_bytes: u64) -> Result<(), UploadError> {
    if bytes.len() as u64 > max_bytes {
        return Err(UploadError::TooLarge { size: bytes.len() as u64, limit: max_bytes });
    }
    if bytes.starts_with(b"\x7fELF") {
        return Err(UploadError::NotAComponent(
            "this is a precompiled native artifact; upload the .wasm component (the server compiles it itself)".into(),
        ));
    }
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(UploadError::NotAComponent(
            "the file does not start with the WebAssembly magic bytes `\\0asm`".into(),
        ));
    }
    match bytes[4..8] {
        [0x0d, 0x00, 0x01, 0x00] => Ok(()),
        [0x01, 0x00, 0x00, 0x00] => Err(UploadError::NotAComponent(
            "this is a core WebAssembly module; build for `wasm32-wasip2` (which emits a component) or wrap it with `wasm-tools component new`".into(),
        )),
        _ => Err(UploadError::NotAComponent("unknown WebAssembly version or layer".into())),
    }
}

/// Splits `memhost:plugin/pricer@0.1.0` into (`pricer`, version).
fn memhost_interface(name: &str) -> Option<(&str, &str)> {
    name.strip_prefix(WIT_PACKAGE)?.split_once('@')
}

/// Which world the component implements, at which WIT version, and whether
/// its imports are all granted to that kind.
pub fn inspect(
    engine: &Engine,
    component: &Component,
    bytes: &[u8],
    expected: Option<PluginKind>,
) -> Result<Inspection, UploadError> {
    let ty = component.component_type();
    let exports: Vec<String> = ty.exports(engine).map(|(name, _)| name.to_string()).collect();
    let imports: Vec<(String, bool)> = ty
        .imports(engine)
        .map(|(name, item)| (name.to_string(), matches!(item.ty, ComponentItem::ComponentInstance(_))))
        .collect();

    let mains: Vec<(PluginKind, &str)> = exports
        .iter()
        .filter_map(|e| memhost_interface(e))
        .filter_map(|(iface, version)| PluginKind::from_main_interface(iface).map(|k| (k, version)))
        .collect();
    let (found, version) = match mains.as_slice() {
        [] => {
            return Err(UploadError::NoWorld {
                exports: if exports.is_empty() { "none".into() } else { exports.join(", ") },
            });
        }
        [one] => *one,
        many => {
            return Err(UploadError::Invalid(format!(
                "the component implements several plugin worlds ({}); a plugin implements exactly one",
                many.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>().join(", ")
            )));
        }
    };
    let parsed = Version::parse(version).ok_or_else(|| UploadError::Invalid(format!("bad WIT version `{version}`")))?;
    let wit = WitVersion::for_guest(&parsed).map_err(|why| {
        let found = parsed.to_string();
        let supported = WitVersion::ALL.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", ");
        match why {
            Unsupported::TooNew => UploadError::WitTooNew { found, supported },
            Unsupported::TooOld => UploadError::WitTooOld { found, supported },
        }
    })?;
    if let Some(expected) = expected
        && expected != found
    {
        return Err(UploadError::WrongWorld { expected, found });
    }
    if !exports.iter().any(|e| memhost_interface(e).is_some_and(|(iface, _)| iface == "meta")) {
        return Err(UploadError::MissingExport { kind: found, export: format!("{WIT_PACKAGE}meta@{version}") });
    }

    let granted = found.granted_imports();
    let granted_list = || {
        let mut g: Vec<String> =
            granted.iter().filter(|i| **i != "types").map(|i| format!("{WIT_PACKAGE}{i}")).collect();
        g.push("wasi:* (capability-free)".into());
        g.join(", ")
    };
    for (name, _) in &imports {
        let allowed = if let Some((iface, _)) = memhost_interface(name) {
            granted.contains(&iface)
        } else {
            // WASI is linked with no capabilities; the linker refuses what it
            // does not provide (wasi:http, for one) when the plugin is prepared.
            name.starts_with("wasi:")
        };
        if !allowed {
            return Err(UploadError::ForbiddenImport { import: name.clone(), kind: found, granted: granted_list() });
        }
    }
    Ok(Inspection {
        kind: found,
        wit_version: parsed.to_string(),
        wit: Some(wit),
        sdk: sdk_stamp(bytes),
        imports: imports.into_iter().map(|(n, _)| n).collect(),
        exports,
    })
}

/// The `memhost-sdk` custom section the SDK's export macros leave in the
/// plugin's core module, if any.
pub fn sdk_stamp(bytes: &[u8]) -> Option<String> {
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        if let Ok(wasmparser::Payload::CustomSection(section)) = payload
            && section.name() == "memhost-sdk"
        {
            return std::str::from_utf8(section.data()).ok().map(|s| s.trim_end_matches('\0').to_string());
        }
    }
    None
}

/// Compiles and validates an upload. CPU-heavy (compilation): call it from a
/// blocking-friendly context for large plugins.
pub async fn validate(
    runtime: &Runtime,
    bytes: &[u8],
    expected: Option<PluginKind>,
    limits: &Limits,
    digest: &Arc<str>,
) -> Result<Validated, UploadError> {
    check_header(bytes, runtime.config().max_plugin_bytes)?;
    let engine = runtime.engine().clone();
    let owned = bytes.to_vec();
    let component = tokio::task::spawn_blocking(move || Component::new(&engine, &owned))
        .await
        .map_err(|e| UploadError::Invalid(format!("compilation task failed: {e}")))?
        .map_err(|e| UploadError::Invalid(compile_error(format!("{e:#}"))))?;
    let inspection = inspect(runtime.engine(), &component, bytes, expected)?;
    let version = inspection.wit.unwrap_or(WitVersion::NEWEST);
    let prepared = runtime.prepare(version, inspection.kind, &component).map_err(|e| link_error(e, inspection.kind))?;

    let described = runtime.describe(&prepared, limits, digest).await.map_err(UploadError::Describe)?;
    let info = described.value;
    check_info(&info, inspection.kind)?;
    compile_schema(&info.config_schema).map_err(UploadError::BadSchema)?;

    let self_check = self_check(runtime, &prepared, limits, digest, "{}").await?;
    Ok(Validated { inspection, info, component, prepared, self_check })
}

/// Everything an upload is checked for, with the limits it will run under:
/// the kind's (given, or inferred from the world) with `overrides` applied.
/// Shared by the server's upload and `memhost plugin check`.
pub async fn validate_with_limits(
    runtime: &Runtime,
    bytes: &[u8],
    expected: Option<PluginKind>,
    overrides: &LimitOverrides,
    digest: &Arc<str>,
) -> Result<(Validated, Limits), UploadError> {
    let assumed = runtime.config().limits(expected.unwrap_or(PluginKind::Pricing)).with(overrides);
    let mut v = validate(runtime, bytes, expected, &assumed, digest).await?;
    let limits = runtime.config().limits(v.inspection.kind).with(overrides);
    if limits != assumed {
        // The kind was inferred and has other limits: check again under them.
        v.self_check = self_check(runtime, &v.prepared, &limits, digest, "{}").await?;
    }
    Ok((v, limits))
}

/// Runs the kind's fixture through the plugin with `config`: it must finish
/// within its limits and answer well-formed (a deliberate plugin error, such as
/// `invalid-config` for an empty config, is a fine answer). Alert channels get
/// a dry-run network that answers 200 without sending anything.
/// Tries of a self-check that missed its deadline.
const SELF_CHECK_TRIES: u32 = 3;

pub async fn self_check(
    runtime: &Runtime,
    prepared: &Prepared,
    limits: &Limits,
    digest: &Arc<str>,
    config: &str,
) -> Result<super::runtime::CallStats, UploadError> {
    // A missed wall-clock deadline can be the machine being busy (a start
    // under load), not the plugin: the check is tried again, up to
    // SELF_CHECK_TRIES times. Fuel, traps and memory are deterministic and
    // refuse at once; a plugin that loops still fails every try.
    let mut tries = 0;
    let report = loop {
        tries += 1;
        let host = HostCalls { http: Some(HttpGate::dry_run()), ..HostCalls::none() };
        match calls::run(runtime, prepared, limits, digest, config, host, CallInput::fixture(prepared.kind())).await {
            Ok(report) => break report,
            Err(RunError::Call(CallError::Deadline { .. })) if tries < SELF_CHECK_TRIES => continue,
            Err(RunError::Call(c)) => return Err(UploadError::SelfCheck(c)),
            Err(other) => return Err(UploadError::SelfCheckOutput(other.to_string())),
        }
    };
    calls::check_answer(&report).map_err(UploadError::SelfCheckOutput)?;
    Ok(report.stats)
}

/// A linking failure names the import the host does not provide.
fn link_error(e: wasmtime::Error, kind: PluginKind) -> UploadError {
    let text = format!("{e:#}");
    let import = text.split('`').nth(1).map(str::to_string);
    match import {
        Some(import) if text.contains("import") => UploadError::ForbiddenImport {
            import,
            kind,
            granted: "what its kind is granted (see the plugin guide)".into(),
        },
        _ => UploadError::Invalid(text),
    }
}

fn check_info(info: &PluginInfo, kind: PluginKind) -> Result<(), UploadError> {
    let described = info.kind;
    if described != kind {
        return Err(UploadError::BadDescribe(format!(
            "it says kind `{described}` but the component implements the `{kind}` world"
        )));
    }
    let name_ok = !info.name.is_empty()
        && info.name.len() <= 64
        && info.name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !name_ok {
        return Err(UploadError::BadDescribe(format!(
            "name `{}` must be 1 to 64 characters of a-z, 0-9, `-` or `_`",
            info.name
        )));
    }
    if Version::parse(&info.version).is_none() {
        return Err(UploadError::BadDescribe(format!("version `{}` is not semver (major.minor.patch)", info.version)));
    }
    Ok(())
}

/// Compiles a JSON Schema (draft 2020-12 unless it says otherwise).
pub fn compile_schema(schema: &str) -> Result<jsonschema::Validator, String> {
    let value: serde_json::Value = serde_json::from_str(schema).map_err(|e| format!("not JSON: {e}"))?;
    jsonschema::validator_for(&value).map_err(|e| e.to_string())
}

/// Validates a config against a plugin's schema; each error names its path.
pub fn check_config(schema: &str, config: &serde_json::Value) -> Result<(), Vec<String>> {
    let validator = compile_schema(schema).map_err(|e| vec![format!("the plugin's schema is invalid: {e}")])?;
    let errors: Vec<String> = validator
        .iter_errors(config)
        .map(|e| {
            let path = e.instance_path().to_string();
            if path.is_empty() { e.to_string() } else { format!("{path}: {e}") }
        })
        .collect();
    if errors.is_empty() { Ok(()) } else { Err(errors) }
}
