//! Providers of model calls: embeddings, answers and LLM completions. Each
//! has a built-in provider that works offline where one can (a hashing
//! embedder, an extractive answerer) and an OpenAI-compatible HTTP provider
//! (OpenAI, vLLM, Ollama, any compatible server). Memories use the embedder
//! and answerer; the plugin host hands embeddings and completions to
//! extractor plugins.

pub mod answer;
pub mod completion;
pub mod embedding;
mod openai;
pub mod text;

use serde::{Deserialize, Serialize};

pub use answer::{Answer, Answerer};
pub use completion::{Completer, Completion, CompletionMessage, CompletionRequest};
pub use embedding::{DIMENSIONS, Embedder};

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
    pub embedder: std::sync::Arc<dyn Embedder>,
    pub answerer: std::sync::Arc<dyn Answerer>,
    /// None when no completion model is configured.
    pub completer: Option<std::sync::Arc<dyn Completer>>,
}

impl Providers {
    /// The built-in providers only (offline; no completion model).
    pub fn offline() -> Providers {
        let local = ProviderConfig::default();
        Providers::from_config(&local, &local, &local).expect("the built-in providers need no configuration")
    }

    pub fn from_config(
        embeddings: &ProviderConfig,
        answers: &ProviderConfig,
        completions: &ProviderConfig,
    ) -> anyhow::Result<Providers> {
        Ok(Providers {
            embedder: embedding::from_config(embeddings)?.into(),
            answerer: answer::from_config(answers)?.into(),
            completer: completion::from_config(completions)?,
        })
    }
}
