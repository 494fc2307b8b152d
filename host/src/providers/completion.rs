//! LLM completions: what extractor plugins get through the host's `llm`
//! import, and what the OpenAI-compatible answerer is built on. There is no
//! offline completion model: with `completions.provider = "local"` a plugin
//! asking for one is told none is configured.

use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::json;

use super::openai::OpenAiClient;
use super::{ProviderConfig, ProviderError, ProviderKind};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompletionMessage {
    pub role: String,
    pub content: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompletionRequest {
    pub messages: Vec<CompletionMessage>,
    pub max_tokens: Option<u32>,
    /// Ask the model for a JSON object.
    pub json: bool,
    /// The model to use instead of the configured one (model routing).
    pub model: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    pub text: String,
    pub model: String,
    pub input_tokens: u32,
    pub output_tokens: u32,
    /// Whether the server reported token counts (else they are 0).
    pub tokens_reported: bool,
}

#[async_trait]
pub trait Completer: Send + Sync {
    async fn complete(&self, request: &CompletionRequest) -> Result<Completion, ProviderError>;
}

/// The configured completion provider; `None` for `local` (there is none).
pub fn from_config(config: &ProviderConfig) -> anyhow::Result<Option<Arc<dyn Completer>>> {
    Ok(match config.provider {
        ProviderKind::Local => None,
        ProviderKind::Openai => Some(Arc::new(OpenAiCompleter::new(config, "gpt-4o-mini")?)),
    })
}

/// An OpenAI-compatible `/chat/completions` endpoint.
pub struct OpenAiCompleter {
    client: OpenAiClient,
}

impl OpenAiCompleter {
    pub fn new(config: &ProviderConfig, default_model: &str) -> anyhow::Result<OpenAiCompleter> {
        Ok(OpenAiCompleter { client: OpenAiClient::new(config, default_model)? })
    }
}

#[derive(Deserialize)]
struct ChatResponse {
    choices: Vec<ChatChoice>,
    #[serde(default)]
    usage: Option<ChatUsage>,
    #[serde(default)]
    model: Option<String>,
}

#[derive(Deserialize)]
struct ChatChoice {
    message: ChatMessage,
}

#[derive(Deserialize)]
struct ChatMessage {
    #[serde(default)]
    content: Option<String>,
}

#[derive(Deserialize)]
struct ChatUsage {
    #[serde(default)]
    prompt_tokens: u32,
    #[serde(default)]
    completion_tokens: u32,
}

#[async_trait]
impl Completer for OpenAiCompleter {
    async fn complete(&self, request: &CompletionRequest) -> Result<Completion, ProviderError> {
        let messages: Vec<_> = request.messages.iter().map(|m| json!({"role": m.role, "content": m.content})).collect();
        let model = request.model.as_deref().unwrap_or(&self.client.model);
        let mut body = json!({ "model": model, "temperature": 0, "messages": messages });
        if let Some(max) = request.max_tokens {
            body["max_tokens"] = json!(max);
        }
        if request.json {
            body["response_format"] = json!({"type": "json_object"});
        }
        let chat: ChatResponse = self.client.post("chat/completions", &body).await?;
        let text = chat
            .choices
            .into_iter()
            .next()
            .and_then(|c| c.message.content)
            .ok_or_else(|| ProviderError("the completion has no text".into()))?;
        Ok(Completion {
            text,
            model: chat.model.unwrap_or_else(|| model.to_string()),
            input_tokens: chat.usage.as_ref().map_or(0, |u| u.prompt_tokens),
            output_tokens: chat.usage.as_ref().map_or(0, |u| u.completion_tokens),
            tokens_reported: chat.usage.is_some(),
        })
    }
}
