//! One SQL dialect for both backends: a statement is written once, in
//! PostgreSQL's syntax, with values bound as [`Arg`]s and rows read through
//! [`Row`]. The few differences are handled here, in one place:
//!
//! - placeholders: `$1 … $n` become SQLite's numbered `?1 … ?n`;
//! - casts written `$n::type` or `col::type` are kept for PostgreSQL and
//!   dropped for SQLite (which has no `::` and no types to cast to);
//! - `FOR UPDATE` is dropped for SQLite, whose writers are serialised
//!   (one writer connection), so a row read in a write transaction cannot
//!   change under it;
//! - values: times are `TIMESTAMPTZ` in PostgreSQL and RFC 3339 text in
//!   SQLite, UUIDs `UUID` and text, JSON `JSONB` and text, vectors pgvector's
//!   `vector` (sent as text, hence the `::vector` cast) and a little-endian
//!   `f32` blob.
//!
//! What the engines really do differently (vector search, JSON operators,
//! full-text) stays hand-written per backend in the domain's store module,
//! behind a `match` on [`Backend`].

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::types::Json;
use sqlx::{Postgres, Row as _, Sqlite, TypeInfo, ValueRef};
use uuid::Uuid;

use super::{Database, parse_sqlite_time, safe, sqlite_time};

/// Which engine a [`Database`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// A value bound to a statement.
#[derive(Debug, Clone)]
pub enum Arg {
    Text(Option<String>),
    Int(Option<i64>),
    Float(Option<f64>),
    Bool(Option<bool>),
    Time(Option<DateTime<Utc>>),
    Uuid(Option<Uuid>),
    /// A `JSONB` column in PostgreSQL, text in SQLite. (JSON kept in `TEXT`
    /// columns in both is bound as [`Arg::Text`].)
    Jsonb(Option<serde_json::Value>),
    Bytes(Option<Vec<u8>>),
    /// A pgvector `vector` (write `$n::vector`), a blob in SQLite.
    Vector(Option<Vec<f32>>),
}

impl Arg {
    pub fn jsonb(value: impl serde::Serialize) -> Arg {
        Arg::Jsonb(Some(serde_json::to_value(value).unwrap_or(serde_json::Value::Null)))
    }
}

macro_rules! arg_from {
    ($variant:ident: $($t:ty => $conv:expr),* $(,)?) => {$(
        impl From<$t> for Arg {
            fn from(v: $t) -> Arg {
                #[allow(clippy::redundant_closure_call)]
                Arg::$variant(($conv)(v))
            }
        }
    )*};
}

arg_from!(Text:
    String => Some,
    &String => |v: &String| Some(v.clone()),
    &str => |v: &str| Some(v.to_string()),
    Option<String> => |v| v,
    Option<&str> => |v: Option<&str>| v.map(str::to_string),
    &Option<String> => |v: &Option<String>| v.clone(),
);
arg_from!(Int:
    i64 => Some,
    i32 => |v: i32| Some(v as i64),
    Option<i64> => |v| v,
    Option<i32> => |v: Option<i32>| v.map(i64::from),
    u32 => |v: u32| Some(v as i64),
    // Quantities are u64 in Rust and BIGINT in the database.
    u64 => |v: u64| Some(i64::try_from(v).unwrap_or(i64::MAX)),
);
arg_from!(Bool: bool => Some, Option<bool> => |v| v);
arg_from!(Float: f64 => Some, Option<f64> => |v| v);
arg_from!(Time: DateTime<Utc> => Some, Option<DateTime<Utc>> => |v| v);
arg_from!(Uuid: Uuid => Some, Option<Uuid> => |v| v);
arg_from!(Bytes: Vec<u8> => Some, &[u8] => |v: &[u8]| Some(v.to_vec()));

/// A statement in the shared dialect with its bound values.
#[derive(Debug, Clone)]
pub struct Sql {
    text: Cow<'static, str>,
    args: Vec<Arg>,
}

/// Starts a statement: `sql("SELECT … WHERE id = $1").bind(id)`.
pub fn sql(text: impl Into<Cow<'static, str>>) -> Sql {
    Sql { text: text.into(), args: Vec::new() }
}

/// Where a statement runs.
pub enum On<'c> {
    /// Outside a transaction, on the readers (SQLite's read-only pool).
    Read(&'c Database),
    /// Outside a transaction, on the writer.
    Write(&'c Database),
    Tx(&'c mut Tx),
}

impl<'c> From<&'c mut Tx> for On<'c> {
    fn from(tx: &'c mut Tx) -> On<'c> {
        On::Tx(tx)
    }
}

impl Database {
    /// Reads outside a transaction.
    pub fn read(&self) -> On<'_> {
        On::Read(self)
    }

    /// Writes outside a transaction (each statement commits on its own).
    pub fn write(&self) -> On<'_> {
        On::Write(self)
    }

    pub fn backend(&self) -> Backend {
        match self {
            Database::Sqlite(_) => Backend::Sqlite,
            Database::Postgres(_) => Backend::Postgres,
        }
    }

    /// A write transaction as the service itself (not confined to an org).
    pub async fn begin(&self) -> sqlx::Result<Tx> {
        Ok(Tx(match self {
            Database::Sqlite(s) => TxInner::Sqlite(s.write.begin().await?),
            Database::Postgres(p) => TxInner::Pg(super::begin_pg(p, None).await?),
        }))
    }

    /// A write transaction whose first statement is `lock` (a `SELECT … FOR
    /// UPDATE`): in PostgreSQL sent with `BEGIN` in one message, so the lock
    /// costs no round trip of its own, and every later statement takes its
    /// snapshot after the lock was granted (at READ COMMITTED a statement
    /// that waits for a lock still reads from the snapshot it started with).
    /// In SQLite the transaction begins `IMMEDIATE`: it takes the database's
    /// write lock at once (waiting out another process's writer, such as
    /// the CLI), so its reads cannot go stale before its writes.
    pub async fn begin_locking(&self, lock: &str) -> sqlx::Result<Tx> {
        Ok(Tx(match self {
            Database::Sqlite(s) => TxInner::Sqlite(s.write.begin_with(safe("BEGIN IMMEDIATE")).await?),
            Database::Postgres(p) => TxInner::Pg(super::begin_pg(p, Some(format!("BEGIN; {lock}"))).await?),
        }))
    }

    /// A write transaction confined to one org: in PostgreSQL it runs as the
    /// tenant role with row-level security for `org_id`.
    pub async fn begin_tenant(&self, org_id: &str) -> sqlx::Result<Tx> {
        Ok(Tx(match self {
            Database::Sqlite(s) => TxInner::Sqlite(s.write.begin().await?),
            Database::Postgres(p) => TxInner::Pg(Database::tenant_tx(p, org_id).await?),
        }))
    }

    /// Reads confined to one org: a tenant transaction in PostgreSQL (row-level
    /// security); SQLite's readers, without a transaction (every statement
    /// already filters by org, and embedded mode has no other tenants' roles).
    pub async fn tenant_reads(&self, org_id: &str) -> sqlx::Result<Tx> {
        Ok(Tx(match self {
            Database::Sqlite(s) => TxInner::SqliteRead(s.read.clone()),
            Database::Postgres(p) => TxInner::Pg(Database::tenant_tx(p, org_id).await?),
        }))
    }
}

impl Database {
    /// Reads as the service itself, outside row-level security, read-only:
    /// only for a statement whose own `WHERE org_id = …` confines it and
    /// which row-level security would make slow (see the full-text search
    /// in `memories::store`). SQLite: the read pool, as `tenant_reads`.
    pub async fn service_reads(&self) -> sqlx::Result<Tx> {
        Ok(Tx(match self {
            Database::Sqlite(s) => TxInner::SqliteRead(s.read.clone()),
            Database::Postgres(p) => TxInner::Pg(super::begin_pg(p, Some("BEGIN READ ONLY".into())).await?),
        }))
    }
}

/// A transaction (or, for SQLite tenant reads, the read pool). Dropped
/// without [`Tx::commit`], it rolls back.
pub struct Tx(TxInner);

enum TxInner {
    SqliteRead(sqlx::SqlitePool),
    Sqlite(sqlx::Transaction<'static, Sqlite>),
    Pg(sqlx::Transaction<'static, Postgres>),
}

impl Tx {
    pub async fn commit(self) -> sqlx::Result<()> {
        match self.0 {
            TxInner::SqliteRead(_) => Ok(()),
            TxInner::Sqlite(tx) => tx.commit().await,
            TxInner::Pg(tx) => tx.commit().await,
        }
    }

    pub fn backend(&self) -> Backend {
        match self.0 {
            TxInner::SqliteRead(_) | TxInner::Sqlite(_) => Backend::Sqlite,
            TxInner::Pg(_) => Backend::Postgres,
        }
    }

    /// The PostgreSQL connection under this transaction, for the few
    /// statements written per backend because the engines differ (bulk
    /// inserts of arrays with `UNNEST`); `None` on SQLite.
    pub fn pg(&mut self) -> Option<&mut sqlx::PgConnection> {
        match &mut self.0 {
            TxInner::Pg(t) => Some(&mut **t),
            _ => None,
        }
    }

    /// Tells the other instances that something on `channel` changed,
    /// delivered when this transaction commits (PostgreSQL NOTIFY). Embedded
    /// mode has one instance, so there is nobody to tell.
    pub async fn notify(&mut self, channel: &str, payload: &str) -> sqlx::Result<()> {
        if self.backend() == Backend::Postgres {
            sql("SELECT pg_notify($1, $2)").bind(channel).bind(payload).execute(&mut *self).await?;
        }
        Ok(())
    }
}

impl Sql {
    pub fn bind(mut self, value: impl Into<Arg>) -> Sql {
        self.args.push(value.into());
        self
    }

    /// The statement text as SQLite reads it (see the module docs).
    pub fn sqlite_text(&self) -> String {
        to_sqlite(&self.text)
    }

    fn sqlite(&self) -> sqlx::query::Query<'_, Sqlite, sqlx::sqlite::SqliteArguments> {
        let mut q = sqlx::query(safe(self.sqlite_text()));
        for a in &self.args {
            q = match a {
                Arg::Text(v) => q.bind(v.as_deref()),
                Arg::Int(v) => q.bind(*v),
                Arg::Float(v) => q.bind(*v),
                Arg::Bool(v) => q.bind(*v),
                Arg::Time(v) => q.bind(v.map(sqlite_time)),
                Arg::Uuid(v) => q.bind(v.map(|u| u.to_string())),
                Arg::Jsonb(v) => q.bind(v.as_ref().map(|j| j.to_string())),
                Arg::Bytes(v) => q.bind(v.as_deref()),
                Arg::Vector(v) => q.bind(v.as_deref().map(vector_blob)),
            };
        }
        q
    }

    fn pg(&self) -> sqlx::query::Query<'_, Postgres, sqlx::postgres::PgArguments> {
        let mut q = sqlx::query(safe(self.text.to_string()));
        for a in &self.args {
            q = match a {
                Arg::Text(v) => q.bind(v.as_deref()),
                Arg::Int(v) => q.bind(*v),
                Arg::Float(v) => q.bind(*v),
                Arg::Bool(v) => q.bind(*v),
                Arg::Time(v) => q.bind(*v),
                Arg::Uuid(v) => q.bind(*v),
                Arg::Jsonb(v) => q.bind(v.as_ref().map(Json)),
                Arg::Bytes(v) => q.bind(v.as_deref()),
                Arg::Vector(v) => q.bind(v.as_deref().map(vector_text)),
            };
        }
        q
    }

    /// Runs the statement; returns the rows it affected.
    pub async fn execute<'c>(self, on: impl Into<On<'c>>) -> sqlx::Result<u64> {
        Ok(match on.into() {
            On::Read(Database::Sqlite(s)) => self.sqlite().execute(&s.read).await?.rows_affected(),
            On::Write(Database::Sqlite(s)) => self.sqlite().execute(&s.write).await?.rows_affected(),
            On::Read(Database::Postgres(p)) | On::Write(Database::Postgres(p)) => {
                self.pg().execute(p).await?.rows_affected()
            }
            On::Tx(tx) => match &mut tx.0 {
                TxInner::SqliteRead(pool) => self.sqlite().execute(&*pool).await?.rows_affected(),
                TxInner::Sqlite(t) => self.sqlite().execute(&mut **t).await?.rows_affected(),
                TxInner::Pg(t) => self.pg().execute(&mut **t).await?.rows_affected(),
            },
        })
    }

    pub async fn fetch_all<'c>(self, on: impl Into<On<'c>>) -> sqlx::Result<Vec<Row>> {
        Ok(match on.into() {
            On::Read(Database::Sqlite(s)) => wrap(self.sqlite().fetch_all(&s.read).await?),
            On::Write(Database::Sqlite(s)) => wrap(self.sqlite().fetch_all(&s.write).await?),
            On::Read(Database::Postgres(p)) | On::Write(Database::Postgres(p)) => wrap(self.pg().fetch_all(p).await?),
            On::Tx(tx) => match &mut tx.0 {
                TxInner::SqliteRead(pool) => wrap(self.sqlite().fetch_all(&*pool).await?),
                TxInner::Sqlite(t) => wrap(self.sqlite().fetch_all(&mut **t).await?),
                TxInner::Pg(t) => wrap(self.pg().fetch_all(&mut **t).await?),
            },
        })
    }

    pub async fn fetch_optional<'c>(self, on: impl Into<On<'c>>) -> sqlx::Result<Option<Row>> {
        Ok(match on.into() {
            On::Read(Database::Sqlite(s)) => self.sqlite().fetch_optional(&s.read).await?.map(Row::Sqlite),
            On::Write(Database::Sqlite(s)) => self.sqlite().fetch_optional(&s.write).await?.map(Row::Sqlite),
            On::Read(Database::Postgres(p)) | On::Write(Database::Postgres(p)) => {
                self.pg().fetch_optional(p).await?.map(Row::Pg)
            }
            On::Tx(tx) => match &mut tx.0 {
                TxInner::SqliteRead(pool) => self.sqlite().fetch_optional(&*pool).await?.map(Row::Sqlite),
                TxInner::Sqlite(t) => self.sqlite().fetch_optional(&mut **t).await?.map(Row::Sqlite),
                TxInner::Pg(t) => self.pg().fetch_optional(&mut **t).await?.map(Row::Pg),
            },
        })
    }

    pub async fn fetch_one<'c>(self, on: impl Into<On<'c>>) -> sqlx::Result<Row> {
        self.fetch_optional(on).await?.ok_or(sqlx::Error::RowNotFound)
    }

    /// Streams the rows to `each` (for results too large to hold at once),
    /// on the readers.
    pub async fn for_each(self, db: &Database, mut each: impl FnMut(Row) -> sqlx::Result<()>) -> sqlx::Result<()> {
        use futures_util::TryStreamExt;
        match db {
            Database::Sqlite(s) => {
                let mut rows = self.sqlite().fetch(&s.read);
                while let Some(r) = rows.try_next().await? {
                    each(Row::Sqlite(r))?;
                }
            }
            Database::Postgres(p) => {
                let mut rows = self.pg().fetch(p);
                while let Some(r) = rows.try_next().await? {
                    each(Row::Pg(r))?;
                }
            }
        }
        Ok(())
    }
}

fn wrap<R>(rows: Vec<R>) -> Vec<Row>
where
    Row: From<R>,
{
    rows.into_iter().map(Row::from).collect()
}

/// A result row of either backend.
pub enum Row {
    Sqlite(SqliteRow),
    Pg(PgRow),
}

impl From<SqliteRow> for Row {
    fn from(r: SqliteRow) -> Row {
        Row::Sqlite(r)
    }
}

impl From<PgRow> for Row {
    fn from(r: PgRow) -> Row {
        Row::Pg(r)
    }
}

/// Types both backends decode the same way (text, integers, booleans, blobs).
pub trait Plain:
    for<'r> sqlx::Decode<'r, Sqlite> + sqlx::Type<Sqlite> + for<'r> sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>
{
}
impl<T> Plain for T where
    T: for<'r> sqlx::Decode<'r, Sqlite>
        + sqlx::Type<Sqlite>
        + for<'r> sqlx::Decode<'r, Postgres>
        + sqlx::Type<Postgres>
{
}

impl Row {
    /// A column whose type reads the same in both (text, i64, i32, bool, bytes).
    pub fn get<T: Plain>(&self, col: &str) -> sqlx::Result<T> {
        match self {
            Row::Sqlite(r) => r.try_get(col),
            Row::Pg(r) => r.try_get(col),
        }
    }

    /// A non-negative quantity kept as BIGINT.
    pub fn quantity(&self, col: &str) -> sqlx::Result<u64> {
        Ok(self.get::<i64>(col)?.max(0) as u64)
    }

    pub fn time(&self, col: &str) -> sqlx::Result<DateTime<Utc>> {
        match self {
            Row::Sqlite(r) => parse_sqlite_time(r.try_get::<&str, _>(col)?),
            Row::Pg(r) => r.try_get(col),
        }
    }

    pub fn opt_time(&self, col: &str) -> sqlx::Result<Option<DateTime<Utc>>> {
        match self {
            Row::Sqlite(r) => r.try_get::<Option<&str>, _>(col)?.map(parse_sqlite_time).transpose(),
            Row::Pg(r) => r.try_get(col),
        }
    }

    pub fn uuid(&self, col: &str) -> sqlx::Result<Uuid> {
        match self {
            Row::Sqlite(r) => parse_uuid(r.try_get::<&str, _>(col)?),
            Row::Pg(r) => r.try_get(col),
        }
    }

    /// UUIDs joined by commas in a text column (`string_agg`); NULL is none.
    pub fn uuid_list(&self, col: &str) -> sqlx::Result<Vec<Uuid>> {
        let text: Option<String> = self.get(col)?;
        text.iter().flat_map(|t| t.split(',')).filter(|t| !t.is_empty()).map(parse_uuid).collect()
    }

    /// A UUID column, as text (ids some tables keep as UUID in PostgreSQL).
    pub fn uuid_text(&self, col: &str) -> sqlx::Result<String> {
        Ok(self.uuid(col)?.to_string())
    }

    /// A JSON value from a `JSONB` column or from JSON kept as text.
    pub fn json<T: DeserializeOwned>(&self, col: &str) -> sqlx::Result<T> {
        self.opt_json(col)?
            .ok_or_else(|| sqlx::Error::ColumnDecode { index: col.to_string(), source: "unexpected NULL".into() })
    }

    pub fn opt_json<T: DeserializeOwned>(&self, col: &str) -> sqlx::Result<Option<T>> {
        match self {
            Row::Sqlite(r) => r.try_get::<Option<&str>, _>(col)?.map(|s| decode_json(col, s)).transpose(),
            Row::Pg(r) => {
                let raw = r.try_get_raw(col)?;
                let is_json = matches!(raw.type_info().name(), "JSONB" | "JSON");
                if raw.is_null() {
                    Ok(None)
                } else if is_json {
                    Ok(Some(r.try_get::<Json<T>, _>(col)?.0))
                } else {
                    decode_json(col, r.try_get::<&str, _>(col)?).map(Some)
                }
            }
        }
    }

    /// A vector column written as [`Arg::Vector`]. PostgreSQL must select it
    /// as text (`embedding::text`).
    pub fn vector(&self, col: &str) -> sqlx::Result<Vec<f32>> {
        match self {
            Row::Sqlite(r) => Ok(blob_vector(r.try_get::<&[u8], _>(col)?)),
            Row::Pg(r) => parse_vector_text(col, r.try_get::<&str, _>(col)?),
        }
    }
}

fn decode_json<T: DeserializeOwned>(col: &str, s: &str) -> sqlx::Result<T> {
    serde_json::from_str(s).map_err(|e| sqlx::Error::ColumnDecode { index: col.to_string(), source: e.into() })
}

fn parse_uuid(s: &str) -> sqlx::Result<Uuid> {
    Uuid::parse_str(s).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

/// Splits `rows` for multi-row statements into chunks whose lengths are
/// powers of two (at most `max`, itself a power of two): a batch of any size
/// then uses one of a few statement texts, each prepared once per
/// connection and reused. (A text per batch size meant a fresh prepare of a
/// statement with hundreds of parameters nearly every time: on PostgreSQL
/// up to 50 ms for one insert.)
pub fn pow2_chunks<T>(mut rows: &[T], max: usize) -> impl Iterator<Item = &[T]> {
    debug_assert!(max.is_power_of_two());
    std::iter::from_fn(move || {
        if rows.is_empty() {
            return None;
        }
        let n = if rows.len() >= max { max } else { 1 << (usize::BITS - 1 - rows.len().leading_zeros()) };
        let (head, tail) = rows.split_at(n);
        rows = tail;
        Some(head)
    })
}

/// The `VALUES` list of a multi-row INSERT: `($1, $2), ($3, $4)` for 2 rows
/// of 2 columns.
pub fn value_rows(rows: usize, cols: usize) -> String {
    let mut out = String::with_capacity(rows * cols * 6);
    for r in 0..rows {
        out.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..cols {
            if c > 0 {
                out.push_str(", ");
            }
            out.push('$');
            out.push_str(&(r * cols + c + 1).to_string());
        }
        out.push(')');
    }
    out
}

/// A timestamp column's UTC day as `YYYY-MM-DD` text.
pub fn utc_day(backend: Backend, column: &str) -> String {
    match backend {
        Backend::Postgres => format!("to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD')"),
        // Stored as RFC 3339 UTC text.
        Backend::Sqlite => format!("substr({column}, 1, 10)"),
    }
}

/// A timestamp column as whole seconds since the epoch, rounded down to a
/// multiple of `step_secs` (buckets of a time series; UTC days and hours
/// are such multiples).
pub fn epoch_bucket(backend: Backend, column: &str, step_secs: u64) -> String {
    let step = step_secs.max(1);
    match backend {
        Backend::Postgres => format!("(floor(extract(epoch from {column}) / {step}) * {step})::bigint"),
        Backend::Sqlite => format!("((CAST(strftime('%s', {column}) AS INTEGER) / {step}) * {step})"),
    }
}

/// A JSON object column's member as text: `tags->>'team'` in PostgreSQL,
/// `json_extract(tags, '$."team"')` in SQLite. `key` must be a checked name
/// (letters, digits, `_`, `-`): it is written into the statement.
pub fn json_text(backend: Backend, column: &str, key: &str) -> String {
    debug_assert!(key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'));
    match backend {
        Backend::Postgres => format!("({column}->>'{key}')"),
        Backend::Sqlite => format!("json_extract({column}, '$.\"{key}\"')"),
    }
}

/// `$n` ─▶ `?n`, `::type` casts and `FOR UPDATE [SKIP LOCKED]` dropped, `GREATEST(` ─▶
/// `MAX(` (SQLite's scalar max), outside quotes.
pub fn to_sqlite(pg: &str) -> String {
    let mut out = String::with_capacity(pg.len());
    let mut chars = pg.char_indices().peekable();
    let mut quoted = false;
    while let Some((i, c)) = chars.next() {
        if c == '\'' {
            quoted = !quoted;
            out.push(c);
            continue;
        }
        if quoted {
            out.push(c);
            continue;
        }
        match c {
            '$' if chars.peek().is_some_and(|(_, d)| d.is_ascii_digit()) => out.push('?'),
            ':' if chars.peek().is_some_and(|(_, d)| *d == ':') => {
                chars.next();
                while chars.peek().is_some_and(|(_, d)| d.is_ascii_alphanumeric() || *d == '_') {
                    chars.next();
                }
            }
            ' ' if pg[i..].starts_with(" FOR UPDATE") => {
                let clause = if pg[i..].starts_with(" FOR UPDATE SKIP LOCKED") {
                    " FOR UPDATE SKIP LOCKED"
                } else {
                    " FOR UPDATE"
                };
                for _ in 0..clause.len() - 1 {
                    chars.next();
                }
            }
            'G' if pg[i..].starts_with("GREATEST(") => {
                out.push_str("MAX(");
                for _ in 0.."GREATEST(".len() - 1 {
                    chars.next();
                }
            }
            _ => out.push(c),
        }
    }
    out
}

fn vector_blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn blob_vector(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// pgvector's text form: `[0.1,0.2,…]`.
fn vector_text(v: &[f32]) -> String {
    let mut s = String::with_capacity(v.len() * 10 + 2);
    s.push('[');
    for (i, x) in v.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&x.to_string());
    }
    s.push(']');
    s
}

fn parse_vector_text(col: &str, s: &str) -> sqlx::Result<Vec<f32>> {
    s.trim_matches(['[', ']'])
        .split(',')
        .filter(|p| !p.is_empty())
        .map(|p| p.trim().parse::<f32>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| sqlx::Error::ColumnDecode { index: col.to_string(), source: e.into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_read_as_sqlite() {
        assert_eq!(
            to_sqlite("SELECT a FROM t WHERE ($1::text IS NULL OR k = $1) AND v = $12::vector FOR UPDATE"),
            "SELECT a FROM t WHERE (?1 IS NULL OR k = ?1) AND v = ?12"
        );
        assert_eq!(to_sqlite("SELECT '$1::x FOR UPDATE' WHERE a = $2"), "SELECT '$1::x FOR UPDATE' WHERE a = ?2");
        assert_eq!(to_sqlite("SELECT a FROM t LIMIT 1 FOR UPDATE SKIP LOCKED"), "SELECT a FROM t LIMIT 1");
        assert_eq!(to_sqlite("SET q = GREATEST(q, excluded.q)"), "SET q = MAX(q, excluded.q)");
        assert_eq!(value_rows(2, 2), "($1, $2), ($3, $4)");
        let sizes: Vec<usize> = pow2_chunks(&[0u8; 1000], 256).map(<[u8]>::len).collect();
        assert_eq!(sizes, [256, 256, 256, 128, 64, 32, 8]);
        assert_eq!(pow2_chunks(&[0u8; 0], 256).count(), 0);
    }

    #[test]
    fn vectors_round_trip() {
        let v = vec![0.25f32, -1.5, 3.0];
        assert_eq!(blob_vector(&vector_blob(&v)), v);
        assert_eq!(parse_vector_text("e", &vector_text(&v)).unwrap(), v);
    }
}
