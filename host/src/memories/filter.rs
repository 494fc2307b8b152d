//! Filters on memories, in mem0's v2 grammar: `AND`, `OR`, `NOT` over
//! conditions on the entity scopes (`user_id`, `agent_id`, `app_id`,
//! `run_id`), `created_at` / `updated_at`, and any top-level metadata key.
//!
//! ```json
//! {"AND": [{"user_id": "alice"},
//!          {"created_at": {"gte": "2026-01-01T00:00:00Z"}},
//!          {"OR": [{"topic": {"in": ["food", "travel"]}}, {"NOT": {"run_id": "*"}}]}]}
//! ```
//!
//! A field maps to a value (equality) or to operators (all must hold): `eq
//! ne in nin gt gte lt lte contains icontains`; the value `"*"` means "has a
//! value". Bare keys other than the entity and time fields are metadata keys
//! (`metadata.<key>` and `{"metadata": {…}}` say so explicitly). Several
//! fields in one object must all hold.
//!
//! Meaning, the same in SQLite, PostgreSQL and the in-process vector scan:
//! metadata values compare by their text form (strings as they are, numbers
//! as JSON writes them, booleans `true`/`false`), so `{"age": 30}` and
//! `{"age": "30"}` both find `{"age": 30}`; `gt gte lt lte` compare numbers
//! (metadata) or instants (the time fields) and never match other values;
//! `contains` is a substring test, `icontains` ignores ASCII case; `ne` and
//! `nin` match memories where the field is absent too (they are `NOT eq`,
//! `NOT in`). Every condition is true or false, never unknown, so `NOT`
//! is plain negation.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::store::sql::{Arg, Backend};

/// Why a filter was refused; names the offending path (`filters.AND[1].created_at.gte`).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FilterError(pub String);

pub const MAX_CONDITIONS: usize = 64;
pub const MAX_DEPTH: usize = 8;
pub const MAX_LIST: usize = 100;
const MAX_KEY: usize = 128;

/// The entity scopes memories carry as columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entity {
    User,
    Agent,
    App,
    Run,
}

impl Entity {
    pub const ALL: [Entity; 4] = [Entity::User, Entity::Agent, Entity::App, Entity::Run];

    pub fn column(self) -> &'static str {
        match self {
            Entity::User => "user_id",
            Entity::Agent => "agent_id",
            Entity::App => "app_id",
            Entity::Run => "run_id",
        }
    }

    pub fn parse(s: &str) -> Option<Entity> {
        Entity::ALL.into_iter().find(|e| e.column() == s)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Field {
    Entity(Entity),
    CreatedAt,
    UpdatedAt,
    Metadata(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    Text(String),
    Number(f64),
    Time(DateTime<Utc>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Gt,
    Gte,
    Lt,
    Lte,
}

impl Cmp {
    fn sql(self) -> &'static str {
        match self {
            Cmp::Gt => ">",
            Cmp::Gte => ">=",
            Cmp::Lt => "<",
            Cmp::Lte => "<=",
        }
    }

    fn holds(self, ord: std::cmp::Ordering) -> bool {
        use std::cmp::Ordering::*;
        match self {
            Cmp::Gt => ord == Greater,
            Cmp::Gte => ord != Less,
            Cmp::Lt => ord == Less,
            Cmp::Lte => ord != Greater,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Eq(Operand),
    In(Vec<Operand>),
    Compare(Cmp, Operand),
    Contains(String),
    IContains(String),
    Exists,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Not(Box<Filter>),
    Cond(Field, Op),
}

/// What the in-process matcher looks at (SQLite's vector scan).
pub struct Row<'a> {
    pub metadata: &'a Map<String, Value>,
    pub entities: [Option<&'a str>; 4],
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A filter, or none (everything matches).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MemoryFilter(Option<Filter>);

impl MemoryFilter {
    pub fn all() -> MemoryFilter {
        MemoryFilter(None)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// From the JSON grammar; errors name the path under `root` (`filters`).
    pub fn from_json(value: &Value, root: &str) -> Result<MemoryFilter, FilterError> {
        let mut count = 0;
        let filter = parse(value, root, 0, &mut count)?;
        Ok(MemoryFilter(simplify(filter)))
    }

    /// From query parameters: `user_id=…` (and the other entities),
    /// `metadata.<key>=…` (equality), and `filters=<JSON>`; all must hold.
    pub fn from_query(pairs: &[(String, String)]) -> Result<MemoryFilter, FilterError> {
        let mut parts = Vec::new();
        let mut count = 0;
        for (k, v) in pairs {
            if k == "filters" {
                let json: Value =
                    serde_json::from_str(v).map_err(|e| FilterError(format!("filters: not JSON ({e})")))?;
                parts.push(parse(&json, "filters", 0, &mut count)?);
            } else if let Some(e) = Entity::parse(k) {
                parts.push(Filter::Cond(Field::Entity(e), Op::Eq(Operand::Text(v.clone()))));
            } else if let Some(key) = k.strip_prefix("metadata.") {
                check_key(key, k)?;
                parts.push(Filter::Cond(Field::Metadata(key.to_string()), Op::Eq(Operand::Text(v.clone()))));
            } else {
                continue;
            }
            count += 1;
            if count > MAX_CONDITIONS {
                return Err(FilterError(format!("at most {MAX_CONDITIONS} filter conditions")));
            }
        }
        Ok(MemoryFilter(simplify(Filter::And(parts))))
    }

    pub fn matches(&self, row: &Row<'_>) -> bool {
        self.0.as_ref().is_none_or(|f| f.matches(row))
    }

    /// ` AND (…)` for a `WHERE` clause, numbering parameters after `n`;
    /// `prefix` qualifies column names (`"m."` in a join, else `""`).
    pub fn sql(&self, backend: Backend, prefix: &str, n: &mut usize) -> (String, Vec<Arg>) {
        let Some(f) = &self.0 else {
            return (String::new(), Vec::new());
        };
        let mut args = Vec::new();
        let text = f.sql(backend, prefix, false, n, &mut args);
        (format!(" AND {text}"), args)
    }
}

fn check_key(key: &str, path: &str) -> Result<(), FilterError> {
    if key.is_empty() || key.len() > MAX_KEY || key.chars().any(|c| c == '"' || c == '\\' || c.is_control()) {
        return Err(FilterError(format!(
            "{}: a metadata key is 1 to {MAX_KEY} characters, without quotes, backslashes or control characters",
            truncate(path)
        )));
    }
    Ok(())
}

fn truncate(s: &str) -> String {
    s.chars().take(200).collect()
}

fn parse(value: &Value, path: &str, depth: usize, count: &mut usize) -> Result<Filter, FilterError> {
    if depth > MAX_DEPTH {
        return Err(FilterError(format!("{}: filters nest at most {MAX_DEPTH} deep", truncate(path))));
    }
    let Value::Object(map) = value else {
        return Err(FilterError(format!("{}: expected an object", truncate(path))));
    };
    let mut parts = Vec::new();
    for (key, v) in map {
        let here = format!("{path}.{key}");
        match key.as_str() {
            "AND" | "OR" => {
                let Value::Array(items) = v else {
                    return Err(FilterError(format!("{}: expected a list of filters", truncate(&here))));
                };
                let subs = items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| parse(item, &format!("{here}[{i}]"), depth + 1, count))
                    .collect::<Result<Vec<_>, _>>()?;
                parts.push(if key == "AND" { Filter::And(subs) } else { Filter::Or(subs) });
            }
            "NOT" => {
                let inner = match v {
                    Value::Array(items) => Filter::And(
                        items
                            .iter()
                            .enumerate()
                            .map(|(i, item)| parse(item, &format!("{here}[{i}]"), depth + 1, count))
                            .collect::<Result<Vec<_>, _>>()?,
                    ),
                    other => parse(other, &here, depth + 1, count)?,
                };
                parts.push(Filter::Not(Box::new(inner)));
            }
            "metadata" if v.is_object() => {
                let Value::Object(inner) = v else { unreachable!() };
                for (k, cond) in inner {
                    check_key(k, &format!("{here}.{k}"))?;
                    parts.push(condition(Field::Metadata(k.clone()), cond, &format!("{here}.{k}"), count)?);
                }
            }
            _ => {
                let field = if let Some(e) = Entity::parse(key) {
                    Field::Entity(e)
                } else if key == "created_at" {
                    Field::CreatedAt
                } else if key == "updated_at" {
                    Field::UpdatedAt
                } else {
                    let k = key.strip_prefix("metadata.").unwrap_or(key);
                    check_key(k, &here)?;
                    Field::Metadata(k.to_string())
                };
                parts.push(condition(field, v, &here, count)?);
            }
        }
    }
    Ok(Filter::And(parts))
}

fn condition(field: Field, value: &Value, path: &str, count: &mut usize) -> Result<Filter, FilterError> {
    let mut ops = Vec::new();
    match value {
        Value::Object(map) => {
            if map.is_empty() {
                return Err(FilterError(format!("{}: give at least one operator", truncate(path))));
            }
            for (op, operand) in map {
                let here = format!("{path}.{op}");
                ops.push(match op.as_str() {
                    "eq" => Filter::Cond(field.clone(), eq_or_exists(&field, operand, &here)?),
                    "ne" => Filter::Not(Box::new(Filter::Cond(field.clone(), eq_or_exists(&field, operand, &here)?))),
                    "in" | "nin" => {
                        let Value::Array(items) = operand else {
                            return Err(FilterError(format!("{}: expected a list", truncate(&here))));
                        };
                        if items.len() > MAX_LIST {
                            return Err(FilterError(format!("{}: at most {MAX_LIST} values", truncate(&here))));
                        }
                        let values = items
                            .iter()
                            .enumerate()
                            .map(|(i, item)| operand_of(&field, item, &format!("{here}[{i}]")))
                            .collect::<Result<Vec<_>, _>>()?;
                        let cond = Filter::Cond(field.clone(), Op::In(values));
                        if op == "in" { cond } else { Filter::Not(Box::new(cond)) }
                    }
                    "gt" | "gte" | "lt" | "lte" => {
                        let cmp = match op.as_str() {
                            "gt" => Cmp::Gt,
                            "gte" => Cmp::Gte,
                            "lt" => Cmp::Lt,
                            _ => Cmp::Lte,
                        };
                        let bound = match &field {
                            Field::Entity(_) => {
                                return Err(FilterError(format!(
                                    "{}: entity ids support eq, ne, in, nin, contains, icontains and \"*\"",
                                    truncate(&here)
                                )));
                            }
                            Field::CreatedAt | Field::UpdatedAt => Operand::Time(time_of(operand, &here)?),
                            Field::Metadata(_) => match operand.as_f64() {
                                Some(n) if n.is_finite() => Operand::Number(n),
                                _ => return Err(FilterError(format!("{}: expected a number", truncate(&here)))),
                            },
                        };
                        Filter::Cond(field.clone(), Op::Compare(cmp, bound))
                    }
                    "contains" | "icontains" => {
                        if matches!(field, Field::CreatedAt | Field::UpdatedAt) {
                            return Err(FilterError(format!("{}: not for time fields", truncate(&here))));
                        }
                        let Value::String(s) = operand else {
                            return Err(FilterError(format!("{}: expected a string", truncate(&here))));
                        };
                        if s.len() > 1024 {
                            return Err(FilterError(format!("{}: at most 1024 bytes", truncate(&here))));
                        }
                        let op = if op == "contains" { Op::Contains(s.clone()) } else { Op::IContains(s.clone()) };
                        Filter::Cond(field.clone(), op)
                    }
                    other => {
                        return Err(FilterError(format!(
                            "{}: unknown operator `{}` (eq, ne, in, nin, gt, gte, lt, lte, contains, icontains)",
                            truncate(path),
                            truncate(other)
                        )));
                    }
                });
            }
        }
        other => ops.push(Filter::Cond(field.clone(), eq_or_exists(&field, other, path)?)),
    }
    *count += ops.len();
    if *count > MAX_CONDITIONS {
        return Err(FilterError(format!("at most {MAX_CONDITIONS} filter conditions")));
    }
    Ok(if ops.len() == 1 { ops.pop().expect("one") } else { Filter::And(ops) })
}

fn eq_or_exists(field: &Field, value: &Value, path: &str) -> Result<Op, FilterError> {
    if value.as_str() == Some("*") {
        return Ok(Op::Exists);
    }
    Ok(Op::Eq(operand_of(field, value, path)?))
}

fn operand_of(field: &Field, value: &Value, path: &str) -> Result<Operand, FilterError> {
    match field {
        Field::CreatedAt | Field::UpdatedAt => Ok(Operand::Time(time_of(value, path)?)),
        Field::Entity(_) => match value {
            Value::String(s) => Ok(Operand::Text(s.clone())),
            _ => Err(FilterError(format!("{}: expected a string", truncate(path)))),
        },
        Field::Metadata(_) => scalar_text(value)
            .map(Operand::Text)
            .ok_or_else(|| FilterError(format!("{}: expected a string, number or boolean", truncate(path)))),
    }
}

/// RFC 3339 (`2026-01-31T12:00:00Z`), or a date (`2026-01-31`, midnight UTC).
fn time_of(value: &Value, path: &str) -> Result<DateTime<Utc>, FilterError> {
    let s = value.as_str().unwrap_or_default();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).expect("midnight").and_utc());
    }
    Err(FilterError(format!(
        "{}: expected a date-time (RFC 3339, e.g. 2026-01-31T12:00:00Z) or a date (2026-01-31)",
        truncate(path)
    )))
}

/// Flattens single-child groups; an empty filter is `None`.
fn simplify(f: Filter) -> Option<Filter> {
    match f {
        Filter::And(parts) | Filter::Or(parts) if parts.is_empty() => None,
        Filter::And(mut parts) if parts.len() == 1 => simplify(parts.pop().expect("one")),
        other => Some(other),
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

impl Filter {
    fn matches(&self, row: &Row<'_>) -> bool {
        match self {
            Filter::And(parts) => parts.iter().all(|p| p.matches(row)),
            Filter::Or(parts) => parts.iter().any(|p| p.matches(row)),
            Filter::Not(inner) => !inner.matches(row),
            Filter::Cond(field, op) => match field {
                Field::CreatedAt | Field::UpdatedAt => {
                    let t = if *field == Field::CreatedAt { row.created_at } else { row.updated_at };
                    match op {
                        Op::Exists => true,
                        Op::Eq(Operand::Time(v)) => t == *v,
                        Op::In(vs) => vs.iter().any(|v| matches!(v, Operand::Time(v) if t == *v)),
                        Op::Compare(cmp, Operand::Time(v)) => cmp.holds(t.cmp(v)),
                        _ => false,
                    }
                }
                Field::Entity(e) => {
                    let value = row.entities[Entity::ALL.iter().position(|x| x == e).expect("an entity")];
                    value.is_some_and(|got| text_matches(got, op))
                }
                Field::Metadata(key) => match row.metadata.get(key) {
                    Some(Value::Number(n)) if matches!(op, Op::Compare(..)) => match (op, n.as_f64()) {
                        (Op::Compare(cmp, Operand::Number(v)), Some(x)) => {
                            x.partial_cmp(v).is_some_and(|o| cmp.holds(o))
                        }
                        _ => false,
                    },
                    Some(v) => scalar_text(v).is_some_and(|got| text_matches(&got, op)),
                    None => false,
                },
            },
        }
    }

    /// `under_not`: inside a `NOT`, where SQL's "unknown" (a comparison with
    /// an absent value) must become false before it is negated. Elsewhere
    /// unknown already acts as false (AND and OR are monotone), and a bare
    /// comparison lets the planner use an index.
    fn sql(&self, backend: Backend, prefix: &str, under_not: bool, n: &mut usize, args: &mut Vec<Arg>) -> String {
        match self {
            Filter::And(parts) | Filter::Or(parts) if parts.is_empty() => {
                if matches!(self, Filter::And(_)) {
                    "TRUE".into()
                } else {
                    "FALSE".into()
                }
            }
            Filter::And(parts) => {
                let inner: Vec<String> = parts.iter().map(|p| p.sql(backend, prefix, under_not, n, args)).collect();
                format!("({})", inner.join(" AND "))
            }
            Filter::Or(parts) => {
                let inner: Vec<String> = parts.iter().map(|p| p.sql(backend, prefix, under_not, n, args)).collect();
                format!("({})", inner.join(" OR "))
            }
            Filter::Not(inner) => format!("(NOT {})", inner.sql(backend, prefix, true, n, args)),
            Filter::Cond(field, op) if under_not => {
                format!("coalesce({}, FALSE)", cond_sql(backend, prefix, field, op, n, args))
            }
            Filter::Cond(field, op) => cond_sql(backend, prefix, field, op, n, args),
        }
    }
}

fn text_matches(got: &str, op: &Op) -> bool {
    match op {
        Op::Exists => true,
        Op::Eq(Operand::Text(v)) => got == v,
        Op::In(vs) => vs.iter().any(|v| matches!(v, Operand::Text(v) if got == v)),
        Op::Contains(s) => got.contains(s.as_str()),
        Op::IContains(s) => got.to_ascii_lowercase().contains(&s.to_ascii_lowercase()),
        _ => false,
    }
}

fn push(n: &mut usize, args: &mut Vec<Arg>, arg: Arg) -> String {
    *n += 1;
    args.push(arg);
    format!("${n}")
}

fn operand_arg(o: &Operand) -> Arg {
    match o {
        Operand::Text(s) => Arg::from(s.as_str()),
        Operand::Number(x) => Arg::Float(Some(*x)),
        Operand::Time(t) => Arg::from(*t),
    }
}

fn cond_sql(backend: Backend, prefix: &str, field: &Field, op: &Op, n: &mut usize, args: &mut Vec<Arg>) -> String {
    // The value the operator looks at, as SQL text (or a time), and for
    // metadata the number form for comparisons.
    let (text, number) = match field {
        Field::Entity(e) => (format!("{prefix}{}", e.column()), None),
        Field::CreatedAt => (format!("{prefix}created_at"), None),
        Field::UpdatedAt => (format!("{prefix}updated_at"), None),
        Field::Metadata(key) => match backend {
            Backend::Postgres => {
                let k = push(n, args, Arg::from(key.as_str()));
                let m = format!("{prefix}metadata");
                (
                    format!(
                        "(CASE WHEN jsonb_typeof({m} -> {k}::text) IN ('string', 'number', 'boolean') \
                         THEN {m} ->> {k}::text END)"
                    ),
                    Some(format!(
                        "(CASE WHEN jsonb_typeof({m} -> {k}::text) = 'number' THEN ({m} ->> {k}::text)::float8 END)"
                    )),
                )
            }
            Backend::Sqlite => {
                let p = push(n, args, Arg::from(format!("$.\"{key}\"")));
                let m = format!("{prefix}metadata");
                (
                    format!(
                        "(CASE json_type({m}, {p}) WHEN 'true' THEN 'true' WHEN 'false' THEN 'false' \
                         WHEN 'text' THEN json_extract({m}, {p}) WHEN 'integer' THEN CAST(json_extract({m}, {p}) AS TEXT) \
                         WHEN 'real' THEN CAST(json_extract({m}, {p}) AS TEXT) END)"
                    ),
                    Some(format!(
                        "(CASE WHEN json_type({m}, {p}) IN ('integer', 'real') THEN json_extract({m}, {p}) END)"
                    )),
                )
            }
        },
    };
    match op {
        Op::Exists => format!("({text} IS NOT NULL)"),
        Op::Eq(v) => format!("({text} = {})", push(n, args, operand_arg(v))),
        Op::In(vs) => {
            if vs.is_empty() {
                return "FALSE".into();
            }
            let list: Vec<String> = vs.iter().map(|v| push(n, args, operand_arg(v))).collect();
            format!("({text} IN ({}))", list.join(", "))
        }
        Op::Compare(cmp, v) => {
            let lhs = match (v, &number) {
                (Operand::Number(_), Some(num)) => num.clone(),
                _ => text,
            };
            let rhs = push(n, args, operand_arg(v));
            let rhs = if backend == Backend::Postgres && matches!(v, Operand::Number(_)) {
                format!("{rhs}::float8")
            } else {
                rhs
            };
            format!("({lhs} {} {rhs})", cmp.sql())
        }
        Op::Contains(s) => match backend {
            Backend::Postgres => format!("(strpos({text}, {}) > 0)", push(n, args, Arg::from(s.as_str()))),
            Backend::Sqlite => format!("(instr({text}, {}) > 0)", push(n, args, Arg::from(s.as_str()))),
        },
        // ASCII case folding on both engines (SQLite's lower() folds ASCII only).
        Op::IContains(s) => {
            let needle = push(n, args, Arg::from(s.to_ascii_lowercase()));
            match backend {
                Backend::Postgres => {
                    format!(
                        "(strpos(translate({text}, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz'), {needle}) > 0)"
                    )
                }
                Backend::Sqlite => format!("(instr(lower({text}), {needle}) > 0)"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(metadata: &Value, user: Option<&'static str>) -> (Map<String, Value>, Option<&'static str>) {
        (metadata.as_object().unwrap().clone(), user)
    }

    fn check(filter: Value, metadata: Value, user: Option<&'static str>) -> bool {
        let f = MemoryFilter::from_json(&filter, "filters").unwrap();
        let (m, u) = row(&metadata, user);
        let t = DateTime::parse_from_rfc3339("2026-03-01T10:00:00Z").unwrap().with_timezone(&Utc);
        f.matches(&Row { metadata: &m, entities: [u, None, None, None], created_at: t, updated_at: t })
    }

    #[test]
    fn grammar_and_meaning() {
        assert!(check(json!({"user_id": "alice"}), json!({}), Some("alice")));
        assert!(!check(json!({"user_id": "alice"}), json!({}), None));
        assert!(check(json!({"user_id": "*"}), json!({}), Some("bob")));
        assert!(check(json!({"NOT": {"user_id": "*"}}), json!({}), None));
        assert!(check(json!({"age": 30}), json!({"age": 30}), None));
        assert!(check(json!({"age": "30"}), json!({"age": 30}), None));
        assert!(check(json!({"age": {"gte": 30, "lt": 31}}), json!({"age": 30}), None));
        assert!(!check(json!({"age": {"gt": 3}}), json!({"age": "30"}), None), "strings never compare as numbers");
        assert!(check(json!({"age": {"ne": 31}}), json!({}), None), "ne matches an absent key");
        assert!(check(json!({"topic": {"nin": ["a", "b"]}}), json!({"topic": "c"}), None));
        assert!(check(json!({"topic": {"in": ["a", "c"]}}), json!({"topic": "c"}), None));
        assert!(check(json!({"note": {"icontains": "HELLO"}}), json!({"note": "say hello"}), None));
        assert!(!check(json!({"note": {"contains": "HELLO"}}), json!({"note": "say hello"}), None));
        assert!(check(json!({"metadata": {"note": "x"}}), json!({"note": "x"}), None));
        assert!(check(json!({"metadata.note": "x"}), json!({"note": "x"}), None));
        assert!(check(json!({"created_at": {"gte": "2026-03-01", "lt": "2026-03-02T00:00:00Z"}}), json!({}), None));
        assert!(!check(json!({"created_at": {"gt": "2026-03-01T10:00:00Z"}}), json!({}), None));
        assert!(check(
            json!({"OR": [{"user_id": "bob"}, {"AND": [{"a": 1}, {"NOT": [{"b": 2}]}]}]}),
            json!({"a": 1, "b": 3}),
            None
        ));
    }

    #[test]
    fn bad_filters_name_their_path() {
        let err = |v: Value| MemoryFilter::from_json(&v, "filters").unwrap_err().0;
        assert!(
            err(json!({"AND": [{}, {"created_at": {"gte": "yesterday"}}]}))
                .starts_with("filters.AND[1].created_at.gte")
        );
        assert!(err(json!({"age": {"between": [1, 2]}})).contains("unknown operator `between`"));
        assert!(err(json!({"user_id": {"gt": "a"}})).starts_with("filters.user_id.gt"));
        assert!(err(json!({"OR": {"a": 1}})).starts_with("filters.OR: expected a list"));
        assert!(err(json!({"a": {"in": "x"}})).starts_with("filters.a.in: expected a list"));
        assert!(err(json!({"a": [1, 2]})).starts_with("filters.a"));
        assert!(err(json!({"a": {}})).contains("at least one operator"));
        assert!(err(json!([1])).starts_with("filters: expected an object"));
        let mut deep = json!({"a": 1});
        for _ in 0..10 {
            deep = json!({"NOT": deep});
        }
        assert!(err(deep).contains("nest at most"));
        let many: Map<String, Value> = (0..70).map(|i| (format!("k{i}"), json!(i))).collect();
        assert!(err(Value::Object(many)).contains("at most 64"));
    }

    #[test]
    fn sql_numbers_parameters_in_order() {
        let f = MemoryFilter::from_json(&json!({"user_id": "alice", "age": {"gt": 3}}), "filters").unwrap();
        let mut n = 2;
        let (sql, args) = f.sql(Backend::Postgres, "", &mut n);
        assert_eq!(n, 5);
        assert_eq!(args.len(), 3);
        assert!(sql.contains("user_id = $5") && sql.contains("$3::text") && sql.contains("> $4::float8"), "{sql}");
        assert_eq!(MemoryFilter::all().sql(Backend::Sqlite, "", &mut n).0, "");
    }
}
