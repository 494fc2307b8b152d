//! Answer providers: an extractive answerer that needs no model, and any
//! OpenAI-compatible `/chat/completions` endpoint.

use std::collections::HashSet;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::json;

use super::embedding::ProviderError;
use super::text;
use crate::config::{ProviderConfig, ProviderKind};

/// What an answerer returns.
#[derive(Debug, Clone)]
pub struct Answer {
    pub text: String,
    pub model: String,
    /// Tokens the model read and wrote, when the provider reports them.
    pub tokens: Option<u64>,
}

#[async_trait]
pub trait Answerer: Send + Sync {
    /// Answers `question` from `memories` (best first).
    async fn answer(&self, question: &str, memories: &[&str]) -> Result<Answer, ProviderError>;
    fn is_remote(&self) -> bool;
}

pub fn from_config(config: &ProviderConfig) -> anyhow::Result<Box<dyn Answerer>> {
    Ok(match config.provider {
        ProviderKind::Local => Box::new(ExtractiveAnswerer),
        ProviderKind::Openai => Box::new(OpenAiAnswerer::new(config)?),
    })
}

pub const NO_ANSWER: &str = "I don't have any memories that answer that.";

/// Picks the sentence of the retrieved memories that shares the most words
/// with the question (ties go to the better-ranked memory).
pub struct ExtractiveAnswerer;

#[async_trait]
impl Answerer for ExtractiveAnswerer {
    async fn answer(&self, question: &str, memories: &[&str]) -> Result<Answer, ProviderError> {
        let wanted: HashSet<String> = text::tokens(question).into_iter().collect();
        let mut best: Option<(f32, &str)> = None;
        for (rank, memory) in memories.iter().enumerate() {
            for sentence in text::sentences(memory) {
                let words: HashSet<String> = text::tokens(sentence).into_iter().collect();
                let overlap = words.intersection(&wanted).count();
                if overlap == 0 {
                    continue;
                }
                let score = overlap as f32 / (words.len() as f32).sqrt() - rank as f32 * 0.01;
                if best.is_none_or(|(b, _)| score > b) {
                    best = Some((score, sentence));
                }
            }
        }
        Ok(Answer {
            text: best.map_or_else(|| NO_ANSWER.to_string(), |(_, s)| s.to_string()),
            model: "memhost-extractive".into(),
            tokens: None,
        })
    }
    fn is_remote(&self) -> bool {
        false
    }
}

/// An OpenAI-compatible chat endpoint.
pub struct OpenAiAnswerer {
    client: reqwest::Client,
    url: String,
    model: String,
    api_key: Option<String>,
}

impl OpenAiAnswerer {
    pub fn new(config: &ProviderConfig) -> anyhow::Result<OpenAiAnswerer> {
        let base = config
            .base_url
            .as_deref()
            .unwrap_or("https://api.openai.com/v1");
        Ok(OpenAiAnswerer {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(config.timeout_secs))
                .build()?,
            url: format!("{}/chat/completions", base.trim_end_matches('/')),
            model: config.model.clone().unwrap_or_else(|| "gpt-4o-mini".into()),
            api_key: config.api_key.clone(),
        })
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
    total_tokens: u64,
}

#[async_trait]
impl Answerer for OpenAiAnswerer {
    async fn answer(&self, question: &str, memories: &[&str]) -> Result<Answer, ProviderError> {
        let context = memories
            .iter()
            .enumerate()
            .map(|(i, m)| format!("[{}] {}", i + 1, m))
            .collect::<Vec<_>>()
            .join("\n");
        let body = json!({
            "model": self.model,
            "temperature": 0,
            "messages": [
                {"role": "system", "content": "Answer the question using only the memories given. \
                    If they do not contain the answer, say so briefly."},
                {"role": "user", "content": format!("Memories:\n{context}\n\nQuestion: {question}")},
            ],
        });
        let mut request = self.client.post(&self.url).json(&body);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let response = request
            .send()
            .await
            .map_err(|e| ProviderError(format!("request failed: {e}")))?;
        let status = response.status();
        if !status.is_success() {
            return Err(ProviderError(format!(
                "{} answered HTTP {status}",
                self.url
            )));
        }
        let chat: ChatResponse = response
            .json()
            .await
            .map_err(|e| ProviderError(format!("unreadable response: {e}")))?;
        let text = chat
            .choices
            .into_iter()
            .next()
            .and_then(|c| c.message.content)
            .ok_or_else(|| ProviderError("response has no answer".into()))?;
        Ok(Answer {
            text: text.trim().to_string(),
            model: chat.model.unwrap_or_else(|| self.model.clone()),
            tokens: chat.usage.map(|u| u.total_tokens),
        })
    }
    fn is_remote(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn extractive_picks_the_matching_sentence() {
        let a = ExtractiveAnswerer
            .answer(
                "Where does Alice work?",
                &[
                    "Alice enjoys chess. Alice works at Acme Robotics in Berlin.",
                    "Bob works from home.",
                ],
            )
            .await
            .unwrap();
        assert_eq!(a.text, "Alice works at Acme Robotics in Berlin.");
        let none = ExtractiveAnswerer
            .answer("quantum chromodynamics?", &["Bob likes tea."])
            .await
            .unwrap();
        assert_eq!(none.text, NO_ANSWER);
    }
}
