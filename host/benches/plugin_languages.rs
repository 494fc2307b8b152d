//! The same pricing rule written in Rust, JavaScript (jco's QuickJS and
//! StarlingMonkey backends) and Python, each built from `memhost plugin new
//! pricing --lang …`, against the rule compiled into the host (native).
//!
//!     bash host/benches/plugin_languages.sh     # builds the guests, then runs this
//!
//! Per guest: upload-to-active through the plugin service (validate,
//! compile, self-check, store, activate globally with the template's
//! config; the server's upload path without HTTP), three times with a fresh
//! digest; then per-call p50/p99 of `rate` on the template's
//! `starter-overage` fixture through the runtime exactly as the server calls
//! it (a fresh store per call; fuel, deadline and memory armed; the per-kind
//! default limits). Native is the template's rule in Rust, parsing the same
//! config per call. Every variant must answer the same total before
//! anything is timed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use memhost::plugins::pricing::{RatingInput, UsageQuantity};
use memhost::plugins::{ActivateRequest, LimitOverrides, PluginKind};
use serde::Deserialize;

mod support;

/// The fixture's total: 10 USD base + 2 000 API calls over at 500 micros.
const TOTAL: i64 = 11_000_000;
const CALLS: usize = 2_000;
const WARMUP: usize = 100;
const UPLOADS: u64 = 3;

// --- the template's rule, native ----------------------------------------------

#[derive(Deserialize)]
struct Config {
    #[serde(default)]
    currency: Option<String>,
    plans: BTreeMap<String, Plan>,
}

#[derive(Deserialize)]
struct Plan {
    #[serde(default)]
    base_micros: i64,
    #[serde(default)]
    metrics: BTreeMap<String, Metric>,
}

#[derive(Deserialize)]
struct Metric {
    #[serde(default)]
    included: u64,
    #[serde(default)]
    unit_price_micros: i64,
}

/// What every template computes: the base price, then each metric's units
/// over the included ones at the unit price. Lines and total, like theirs.
fn native_rate(config: &str, input: &RatingInput) -> (String, Vec<(String, i64)>, i64) {
    let config: Config = serde_json::from_str(config).expect("config");
    let plan = &config.plans[&input.plan];
    let mut lines = Vec::new();
    if plan.base_micros > 0 {
        lines.push((format!("{} plan", input.plan), plan.base_micros));
    }
    for usage in &input.usage {
        let Some(rule) = plan.metrics.get(&usage.metric) else { continue };
        let billable = usage.quantity.saturating_sub(rule.included);
        if billable > 0 && rule.unit_price_micros > 0 {
            let description = format!("{billable} {} over the {} included", usage.metric, rule.included);
            lines.push((description, billable as i64 * rule.unit_price_micros));
        }
    }
    let total = lines.iter().map(|(_, amount)| amount).sum();
    (config.currency.unwrap_or_else(|| "USD".into()), lines, total)
}

// --- measuring -------------------------------------------------------------------

struct Row {
    name: &'static str,
    size_bytes: Option<usize>,
    upload_to_active: Vec<Duration>,
    calls: Vec<Duration>,
    fuel: Option<u64>,
    memory: Option<u64>,
}

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e6
}

fn input() -> RatingInput {
    RatingInput {
        plan: "starter".into(),
        plan_snapshot: None,
        overrides: "{}".into(),
        region: None,
        period_start: "2026-11-01T00:00:00Z".into(),
        period_end: "2026-12-01T00:00:00Z".into(),
        usage: vec![
            UsageQuantity { metric: "api_calls".into(), quantity: 12_000 },
            UsageQuantity { metric: "tokens_processed".into(), quantity: 800_000 },
        ],
        plan_spans: Vec::new(),
        addons: Vec::new(),
        credits: Vec::new(),
        promotions: Vec::new(),
    }
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is taken.
    let guests = std::env::var_os("MEMHOST_BENCH_GUESTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/bench-guests")));
    let config_text = std::fs::read_to_string(guests.join("config.json")).unwrap_or_else(|e| {
        panic!("{}: {e}; run host/benches/plugin_languages.sh", guests.join("config.json").display())
    });
    let config: serde_json::Value = serde_json::from_str(&config_text).expect("config.json");
    let input = input();

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let service = support::plugin_service(&rt, dir.path());

    let mut rows = Vec::new();
    let mut nonce = 0;
    for (name, file) in [
        ("Rust (memhost-sdk)", "rust.wasm"),
        ("JavaScript, QuickJS", "quickjs.wasm"),
        ("JavaScript, StarlingMonkey", "starlingmonkey.wasm"),
        ("Python (componentize-py)", "python.wasm"),
    ] {
        let path = guests.join(file);
        let wasm = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut upload_to_active = Vec::new();
        for _ in 0..UPLOADS {
            nonce += 1;
            let bytes = support::with_nonce(&wasm, nonce);
            upload_to_active.push(rt.block_on(async {
                let start = Instant::now();
                let up = service.upload(&bytes, Some(PluginKind::Pricing), LimitOverrides::default(), "bench").await;
                let up = up.unwrap_or_else(|e| panic!("{name}: {e}"));
                let request = ActivateRequest { config: Some(config.clone()), ..Default::default() };
                service.activate(&up.plugin.id, request, "bench").await.unwrap_or_else(|e| panic!("{name}: {e}"));
                start.elapsed()
            }));
        }
        let active = service.active(PluginKind::Pricing, None, None).expect("active");
        let p = &active.plugin;
        let runtime = service.runtime();
        let call = || rt.block_on(runtime.rate(&p.prepared, &p.limits, &p.digest, &active.config, &input));
        let first = call().unwrap_or_else(|e| panic!("{name}: {e}"));
        let invoice = first.value.unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(invoice.total, TOTAL, "{name} prices the fixture as the others");
        for _ in 0..WARMUP {
            call().unwrap();
        }
        let calls: Vec<Duration> = (0..CALLS)
            .map(|_| {
                let start = Instant::now();
                std::hint::black_box(call().unwrap());
                start.elapsed()
            })
            .collect();
        rows.push(Row {
            name,
            size_bytes: Some(wasm.len()),
            upload_to_active,
            calls,
            fuel: Some(first.stats.fuel_used),
            memory: Some(first.stats.peak_memory_bytes),
        });
    }

    assert_eq!(native_rate(&config_text, &input).2, TOTAL, "native prices the fixture as the guests");
    for _ in 0..WARMUP {
        std::hint::black_box(native_rate(&config_text, &input));
    }
    let calls = (0..CALLS * 10)
        .map(|_| {
            let start = Instant::now();
            std::hint::black_box(native_rate(std::hint::black_box(&config_text), &input));
            start.elapsed()
        })
        .collect();
    rows.push(Row {
        name: "native Rust in the host",
        size_bytes: None,
        upload_to_active: Vec::new(),
        calls,
        fuel: None,
        memory: None,
    });

    let native_p50 = {
        let mut n = rows.last().unwrap().calls.clone();
        n.sort();
        percentile(&n, 0.5)
    };
    println!(
        "| guest | .wasm | upload-to-active (median of {UPLOADS}) | call p50 | call p99 | × native p50 | fuel / call | peak memory |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for row in &mut rows {
        row.calls.sort();
        row.upload_to_active.sort();
        let (p50, p99) = (percentile(&row.calls, 0.5), percentile(&row.calls, 0.99));
        let upload = row
            .upload_to_active
            .get(row.upload_to_active.len() / 2)
            .map_or("—".to_string(), |d| format!("{:.2} s", d.as_secs_f64()));
        println!(
            "| {} | {} | {upload} | {p50:.1} µs | {p99:.1} µs | {:.0}× | {} | {} |",
            row.name,
            row.size_bytes.map_or("—".into(), |b| format!("{:.2} MB", b as f64 / 1e6)),
            p50 / native_p50,
            row.fuel.map_or("—".into(), |f| format!("{:.2} M", f as f64 / 1e6)),
            row.memory.map_or("—".into(), |m| format!("{:.1} MiB", m as f64 / (1 << 20) as f64)),
        );
    }
}
