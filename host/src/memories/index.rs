//! Exact vector search in process, for embedded mode.
//!
//! SQLite has no vector index, and reading 100k embeddings per query from the
//! file would cost far more than the 50 ms budget. So each (org, environment)
//! keeps its vectors in one contiguous array, loaded on first search and kept
//! current by the writes that go through this process (embedded mode has one
//! writer: this server). A scan of 100k × 384 floats takes a few milliseconds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};
use tokio::sync::RwLock;
use uuid::Uuid;

use super::MemoryScope;
use super::filter::MetadataFilter;
use crate::providers::embedding::{DIMENSIONS, dot};

/// The vectors of one org and environment.
#[derive(Default)]
pub struct OrgVectors {
    ids: Vec<Uuid>,
    vectors: Vec<f32>,
    metadata: Vec<Arc<Map<String, Value>>>,
    position: HashMap<Uuid, usize>,
}

impl OrgVectors {
    pub fn upsert(&mut self, id: Uuid, vector: &[f32], metadata: Arc<Map<String, Value>>) {
        debug_assert_eq!(vector.len(), DIMENSIONS);
        match self.position.get(&id) {
            Some(&i) => {
                self.vectors[i * DIMENSIONS..(i + 1) * DIMENSIONS].copy_from_slice(vector);
                self.metadata[i] = metadata;
            }
            None => {
                self.position.insert(id, self.ids.len());
                self.ids.push(id);
                self.vectors.extend_from_slice(vector);
                self.metadata.push(metadata);
            }
        }
    }

    /// Replaces the metadata of a memory whose text (and vector) did not change.
    pub fn set_metadata(&mut self, id: Uuid, metadata: Arc<Map<String, Value>>) {
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
            let (head, tail) = self.vectors.split_at_mut(last * DIMENSIONS);
            head[i * DIMENSIONS..(i + 1) * DIMENSIONS].copy_from_slice(&tail[..DIMENSIONS]);
            self.position.insert(moved, i);
        }
        self.ids.pop();
        self.metadata.pop();
        self.vectors.truncate(last * DIMENSIONS);
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// The `k` best (id, score) at or above `threshold`, best first.
    pub fn search(&self, query: &[f32], k: usize, threshold: f32, filter: &MetadataFilter) -> Vec<(Uuid, f32)> {
        let mut hits: Vec<(f32, u32)> = Vec::new();
        for (i, v) in self.vectors.chunks_exact(DIMENSIONS).enumerate() {
            let score = dot(query, v).clamp(0.0, 1.0);
            if score >= threshold && (filter.is_empty() || filter.matches(&self.metadata[i])) {
                hits.push((score, i as u32));
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
}

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

    fn meta(pairs: &[(&str, &str)]) -> Arc<Map<String, Value>> {
        Arc::new(pairs.iter().map(|(k, v)| (k.to_string(), Value::String(v.to_string()))).collect())
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
                meta(&[("user", if t.contains("Kyoto") { "bob" } else { "alice" })]),
            );
        }
        let q = LocalEmbedder::embed_one("tea");
        let hits = idx.search(&q, 2, 0.05, &MetadataFilter::default());
        assert_eq!(hits.len(), 2);
        assert!(hits.iter().all(|(id, _)| *id != ids[1]));
        let alice = MetadataFilter::from_pairs(vec![("user".into(), "alice".into())]);
        let hits = idx.search(&q, 5, 0.05, &alice);
        assert_eq!(hits.iter().map(|h| h.0).collect::<Vec<_>>(), vec![ids[0]]);

        idx.remove(ids[0]);
        assert_eq!(idx.len(), 2);
        let hits = idx.search(&q, 5, 0.05, &MetadataFilter::default());
        assert_eq!(hits.iter().map(|h| h.0).collect::<Vec<_>>(), vec![ids[2]]);
        // the moved row is still addressable
        idx.upsert(ids[2], &LocalEmbedder::embed_one("airport"), meta(&[]));
        assert_eq!(idx.len(), 2);
        let hits = idx.search(&LocalEmbedder::embed_one("airport"), 1, 0.0, &MetadataFilter::default());
        assert!(hits[0].1 > 0.99);
    }
}
