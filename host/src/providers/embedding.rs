//! Embedding providers: the local semantic model (`semantic.rs`), a
//! deterministic hashing embedder that needs no model download, and any
//! OpenAI-compatible `/embeddings` endpoint; and [`Embedders`], the one the
//! server uses now, switchable while it runs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use serde::Deserialize;
use serde_json::json;

use super::openai::OpenAiClient;
use super::{ProviderConfig, ProviderError, ProviderKind, text};

/// Every embedding in memhost has this many dimensions; the PostgreSQL
/// column is `vector(384)`. (384 also matches small sentence-transformer
/// models such as all-MiniLM-L6-v2, so one can stand behind the HTTP provider.)
pub const DIMENSIONS: usize = 384;

#[async_trait]
pub trait Embedder: Send + Sync {
    /// One unit-length vector of [`DIMENSIONS`] per input text.
    async fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, ProviderError>;
    /// The model name recorded with usage.
    fn model(&self) -> &str;
    /// True when a call leaves the process (counts as a model call).
    fn is_remote(&self) -> bool;
}

/// The model name of the hashing embedder; `[embeddings] model = "hash"`
/// selects it too.
pub const HASH_MODEL: &str = "memhost-local-hash-384";

/// What `[embeddings]` asks for.
pub enum Wanted {
    /// The hashing embedder.
    Hash,
    /// A local model by name (installed under the models directory, or to pull).
    Local(String),
    Remote(Box<dyn Embedder>),
}

pub fn wanted(config: &ProviderConfig) -> anyhow::Result<Wanted> {
    Ok(match config.provider {
        ProviderKind::Local => match config.model.as_deref() {
            Some(name) if name.eq_ignore_ascii_case("hash") || name == HASH_MODEL => Wanted::Hash,
            // A catalogue model under its canonical name, however it was
            // spelled (`all-MiniLM-L6-v2`, `sentence-transformers/…`): the
            // directory it is installed in and the name stored with vectors.
            Some(name) => Wanted::Local(super::models::catalogue(name).map_or(name, |m| m.name).to_string()),
            None => Wanted::Local(super::models::DEFAULT_MODEL.to_string()),
        },
        ProviderKind::Openai => Wanted::Remote(Box::new(OpenAiEmbedder::new(config)?)),
    })
}

/// The embedder new vectors are made with, switchable at run time (the local
/// model may arrive after start), and every embedder this process has had,
/// by model name, so vectors made before a switch can still be queried
/// until they are re-embedded.
pub struct Embedders {
    current: ArcSwap<Arc<dyn Embedder>>,
    /// The current model's name, for [`Embedder::model`] (which lends a `&str`).
    current_name: ArcSwap<&'static str>,
    known: Mutex<HashMap<String, Arc<dyn Embedder>>>,
}

/// Model names live as long as the process: a handful per run, so leaking
/// each once is the simple way to lend them out.
fn interned(name: &str) -> &'static str {
    static NAMES: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
    let mut names = NAMES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(n) = names.iter().find(|n| **n == name) {
        return n;
    }
    let leaked: &'static str = Box::leak(name.to_string().into_boxed_str());
    names.push(leaked);
    leaked
}

impl Embedders {
    pub fn new(initial: Arc<dyn Embedder>) -> Embedders {
        let mut known: HashMap<String, Arc<dyn Embedder>> = HashMap::new();
        known.insert(HASH_MODEL.to_string(), Arc::new(LocalEmbedder));
        known.insert(initial.model().to_string(), initial.clone());
        Embedders {
            current_name: ArcSwap::from_pointee(interned(initial.model())),
            current: ArcSwap::from_pointee(initial),
            known: Mutex::new(known),
        }
    }

    pub fn current(&self) -> Arc<dyn Embedder> {
        self.current.load().as_ref().clone()
    }

    /// New vectors come from `embedder` from now on.
    pub fn switch_to(&self, embedder: Arc<dyn Embedder>) {
        self.known.lock().unwrap_or_else(|e| e.into_inner()).insert(embedder.model().to_string(), embedder.clone());
        self.current_name.store(Arc::new(interned(embedder.model())));
        self.current.store(Arc::new(embedder));
    }

    /// The embedder that made vectors of `model`, if this process has it.
    pub fn for_model(&self, model: &str) -> Option<Arc<dyn Embedder>> {
        self.known.lock().unwrap_or_else(|e| e.into_inner()).get(model).cloned()
    }
}

/// Plugins and anything else that just wants "the embedder" get the current one.
#[async_trait]
impl Embedder for Embedders {
    async fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, ProviderError> {
        self.current().embed(texts).await
    }
    fn model(&self) -> &str {
        **self.current_name.load()
    }
    fn is_remote(&self) -> bool {
        self.current().is_remote()
    }
}

/// Feature hashing of words, word pairs and character trigrams into a signed
/// vector: deterministic, offline, and good at lexical overlap (including
/// plurals and typos via the trigrams). Not a semantic model: synonyms do not
/// meet unless they share characters.
pub struct LocalEmbedder;

impl LocalEmbedder {
    pub fn embed_one(text_in: &str) -> Vec<f32> {
        let mut v = vec![0f32; DIMENSIONS];
        let words = text::tokens(text_in);
        for w in &words {
            add_feature(&mut v, "w", w, 1.0);
            let padded: Vec<char> = format!("#{w}#").chars().collect();
            let grams = padded.len().saturating_sub(2).max(1);
            for g in padded.windows(3) {
                let gram: String = g.iter().collect();
                add_feature(&mut v, "c", &gram, 0.6 / grams as f32);
            }
        }
        for pair in words.windows(2) {
            add_feature(&mut v, "b", &format!("{} {}", pair[0], pair[1]), 0.5);
        }
        if words.is_empty() {
            // Only stop words or symbols: fall back to the raw characters so the
            // vector is never zero (a zero vector has no cosine).
            for c in text_in.chars().filter(|c| !c.is_whitespace()) {
                add_feature(&mut v, "r", &c.to_string(), 1.0);
            }
        }
        normalize(&mut v);
        v
    }
}

#[async_trait]
impl Embedder for LocalEmbedder {
    async fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, ProviderError> {
        Ok(texts.iter().map(|t| LocalEmbedder::embed_one(t)).collect())
    }
    fn model(&self) -> &str {
        "memhost-local-hash-384"
    }
    fn is_remote(&self) -> bool {
        false
    }
}

fn add_feature(v: &mut [f32], kind: &str, feature: &str, weight: f32) {
    let h = fnv1a(kind.as_bytes(), feature.as_bytes());
    let index = (h % DIMENSIONS as u64) as usize;
    let sign = if h >> 63 == 0 { 1.0 } else { -1.0 };
    v[index] += sign * weight;
}

fn fnv1a(a: &[u8], b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in a.iter().chain([0u8].iter()).chain(b) {
        h ^= byte as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // Final avalanche so the top bit (the sign) is well mixed.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

/// Scales to unit length; a zero vector gets a fixed unit direction.
pub fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 && norm.is_finite() {
        v.iter_mut().for_each(|x| *x /= norm);
    } else {
        v.iter_mut().for_each(|x| *x = 0.0);
        v[0] = 1.0;
    }
}

/// An OpenAI-compatible embeddings endpoint (OpenAI, vLLM, Ollama, …).
pub struct OpenAiEmbedder {
    client: OpenAiClient,
}

impl OpenAiEmbedder {
    pub fn new(config: &ProviderConfig) -> anyhow::Result<OpenAiEmbedder> {
        Ok(OpenAiEmbedder { client: OpenAiClient::new(config, "text-embedding-3-small")? })
    }
}

#[derive(Deserialize)]
struct EmbeddingResponse {
    data: Vec<EmbeddingItem>,
}

#[derive(Deserialize)]
struct EmbeddingItem {
    embedding: Vec<f32>,
    #[serde(default)]
    index: Option<usize>,
}

#[async_trait]
impl Embedder for OpenAiEmbedder {
    async fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, ProviderError> {
        let body: EmbeddingResponse = self
            .client
            .post("embeddings", &json!({ "model": self.client.model, "input": texts, "dimensions": DIMENSIONS }))
            .await?;
        if body.data.len() != texts.len() {
            return Err(ProviderError(format!("asked for {} embeddings, got {}", texts.len(), body.data.len())));
        }
        let mut items = body.data;
        items.sort_by_key(|i| i.index.unwrap_or(0));
        items
            .into_iter()
            .map(|item| {
                let mut v = item.embedding;
                if v.len() != DIMENSIONS {
                    return Err(ProviderError(format!(
                        "model {} returned {} dimensions; memhost stores {DIMENSIONS}",
                        self.client.model,
                        v.len()
                    )));
                }
                normalize(&mut v);
                Ok(v)
            })
            .collect()
    }
    fn model(&self) -> &str {
        &self.client.model
    }
    fn is_remote(&self) -> bool {
        true
    }
}

/// Dot product; on unit vectors, the cosine similarity.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Four accumulators let the compiler vectorise without fast-math.
    let mut acc = [0f32; 4];
    let chunks = a.len() / 4 * 4;
    for i in (0..chunks).step_by(4) {
        acc[0] += a[i] * b[i];
        acc[1] += a[i + 1] * b[i + 1];
        acc[2] += a[i + 2] * b[i + 2];
        acc[3] += a[i + 3] * b[i + 3];
    }
    let mut sum = acc[0] + acc[1] + acc[2] + acc[3];
    for i in chunks..a.len() {
        sum += a[i] * b[i];
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_unit_vectors() {
        let a = LocalEmbedder::embed_one("The user loves hiking in the Alps");
        let b = LocalEmbedder::embed_one("The user loves hiking in the Alps");
        assert_eq!(a, b);
        assert!((dot(&a, &a) - 1.0).abs() < 1e-5);
        let zero = LocalEmbedder::embed_one("   ");
        assert!((dot(&zero, &zero) - 1.0).abs() < 1e-5);
    }

    #[test]
    fn local_model_names_are_read_as_users_spell_them() {
        let local = |model: &str| match wanted(&ProviderConfig { model: Some(model.into()), ..Default::default() }) {
            Ok(Wanted::Local(name)) => name,
            Ok(Wanted::Hash) => "hash".into(),
            _ => "other".into(),
        };
        assert_eq!(local("all-MiniLM-L6-v2"), "all-minilm-l6-v2");
        assert_eq!(local("sentence-transformers/all-MiniLM-L6-v2"), "all-minilm-l6-v2");
        assert_eq!(local("HASH"), "hash");
        assert_eq!(local(HASH_MODEL), "hash");
        // not in the catalogue: as given (an imported model's directory name)
        assert_eq!(local("my-Model"), "my-Model");
    }

    #[test]
    fn related_text_scores_higher() {
        let q = LocalEmbedder::embed_one("what does the user like to drink?");
        let tea = LocalEmbedder::embed_one("User likes drinking green tea in the morning");
        let car = LocalEmbedder::embed_one("The car was parked at the airport garage");
        assert!(dot(&q, &tea) > dot(&q, &car) + 0.2, "{} vs {}", dot(&q, &tea), dot(&q, &car));
    }
}
