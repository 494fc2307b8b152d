//! Hybrid ranking: a vector list (nearest embeddings) and a keyword list
//! (full-text search: BM25 in SQLite's FTS5, `ts_rank` in PostgreSQL) fused
//! into one order, with optional recency decay and metadata boosts. The
//! weights are policy (`policies/retrieval.yaml`).
//!
//! The default fusion is by score: each list's scores are min-max
//! normalised over its candidates (the two scales differ: a cosine, a BM25
//! score without bound) and summed with the weights as shares. Unlike
//! reciprocal rank fusion (also available, `fusion: rrf`), it keeps *how
//! much* better a list's first candidate is: a clear keyword match is not
//! pulled down to the level of a weak vector neighbour that merely ranks
//! high in a list of weak neighbours. On long dialogues (LoCoMo-shaped, see
//! BENCHMARKS.md) rank fusion scored below the keyword list alone; score
//! fusion above both.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::{Map, Value};
use uuid::Uuid;

use super::filter::scalar_text;

/// Which lists a retrieval uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Vectors and keywords, fused (the default).
    #[default]
    Hybrid,
    /// Nearest embeddings only.
    Vector,
    /// Full-text search only.
    Keyword,
}

/// How the two candidate lists become one order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fusion {
    /// `share_v × norm(cosine) + share_k × norm(keyword score)`, each score
    /// min-max normalised over its list's candidates (a memory absent from
    /// the keyword list counts 0 there), the shares the weights over their sum.
    #[default]
    Score,
    /// Reciprocal rank fusion: `Σ weight / (rrf_k + rank)` over the lists.
    Rrf,
}

/// `policies/retrieval.yaml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RankingPolicy {
    pub fusion: Fusion,
    /// Weight of the vector list in the fusion.
    pub vector_weight: f32,
    /// Its weight when the vectors come from the hashing embedder, which is
    /// lexical (words and trigrams, like the keyword list but coarser). At 0
    /// the keywords decide and the vector list only adds what they missed.
    pub hashing_vector_weight: f32,
    /// Weight of the keyword list.
    pub keyword_weight: f32,
    /// The `k` of reciprocal rank fusion (`fusion: rrf`): larger flattens the rank curve.
    pub rrf_k: f32,
    /// Candidates taken from each list: `max(min_candidates, candidates_per_result × max_memories)`.
    pub min_candidates: u32,
    pub candidates_per_result: u32,
    /// Rows a keyword query may match before its most common terms are left
    /// out of the match (they still count in PostgreSQL's rank). Full-text
    /// engines score every matching row before the LIMIT, and a common word
    /// matches a large share of the memories while weighing little in BM25
    /// (low IDF). In SQLite, when even the rarest term matches more than
    /// this many of the org's memories, the newest this-many are ranked.
    /// 0: always match and rank everything.
    pub keyword_match_budget: u64,
    /// Conversations stored one memory per turn: the turn that answers a
    /// question is often the one after the turn that matches it ("Which
    /// team did you sign with?" → "The Minnesota Wolves!"). In a hybrid
    /// retrieval the best candidates lend `context_weights[d]` × their fused
    /// score to the memory `d + 1` places before them and the one `d + 1`
    /// after them in their thread (same entity scopes, passing the request's
    /// filters). Empty (or zeros) turns it off; at most
    /// [`MAX_CONTEXT_DEPTH`] entries.
    pub context_weights: Vec<f32>,
    /// How far apart, in the org's writes, two memories of a thread may be
    /// and still count as neighbours (bounds the lookup's cost when many
    /// threads are written at once).
    pub context_window: u32,
    /// Newer memories first, all else equal: the fused score is multiplied by
    /// `1 - recency_weight + recency_weight × 0.5^(age / recency_half_life_days)`.
    /// 0 turns it off.
    pub recency_weight: f32,
    pub recency_half_life_days: f32,
    /// Memories whose metadata has `key` equal to `value` get their fused
    /// score multiplied by `factor`.
    pub boosts: Vec<Boost>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Boost {
    pub key: String,
    pub value: Value,
    pub factor: f32,
}

impl Default for RankingPolicy {
    fn default() -> Self {
        RankingPolicy {
            fusion: Fusion::Score,
            vector_weight: 1.0,
            hashing_vector_weight: 0.0,
            keyword_weight: 1.0,
            rrf_k: 60.0,
            min_candidates: 50,
            candidates_per_result: 5,
            keyword_match_budget: 5000,
            context_weights: vec![0.2, 0.15],
            context_window: 32,
            recency_weight: 0.0,
            recency_half_life_days: 30.0,
            boosts: Vec::new(),
        }
    }
}

pub const BUNDLED_POLICY: &str = include_str!("../../../policies/retrieval.yaml");

impl RankingPolicy {
    pub fn parse(yaml: &str) -> anyhow::Result<RankingPolicy> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            #[serde(default)]
            ranking: RankingPolicy,
        }
        let file: File = serde_yaml_ng::from_str(yaml).map_err(|e| anyhow::anyhow!("retrieval policy: {e}"))?;
        let p = file.ranking;
        if p.context_weights.len() > MAX_CONTEXT_DEPTH || p.context_weights.iter().any(|w| !w.is_finite() || *w < 0.0) {
            anyhow::bail!(
                "retrieval policy: context_weights takes at most {MAX_CONTEXT_DEPTH} finite, non-negative weights"
            );
        }
        let finite = [
            p.vector_weight,
            p.hashing_vector_weight,
            p.keyword_weight,
            p.rrf_k,
            p.recency_weight,
            p.recency_half_life_days,
        ];
        if finite.iter().any(|v| !v.is_finite() || *v < 0.0) {
            anyhow::bail!("retrieval policy: weights, rrf_k and the half-life must be finite and not negative");
        }
        if p.recency_weight > 1.0 {
            anyhow::bail!("retrieval policy: recency_weight must be between 0 and 1");
        }
        if p.recency_weight > 0.0 && p.recency_half_life_days <= 0.0 {
            anyhow::bail!("retrieval policy: recency_half_life_days must be positive");
        }
        if p.boosts.iter().any(|b| !b.factor.is_finite() || b.factor < 0.0 || scalar_text(&b.value).is_none()) {
            anyhow::bail!("retrieval policy: each boost needs a scalar value and a factor ≥ 0");
        }
        Ok(p)
    }

    pub fn bundled() -> RankingPolicy {
        RankingPolicy::parse(BUNDLED_POLICY).expect("the bundled retrieval policy is valid")
    }

    /// How many neighbours each side lend context reaches (0: off).
    pub fn context_depth(&self) -> usize {
        self.context_weights.iter().rposition(|w| *w > 0.0).map_or(0, |i| i + 1)
    }

    /// How many of the best fused candidates lend context to their neighbours.
    pub fn context_lenders(&self, k: u32) -> usize {
        (k as usize).max(10)
    }

    pub fn candidates(&self, k: u32) -> u32 {
        self.min_candidates.max(self.candidates_per_result.saturating_mul(k)).clamp(k, 1000)
    }

    /// True when the fused score depends on a memory's row (age, metadata),
    /// so every candidate's row must be read before the cut.
    pub fn needs_rows(&self) -> bool {
        self.recency_weight > 0.0 || !self.boosts.is_empty()
    }

    /// The multiplier of a memory's fused score from its age and metadata.
    pub fn adjustment(&self, age_days: f64, metadata: &Map<String, Value>) -> f32 {
        let mut factor = 1.0;
        if self.recency_weight > 0.0 {
            let decay = 0.5f64.powf(age_days.max(0.0) / self.recency_half_life_days as f64) as f32;
            factor *= 1.0 - self.recency_weight + self.recency_weight * decay;
        }
        for b in &self.boosts {
            if metadata.get(&b.key).and_then(scalar_text) == scalar_text(&b.value) {
                factor *= b.factor;
            }
        }
        factor
    }
}

/// A candidate after fusion.
#[derive(Debug, Clone, PartialEq)]
pub struct Fused {
    pub id: Uuid,
    pub fused: f32,
    /// Cosine similarity to the query, when known (vector list, or computed).
    pub semantic: Option<f32>,
    /// The full-text score (higher is better), when in the keyword list.
    pub keyword: Option<f32>,
}

/// Fuses the two lists (each best first: `(id, cosine)` and `(id, keyword
/// score)`) with the weights given (the policy's for a hybrid request; a
/// request for one list passes 0 for the other). `similarity` holds the
/// cosines of keyword-only candidates, when known. Best first (ties as
/// [`best_first`] says).
pub fn fuse(
    policy: &RankingPolicy,
    vector_weight: f32,
    keyword_weight: f32,
    vector: &[(Uuid, f32)],
    keyword: &[(Uuid, f32)],
    similarity: &HashMap<Uuid, f32>,
) -> Vec<Fused> {
    let mut by_id: HashMap<Uuid, Fused> = HashMap::with_capacity(vector.len() + keyword.len());
    let mut order = Vec::with_capacity(vector.len() + keyword.len());
    for (id, cosine) in vector {
        by_id.entry(*id).or_insert_with(|| {
            order.push(*id);
            Fused { id: *id, fused: 0.0, semantic: Some(*cosine), keyword: None }
        });
    }
    for (id, score) in keyword {
        let f = by_id.entry(*id).or_insert_with(|| {
            order.push(*id);
            Fused { id: *id, fused: 0.0, semantic: similarity.get(id).copied(), keyword: None }
        });
        f.keyword = Some(*score);
    }
    match policy.fusion {
        Fusion::Rrf => {
            for (rank, (id, _)) in vector.iter().enumerate() {
                if let Some(f) = by_id.get_mut(id) {
                    f.fused += vector_weight / (policy.rrf_k + rank as f32 + 1.0);
                }
            }
            for (rank, (id, _)) in keyword.iter().enumerate() {
                if let Some(f) = by_id.get_mut(id) {
                    f.fused += keyword_weight / (policy.rrf_k + rank as f32 + 1.0);
                }
            }
        }
        Fusion::Score => {
            let total = vector_weight + keyword_weight;
            let (share_v, share_k) =
                if total > 0.0 { (vector_weight / total, keyword_weight / total) } else { (0.0, 0.0) };
            let cosine = Normaliser::over(by_id.values().filter_map(|f| f.semantic));
            let text = Normaliser::over(keyword.iter().map(|(_, s)| *s));
            for f in by_id.values_mut() {
                f.fused = share_v * f.semantic.map_or(0.0, |c| cosine.apply(c))
                    + share_k * f.keyword.map_or(0.0, |k| text.apply(k));
            }
        }
    }
    let mut out: Vec<Fused> = order.into_iter().filter_map(|id| by_id.remove(&id)).collect();
    best_first(&mut out);
    out
}

/// A memory's neighbours in its thread, nearest first (the store's `thread_neighbours`).
#[derive(Debug, Clone, PartialEq)]
pub struct Neighbours {
    pub id: Uuid,
    pub before: Vec<Uuid>,
    pub after: Vec<Uuid>,
}

/// Best fused score first. Ties: what the keyword list found first (with
/// the vector list at weight 0, keywords decide and the vectors only add
/// after them), then as they were (each list's own order).
fn best_first(fused: &mut [Fused]) {
    fused.sort_by(|a, b| b.fused.total_cmp(&a.fused).then(b.keyword.is_some().cmp(&a.keyword.is_some())));
}

/// Thread context (`context_weights`): each lender gives
/// `context_weights[d] ×` its fused score to its neighbours at distance
/// `d + 1` on either side. A neighbour not yet a candidate joins with what
/// it was lent; the ids of those are returned (their similarity is
/// unknown). What a memory lends is its own fused score, not what it was lent.
pub fn lend_context(policy: &RankingPolicy, fused: &mut Vec<Fused>, neighbours: &[Neighbours]) -> Vec<Uuid> {
    if policy.context_depth() == 0 || neighbours.is_empty() {
        return Vec::new();
    }
    let own: HashMap<Uuid, f32> = fused.iter().map(|f| (f.id, f.fused)).collect();
    let mut position: HashMap<Uuid, usize> = fused.iter().enumerate().map(|(i, f)| (f.id, i)).collect();
    let mut joined = Vec::new();
    for n in neighbours {
        let Some(&score) = own.get(&n.id) else { continue };
        let sides = n.before.iter().enumerate().chain(n.after.iter().enumerate());
        for (d, id) in sides {
            let Some(&weight) = policy.context_weights.get(d) else { continue };
            let i = *position.entry(*id).or_insert_with(|| {
                joined.push(*id);
                fused.push(Fused { id: *id, fused: 0.0, semantic: None, keyword: None });
                fused.len() - 1
            });
            fused[i].fused += weight * score;
        }
    }
    best_first(fused);
    joined
}

/// Min-max normalisation over a list's scores: its best maps to 1, its
/// worst to 0 (a list of one, or of equal scores, maps to 1).
struct Normaliser {
    low: f32,
    span: f32,
}

impl Normaliser {
    fn over(scores: impl Iterator<Item = f32>) -> Normaliser {
        let (low, high) = scores
            .filter(|s| s.is_finite())
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), s| (lo.min(s), hi.max(s)));
        Normaliser { low, span: if high > low { high - low } else { 0.0 } }
    }

    fn apply(&self, score: f32) -> f32 {
        if !score.is_finite() {
            0.0
        } else if self.span > 0.0 {
            ((score - self.low) / self.span).clamp(0.0, 1.0)
        } else {
            1.0
        }
    }
}

/// Words that carry no meaning for full-text search; dropped from the
/// keyword query (they would match nearly every memory and cost time).
const STOP_WORDS: &[&str] = &[
    "a",
    "about",
    "above",
    "after",
    "again",
    "all",
    "am",
    "an",
    "and",
    "any",
    "are",
    "as",
    "at",
    "be",
    "because",
    "been",
    "before",
    "being",
    "below",
    "between",
    "both",
    "but",
    "by",
    "can",
    "could",
    "did",
    "do",
    "does",
    "doing",
    "down",
    "during",
    "each",
    "few",
    "for",
    "from",
    "further",
    "had",
    "has",
    "have",
    "having",
    "he",
    "her",
    "here",
    "hers",
    "herself",
    "him",
    "himself",
    "his",
    "how",
    "i",
    "if",
    "in",
    "into",
    "is",
    "it",
    "its",
    "itself",
    "just",
    "me",
    "more",
    "most",
    "my",
    "myself",
    "no",
    "nor",
    "not",
    "now",
    "of",
    "off",
    "on",
    "once",
    "only",
    "or",
    "other",
    "our",
    "ours",
    "ourselves",
    "out",
    "over",
    "own",
    "same",
    "she",
    "should",
    "so",
    "some",
    "such",
    "than",
    "that",
    "the",
    "their",
    "theirs",
    "them",
    "themselves",
    "then",
    "there",
    "these",
    "they",
    "this",
    "those",
    "through",
    "to",
    "too",
    "under",
    "until",
    "up",
    "very",
    "was",
    "we",
    "were",
    "what",
    "when",
    "where",
    "which",
    "while",
    "who",
    "whom",
    "why",
    "will",
    "with",
    "would",
    "you",
    "your",
    "yours",
    "yourself",
    "yourselves",
    "s",
    "t",
    "d",
    "ll",
    "m",
    "re",
    "ve",
    "don",
    "didn",
    "doesn",
    "isn",
    "wasn",
    "aren",
    "weren",
];

/// Most neighbours a side that `context_weights` may reach.
pub const MAX_CONTEXT_DEPTH: usize = 4;

/// Most terms a keyword query uses.
const MAX_TERMS: usize = 32;

/// The query's searchable words: lowercase letters and digits only (so they
/// are safe in any full-text query syntax), stop words dropped unless
/// nothing else is left, deduplicated, at most [`MAX_TERMS`].
pub fn keyword_terms(query: &str) -> Vec<String> {
    let words: Vec<String> = query
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .filter(|w| w.chars().count() <= 64)
        .collect();
    let mut terms: Vec<String> = words.iter().filter(|w| !STOP_WORDS.contains(&w.as_str())).cloned().collect();
    if terms.is_empty() {
        terms = words;
    }
    let mut seen = std::collections::HashSet::new();
    terms.retain(|t| seen.insert(t.clone()));
    terms.truncate(MAX_TERMS);
    terms
}

/// The terms a keyword query matches on, given how many rows each matches
/// (`docs[i]` for `terms[i]`): all of them while their counts add up to at
/// most `budget` (0: no budget); otherwise the rarest first for as long as
/// they fit, and always at least the rarest one. Order as in `terms`.
pub fn match_terms(terms: &[String], docs: &[u64], budget: u64) -> Vec<String> {
    let total: u64 = docs.iter().sum();
    if budget == 0 || total <= budget || terms.len() < 2 {
        return terms.to_vec();
    }
    let mut by_rarity: Vec<usize> = (0..terms.len()).collect();
    by_rarity.sort_by_key(|&i| (docs[i], i));
    let mut keep = vec![false; terms.len()];
    let mut used = 0u64;
    for &i in &by_rarity {
        if used > 0 && used.saturating_add(docs[i]) > budget {
            break;
        }
        used = used.saturating_add(docs[i]);
        keep[i] = true;
    }
    terms.iter().zip(keep).filter(|(_, k)| *k).map(|(t, _)| t.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_fusion_rewards_agreement() {
        let [a, b, c] = [Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7()];
        let p = RankingPolicy { fusion: Fusion::Rrf, ..RankingPolicy::default() };
        let none = HashMap::new();
        // a: first in vectors only; b: second in both; c: first in keywords
        // only (a and c tie: the keyword list's goes first)
        let fused = fuse(&p, 1.0, 1.0, &[(a, 0.9), (b, 0.8)], &[(c, 12.0), (b, 9.0)], &none);
        assert_eq!(fused.iter().map(|f| f.id).collect::<Vec<_>>(), vec![b, c, a]);
        assert_eq!(fused[0].semantic, Some(0.8));
        assert_eq!(fused[0].keyword, Some(9.0));
        assert_eq!(fused[1].semantic, None);
        // keyword weight 0: the vector order alone
        let fused = fuse(&p, 1.0, 0.0, &[(a, 0.9), (b, 0.8)], &[(c, 12.0), (b, 9.0)], &none);
        assert_eq!(fused.iter().map(|f| f.id).take(2).collect::<Vec<_>>(), vec![a, b]);
        // a low vector weight: keywords lead
        let fused = fuse(&p, 0.25, 1.0, &[(a, 0.9), (b, 0.8)], &[(c, 12.0), (b, 9.0)], &none);
        assert_eq!(fused.iter().map(|f| f.id).collect::<Vec<_>>(), vec![b, c, a]);
    }

    #[test]
    fn score_fusion_keeps_margins() {
        let [a, b, c, d] = [Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7()];
        let p = RankingPolicy::default();
        assert_eq!(p.fusion, Fusion::Score);
        // c is a clear keyword match (12 against 2 and 1) and fourth of the
        // vector list by a hair; b is second in both. Rank fusion puts b
        // first; score fusion keeps c's margin.
        let e = Uuid::now_v7();
        let vector = [(a, 0.62), (b, 0.61), (d, 0.60), (c, 0.59), (e, 0.30)];
        let keyword = [(c, 12.0), (b, 2.0), (d, 1.0)];
        let fused = fuse(&p, 1.0, 1.0, &vector, &keyword, &HashMap::new());
        assert_eq!(fused[0].id, c);
        let rrf =
            fuse(&RankingPolicy { fusion: Fusion::Rrf, ..p.clone() }, 1.0, 1.0, &vector, &keyword, &HashMap::new());
        assert_eq!(rrf[0].id, b);
        // normalised: the best of both lists scores 1, the worst of both 0
        let top = fuse(&p, 1.0, 1.0, &[(a, 0.9), (b, 0.5)], &[(a, 3.0), (b, 1.0)], &HashMap::new());
        assert_eq!((top[0].id, top[0].fused, top[1].fused), (a, 1.0, 0.0));
        // a keyword-only candidate's similarity, when known, counts and is reported
        let sim = HashMap::from([(d, 0.9)]);
        let fused = fuse(&p, 0.5, 0.5, &[(a, 0.8), (b, 0.4)], &[(d, 5.0), (a, 5.0)], &sim);
        assert_eq!(fused[0].id, d);
        assert_eq!(fused[0].semantic, Some(0.9));
        // one list only (weight 0 for the other): its order, then the other list's
        let fused = fuse(&p, 0.0, 1.0, &[(a, 0.9), (b, 0.8)], &[(c, 2.0)], &HashMap::new());
        assert_eq!(fused.iter().map(|f| f.id).collect::<Vec<_>>(), vec![c, a, b]);
        let fused = fuse(&p, 1.0, 0.0, &[(a, 0.9), (b, 0.8)], &[(c, 2.0), (b, 1.0)], &HashMap::new());
        assert_eq!(fused.iter().map(|f| f.id).collect::<Vec<_>>(), vec![a, b, c]);
    }

    #[test]
    fn context_flows_to_thread_neighbours() {
        let [q, answer, other, far] = [Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7()];
        let p = RankingPolicy { context_weights: vec![0.5, 0.1], ..RankingPolicy::default() };
        let n = |id, before: &[Uuid], after: &[Uuid]| Neighbours { id, before: before.to_vec(), after: after.to_vec() };
        let f = |id, fused| Fused { id, fused, semantic: None, keyword: None };
        // q matches the query; the answer was written after it and matched nothing
        let mut fused = vec![f(q, 1.0), f(other, 0.6), f(far, 0.1)];
        let joined = lend_context(&p, &mut fused, &[n(q, &[], &[answer]), n(other, &[far], &[])]);
        assert_eq!(joined, vec![answer]);
        // q 1.0; other 0.6; answer 0.5 (lent by q); far 0.1 + 0.3 (lent by other)
        assert_eq!(fused.iter().map(|f| f.id).collect::<Vec<_>>(), vec![q, other, answer, far]);
        let want = [1.0, 0.6, 0.5, 0.4];
        assert!(fused.iter().zip(want).all(|(f, w)| (f.fused - w).abs() < 1e-6));
        // the second neighbour gets the second weight
        let mut fused = vec![f(q, 1.0)];
        lend_context(&p, &mut fused, &[n(q, &[], &[answer, far])]);
        assert_eq!(fused.iter().map(|f| f.id).collect::<Vec<_>>(), vec![q, answer, far]);
        assert!((fused[2].fused - 0.1).abs() < 1e-6);
        // off: nothing moves
        let mut fused = vec![f(q, 1.0)];
        let off = RankingPolicy { context_weights: vec![0.0], ..RankingPolicy::default() };
        assert_eq!(off.context_depth(), 0);
        assert!(lend_context(&off, &mut fused, &[n(q, &[], &[answer])]).is_empty());
        assert_eq!(fused.len(), 1);
        assert!(RankingPolicy::parse("ranking:\n  context_weights: [0.1, 0.1, 0.1, 0.1, 0.1]\n").is_err());
        assert!(RankingPolicy::parse("ranking:\n  context_weights: [-0.1]\n").is_err());
    }

    #[test]
    fn terms_are_safe_and_meaningful() {
        assert_eq!(keyword_terms("What does the user do for work?"), vec!["user", "work"]);
        assert_eq!(keyword_terms("\"OR\" NEAR(x) *:- café"), vec!["near", "x", "café"]);
        assert_eq!(keyword_terms("who is it"), vec!["who", "is", "it"]);
        assert!(keyword_terms("?!").is_empty());
    }

    #[test]
    fn common_terms_leave_the_match_over_budget() {
        let t = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let terms = t(&["likes", "kyoto", "tea", "morning"]);
        // within budget, or no budget: every term
        assert_eq!(match_terms(&terms, &[10, 1, 5, 20], 100), terms);
        assert_eq!(match_terms(&terms, &[9000, 10, 500, 40000], 0), terms);
        // over: rarest first while they fit, in the query's order
        assert_eq!(match_terms(&terms, &[9000, 10, 500, 40000], 5000), t(&["kyoto", "tea"]));
        // even the rarest over budget: it alone
        assert_eq!(match_terms(&terms, &[9000, 7000, 6000, 40000], 5000), t(&["tea"]));
        // a term nothing matches costs nothing
        assert_eq!(match_terms(&terms, &[9000, 0, 6000, 40000], 5000), t(&["kyoto", "tea"]));
    }

    #[test]
    fn policy_parses_and_adjusts() {
        let p = RankingPolicy::parse(
            "ranking:\n  recency_weight: 0.5\n  recency_half_life_days: 10\n  boosts:\n    - {key: pinned, value: true, factor: 2}\n",
        )
        .unwrap();
        let pinned: Map<String, Value> = serde_json::from_str(r#"{"pinned": true}"#).unwrap();
        assert!((p.adjustment(0.0, &Map::new()) - 1.0).abs() < 1e-6);
        assert!((p.adjustment(10.0, &Map::new()) - 0.75).abs() < 1e-6);
        assert!((p.adjustment(0.0, &pinned) - 2.0).abs() < 1e-6);
        assert!(RankingPolicy::parse("ranking:\n  vector_weight: -1\n").is_err());
        assert!(RankingPolicy::parse("ranking:\n  nope: 1\n").is_err());
        RankingPolicy::bundled();
    }
}
