//! Plugin kinds: what each world exports, what it may import, and its
//! limits; and the `[plugins]` configuration (limits per kind, fallback,
//! failure policy for rate limits).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The four kinds of plugin, one WIT world each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PluginKind {
    Pricing,
    RateLimit,
    AlertChannel,
    Extractor,
}

impl PluginKind {
    pub const ALL: [PluginKind; 4] =
        [PluginKind::Pricing, PluginKind::RateLimit, PluginKind::AlertChannel, PluginKind::Extractor];

    pub fn as_str(self) -> &'static str {
        match self {
            PluginKind::Pricing => "pricing",
            PluginKind::RateLimit => "rate-limit",
            PluginKind::AlertChannel => "alert-channel",
            PluginKind::Extractor => "extractor",
        }
    }

    pub fn parse(s: &str) -> Option<PluginKind> {
        PluginKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The interface whose export identifies the world.
    pub fn main_interface(self) -> &'static str {
        match self {
            PluginKind::Pricing => "pricer",
            PluginKind::RateLimit => "limiter",
            PluginKind::AlertChannel => "notifier",
            PluginKind::Extractor => "extraction",
        }
    }

    pub fn from_main_interface(name: &str) -> Option<PluginKind> {
        PluginKind::ALL.into_iter().find(|k| k.main_interface() == name)
    }

    /// The `memhost:plugin` interfaces a plugin of this kind may import
    /// (DESIGN.md's table). Everything else it could ask for is refused.
    pub fn granted_imports(self) -> &'static [&'static str] {
        match self {
            PluginKind::Pricing | PluginKind::RateLimit => &["types", "log"],
            PluginKind::AlertChannel => &["types", "log", "http-outbound"],
            PluginKind::Extractor => &["types", "log", "llm", "embeddings"],
        }
    }

    /// Pricing and rate limits must be deterministic: the host gives them a
    /// frozen clock and fixed-seed randomness instead of the real ones.
    pub fn deterministic(self) -> bool {
        matches!(self, PluginKind::Pricing | PluginKind::RateLimit)
    }
}

impl std::fmt::Display for PluginKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Limits on one plugin call. Defaults per kind come from configuration
/// (`[plugins.pricing]` …); a plugin may carry its own, set at upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Wasm fuel per call (about one unit per instruction). Shopify Functions
    /// allows 11M.
    pub fuel: u64,
    /// Wall-clock deadline per call, host calls included, in milliseconds.
    pub deadline_ms: u64,
    /// Linear memory cap in bytes; growing past it traps.
    pub memory_bytes: u64,
    /// Cap on the call's input (config + arguments), in bytes.
    pub max_input_bytes: u64,
    /// Cap on the call's output, in bytes.
    pub max_output_bytes: u64,
}

/// Optional per-plugin overrides of [`Limits`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitOverrides {
    pub fuel: Option<u64>,
    pub deadline_ms: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub max_input_bytes: Option<u64>,
    pub max_output_bytes: Option<u64>,
}

impl Limits {
    /// Sized for the guests the templates build (docs/plugins.md, "Limits"):
    /// a Python guest's interpreter takes 12.4 MiB of linear memory before
    /// any work, a StarlingMonkey guest 9.1 MiB and 2.8–4.5 M fuel per
    /// pricing or rate-limit call; the defaults leave at least 2.5× memory
    /// and 5× fuel over the heaviest of them.
    pub fn default_for(kind: PluginKind) -> Limits {
        const MIB: u64 = 1 << 20;
        match kind {
            PluginKind::Pricing => Limits {
                fuel: 50_000_000,
                deadline_ms: 200,
                memory_bytes: 32 * MIB,
                max_input_bytes: MIB,
                max_output_bytes: MIB,
            },
            PluginKind::RateLimit => Limits {
                fuel: 25_000_000,
                deadline_ms: 50,
                memory_bytes: 32 * MIB,
                max_input_bytes: 256 * 1024,
                max_output_bytes: 256 * 1024,
            },
            PluginKind::AlertChannel => Limits {
                fuel: 50_000_000,
                deadline_ms: 15_000,
                memory_bytes: 32 * MIB,
                max_input_bytes: MIB,
                max_output_bytes: MIB,
            },
            PluginKind::Extractor => Limits {
                fuel: 200_000_000,
                deadline_ms: 60_000,
                memory_bytes: 64 * MIB,
                max_input_bytes: 4 * MIB,
                max_output_bytes: 4 * MIB,
            },
        }
    }

    pub fn with(self, o: &LimitOverrides) -> Limits {
        Limits {
            fuel: o.fuel.unwrap_or(self.fuel),
            deadline_ms: o.deadline_ms.unwrap_or(self.deadline_ms),
            memory_bytes: o.memory_bytes.unwrap_or(self.memory_bytes),
            max_input_bytes: o.max_input_bytes.unwrap_or(self.max_input_bytes),
            max_output_bytes: o.max_output_bytes.unwrap_or(self.max_output_bytes),
        }
    }
}

/// The `[plugins]` configuration section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginsConfig {
    pub pricing: Limits,
    pub rate_limit: Limits,
    pub alert_channel: Limits,
    pub extractor: Limits,
    /// When an active plugin's call fails in the sandbox (trap, fuel,
    /// deadline, memory, size), the version active for that target before it
    /// answers instead (for a few seconds, first). Never for invoices.
    pub fallback_to_previous: bool,
    /// What a failing rate-limit plugin means when no earlier version
    /// answers either: `fail-open` admits the request, `fail-closed`
    /// refuses it with 503.
    pub rate_limit_failure: RateLimitFailure,
    /// Hosts alert channels may reach through outbound HTTP (exact host names
    /// or `*.example.com`). Empty: none.
    pub http_allow_hosts: Vec<String>,
    /// Largest memory any plugin may be given; sizes the instance pool.
    pub max_memory_bytes: u64,
    /// Plugin instances alive at once (calls in flight); more calls wait.
    pub max_concurrent_calls: u32,
    /// Largest `.wasm` accepted, in bytes; also the upload body's limit.
    /// Python (componentize-py, ~18 MB) and JavaScript (jco's StarlingMonkey
    /// backend, ~12.5 MB) guests carry their interpreter.
    pub max_plugin_bytes: u64,
    /// Uploads compiled at once (Cranelift uses every core for seconds on
    /// a large guest); more wait their turn, visible as `queued`.
    pub max_concurrent_compiles: u32,
    /// Uploads waiting or compiling at once; past it, 503 with Retry-After.
    pub max_pending_uploads: u32,
    /// Per-component shape limits of the instance pool.
    pub pool: PoolLimits,
    /// Calls kept per plugin (newest), redacted per kind, for `memhost
    /// plugin fixtures pull`; 0 keeps none.
    pub recorded_calls: usize,
    /// Keep extractors' dialogue and memory texts in recorded calls (masked
    /// for e-mail addresses and long numbers). Off: only their lengths.
    pub record_extractor_text: bool,
    /// Accept components that carry the component-model async ABI's
    /// built-ins (jco's QuickJS output without `--backend-qjs-disable-async`).
    /// Off: they are refused at upload with `INVALID_COMPONENT`.
    pub component_model_async: bool,
}

/// What one component instance may hold in the pooling allocator. A guest
/// over a limit is refused at upload (`INVALID_COMPONENT`, naming it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoolLimits {
    /// Core module instances per component: componentize-py makes ~14, 38
    /// with `--stub-wasi`; jco's guests fewer.
    pub max_core_instances_per_component: u32,
    pub max_memories_per_component: u32,
    pub max_tables_per_component: u32,
    /// Elements per table (componentize-py's is ~5 700).
    pub max_table_elements: usize,
}

impl Default for PoolLimits {
    fn default() -> Self {
        PoolLimits {
            max_core_instances_per_component: 64,
            max_memories_per_component: 4,
            max_tables_per_component: 32,
            max_table_elements: 20_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RateLimitFailure {
    FailOpen,
    FailClosed,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        PluginsConfig {
            pricing: Limits::default_for(PluginKind::Pricing),
            rate_limit: Limits::default_for(PluginKind::RateLimit),
            alert_channel: Limits::default_for(PluginKind::AlertChannel),
            extractor: Limits::default_for(PluginKind::Extractor),
            fallback_to_previous: true,
            rate_limit_failure: RateLimitFailure::FailOpen,
            http_allow_hosts: Vec::new(),
            max_memory_bytes: 128 << 20,
            max_concurrent_calls: 64,
            max_plugin_bytes: 32 << 20,
            max_concurrent_compiles: 2,
            max_pending_uploads: 8,
            pool: PoolLimits::default(),
            recorded_calls: 20,
            record_extractor_text: false,
            component_model_async: true,
        }
    }
}

impl PluginsConfig {
    /// Refuses per-plugin limits no operator should mean: zero, more memory
    /// than the instance pool holds, a deadline over five minutes.
    pub fn check_overrides(&self, o: &LimitOverrides) -> Result<(), String> {
        const MAX_FUEL: u64 = 10_000_000_000;
        const MAX_DEADLINE_MS: u64 = 300_000;
        const MAX_IO_BYTES: u64 = 64 << 20;
        let checks = [
            ("fuel", o.fuel, 1, MAX_FUEL),
            ("deadline_ms", o.deadline_ms, 1, MAX_DEADLINE_MS),
            ("memory_bytes", o.memory_bytes, 64 * 1024, self.max_memory_bytes),
            ("max_input_bytes", o.max_input_bytes, 1024, MAX_IO_BYTES),
            ("max_output_bytes", o.max_output_bytes, 1024, MAX_IO_BYTES),
        ];
        for (name, value, min, max) in checks {
            if let Some(v) = value
                && !(min..=max).contains(&v)
            {
                return Err(format!("limit `{name}` must be from {min} to {max}, got {v}"));
            }
        }
        Ok(())
    }

    pub fn limits(&self, kind: PluginKind) -> Limits {
        match kind {
            PluginKind::Pricing => self.pricing,
            PluginKind::RateLimit => self.rate_limit,
            PluginKind::AlertChannel => self.alert_channel,
            PluginKind::Extractor => self.extractor,
        }
    }
}
