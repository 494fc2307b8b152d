//! Retrieval latency at scale, through the same `MemoryService` the server
//! uses (query embedding, vector scan or HNSW, full-text search, fusion,
//! rows), in process to leave HTTP out. Seed the org first with
//! `bench_seed`. Uses the normal configuration (DATABASE_URL, MEMHOST_*).
//!
//! `cargo run --release --example bench_retrieve -- <org_id> [queries] [mode] [filters JSON]`
//! mode: hybrid (default), vector, keyword.

use std::time::Instant;

use memhost::auth::Environment;
use memhost::memories::filter::MemoryFilter;
use memhost::memories::ranking::Mode;
use memhost::memories::{MemoryScope, SearchParams};
use memhost::metering::RequestUsage;

const QUESTIONS: &[&str] = &[
    "Who likes green tea in the morning?",
    "What did Alice buy last summer?",
    "Which trip to Kyoto was planned?",
    "Who is learning the violin?",
    "What happened at the conference?",
    "Who repaired the old camera?",
    "What did Bob cook before dinner?",
    "Who borrowed the library book?",
];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let org =
        args.get(1).ok_or_else(|| anyhow::anyhow!("usage: bench_retrieve <org_id> [queries] [mode] [filters]"))?;
    let n: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(200);
    let mode = match args.get(3).map(String::as_str) {
        Some("vector") => Mode::Vector,
        Some("keyword") => Mode::Keyword,
        _ => Mode::Hybrid,
    };
    let filter = match args.get(4) {
        Some(f) => MemoryFilter::from_json(&serde_json::from_str(f)?, "filters")?,
        None => MemoryFilter::all(),
    };
    let state = memhost::app::build(memhost::config::Config::load(None)?).await?;
    let scope = MemoryScope { org_id: org.clone(), environment: Environment::Live };
    let params = |q: &str| SearchParams {
        query: q.to_string(),
        max_memories: 10,
        relevance_threshold: 0.05,
        filter: filter.clone(),
        mode,
        rerank: false,
    };
    let started = Instant::now();
    let first = state.memories.search(&scope, &params(QUESTIONS[0]), &RequestUsage::default()).await?;
    println!("first query (loads the in-process index in SQLite): {:.1} ms, {} results", ms(started), first.len());
    let mut times = Vec::with_capacity(n);
    let mut found = 0;
    for i in 0..n {
        let started = Instant::now();
        let hits =
            state.memories.search(&scope, &params(QUESTIONS[i % QUESTIONS.len()]), &RequestUsage::default()).await?;
        times.push(ms(started));
        found += hits.len();
    }
    times.sort_by(f64::total_cmp);
    let at = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
    println!(
        "{n} queries, mode {mode:?}: p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {:.1} results per query",
        at(0.50),
        at(0.95),
        at(0.99),
        times[times.len() - 1],
        found as f64 / n as f64
    );
    Ok(())
}

fn ms(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1000.0
}
