//! What provider model calls cost memhost (`policies/model-prices.yaml`):
//! USD per million tokens in and out, per model. Every metered model call
//! carries its cost in micro-units on the usage event (`cost_micros`), which
//! `/admin/metrics`, the usage export and margins read, and a cache hit
//! reports the cost it saved. A model not in the table costs 0 (logged once).
//!
//! One table per process, installed at start; read where calls are metered.

use std::collections::{BTreeMap, HashSet};
use std::sync::{LazyLock, Mutex, RwLock};

use serde::Deserialize;

#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// USD per million input tokens (= micro-USD per token).
    pub input: f64,
    /// USD per million output tokens.
    #[serde(default)]
    pub output: f64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelPrices {
    prices: BTreeMap<String, Price>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    prices: BTreeMap<String, Price>,
}

static TABLE: LazyLock<RwLock<ModelPrices>> = LazyLock::new(Default::default);
static UNPRICED: LazyLock<Mutex<HashSet<String>>> = LazyLock::new(Default::default);

impl ModelPrices {
    pub fn bundled() -> ModelPrices {
        ModelPrices::parse(include_str!("../../../policies/model-prices.yaml")).unwrap_or_default()
    }

    pub fn parse(yaml: &str) -> Result<ModelPrices, String> {
        let file: PolicyFile = serde_yaml_ng::from_str(yaml).map_err(|e| e.to_string())?;
        for (model, p) in &file.prices {
            if !(p.input.is_finite() && p.output.is_finite() && p.input >= 0.0 && p.output >= 0.0) {
                return Err(format!("prices.{model}: input and output must be numbers ≥ 0"));
            }
        }
        Ok(ModelPrices { prices: file.prices })
    }

    /// The cost of a call in micro-USD.
    pub fn cost_of(&self, model: &str, input_tokens: u64, output_tokens: u64) -> Option<i64> {
        let p = self.prices.get(model)?;
        Some((input_tokens as f64 * p.input + output_tokens as f64 * p.output).round() as i64)
    }
}

/// Makes `prices` the process's table.
pub fn install(prices: ModelPrices) {
    *TABLE.write().unwrap_or_else(|e| e.into_inner()) = prices;
}

/// The cost of a model call in micro-USD (0 for a model without a price).
pub fn cost(model: &str, input_tokens: u64, output_tokens: u64) -> i64 {
    match TABLE.read().unwrap_or_else(|e| e.into_inner()).cost_of(model, input_tokens, output_tokens) {
        Some(c) => c,
        None => {
            if UNPRICED.lock().unwrap_or_else(|e| e.into_inner()).insert(model.to_string()) {
                tracing::info!(model, "no price for this model in model-prices.yaml; its calls cost 0");
            }
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_are_per_million_tokens() {
        let t = ModelPrices::parse("prices:\n  m: {input: 0.15, output: 0.6}\n  e: {input: 0.02}\n").unwrap();
        assert_eq!(t.cost_of("m", 1000, 500), Some(450)); // 150 + 300 micro-USD
        assert_eq!(t.cost_of("e", 1_000_000, 0), Some(20_000));
        assert_eq!(t.cost_of("other", 1, 1), None);
        assert!(ModelPrices::parse("prices:\n  m: {input: -1}\n").unwrap_err().contains("prices.m"));
        assert!(ModelPrices::parse("prices:\n  m: {inptu: 1}\n").is_err());
        assert!(!ModelPrices::bundled().prices.is_empty());
    }
}
