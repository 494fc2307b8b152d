//! Plugins: sandboxed WIT components that carry the business logic (pricing,
//! rate-limit rules, alert channels, extraction), uploaded and activated while
//! the service runs.
//!
//! - `pricing`, `rate_limit`, `alert_channel`, `extractor`: one file per
//!   kind with its types (the host's own) and the typed facade callers use
//!   (`plugins.pricing().plan_limits(…)`); `types`: what kinds share.
//! - `wit/`: one adapter per WIT version, converting generated types at the
//!   boundary; plugins are dispatched by the version they were built against.
//! - `runtime`: the sandbox (engine, pool, fresh store per call, limits).
//! - `validate`: upload checks; `calls`: JSON in and out of each kind's
//!   functions (self-check, `run`); `host_calls`: what a kind may import.
//! - `registry`: records and activations in the database.
//! - `uploads`: uploads compiled in the background (queued, compiling,
//!   ready or refused), bounded in number.
//! - this file: [`PluginService`], which keeps the active set (swapped
//!   atomically; in-flight calls finish on the version they started with),
//!   falls back to a target's previous version when a call fails, compiles
//!   each plugin once, caches precompiled artifacts, and follows other
//!   instances through the change feed.

pub mod alert_channel;
pub mod build_plan;
pub mod calls;
pub mod extractor;
pub mod host_calls;
pub mod kind;
pub mod pricing;
pub mod rate_limit;
pub mod recorder;
pub mod registry;
pub mod routing;
pub mod runtime;
pub mod types;
pub mod uploads;
pub mod validate;
pub mod wit;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use chrono::Utc;
use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use wasmtime::component::Component;

pub use calls::{CallInput, CallReport, RunError};
pub use kind::{LimitOverrides, Limits, PluginKind, PluginsConfig};
pub use pricing::MetricLimit;
pub use rate_limit::{LimiterAlgorithm, LimiterRule, LimiterScope, RequestClass};
pub use registry::{ActivationRecord, PluginRecord};
pub use runtime::{CallError, CallStats, Runtime};
pub use types::GuestError;
pub use validate::UploadError;

use crate::providers::Providers;
use crate::store::Database;
use crate::supervisor::Shutdown;
use host_calls::{HostCalls, HttpGate};
use wit::{Prepared, WitVersion};

/// A default plugin compiled into the binary, with the policy file it is
/// first activated with (none: uploaded but left inactive).
struct Builtin {
    kind: PluginKind,
    wasm: &'static [u8],
    policy: Option<&'static str>,
}

const BUILTINS: [Builtin; 5] = [
    Builtin {
        kind: PluginKind::Pricing,
        wasm: include_bytes!(concat!(env!("MEMHOST_PLUGINS_DIR"), "/pricing_tiered.wasm")),
        policy: Some(include_str!("../../../policies/pricing.yaml")),
    },
    Builtin {
        kind: PluginKind::RateLimit,
        wasm: include_bytes!(concat!(env!("MEMHOST_PLUGINS_DIR"), "/ratelimit_tiered.wasm")),
        policy: Some(include_str!("../../../policies/rate-limits.yaml")),
    },
    Builtin {
        kind: PluginKind::AlertChannel,
        wasm: include_bytes!(concat!(env!("MEMHOST_PLUGINS_DIR"), "/alert_webhook.wasm")),
        // Needs a URL; an operator activates it with one.
        policy: None,
    },
    Builtin {
        kind: PluginKind::Extractor,
        wasm: include_bytes!(concat!(env!("MEMHOST_PLUGINS_DIR"), "/extract_rules.wasm")),
        policy: Some(include_str!("../../../policies/extraction.yaml")),
    },
    Builtin {
        kind: PluginKind::Extractor,
        wasm: include_bytes!(concat!(env!("MEMHOST_PLUGINS_DIR"), "/extract_llm.wasm")),
        // Needs an LLM provider (`[completions]`); an operator activates it
        // per org, plan or globally.
        policy: None,
    },
];

/// Failures of plugin operations, mapped once to the envelope in `api::error`.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error(transparent)]
    Upload(#[from] UploadError),
    #[error("plugin {0} not found")]
    NotFound(String),
    #[error("plugin id prefix `{0}` matches more than one plugin; give more characters")]
    Ambiguous(String),
    #[error("{0}")]
    InvalidRequest(String),
    /// A canary routing rule that does not compile or answer a bool.
    #[error("routing rule: {0}")]
    InvalidRule(String),
    #[error("config does not match the plugin's schema: {}", .0.join("; "))]
    InvalidConfig(Vec<String>),
    #[error("{0}")]
    Conflict(String),
    /// Too many uploads in flight; the caller should retry shortly.
    #[error("{0}")]
    Busy(String),
    #[error("no active {0} plugin")]
    NoneActive(PluginKind),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// A plugin compiled and linked for its world, shared by every activation of it.
pub struct Loaded {
    pub record: PluginRecord,
    pub digest: Arc<str>,
    pub limits: Limits,
    pub prepared: Prepared,
}

/// One current activation with its plugin. Calls hold an `Arc` of it, so a
/// swap never pulls a plugin out from under a call.
pub struct Active {
    pub activation: ActivationRecord,
    /// The config as JSON text, as the plugin receives it.
    pub config: String,
    pub plugin: Arc<Loaded>,
    /// The version active for this target before this one, with its config:
    /// it answers when a call of this one fails (if `fallback_to_previous`).
    pub previous: Option<Previous>,
    /// After a failure, calls go straight to `previous` until then (ms since
    /// the epoch), so a broken version does not cost a deadline per call.
    failing_until_ms: AtomicU64,
    /// A canary's routing rule, compiled.
    routing: Option<routing::RoutingRule>,
}

/// The fallback of an [`Active`].
pub struct Previous {
    pub plugin: Arc<Loaded>,
    pub config: String,
}

/// A plugin's answer, and whether the fallback (the previous version) gave it.
#[derive(Debug)]
pub struct Answer<T> {
    pub value: T,
    pub fallback: bool,
    /// Provider work the answering call caused through the host's imports.
    pub host_usage: runtime::HostUsage,
}

/// Why a plugin call gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum PluginFailure {
    /// The sandbox stopped it (trap, fuel, deadline, memory, size).
    #[error(transparent)]
    Call(#[from] CallError),
    /// The plugin answered with an error on purpose, with the provider work
    /// it caused through the host's imports before it did (to meter).
    #[error("{0}")]
    Guest(GuestError, runtime::HostUsage),
    /// The answer breaks what the kind promises (an invoice whose lines do
    /// not add up to its total).
    #[error("{0}")]
    BadAnswer(String),
}

/// Calls an active plugin: `$call` is the call, written with `$p` (the
/// [`Loaded`] plugin) and `$config` (its config). When the sandbox stops it
/// and fallback is on, the target's previous version answers (and, for a
/// few seconds, answers first). A plugin's deliberate error is an answer,
/// not a failure. (A macro rather than a function taking an async closure:
/// the facades' futures must stay `Send`.)
macro_rules! with_fallback {
    ($service:expr, $active:expr, |$p:ident, $config:ident| $call:expr) => {{
        let (service, active): (&$crate::plugins::PluginService, &$crate::plugins::Active) = ($service, $active);
        let previous = service.fallback_for(active);
        let first = if service.skip_primary(active, previous.is_some()) {
            None
        } else {
            let ($p, $config) = (&*active.plugin, active.config.as_str());
            Some($call)
        };
        match first {
            Some(Ok(outcome)) => service.answered(outcome, false),
            first => {
                let failure = first.and_then(|r| r.err());
                if let Some(e) = &failure {
                    service.note_failure(active, e, previous.is_some());
                }
                match (previous, failure) {
                    (None, Some(e)) => Err($crate::plugins::PluginFailure::Call(e)),
                    (None, None) => unreachable!("the active version is skipped only when a fallback exists"),
                    (Some(prev), failure) => {
                        let ($p, $config) = (&*prev.plugin, prev.config.as_str());
                        match $call {
                            Ok(outcome) => service.answered(outcome, true),
                            Err(e) => Err($crate::plugins::PluginFailure::Call(failure.unwrap_or(e))),
                        }
                    }
                }
            }
        }
    }};
}
pub(crate) use with_fallback;

/// How long calls skip a version that just failed.
const FAILING_FOR_MS: u64 = 5_000;

/// Plugin calls that failed, and those the previous version answered.
#[derive(Debug, Default)]
struct Stats {
    failures: AtomicU64,
    fallbacks: AtomicU64,
    routing_rule_errors: AtomicU64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PluginStats {
    /// Calls of active plugins the sandbox stopped (trap, fuel, deadline, …).
    pub failures: u64,
    /// Calls the previous version answered instead.
    pub fallbacks: u64,
    /// Canary routing rules that failed when run (the call skipped the canary).
    pub routing_rule_errors: u64,
}

/// Where an activation applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Global,
    Plan(String),
    Org(String),
    /// A share of orgs, chosen by a stable hash of the org id.
    Canary,
}

impl Target {
    pub fn parse(s: &str) -> Result<Target, String> {
        let valid = |v: &str| {
            !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        match s.split_once(':') {
            None if s == "global" => Ok(Target::Global),
            None if s == "canary" => Ok(Target::Canary),
            Some(("plan", p)) if valid(p) => Ok(Target::Plan(p.into())),
            Some(("org", o)) if valid(o) => Ok(Target::Org(o.into())),
            _ => Err(format!("target `{s}`: expected `global`, `plan:<plan>`, `org:<org id>` or `canary`")),
        }
    }

    pub fn as_string(&self) -> String {
        match self {
            Target::Global => "global".into(),
            Target::Plan(p) => format!("plan:{p}"),
            Target::Org(o) => format!("org:{o}"),
            Target::Canary => "canary".into(),
        }
    }
}

/// The current activations of one kind, by target.
#[derive(Default)]
struct Routes {
    global: Option<Arc<Active>>,
    plans: HashMap<String, Arc<Active>>,
    orgs: HashMap<String, Arc<Active>>,
    canary: Option<Arc<Active>>,
}

#[derive(Default)]
struct ActiveSet {
    kinds: HashMap<PluginKind, Routes>,
}

/// The org's stable bucket 0..100 for canary routing.
pub fn canary_bucket(org_id: &str) -> u8 {
    let h = Sha256::digest(org_id.as_bytes());
    (u16::from_be_bytes([h[0], h[1]]) % 100) as u8
}

impl ActiveSet {
    /// Org, then plan, then canary (if the org's bucket is in the share and
    /// the routing rule holds, where it has them), then global.
    fn resolve(
        &self,
        kind: PluginKind,
        org_id: Option<&str>,
        plan: Option<&str>,
        env: &str,
        rule_errors: &AtomicU64,
    ) -> Option<Arc<Active>> {
        let routes = self.kinds.get(&kind)?;
        org_id
            .and_then(|o| routes.orgs.get(o))
            .or_else(|| plan.and_then(|p| routes.plans.get(p)))
            .or_else(|| {
                let canary = routes.canary.as_ref()?;
                let org_id = org_id?;
                let in_share = canary.activation.canary_percent.is_none_or(|p| (canary_bucket(org_id) as i32) < p);
                let rule_holds = || match (&canary.activation.routing_rule, &canary.routing) {
                    (None, _) => true,
                    (Some(_), None) => false,
                    (Some(_), Some(rule)) => {
                        let facts = routing::CallFacts { org_id, plan: plan.unwrap_or(""), env };
                        rule.matches(facts).unwrap_or_else(|why| {
                            rule_errors.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(activation = %canary.activation.id, %why, "canary routing rule failed");
                            false
                        })
                    }
                };
                (in_share && rule_holds()).then_some(canary)
            })
            .or(routes.global.as_ref())
            .cloned()
    }
}

/// The plugin domain service: registry, active set, calls.
#[derive(Clone)]
pub struct PluginService {
    inner: Arc<Inner>,
}

struct Inner {
    runtime: Runtime,
    db: Database,
    active: ArcSwap<ActiveSet>,
    loaded: Mutex<HashMap<String, Arc<Loaded>>>,
    /// Serialises reloads so an older one never overwrites a newer one.
    reload_lock: tokio::sync::Mutex<()>,
    cache_dir: PathBuf,
    http: HttpGate,
    /// Embeddings and completions for extractors' host calls.
    providers: Providers,
    stats: Stats,
    uploads: uploads::Uploads,
    recorder: recorder::CallRecorder,
}

/// A plugin with where it is active.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PluginView {
    #[serde(flatten)]
    pub plugin: PluginRecord,
    /// `active` if any target uses it now, else `inactive`.
    pub status: String,
    /// Upload phase: always `ready` for a stored plugin (an upload still
    /// compiling shows `queued` or `compiling`, a refused one `refused`).
    pub state: &'static str,
    /// Current activations of this plugin.
    pub active_targets: Vec<ActivationRecord>,
}

/// What `POST /admin/plugins` returns.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Uploaded {
    #[serde(flatten)]
    pub plugin: PluginRecord,
    /// false when these exact bytes were uploaded before (nothing changed).
    pub created: bool,
    /// `ready`: stored and available to activate.
    pub state: &'static str,
    /// What the self-check cost (absent when nothing was checked again).
    pub self_check: Option<CallStats>,
    pub imports: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActivateRequest {
    /// `global` (default), `plan:<plan>`, `org:<org id>` or `canary`.
    pub target: Option<String>,
    /// Canary only: share of orgs (1–100) routed to this plugin, by a stable
    /// hash of the org id.
    #[schema(minimum = 1, maximum = 100)]
    pub canary_percent: Option<i32>,
    /// Canary only: a Rhai expression over `org`, `plan`, `env` (`live` or
    /// `test`), `bucket` (the org's 0–99) and `hash(text)` that decides per
    /// call whether the canary serves it, e.g. `plan == "starter" && bucket
    /// < 20`. With `canary_percent` too, both must hold.
    pub rule: Option<String>,
    /// The plugin's config; default: the config of the activation it replaces.
    #[schema(value_type = Option<Object>)]
    pub config: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// Default `global`.
    pub target: Option<String>,
    /// Plugin id (or unique prefix) to go back to; default: the version that
    /// was active before this one.
    pub to: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeactivateRequest {
    /// Default `global`.
    pub target: Option<String>,
}

/// What a run on the server's sandbox returns.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RunReport {
    pub plugin_id: String,
    pub name: String,
    pub version: String,
    pub kind: PluginKind,
    /// The activation whose config was used, for runs of the active plugin.
    pub activation_id: Option<String>,
    #[serde(flatten)]
    pub report: CallReport,
}

impl PluginService {
    /// Builds the runtime, registers the built-in plugins, activates the
    /// defaults on a fresh database and loads the active set.
    pub async fn start(
        db: Database,
        config: PluginsConfig,
        cache_dir: PathBuf,
        providers: Providers,
    ) -> anyhow::Result<PluginService> {
        let http = HttpGate::new(config.http_allow_hosts.clone())?;
        let uploads = uploads::Uploads::new(config.max_concurrent_compiles, config.max_pending_uploads);
        let recorder = recorder::CallRecorder::new(config.recorded_calls, config.record_extractor_text);
        let runtime = Runtime::new(config)?;
        let service = PluginService {
            inner: Arc::new(Inner {
                runtime,
                db,
                active: ArcSwap::from_pointee(ActiveSet::default()),
                loaded: Mutex::new(HashMap::new()),
                reload_lock: tokio::sync::Mutex::new(()),
                cache_dir,
                http,
                providers,
                stats: Stats::default(),
                uploads,
                recorder,
            }),
        };
        service.install_builtins().await?;
        service.reload().await?;
        Ok(service)
    }

    pub fn runtime(&self) -> &Runtime {
        &self.inner.runtime
    }

    /// The last calls the service made to a plugin, newest first.
    pub async fn recorded_calls(&self, id: &str) -> Result<Vec<recorder::RecordedCall>, PluginError> {
        let record = self.find(id).await?;
        Ok(self.inner.recorder.recent(&record.id))
    }

    fn recorder(&self) -> &recorder::CallRecorder {
        &self.inner.recorder
    }

    async fn install_builtins(&self) -> anyhow::Result<()> {
        let current = registry::activations(&self.inner.db, None).await?;
        for b in &BUILTINS {
            let up = self
                .upload(b.wasm, Some(b.kind), LimitOverrides::default(), "builtin")
                .await
                .map_err(|e| anyhow::anyhow!("built-in {} plugin: {e}", b.kind))?;
            let Some(policy) = b.policy else { continue };
            let ever = current.iter().any(|a| a.kind == b.kind)
                || !registry::activations(&self.inner.db, Some((b.kind, "global"))).await?.is_empty();
            if !ever {
                let config: serde_json::Value = serde_yaml_ng::from_str(policy)
                    .map_err(|e| anyhow::anyhow!("policy for the built-in {} plugin: {e}", b.kind))?;
                let request = ActivateRequest { target: None, canary_percent: None, rule: None, config: Some(config) };
                self.activate(&up.plugin.id, request, "builtin")
                    .await
                    .map_err(|e| anyhow::anyhow!("activating the built-in {} plugin: {e}", b.kind))?;
            }
        }
        Ok(())
    }

    /// Validates and stores a plugin; the same bytes again are a no-op.
    pub async fn upload(
        &self,
        wasm: &[u8],
        kind: Option<PluginKind>,
        limits: LimitOverrides,
        uploaded_by: &str,
    ) -> Result<Uploaded, PluginError> {
        validate::check_header(wasm, self.inner.runtime.config().max_plugin_bytes)?;
        self.inner.runtime.config().check_overrides(&limits).map_err(PluginError::InvalidRequest)?;
        let digest = hex::encode(Sha256::digest(wasm));
        if let Some(existing) = registry::find_plugins(&self.inner.db, &digest).await?.into_iter().next() {
            if let Some(expected) = kind
                && expected != existing.kind
            {
                return Err(UploadError::WrongWorld { expected, found: existing.kind }.into());
            }
            if limits != LimitOverrides::default() && limits != existing.limits {
                return Err(PluginError::Conflict(format!(
                    "plugin {} is already stored with limits {}; a plugin's limits are fixed when it is first uploaded",
                    short(&existing.id),
                    serde_json::to_string(&existing.limits).unwrap_or_default()
                )));
            }
            return Ok(Uploaded {
                plugin: existing,
                created: false,
                state: "ready",
                self_check: None,
                imports: Vec::new(),
            });
        }
        let digest_arc: Arc<str> = digest.clone().into();
        let (v, effective) =
            validate::validate_with_limits(&self.inner.runtime, wasm, kind, &limits, &digest_arc).await?;
        let kind = v.inspection.kind;
        let record = PluginRecord {
            id: digest.clone(),
            kind,
            name: v.info.name.clone(),
            version: v.info.version.clone(),
            wit_version: v.inspection.wit_version.clone(),
            sdk: v.inspection.sdk.clone(),
            config_schema: serde_json::from_str(&v.info.config_schema).unwrap_or(serde_json::json!({})),
            limits,
            size_bytes: wasm.len() as i64,
            uploaded_by: uploaded_by.to_string(),
            uploaded_at: Utc::now(),
        };
        registry::insert_plugin(&self.inner.db, &record, wasm).await?;
        self.store_artifact(&digest, &v.component);
        let loaded =
            Arc::new(Loaded { record: record.clone(), digest: digest_arc, limits: effective, prepared: v.prepared });
        self.inner.loaded.lock().unwrap_or_else(|e| e.into_inner()).insert(digest, loaded);
        tracing::info!(plugin = %record.id, kind = %record.kind, name = %record.name, version = %record.version, "plugin uploaded");
        Ok(Uploaded {
            plugin: record,
            created: true,
            state: "ready",
            self_check: Some(v.self_check),
            imports: v.inspection.imports,
        })
    }

    /// Starts an upload compiled in the background (or joins the one of the
    /// same bytes already running); the ticket follows its phase. Bytes
    /// already stored settle at once, as [`PluginService::upload`] would.
    pub async fn start_upload(
        &self,
        wasm: Vec<u8>,
        kind: Option<PluginKind>,
        limits: LimitOverrides,
        uploaded_by: &str,
    ) -> Result<uploads::Ticket, PluginError> {
        let max = self.inner.runtime.config().max_plugin_bytes;
        validate::check_header(&wasm, max)?;
        self.inner.runtime.config().check_overrides(&limits).map_err(PluginError::InvalidRequest)?;
        let digest = hex::encode(Sha256::digest(&wasm));
        let info = uploads::UploadInfo {
            id: digest.clone(),
            size_bytes: wasm.len() as u64,
            kind,
            uploaded_by: uploaded_by.to_string(),
            started_at: Utc::now(),
            limits,
        };
        if !registry::find_plugins(&self.inner.db, &digest).await?.is_empty() {
            let outcome = self.upload(&wasm, kind, limits, uploaded_by).await?;
            let (_, phase) = tokio::sync::watch::channel(uploads::Phase::Done(Ok(Box::new(outcome))));
            return Ok(uploads::Ticket { info, phase, started: false });
        }
        match self.inner.uploads.begin(info)? {
            uploads::Begin::Joined(ticket)
                if ticket.info.limits != limits || (kind.is_some() && ticket.info.kind != kind) =>
            {
                Err(PluginError::Conflict(format!(
                    "plugin {} is being uploaded already with another kind or other limits; wait until it is \
                     stored, then upload again to check them",
                    short(&ticket.info.id)
                )))
            }
            uploads::Begin::Joined(ticket) => Ok(ticket),
            uploads::Begin::Started(ticket) => {
                let service = self.clone();
                let by = uploaded_by.to_string();
                tokio::spawn(async move {
                    let job = service.upload(&wasm, kind, limits, &by);
                    service.inner.uploads.run(&digest, job).await;
                });
                Ok(ticket)
            }
        }
    }

    /// An upload still in flight or refused within the hour, by id or
    /// unique prefix (stored plugins are found by [`PluginService::get`]).
    pub fn upload_progress(&self, id: &str) -> Option<(uploads::UploadInfo, uploads::Phase)> {
        let id = id.trim().to_ascii_lowercase();
        if id.len() < 8 {
            return None;
        }
        self.inner.uploads.find(&id)
    }

    pub async fn list(&self, kind: Option<PluginKind>) -> Result<Vec<PluginView>, PluginError> {
        let plugins = registry::list_plugins(&self.inner.db, kind).await?;
        let current = registry::activations(&self.inner.db, None).await?;
        Ok(plugins
            .into_iter()
            .map(|p| {
                let active_targets: Vec<_> = current.iter().filter(|a| a.plugin_id == p.id).cloned().collect();
                let status = if active_targets.is_empty() { "inactive" } else { "active" }.to_string();
                PluginView { plugin: p, status, state: "ready", active_targets }
            })
            .collect())
    }

    /// A plugin by full id or unique prefix (at least 8 characters).
    pub async fn find(&self, id: &str) -> Result<PluginRecord, PluginError> {
        let id = id.trim().to_ascii_lowercase();
        if id.len() < 8 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(PluginError::NotFound(id));
        }
        let mut found = registry::find_plugins(&self.inner.db, &id).await?;
        match found.len() {
            0 => Err(PluginError::NotFound(id)),
            1 => Ok(found.remove(0)),
            _ => Err(PluginError::Ambiguous(id)),
        }
    }

    pub async fn get(&self, id: &str) -> Result<(PluginView, Vec<ActivationRecord>), PluginError> {
        let plugin = self.find(id).await?;
        let history = registry::activations_of(&self.inner.db, &plugin.id).await?;
        let active_targets: Vec<_> = history.iter().filter(|a| a.deactivated_at.is_none()).cloned().collect();
        let status = if active_targets.is_empty() { "inactive" } else { "active" }.to_string();
        Ok((PluginView { plugin, status, state: "ready", active_targets }, history))
    }

    /// Makes a plugin the current one for a target, after validating its
    /// config against the plugin's schema and self-checking it with that
    /// config. The swap is atomic; calls already running finish on the old
    /// version.
    pub async fn activate(&self, id: &str, req: ActivateRequest, by: &str) -> Result<ActivationRecord, PluginError> {
        let plugin = self.find(id).await?;
        let target = Target::parse(req.target.as_deref().unwrap_or("global")).map_err(PluginError::InvalidRequest)?;
        let canary_percent = match (&target, req.canary_percent, &req.rule) {
            (Target::Canary, Some(p), _) if (1..=100).contains(&p) => Some(p),
            (Target::Canary, Some(_), _) => {
                return Err(PluginError::InvalidRequest("canary_percent must be from 1 to 100".into()));
            }
            (Target::Canary, None, Some(_)) => None,
            (Target::Canary, None, None) => {
                return Err(PluginError::InvalidRequest(
                    "a canary activation needs canary_percent (1 to 100), a routing rule, or both".into(),
                ));
            }
            (_, Some(_), _) | (_, _, Some(_)) => {
                return Err(PluginError::InvalidRequest(
                    "canary_percent and rule apply only to target `canary`".into(),
                ));
            }
            (_, None, None) => None,
        };
        if let Some(rule) = &req.rule {
            routing::RoutingRule::compile(rule).map_err(PluginError::InvalidRule)?;
        }
        let target_s = target.as_string();
        let config = match req.config {
            Some(c) => c,
            None => self.default_config(&plugin, &target_s).await?,
        };
        self.check_config(&plugin, &config).await?;
        let activation = ActivationRecord {
            id: uuid::Uuid::now_v7().to_string(),
            kind: plugin.kind,
            target: target_s,
            plugin_id: plugin.id.clone(),
            config,
            canary_percent,
            routing_rule: req.rule,
            activated_by: by.to_string(),
            activated_at: Utc::now(),
            deactivated_at: None,
        };
        registry::activate(&self.inner.db, &activation).await?;
        tracing::info!(plugin = %plugin.id, kind = %plugin.kind, target = %activation.target, "plugin activated");
        self.reload().await?;
        Ok(activation)
    }

    /// The config an activation gets when none is given: the one the target
    /// has now, else this plugin's most recent one anywhere, else `{}`.
    async fn default_config(&self, plugin: &PluginRecord, target: &str) -> Result<serde_json::Value, PluginError> {
        let current = registry::activations(&self.inner.db, Some((plugin.kind, target)))
            .await?
            .into_iter()
            .find(|a| a.deactivated_at.is_none());
        if let Some(a) = current {
            return Ok(a.config);
        }
        let own = registry::activations_of(&self.inner.db, &plugin.id).await?.into_iter().next();
        Ok(own.map(|a| a.config).unwrap_or_else(|| serde_json::json!({})))
    }

    /// Schema check, then a self-check with the real config.
    async fn check_config(&self, plugin: &PluginRecord, config: &serde_json::Value) -> Result<(), PluginError> {
        if !config.is_object() {
            return Err(PluginError::InvalidConfig(vec!["the config must be a JSON object".into()]));
        }
        validate::check_config(&plugin.config_schema.to_string(), config).map_err(PluginError::InvalidConfig)?;
        let loaded = self.load(&plugin.id).await?;
        validate::self_check(
            &self.inner.runtime,
            &loaded.prepared,
            &loaded.limits,
            &loaded.digest,
            &config.to_string(),
        )
        .await?;
        Ok(())
    }

    /// Goes back to an earlier version for a target: the one active before
    /// `id` (which must be current there), or `to`.
    pub async fn rollback(&self, id: &str, req: RollbackRequest, by: &str) -> Result<ActivationRecord, PluginError> {
        let plugin = self.find(id).await?;
        let target = Target::parse(req.target.as_deref().unwrap_or("global")).map_err(PluginError::InvalidRequest)?;
        let target_s = target.as_string();
        let history = registry::activations(&self.inner.db, Some((plugin.kind, &target_s))).await?;
        let current = history.iter().find(|a| a.deactivated_at.is_none());
        if current.is_none_or(|c| c.plugin_id != plugin.id) {
            return Err(PluginError::Conflict(format!(
                "plugin {} is not the active {} plugin for `{target_s}`; nothing to roll back",
                short(&plugin.id),
                plugin.kind
            )));
        }
        let earlier = match &req.to {
            Some(to) => {
                let to = self.find(to).await?;
                history.iter().find(|a| a.plugin_id == to.id).ok_or_else(|| {
                    PluginError::Conflict(format!(
                        "plugin {} was never active for `{target_s}`; activate it instead",
                        short(&to.id)
                    ))
                })?
            }
            None => history.iter().find(|a| a.plugin_id != plugin.id).ok_or_else(|| {
                PluginError::Conflict(format!("no earlier {} plugin was active for `{target_s}`", plugin.kind))
            })?,
        };
        let request = ActivateRequest {
            target: Some(target_s),
            canary_percent: earlier.canary_percent,
            rule: earlier.routing_rule.clone(),
            config: Some(earlier.config.clone()),
        };
        let earlier_id = earlier.plugin_id.clone();
        self.activate(&earlier_id, request, by).await
    }

    pub async fn deactivate(&self, id: &str, req: DeactivateRequest) -> Result<PluginView, PluginError> {
        let plugin = self.find(id).await?;
        let target = Target::parse(req.target.as_deref().unwrap_or("global")).map_err(PluginError::InvalidRequest)?;
        let target_s = target.as_string();
        let current = registry::activations(&self.inner.db, None).await?;
        if !current.iter().any(|a| a.plugin_id == plugin.id && a.target == target_s) {
            return Err(PluginError::Conflict(format!("plugin {} is not active for `{target_s}`", short(&plugin.id))));
        }
        registry::deactivate(&self.inner.db, plugin.kind, &target_s, Utc::now()).await?;
        tracing::info!(plugin = %plugin.id, kind = %plugin.kind, target = %target_s, "plugin deactivated");
        self.reload().await?;
        Ok(self.get(&plugin.id).await?.0)
    }

    /// The active plugin of a kind for an org on a plan.
    /// The activation that serves a call for an org on a plan, for a live
    /// key (billing, alerts, extraction).
    pub fn active(&self, kind: PluginKind, org_id: Option<&str>, plan: Option<&str>) -> Option<Arc<Active>> {
        self.active_in(kind, org_id, plan, "live")
    }

    /// As [`Self::active`], for a key environment (`live` or `test`), which a
    /// canary routing rule may look at.
    pub fn active_in(
        &self,
        kind: PluginKind,
        org_id: Option<&str>,
        plan: Option<&str>,
        env: &str,
    ) -> Option<Arc<Active>> {
        self.inner.active.load().resolve(kind, org_id, plan, env, &self.inner.stats.routing_rule_errors)
    }

    /// The pricing plugins' facade.
    pub fn pricing(&self) -> pricing::Pricing<'_> {
        pricing::Pricing { service: self }
    }

    /// The rate-limit plugins' facade.
    pub fn rate_limits(&self) -> rate_limit::RateLimits<'_> {
        rate_limit::RateLimits { service: self }
    }

    /// The alert-channel plugins' facade.
    pub fn alert_channels(&self) -> alert_channel::AlertChannels<'_> {
        alert_channel::AlertChannels { service: self }
    }

    /// The extractor plugins' facade.
    pub fn extractors(&self) -> extractor::Extractors<'_> {
        extractor::Extractors { service: self }
    }

    /// What calls of kinds granted host functions get: allow-listed HTTP,
    /// the completion provider, the embedder.
    fn host_calls(&self) -> HostCalls {
        HostCalls {
            http: Some(self.inner.http.clone()),
            llm: self.inner.providers.completer.clone(),
            embedder: Some(self.inner.providers.embedder.clone()),
            model: None,
        }
    }

    pub fn stats(&self) -> PluginStats {
        PluginStats {
            failures: self.inner.stats.failures.load(Ordering::Relaxed),
            fallbacks: self.inner.stats.fallbacks.load(Ordering::Relaxed),
            routing_rule_errors: self.inner.stats.routing_rule_errors.load(Ordering::Relaxed),
        }
    }

    /// The version that answers when `active`'s call fails, if fallback is on.
    fn fallback_for<'a>(&self, active: &'a Active) -> Option<&'a Previous> {
        active.previous.as_ref().filter(|_| self.inner.runtime.config().fallback_to_previous)
    }

    /// Whether to go straight to the fallback: the active version failed
    /// moments ago.
    fn skip_primary(&self, active: &Active, has_fallback: bool) -> bool {
        has_fallback && active.failing_until_ms.load(Ordering::Relaxed) > now_ms()
    }

    fn note_failure(&self, active: &Active, e: &CallError, has_fallback: bool) {
        self.inner.stats.failures.fetch_add(1, Ordering::Relaxed);
        active.failing_until_ms.store(now_ms() + FAILING_FOR_MS, Ordering::Relaxed);
        tracing::warn!(plugin = %active.plugin.digest, kind = %active.plugin.record.kind,
            error = %e, fallback = has_fallback, "plugin call failed");
    }

    fn answered<T>(
        &self,
        outcome: runtime::Outcome<Result<T, GuestError>>,
        fallback: bool,
    ) -> Result<Answer<T>, PluginFailure> {
        if fallback {
            self.inner.stats.fallbacks.fetch_add(1, Ordering::Relaxed);
        }
        let host_usage = outcome.stats.host_usage;
        match outcome.value {
            Ok(value) => Ok(Answer { value, fallback, host_usage }),
            // A deliberate error may come after provider work: keep it for metering.
            Err(e) => Err(PluginFailure::Guest(e, host_usage)),
        }
    }

    /// Runs a stored plugin on JSON input with a given config.
    pub async fn run(
        &self,
        id: &str,
        input: CallInput,
        config: Option<serde_json::Value>,
    ) -> Result<RunReport, PluginError> {
        let plugin = self.find(id).await?;
        let loaded = self.load(&plugin.id).await?;
        let config = config.unwrap_or_else(|| serde_json::json!({}));
        self.run_loaded(&loaded, None, &config.to_string(), input).await
    }

    /// Runs the plugin active for an org/plan, with its activation's config.
    pub async fn run_active(
        &self,
        kind: PluginKind,
        org_id: Option<&str>,
        plan: Option<&str>,
        env: &str,
        input: CallInput,
    ) -> Result<RunReport, PluginError> {
        let active = self.active_in(kind, org_id, plan, env).ok_or(PluginError::NoneActive(kind))?;
        self.run_loaded(&active.plugin, Some(active.activation.id.clone()), &active.config, input).await
    }

    async fn run_loaded(
        &self,
        loaded: &Loaded,
        activation_id: Option<String>,
        config: &str,
        input: CallInput,
    ) -> Result<RunReport, PluginError> {
        let host = self.host_calls();
        let report =
            calls::run(&self.inner.runtime, &loaded.prepared, &loaded.limits, &loaded.digest, config, host, input)
                .await?;
        Ok(RunReport {
            plugin_id: loaded.record.id.clone(),
            name: loaded.record.name.clone(),
            version: loaded.record.version.clone(),
            kind: loaded.record.kind,
            activation_id,
            report,
        })
    }

    /// Reads the current activations and swaps in the new active set.
    pub async fn reload(&self) -> Result<(), PluginError> {
        let _guard = self.inner.reload_lock.lock().await;
        let current = registry::activations(&self.inner.db, None).await?;
        let ended = registry::ended_activations(&self.inner.db).await?;
        let mut set = ActiveSet::default();
        for a in current {
            let plugin = match self.load(&a.plugin_id).await {
                Ok(p) => p,
                Err(e) => {
                    // Keep serving the rest; this target falls through to the next route.
                    tracing::error!(plugin = %a.plugin_id, error = %e, "active plugin could not be loaded");
                    continue;
                }
            };
            let target = Target::parse(&a.target).map_err(PluginError::InvalidRequest)?;
            // The most recent earlier version of this target, if it loads.
            let earlier = ended.iter().find(|e| e.kind == a.kind && e.target == a.target && e.plugin_id != a.plugin_id);
            let previous = match earlier {
                Some(e) => match self.load(&e.plugin_id).await {
                    Ok(plugin) => Some(Previous { plugin, config: e.config.to_string() }),
                    Err(err) => {
                        tracing::warn!(plugin = %e.plugin_id, error = %err, "previous plugin version could not be loaded");
                        None
                    }
                },
                None => None,
            };
            // Stored rules compiled when they were activated; one that no
            // longer does (an engine change) routes nothing to the canary.
            let routing = a.routing_rule.as_deref().and_then(|rule| {
                routing::RoutingRule::compile(rule)
                    .inspect_err(
                        |why| tracing::error!(activation = %a.id, %why, "canary routing rule does not compile"),
                    )
                    .ok()
            });
            let active = Arc::new(Active {
                routing,
                config: a.config.to_string(),
                activation: a,
                plugin,
                previous,
                failing_until_ms: AtomicU64::new(0),
            });
            let routes = set.kinds.entry(active.plugin.record.kind).or_default();
            match target {
                Target::Global => routes.global = Some(active),
                Target::Plan(p) => {
                    routes.plans.insert(p, active);
                }
                Target::Org(o) => {
                    routes.orgs.insert(o, active);
                }
                Target::Canary => routes.canary = Some(active),
            }
        }
        self.inner.active.store(Arc::new(set));
        Ok(())
    }

    /// Whether other instances can change the active set (PostgreSQL), so
    /// [`Self::change_feed_loop`] should run.
    pub fn follows_changes(&self) -> bool {
        self.inner.db.change_feed().is_some()
    }

    /// Follows activations made by other instances: PostgreSQL LISTEN/NOTIFY
    /// (delivered within milliseconds), plus a reload every few seconds in
    /// case a notification was lost while reconnecting. Runs under the
    /// supervisor; returns at once in embedded mode (nothing to follow).
    pub async fn change_feed_loop(self, mut shutdown: Shutdown) {
        let Some(feed) = self.inner.db.change_feed() else { return };
        loop {
            let mut listener = match feed.listen(registry::CHANGES).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "plugin change feed: listening failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => continue,
                        _ = shutdown.requested() => return,
                    }
                }
            };
            // Catch up on anything missed while not listening.
            let _ = self.reload().await;
            loop {
                let next = tokio::select! {
                    n = tokio::time::timeout(std::time::Duration::from_secs(5), listener.next()) => n,
                    _ = shutdown.requested() => return,
                };
                match next {
                    Ok(Ok(())) | Err(_) => {
                        if let Err(e) = self.reload().await {
                            tracing::warn!(error = %e, "plugin change feed: reload failed");
                        }
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "plugin change feed: connection lost; reconnecting");
                        break;
                    }
                }
            }
        }
    }

    /// A stored plugin, compiled once per process: from the precompiled
    /// artifact cache when we produced a valid one, else compiled now.
    async fn load(&self, digest: &str) -> Result<Arc<Loaded>, PluginError> {
        if let Some(l) = self.inner.loaded.lock().unwrap_or_else(|e| e.into_inner()).get(digest) {
            return Ok(l.clone());
        }
        let record = self.find(digest).await?;
        let component = match self.cached_artifact(digest) {
            Some(c) => c,
            None => {
                let wasm = registry::plugin_wasm(&self.inner.db, digest)
                    .await?
                    .ok_or_else(|| PluginError::NotFound(digest.into()))?;
                let engine = self.inner.runtime.engine().clone();
                let component = tokio::task::spawn_blocking(move || Component::new(&engine, &wasm))
                    .await
                    .map_err(|e| anyhow::anyhow!("compile task: {e}"))?
                    .map_err(|e| anyhow::anyhow!("compiling stored plugin {digest}: {e:#}"))?;
                self.store_artifact(digest, &component);
                component
            }
        };
        // Dispatched by the WIT version it was built against (checked at upload).
        let version = wit::Version::parse(&record.wit_version)
            .and_then(|v| WitVersion::for_guest(&v).ok())
            .ok_or_else(|| anyhow::anyhow!("stored plugin {digest}: no adapter for WIT {}", record.wit_version))?;
        let prepared = self
            .inner
            .runtime
            .prepare(version, record.kind, &component)
            .map_err(|e| anyhow::anyhow!("linking stored plugin {digest}: {e:#}"))?;
        let limits = self.inner.runtime.config().limits(record.kind).with(&record.limits);
        let loaded = Arc::new(Loaded { digest: digest.to_string().into(), limits, prepared, record });
        self.inner.loaded.lock().unwrap_or_else(|e| e.into_inner()).insert(digest.to_string(), loaded.clone());
        Ok(loaded)
    }

    fn artifact_dir(&self) -> PathBuf {
        self.inner.cache_dir.join(self.inner.runtime.artifact_key())
    }

    /// The key that authenticates artifacts in the cache directory: only
    /// artifacts this installation wrote are ever deserialized.
    fn cache_key(&self) -> Option<Vec<u8>> {
        let path = self.inner.cache_dir.join("artifact.key");
        if let Ok(k) = std::fs::read(&path)
            && k.len() == 32
        {
            return Some(k);
        }
        std::fs::create_dir_all(&self.inner.cache_dir).ok()?;
        let key: [u8; 32] = rand::random();
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, key).ok()?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600));
        }
        // Another process may have won the race; use whichever key landed.
        if std::fs::hard_link(&tmp, &path).is_err() {
            let _ = std::fs::remove_file(&tmp);
            return std::fs::read(&path).ok().filter(|k| k.len() == 32);
        }
        let _ = std::fs::remove_file(&tmp);
        Some(key.to_vec())
    }

    fn mac(key: &[u8], bytes: &[u8]) -> Option<hmac::Hmac<Sha256>> {
        let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(key).ok()?;
        mac.update(bytes);
        Some(mac)
    }

    fn store_artifact(&self, digest: &str, component: &Component) {
        let (Some(key), Ok(bytes)) = (self.cache_key(), component.serialize()) else { return };
        let dir = self.artifact_dir();
        if std::fs::create_dir_all(&dir).is_err() {
            return;
        }
        let Some(mac) = Self::mac(&key, &bytes) else { return };
        let tag = mac.finalize().into_bytes();
        let tmp = dir.join(format!("{digest}.{}.tmp", std::process::id()));
        let mut content = tag.to_vec();
        content.extend_from_slice(&bytes);
        if std::fs::write(&tmp, content).is_ok() {
            let _ = std::fs::rename(&tmp, dir.join(format!("{digest}.cwasm")));
        }
    }

    fn cached_artifact(&self, digest: &str) -> Option<Component> {
        let key = self.cache_key()?;
        let content = std::fs::read(self.artifact_dir().join(format!("{digest}.cwasm"))).ok()?;
        if content.len() < 32 {
            return None;
        }
        let (tag, bytes) = content.split_at(32);
        Self::mac(&key, bytes)?.verify_slice(tag).ok()?;
        // SAFETY: the bytes are an artifact this installation serialized with
        // this wasmtime version and engine configuration (the directory is
        // keyed by both) and authenticated with its cache key.
        unsafe { Component::deserialize(self.inner.runtime.engine(), bytes) }.ok()
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The first 12 characters of a plugin id, for messages.
pub fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_print() {
        for t in ["global", "canary", "plan:starter", "org:org_AbC-1_2"] {
            assert_eq!(Target::parse(t).unwrap().as_string(), t);
        }
        for bad in ["", "plan:", "org:a b", "galaxy", "plan:x:y", "team:x"] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn canary_buckets_are_stable_and_spread() {
        assert_eq!(canary_bucket("org_a"), canary_bucket("org_a"));
        let buckets: std::collections::HashSet<u8> = (0..1000).map(|i| canary_bucket(&format!("org_{i}"))).collect();
        assert!(buckets.iter().all(|b| *b < 100));
        assert!(buckets.len() > 90, "1000 orgs cover most buckets: {}", buckets.len());
    }

    #[test]
    fn per_plugin_limits_are_bounded() {
        let config = PluginsConfig::default();
        assert!(config.check_overrides(&LimitOverrides::default()).is_ok());
        assert!(config.check_overrides(&LimitOverrides { fuel: Some(50_000_000), ..Default::default() }).is_ok());
        for bad in [
            LimitOverrides { fuel: Some(0), ..Default::default() },
            LimitOverrides { deadline_ms: Some(3_600_000), ..Default::default() },
            LimitOverrides { memory_bytes: Some(config.max_memory_bytes + 1), ..Default::default() },
            LimitOverrides { max_output_bytes: Some(1), ..Default::default() },
        ] {
            assert!(config.check_overrides(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn headers_name_what_the_file_is() {
        let code = |b: &[u8]| validate::check_header(b, 1 << 20).unwrap_err().code();
        assert_eq!(code(b"\x7fELF\x02\x01\x01\0"), "NOT_A_COMPONENT");
        assert_eq!(code(b"\0asm\x01\0\0\0"), "NOT_A_COMPONENT");
        assert_eq!(code(b"hello world"), "NOT_A_COMPONENT");
        assert_eq!(code(&vec![0u8; (1 << 20) + 1]), "PLUGIN_TOO_LARGE");
        assert!(validate::check_header(b"\0asm\x0d\0\x01\0", 1 << 20).is_ok());
    }
}
