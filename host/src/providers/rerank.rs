//! Rerankers: given a query and candidate texts, a relevance score for each
//! (a cross-encoder reads query and text together, which a vector compare
//! cannot). `[rerank] provider = "openai"` calls the `/rerank` endpoint that
//! Jina, Cohere-compatible gateways, vLLM and Hugging Face TEI serve:
//! `{model, query, documents}` ─▶ `{results: [{index, relevance_score}]}`.
//! `local` (the default) means none is configured.

use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::json;

use super::openai::OpenAiClient;
use super::{ProviderConfig, ProviderError, ProviderKind};

#[async_trait]
pub trait Reranker: Send + Sync {
    /// One score per document, in the documents' order; higher is more relevant.
    async fn rerank(&self, query: &str, documents: &[&str]) -> Result<Vec<f32>, ProviderError>;
    fn model(&self) -> &str;
}

pub fn from_config(config: &ProviderConfig) -> anyhow::Result<Option<Arc<dyn Reranker>>> {
    Ok(match config.provider {
        ProviderKind::Local => None,
        ProviderKind::Openai => Some(Arc::new(HttpReranker { client: OpenAiClient::new(config, "rerank")? })),
    })
}

pub struct HttpReranker {
    client: OpenAiClient,
}

#[derive(Deserialize)]
struct RerankResponse {
    results: Vec<RerankItem>,
}

#[derive(Deserialize)]
struct RerankItem {
    index: usize,
    relevance_score: f32,
}

#[async_trait]
impl Reranker for HttpReranker {
    async fn rerank(&self, query: &str, documents: &[&str]) -> Result<Vec<f32>, ProviderError> {
        let body: RerankResponse = self
            .client
            .post("rerank", &json!({"model": self.client.model, "query": query, "documents": documents}))
            .await?;
        // Documents the server leaves out rank last.
        let mut scores = vec![f32::NEG_INFINITY; documents.len()];
        for item in body.results {
            let slot = scores.get_mut(item.index).ok_or_else(|| {
                ProviderError(format!("reranker returned index {} of {}", item.index, documents.len()))
            })?;
            if !item.relevance_score.is_finite() {
                return Err(ProviderError("reranker returned a score that is not a number".into()));
            }
            *slot = item.relevance_score;
        }
        Ok(scores)
    }
    fn model(&self) -> &str {
        &self.client.model
    }
}
