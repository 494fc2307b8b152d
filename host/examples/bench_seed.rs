//! Seeds an org with synthetic memories for retrieval benchmarks, through the
//! same `MemoryService` the server uses (so embeddings and indexes are real),
//! but in process to skip HTTP. Uses the normal configuration (DATABASE_URL etc.).
//!
//! `cargo run --release --example bench_seed -- <org_id> <count> [live|test]`

use std::sync::Arc;

use memhost::auth::Environment;
use memhost::memories::{Actor, MemoryScope, Scopes};
use memhost::metering::RequestUsage;

const SUBJECTS: &[&str] = &[
    "Alice", "Bob", "Carol", "Dave", "Erin", "Frank", "Grace", "Heidi", "Ivan", "Judy", "Mallory", "Niaj", "Olivia",
    "Peggy", "Rupert", "Sybil", "Trent", "Victor", "Walter", "Yolanda",
];
const VERBS: &[&str] = &[
    "likes",
    "dislikes",
    "bought",
    "visited",
    "is learning",
    "cooked",
    "recommended",
    "lost",
    "repaired",
    "photographed",
    "painted",
    "sold",
    "borrowed",
    "reviewed",
    "planned",
];
const OBJECTS: &[&str] = &[
    "green tea",
    "a mountain bike",
    "the museum in Lisbon",
    "the piano",
    "a lemon cake",
    "a jazz record",
    "the old camera",
    "a vegetable garden",
    "a trip to Kyoto",
    "the chess club",
    "a wool sweater",
    "the kayak",
    "a sourdough starter",
    "the violin",
    "a telescope",
    "the marathon",
    "a Spanish course",
    "the bakery downtown",
    "a vintage car",
    "the library book",
];
const WHEN: &[&str] = &[
    "on Monday",
    "last summer",
    "every weekend",
    "in the morning",
    "after work",
    "during the holidays",
    "yesterday",
    "twice a month",
    "before dinner",
    "at the conference",
];

/// Deterministic so every run seeds the same corpus.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % n
    }
}

fn sentence(rng: &mut Lcg) -> String {
    format!(
        "{} {} {} {}.",
        SUBJECTS[rng.next(SUBJECTS.len())],
        VERBS[rng.next(VERBS.len())],
        OBJECTS[rng.next(OBJECTS.len())],
        WHEN[rng.next(WHEN.len())]
    )
}

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
