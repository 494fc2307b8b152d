//! Plugin call cost, three ways to run the same pricing rule, and the time
//! from upload to active.
//!
//!     cargo bench -p memhost --bench plugins
//!
//! - `wasm/*`: the built-in `pricing-tiered` plugin through the runtime as
//!   the server calls it: a fresh `Store` from the `InstancePre` per call,
//!   fuel, deadline and memory limiter armed. `full-policy` passes the whole
//!   `policies/pricing.yaml` config (the plugin parses it every call, as in
//!   production); `one-plan` passes only the starter plan; `describe` is the
//!   fixed cost (instantiate + a trivial call).
//! - `native/*`: the same logic compiled into the host, parsing the same
//!   config per call (`parse-config`) or given it parsed (`preparsed`).
//! - `rhai/*`: the same rule as a Rhai expression, compiled once, evaluated
//!   with the plan's numbers in scope.
//! - `upload-to-active`: upload a new plugin (validate, compile, self-check,
//!   store) and activate it (schema check, self-check, record, swap).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};
use memhost::plugins::pricing::{RatingInput, UsageQuantity};
use memhost::plugins::wit::{Prepared, WitVersion};
use memhost::plugins::{ActivateRequest, LimitOverrides, PluginKind, PluginsConfig, Runtime};
use serde::Deserialize;
use wasmtime::component::Component;

mod support;

const PRICING_WASM: &[u8] = include_bytes!(concat!(env!("MEMHOST_PLUGINS_DIR"), "/pricing_tiered.wasm"));
const FLAT_WASM: &[u8] = include_bytes!(concat!(env!("MEMHOST_PLUGINS_DIR"), "/pricing_flat.wasm"));
const POLICY: &str = include_str!("../../policies/pricing.yaml");

/// The starter plan's usage in the bench: 2 000 calls over the included 10 000.
fn usage() -> Vec<(String, u64)> {
    vec![("api_calls".into(), 12_000), ("tokens_processed".into(), 800_000)]
}

fn configs() -> (String, String) {
    let full: serde_json::Value = serde_yaml_ng::from_str(POLICY).expect("policy parses");
    let one = serde_json::json!({"currency": "USD", "plans": {"starter": full["plans"]["starter"].clone()}});
    (full.to_string(), one.to_string())
}

// --- the same logic, native ------------------------------------------------

#[derive(Deserialize)]
struct Config {
    #[allow(dead_code)]
    currency: String,
    plans: BTreeMap<String, Plan>,
}

#[derive(Deserialize, Clone)]
struct Plan {
    base_price_micros: i64,
    overage_allowed: bool,
    #[serde(default)]
    limits: BTreeMap<String, u64>,
    #[serde(default)]
    overage: BTreeMap<String, Overage>,
    #[allow(dead_code)]
    display_name: Option<String>,
}

#[derive(Deserialize, Clone, Copy)]
struct Overage {
    price_micros: i64,
    per: u64,
}

/// What `pricing-tiered` computes: base + overage per metric, `over × price /
/// per` rounded half up. Returns the total and the line descriptions.
fn native_rate(plan: &Plan, usage: &[(String, u64)]) -> Option<(i64, Vec<String>)> {
    let mut total = plan.base_price_micros;
    let mut lines = vec![format!("base price {}", plan.base_price_micros)];
    for (metric, quantity) in usage {
        let included = plan.limits.get(metric).copied().unwrap_or(u64::MAX);
        let over = quantity.saturating_sub(included);
        if over == 0 {
            continue;
        }
        let o = plan.overage.get(metric).copied().filter(|_| plan.overage_allowed)?;
        let num = over as i128 * o.price_micros as i128;
        let amount = i64::try_from((num + o.per as i128 / 2).div_euclid(o.per as i128)).ok()?;
        lines.push(format!("{metric} overage: {over} over {included} included"));
        total = total.checked_add(amount)?;
    }
    Some((total, lines))
}

// --- the same rule, Rhai -----------------------------------------------------

const RHAI_RULE: &str = "
    let over = if api_calls > included { api_calls - included } else { 0 };
    base + (over * price + per / 2) / per
";

/// The built-in pricing plugin prepared as the server prepares it, with
/// the configs and the input every pricing row uses.
struct PricingBench {
    rt: tokio::runtime::Runtime,
    runtime: Runtime,
    prepared: Prepared,
    limits: memhost::plugins::Limits,
    digest: Arc<str>,
    full: String,
    one: String,
    input: RatingInput,
}

impl PricingBench {
    fn new() -> PricingBench {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let runtime = Runtime::new(PluginsConfig::default()).expect("runtime");
        let component = Component::new(runtime.engine(), PRICING_WASM).expect("compiles");
        let prepared = runtime.prepare(WitVersion::V0_1_0, PluginKind::Pricing, &component).expect("links");
        let limits = runtime.config().limits(PluginKind::Pricing);
        let (full, one) = configs();
        let input = RatingInput {
            plan: "starter".into(),
            plan_snapshot: None,
            overrides: String::new(),
            region: None,
            plan_spans: Vec::new(),
            addons: Vec::new(),
            credits: Vec::new(),
            promotions: Vec::new(),
            period_start: "2026-11-01T00:00:00Z".into(),
            period_end: "2026-12-01T00:00:00Z".into(),
            usage: usage().into_iter().map(|(metric, quantity)| UsageQuantity { metric, quantity }).collect(),
        };
        PricingBench { rt, runtime, prepared, limits, digest: "bench".into(), full, one, input }
    }
}

fn bench_calls(c: &mut Criterion) {
    let PricingBench { rt, runtime, prepared, limits, digest, full, one, input } = PricingBench::new();
    let pre = &prepared;

    // All three must agree before anything is timed.
    let wasm_total = rt.block_on(runtime.rate(pre, &limits, &digest, &full, &input)).unwrap().value.unwrap().total;
    let parsed: Config = serde_json::from_str(&full).unwrap();
    let starter = parsed.plans["starter"].clone();
    let native_total = native_rate(&starter, &usage()).unwrap().0;
    let engine = rhai_engine();
    let ast = engine.compile(RHAI_RULE).unwrap();
    let rhai_total = rhai_eval(&engine, &ast, &starter, 12_000);
    assert_eq!(wasm_total, native_total);
    assert_eq!(wasm_total, rhai_total);
    assert_eq!(wasm_total, 50_000_000);

    let mut g = c.benchmark_group("pricing-call");
    for (name, config) in [("wasm/full-policy", &full), ("wasm/one-plan", &one)] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let out = runtime.rate(pre, &limits, &digest, config, &input).await.unwrap();
                        std::hint::black_box(out.value.unwrap().total);
                    }
                    start.elapsed()
                })
            })
        });
    }
    g.bench_function("wasm/describe", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    std::hint::black_box(runtime.describe(&prepared, &limits, &digest).await.unwrap());
                }
                start.elapsed()
            })
        })
    });
    g.bench_function("native/parse-config", |b| {
        let usage = usage();
        b.iter(|| {
            let config: Config = serde_json::from_str(std::hint::black_box(&full)).unwrap();
            native_rate(&config.plans["starter"], &usage).unwrap()
        })
    });
    g.bench_function("native/preparsed", |b| {
        let usage = usage();
        b.iter(|| native_rate(std::hint::black_box(&starter), &usage).unwrap())
    });
    g.bench_function("rhai/compiled-ast", |b| {
        b.iter(|| rhai_eval(&engine, &ast, std::hint::black_box(&starter), 12_000))
    });
    g.finish();
}

fn rhai_engine() -> rhai::Engine {
    let mut engine = rhai::Engine::new();
    // As a policy expression would run: bounded operations and depth.
    engine.set_max_operations(100_000);
    engine.set_max_expr_depths(32, 32);
    engine
}

fn rhai_eval(engine: &rhai::Engine, ast: &rhai::AST, plan: &Plan, api_calls: i64) -> i64 {
    let o = plan.overage["api_calls"];
    let mut scope = rhai::Scope::new();
    scope.push("api_calls", api_calls);
    scope.push("included", plan.limits["api_calls"] as i64);
    scope.push("base", plan.base_price_micros);
    scope.push("price", o.price_micros);
    scope.push("per", o.per as i64);
    engine.eval_ast_with_scope::<i64>(&mut scope, ast).unwrap()
}

fn bench_upload_to_active(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let service = support::plugin_service(&rt, dir.path());
    let counter = AtomicU64::new(0);
    let mut g = c.benchmark_group("plugins");
    g.sample_size(20).measurement_time(Duration::from_secs(20));
    g.bench_function("upload-to-active", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let wasm = support::with_nonce(FLAT_WASM, counter.fetch_add(1, Ordering::Relaxed));
                total += rt.block_on(async {
                    let start = Instant::now();
                    let up = service
                        .upload(&wasm, Some(PluginKind::Pricing), LimitOverrides::default(), "bench")
                        .await
                        .unwrap();
                    assert!(up.created);
                    let req =
                        ActivateRequest { config: Some(serde_json::json!({"fee_micros": 1})), ..Default::default() };
                    service.activate(&up.plugin.id, req, "bench").await.unwrap();
                    start.elapsed()
                });
            }
            total
        })
    });
    g.finish();
}

/// Per-call latency percentiles: criterion reports the mean of batches, so
/// time 20 000 single calls of each pricing variant and print p50/p99.
fn call_percentiles() {
    const CALLS: usize = 20_000;
    fn report(name: &str, mut samples: Vec<Duration>) {
        samples.sort();
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize].as_nanos() as f64 / 1000.0;
        println!("percentiles {name:<28} p50 {:>8.2} µs   p99 {:>8.2} µs", at(0.50), at(0.99));
    }
    fn time(mut f: impl FnMut()) -> Vec<Duration> {
        for _ in 0..1000 {
            f();
        }
        (0..CALLS)
            .map(|_| {
                let start = Instant::now();
                f();
                start.elapsed()
            })
            .collect()
    }
    let PricingBench { rt, runtime, prepared, limits, digest, full, one, input } = PricingBench::new();
    let pre = &prepared;
    for (name, config) in [("wasm/full-policy", &full), ("wasm/one-plan", &one)] {
        report(
            name,
            time(|| {
                let out = rt.block_on(runtime.rate(pre, &limits, &digest, config, &input)).unwrap();
                std::hint::black_box(out.value.unwrap().total);
            }),
        );
    }
    report(
        "wasm/describe",
        time(|| {
            std::hint::black_box(rt.block_on(runtime.describe(&prepared, &limits, &digest)).unwrap());
        }),
    );
    let usage = usage();
    report(
        "native/parse-config",
        time(|| {
            let config: Config = serde_json::from_str(std::hint::black_box(&full)).unwrap();
            std::hint::black_box(native_rate(&config.plans["starter"], &usage).unwrap());
        }),
    );
    let parsed: Config = serde_json::from_str(&full).unwrap();
    let starter = parsed.plans["starter"].clone();
    let engine = rhai_engine();
    let ast = engine.compile(RHAI_RULE).unwrap();
    report(
        "rhai/compiled-ast",
        time(|| {
            std::hint::black_box(rhai_eval(&engine, &ast, std::hint::black_box(&starter), 12_000));
        }),
    );
}

criterion_group!(benches, bench_calls, bench_upload_to_active);

fn main() {
    // `cargo bench -- <filter>` runs criterion only; the percentiles run
    // with the full bench (no filter argument).
    if !std::env::args().skip(1).any(|a| !a.starts_with('-')) {
        call_percentiles();
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
