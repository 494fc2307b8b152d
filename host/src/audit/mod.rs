//! The audit log (seed 000 §2.4, seed 003's audit trail): every API call that
//! reached its handler and every operator action, append-only.
//!
//! - Append-only: there is no update or delete path in the code; in both
//!   databases a trigger refuses `UPDATE` and `DELETE` (retention pruning
//!   unlocks deletes of old entries inside its own transaction only).
//! - Tamper-evident: each entry's `hash` is SHA-256 over the previous
//!   entry's hash and the entry's canonical content, so editing, removing or
//!   reordering an entry breaks the chain from there on ([`verify`]).
//! - One chain: writers lock the chain's head row (`audit_head`) for their
//!   transaction, so entries from several instances are ordered, and the
//!   lock is held only for one batch (the metering writer appends a whole
//!   batch of API calls at once).
//! - API calls are not entries of their own: each one's usage event is its
//!   record, and every batch of events is sealed by one chain entry
//!   (`calls.rs`), so a request writes one row, not two.
//! - Never a key, a secret or memory text: API calls record the route
//!   template, not the path; operator actions record ids and settings.

pub mod calls;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::store::Database;
use crate::store::sql::{Row, Tx, sql};

/// The hash before the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Rows per multi-row INSERT at most (well under both engines' bind limits;
/// a power of two: `pow2_chunks`).
const INSERT_CHUNK: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// An API call (seed 000 §2.4's fields).
    ApiCall,
    /// An operator's or a customer's change: orgs, keys, plans, plugins.
    Operator,
    /// The service itself (policy reloads, retention pruning).
    System,
}

impl EntryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::ApiCall => "api_call",
            EntryKind::Operator => "operator",
            EntryKind::System => "system",
        }
    }
    fn parse(s: &str) -> EntryKind {
        match s {
            "api_call" => EntryKind::ApiCall,
            "operator" => EntryKind::Operator,
            _ => EntryKind::System,
        }
    }
}

/// Who did it: `key:<key id>` for the API, `cli` for the command line,
/// `system` for the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor(pub String);

impl Actor {
    pub fn key(key_id: &str) -> Actor {
        Actor(format!("key:{key_id}"))
    }
    pub fn cli() -> Actor {
        let user = std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_default();
        Actor(if user.is_empty() { "cli".into() } else { format!("cli:{user}") })
    }
    pub fn system() -> Actor {
        Actor("system".into())
    }
}

/// An entry to append.
#[derive(Debug, Clone, Default)]
pub struct NewEntry {
    pub occurred_at: Option<DateTime<Utc>>,
    pub kind: Option<EntryKind>,
    pub org_id: Option<String>,
    pub actor: String,
    /// `POST /v1/memories` for an API call; `org.created`, `key.revoked`,
    /// `plugin.activated`, … for an action.
    pub action: String,
    /// What the action was on (an org, key or plugin id).
    pub target: Option<String>,
    pub request_id: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub status: Option<u16>,
    pub processing_us: Option<u64>,
    pub tokens: Option<u64>,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

impl NewEntry {
    /// An operator action on `target`, with what it was before and after.
    pub fn action(
        actor: &Actor,
        org_id: Option<&str>,
        action: &str,
        target: &str,
        before: Option<Value>,
        after: Option<Value>,
    ) -> NewEntry {
        NewEntry {
            kind: Some(EntryKind::Operator),
            org_id: org_id.map(str::to_string),
            actor: actor.0.clone(),
            action: action.to_string(),
            target: Some(target.to_string()),
            before,
            after,
            request_id: crate::api::envelope::current().map(|c| c.request_id.clone()),
            ..NewEntry::default()
        }
    }
}

/// An entry as listed: a chain entry, or an API call read from its usage
/// event (`event_id` set; `seq` is then the entry that seals it, and the
/// call has no hash of its own: the seal's digest covers it).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Entry {
    pub seq: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<uuid::Uuid>,
    pub occurred_at: DateTime<Utc>,
    pub kind: EntryKind,
    pub org_id: Option<String>,
    pub actor: String,
    pub action: String,
    pub target: Option<String>,
    pub request_id: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub status: Option<u16>,
    pub processing_us: Option<u64>,
    pub tokens: Option<u64>,
    #[schema(value_type = Option<Object>)]
    pub before: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub after: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prev_hash: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
}

/// The parts of an entry the hash covers, in a fixed order. JSON values
/// are hashed as the text stored, so a stored entry re-hashes identically.
struct Canonical<'a> {
    seq: i64,
    occurred_at: DateTime<Utc>,
    kind: EntryKind,
    org_id: Option<&'a str>,
    actor: &'a str,
    action: &'a str,
    target: Option<&'a str>,
    request_id: Option<&'a str>,
    ip: Option<&'a str>,
    user_agent: Option<&'a str>,
    status: Option<u16>,
    processing_us: Option<u64>,
    tokens: Option<u64>,
    before: Option<&'a str>,
    after: Option<&'a str>,
}

impl Canonical<'_> {
    fn hash(&self, prev_hash: &str) -> String {
        let line = serde_json::json!([
            self.seq,
            crate::store::sqlite_time(self.occurred_at),
            self.kind.as_str(),
            self.org_id,
            self.actor,
            self.action,
            self.target,
            self.request_id,
            self.ip,
            self.user_agent,
            self.status,
            self.processing_us,
            self.tokens,
            self.before,
            self.after,
        ]);
        let mut h = Sha256::new();
        h.update(prev_hash.as_bytes());
        h.update(b"\n");
        h.update(line.to_string().as_bytes());
        hex::encode(h.finalize())
    }
}

/// The chain's head, locked for the transaction it was read in.
pub struct Head {
    pub seq: i64,
    pub hash: String,
}

/// The statement that locks the chain's head (for [`Database::begin_locking`]).
pub const LOCK_HEAD: &str = "SELECT 1 FROM audit_head WHERE id = 1 FOR UPDATE";

/// Locks the chain's head for this transaction (and with it, every other
/// writer of the audit log and of usage counters: see `metering::writer`).
pub async fn lock_head(tx: &mut Tx) -> sqlx::Result<Head> {
    let row = sql("SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE").fetch_one(&mut *tx).await?;
    Ok(Head { seq: row.get("seq")?, hash: row.get("hash")? })
}

/// Hashes entries into the chain after `head` and moves `head` past them;
/// [`append`] writes them. (The metering writer writes its seal itself, in
/// the statement that writes its batch.)
pub fn chain(head: &mut Head, entries: Vec<NewEntry>) -> Vec<Prepared> {
    let now = crate::metering::micros(Utc::now());
    let mut rows: Vec<Prepared> = Vec::with_capacity(entries.len());
    for e in entries {
        let seq = head.seq + 1;
        let occurred_at = crate::metering::micros(e.occurred_at.unwrap_or(now));
        let kind = e.kind.unwrap_or(EntryKind::Operator);
        let before = e.before.as_ref().map(Value::to_string);
        let after = e.after.as_ref().map(Value::to_string);
        let hash = Canonical {
            seq,
            occurred_at,
            kind,
            org_id: e.org_id.as_deref(),
            actor: &e.actor,
            action: &e.action,
            target: e.target.as_deref(),
            request_id: e.request_id.as_deref(),
            ip: e.ip.as_deref(),
            user_agent: e.user_agent.as_deref(),
            status: e.status,
            processing_us: e.processing_us,
            tokens: e.tokens,
            before: before.as_deref(),
            after: after.as_deref(),
        }
        .hash(&head.hash);
        rows.push((seq, occurred_at, kind, e, before, after, head.hash.clone(), hash.clone()));
        head.seq = seq;
        head.hash = hash;
    }
    rows
}

/// Appends entries after `head` (from [`lock_head`] in the same
/// transaction) and moves the head.
pub async fn append(tx: &mut Tx, head: &mut Head, entries: Vec<NewEntry>) -> sqlx::Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let rows = chain(head, entries);
    if let Some(conn) = tx.pg() {
        insert_pg(conn, &rows).await?;
    } else {
        for chunk in crate::store::sql::pow2_chunks(&rows, INSERT_CHUNK) {
            let mut text = format!("INSERT INTO audit_log ({COLUMNS}) VALUES ");
            text.push_str(&crate::store::sql::value_rows(chunk.len(), 17));
            sqlite_rows(sql(text), chunk).execute(&mut *tx).await?;
        }
    }
    sql("UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1")
        .bind(head.seq)
        .bind(&head.hash)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// The SQLite statement that inserts one prepared entry, with anonymous
/// parameters (for a statement among others in one command; bind with
/// [`sqlite_rows`]).
pub(crate) fn sqlite_insert() -> String {
    format!("INSERT INTO audit_log ({COLUMNS}) VALUES ({})", ["?"; 17].join(", "))
}

/// Binds prepared entries' values, in [`COLUMNS`] order (SQLite).
pub(crate) fn sqlite_rows(mut q: crate::store::sql::Sql, rows: &[Prepared]) -> crate::store::sql::Sql {
    for (seq, at, kind, e, before, after, prev, hash) in rows {
        q = q
            .bind(*seq)
            .bind(*at)
            .bind(kind.as_str())
            .bind(&e.org_id)
            .bind(&e.actor)
            .bind(&e.action)
            .bind(&e.target)
            .bind(&e.request_id)
            .bind(&e.ip)
            .bind(&e.user_agent)
            .bind(e.status.map(i64::from))
            .bind(e.processing_us.map(|v| v as i64))
            .bind(e.tokens.map(|v| v as i64))
            .bind(before)
            .bind(after)
            .bind(prev)
            .bind(hash);
    }
    q
}

/// An entry ready to insert: seq, time, kind, entry, before, after, prev hash, hash.
pub type Prepared = (i64, DateTime<Utc>, EntryKind, NewEntry, Option<String>, Option<String>, String, String);

/// PostgreSQL: the whole batch as arrays in one statement (one round trip,
/// one prepared statement whatever the number of entries).
async fn insert_pg(conn: &mut sqlx::PgConnection, rows: &[Prepared]) -> sqlx::Result<()> {
    let opt = |f: fn(&NewEntry) -> Option<String>| rows.iter().map(|r| f(&r.3)).collect::<Vec<Option<String>>>();
    sqlx::query(
        "INSERT INTO audit_log (seq, occurred_at, kind, org_id, actor, action, target, request_id, ip, user_agent, \
         status, processing_us, tokens, before, after, prev_hash, hash) \
         SELECT * FROM UNNEST($1::int8[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::text[], \
         $7::text[], $8::text[], $9::text[], $10::text[], $11::int4[], $12::int8[], $13::int8[], $14::text[], \
         $15::text[], $16::text[], $17::text[])",
    )
    .bind(rows.iter().map(|r| r.0).collect::<Vec<i64>>())
    .bind(rows.iter().map(|r| r.1).collect::<Vec<DateTime<Utc>>>())
    .bind(rows.iter().map(|r| r.2.as_str().to_string()).collect::<Vec<String>>())
    .bind(opt(|e| e.org_id.clone()))
    .bind(rows.iter().map(|r| r.3.actor.clone()).collect::<Vec<String>>())
    .bind(rows.iter().map(|r| r.3.action.clone()).collect::<Vec<String>>())
    .bind(opt(|e| e.target.clone()))
    .bind(opt(|e| e.request_id.clone()))
    .bind(opt(|e| e.ip.clone()))
    .bind(opt(|e| e.user_agent.clone()))
    .bind(rows.iter().map(|r| r.3.status.map(i32::from)).collect::<Vec<Option<i32>>>())
    .bind(rows.iter().map(|r| r.3.processing_us.map(|v| v as i64)).collect::<Vec<Option<i64>>>())
    .bind(rows.iter().map(|r| r.3.tokens.map(|v| v as i64)).collect::<Vec<Option<i64>>>())
    .bind(rows.iter().map(|r| r.4.clone()).collect::<Vec<Option<String>>>())
    .bind(rows.iter().map(|r| r.5.clone()).collect::<Vec<Option<String>>>())
    .bind(rows.iter().map(|r| r.6.clone()).collect::<Vec<String>>())
    .bind(rows.iter().map(|r| r.7.clone()).collect::<Vec<String>>())
    .execute(conn)
    .await?;
    Ok(())
}

/// Appends entries in a transaction of their own.
pub async fn record(db: &Database, entries: Vec<NewEntry>) -> sqlx::Result<()> {
    let mut tx = db.begin().await?;
    let mut head = lock_head(&mut tx).await?;
    append(&mut tx, &mut head, entries).await?;
    tx.commit().await
}

/// Appends one operator action inside the caller's transaction (so the
/// action and its record commit together).
pub async fn record_in(tx: &mut Tx, entry: NewEntry) -> sqlx::Result<()> {
    let mut head = lock_head(tx).await?;
    append(tx, &mut head, vec![entry]).await
}

const COLUMNS: &str = "seq, occurred_at, kind, org_id, actor, action, target, request_id, ip, user_agent, status, \
                       processing_us, tokens, before, after, prev_hash, hash";

fn entry_from(r: &Row) -> sqlx::Result<Entry> {
    let text = |c: &str| r.get::<Option<String>>(c);
    let json = |c: &str| -> sqlx::Result<Option<Value>> {
        Ok(text(c)?.map(|s| serde_json::from_str(&s).unwrap_or(Value::String(s))))
    };
    Ok(Entry {
        seq: r.get("seq")?,
        event_id: None,
        occurred_at: r.time("occurred_at")?,
        kind: EntryKind::parse(&r.get::<String>("kind")?),
        org_id: text("org_id")?,
        actor: r.get("actor")?,
        action: r.get("action")?,
        target: text("target")?,
        request_id: text("request_id")?,
        ip: text("ip")?,
        user_agent: text("user_agent")?,
        status: r.get::<Option<i32>>("status")?.map(|v| v as u16),
        processing_us: r.get::<Option<i64>>("processing_us")?.map(|v| v.max(0) as u64),
        tokens: r.get::<Option<i64>>("tokens")?.map(|v| v.max(0) as u64),
        before: json("before")?,
        after: json("after")?,
        prev_hash: Some(r.get("prev_hash")?),
        hash: Some(r.get("hash")?),
    })
}

/// Filters for [`list`].
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub org_id: Option<String>,
    pub kind: Option<EntryKind>,
    pub actor: Option<String>,
    pub action: Option<String>,
    pub start: Option<DateTime<Utc>>,
    pub end: Option<DateTime<Utc>>,
    /// Where the previous page ended.
    pub cursor: Cursor,
    pub limit: u32,
}

/// Where a listing resumes: after chain entry `seq`, and after the API call
/// `call` (its seal, its event id). Two positions, because chain entries and
/// API calls are read from their own tables and merged in chain order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cursor {
    pub seq: i64,
    pub call: Option<calls::CallCursor>,
}

impl Cursor {
    /// `seq` or `seq~seal~event id`.
    pub fn encode(&self) -> String {
        match self.call {
            None => self.seq.to_string(),
            Some((seal, id)) => format!("{}~{seal}~{id}", self.seq),
        }
    }

    pub fn parse(s: &str) -> Option<Cursor> {
        let mut parts = s.split('~');
        let seq = parts.next()?.parse().ok()?;
        let call = match (parts.next(), parts.next()) {
            (None, None) => None,
            (Some(seal), Some(id)) => Some((seal.parse().ok()?, uuid::Uuid::parse_str(id).ok()?)),
            _ => return None,
        };
        parts.next().is_none().then_some(Cursor { seq, call })
    }
}

/// A page of [`list`]: entries oldest first, and the cursor of the next page
/// (none on the last).
pub struct Page {
    pub entries: Vec<Entry>,
    pub next: Option<Cursor>,
}

/// Chain entries and API calls in chain order (oldest first), from the
/// cursor on: the calls a seal covers come just before the seal.
pub async fn list(db: &Database, f: &AuditFilter) -> sqlx::Result<Page> {
    let rows = sql(format!(
        "SELECT {COLUMNS} FROM audit_log WHERE ($1::text IS NULL OR org_id = $1) AND ($2::text IS NULL OR kind = $2) \
         AND ($3::text IS NULL OR actor = $3) AND ($4::text IS NULL OR action = $4) \
         AND ($5::timestamptz IS NULL OR occurred_at >= $5) AND ($6::timestamptz IS NULL OR occurred_at < $6) \
         AND seq > $7 ORDER BY seq LIMIT $8"
    ))
    .bind(f.org_id.as_deref())
    .bind(f.kind.map(EntryKind::as_str))
    .bind(f.actor.as_deref())
    .bind(f.action.as_deref())
    .bind(f.start)
    .bind(f.end)
    .bind(f.cursor.seq)
    .bind(f.limit as i64)
    .fetch_all(db.read())
    .await?;
    let chain = rows.iter().map(entry_from).collect::<sqlx::Result<Vec<_>>>()?;
    let api_calls = match f.kind {
        None | Some(EntryKind::ApiCall) => calls::list(db, f, f.cursor.call).await?,
        Some(_) => Vec::new(),
    };
    // Merge the two in chain order (a seal's calls before the seal); each
    // side keeps its own position, so a page boundary never skips or
    // repeats one.
    let (mut chain, mut api_calls) = (chain.into_iter().peekable(), api_calls.into_iter().peekable());
    let mut next = f.cursor;
    let mut entries = Vec::new();
    while entries.len() < f.limit as usize {
        let take_chain = match (chain.peek(), api_calls.peek()) {
            (Some(e), Some((c, _))) => e.seq < c.seq,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        if take_chain {
            let e = chain.next().expect("peeked");
            next.seq = e.seq;
            entries.push(e);
        } else {
            let (e, at) = api_calls.next().expect("peeked");
            next.call = Some(at);
            entries.push(e);
        }
    }
    let next = (entries.len() == f.limit as usize).then_some(next);
    Ok(Page { entries, next })
}

/// What [`verify`] found.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Verification {
    pub ok: bool,
    /// Entries checked.
    pub entries: u64,
    /// API call events checked against their seals (see `calls.rs`).
    pub sealed_calls: u64,
    pub first_seq: Option<i64>,
    pub last_seq: Option<i64>,
    /// The first entry that does not match, and why.
    pub broken_at: Option<i64>,
    pub problem: Option<String>,
}

/// Recomputes the chain from the oldest entry kept (earlier ones may have
/// been pruned by retention: the oldest kept entry's `prev_hash` is taken
/// as given) up to the head.
pub async fn verify(db: &Database) -> sqlx::Result<Verification> {
    let head = sql("SELECT seq, hash FROM audit_head WHERE id = 1").fetch_one(db.read()).await?;
    let (head_seq, head_hash): (i64, String) = (head.get("seq")?, head.get("hash")?);
    let mut v = Verification {
        ok: true,
        entries: 0,
        sealed_calls: 0,
        first_seq: None,
        last_seq: None,
        broken_at: None,
        problem: None,
    };
    let mut prev: Option<(i64, String)> = None;
    let mut after = 0i64;
    let pruned_through = calls::pruned_through_seq(db).await?;
    loop {
        let rows = sql(format!("SELECT {COLUMNS} FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT 5000"))
            .bind(after)
            .fetch_all(db.read())
            .await?;
        if rows.is_empty() {
            break;
        }
        for r in &rows {
            let e = entry_from(r)?;
            let before = r.get::<Option<String>>("before")?;
            let after_text = r.get::<Option<String>>("after")?;
            let (prev_hash, hash): (String, String) = (r.get("prev_hash")?, r.get("hash")?);
            after = e.seq;
            let fail = |v: &mut Verification, why: String| {
                v.ok = false;
                v.broken_at = Some(e.seq);
                v.problem = Some(why);
            };
            if let Some((pseq, phash)) = &prev {
                if e.seq != pseq + 1 {
                    fail(&mut v, format!("entries {} to {} are missing", pseq + 1, e.seq - 1));
                    return Ok(v);
                }
                if &prev_hash != phash {
                    fail(&mut v, "prev_hash does not match the previous entry's hash".into());
                    return Ok(v);
                }
            }
            let expected = Canonical {
                seq: e.seq,
                occurred_at: e.occurred_at,
                kind: e.kind,
                org_id: e.org_id.as_deref(),
                actor: &e.actor,
                action: &e.action,
                target: e.target.as_deref(),
                request_id: e.request_id.as_deref(),
                ip: e.ip.as_deref(),
                user_agent: e.user_agent.as_deref(),
                status: e.status,
                processing_us: e.processing_us,
                tokens: e.tokens,
                before: before.as_deref(),
                after: after_text.as_deref(),
            }
            .hash(&prev_hash);
            if expected != hash {
                fail(&mut v, "the entry's content does not match its hash (edited)".into());
                return Ok(v);
            }
            if e.kind == EntryKind::System && e.action == calls::SEAL_ACTION {
                match calls::check_seal(db, e.seq, after_text.as_deref(), pruned_through).await? {
                    calls::SealCheck::Matches(n) => v.sealed_calls += n,
                    calls::SealCheck::Pruned => {}
                    calls::SealCheck::Broken(why) => {
                        fail(&mut v, why);
                        return Ok(v);
                    }
                }
            }
            v.entries += 1;
            v.first_seq.get_or_insert(e.seq);
            v.last_seq = Some(e.seq);
            prev = Some((e.seq, hash));
        }
    }
    match prev {
        Some((seq, hash)) if seq != head_seq || hash != head_hash => {
            v.ok = false;
            v.broken_at = Some(seq);
            v.problem = Some(format!("the chain ends at {seq} but its head says {head_seq}: entries were removed"));
        }
        None if head_seq != 0 && v.entries == 0 => {
            v.ok = false;
            v.problem = Some(format!("the head says {head_seq} entries were written but none is kept"));
        }
        _ => {}
    }
    Ok(v)
}

/// Deletes entries older than `before` (retention), keeping at least the
/// newest entry so the chain still reaches its head. Returns how many.
pub async fn prune(db: &Database, before: DateTime<Utc>) -> sqlx::Result<u64> {
    let mut tx = db.begin().await?;
    let mut head = lock_head(&mut tx).await?;
    sql("INSERT INTO audit_prune_unlock (id) VALUES (1)").execute(&mut tx).await?;
    let n = sql("DELETE FROM audit_log WHERE occurred_at < $1 AND seq < $2")
        .bind(before)
        .bind(head.seq)
        .execute(&mut tx)
        .await?;
    sql("DELETE FROM audit_prune_unlock").execute(&mut tx).await?;
    if n > 0 {
        let entry = NewEntry {
            kind: Some(EntryKind::System),
            actor: Actor::system().0,
            action: "audit.pruned".into(),
            after: Some(serde_json::json!({ "deleted": n, "older_than": before })),
            ..NewEntry::default()
        };
        append(&mut tx, &mut head, vec![entry]).await?;
    }
    tx.commit().await?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips_and_refuses_what_no_listing_printed() {
        let plain = Cursor { seq: 42, call: None };
        assert_eq!(Cursor::parse(&plain.encode()), Some(plain));
        assert_eq!(Cursor::parse("42"), Some(plain), "a bare sequence number (the older cursor) still works");
        let both = Cursor { seq: 7, call: Some((9, uuid::Uuid::from_u128(99))) };
        assert_eq!(Cursor::parse(&both.encode()), Some(both));
        for bad in ["", "x", "1~2", "1~x~y", "1~2~00000000-0000-0000-0000-000000000063~3"] {
            assert_eq!(Cursor::parse(bad), None, "{bad}");
        }
    }
}
