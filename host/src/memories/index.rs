//! Vector search in process, for embedded mode.
//!
//! SQLite has no vector index, and reading 100k embeddings per query from the
//! file would cost far more than the 50 ms budget. So each (org, environment)
//! keeps its vectors in one contiguous array, loaded on first search and kept
//! current by the writes that go through this process (embedded mode has one
//! writer: this server). The array holds int8 codes (`quantized.rs`): a scan
//! is an integer dot product per memory, with the filter tested as it goes;
//! the store rescores the best candidates with the exact vectors. Past
//! [`SIGN_PASS_ABOVE`] vectors the int8 codes alone are more bytes than one
//! core reads in the time budget, so a first pass over one sign bit per
//! dimension (Hamming distance, 48 bytes a vector) shortlists generously
//! and only the shortlist is scored with the int8 codes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use tokio::sync::RwLock;
use uuid::Uuid;

use super::filter::{MemoryFilter, Row};
use super::quantized::{dot_i8, hamming, quantize, sign_bits, sign_words};
use super::{MemoryScope, Scopes};
use crate::providers::embedding::DIMENSIONS;

/// What filters look at, per memory (so the scan filters as it goes).
pub struct Attributes {
    pub metadata: Map<String, Value>,
    pub scopes: Scopes,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Attributes {
    fn row(&self) -> Row<'_> {
        Row {
            metadata: &self.metadata,
            entities: self.scopes.as_array(),
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
}

/// The vectors of one org and environment.
#[derive(Default)]
pub struct OrgVectors {
    ids: Vec<Uuid>,
    /// int8 codes, [`DIMENSIONS`] per memory, and each vector's scale.
    codes: Vec<i8>,
    scales: Vec<f32>,
    /// Sign bits, [`SIGN_WORDS`] words per memory, for the first pass.
    signs: Vec<u64>,
    metadata: Vec<Arc<Attributes>>,
    /// Which model made each vector: an index into `model_names`.
    models: Vec<u16>,
    model_names: Vec<String>,
    position: HashMap<Uuid, usize>,
}

impl OrgVectors {
    fn model_index(&mut self, model: &str) -> u16 {
        match self.model_names.iter().position(|m| m == model) {
            Some(i) => i as u16,
            None => {
                self.model_names.push(model.to_string());
                (self.model_names.len() - 1) as u16
            }
        }
    }

    pub fn upsert(&mut self, id: Uuid, vector: &[f32], model: &str, metadata: Arc<Attributes>) {
        debug_assert_eq!(vector.len(), DIMENSIONS);
        let m = self.model_index(model);
        match self.position.get(&id) {
            Some(&i) => {
                self.set_code(i, vector);
                self.metadata[i] = metadata;
                self.models[i] = m;
            }
            None => {
                self.position.insert(id, self.ids.len());
                self.ids.push(id);
                let scale = quantize(vector, &mut self.codes);
                self.scales.push(scale);
                sign_bits(vector, &mut self.signs);
                self.metadata.push(metadata);
                self.models.push(m);
            }
        }
    }

    fn set_code(&mut self, i: usize, vector: &[f32]) {
        let mut code = Vec::with_capacity(DIMENSIONS);
        self.scales[i] = quantize(vector, &mut code);
        self.codes[i * DIMENSIONS..(i + 1) * DIMENSIONS].copy_from_slice(&code);
        let mut signs = Vec::with_capacity(SIGN_WORDS);
        sign_bits(vector, &mut signs);
        self.signs[i * SIGN_WORDS..(i + 1) * SIGN_WORDS].copy_from_slice(&signs);
    }

    /// The query's codes and scale.
    fn query_code(query: &[f32]) -> (Vec<i8>, f32) {
        let mut code = Vec::with_capacity(DIMENSIONS);
        let scale = quantize(query, &mut code);
        (code, scale)
    }

    /// Cosine similarity (from the int8 codes: within ~1e-3) of stored
    /// vectors to the query of their own model; memories absent, or whose
    /// model has no query, are left out.
    pub fn similarities(&self, ids: &[Uuid], queries: &[(String, Vec<f32>)]) -> Vec<(Uuid, f32)> {
        let codes: Vec<(&String, (Vec<i8>, f32))> = queries.iter().map(|(m, q)| (m, Self::query_code(q))).collect();
        ids.iter()
            .filter_map(|id| {
                let &i = self.position.get(id)?;
                let model = &self.model_names[self.models[i] as usize];
                let (_, (q, qs)) = codes.iter().find(|(m, _)| *m == model)?;
                let score = dot_i8(q, &self.codes[i * DIMENSIONS..(i + 1) * DIMENSIONS]) as f32 * qs * self.scales[i];
                Some((*id, score.clamp(0.0, 1.0)))
            })
            .collect()
    }

    /// Replaces the vector of a memory already here (re-embedding).
    pub fn set_vector(&mut self, id: Uuid, vector: &[f32], model: &str) {
        let m = self.model_index(model);
        if let Some(&i) = self.position.get(&id) {
            self.set_code(i, vector);
            self.models[i] = m;
        }
    }

    /// Replaces the attributes of a memory whose text (and vector) did not change.
    pub fn set_attributes(&mut self, id: Uuid, metadata: Arc<Attributes>) {
        if let Some(&i) = self.position.get(&id) {
            self.metadata[i] = metadata;
        }
    }

    pub fn remove(&mut self, id: Uuid) {
        let Some(i) = self.position.remove(&id) else {
            return;
        };
        let last = self.ids.len() - 1;
        if i != last {
            let moved = self.ids[last];
            self.ids.swap(i, last);
            self.metadata.swap(i, last);
            self.models.swap(i, last);
            self.scales.swap(i, last);
            let (head, tail) = self.codes.split_at_mut(last * DIMENSIONS);
            head[i * DIMENSIONS..(i + 1) * DIMENSIONS].copy_from_slice(&tail[..DIMENSIONS]);
            let (head, tail) = self.signs.split_at_mut(last * SIGN_WORDS);
            head[i * SIGN_WORDS..(i + 1) * SIGN_WORDS].copy_from_slice(&tail[..SIGN_WORDS]);
            self.position.insert(moved, i);
        }
        self.ids.pop();
        self.metadata.pop();
        self.models.pop();
        self.scales.pop();
        self.codes.truncate(last * DIMENSIONS);
        self.signs.truncate(last * SIGN_WORDS);
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The `k` best (id, approximate score) at or above `threshold`, best
    /// first, among the vectors of `model` (the query's). Scores are from the
    /// int8 codes; the caller rescores (a small slack below the threshold
    /// keeps borderline memories for that). Large orgs go through the sign
    /// pass first ([`SIGN_PASS_ABOVE`]).
    pub fn search(
        &self,
        query: &[f32],
        model: &str,
        k: usize,
        threshold: f32,
        filter: &MemoryFilter,
    ) -> Vec<(Uuid, f32)> {
        let shortlist = (self.ids.len() > SIGN_PASS_ABOVE).then(|| shortlist_len(k));
        self.search_with(query, model, k, threshold, filter, shortlist)
    }

    /// [`Self::search`], with the sign pass (shortlisting `shortlist`
    /// memories) or without it.
    pub fn search_with(
        &self,
        query: &[f32],
        model: &str,
        k: usize,
        threshold: f32,
        filter: &MemoryFilter,
        shortlist: Option<usize>,
    ) -> Vec<(Uuid, f32)> {
        let Some(m) = self.model_names.iter().position(|n| n == model).map(|i| i as u16) else {
            return Vec::new();
        };
        let (q, qs) = Self::query_code(query);
        let floor = threshold - QUANTIZATION_SLACK;
        let score = |i: usize| {
            (dot_i8(&q, &self.codes[i * DIMENSIONS..(i + 1) * DIMENSIONS]) as f32 * qs * self.scales[i]).clamp(0.0, 1.0)
        };
        let mut hits: Vec<(f32, u32)> = Vec::new();
        match shortlist {
            Some(n) => {
                for i in self.nearest_signs(query, m, n, filter) {
                    let s = score(i);
                    if s >= floor {
                        hits.push((s, i as u32));
                    }
                }
            }
            None if filter.is_empty() => {
                for i in 0..self.ids.len() {
                    if self.models[i] != m {
                        continue;
                    }
                    let s = score(i);
                    if s >= floor {
                        hits.push((s, i as u32));
                    }
                }
            }
            None => {
                // Testing the filter costs more than the dot product: test it
                // only on rows that would enter the best k so far (a min-heap
                // of their scores), not on every row above the floor.
                use std::cmp::Reverse;
                let mut best: std::collections::BinaryHeap<Reverse<OrdScore>> =
                    std::collections::BinaryHeap::with_capacity(k + 1);
                for i in 0..self.ids.len() {
                    if self.models[i] != m {
                        continue;
                    }
                    let s = score(i);
                    if s < floor || (best.len() >= k && best.peek().is_some_and(|Reverse(w)| s <= w.0)) {
                        continue;
                    }
                    if filter.matches(&self.metadata[i].row()) {
                        best.push(Reverse(OrdScore(s, i as u32)));
                        if best.len() > k {
                            best.pop();
                        }
                    }
                }
                hits.extend(best.into_iter().map(|Reverse(OrdScore(s, i))| (s, i)));
            }
        }
        let by_score = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        if hits.len() > k && k > 0 {
            hits.select_nth_unstable_by(k - 1, by_score);
            hits.truncate(k);
        }
        hits.sort_by(by_score);
        hits.truncate(k);
        hits.into_iter().map(|(s, i)| (self.ids[i as usize], s)).collect()
    }

    /// The positions of (about) the `n` vectors of model `m` passing
    /// `filter` whose sign bits differ least from the query's. Distances
    /// are bucketed (0..=384) and the positions counting-sorted by them, in
    /// one pass; the filter is only tested on rows taken in that order, until
    /// `n` pass.
    fn nearest_signs(&self, query: &[f32], m: u16, n: usize, filter: &MemoryFilter) -> Vec<usize> {
        const OTHER_MODEL: u16 = u16::MAX;
        let mut q = Vec::with_capacity(SIGN_WORDS);
        sign_bits(query, &mut q);
        let mut starts = [0usize; SIGN_WORDS * 64 + 2];
        let distances: Vec<u16> = self
            .signs
            .chunks_exact(SIGN_WORDS)
            .zip(&self.models)
            .map(|(signs, &model)| {
                if model != m {
                    return OTHER_MODEL;
                }
                let d = hamming(&q, signs) as u16;
                starts[d as usize + 1] += 1;
                d
            })
            .collect();
        for d in 1..starts.len() {
            starts[d] += starts[d - 1];
        }
        let mut order = vec![0u32; starts[starts.len() - 1]];
        for (i, &d) in distances.iter().enumerate() {
            if d != OTHER_MODEL {
                order[starts[d as usize]] = i as u32;
                starts[d as usize] += 1;
            }
        }
        let mut picked = Vec::with_capacity(n.min(order.len()));
        for &i in &order {
            if picked.len() >= n {
                break;
            }
            if filter.is_empty() || filter.matches(&self.metadata[i as usize].row()) {
                picked.push(i as usize);
            }
        }
        picked
    }
}

/// A score that sorts (scores are never NaN: clamped dot products).
#[derive(PartialEq, Clone, Copy)]
struct OrdScore(f32, u32);

impl Eq for OrdScore {}

impl PartialOrd for OrdScore {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for OrdScore {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Lower position wins ties, as in the unfiltered scan's order.
        self.0.total_cmp(&other.0).then(other.1.cmp(&self.1))
    }
}

/// Vectors in one org and environment above which a search starts with the
/// sign pass. Below it the int8 scan is fast enough (about 4 ms per 100 000
/// on one core here) and exact up to the quantization error.
pub const SIGN_PASS_ABOVE: usize = 250_000;

/// How many memories the sign pass hands to the int8 scoring for a search
/// of `k`: generous, since sign bits are a coarse code. Measured with
/// `bench_scan` at 1 000 000 vectors (BENCHMARKS.md): for k = 100 a
/// shortlist of 4 000 kept 97.7% of the int8 scan's top 100, 16 000 kept
/// 99.8% for 2.5 ms more.
pub fn shortlist_len(k: usize) -> usize {
    k.saturating_mul(160).max(16_000)
}

const SIGN_WORDS: usize = sign_words(DIMENSIONS);

/// How far an int8 score may fall below the exact one (measured error is
/// about 1e-3 for 384 dimensions).
const QUANTIZATION_SLACK: f32 = 0.01;

type Slot = Arc<RwLock<Option<OrgVectors>>>;

/// All loaded orgs. A slot holds `None` until its first search loads it.
#[derive(Default)]
pub struct VectorIndex {
    slots: Mutex<HashMap<(String, &'static str), Slot>>,
}

impl VectorIndex {
    pub fn slot(&self, scope: &MemoryScope) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.entry((scope.org_id.clone(), scope.environment.as_str())).or_default().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::embedding::LocalEmbedder;

    const M: &str = "hash";

    fn meta(pairs: &[(&str, &str)]) -> Arc<Attributes> {
        Arc::new(Attributes {
            metadata: pairs.iter().map(|(k, v)| (k.to_string(), Value::String(v.to_string()))).collect(),
            scopes: Scopes::default(),
            created_at: Utc::now(),
            updated_at: Utc::now(),
        })
    }

    #[test]
    fn upsert_remove_search() {
        let mut idx = OrgVectors::default();
        let texts = ["green tea in the morning", "parking at the airport", "tea ceremony in Kyoto"];
        let ids: Vec<Uuid> = texts.iter().map(|_| Uuid::now_v7()).collect();
        for (id, t) in ids.iter().zip(texts) {
            idx.upsert(
                *id,
                &LocalEmbedder::embed_one(t),
                M,
                meta(&[("user", if t.contains("Kyoto") { "bob" } else { "alice" })]),
            );
        }
        let q = LocalEmbedder::embed_one("tea");
        let hits = idx.search(&q, M, 2, 0.05, &MemoryFilter::all());
        assert_eq!(hits.len(), 2);
        assert!(hits.iter().all(|(id, _)| *id != ids[1]));
        let alice = MemoryFilter::from_json(&serde_json::json!({"user": "alice"}), "filters").unwrap();
        let hits = idx.search(&q, M, 5, 0.05, &alice);
        assert_eq!(hits.iter().map(|h| h.0).collect::<Vec<_>>(), vec![ids[0]]);

        idx.remove(ids[0]);
        assert_eq!(idx.len(), 2);
        let hits = idx.search(&q, M, 5, 0.05, &MemoryFilter::all());
        assert_eq!(hits.iter().map(|h| h.0).collect::<Vec<_>>(), vec![ids[2]]);
        // the moved row is still addressable
        idx.upsert(ids[2], &LocalEmbedder::embed_one("airport"), M, meta(&[]));
        assert_eq!(idx.len(), 2);
        let hits = idx.search(&LocalEmbedder::embed_one("airport"), M, 1, 0.0, &MemoryFilter::all());
        assert!(hits[0].1 > 0.98);
        // a vector of another model is only found by that model's query
        idx.upsert(ids[1], &LocalEmbedder::embed_one("airport"), "other", meta(&[]));
        let hits = idx.search(&LocalEmbedder::embed_one("airport"), M, 5, 0.0, &MemoryFilter::all());
        assert_eq!(hits.iter().map(|h| h.0).collect::<Vec<_>>(), vec![ids[2]]);
        let hits = idx.search(&LocalEmbedder::embed_one("airport"), "other", 5, 0.0, &MemoryFilter::all());
        assert_eq!(hits.iter().map(|h| h.0).collect::<Vec<_>>(), vec![ids[1]]);
        let q = vec![("other".to_string(), LocalEmbedder::embed_one("airport"))];
        assert_eq!(idx.similarities(&[ids[1], ids[2]], &q).len(), 1);
    }

    /// The sign pass keeps what the int8 scan finds when its shortlist is
    /// generous, honours the filter while shortlisting, and survives a
    /// remove (codes and sign bits move together).
    #[test]
    fn sign_pass_shortlists_like_the_full_scan() {
        let mut idx = OrgVectors::default();
        let subjects = ["tea", "coffee", "bikes", "trains", "piano", "violin", "garden", "kayak"];
        let mut ids = Vec::new();
        for i in 0..400 {
            let text = format!("note {i} about {} and {}", subjects[i % 8], subjects[(i / 8) % 8]);
            let id = Uuid::now_v7();
            let owner = if i % 4 == 0 { "alice" } else { "bob" };
            idx.upsert(id, &LocalEmbedder::embed_one(&text), M, meta(&[("user", owner)]));
            ids.push(id);
        }
        for id in ids.iter().step_by(7) {
            idx.remove(*id);
        }
        let q = LocalEmbedder::embed_one("tea and piano");
        let all = MemoryFilter::all();
        let exact = idx.search_with(&q, M, 10, 0.0, &all, None);
        assert_eq!(idx.search_with(&q, M, 10, 0.0, &all, Some(200)), exact);
        let alice = MemoryFilter::from_json(&serde_json::json!({"user": "alice"}), "filters").unwrap();
        let exact = idx.search_with(&q, M, 10, 0.0, &alice, None);
        assert_eq!(exact.len(), 10);
        // a shortlist of 30 among ~340 rows, a quarter of them alice's: the cut widens until 30 pass
        let fast = idx.search_with(&q, M, 10, 0.0, &alice, Some(30));
        assert_eq!(fast.len(), 10);
        let alice_rows: std::collections::HashSet<Uuid> = ids.iter().step_by(4).copied().collect();
        assert!(fast.iter().all(|(id, _)| alice_rows.contains(id)));
        assert_eq!(idx.search_with(&q, M, 10, 0.0, &alice, Some(0)), vec![]);
    }
}
