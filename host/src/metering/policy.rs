//! Billable metrics as policy (`policies/metrics.yaml`, seed 000 §3.1): a
//! metric names the usage-event field or tag it reads and how a period's
//! events aggregate into one number. A new metric is an edit of that file,
//! picked up without a restart (the reload loop in `metering/mod.rs`).
//!
//! The same definition is evaluated two ways that must agree: in process by
//! the event writer (counters and rollups, per batch) and in SQL over the raw
//! events (history, `/admin/metrics`, reconciliation). [`Metric::sql_value`]
//! and [`UsageEvent::value`] are the two halves.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::UsageEvent;
use crate::store::sql::Backend;

/// The bundled default, used when no policies directory holds the file.
pub const DEFAULT_POLICY: &str = include_str!("../../../policies/metrics.yaml");

/// How a period's events become one number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    /// Sum of the field over billable events.
    Sum,
    /// Billable events (with `field`: those where it is present and non-zero).
    Count,
    /// Largest value of the field. Over a gauge (`memories_stored`) the value
    /// held when the period began counts too.
    Max,
    /// Distinct values of the field.
    UniqueCount,
    /// The field's value on the period's last billable event.
    Latest,
}

/// Event columns a metric may read. `memories_written` is created + updated;
/// `tokens` is in + out.
pub const EVENT_FIELDS: &[&str] = &[
    "tokens_in",
    "tokens_out",
    "tokens",
    "memories_read",
    "memories_created",
    "memories_updated",
    "memories_deleted",
    "memories_written",
    "memories_stored",
    "embeddings_generated",
    "model_calls",
    "cost_micros",
    "processing_us",
    "status",
    "key_id",
    "route",
    "model",
];

/// Fields whose value carries over from one period to the next.
pub const GAUGE_FIELDS: &[&str] = &["memories_stored"];

/// What a metric reads from an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub enum Field {
    /// A column of the event (see [`EVENT_FIELDS`]).
    Column(String),
    /// `tags.<name>`: a tag the caller sent (`X-Usage-Tags`).
    Tag(String),
    /// `quantities.<name>`: a quantity a plugin or host call reported.
    Quantity(String),
}

impl From<Field> for String {
    fn from(f: Field) -> String {
        match f {
            Field::Column(c) => c,
            Field::Tag(t) => format!("tags.{t}"),
            Field::Quantity(q) => format!("quantities.{q}"),
        }
    }
}

impl Field {
    pub fn parse(s: &str) -> Result<Field, String> {
        if let Some(t) = s.strip_prefix("tags.") {
            check_name(t, "tag name")?;
            return Ok(Field::Tag(t.to_string()));
        }
        if let Some(q) = s.strip_prefix("quantities.") {
            check_name(q, "quantity name")?;
            return Ok(Field::Quantity(q.to_string()));
        }
        if EVENT_FIELDS.contains(&s) {
            return Ok(Field::Column(s.to_string()));
        }
        Err(format!("unknown field `{s}`: one of {}, `tags.<name>` or `quantities.<name>`", EVENT_FIELDS.join(", ")))
    }

    pub fn is_gauge(&self) -> bool {
        matches!(self, Field::Column(c) if GAUGE_FIELDS.contains(&c.as_str()))
    }

    /// True for fields whose values are text (only `unique_count` and
    /// `count` may read them).
    pub fn is_text(&self) -> bool {
        matches!(self, Field::Tag(_))
            || matches!(self, Field::Column(c) if matches!(c.as_str(), "key_id" | "route" | "model"))
    }

    /// The SQL expression of this field over `usage_events`.
    pub fn sql(&self, backend: Backend) -> String {
        match self {
            Field::Column(c) => match c.as_str() {
                "tokens" => "(tokens_in + tokens_out)".into(),
                "memories_written" => "(memories_created + memories_updated)".into(),
                "route" => "(method || ' ' || route)".into(),
                "status" => "CAST(status AS BIGINT)".into(),
                other => other.to_string(),
            },
            Field::Tag(t) => crate::store::sql::json_text(backend, "tags", t),
            Field::Quantity(q) => {
                format!("CAST({} AS BIGINT)", crate::store::sql::json_text(backend, "quantities", q))
            }
        }
    }
}

/// Names of tags, quantities and metrics: short, lowercase, no dots.
pub fn check_name(name: &str, what: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok { Ok(()) } else { Err(format!("{what} `{name}` must be 1-64 characters of a-z, 0-9, `_` and `-`")) }
}

/// One billable metric.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Metric {
    pub name: String,
    pub display_name: String,
    pub unit: String,
    pub aggregation: Aggregation,
    /// What it reads; several fields are summed. Empty for a plain count.
    #[schema(value_type = Vec<String>)]
    pub fields: Vec<Field>,
    pub description: Option<String>,
}

impl Metric {
    /// This event's contribution (`None`: the event does not count).
    /// `Some(Text)` only for `unique_count` over a text field.
    pub fn value(&self, e: &UsageEvent) -> Option<Value> {
        if !e.billable {
            return None;
        }
        match self.aggregation {
            Aggregation::Count => {
                if self.fields.is_empty() {
                    return Some(Value::Num(1));
                }
                let present = self.fields.iter().any(|f| match e.value(f) {
                    Some(Value::Num(n)) => n != 0,
                    Some(Value::Text(_)) => true,
                    None => false,
                });
                present.then_some(Value::Num(1))
            }
            Aggregation::UniqueCount => self.fields.first().and_then(|f| e.value(f)).map(|v| match v {
                Value::Num(n) => Value::Text(n.to_string()),
                t => t,
            }),
            Aggregation::Sum | Aggregation::Max | Aggregation::Latest => {
                let mut total: Option<i64> = None;
                for f in &self.fields {
                    if let Some(Value::Num(n)) = e.value(f) {
                        total = Some(total.unwrap_or(0).saturating_add(n));
                    }
                }
                total.map(Value::Num)
            }
        }
    }

    /// True when the value held before a period counts in it (a max or
    /// latest over a gauge such as `memories_stored`).
    pub fn carries_over(&self) -> bool {
        matches!(self.aggregation, Aggregation::Max | Aggregation::Latest) && self.fields.iter().all(Field::is_gauge)
    }

    /// The SQL expression of one event's value (numeric or text), or `NULL`
    /// when it does not count; aggregate it with [`Metric::sql_aggregate`].
    pub fn sql_value(&self, backend: Backend) -> String {
        let sum_of = |fields: &[Field]| -> String {
            fields.iter().map(|f| format!("COALESCE({}, 0)", f.sql(backend))).collect::<Vec<_>>().join(" + ")
        };
        let value = match self.aggregation {
            Aggregation::Count if self.fields.is_empty() => "1".to_string(),
            Aggregation::Count => {
                let conds: Vec<String> = self
                    .fields
                    .iter()
                    .map(|f| {
                        if f.is_text() {
                            format!("{} IS NOT NULL", f.sql(backend))
                        } else {
                            format!("COALESCE({}, 0) <> 0", f.sql(backend))
                        }
                    })
                    .collect();
                format!("CASE WHEN {} THEN 1 END", conds.join(" OR "))
            }
            Aggregation::UniqueCount => match &self.fields[0] {
                f if f.is_text() => f.sql(backend),
                f => format!("CAST({} AS TEXT)", f.sql(backend)),
            },
            _ if self.fields.iter().all(|f| matches!(f, Field::Column(_))) => sum_of(&self.fields),
            // Tags or quantities: present on some events only.
            _ => {
                let any = self.fields.iter().map(|f| format!("{} IS NOT NULL", f.sql(backend))).collect::<Vec<_>>();
                format!("CASE WHEN {} THEN {} END", any.join(" OR "), sum_of(&self.fields))
            }
        };
        format!("CASE WHEN billable THEN {value} END")
    }

    /// The aggregate over `sql_value` (for `latest`, the caller orders).
    pub fn sql_aggregate(&self, value: &str) -> String {
        match self.aggregation {
            Aggregation::Sum => format!("COALESCE(SUM({value}), 0)::bigint"),
            Aggregation::Count => format!("COUNT({value})"),
            Aggregation::Max => format!("MAX({value})"),
            Aggregation::UniqueCount => format!("COUNT(DISTINCT {value})"),
            // Evaluated by the caller with an ORDER BY; as an aggregate, the max.
            Aggregation::Latest => format!("MAX({value})"),
        }
    }
}

/// A value an event contributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Num(i64),
    Text(String),
}

/// How long raw data is kept (rollups and counters are kept for ever).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Retention {
    /// Raw usage events, in days.
    pub events_days: u32,
    /// Audit log entries, in days.
    pub audit_days: u32,
    /// Idempotency keys, in hours (Stripe keeps them 24 h).
    pub idempotency_hours: u32,
}

impl Default for Retention {
    fn default() -> Self {
        Retention { events_days: 400, audit_days: 400, idempotency_hours: 24 }
    }
}

/// The whole metrics policy.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricsPolicy {
    pub metrics: Vec<Metric>,
    pub retention: Retention,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    metrics: BTreeMap<String, RawMetric>,
    #[serde(default)]
    retention: Retention,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetric {
    display_name: Option<String>,
    unit: Option<String>,
    aggregation: Aggregation,
    #[serde(default)]
    field: Option<OneOrMany>,
    description: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl MetricsPolicy {
    /// Parses and validates; errors name the metric and field.
    pub fn parse(yaml: &str) -> Result<MetricsPolicy, String> {
        let de = serde_yaml_ng::Deserializer::from_str(yaml);
        let raw: RawPolicy = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            if path == "." { e.inner().to_string() } else { format!("{path}: {}", e.inner()) }
        })?;
        if raw.metrics.is_empty() {
            return Err("metrics: at least one metric is needed".into());
        }
        let r = raw.retention;
        if r.events_days == 0 || r.audit_days == 0 || r.idempotency_hours == 0 {
            return Err("retention: every retention must be at least 1".into());
        }
        let mut metrics = Vec::new();
        for (name, m) in raw.metrics {
            check_name(&name, "metric name").map_err(|e| format!("metrics.{name}: {e}"))?;
            let fields: Vec<String> = match m.field {
                None => Vec::new(),
                Some(OneOrMany::One(f)) => vec![f],
                Some(OneOrMany::Many(v)) => v,
            };
            let fields = fields
                .iter()
                .map(|f| Field::parse(f).map_err(|e| format!("metrics.{name}.field: {e}")))
                .collect::<Result<Vec<_>, _>>()?;
            let text = fields.iter().any(Field::is_text);
            match m.aggregation {
                Aggregation::Count => {}
                Aggregation::UniqueCount if fields.len() != 1 => {
                    return Err(format!("metrics.{name}.field: unique_count reads exactly one field"));
                }
                Aggregation::UniqueCount => {}
                _ if fields.is_empty() => {
                    return Err(format!("metrics.{name}.field: {:?} needs a field", m.aggregation));
                }
                _ if text => {
                    return Err(format!(
                        "metrics.{name}.field: {:?} needs numeric fields (text fields suit count and unique_count)",
                        m.aggregation
                    ));
                }
                _ => {}
            }
            metrics.push(Metric {
                display_name: m.display_name.unwrap_or_else(|| name.clone()),
                unit: m.unit.unwrap_or_else(|| "units".into()),
                aggregation: m.aggregation,
                fields,
                description: m.description,
                name,
            });
        }
        Ok(MetricsPolicy { metrics, retention: raw.retention })
    }

    pub fn bundled() -> MetricsPolicy {
        MetricsPolicy::parse(DEFAULT_POLICY).expect("the bundled metrics policy is valid")
    }

    pub fn get(&self, name: &str) -> Option<&Metric> {
        self.metrics.iter().find(|m| m.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundled_policy_has_the_four_seed_metrics() {
        let p = MetricsPolicy::bundled();
        for name in ["api_calls", "tokens_processed", "memories_stored", "embeddings_generated"] {
            assert!(p.get(name).is_some(), "{name}");
        }
        assert!(p.get("memories_stored").unwrap().carries_over());
        assert_eq!(p.retention.events_days, 400);
    }

    #[test]
    fn errors_name_the_metric_and_field() {
        let e = MetricsPolicy::parse("metrics:\n  x:\n    aggregation: sum\n    field: nope\n").unwrap_err();
        assert!(e.contains("metrics.x.field") && e.contains("unknown field `nope`"), "{e}");
        let e = MetricsPolicy::parse("metrics:\n  x:\n    aggregation: avg\n").unwrap_err();
        assert!(e.contains("metrics.x.aggregation"), "{e}");
        let e = MetricsPolicy::parse("metrics:\n  x:\n    aggregation: sum\n").unwrap_err();
        assert!(e.contains("needs a field"), "{e}");
        let e = MetricsPolicy::parse("metrics:\n  x:\n    aggregation: max\n    field: tags.team\n").unwrap_err();
        assert!(e.contains("numeric"), "{e}");
        let e = MetricsPolicy::parse("metrics:\n  Bad.Name:\n    aggregation: count\n").unwrap_err();
        assert!(e.contains("metric name"), "{e}");
        let e = MetricsPolicy::parse("metrics: {}\nretention: { events_days: 0 }\n").unwrap_err();
        assert!(e.contains("at least one metric"), "{e}");
    }
}
