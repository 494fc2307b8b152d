//! Model routing (seed 000 §4.5, seed 002: simple requests to cheaper
//! models): a Rhai expression in `policies/model-routing.yaml` picks the
//! LLM model for each extraction and each answer from facts of the request.
//!
//! | name | value |
//! | --- | --- |
//! | `task` | `"extract"` or `"answer"` |
//! | `chars` | characters of input (the dialogue; the question and the memories) |
//! | `turns` | dialogue turns (0 for an answer) |
//! | `memories` | memories handed to the model (existing ones for an extraction) |
//! | `plan` | the org's plan |
//! | `strategy` | the extractor plugin's name (`""` for an answer) |
//!
//! It answers a model name, or `""` for the provider's configured model.
//! The model chosen is the one the usage event records. Compiled and tried
//! on sample facts at start (a bad rule stops the start, naming the file);
//! a rule that fails when run answers the configured model.

use rhai::{AST, Engine, Scope};
use serde::Deserialize;

const MAX_OPERATIONS: u64 = 1000;

/// What a routing rule decides on.
#[derive(Debug, Clone, Copy)]
pub struct RouteFacts<'a> {
    pub task: &'a str,
    pub chars: usize,
    pub turns: usize,
    pub memories: usize,
    pub plan: &'a str,
    pub strategy: &'a str,
}

pub struct ModelRouter {
    engine: Engine,
    rule: Option<AST>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    routing: Routing,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Routing {
    #[serde(default)]
    rule: String,
}

fn engine() -> Engine {
    let mut engine = Engine::new();
    engine
        .set_strict_variables(true)
        .set_max_operations(MAX_OPERATIONS)
        .set_max_expr_depths(32, 32)
        .set_max_string_size(1024)
        .set_max_call_levels(4);
    engine.disable_symbol("eval");
    engine.on_print(|_| {});
    engine.on_debug(|_, _, _| {});
    engine
}

fn scope(f: RouteFacts<'_>) -> Scope<'static> {
    let mut scope = Scope::new();
    scope.push("task", f.task.to_string());
    scope.push("chars", f.chars as i64);
    scope.push("turns", f.turns as i64);
    scope.push("memories", f.memories as i64);
    scope.push("plan", f.plan.to_string());
    scope.push("strategy", f.strategy.to_string());
    scope
}

impl ModelRouter {
    /// No rule: every call uses the configured model.
    pub fn none() -> ModelRouter {
        ModelRouter { engine: engine(), rule: None }
    }

    pub fn bundled() -> ModelRouter {
        ModelRouter::parse(include_str!("../../../policies/model-routing.yaml")).unwrap_or_else(|_| ModelRouter::none())
    }

    /// Parses the policy file and tries the rule on sample facts of both
    /// tasks, so a rule that does not compile, names an unknown variable or
    /// answers something other than a string is refused with the reason.
    pub fn parse(yaml: &str) -> Result<ModelRouter, String> {
        let file: PolicyFile = serde_yaml_ng::from_str(yaml).map_err(|e| e.to_string())?;
        let source = file.routing.rule.trim();
        if source.is_empty() {
            return Ok(ModelRouter::none());
        }
        let engine = engine();
        let sample = RouteFacts { task: "extract", chars: 0, turns: 0, memories: 0, plan: "", strategy: "" };
        let ast =
            engine.compile_expression_with_scope(&scope(sample), source).map_err(|e| format!("routing.rule: {e}"))?;
        for task in ["extract", "answer"] {
            let facts = RouteFacts { task, chars: 100, turns: 2, memories: 3, plan: "free", strategy: "extract-rules" };
            engine
                .eval_ast_with_scope::<String>(&mut scope(facts), &ast)
                .map_err(|e| format!("routing.rule (tried on task {task}): {e}"))?;
        }
        Ok(ModelRouter { engine, rule: Some(ast) })
    }

    /// The model for a call, or `None` for the configured one.
    pub fn pick(&self, facts: RouteFacts<'_>) -> Option<String> {
        let ast = self.rule.as_ref()?;
        match self.engine.eval_ast_with_scope::<String>(&mut scope(facts), ast) {
            Ok(model) if model.trim().is_empty() => None,
            Ok(model) => Some(model.trim().chars().take(128).collect()),
            Err(e) => {
                tracing::warn!(error = %e, "model routing rule failed; the configured model serves");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(task: &str, chars: usize) -> RouteFacts<'_> {
        RouteFacts { task, chars, turns: 1, memories: 0, plan: "free", strategy: "extract-llm" }
    }

    #[test]
    fn rules_pick_models_or_are_refused_with_the_reason() {
        let r = ModelRouter::parse(
            "routing:\n  rule: 'if task == \"extract\" && chars < 500 { \"small\" } else { \"\" }'\n",
        )
        .unwrap();
        assert_eq!(r.pick(facts("extract", 100)).as_deref(), Some("small"));
        assert_eq!(r.pick(facts("extract", 900)), None);
        assert_eq!(r.pick(facts("answer", 100)), None);
        assert!(ModelRouter::parse("routing:\n  rule: ''\n").unwrap().pick(facts("answer", 1)).is_none());
        let e = ModelRouter::parse("routing:\n  rule: 'lenght < 3'\n").err().unwrap();
        assert!(e.contains("lenght"), "{e}");
        let e = ModelRouter::parse("routing:\n  rule: 'chars < 3'\n").err().unwrap();
        assert!(e.contains("routing.rule"), "not a string: {e}");
        assert!(ModelRouter::parse("routing:\n  rul: x\n").is_err());
    }
}
