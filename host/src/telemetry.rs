//! Prometheus series (`GET /metrics`, the text exposition format).
//!
//! One process-wide registry of counters and histograms keyed by name and
//! labels; domains record into it where the work happens (the request path,
//! the plugin runtime, the limiter, the usage writer). Gauges that are read
//! rather than recorded (queue depth, pool use, loops) are added when the
//! page is rendered (`api/routes/health.rs`). Every name is described in
//! [`SERIES`]; the shipped Grafana dashboard queries only these.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, RwLock};

/// Latency buckets, in seconds.
pub const SECONDS_BUCKETS: &[f64] =
    &[0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Size buckets (batch sizes).
pub const SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0];
/// Fuel buckets (plugin calls).
pub const FUEL_BUCKETS: &[f64] = &[1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9];

/// Every series this process exposes: name, type, help.
pub const SERIES: &[(&str, &str, &str)] = &[
    ("memhost_http_requests_total", "counter", "HTTP requests answered, by method, route template and status."),
    ("memhost_http_request_duration_seconds", "histogram", "Time to answer an HTTP request, by method and route."),
    ("memhost_http_panics_total", "counter", "Requests whose handler panicked (answered 500)."),
    ("memhost_plugin_calls_total", "counter", "Plugin calls, by kind, plugin and outcome (ok, error)."),
    ("memhost_plugin_call_duration_seconds", "histogram", "Plugin call time, by kind and plugin."),
    ("memhost_plugin_call_fuel", "histogram", "Fuel a plugin call used, by kind and plugin."),
    (
        "memhost_ratelimit_decisions_total",
        "counter",
        "Rate-limit decisions, by outcome (allowed, limited, unavailable).",
    ),
    (
        "memhost_pricing_shadow_comparisons_total",
        "counter",
        "Live previews priced by a shadow pricing candidate too, by outcome (same, different, failed).",
    ),
    ("memhost_quota_refusals_total", "counter", "Requests refused for a used-up quota, by metric."),
    ("memhost_usage_events_total", "counter", "Usage events written."),
    ("memhost_usage_write_failures_total", "counter", "Usage events that could not be written (answered 503)."),
    ("memhost_usage_batch_events", "histogram", "Events per usage-writer transaction."),
    ("memhost_usage_commit_seconds", "histogram", "Usage-writer transaction time."),
    ("memhost_usage_event_wait_seconds", "histogram", "Time a request waited for its usage event to commit."),
    ("memhost_usage_queue_depth", "gauge", "Usage events waiting for the writer."),
    ("memhost_idempotent_replays_total", "counter", "Requests answered from a stored idempotent response."),
    ("memhost_db_pool_connections", "gauge", "Database pool connections, by pool and state (idle, in_use)."),
    ("memhost_background_loop_restarts_total", "gauge", "Restarts of a background loop since start, by loop."),
    ("memhost_background_loop_running", "gauge", "1 while a background loop runs, by loop."),
    ("memhost_response_cache_total", "counter", "Cacheable requests (answer, retrieve, query) by result (hit, miss)."),
    ("memhost_response_cache_saved_tokens_total", "counter", "Tokens cache hits did not process, by kind."),
    (
        "memhost_response_cache_saved_cost_micros_total",
        "counter",
        "Provider cost cache hits did not spend, micro-USD, by kind.",
    ),
    ("memhost_jobs_submitted_total", "counter", "Batch jobs submitted, by kind."),
    ("memhost_jobs_finished_total", "counter", "Batch jobs finished by this host, by kind and status."),
    ("memhost_jobs", "gauge", "Batch jobs queued or running (all hosts), by status."),
];

type Labels = Vec<(&'static str, String)>;
type Key = (&'static str, Labels);

struct Histogram {
    buckets: &'static [f64],
    counts: Vec<AtomicU64>,
    count: AtomicU64,
    /// Sum in millionths (of seconds, or of units).
    sum_micros: AtomicU64,
}

impl Histogram {
    fn new(buckets: &'static [f64]) -> Histogram {
        Histogram {
            buckets,
            counts: buckets.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }
    fn observe(&self, v: f64) {
        if let Some(i) = self.buckets.iter().position(|b| v <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add((v.max(0.0) * 1e6) as u64, Ordering::Relaxed);
    }
}

#[derive(Default)]
struct Registry {
    counters: RwLock<BTreeMap<Key, Arc<AtomicU64>>>,
    histograms: RwLock<BTreeMap<Key, Arc<Histogram>>>,
}

static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::default);

fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
    (name, labels.iter().map(|(k, v)| (*k, v.to_string())).collect())
}

/// Adds to a counter.
pub fn inc(name: &'static str, labels: &[(&'static str, &str)], by: u64) {
    let k = key(name, labels);
    if let Some(c) = REGISTRY.counters.read().unwrap_or_else(|e| e.into_inner()).get(&k) {
        c.fetch_add(by, Ordering::Relaxed);
        return;
    }
    REGISTRY.counters.write().unwrap_or_else(|e| e.into_inner()).entry(k).or_default().fetch_add(by, Ordering::Relaxed);
}

/// Records a time in seconds.
pub fn observe(name: &'static str, labels: &[(&'static str, &str)], seconds: f64) {
    observe_with(name, labels, seconds, SECONDS_BUCKETS)
}

/// Records a value into a histogram with the given buckets.
pub fn observe_with(name: &'static str, labels: &[(&'static str, &str)], value: f64, buckets: &'static [f64]) {
    let k = key(name, labels);
    if let Some(h) = REGISTRY.histograms.read().unwrap_or_else(|e| e.into_inner()).get(&k) {
        h.observe(value);
        return;
    }
    REGISTRY
        .histograms
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .entry(k)
        .or_insert_with(|| Arc::new(Histogram::new(buckets)))
        .observe(value);
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn label_text(labels: &[(&'static str, String)], extra: Option<(&str, String)>) -> String {
    let mut parts: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
    if let Some((k, v)) = extra {
        parts.push(format!("{k}=\"{v}\""));
    }
    if parts.is_empty() { String::new() } else { format!("{{{}}}", parts.join(",")) }
}

/// A gauge read at render time.
pub struct GaugeValue {
    pub name: &'static str,
    pub labels: Vec<(&'static str, String)>,
    pub value: f64,
}

/// The exposition text: every described series (with no samples yet, only
/// its HELP and TYPE), then `gauges`.
pub fn render(gauges: &[GaugeValue]) -> String {
    let counters = REGISTRY.counters.read().unwrap_or_else(|e| e.into_inner());
    let histograms = REGISTRY.histograms.read().unwrap_or_else(|e| e.into_inner());
    let mut out = String::with_capacity(16 * 1024);
    for (name, kind, help) in SERIES {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        match *kind {
            "counter" => {
                for ((n, labels), v) in counters.iter().filter(|((n, _), _)| n == name) {
                    let _ = writeln!(out, "{n}{} {}", label_text(labels, None), v.load(Ordering::Relaxed));
                }
            }
            "histogram" => {
                for ((n, labels), h) in histograms.iter().filter(|((n, _), _)| n == name) {
                    let mut cumulative = 0;
                    for (i, b) in h.buckets.iter().enumerate() {
                        cumulative += h.counts[i].load(Ordering::Relaxed);
                        let _ =
                            writeln!(out, "{n}_bucket{} {cumulative}", label_text(labels, Some(("le", b.to_string()))));
                    }
                    let count = h.count.load(Ordering::Relaxed);
                    let _ = writeln!(out, "{n}_bucket{} {count}", label_text(labels, Some(("le", "+Inf".into()))));
                    let _ = writeln!(
                        out,
                        "{n}_sum{} {}",
                        label_text(labels, None),
                        h.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
                    );
                    let _ = writeln!(out, "{n}_count{} {count}", label_text(labels, None));
                }
            }
            _ => {
                for g in gauges.iter().filter(|g| g.name == *name) {
                    let _ = writeln!(out, "{}{} {}", g.name, label_text(&g.labels, None), g.value);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        inc("memhost_http_requests_total", &[("method", "GET"), ("route", "/x"), ("status", "200")], 2);
        observe("memhost_http_request_duration_seconds", &[("method", "GET"), ("route", "/x")], 0.003);
        let text = render(&[GaugeValue { name: "memhost_usage_queue_depth", labels: vec![], value: 3.0 }]);
        assert!(text.contains("memhost_http_requests_total{method=\"GET\",route=\"/x\",status=\"200\"} 2"), "{text}");
        assert!(
            text.contains("memhost_http_request_duration_seconds_bucket{method=\"GET\",route=\"/x\",le=\"0.005\"} 1")
        );
        assert!(text.contains("memhost_http_request_duration_seconds_count{method=\"GET\",route=\"/x\"} 1"));
        assert!(text.contains("memhost_usage_queue_depth 3"));
        assert!(text.contains("# TYPE memhost_plugin_call_fuel histogram"));
    }
}
