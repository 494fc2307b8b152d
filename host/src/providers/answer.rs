//! Answer providers: an extractive answerer that needs no model, and any
//! OpenAI-compatible `/chat/completions` endpoint.

use std::collections::HashSet;

use async_trait::async_trait;

use super::completion::{Completer, CompletionMessage, CompletionRequest, OpenAiCompleter};
use super::{ProviderConfig, ProviderError, ProviderKind, text};

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
    /// `model`: the model to use instead of the configured one (routing).
    async fn answer(&self, question: &str, memories: &[&str], model: Option<&str>) -> Result<Answer, ProviderError>;
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
    async fn answer(&self, question: &str, memories: &[&str], _model: Option<&str>) -> Result<Answer, ProviderError> {
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

/// An OpenAI-compatible chat endpoint, through the completion provider.
pub struct OpenAiAnswerer {
    completer: OpenAiCompleter,
}

impl OpenAiAnswerer {
    pub fn new(config: &ProviderConfig) -> anyhow::Result<OpenAiAnswerer> {
        Ok(OpenAiAnswerer { completer: OpenAiCompleter::new(config, "gpt-4o-mini")? })
    }
}

#[async_trait]
impl Answerer for OpenAiAnswerer {
    async fn answer(&self, question: &str, memories: &[&str], model: Option<&str>) -> Result<Answer, ProviderError> {
        let context =
            memories.iter().enumerate().map(|(i, m)| format!("[{}] {}", i + 1, m)).collect::<Vec<_>>().join("\n");
        let message = |role: &str, content: String| CompletionMessage { role: role.into(), content };
        let request = CompletionRequest {
            messages: vec![
                message(
                    "system",
                    "Answer the question using only the memories given. \
                     If they do not contain the answer, say so briefly."
                        .into(),
                ),
                message("user", format!("Memories:\n{context}\n\nQuestion: {question}")),
            ],
            max_tokens: None,
            json: false,
            model: model.map(str::to_string),
        };
        let c = self.completer.complete(&request).await?;
        Ok(Answer {
            text: c.text.trim().to_string(),
            model: c.model,
            tokens: c.tokens_reported.then_some(c.input_tokens as u64 + c.output_tokens as u64),
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
                &["Alice enjoys chess. Alice works at Acme Robotics in Berlin.", "Bob works from home."],
                None,
            )
            .await
            .unwrap();
        assert_eq!(a.text, "Alice works at Acme Robotics in Berlin.");
        let none = ExtractiveAnswerer.answer("quantum chromodynamics?", &["Bob likes tea."], None).await.unwrap();
        assert_eq!(none.text, NO_ANSWER);
    }
}
