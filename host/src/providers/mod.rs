//! Providers of model calls: embeddings, answers and LLM completions. Each
//! has a built-in provider that works offline where one can (a hashing
//! embedder, an extractive answerer) and an OpenAI-compatible HTTP provider
//! (OpenAI, vLLM, Ollama, any compatible server). Memories use the embedder
//! and answerer; the plugin host hands embeddings and completions to
//! extractor plugins.

pub mod answer;
pub mod completion;
pub mod embedding;
pub mod models;
mod openai;
pub mod prices;
pub mod rerank;
pub mod routing;
pub mod semantic;
pub mod text;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use answer::{Answer, Answerer};
pub use completion::{Completer, Completion, CompletionMessage, CompletionRequest};
pub use embedding::{DIMENSIONS, Embedder, Embedders};

/// A provider call that failed; the message is safe to show (never the key).
#[derive(Debug, thiserror::Error)]
#[error("model provider: {0}")]
pub struct ProviderError(pub String);

/// Which provider serves embeddings, answers or completions
/// (`[embeddings]`, `[answers]`, `[completions]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProviderConfig {
    /// `local` (built in, offline; for completions: none) or `openai` (any
    /// OpenAI-compatible server).
    pub provider: ProviderKind,
    pub base_url: Option<String>,
    pub model: Option<String>,
    /// Never logged.
    pub api_key: Option<String>,
    /// Request timeout in seconds for HTTP providers.
    pub timeout_secs: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Local,
    Openai,
}

impl Default for ProviderConfig {
    fn default() -> Self {
        Self { provider: ProviderKind::Local, base_url: None, model: None, api_key: None, timeout_secs: 30 }
    }
}

impl ProviderConfig {
    pub fn validate(&self, section: &str) -> anyhow::Result<()> {
        if self.provider == ProviderKind::Openai && self.base_url.is_none() {
            anyhow::bail!("[{section}] provider `openai` needs base_url (e.g. https://api.openai.com/v1)");
        }
        Ok(())
    }
}

/// The providers a server runs with, built once from configuration.
#[derive(Clone)]
pub struct Providers {
    /// The current embedder, switchable while the server runs.
    pub embedders: Arc<Embedders>,
    /// The same, as "an embedder" (plugins' `embeddings` import).
    pub embedder: Arc<dyn Embedder>,
    pub answerer: Arc<dyn Answerer>,
    /// None when no completion model is configured.
    pub completer: Option<Arc<dyn Completer>>,
    /// None when no reranker is configured.
    pub reranker: Option<Arc<dyn rerank::Reranker>>,
    /// The local model `[embeddings]` asks for when it is not installed
    /// (the hashing embedder serves until it is).
    pub missing_model: Option<String>,
}

impl Providers {
    /// The built-in providers only (offline, hashing embedder; no completion model).
    pub fn offline() -> Providers {
        let local = ProviderConfig::default();
        Providers::from_config(&local, &local, &local, None).expect("the built-in providers need no configuration")
    }

    /// Adds the reranker of `[rerank]`.
    pub fn with_reranker(mut self, config: &ProviderConfig) -> anyhow::Result<Providers> {
        self.reranker = rerank::from_config(config)?;
        Ok(self)
    }

    /// `models_dir`: where local models are installed (None: none are).
    pub fn from_config(
        embeddings: &ProviderConfig,
        answers: &ProviderConfig,
        completions: &ProviderConfig,
        models_dir: Option<&std::path::Path>,
    ) -> anyhow::Result<Providers> {
        let mut missing_model = None;
        let embedder: Arc<dyn Embedder> = match embedding::wanted(embeddings)? {
            embedding::Wanted::Hash => Arc::new(embedding::LocalEmbedder),
            embedding::Wanted::Remote(e) => e.into(),
            embedding::Wanted::Local(name) => match models_dir.and_then(|d| models::installed(d, &name)) {
                Some(dir) => Arc::new(
                    semantic::SemanticEmbedder::load(&name, &dir)
                        .map_err(|e| anyhow::anyhow!("loading embedding model {name} from {}: {e:#}", dir.display()))?,
                ),
                None => {
                    missing_model = Some(name);
                    Arc::new(embedding::LocalEmbedder)
                }
            },
        };
        let embedders = Arc::new(Embedders::new(embedder));
        Ok(Providers {
            embedder: embedders.clone(),
            embedders,
            answerer: answer::from_config(answers)?.into(),
            completer: completion::from_config(completions)?,
            reranker: None,
            missing_model,
        })
    }
}
