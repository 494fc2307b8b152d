//! Seeds an org with synthetic memories for retrieval benchmarks, through the
//! same `MemoryService` the server uses (so embeddings and indexes are real),
//! but in process to skip HTTP. Uses the normal configuration (DATABASE_URL etc.).
//!
//! `cargo run --release --example bench_seed -- <org_id> <count> [live|test]`

use std::sync::Arc;

use memhost::auth::Environment;
use memhost::memories::{Actor, MemoryScope, Scopes};
use memhost::metering::RequestUsage;

#[path = "common/sentences.rs"]
mod sentences;
use sentences::{Lcg, sentence};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(org), Some(count)) = (args.get(1), args.get(2)) else {
        anyhow::bail!("usage: bench_seed <org_id> <count> [live|test]");
    };
    let count: usize = count.parse()?;
    let environment = match args.get(3).map(String::as_str) {
        Some("test") => Environment::Test,
        _ => Environment::Live,
    };
    let state = memhost::app::build(memhost::config::Config::load(None)?).await?;
    let scope = Arc::new(MemoryScope { org_id: org.clone(), environment });
    let started = std::time::Instant::now();
    let workers = 8;
    let mut tasks = Vec::new();
    for w in 0..workers {
        let memories = state.memories.clone();
        let scope = scope.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = Lcg(0x5eed + w as u64);
            for i in (w..count).step_by(workers) {
                let text = sentence(&mut rng);
                let metadata = serde_json::json!({"n": i, "bucket": i % 10}).as_object().cloned();
                // One user in a hundred: a selective filter for benchmarks.
                let scopes = Scopes { user_id: Some(format!("user-{}", i % 100)), ..Scopes::default() };
                memories
                    .create(&scope, text, metadata, scopes, &Actor::default(), &RequestUsage::default())
                    .await
                    .expect("seed memory");
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    eprintln!("seeded {count} memories in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}
