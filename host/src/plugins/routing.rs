//! Canary routing rules: a Rhai expression, given with a `canary`
//! activation, that decides per call whether the canary version serves it.
//! It sees who is calling and nothing else:
//!
//! | name | value |
//! | --- | --- |
//! | `org` | the org id |
//! | `plan` | the org's plan |
//! | `env` | `"live"` or `"test"` (the key's environment; billing is `"live"`) |
//! | `bucket` | the org's stable bucket 0–99 (the one `canary_percent` uses) |
//! | `hash(text)` | a stable bucket 0–99 of any text, for a fresh split |
//!
//! e.g. `plan == "starter" && bucket < 20`, `env == "test"`,
//! `hash(org + "v2") < 5`. One expression (no `let`, no `eval`; a
//! closure may run, within the operation limit), 500 operations at most, strict
//! variables (a misspelt name is refused at activation), and the answer
//! must be a bool. A rule that fails when run counts as "not the canary",
//! so a bad rule never sends a call to a version it did not choose.

use std::sync::LazyLock;

use rhai::{AST, Engine, Scope};

use super::canary_bucket;

/// The operations one evaluation may take.
const MAX_OPERATIONS: u64 = 500;
/// The longest rule accepted.
pub const MAX_RULE_BYTES: usize = 1024;

static ENGINE: LazyLock<Engine> = LazyLock::new(|| {
    let mut engine = Engine::new();
    engine
        .set_strict_variables(true)
        .set_max_operations(MAX_OPERATIONS)
        .set_max_expr_depths(32, 32)
        .set_max_string_size(4096)
        .set_max_array_size(256)
        .set_max_map_size(64)
        .set_max_call_levels(4);
    engine.disable_symbol("eval");
    engine.on_print(|_| {});
    engine.on_debug(|_, _, _| {});
    engine.register_fn("hash", |text: &str| i64::from(canary_bucket(text)));
    engine
});

/// Who a call is for: what a rule decides on.
#[derive(Debug, Clone, Copy)]
pub struct CallFacts<'a> {
    pub org_id: &'a str,
    pub plan: &'a str,
    /// `live` or `test`.
    pub env: &'a str,
}

/// A compiled routing rule.
pub struct RoutingRule {
    ast: AST,
}

/// The facts as variables, not constants: the optimizer would fold
/// constants of the sample scope into the compiled rule.
fn scope(facts: CallFacts<'_>) -> Scope<'static> {
    let mut scope = Scope::new();
    scope.push("org", facts.org_id.to_string());
    scope.push("plan", facts.plan.to_string());
    scope.push("env", facts.env.to_string());
    scope.push("bucket", i64::from(canary_bucket(facts.org_id)));
    scope
}

impl RoutingRule {
    /// Compiles a rule and runs it once on sample facts, so a rule that
    /// does not parse, names an unknown variable or does not answer a bool
    /// is refused with the reason before it is stored.
    pub fn compile(source: &str) -> Result<RoutingRule, String> {
        if source.trim().is_empty() {
            return Err("the rule is empty".into());
        }
        if source.len() > MAX_RULE_BYTES {
            return Err(format!("the rule is {} bytes; at most {MAX_RULE_BYTES}", source.len()));
        }
        let sample = CallFacts { org_id: "org_sample", plan: "starter", env: "live" };
        let ast = ENGINE
            .compile_expression_with_scope(&scope(sample), source)
            .map_err(|e| format!("{e} (the rule may use org, plan, env, bucket and hash(text))"))?;
        let rule = RoutingRule { ast };
        rule.matches(sample)?;
        Ok(rule)
    }

    /// Whether the call goes to the canary.
    pub fn matches(&self, facts: CallFacts<'_>) -> Result<bool, String> {
        ENGINE.eval_ast_with_scope::<bool>(&mut scope(facts), &self.ast).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts<'a>(org_id: &'a str, plan: &'a str, env: &'a str) -> CallFacts<'a> {
        CallFacts { org_id, plan, env }
    }

    #[test]
    fn rules_see_org_plan_env_and_buckets() {
        let rule = RoutingRule::compile(r#"plan == "starter" && env == "live""#).unwrap();
        assert!(rule.matches(facts("org_a", "starter", "live")).unwrap());
        assert!(!rule.matches(facts("org_a", "starter", "test")).unwrap());
        assert!(!rule.matches(facts("org_a", "pro", "live")).unwrap());

        let rule = RoutingRule::compile("bucket < 30").unwrap();
        let share = (0..1000).filter(|i| rule.matches(facts(&format!("org_{i}"), "free", "live")).unwrap()).count();
        assert!((200..400).contains(&share), "about 30% of orgs: {share}");

        let rule = RoutingRule::compile(r#"hash(org + "v2") == hash("org_b" + "v2")"#).unwrap();
        assert!(rule.matches(facts("org_b", "free", "live")).unwrap());
    }

    #[test]
    fn bad_rules_are_refused_with_the_reason() {
        let refused = |src: &str| RoutingRule::compile(src).err().unwrap_or_else(|| panic!("accepted: {src}"));
        assert!(refused("").contains("empty"));
        assert!(refused("plna == \"starter\"").contains("plna"), "a misspelt variable");
        assert!(refused("plan").contains("bool"), "not a bool: {}", refused("plan"));
        assert!(refused("plan ==").len() > 5);
        assert!(refused("let x = 1; x == 1").len() > 5, "statements are not expressions");
        assert!(refused(&"bucket < 1 || ".repeat(200)).contains("bytes"));
        // A rule that runs away is stopped by the operation limit.
        let err = refused("(0..1000000).reduce(|sum, x| sum + x) > 0");
        assert!(!err.is_empty(), "{err}");
    }
}
