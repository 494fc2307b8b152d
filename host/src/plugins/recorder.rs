//! The last calls of each plugin as the service made them, kept in memory so
//! an author can turn real traffic into fixtures (`GET
//! /admin/plugins/{id}/calls`, `memhost plugin fixtures pull ID`). Each is a
//! fixture already: the call's input in `plugin run`'s JSON, the answer the
//! plugin gave as `expect`, and the activation's config where the kind's
//! configs hold no secrets.
//!
//! Redacted per kind before it is kept:
//! - pricing and rate-limit inputs carry no identity (plan, usage, request
//!   class), so they are kept whole, with the activation's config;
//! - alert channels: the org id is replaced, e-mail addresses and long
//!   numbers in the text are masked, and the config (webhook URLs carry
//!   tokens) is left out;
//! - extractors: the dialogue and memory texts are end users' words, kept
//!   only when the operator turns `plugins.record_extractor_text` on (and
//!   then masked like alerts); otherwise each is replaced by its length,
//!   metadata and error messages (which may quote them) are dropped, and
//!   `expect` names only the operations, not their texts. Their config is
//!   left out.
//!
//! Calls the previous version answered (the active one failed or was
//! skipped) are not kept: what the active version would answer is unknown.
//!
//! Per instance and lost on restart: a debugging aid, not an audit trail.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::alert_channel::Alert;
use super::calls::{invoice_json, memory_op_json, rule_json};
use super::extractor::{ExtractInput, MemoryOp};
use super::pricing::{Invoice, MetricLimit, RatingInput};
use super::rate_limit::{LimiterRule, RequestClass};
use super::{Active, Answer, PluginFailure};

/// A call whose input is larger than this (as JSON) is not kept.
const MAX_RECORDED_INPUT_BYTES: usize = 64 * 1024;

/// One recorded call, in the fixture format `memhost plugin test` reads.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RecordedCall {
    /// When the call was made (RFC 3339).
    pub at: String,
    /// The activation that routed the call, and its target.
    pub activation_id: String,
    pub target: String,
    /// Whether the previous version answered because this one failed.
    pub fallback: bool,
    /// The call, as `memhost plugin run --input` takes it.
    #[schema(value_type = Object)]
    pub input: Value,
    /// The activation's config; absent for kinds whose configs may hold secrets.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub config: Option<Value>,
    /// The answer: `{"ok": …}`, `{"error": {"code": …}}`, or
    /// `{"error": {"trap": true}}` when the sandbox stopped the call.
    #[schema(value_type = Object)]
    pub expect: Value,
    /// What was masked or left out, for the author reading the fixture.
    pub redacted: Vec<String>,
}

/// Ring buffers of recent calls, one per plugin digest.
pub struct CallRecorder {
    per_plugin: usize,
    extractor_text: bool,
    calls: Mutex<HashMap<String, VecDeque<RecordedCall>>>,
}

impl CallRecorder {
    /// Keeps `per_plugin` calls per plugin (0: records nothing).
    pub fn new(per_plugin: usize, extractor_text: bool) -> CallRecorder {
        CallRecorder { per_plugin, extractor_text, calls: Mutex::new(HashMap::new()) }
    }

    /// The recorded calls of a plugin, newest first.
    pub fn recent(&self, plugin_id: &str) -> Vec<RecordedCall> {
        let calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        calls.get(plugin_id).map(|ring| ring.iter().rev().cloned().collect()).unwrap_or_default()
    }

    pub fn rate(&self, active: &Active, input: &RatingInput, result: &Result<Invoice, PluginFailure>) {
        self.keep(active, || {
            let usage: serde_json::Map<String, Value> =
                input.usage.iter().map(|u| (u.metric.clone(), json!(u.quantity))).collect();
            let call = json!({
                "function": "rate", "plan": input.plan, "overrides": object(&input.overrides),
                "period_start": input.period_start, "period_end": input.period_end, "usage": usage,
                "plan_snapshot": input.plan_snapshot.as_deref().map(object), "region": input.region,
                "plan_spans": input.plan_spans, "addons": input.addons, "credits": input.credits,
                "promotions": input.promotions,
            });
            let expect = match result {
                Ok(invoice) => json!({"ok": invoice_json(invoice)}),
                Err(failure) => failure_json(failure),
            };
            (call, expect, false, Vec::new(), true)
        });
    }

    pub fn limits(
        &self,
        active: &Active,
        plan: &str,
        plan_snapshot: Option<&str>,
        overrides: &str,
        result: &Result<Answer<Vec<MetricLimit>>, PluginFailure>,
    ) {
        self.keep(active, || {
            let call = json!({"function": "limits", "plan": plan, "plan_snapshot": plan_snapshot.map(object),
                              "overrides": object(overrides)});
            let (expect, fallback) = answer_json(result, |limits| json!(limits));
            (call, expect, fallback, Vec::new(), true)
        });
    }

    pub fn rules(
        &self,
        active: &Active,
        class: &RequestClass,
        result: &Result<Answer<Vec<LimiterRule>>, PluginFailure>,
    ) {
        self.keep(active, || {
            let call = json!({"function": "rules", "plan": class.plan, "live": class.live, "scopes": class.scopes,
                              "overrides": object(&class.overrides), "method": class.method, "route": class.route});
            let (expect, fallback) = answer_json(result, |rules| Value::Array(rules.iter().map(rule_json).collect()));
            (call, expect, fallback, Vec::new(), true)
        });
    }

    pub fn deliver(&self, active: &Active, alert: &Alert, result: &Result<Answer<()>, PluginFailure>) {
        self.keep(active, || {
            let call = json!({
                "function": "deliver", "id": alert.id, "org_id": "org_redacted", "rule": alert.rule,
                "severity": alert.severity, "title": mask(&alert.title), "message": mask(&alert.message),
                "data": object(&alert.data), "occurred_at": alert.occurred_at,
            });
            let (expect, fallback) = answer_json(result, |()| json!({"delivered": true}));
            let redacted =
                vec!["org_id".into(), "e-mail addresses and long numbers in title and message".into(), "config".into()];
            (call, expect, fallback, redacted, false)
        });
    }

    pub fn extract(
        &self,
        active: &Active,
        input: &ExtractInput,
        result: &Result<Answer<Vec<MemoryOp>>, PluginFailure>,
    ) {
        let keep_text = self.extractor_text;
        self.keep(active, || {
            let text = |t: &str| if keep_text { mask(t) } else { format!("[redacted: {} chars]", t.chars().count()) };
            let meta = |m: &str| if keep_text { object(m) } else { json!({}) };
            let call = json!({
                "function": "extract",
                "turns": input.turns.iter().map(|t| json!({"role": t.role, "content": text(&t.content)})).collect::<Vec<_>>(),
                "existing": input.existing.iter()
                    .map(|m| json!({"id": m.id, "text": text(&m.text), "metadata": meta(&m.metadata)}))
                    .collect::<Vec<_>>(),
                "metadata": meta(&input.metadata),
            });
            let (mut expect, fallback) =
                answer_json(result, |ops| Value::Array(ops.iter().map(memory_op_json).collect()));
            let mut redacted = vec!["config".to_string()];
            if keep_text {
                redacted.push("e-mail addresses and long numbers in texts".into());
            } else {
                // The answer quotes the texts, and an error may too: keep
                // only the operations (and ids) and the error's code.
                if let Some(Value::Array(ops)) = expect.get_mut("ok") {
                    for op in ops.iter_mut().filter_map(Value::as_object_mut) {
                        op.remove("text");
                        op.remove("metadata");
                    }
                }
                if let Some(Value::Object(error)) = expect.get_mut("error") {
                    error.remove("message");
                }
                redacted.push("texts, metadata and error messages (plugins.record_extractor_text is off)".into());
            }
            (call, expect, fallback, redacted, false)
        });
    }

    /// Builds the record only when recording is on, and keeps it unless its
    /// input is over the size cap.
    fn keep(&self, active: &Active, build: impl FnOnce() -> (Value, Value, bool, Vec<String>, bool)) {
        if self.per_plugin == 0 {
            return;
        }
        let (input, expect, fallback, redacted, with_config) = build();
        if fallback || input.to_string().len() > MAX_RECORDED_INPUT_BYTES {
            return;
        }
        let call = RecordedCall {
            at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            activation_id: active.activation.id.clone(),
            target: active.activation.target.clone(),
            fallback,
            input,
            config: with_config.then(|| active.activation.config.clone()),
            expect,
            redacted,
        };
        let mut calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        let ring = calls.entry(active.plugin.record.id.clone()).or_default();
        if ring.len() == self.per_plugin {
            ring.pop_front();
        }
        ring.push_back(call);
    }
}

/// A JSON-in-a-string field as JSON (the text itself if it is not JSON).
fn object(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

fn failure_json(failure: &PluginFailure) -> Value {
    match failure {
        PluginFailure::Guest(e, _) => {
            json!({"error": {"code": e.code, "message": e.message, "retryable": e.retryable}})
        }
        PluginFailure::Call(e) => json!({"error": {"code": e.code(), "trap": true}}),
        PluginFailure::BadAnswer(why) => json!({"error": {"code": "bad_answer", "message": why}}),
    }
}

/// The answer as a fixture's `expect`; when the previous version answered,
/// this plugin's call was stopped by the sandbox.
fn answer_json<T>(result: &Result<Answer<T>, PluginFailure>, ok: impl FnOnce(&T) -> Value) -> (Value, bool) {
    match result {
        Ok(Answer { fallback: true, .. }) => (json!({"error": {"trap": true}}), true),
        Ok(Answer { value, .. }) => (json!({"ok": ok(value)}), false),
        Err(failure) => (failure_json(failure), false),
    }
}

/// Masks e-mail addresses, and numbers of seven or more digits (phone,
/// card and account numbers) even when written in groups (`4111 1111 …`,
/// `+44 7700-900123`), in free text.
pub fn mask(text: &str) -> String {
    let numeric = |w: &str| {
        w.chars().any(|c| c.is_ascii_digit()) && w.chars().all(|c| c.is_ascii_digit() || "+-()./,".contains(c))
    };
    let words: Vec<&str> = text.split(' ').collect();
    let mut out: Vec<String> = Vec::with_capacity(words.len());
    let mut i = 0;
    while i < words.len() {
        let word = words[i];
        if word.find('@').is_some_and(|at| at > 0 && word[at + 1..].contains('.')) {
            out.push("[email]".into());
            i += 1;
            continue;
        }
        // A group of adjacent numeric words is one number.
        let end = (i..words.len()).find(|&j| !numeric(words[j])).unwrap_or(words.len());
        let digits: usize = words[i..end].iter().map(|w| w.chars().filter(char::is_ascii_digit).count()).sum();
        if end > i && digits >= 7 {
            out.push("[number]".into());
            i = end;
        } else if word.chars().filter(char::is_ascii_digit).count() >= 7 {
            out.push("[number]".into());
            i += 1;
        } else {
            out.push(word.to_string());
            i += 1;
        }
    }
    out.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_addresses_and_long_numbers() {
        assert_eq!(
            mask("mail ada@example.org or call +44 7700-900123, order 12345"),
            "mail [email] or call [number] order 12345"
        );
        assert_eq!(mask("card 4111 1111 1111 1111 ok"), "card [number] ok");
        assert_eq!(mask("acct NL91ABNA0417164300"), "acct [number]");
        assert_eq!(mask("8 000 of 10 000 API calls"), "8 000 of 10 000 API calls");
    }
}
