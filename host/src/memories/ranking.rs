//! Hybrid ranking: a vector list (nearest embeddings) and a keyword list
//! (full-text search: BM25 in SQLite's FTS5, `ts_rank` in PostgreSQL) fused
//! by reciprocal rank fusion, with optional recency decay and metadata
//! boosts. The weights are policy (`policies/retrieval.yaml`).
//!
//! Why rank fusion: the two lists' scores live on different scales (a cosine
//! in 0..1, a BM25 score without bound), while ranks compare directly. A
//! memory's fused score is `Σ weight / (rrf_k + rank)` over the lists that
//! hold it.

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

/// `policies/retrieval.yaml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RankingPolicy {
    /// Weight of the vector list in the fusion.
    pub vector_weight: f32,
    /// Its weight when the vectors come from the hashing embedder, which is
    /// lexical (words and trigrams, like the keyword list but coarser). At 0
    /// the keywords decide and the vector list only adds what they missed.
    pub hashing_vector_weight: f32,
    /// Weight of the keyword list.
    pub keyword_weight: f32,
    /// The `k` of reciprocal rank fusion: larger flattens the rank curve.
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
            vector_weight: 1.0,
            hashing_vector_weight: 0.0,
            keyword_weight: 1.0,
            rrf_k: 60.0,
            min_candidates: 50,
            candidates_per_result: 5,
            keyword_match_budget: 5000,
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

/// Fuses the two lists (each best first), the vector list at `vector_weight`
/// (the policy's, for the embedder that made them). Ties keep the vector
/// list's order.
pub fn fuse(policy: &RankingPolicy, vector_weight: f32, vector: &[(Uuid, f32)], keyword: &[(Uuid, f32)]) -> Vec<Fused> {
    let mut by_id: HashMap<Uuid, Fused> = HashMap::with_capacity(vector.len() + keyword.len());
    let mut order = Vec::with_capacity(vector.len() + keyword.len());
    for (rank, (id, cosine)) in vector.iter().enumerate() {
        let f = by_id.entry(*id).or_insert_with(|| {
            order.push(*id);
            Fused { id: *id, fused: 0.0, semantic: None, keyword: None }
        });
        f.fused += vector_weight / (policy.rrf_k + rank as f32 + 1.0);
        f.semantic = Some(*cosine);
    }
    for (rank, (id, score)) in keyword.iter().enumerate() {
        let f = by_id.entry(*id).or_insert_with(|| {
            order.push(*id);
            Fused { id: *id, fused: 0.0, semantic: None, keyword: None }
        });
        f.fused += policy.keyword_weight / (policy.rrf_k + rank as f32 + 1.0);
        f.keyword = Some(*score);
    }
    let mut out: Vec<Fused> = order.into_iter().filter_map(|id| by_id.remove(&id)).collect();
    // Stable: equal fused scores keep first-seen order.
    out.sort_by(|a, b| b.fused.total_cmp(&a.fused));
    out
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
    fn fusion_rewards_agreement() {
        let [a, b, c] = [Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7()];
        let p = RankingPolicy::default();
        // a: first in vectors only; b: second in both; c: first in keywords only
        let fused = fuse(&p, 1.0, &[(a, 0.9), (b, 0.8)], &[(c, 12.0), (b, 9.0)]);
        assert_eq!(fused.iter().map(|f| f.id).collect::<Vec<_>>(), vec![b, a, c]);
        assert_eq!(fused[0].semantic, Some(0.8));
        assert_eq!(fused[0].keyword, Some(9.0));
        assert_eq!(fused[2].semantic, None);
        // keyword weight 0: the vector order alone
        let p = RankingPolicy { keyword_weight: 0.0, ..RankingPolicy::default() };
        let fused = fuse(&p, 1.0, &[(a, 0.9), (b, 0.8)], &[(c, 12.0), (b, 9.0)]);
        assert_eq!(fused.iter().map(|f| f.id).take(2).collect::<Vec<_>>(), vec![a, b]);
        // a low vector weight: keywords lead
        let fused = fuse(&RankingPolicy::default(), 0.25, &[(a, 0.9), (b, 0.8)], &[(c, 12.0), (b, 9.0)]);
        assert_eq!(fused.iter().map(|f| f.id).collect::<Vec<_>>(), vec![b, c, a]);
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
