//! Extraction: memories from dialogue. The extractor plugin active for the
//! org (per org, plan or globally; `extract-rules` by default) reads the
//! turns and the org's memories most similar to them, and answers
//! operations: add, update, delete. The host hands over only a prefiltered
//! few (an embedding/keyword search over the same entity scopes, seed 000
//! §4.3: the prefilter is what makes an LLM extractor affordable), applies
//! only operations on memories it handed over, and records each change in
//! the memory's history with the operation, the source turns and the
//! extractor's digest.
//!
//! This is the synchronous path (`POST /v1/memories` with `messages`);
//! batch jobs build on it.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::memories::filter::MemoryFilter;
use crate::memories::ranking::Mode;
use crate::memories::{Actor, Memory, MemoryError, MemoryScope, MemoryService, Scopes, SearchParams, is_applied_twice};
use crate::metering::RequestUsage;
use crate::plugins::extractor::{ExistingMemory, ExtractInput, MemoryOp, Turn};
use crate::plugins::runtime::HostUsage;
use crate::plugins::{PluginFailure, PluginService};
use crate::providers::prices;

/// Turns per request.
pub const MAX_TURNS: usize = 200;
/// Characters over all turns.
pub const MAX_DIALOGUE_CHARS: usize = 100_000;
/// Existing memories handed to the extractor (the prefilter's top k).
pub const PREFILTER_TOP_K: u32 = 10;

/// One dialogue turn, as callers send it.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Message {
    /// `user`, `assistant` or `system`.
    pub role: String,
    pub content: String,
    /// The caller's id of this turn, recorded in the history of what it
    /// changed (its position in `messages` when not given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// What the extractor that answered is.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExtractorInfo {
    /// The plugin's id: the sha256 digest of its `.wasm`.
    pub plugin_id: String,
    pub name: String,
    pub version: String,
    /// Whether the previous version answered because the active one failed.
    pub fallback: bool,
}

/// What became of one operation the extractor asked for.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum OpResult {
    Add {
        memory: Memory,
    },
    Update {
        memory: Memory,
        previous_text: String,
    },
    Delete {
        id: String,
        previous_text: String,
    },
    /// Not applied, and why (an id the extractor was not given, a bad text).
    Skipped {
        requested: String,
        id: Option<String>,
        reason: String,
    },
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ExtractionResult {
    pub results: Vec<OpResult>,
    /// How many existing memories the extractor was shown.
    pub existing_considered: usize,
    pub extractor: ExtractorInfo,
}

#[derive(Debug, thiserror::Error)]
pub enum ExtractionError {
    #[error("{message}")]
    Invalid { field: &'static str, message: String },
    #[error("no extractor plugin is active for this org")]
    NoExtractor,
    /// The extractor answered with an error on purpose (`retryable`: it
    /// blames something upstream, e.g. the LLM, not the input; `spent`:
    /// provider work was done, and metered, before it refused).
    #[error("the extractor refused: {code}: {message}")]
    Refused { code: String, message: String, retryable: bool, spent: bool },
    /// The sandbox stopped it (and no earlier version answered).
    #[error("the extractor failed: {0}")]
    Failed(String),
    #[error(transparent)]
    Memory(#[from] MemoryError),
}

fn invalid(field: &'static str, message: impl Into<String>) -> ExtractionError {
    ExtractionError::Invalid { field, message: message.into() }
}

/// Checks the dialogue before anything runs.
pub fn validate(messages: &[Message]) -> Result<(), ExtractionError> {
    if messages.is_empty() {
        return Err(invalid("messages", "give at least one message"));
    }
    if messages.len() > MAX_TURNS {
        return Err(invalid("messages", format!("at most {MAX_TURNS} messages per request")));
    }
    let mut chars = 0;
    for (i, m) in messages.iter().enumerate() {
        if !matches!(m.role.as_str(), "user" | "assistant" | "system") {
            return Err(invalid(
                "messages",
                format!("messages[{i}].role `{}`: expected user, assistant or system", m.role),
            ));
        }
        if m.content.trim().is_empty() {
            return Err(invalid("messages", format!("messages[{i}].content is empty")));
        }
        if m.id.as_ref().is_some_and(|id| id.is_empty() || id.len() > 128) {
            return Err(invalid("messages", format!("messages[{i}].id must be 1 to 128 characters")));
        }
        chars += m.content.chars().count();
    }
    if chars > MAX_DIALOGUE_CHARS {
        return Err(invalid("messages", format!("the messages hold {chars} characters; at most {MAX_DIALOGUE_CHARS}")));
    }
    Ok(())
}

/// Who is extracting: the memory scope, the org's routing facts, and
/// whether the key may delete (an extractor's deletes are skipped if not).
pub struct Caller<'a> {
    pub scope: &'a MemoryScope,
    pub org_id: &'a str,
    pub plan: &'a str,
    pub may_delete: bool,
    /// The extractor the request names (by plugin name), among those
    /// offered to the org; none: the org's active one.
    pub strategy: Option<&'a str>,
}

/// What an extractor decided for one dialogue, before any of it is applied:
/// a batch job stores it, so a retried item applies the same operations.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExtractionPlan {
    pub ops: Vec<MemoryOp>,
    /// The memories the extractor was shown (the only ones it may change).
    pub given: Vec<GivenMemory>,
    pub extractor: ExtractorInfo,
    /// The ids of the turns it read (the caller's, or their positions).
    pub turns: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GivenMemory {
    pub id: String,
    pub text: String,
}

/// Extracts memories from `messages` with the org's extractor and applies
/// what it asks for: [`plan`], then [`apply`].
#[allow(clippy::too_many_arguments)]
pub async fn extract(
    memories: &MemoryService,
    plugins: &PluginService,
    caller: Caller<'_>,
    messages: Vec<Message>,
    metadata: Option<Map<String, Value>>,
    scopes: Scopes,
    actor: &Actor,
    usage: &RequestUsage,
) -> Result<ExtractionResult, ExtractionError> {
    let plan = plan(memories, plugins, &caller, &messages, metadata.as_ref(), &scopes, usage).await?;
    apply(memories, &caller, &plan, metadata, scopes, actor, usage, None).await
}

/// Asks the org's extractor what to do with `messages`, showing it the
/// memories most like them (the prefilter). Changes nothing.
pub async fn plan(
    memories: &MemoryService,
    plugins: &PluginService,
    caller: &Caller<'_>,
    messages: &[Message],
    metadata: Option<&Map<String, Value>>,
    scopes: &Scopes,
    usage: &RequestUsage,
) -> Result<ExtractionPlan, ExtractionError> {
    validate(messages)?;
    let extractors = plugins.extractors();
    let active = extractors
        .choose(caller.org_id, caller.plan, caller.strategy)
        .map_err(|e| invalid("strategy", e))?
        .ok_or(ExtractionError::NoExtractor)?;

    // The prefilter: the memories most like what the user said, in the
    // same entity scopes.
    let said: String =
        messages.iter().filter(|m| m.role == "user").map(|m| m.content.as_str()).collect::<Vec<_>>().join("\n");
    let query: String = if said.trim().is_empty() { messages[0].content.clone() } else { said };
    let query: String = query.chars().take(10_000).collect();
    let pairs: Vec<(String, String)> = [
        ("user_id", &scopes.user_id),
        ("agent_id", &scopes.agent_id),
        ("app_id", &scopes.app_id),
        ("run_id", &scopes.run_id),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.clone().map(|v| (k.to_string(), v)))
    .collect();
    let filter = MemoryFilter::from_query(&pairs).map_err(|e| invalid("scopes", e.to_string()))?;
    let params = SearchParams {
        query,
        max_memories: PREFILTER_TOP_K,
        relevance_threshold: 0.0,
        filter,
        mode: Mode::Hybrid,
        rerank: false,
    };
    let existing = memories.search(caller.scope, &params, usage).await?;

    let input = ExtractInput {
        turns: messages.iter().map(|m| Turn { role: m.role.clone(), content: m.content.clone() }).collect(),
        existing: existing
            .iter()
            .map(|s| ExistingMemory {
                id: s.memory.id.to_string(),
                text: s.memory.text.clone(),
                metadata: Value::Object(s.memory.metadata.clone()).to_string(),
            })
            .collect(),
        metadata: Value::Object(metadata.cloned().unwrap_or_default()).to_string(),
    };
    let refused = |e: crate::plugins::types::GuestError, spent: bool| ExtractionError::Refused {
        code: e.code,
        message: e.message,
        retryable: e.retryable,
        spent,
    };
    let model = memories.route_model(crate::providers::routing::RouteFacts {
        task: "extract",
        chars: messages.iter().map(|m| m.content.chars().count()).sum(),
        turns: messages.len(),
        memories: input.existing.len(),
        plan: caller.plan,
        strategy: &active.plugin.record.name,
    });
    let answer = match extractors.extract(&active, &input, model).await {
        Ok(answer) => answer,
        Err(PluginFailure::Guest(e, spent)) => {
            // The LLM work before a refusal was done for this caller too.
            meter_host_usage(&spent, usage);
            return Err(refused(e, !spent.is_empty()));
        }
        Err(other) => return Err(ExtractionError::Failed(other.to_string())),
    };
    meter_host_usage(&answer.host_usage, usage);
    // The version that answered: the previous one when it stood in.
    let plugin = match (&active.previous, answer.fallback) {
        (Some(previous), true) => &previous.plugin.record,
        _ => &active.plugin.record,
    };
    Ok(ExtractionPlan {
        ops: answer.value,
        given: existing
            .iter()
            .map(|s| GivenMemory { id: s.memory.id.to_string(), text: s.memory.text.clone() })
            .collect(),
        extractor: ExtractorInfo {
            plugin_id: plugin.id.clone(),
            name: plugin.name.clone(),
            version: plugin.version.clone(),
            fallback: answer.fallback,
        },
        turns: messages.iter().enumerate().map(|(i, m)| m.id.clone().unwrap_or_else(|| i.to_string())).collect(),
    })
}

/// Applies a plan's operations. With `op_keys` (a batch job item's prefix)
/// each operation carries the key `{prefix}:{n}`: one already applied (by
/// an attempt that died before recording the item) is skipped, never
/// applied twice.
#[allow(clippy::too_many_arguments)]
pub async fn apply(
    memories: &MemoryService,
    caller: &Caller<'_>,
    plan: &ExtractionPlan,
    metadata: Option<Map<String, Value>>,
    scopes: Scopes,
    actor: &Actor,
    usage: &RequestUsage,
    op_keys: Option<&str>,
) -> Result<ExtractionResult, ExtractionError> {
    let key = |n: usize| op_keys.map(|prefix| format!("{prefix}:{n}"));
    let applied: Vec<String> = match op_keys {
        Some(_) => {
            let keys: Vec<String> = (0..plan.ops.len()).filter_map(key).collect();
            memories.applied_ops(caller.scope, &keys).await?
        }
        None => Vec::new(),
    };
    let extractor = &plan.extractor;
    // Each change's history names the extractor and the turns it read.
    let source = |op: &str| {
        json!({"op": op, "extractor": {"plugin_id": extractor.plugin_id, "name": extractor.name,
               "version": extractor.version}, "turns": plan.turns})
    };
    let given = |id: &str| plan.given.iter().find(|g| g.id == id);
    let mut results = Vec::new();
    for (n, op) in plan.ops.iter().cloned().enumerate() {
        let actor = match key(n) {
            Some(k) if applied.contains(&k) => {
                results.push(skipped(op.name(), op.id(), "applied by an earlier attempt of this job item"));
                continue;
            }
            Some(k) => actor.with_op_key(k),
            None => actor.clone(),
        };
        let result = match op {
            MemoryOp::Add { text, metadata: op_metadata } => {
                let mut meta = metadata.clone().unwrap_or_default();
                match serde_json::from_str::<Value>(if op_metadata.trim().is_empty() { "{}" } else { &op_metadata }) {
                    Ok(Value::Object(extra)) => meta.extend(extra),
                    _ => {
                        results.push(skipped("add", None, "its metadata is not a JSON object"));
                        continue;
                    }
                }
                let actor = actor.with_source(source("add"));
                match memories.create(caller.scope, text, Some(meta), scopes.clone(), &actor, usage).await {
                    Ok(memory) => OpResult::Add { memory },
                    Err(MemoryError::Invalid { message, .. }) => skipped("add", None, &message),
                    Err(MemoryError::Provider(e)) => skipped("add", None, &format!("embedding failed: {e}")),
                    Err(e) if is_applied_twice(&e) => skipped("add", None, "applied by an earlier attempt"),
                    Err(e) => return Err(e.into()),
                }
            }
            MemoryOp::Update { id, text } => match given(&id) {
                None => skipped("update", Some(id), "not one of the memories given to the extractor"),
                Some(old) => {
                    let actor = actor.with_source(source("update"));
                    let previous_text = old.text.clone();
                    match memories.update(caller.scope, &id, Some(text), None, &actor, usage).await {
                        Ok(memory) => OpResult::Update { memory, previous_text },
                        Err(MemoryError::Invalid { message, .. }) => skipped("update", Some(id), &message),
                        Err(MemoryError::Provider(e)) => skipped("update", Some(id), &format!("embedding failed: {e}")),
                        Err(MemoryError::NotFound(_)) => skipped("update", Some(id), "deleted meanwhile"),
                        Err(e) if is_applied_twice(&e) => skipped("update", Some(id), "applied by an earlier attempt"),
                        Err(e) => return Err(e.into()),
                    }
                }
            },
            MemoryOp::Delete { id } if !caller.may_delete => {
                skipped("delete", Some(id), "the API key lacks the `delete` scope")
            }
            MemoryOp::Delete { id } => match given(&id) {
                None => skipped("delete", Some(id), "not one of the memories given to the extractor"),
                Some(old) => {
                    let actor = actor.with_source(source("delete"));
                    let previous_text = old.text.clone();
                    match memories.delete(caller.scope, &id, &actor, usage).await {
                        Ok(()) => OpResult::Delete { id, previous_text },
                        Err(MemoryError::NotFound(_)) => skipped("delete", Some(id), "deleted meanwhile"),
                        Err(e) if is_applied_twice(&e) => skipped("delete", Some(id), "applied by an earlier attempt"),
                        Err(e) => return Err(e.into()),
                    }
                }
            },
        };
        results.push(result);
    }
    Ok(ExtractionResult { results, existing_considered: plan.given.len(), extractor: extractor.clone() })
}

/// The extractor's LLM and embedding calls count against the caller's org,
/// as the host's own would.
fn meter_host_usage(host: &HostUsage, usage: &RequestUsage) {
    for call in &host.model_calls {
        usage.add_model_call(&call.model, prices::cost(&call.model, call.input_tokens, call.output_tokens));
        usage.add_tokens(call.input_tokens);
        usage.add_output_tokens(call.output_tokens);
    }
    if host.embedded_texts > 0 {
        usage.add_embeddings(host.embedded_texts);
        usage.add_tokens(host.embedding_tokens);
        if let Some(model) = &host.embedding_model {
            usage.add_model_call(model, prices::cost(model, host.embedding_tokens, 0));
        }
    }
}

fn skipped(requested: &str, id: Option<String>, reason: &str) -> OpResult {
    OpResult::Skipped { requested: requested.to_string(), id, reason: reason.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(role: &str, content: &str) -> Message {
        Message { role: role.into(), content: content.into(), id: None }
    }

    #[test]
    fn dialogues_are_checked_before_anything_runs() {
        assert!(validate(&[m("user", "I love tea.")]).is_ok());
        let refused = |ms: &[Message]| validate(ms).unwrap_err().to_string();
        assert!(refused(&[]).contains("at least one"));
        assert!(refused(&[m("robot", "hi")]).contains("messages[0].role"));
        assert!(refused(&[m("user", "ok"), m("user", "  ")]).contains("messages[1].content"));
        assert!(refused(&vec![m("user", "x"); MAX_TURNS + 1]).contains("at most"));
        assert!(refused(&[m("user", &"a".repeat(MAX_DIALOGUE_CHARS + 1))]).contains("characters"));
    }
}
