//! A sentence encoder for the BERT family of sentence-transformers models
//! (all-MiniLM-L6-v2, bge-small-en-v1.5, …), in plain Rust, with no native
//! runtime and nothing downloaded at build time.
//!
//! A model directory in the Hugging Face hub layout holds `config.json`
//! (the BERT shape), `tokenizer.json` (a WordPiece vocabulary with the BERT
//! normalizer) and `model.safetensors` (the weights); `sentence_bert_config.json`
//! and `1_Pooling/config.json`, when present, give the sequence length and
//! the pooling. [`SentenceEncoder::load`] reads them; [`SentenceEncoder::encode`]
//! turns texts into unit-length vectors, so cosine similarity is a dot product.
//!
//! The numbers match the reference implementation (sentence-transformers on
//! PyTorch) to about 1e-5: see the tests, which compare against vectors
//! computed by an independent NumPy forward pass.

mod bert;
mod tokenizer;
mod weights;

use std::path::Path;

pub use bert::BertConfig;
pub use tokenizer::WordPiece;

/// Why a model directory could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{0}")]
    Format(String),
}

pub(crate) fn format_err(message: impl Into<String>) -> ModelError {
    ModelError::Format(message.into())
}

/// How token vectors become one sentence vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// Average over the tokens (sentence-transformers' default, MiniLM).
    Mean,
    /// The `[CLS]` token's vector (bge models).
    Cls,
}

/// A loaded model: tokenizer, weights, pooling.
pub struct SentenceEncoder {
    tokenizer: WordPiece,
    model: bert::Bert,
    pooling: Pooling,
    max_tokens: usize,
}

/// Texts per forward pass are grouped so that no pass holds more than this
/// many tokens: bounds memory whatever the caller sends.
const TOKENS_PER_PASS: usize = 4096;

impl SentenceEncoder {
    /// Loads a model directory (see the crate documentation for its files).
    pub fn load(dir: &Path) -> Result<SentenceEncoder, ModelError> {
        let config: BertConfig = read_json(&dir.join("config.json"))?;
        let tokenizer = WordPiece::from_file(&dir.join("tokenizer.json"))?;
        let weights = weights::Weights::read(&dir.join("model.safetensors"))?;
        let model = bert::Bert::new(config, weights)?;
        if tokenizer.vocab_size() > model.config().vocab_size {
            return Err(format_err(format!(
                "tokenizer has {} tokens, the model only {}",
                tokenizer.vocab_size(),
                model.config().vocab_size
            )));
        }
        let mut max_tokens = model.config().max_position_embeddings;
        if let Ok(st) = read_json::<SentenceBertConfig>(&dir.join("sentence_bert_config.json")) {
            max_tokens = max_tokens.min(st.max_seq_length);
        }
        let pooling = match read_json::<PoolingConfig>(&dir.join("1_Pooling").join("config.json")) {
            Ok(p) if p.pooling_mode_cls_token && !p.pooling_mode_mean_tokens => Pooling::Cls,
            _ => Pooling::Mean,
        };
        Ok(SentenceEncoder { tokenizer, model, pooling, max_tokens })
    }

    /// Length of every vector this model returns.
    pub fn dimensions(&self) -> usize {
        self.model.config().hidden_size
    }

    /// Longest input, in tokens (including `[CLS]` and `[SEP]`); longer texts
    /// are truncated, as sentence-transformers does.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    pub fn pooling(&self) -> Pooling {
        self.pooling
    }

    /// Token ids of `text` as the model sees it: `[CLS] … [SEP]`, truncated.
    pub fn token_ids(&self, text: &str) -> Vec<u32> {
        self.tokenizer.encode(text, self.max_tokens)
    }

    /// One unit-length vector per text. CPU-bound and single-threaded: call
    /// it from a blocking thread.
    pub fn encode(&self, texts: &[&str]) -> Vec<Vec<f32>> {
        let ids: Vec<Vec<u32>> = texts.iter().map(|t| self.token_ids(t)).collect();
        let mut out = Vec::with_capacity(texts.len());
        let mut start = 0;
        while start < ids.len() {
            let mut end = start;
            let mut tokens = 0;
            while end < ids.len() && (end == start || tokens + ids[end].len() <= TOKENS_PER_PASS) {
                tokens += ids[end].len();
                end += 1;
            }
            out.extend(self.model.sentence_vectors(&ids[start..end], self.pooling));
            start = end;
        }
        out
    }
}

#[derive(serde::Deserialize)]
struct SentenceBertConfig {
    max_seq_length: usize,
}

#[derive(serde::Deserialize)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default = "yes")]
    pooling_mode_mean_tokens: bool,
}

fn yes() -> bool {
    true
}

pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, ModelError> {
    std::fs::read(path).map_err(|source| ModelError::Io { path: path.display().to_string(), source })
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ModelError> {
    serde_json::from_slice(&read_file(path)?).map_err(|e| format_err(format!("{}: {e}", path.display())))
}
