//! The in-process vector scan alone (SQLite mode's `OrgVectors`), at sizes
//! a database need not hold: fills an index with `count` vectors of
//! synthetic memories (hashing embedder; each text has two words drawn from
//! 5 000 so the vectors spread), then times the same queries through the
//! int8 scan and through the sign pass + int8 scoring, and reports the sign
//! pass's recall: the share of its top k scoring at least the int8 scan's
//! k-th best (so ties count as found). The shortlist size is thereby
//! measured, not assumed.
//!
//! `cargo run --release --example bench_scan -- <count> [queries] [k] [shortlists, e.g. 4000,16000] [model dir]`
//! (the shortlists default to the one searches use for k). With a model
//! directory (e.g. all-MiniLM-L6-v2) the vectors are that model's, embedded
//! on two threads: slow (~100 texts/s a core), so for tens of thousands.

use std::sync::Arc;
use std::time::Instant;

use memhost::memories::Scopes;
use memhost::memories::filter::MemoryFilter;
use memhost::memories::index::{Attributes, OrgVectors, shortlist_len};
use memhost::providers::embedding::LocalEmbedder;
use uuid::Uuid;

#[path = "common/sentences.rs"]
mod sentences;
use sentences::{Lcg, sentence};

fn text(rng: &mut Lcg) -> String {
    format!("{} Note w{} w{}.", sentence(rng), rng.next(5000), rng.next(5000))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let count: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(1_000_000);
    let queries: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(100);
    let k: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(100);
    let now = chrono::Utc::now();
    let attributes = Arc::new(Attributes {
        metadata: Default::default(),
        scopes: Scopes::default(),
        created_at: now,
        updated_at: now,
    });
    let model =
        args.get(5).map(|dir| memhost_semantic::SentenceEncoder::load(std::path::Path::new(dir))).transpose()?;
    let embed = |texts: &[String]| -> Vec<Vec<f32>> {
        match &model {
            None => texts.iter().map(|t| LocalEmbedder::embed_one(t)).collect(),
            Some(encoder) => std::thread::scope(|scope| {
                let half = texts.len().div_ceil(2).max(1);
                let parts: Vec<_> = texts
                    .chunks(half)
                    .map(|part| {
                        scope.spawn(move || {
                            part.chunks(32)
                                .flat_map(|c| encoder.encode(&c.iter().map(String::as_str).collect::<Vec<_>>()))
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                parts.into_iter().flat_map(|p| p.join().expect("embedding thread")).collect()
            }),
        }
    };
    let started = Instant::now();
    let mut index = OrgVectors::default();
    let mut rng = Lcg(0x5ca1);
    let texts: Vec<String> = (0..count).map(|_| text(&mut rng)).collect();
    for v in embed(&texts) {
        index.upsert(Uuid::now_v7(), &v, "hash", attributes.clone());
    }
    eprintln!("filled {count} vectors in {:.1} s", started.elapsed().as_secs_f64());
    let mut rng = Lcg(0x9e77);
    let qs = embed(&(0..queries).map(|_| text(&mut rng)).collect::<Vec<_>>());
    let all = MemoryFilter::all();
    let shortlists: Vec<usize> = match args.get(4) {
        Some(list) => list.split(',').map(str::parse).collect::<Result<_, _>>()?,
        None => vec![shortlist_len(k)],
    };
    let mut int8 = Vec::new();
    let exact: Vec<Vec<(Uuid, f32)>> = qs
        .iter()
        .map(|q| {
            let t = Instant::now();
            let hits = index.search_with(q, "hash", k, 0.0, &all, None);
            int8.push(t.elapsed().as_secs_f64() * 1e3);
            hits
        })
        .collect();
    let which = if model.is_some() { "semantic model" } else { "hashing embedder" };
    println!("{count} vectors ({which}), {queries} queries, k {k}");
    println!("int8 scan:                      {}", summary(&mut int8));
    for shortlist in shortlists {
        let mut times = Vec::new();
        let mut recall = 0.0;
        for (q, exact) in qs.iter().zip(&exact) {
            let t = Instant::now();
            let fast = index.search_with(q, "hash", k, 0.0, &all, Some(shortlist));
            times.push(t.elapsed().as_secs_f64() * 1e3);
            let kth = exact.last().map_or(0.0, |h| h.1);
            recall += fast.iter().filter(|h| h.1 >= kth).count() as f64 / exact.len().max(1) as f64;
        }
        println!("sign pass {shortlist:>6} + int8:     {}  recall {:.4}", summary(&mut times), recall / queries as f64);
    }
    Ok(())
}

fn summary(ms: &mut [f64]) -> String {
    ms.sort_by(f64::total_cmp);
    let at = |p: f64| ms[((ms.len() as f64 * p) as usize).min(ms.len() - 1)];
    format!("p50 {:.2} ms  p95 {:.2} ms  p99 {:.2} ms", at(0.5), at(0.95), at(0.99))
}
