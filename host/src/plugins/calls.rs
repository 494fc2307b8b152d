//! Plugin calls as JSON: the input and output shapes of each kind's main
//! function, used by the self-check at upload, by `POST /admin/plugins/…/run`
//! and by `memhost plugin run --input fixture.json`. Converting here keeps
//! the WIT types (and JSON-in-a-string fields) out of the API.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::alert_channel::{Alert, Severity};
use super::extractor::{ExistingMemory, ExtractInput, MemoryOp, Turn};
use super::host_calls::HostCalls;
use super::kind::{Limits, PluginKind};
use super::pricing::{
    AddonSubscription, AppliedPromotion, CreditBalance, Invoice, PlanSpan, RatingInput as PricingInput, UsageQuantity,
};
use super::rate_limit::{LimiterAlgorithm, LimiterRule, LimiterScope, RequestClass};
use super::runtime::{CallError, CallStats, Runtime};
use super::types::GuestError;
use super::wit::Prepared;

/// Input of a pricing `rate` call.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateInput {
    pub plan: String,
    #[serde(default = "empty_object")]
    pub overrides: Value,
    #[serde(default = "default_start")]
    pub period_start: String,
    #[serde(default = "default_end")]
    pub period_end: String,
    /// Quantity per metric for the period.
    #[serde(default)]
    pub usage: BTreeMap<String, u64>,
    /// The plan definition the org is held to (grandfathering, A/B test).
    #[serde(default)]
    pub plan_snapshot: Option<Value>,
    /// The org's pricing region (geographic pricing).
    #[serde(default)]
    pub region: Option<String>,
    /// The plans that held the period, when it changed within it.
    #[serde(default)]
    pub plan_spans: Vec<PlanSpan>,
    #[serde(default)]
    pub addons: Vec<AddonSubscription>,
    /// Soonest expiry first.
    #[serde(default)]
    pub credits: Vec<CreditBalance>,
    #[serde(default)]
    pub promotions: Vec<AppliedPromotion>,
}

/// Input of a pricing `limits` call.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsInput {
    pub plan: String,
    #[serde(default)]
    pub plan_snapshot: Option<Value>,
    #[serde(default = "empty_object")]
    pub overrides: Value,
}

/// Input of a rate-limit `rules` call: the request's class.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RulesInput {
    pub plan: String,
    #[serde(default = "yes")]
    pub live: bool,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default = "empty_object")]
    pub overrides: Value,
    #[serde(default = "get")]
    pub method: String,
    #[serde(default = "route")]
    pub route: String,
}

/// Input of an alert-channel `deliver` call.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeliverInput {
    #[serde(default = "alert_id")]
    pub id: String,
    #[serde(default)]
    pub org_id: String,
    pub rule: String,
    /// `info`, `warning` or `critical`.
    #[serde(default = "warning")]
    pub severity: String,
    pub title: String,
    #[serde(default)]
    pub message: String,
    #[serde(default = "empty_object")]
    pub data: Value,
    #[serde(default = "default_start")]
    pub occurred_at: String,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TurnInput {
    pub role: String,
    pub content: String,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExistingMemoryInput {
    pub id: String,
    pub text: String,
    #[serde(default = "empty_object")]
    pub metadata: Value,
}

/// Input of an extractor `extract` call.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtractCallInput {
    pub turns: Vec<TurnInput>,
    #[serde(default)]
    pub existing: Vec<ExistingMemoryInput>,
    #[serde(default = "empty_object")]
    pub metadata: Value,
}

/// One call of a plugin's main function, as JSON. `function` picks it:
/// `rate` or `limits` (pricing), `rules` (rate-limit), `deliver`
/// (alert-channel), `extract` (extractor).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(tag = "function", rename_all = "kebab-case", deny_unknown_fields)]
pub enum CallInput {
    Rate(RateInput),
    Limits(LimitsInput),
    Rules(RulesInput),
    Deliver(DeliverInput),
    Extract(ExtractCallInput),
    /// `describe`, which every kind exports.
    Describe,
}

impl CallInput {
    pub fn kind(&self) -> Option<PluginKind> {
        match self {
            CallInput::Rate(_) | CallInput::Limits(_) => Some(PluginKind::Pricing),
            CallInput::Rules(_) => Some(PluginKind::RateLimit),
            CallInput::Deliver(_) => Some(PluginKind::AlertChannel),
            CallInput::Extract(_) => Some(PluginKind::Extractor),
            CallInput::Describe => None,
        }
    }

    pub fn function(&self) -> &'static str {
        match self {
            CallInput::Rate(_) => "rate",
            CallInput::Limits(_) => "limits",
            CallInput::Rules(_) => "rules",
            CallInput::Deliver(_) => "deliver",
            CallInput::Extract(_) => "extract",
            CallInput::Describe => "describe",
        }
    }

    /// The fixture the self-check runs for a kind.
    pub fn fixture(kind: PluginKind) -> CallInput {
        serde_json::from_value(fixture_json(kind)).expect("fixtures are valid call inputs")
    }
}

/// The self-check fixture of a kind as JSON (also what `memhost plugin new`
/// writes as the scaffold's `fixture.json`).
pub fn fixture_json(kind: PluginKind) -> Value {
    match kind {
        PluginKind::Pricing => json!({
            "function": "rate", "plan": "starter",
            "usage": {"api_calls": 12_000, "tokens_processed": 800_000, "memories_stored": 900, "embeddings_generated": 400}
        }),
        PluginKind::RateLimit => json!({
            "function": "rules", "plan": "starter", "scopes": ["read", "write"],
            "method": "GET", "route": "/v1/memories/{id}"
        }),
        PluginKind::AlertChannel => json!({
            "function": "deliver", "rule": "usage-80-percent", "title": "80% of the monthly API calls used",
            "message": "org self-check has used 8 000 of 10 000 API calls", "data": {"metric": "api_calls", "used": 8000}
        }),
        PluginKind::Extractor => json!({
            "function": "extract",
            "turns": [
                {"role": "user", "content": "Hi! I love green tea in the morning. My name is Ada."},
                {"role": "assistant", "content": "Nice to meet you, Ada."}
            ],
            "existing": [{"id": "m1", "text": "Ada drinks coffee."}]
        }),
    }
}

/// A call's result as JSON: the plugin's answer (`ok`) or its deliberate
/// error (`error`), with what the call cost.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CallReport {
    pub function: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ok: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub error: Option<PluginErrorJson>,
    pub stats: CallStats,
}

impl CallReport {
    /// The answer alone: `{"ok": …}` or `{"error": …}`.
    pub fn answer(&self) -> Value {
        match (&self.ok, &self.error) {
            (Some(ok), _) => json!({ "ok": ok }),
            (_, Some(err)) => json!({ "error": err }),
            _ => Value::Null,
        }
    }
}

/// A golden fixture: a call, what it must answer, and optionally the
/// config to run it with (`memhost plugin test`, and the same files through
/// the server in the tests).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fixture {
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub config: Option<Value>,
    pub input: CallInput,
    /// `{"ok": …}` or `{"error": {"code": …}}`; only the fields it names are
    /// compared (arrays must match in length and order).
    pub expect: Value,
}

impl Fixture {
    pub fn read(path: &std::path::Path) -> anyhow::Result<Fixture> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    /// Where `answer` differs from what the fixture expects, if anywhere.
    pub fn mismatch(&self, answer: &Value) -> Option<String> {
        subset_mismatch(&self.expect, answer, "")
    }
}

/// The first place `actual` lacks or differs from what `expected` names.
pub fn subset_mismatch(expected: &Value, actual: &Value, path: &str) -> Option<String> {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => e.iter().find_map(|(k, v)| {
            let at = format!("{path}.{k}");
            match a.get(k) {
                Some(x) => subset_mismatch(v, x, &at),
                None => Some(format!("{at}: missing (expected {v})")),
            }
        }),
        (Value::Array(e), Value::Array(a)) if e.len() == a.len() => {
            e.iter().zip(a).enumerate().find_map(|(i, (v, x))| subset_mismatch(v, x, &format!("{path}[{i}]")))
        }
        (Value::Array(e), Value::Array(a)) => {
            Some(format!("{path}: {} items, expected {} (got {})", a.len(), e.len(), actual))
        }
        (e, a) if e == a => None,
        (e, a) => Some(format!("{path}: got {a}, expected {e}")),
    }
}

/// `actual` cut down to the shape `expected` names (objects keep only the
/// keys it names), so a diff of the two shows only what the fixture checks.
/// An object sharing none of the expected keys (an `error` where `ok` was
/// expected) is kept whole: that difference is the one to see.
pub fn project(expected: &Value, actual: &Value) -> Value {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) if e.keys().any(|k| a.contains_key(k)) => {
            Value::Object(e.iter().filter_map(|(k, v)| a.get(k).map(|x| (k.clone(), project(v, x)))).collect())
        }
        (Value::Array(e), Value::Array(a)) => Value::Array(
            a.iter().enumerate().map(|(i, x)| e.get(i).map_or_else(|| x.clone(), |v| project(v, x))).collect(),
        ),
        (_, a) => a.clone(),
    }
}

/// A unified-style line diff of two texts (`-` expected, `+` actual, two
/// lines of context), from their longest common subsequence of lines.
pub fn line_diff(expected: &str, actual: &str) -> String {
    let (e, a): (Vec<&str>, Vec<&str>) = (expected.lines().collect(), actual.lines().collect());
    // lcs[i][j]: common lines of e[i..] and a[j..].
    let mut lcs = vec![vec![0usize; a.len() + 1]; e.len() + 1];
    for i in (0..e.len()).rev() {
        for j in (0..a.len()).rev() {
            lcs[i][j] = if e[i] == a[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    let mut ops: Vec<(char, &str)> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < e.len() || j < a.len() {
        if i < e.len() && j < a.len() && e[i] == a[j] {
            ops.push((' ', e[i]));
            (i, j) = (i + 1, j + 1);
        } else if i < e.len() && (j == a.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            ops.push(('-', e[i]));
            i += 1;
        } else {
            ops.push(('+', a[j]));
            j += 1;
        }
    }
    const CONTEXT: usize = 2;
    let near_change =
        |k: usize| ops[k.saturating_sub(CONTEXT)..(k + CONTEXT + 1).min(ops.len())].iter().any(|(op, _)| *op != ' ');
    let mut out = String::new();
    let mut skipped = false;
    for (k, (op, line)) in ops.iter().enumerate() {
        if *op == ' ' && !near_change(k) {
            skipped = true;
            continue;
        }
        if skipped {
            out.push_str("  …\n");
            skipped = false;
        }
        out.push_str(&format!("{op} {line}\n"));
    }
    out
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PluginErrorJson {
    pub code: String,
    pub message: String,
    pub retryable: bool,
}

impl From<GuestError> for PluginErrorJson {
    fn from(e: GuestError) -> Self {
        PluginErrorJson { code: e.code, message: e.message, retryable: e.retryable }
    }
}

/// Why a JSON call could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("function `{function}` belongs to {expected} plugins; this plugin is a {actual} plugin")]
    WrongKind { function: &'static str, expected: PluginKind, actual: PluginKind },
    #[error("{0}")]
    BadInput(String),
    #[error(transparent)]
    Call(#[from] CallError),
}

/// Runs one JSON call against a prepared plugin.
pub async fn run(
    runtime: &Runtime,
    prepared: &Prepared,
    limits: &Limits,
    digest: &Arc<str>,
    config: &str,
    host: HostCalls,
    input: CallInput,
) -> Result<CallReport, RunError> {
    if let Some(expected) = input.kind()
        && expected != prepared.kind()
    {
        return Err(RunError::WrongKind { function: input.function(), expected, actual: prepared.kind() });
    }
    let function = input.function().to_string();
    let (answer, stats) = match input {
        CallInput::Describe => {
            let out = runtime.describe(prepared, limits, digest).await?;
            (Ok(serde_json::to_value(&out.value).unwrap_or(Value::Null)), out.stats)
        }
        CallInput::Rate(i) => {
            let input = PricingInput {
                plan: i.plan,
                plan_snapshot: i.plan_snapshot.map(|v| v.to_string()),
                overrides: i.overrides.to_string(),
                region: i.region,
                period_start: i.period_start,
                period_end: i.period_end,
                usage: i.usage.into_iter().map(|(metric, quantity)| UsageQuantity { metric, quantity }).collect(),
                plan_spans: i.plan_spans,
                addons: i.addons,
                credits: i.credits,
                promotions: i.promotions,
            };
            let out = runtime.rate(prepared, limits, digest, config, &input).await?;
            (out.value.map(|inv| invoice_json(&inv)), out.stats)
        }
        CallInput::Limits(i) => {
            let snapshot = i.plan_snapshot.map(|v| v.to_string());
            let overrides = i.overrides.to_string();
            let out =
                runtime.plan_limits(prepared, limits, digest, config, &i.plan, snapshot.as_deref(), &overrides).await?;
            (out.value.map(|l| serde_json::to_value(l).unwrap_or(Value::Null)), out.stats)
        }
        CallInput::Rules(i) => {
            let mut scopes = i.scopes;
            scopes.sort();
            let class = RequestClass {
                plan: i.plan,
                live: i.live,
                scopes,
                overrides: i.overrides.to_string(),
                method: i.method,
                route: i.route,
            };
            let out = runtime.rules(prepared, limits, digest, config, &class).await?;
            (out.value.map(|rules| Value::Array(rules.iter().map(rule_json).collect())), out.stats)
        }
        CallInput::Deliver(i) => {
            let severity = Severity::parse(&i.severity).ok_or_else(|| {
                RunError::BadInput(format!("severity `{}`: expected info, warning or critical", i.severity))
            })?;
            let alert = Alert {
                id: i.id,
                org_id: i.org_id,
                rule: i.rule,
                severity,
                title: i.title,
                message: i.message,
                data: i.data.to_string(),
                occurred_at: i.occurred_at,
            };
            let out = runtime.deliver(prepared, limits, digest, host, config, &alert).await?;
            (out.value.map(|()| json!({"delivered": true})), out.stats)
        }
        CallInput::Extract(i) => {
            let input = ExtractInput {
                turns: i.turns.into_iter().map(|t| Turn { role: t.role, content: t.content }).collect(),
                existing: i
                    .existing
                    .into_iter()
                    .map(|m| ExistingMemory { id: m.id, text: m.text, metadata: m.metadata.to_string() })
                    .collect(),
                metadata: i.metadata.to_string(),
            };
            let out = runtime.extract(prepared, limits, digest, host, config, &input).await?;
            (out.value.map(|ops| Value::Array(ops.iter().map(memory_op_json).collect())), out.stats)
        }
    };
    Ok(match answer {
        Ok(ok) => CallReport { function, ok: Some(ok), error: None, stats },
        Err(e) => CallReport { function, ok: None, error: Some(e.into()), stats },
    })
}

pub fn invoice_json(inv: &Invoice) -> Value {
    json!({
        "currency": inv.currency,
        "lines": inv.lines.iter().map(|l| json!({
            "kind": l.kind, "metric": l.metric, "reference": l.reference, "description": l.description,
            "quantity": l.quantity, "amount_micros": l.amount
        })).collect::<Vec<_>>(),
        "total_micros": inv.total,
    })
}

pub(crate) fn rule_json(r: &LimiterRule) -> Value {
    let scope = match r.scope {
        LimiterScope::Global => "global",
        LimiterScope::Org => "org",
        LimiterScope::Key => "key",
        LimiterScope::ClientIp => "client-ip",
    };
    let algorithm = match r.algorithm {
        LimiterAlgorithm::SlidingWindow => "sliding-window",
        LimiterAlgorithm::FixedWindow => "fixed-window",
        LimiterAlgorithm::TokenBucket => "token-bucket",
        LimiterAlgorithm::Concurrency => "concurrency",
    };
    json!({"name": r.name, "scope": scope, "algorithm": algorithm, "limit": r.limit,
           "window_ms": r.window_ms, "burst": r.burst, "cost": r.cost})
}

pub(crate) fn memory_op_json(op: &MemoryOp) -> Value {
    let meta = |s: &str| serde_json::from_str::<Value>(s).unwrap_or(Value::Null);
    match op {
        MemoryOp::Add { text, metadata } => json!({"op": "add", "text": text, "metadata": meta(metadata)}),
        MemoryOp::Update { id, text } => json!({"op": "update", "id": id, "text": text}),
        MemoryOp::Delete { id } => json!({"op": "delete", "id": id}),
    }
}

/// Checks an answer for what the kind promises; pricing: the total is the
/// sum of the lines (never a wrong invoice).
pub fn check_answer(report: &CallReport) -> Result<(), String> {
    if report.function == "rate"
        && let Some(ok) = &report.ok
    {
        let total = ok["total_micros"].as_i64().unwrap_or(0);
        let sum: i64 =
            ok["lines"].as_array().map(|ls| ls.iter().filter_map(|l| l["amount_micros"].as_i64()).sum()).unwrap_or(0);
        if total != sum {
            return Err(format!("invoice total {total} is not the sum of its lines ({sum})"));
        }
    }
    Ok(())
}

fn empty_object() -> Value {
    json!({})
}
fn default_start() -> String {
    "2026-01-01T00:00:00Z".into()
}
fn default_end() -> String {
    "2026-02-01T00:00:00Z".into()
}
fn yes() -> bool {
    true
}
fn get() -> String {
    "GET".into()
}
fn route() -> String {
    "/v1/memories".into()
}
fn alert_id() -> String {
    "alert_self_check".into()
}
fn warning() -> String {
    "warning".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projection_keeps_what_the_fixture_names() {
        let expected = json!({"ok": {"total_micros": 5, "lines": [{"amount_micros": 5}]}});
        let actual = json!({"ok": {"total_micros": 6, "currency": "USD", "lines": [{"amount_micros": 6, "kind": "base"}, {"amount_micros": 0}]}});
        assert_eq!(
            project(&expected, &actual),
            json!({"ok": {"total_micros": 6, "lines": [{"amount_micros": 6}, {"amount_micros": 0}]}})
        );
        // An error where an answer was expected is shown whole.
        let error = json!({"error": {"code": "network", "message": "refused"}});
        assert_eq!(project(&expected, &error), error);
    }

    #[test]
    fn line_diff_marks_changes_with_context() {
        let e = "a\nb\nc\nd\ne\nf\ng\n";
        let a = "a\nb\nc\nD\ne\nf\ng\nh\n";
        let diff = line_diff(e, a);
        assert!(diff.contains("- d\n+ D\n"), "{diff}");
        assert!(diff.contains("+ h\n"), "{diff}");
        assert!(diff.starts_with("  …\n  b\n  c\n"), "lines far from a change are elided: {diff}");
        assert_eq!(line_diff("same\n", "same\n"), "");
    }
}
