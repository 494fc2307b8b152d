//! Metadata filters: exact matches on top-level metadata keys, with the same
//! meaning in SQLite, PostgreSQL and the in-process index. A value matches
//! when its text form is equal: strings as they are, numbers as JSON writes
//! them, booleans as `true`/`false` (so `?metadata.age=30` finds `{"age": 30}`).

use serde_json::{Map, Value};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetadataFilter {
    pairs: Vec<(String, String)>,
}

/// Why a filter was refused; names the offending key.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FilterError(pub String);

pub const MAX_FILTER_KEYS: usize = 16;

impl MetadataFilter {
    pub fn from_pairs(pairs: Vec<(String, String)>) -> MetadataFilter {
        MetadataFilter { pairs }
    }

    /// From a JSON object of scalar values (the `filters` of a query).
    pub fn from_json(filters: &Map<String, Value>) -> Result<MetadataFilter, FilterError> {
        let mut pairs = Vec::new();
        for (k, v) in filters {
            let text = scalar_text(v)
                .ok_or_else(|| FilterError(format!("filters.{k} must be a string, number or boolean")))?;
            pairs.push((k.clone(), text));
        }
        MetadataFilter::checked(pairs)
    }

    /// Validates keys: non-empty, at most 128 characters, no quotes,
    /// backslashes or control characters (they would need escaping in a JSON path).
    pub fn checked(pairs: Vec<(String, String)>) -> Result<MetadataFilter, FilterError> {
        if pairs.len() > MAX_FILTER_KEYS {
            return Err(FilterError(format!("at most {MAX_FILTER_KEYS} metadata filters")));
        }
        for (k, _) in &pairs {
            if k.is_empty() || k.len() > 128 || k.chars().any(|c| c == '"' || c == '\\' || c.is_control()) {
                return Err(FilterError(format!(
                    "invalid metadata filter key `{}`: 1 to 128 characters, no quotes or backslashes",
                    k.chars().take(128).collect::<String>()
                )));
            }
        }
        Ok(MetadataFilter { pairs })
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    pub fn pairs(&self) -> &[(String, String)] {
        &self.pairs
    }

    pub fn matches(&self, metadata: &Map<String, Value>) -> bool {
        self.pairs.iter().all(|(k, want)| metadata.get(k).and_then(scalar_text).is_some_and(|got| &got == want))
    }
}

/// The text form a filter compares; `None` for arrays, objects and null.
pub fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The SQLite JSON path of a (validated) key.
pub fn sqlite_path(key: &str) -> String {
    format!("$.\"{key}\"")
}
