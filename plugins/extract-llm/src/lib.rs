//! An extractor that asks the LLM (through the host's `llm` import, whose
//! provider, cost and limits are the operator's) which memory operations a
//! dialogue calls for, against the existing memories the host found most
//! similar (mem0's add: ADD / UPDATE / DELETE / NONE).
//!
//! The answer must be JSON: `{"operations": [{"op": "add", "text": …},
//! {"op": "update", "id": …, "text": …}, {"op": "delete", "id": …},
//! {"op": "none"}]}` (a bare list is accepted too). Anything else, an
//! unknown op, a missing field or an id that was not among the existing
//! memories fails the call with `malformed-llm-answer` and the reason:
//! nothing is applied from an answer that could not be understood.

use memhost_sdk::extractor::*;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Tokens the model may answer with.
    #[serde(default = "default_max_tokens")]
    max_tokens: u32,
    /// Extra instructions appended to the built-in ones (what to keep,
    /// in which language, …).
    #[serde(default)]
    instructions: String,
}

fn default_max_tokens() -> u32 {
    512
}

const INSTRUCTIONS: &str = "You maintain a user's long-term memory for an AI assistant (MEMORY OPERATIONS). \
Read the conversation and the existing memories. Return JSON only: {\"operations\": [...]} where each item is \
{\"op\": \"add\", \"text\": \"<a short self-contained fact about the user>\"}, \
{\"op\": \"update\", \"id\": \"<existing id>\", \"text\": \"<the corrected fact>\"} when the conversation changes an \
existing memory, {\"op\": \"delete\", \"id\": \"<existing id>\"} when it contradicts one outright, or \
{\"op\": \"none\"}. Never repeat a memory that already exists. Use only ids listed under Existing memories.";

#[derive(Deserialize)]
#[serde(untagged)]
enum Answer {
    Wrapped { operations: Vec<Op> },
    Bare(Vec<Op>),
}

#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum Op {
    Add { text: String },
    Update { id: String, text: String },
    Delete { id: String },
    None {},
}

fn malformed(why: impl std::fmt::Display, text: &str) -> PluginError {
    let shown: String = text.chars().take(200).collect();
    PluginError { code: "malformed-llm-answer".into(), message: format!("{why}; the answer began: {shown}"), retryable: true }
}

/// The JSON in an answer: models often wrap it in a Markdown code fence.
fn json_part(text: &str) -> &str {
    let t = text.trim();
    let t = t.strip_prefix("```json").or_else(|| t.strip_prefix("```")).unwrap_or(t);
    t.strip_suffix("```").unwrap_or(t).trim()
}

/// The operations in an answer, checked against the memories shown.
fn parse_answer(text: &str, existing: &[ExistingMemory], metadata: &str) -> Result<Vec<MemoryOp>, PluginError> {
    let answer: Answer = serde_json::from_str(json_part(text)).map_err(|e| malformed(format!("not the JSON asked for ({e})"), text))?;
    let ops = match answer {
        Answer::Wrapped { operations } | Answer::Bare(operations) => operations,
    };
    let known = |id: &str| existing.iter().any(|m| m.id == id);
    let mut out = Vec::new();
    for (i, op) in ops.into_iter().enumerate() {
        match op {
            Op::Add { text: fact } if !fact.trim().is_empty() => {
                out.push(MemoryOp::Add(NewMemory { text: fact.trim().to_string(), metadata: metadata.to_string() }))
            }
            Op::Update { id, text: fact } if known(&id) && !fact.trim().is_empty() => {
                out.push(MemoryOp::Update(MemoryUpdate { id, text: fact.trim().to_string() }))
            }
            Op::Delete { id } if known(&id) => out.push(MemoryOp::Delete(id)),
            Op::None {} => {}
            Op::Add { .. } | Op::Update { .. } => return Err(malformed(format!("operation {i} has an empty text"), text)),
            Op::Update { id, .. } | Op::Delete { id } => {
                return Err(malformed(format!("operation {i} names `{id}`, which is not an existing memory"), text));
            }
        }
    }
    Ok(out)
}

struct Llm;

impl Extractor for Llm {
    const NAME: &'static str = env!("CARGO_PKG_NAME");
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn config_schema() -> &'static str {
        r#"{"type": "object", "additionalProperties": false, "properties": {
            "max_tokens": {"type": "integer", "minimum": 16, "maximum": 8192},
            "instructions": {"type": "string", "maxLength": 4000}}}"#
    }

    fn extract(config: &str, input: ExtractInput) -> Result<Vec<MemoryOp>, PluginError> {
        let config: Config = if config.trim().is_empty() { parse_config("{}")? } else { parse_config(config)? };
        let mut prompt = String::from("Existing memories:\n");
        if input.existing.is_empty() {
            prompt.push_str("(none)\n");
        }
        for m in &input.existing {
            prompt.push_str(&format!("[{}] {}\n", m.id, m.text));
        }
        prompt.push_str("\nConversation:\n");
        for t in &input.turns {
            prompt.push_str(&format!("{}: {}\n", t.role, t.content));
        }
        let mut system = INSTRUCTIONS.to_string();
        if !config.instructions.is_empty() {
            system.push('\n');
            system.push_str(&config.instructions);
        }
        let request = CompletionRequest {
            messages: vec![Message { role: "system".into(), content: system }, Message { role: "user".into(), content: prompt }],
            max_tokens: Some(config.max_tokens),
            json: true,
        };
        let completion = llm_complete(&request).map_err(|e| PluginError {
            code: "llm-unavailable".into(),
            message: format!("the LLM call failed: {e}"),
            retryable: true,
        })?;
        parse_answer(&completion.text, &input.existing, &input.metadata)
    }
}

memhost_sdk::export_extractor!(Llm);
