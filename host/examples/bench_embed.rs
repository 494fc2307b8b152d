//! Embedding throughput on one core: the local semantic model against the
//! hashing embedder (the baseline, same run), on dialogue-sized texts.
//!
//! `cargo run --release --example bench_embed -- <model dir> [texts]`
//! (`memhost models pull` puts the model in `data/models/all-minilm-l6-v2`).

use std::time::Instant;

use memhost::providers::embedding::LocalEmbedder;
use memhost_semantic::SentenceEncoder;

const SENTENCES: &[&str] = &[
    "I finally signed up for that pottery class downtown, the first session is on Thursday.",
    "My sister just moved to Porto and she keeps sending me photos of the river.",
    "We adopted a beagle puppy last weekend, he chews everything.",
    "Work has been brutal lately, three night shifts in a row at the hospital.",
    "Did you ever finish that book about the history of coffee?",
    "I'm thinking of running the Berlin marathon next year.",
    "The kids start school again in September, so the summer trip has to be in August.",
    "Honestly I can't stand horror films, I watched one and didn't sleep for a week.",
];

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let dir = args.get(1).ok_or_else(|| anyhow::anyhow!("usage: bench_embed <model dir> [texts]"))?;
    let n: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(2000);
    let texts: Vec<&str> = (0..n).map(|i| SENTENCES[i % SENTENCES.len()]).collect();
    let encoder = SentenceEncoder::load(std::path::Path::new(dir))?;
    let tokens: usize = texts.iter().map(|t| encoder.token_ids(t).len()).sum();
    println!("{n} texts, {:.1} tokens each on average (with [CLS] and [SEP]), one thread", tokens as f64 / n as f64);

    // Warm-up.
    encoder.encode(&texts[..32.min(n)]);

    let started = Instant::now();
    for t in &texts {
        std::hint::black_box(LocalEmbedder::embed_one(t));
    }
    report("hashing embedder (baseline), one text per call", n, started);

    for batch in [1usize, 8, 32] {
        let started = Instant::now();
        for chunk in texts.chunks(batch) {
            std::hint::black_box(encoder.encode(chunk));
        }
        report(&format!("all-MiniLM-L6-v2, {batch} text(s) per pass"), n, started);
    }
    Ok(())
}

fn report(what: &str, n: usize, started: Instant) {
    let secs = started.elapsed().as_secs_f64();
    println!("{what:<48} {:>10.0} texts/s  {:>8.3} ms/text", n as f64 / secs, secs * 1000.0 / n as f64);
}
