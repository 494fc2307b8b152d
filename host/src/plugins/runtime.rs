//! The sandbox: one wasmtime `Engine` with the pooling allocator, an
//! `InstancePre` per loaded plugin, and a fresh `Store` per call with fuel, an
//! epoch deadline, a memory cap and caps on input and output size. WASI is
//! linked with no capabilities (no files, environment, sockets); pricing and
//! rate-limit plugins also get a frozen clock and fixed-seed randomness so
//! they stay deterministic. What a kind may use beyond that comes only from
//! the `memhost:plugin` host interfaces granted to it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::Semaphore;
use utoipa::ToSchema;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter, Store, Trap};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::alert_channel::Alert;
use super::extractor::{ExtractInput, MemoryOp};
use super::host_calls::HostCalls;
use super::kind::{Limits, PluginKind, PluginsConfig};
use super::pricing::{Invoice, MetricLimit, RatingInput};
use super::rate_limit::{LimiterRule, RequestClass};
use super::types::{GuestError, LogLevel, PluginInfo};
use super::wit::{Prepared, WitVersion, WrongKind};

/// How often the epoch advances; deadlines are counted in these ticks.
const EPOCH_TICK: Duration = Duration::from_millis(5);
/// A long computation yields to tokio this often (in fuel) so one plugin call
/// cannot hold a worker thread for its whole budget.
const FUEL_YIELD_INTERVAL: u64 = 1_000_000;
/// What a plugin may print to stderr (a Rust guest's panic message lands here).
const STDERR_CAP: usize = 16 * 1024;
/// Log lines kept per call, and bytes per line.
const MAX_LOG_LINES: usize = 100;
const MAX_LOG_LINE: usize = 1024;

/// What the plugin logged during a call.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LogLine {
    pub level: String,
    pub message: String,
}

/// A finished call: the plugin's answer and what it cost.
#[derive(Debug)]
pub struct Outcome<T> {
    pub value: T,
    pub stats: CallStats,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CallStats {
    pub fuel_used: u64,
    pub fuel_limit: u64,
    /// Largest linear memory the plugin had, in bytes.
    pub peak_memory_bytes: u64,
    pub memory_limit_bytes: u64,
    pub input_bytes: u64,
    pub output_bytes: u64,
    /// Wall-clock time of instantiate + call, in microseconds.
    pub duration_us: u64,
    pub logs: Vec<LogLine>,
    /// What the call used through the host's imports (LLM, embeddings),
    /// for the caller to meter against the org it called for.
    #[serde(skip_serializing_if = "HostUsage::is_empty")]
    pub host_usage: HostUsage,
}

/// Provider work a plugin call caused through the host's imports.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct HostUsage {
    pub model_calls: Vec<ModelCall>,
    /// Texts embedded, and their estimated tokens.
    pub embedded_texts: u64,
    pub embedding_tokens: u64,
    /// The embedding model, when it is a remote provider's.
    pub embedding_model: Option<String>,
}

impl HostUsage {
    pub fn is_empty(&self) -> bool {
        self.model_calls.is_empty() && self.embedded_texts == 0
    }
}

/// One LLM completion a plugin asked for.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ModelCall {
    pub model: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
}

/// A call the sandbox stopped or refused. The host keeps serving; the kind's
/// failure policy decides what the caller sees.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("plugin ran out of fuel (budget {budget} units)")]
    OutOfFuel { budget: u64 },
    #[error("plugin exceeded its {deadline_ms} ms deadline")]
    Deadline { deadline_ms: u64 },
    #[error("plugin exceeded its memory limit: it asked for {requested} bytes, the limit is {limit} bytes")]
    MemoryLimit { requested: u64, limit: u64 },
    #[error("plugin overflowed its stack")]
    StackOverflow,
    #[error("plugin trapped: {reason}{}", stderr_suffix(.stderr))]
    Trapped { reason: String, stderr: String },
    #[error("plugin input is {size} bytes, over the {limit}-byte limit")]
    InputTooLarge { size: u64, limit: u64 },
    #[error("plugin output is {size} bytes, over the {limit}-byte limit")]
    OutputTooLarge { size: u64, limit: u64 },
    #[error("could not instantiate the plugin: {0}")]
    Instantiate(String),
    /// A host bug: the call does not exist in this plugin's kind.
    #[error("{0}")]
    WrongKind(String),
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.trim().is_empty() { String::new() } else { format!(" (stderr: {})", stderr.trim()) }
}

impl CallError {
    /// A stable machine-readable name, used in error details and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            CallError::OutOfFuel { .. } => "out_of_fuel",
            CallError::Deadline { .. } => "deadline_exceeded",
            CallError::MemoryLimit { .. } => "memory_limit",
            CallError::StackOverflow => "stack_overflow",
            CallError::Trapped { .. } => "trap",
            CallError::InputTooLarge { .. } => "input_too_large",
            CallError::OutputTooLarge { .. } => "output_too_large",
            CallError::Instantiate(_) => "instantiate_failed",
            CallError::WrongKind(_) => "wrong_kind",
        }
    }
}

/// The memory cap, enforced as the guest grows its memory, and the peak seen.
struct MemoryLimiter {
    limit: u64,
    peak: u64,
    /// The pool's per-table element cap.
    table_elements: usize,
}

/// Raised from inside `memory.grow`; wasmtime turns it into the call's error.
#[derive(Debug, thiserror::Error)]
#[error("memory limit: asked for {requested} bytes, limit {limit}")]
struct MemoryLimitHit {
    requested: u64,
    limit: u64,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let desired = desired as u64;
        if desired > self.limit {
            return Err(MemoryLimitHit { requested: desired, limit: self.limit }.into());
        }
        self.peak = self.peak.max(desired);
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= self.table_elements)
    }
}

/// Everything a call's `Store` holds. Created fresh for each call and dropped
/// after it, so nothing is shared between calls or tenants.
pub struct CallState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryLimiter,
    stderr: MemoryOutputPipe,
    logs: Vec<LogLine>,
    logs_dropped: usize,
    digest: Arc<str>,
    pub(super) host: HostCalls,
    pub(super) deadline: Instant,
    pub(super) host_usage: HostUsage,
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl CallState {
    /// A plugin's log line: kept for the call's report (capped) and logged
    /// at debug, tagged with the plugin's digest.
    pub(super) fn record_log(&mut self, level: LogLevel, message: String) {
        if self.logs.len() >= MAX_LOG_LINES {
            self.logs_dropped += 1;
            return;
        }
        let mut message = message;
        if message.len() > MAX_LOG_LINE {
            let mut cut = MAX_LOG_LINE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        let level = level.as_str();
        tracing::debug!(target: "memhost::plugin", digest = %self.digest, level, "{message}");
        self.logs.push(LogLine { level: level.into(), message });
    }
}

/// A frozen wall clock (the Unix epoch) and monotonic clock for
/// deterministic kinds.
struct FrozenClock;

impl wasmtime_wasi::HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl wasmtime_wasi::HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until dropped.
struct EpochTicker {
    stop: Arc<AtomicBool>,
}

impl EpochTicker {
    fn start(engine: Engine) -> EpochTicker {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::Builder::new()
            .name("memhost-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .expect("spawning the epoch thread");
        EpochTicker { stop }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The plugin sandbox. Cheap to share (`Arc`); every call gets its own `Store`.
pub struct Runtime {
    engine: Engine,
    /// One linker per (WIT version, kind): the imports that kind is granted.
    linkers: HashMap<(WitVersion, PluginKind), Linker<CallState>>,
    config: PluginsConfig,
    /// Calls in flight, bounded by the instance pool's size: more wait here
    /// rather than fail.
    slots: Arc<Semaphore>,
    _ticker: EpochTicker,
}

impl Runtime {
    pub fn new(config: PluginsConfig) -> anyhow::Result<Runtime> {
        let engine = Engine::new(&engine_config(&config)?).map_err(|e| anyhow::anyhow!("{e:#}"))?;
        let mut linkers = HashMap::new();
        for version in WitVersion::ALL {
            for kind in PluginKind::ALL {
                linkers.insert((version, kind), linker(&engine, version, kind)?);
            }
        }
        let slots = Arc::new(Semaphore::new(config.max_concurrent_calls.max(1) as usize));
        let ticker = EpochTicker::start(engine.clone());
        Ok(Runtime { engine, linkers, config, slots, _ticker: ticker })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn config(&self) -> &PluginsConfig {
        &self.config
    }

    /// A key for precompiled artifacts: they are only valid for this wasmtime
    /// version and engine configuration.
    pub fn artifact_key(&self) -> String {
        use std::hash::{DefaultHasher, Hash, Hasher};
        let mut h = DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        format!("wasmtime-{}-{:016x}", wasmtime_version(), h.finish())
    }

    /// Links a compiled component against its kind's world at the WIT
    /// version it was built against.
    pub fn prepare(
        &self,
        version: WitVersion,
        kind: PluginKind,
        component: &Component,
    ) -> Result<Prepared, wasmtime::Error> {
        let linker = self.linkers.get(&(version, kind)).expect("a linker for every supported version and kind");
        Prepared::new(version, kind, linker.instantiate_pre(component)?)
    }

    fn new_store(&self, kind: PluginKind, limits: &Limits, digest: &Arc<str>, host: HostCalls) -> Store<CallState> {
        let stderr = MemoryOutputPipe::new(STDERR_CAP);
        let mut wasi = WasiCtxBuilder::new();
        wasi.stderr(stderr.clone()).allow_tcp(false).allow_udp(false).allow_ip_name_lookup(false);
        if kind.deterministic() {
            wasi.wall_clock(FrozenClock)
                .monotonic_clock(FrozenClock)
                .secure_random(wasmtime_wasi::Deterministic::new(vec![7, 3, 1, 9]))
                .insecure_random(wasmtime_wasi::Deterministic::new(vec![5, 8, 2, 6]))
                .insecure_random_seed(0x6d656d686f7374);
        }
        let state = CallState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limiter: MemoryLimiter {
                limit: limits.memory_bytes,
                peak: 0,
                table_elements: self.config.pool.max_table_elements,
            },
            stderr,
            logs: Vec::new(),
            logs_dropped: 0,
            digest: digest.clone(),
            host,
            deadline: Instant::now() + Duration::from_millis(limits.deadline_ms),
            host_usage: HostUsage::default(),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        // Fuel and epochs are enabled on the engine, so these cannot fail.
        let _ = store.set_fuel(limits.fuel);
        let _ = store.fuel_async_yield_interval(Some(FUEL_YIELD_INTERVAL));
        store.set_epoch_deadline(limits.deadline_ms.div_ceil(EPOCH_TICK.as_millis() as u64).max(1));
        store.epoch_deadline_trap();
        store
    }

    /// Runs one call in a fresh store: waits for a pool slot, instantiates,
    /// calls, then checks the output size and turns traps into [`CallError`].
    async fn call<T: Serialize>(
        &self,
        kind: PluginKind,
        limits: &Limits,
        digest: &Arc<str>,
        host: HostCalls,
        input_bytes: usize,
        body: impl AsyncFnOnce(&mut Store<CallState>) -> wasmtime::Result<T>,
    ) -> Result<Outcome<T>, CallError> {
        if input_bytes as u64 > limits.max_input_bytes {
            return Err(CallError::InputTooLarge { size: input_bytes as u64, limit: limits.max_input_bytes });
        }
        // The semaphore is never closed, so acquiring only waits.
        let _slot = self.slots.acquire().await.map_err(|e| CallError::Instantiate(e.to_string()))?;
        let started = Instant::now();
        let mut store = self.new_store(kind, limits, digest, host);
        let result = body(&mut store).await;
        let duration_us = started.elapsed().as_micros() as u64;
        let fuel_used = limits.fuel.saturating_sub(store.get_fuel().unwrap_or(0));
        let plugin = &digest[..digest.len().min(12)];
        let labels = [("kind", kind.as_str()), ("plugin", plugin)];
        crate::telemetry::observe("memhost_plugin_call_duration_seconds", &labels, duration_us as f64 / 1e6);
        crate::telemetry::observe_with(
            "memhost_plugin_call_fuel",
            &labels,
            fuel_used as f64,
            crate::telemetry::FUEL_BUCKETS,
        );
        let outcome = if result.is_ok() { "ok" } else { "error" };
        crate::telemetry::inc(
            "memhost_plugin_calls_total",
            &[("kind", kind.as_str()), ("plugin", plugin), ("outcome", outcome)],
            1,
        );
        let value = result.map_err(|e| classify(e, &store, limits))?;
        let output_bytes = json_size(&value);
        if output_bytes > limits.max_output_bytes {
            return Err(CallError::OutputTooLarge { size: output_bytes, limit: limits.max_output_bytes });
        }
        let state = store.into_data();
        let mut logs = state.logs;
        if state.logs_dropped > 0 {
            logs.push(LogLine {
                level: "warn".into(),
                message: format!("{} more log lines dropped", state.logs_dropped),
            });
        }
        Ok(Outcome {
            value,
            stats: CallStats {
                fuel_used,
                fuel_limit: limits.fuel,
                peak_memory_bytes: state.limiter.peak,
                memory_limit_bytes: limits.memory_bytes,
                input_bytes: input_bytes as u64,
                output_bytes,
                duration_us,
                logs,
                host_usage: state.host_usage,
            },
        })
    }

    /// `describe`, which every world exports.
    pub async fn describe(
        &self,
        p: &Prepared,
        limits: &Limits,
        digest: &Arc<str>,
    ) -> Result<Outcome<PluginInfo>, CallError> {
        self.call(p.kind(), limits, digest, HostCalls::none(), 0, async |s| p.describe(s).await).await
    }

    pub async fn rate(
        &self,
        p: &Prepared,
        limits: &Limits,
        digest: &Arc<str>,
        config: &str,
        input: &RatingInput,
    ) -> Result<Outcome<Result<Invoice, GuestError>>, CallError> {
        let size = config.len() + json_size(input) as usize;
        self.call(p.kind(), limits, digest, HostCalls::none(), size, async |s| p.rate(s, config, input).await).await
    }

    // The WIT function's own parameters, one to one.
    #[allow(clippy::too_many_arguments)]
    pub async fn plan_limits(
        &self,
        p: &Prepared,
        limits: &Limits,
        digest: &Arc<str>,
        config: &str,
        plan: &str,
        plan_snapshot: Option<&str>,
        overrides: &str,
    ) -> Result<Outcome<Result<Vec<MetricLimit>, GuestError>>, CallError> {
        let size = config.len() + plan.len() + plan_snapshot.map_or(0, str::len) + overrides.len();
        self.call(p.kind(), limits, digest, HostCalls::none(), size, async |s| {
            p.plan_limits(s, config, plan, plan_snapshot, overrides).await
        })
        .await
    }

    pub async fn rules(
        &self,
        p: &Prepared,
        limits: &Limits,
        digest: &Arc<str>,
        config: &str,
        class: &RequestClass,
    ) -> Result<Outcome<Result<Vec<LimiterRule>, GuestError>>, CallError> {
        let size = config.len() + json_size(class) as usize;
        self.call(p.kind(), limits, digest, HostCalls::none(), size, async |s| p.rules(s, config, class).await).await
    }

    pub async fn deliver(
        &self,
        p: &Prepared,
        limits: &Limits,
        digest: &Arc<str>,
        host: HostCalls,
        config: &str,
        alert: &Alert,
    ) -> Result<Outcome<Result<(), GuestError>>, CallError> {
        let size = config.len() + json_size(alert) as usize;
        self.call(p.kind(), limits, digest, host, size, async |s| p.deliver(s, config, alert).await).await
    }

    pub async fn extract(
        &self,
        p: &Prepared,
        limits: &Limits,
        digest: &Arc<str>,
        host: HostCalls,
        config: &str,
        input: &ExtractInput,
    ) -> Result<Outcome<Result<Vec<MemoryOp>, GuestError>>, CallError> {
        let size = config.len() + json_size(input) as usize;
        self.call(p.kind(), limits, digest, host, size, async |s| p.extract(s, config, input).await).await
    }
}

/// The wasmtime crate version this host was built with (part of the
/// precompiled-artifact cache key).
pub fn wasmtime_version() -> &'static str {
    "48.0.8"
}

fn engine_config(config: &PluginsConfig) -> anyhow::Result<wasmtime::Config> {
    let mut c = wasmtime::Config::new();
    c.wasm_component_model(true);
    // jco's QuickJS backend emits the async ABI's intrinsics (`task.cancel`
    // …) unless built with `--backend-qjs-disable-async`; accepting them
    // lets such guests run. Their exports must still be synchronous: an
    // async-lifted export fails the self-check at upload.
    c.wasm_component_model_async(config.component_model_async);
    c.consume_fuel(true);
    c.epoch_interruption(true);
    c.max_wasm_stack(512 * 1024);
    c.cranelift_opt_level(wasmtime::OptLevel::Speed);

    // Per-component shapes from `[plugins.pool]`, sized by default so
    // componentize-py's and jco's guests fit (docs/plugins.md, "Limits").
    // Totals allow every call slot a component of the largest shape, so a
    // burst of Python calls cannot exhaust the pool while slots are free.
    let calls = config.max_concurrent_calls.max(1);
    let shape = config.pool;
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(calls)
        .total_core_instances(calls * shape.max_core_instances_per_component)
        .max_core_instances_per_component(shape.max_core_instances_per_component)
        .total_memories(calls * shape.max_memories_per_component)
        .max_memories_per_component(shape.max_memories_per_component)
        .total_tables(calls * shape.max_tables_per_component)
        .max_tables_per_component(shape.max_tables_per_component)
        .table_elements(shape.max_table_elements)
        .max_memory_size(config.max_memory_bytes as usize)
        .total_stacks(calls)
        .max_component_instance_size(4 << 20)
        .max_core_instance_size(4 << 20)
        // Reset a released slot's first pages with memset rather than
        // madvise: most calls touch little, and the syscall costs more.
        .linear_memory_keep_resident(256 << 10)
        .table_keep_resident(32 << 10);
    c.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Ok(c)
}

fn linker(engine: &Engine, version: WitVersion, kind: PluginKind) -> anyhow::Result<Linker<CallState>> {
    let mut linker = Linker::<CallState>::new(engine);
    let err = |e: wasmtime::Error| anyhow::anyhow!("linking {kind} host functions for WIT {version}: {e:#}");
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(err)?;
    version.add_to_linker(&mut linker, kind).map_err(err)?;
    Ok(linker)
}

fn classify(err: wasmtime::Error, store: &Store<CallState>, limits: &Limits) -> CallError {
    if let Some(hit) = err.downcast_ref::<MemoryLimitHit>() {
        return CallError::MemoryLimit { requested: hit.requested, limit: hit.limit };
    }
    if let Some(wrong) = err.downcast_ref::<WrongKind>() {
        return CallError::WrongKind(wrong.to_string());
    }
    let stderr = String::from_utf8_lossy(&store.data().stderr.contents()).into_owned();
    match err.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => CallError::OutOfFuel { budget: limits.fuel },
        Some(Trap::Interrupt) => CallError::Deadline { deadline_ms: limits.deadline_ms },
        Some(Trap::StackOverflow) => CallError::StackOverflow,
        Some(Trap::UnreachableCodeReached) => {
            CallError::Trapped { reason: "unreachable executed (the plugin panicked or aborted)".into(), stderr }
        }
        Some(trap) => CallError::Trapped { reason: trap.to_string(), stderr },
        None => CallError::Trapped { reason: format!("{err:#}"), stderr },
    }
}

/// Size of a value as JSON, without allocating it.
pub fn json_size<T: Serialize + ?Sized>(value: &T) -> u64 {
    struct Count(u64);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len() as u64;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    let _ = serde_json::to_writer(&mut c, value);
    c.0
}
