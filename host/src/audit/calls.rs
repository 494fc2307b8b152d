//! API calls in the audit log. An authenticated request's usage event *is*
//! its audit record: the event row has every field seed 000 §2.4 asks of an
//! API call (time, org, key, endpoint, client address, user agent, request
//! id, status, processing time, tokens), so the call is written once, not
//! as an event and again as an entry.
//!
//! Tamper evidence is kept by sealing: the metering writer appends one
//! chain entry per batch (action [`SEAL_ACTION`]) whose `after` holds the
//! number of events and a SHA-256 digest over each event's whole content in
//! id order, and stamps the batch's events with that entry's `seq`
//! (`usage_events.audit_seq`). [`super::verify`] recomputes every seal's
//! digest: an event edited, removed or added under a seal breaks it, as an
//! edited entry breaks the chain. Retention removes whole seals' events
//! only, and says so in the chain ([`PRUNED_ACTION`]).

use chrono::{DateTime, Utc};
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{AuditFilter, Entry, EntryKind};
use crate::store::Database;
use crate::store::sql::{Row, sql};

/// The chain entry that seals a batch of API calls' events.
pub const SEAL_ACTION: &str = "usage.sealed";
/// The chain entry retention appends after deleting sealed events:
/// `after.through_seq` is the last seal whose events are gone.
pub const PRUNED_ACTION: &str = "usage.pruned";

/// The event columns in [`CallRecord::numbers`], in order.
pub const NUMBER_COLUMNS: [&str; 11] = [
    "tokens_in",
    "tokens_out",
    "memories_read",
    "memories_created",
    "memories_updated",
    "memories_deleted",
    "memories_stored",
    "embeddings_generated",
    "model_calls",
    "cost_micros",
    "processing_us",
];

/// One event's content, as the seal digest covers it (every column but
/// `audit_seq`, which the seal's own position in the chain fixes).
#[derive(Debug, Clone)]
pub struct CallRecord {
    pub id: Uuid,
    pub org_id: String,
    pub environment: String,
    pub key_id: String,
    pub occurred_at: DateTime<Utc>,
    pub method: String,
    pub route: String,
    pub status: i64,
    pub billable: bool,
    /// The event's counts, in the order of [`NUMBER_COLUMNS`].
    pub numbers: [i64; 11],
    pub model: Option<String>,
    pub request_id: String,
    /// The tags and quantities as JSON values (hashed with sorted keys, so
    /// the text a database hands back hashes the same).
    pub tags: Value,
    pub quantities: Value,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

impl CallRecord {
    fn line(&self) -> String {
        serde_json::json!([
            self.id.to_string(),
            self.org_id,
            self.environment,
            self.key_id,
            crate::store::sqlite_time(self.occurred_at),
            self.method,
            self.route,
            self.status,
            self.billable,
            self.numbers,
            self.model,
            self.request_id,
            canonical(&self.tags),
            canonical(&self.quantities),
            self.ip,
            self.user_agent,
        ])
        .to_string()
    }

    /// The columns [`CallRecord::from_row`] reads.
    const COLUMNS: &'static str = "id, org_id, environment, key_id, occurred_at, method, route, status, billable, \
        tokens_in, tokens_out, memories_read, memories_created, memories_updated, memories_deleted, memories_stored, \
        embeddings_generated, model_calls, cost_micros, processing_us, model, request_id, tags, quantities, ip, \
        user_agent, audit_seq";

    fn from_row(r: &Row) -> sqlx::Result<CallRecord> {
        let mut numbers = [0i64; 11];
        for (slot, col) in numbers.iter_mut().zip(NUMBER_COLUMNS) {
            *slot = r.get::<i64>(col)?;
        }
        Ok(CallRecord {
            id: r.uuid("id")?,
            org_id: r.get("org_id")?,
            environment: r.get("environment")?,
            key_id: r.get("key_id")?,
            occurred_at: r.time("occurred_at")?,
            method: r.get("method")?,
            route: r.get("route")?,
            status: r.get::<i64>("status").or_else(|_| r.get::<i32>("status").map(i64::from))?,
            billable: r.get("billable")?,
            numbers,
            model: r.get("model")?,
            request_id: r.get("request_id")?,
            tags: r.json("tags")?,
            quantities: r.json("quantities")?,
            ip: r.get("ip")?,
            user_agent: r.get("user_agent")?,
        })
    }
}

/// A JSON value with every object's keys sorted, whatever map type
/// serde_json was built with (a database may hand keys back in its order).
fn canonical(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let sorted: std::collections::BTreeMap<&String, Value> = m.iter().map(|(k, v)| (k, canonical(v))).collect();
            serde_json::to_value(sorted).unwrap_or(Value::Null)
        }
        Value::Array(a) => Value::Array(a.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

/// The digest a seal records: SHA-256 over the records' lines in id order.
pub fn digest(records: &mut [CallRecord]) -> String {
    records.sort_by_key(|r| r.id);
    let mut h = Sha256::new();
    for r in records.iter() {
        h.update(r.line().as_bytes());
        h.update(b"\n");
    }
    hex::encode(h.finalize())
}

/// What a seal entry's `after` holds.
pub fn seal_details(events: usize, digest: &str) -> Value {
    serde_json::json!({ "events": events, "digest": digest })
}

/// What checking one seal found.
pub(super) enum SealCheck {
    /// Its events match: this many.
    Matches(u64),
    /// Retention removes this seal's events: not checked.
    Pruned,
    Broken(String),
}

/// Checks the events under the seal `seq` against its `after`. Seals up to
/// `pruned_through` are not checked (retention removes their events); a
/// mismatch is looked at again against a fresh `pruned_through`, in case a
/// retention pass ran while the chain was being verified.
pub(super) async fn check_seal(
    db: &Database,
    seq: i64,
    after: Option<&str>,
    pruned_through: i64,
) -> sqlx::Result<SealCheck> {
    let details: Value = after.and_then(|a| serde_json::from_str(a).ok()).unwrap_or(Value::Null);
    let (Some(expected_n), Some(expected)) = (details["events"].as_u64(), details["digest"].as_str()) else {
        return Ok(SealCheck::Broken("the seal has no event count and digest".into()));
    };
    if seq <= pruned_through {
        return Ok(SealCheck::Pruned);
    }
    let rows = sql(format!("SELECT {} FROM usage_events WHERE audit_seq = $1", CallRecord::COLUMNS))
        .bind(seq)
        .fetch_all(db.read())
        .await?;
    let mut records = rows.iter().map(CallRecord::from_row).collect::<sqlx::Result<Vec<_>>>()?;
    let problem = if records.len() as u64 != expected_n {
        format!("the seal covers {expected_n} API call events but {} carry it (removed or added)", records.len())
    } else if digest(&mut records) != expected {
        "an API call event under this seal was edited".to_string()
    } else {
        return Ok(SealCheck::Matches(expected_n));
    };
    if seq <= pruned_through_seq(db).await? {
        return Ok(SealCheck::Pruned);
    }
    Ok(SealCheck::Broken(problem))
}

/// Deletes the events older than `before` (retention), whole seals at a
/// time: the events of every seal written before `before` (a seal is
/// written after its events, on the same instance's clock, so all of them
/// are older). The chain says so first ([`PRUNED_ACTION`]), so a pass cut
/// short still verifies. Events whose seal retention already removed from
/// the chain, and events from before sealing (no `audit_seq`), go by their
/// own time. In slices, each its own transaction, so metering is never held
/// up long.
pub async fn prune_events(db: &Database, before: DateTime<Utc>) -> sqlx::Result<u64> {
    let bounds = sql("SELECT (SELECT MAX(seq) FROM audit_log WHERE action = $1 AND occurred_at < $2) AS through, \
         (SELECT MIN(seq) FROM audit_log) AS first_kept")
    .bind(SEAL_ACTION)
    .bind(before)
    .fetch_one(db.read())
    .await?;
    let through = bounds.get::<Option<i64>>("through")?.unwrap_or(0);
    let first_kept = bounds.get::<Option<i64>>("first_kept")?.unwrap_or(i64::MAX);
    if through > pruned_through_seq(db).await? {
        let entry = super::NewEntry {
            kind: Some(EntryKind::System),
            actor: super::Actor::system().0,
            action: PRUNED_ACTION.into(),
            after: Some(serde_json::json!({ "through_seq": through, "older_than": before })),
            ..super::NewEntry::default()
        };
        super::record(db, vec![entry]).await?;
    }
    let mut deleted = 0;
    for part in 0..3 {
        loop {
            let slice = match part {
                0 => sql(
                    "DELETE FROM usage_events WHERE id IN (SELECT id FROM usage_events WHERE audit_seq <= $1 LIMIT 5000)",
                )
                .bind(through),
                1 => sql(
                    "DELETE FROM usage_events WHERE id IN (SELECT id FROM usage_events \
                     WHERE audit_seq < $1 AND occurred_at < $2 LIMIT 5000)",
                )
                .bind(first_kept)
                .bind(before),
                _ => sql(
                    "DELETE FROM usage_events WHERE id IN \
                     (SELECT id FROM usage_events WHERE audit_seq IS NULL AND occurred_at < $1 LIMIT 5000)",
                )
                .bind(before),
            };
            let mut tx = db.begin().await?;
            sql("INSERT INTO audit_prune_unlock (id) VALUES (1)").execute(&mut tx).await?;
            let n = slice.execute(&mut tx).await?;
            sql("DELETE FROM audit_prune_unlock").execute(&mut tx).await?;
            tx.commit().await?;
            deleted += n;
            if n < 5000 {
                break;
            }
        }
    }
    Ok(deleted)
}

/// The last seal whose events retention removes (0: none).
/// A retention entry covers only seals before itself.
pub(super) async fn pruned_through_seq(db: &Database) -> sqlx::Result<i64> {
    let row = sql("SELECT seq, after FROM audit_log WHERE action = $1 ORDER BY seq DESC LIMIT 1")
        .bind(PRUNED_ACTION)
        .fetch_optional(db.read())
        .await?;
    let Some(row) = row else { return Ok(0) };
    let (seq, after): (i64, Option<String>) = (row.get("seq")?, row.get("after")?);
    let through =
        after.and_then(|a| serde_json::from_str::<Value>(&a).ok()).and_then(|a| a["through_seq"].as_i64()).unwrap_or(0);
    Ok(through.min(seq - 1))
}

/// Where a listing of API calls resumes: after this event (its seal, its id).
pub type CallCursor = (i64, Uuid);

/// API calls (sealed events) matching the filter, in chain order (by seal,
/// then id), after the cursor. Seals are numbered under the chain's lock in
/// commit order, so a call never appears behind a cursor already past it
/// (a request's own time would not promise that). A filter no call can match (an actor that is not a key, an
/// action that is not `METHOD /route`) returns none without a query.
pub(super) async fn list(
    db: &Database,
    f: &AuditFilter,
    after: Option<CallCursor>,
) -> sqlx::Result<Vec<(Entry, CallCursor)>> {
    let key_id = match f.actor.as_deref() {
        None => None,
        Some(a) => match a.strip_prefix("key:") {
            Some(k) => Some(k),
            None => return Ok(Vec::new()),
        },
    };
    let (method, route) = match f.action.as_deref() {
        None => (None, None),
        Some(a) => match a.split_once(' ') {
            Some((m, r)) => (Some(m), Some(r)),
            None => return Ok(Vec::new()),
        },
    };
    let rows = sql(format!(
        "SELECT {} FROM usage_events WHERE audit_seq IS NOT NULL AND ($1::text IS NULL OR org_id = $1) \
         AND ($2::text IS NULL OR key_id = $2) AND ($3::text IS NULL OR method = $3) AND ($4::text IS NULL OR route = $4) \
         AND ($5::timestamptz IS NULL OR occurred_at >= $5) AND ($6::timestamptz IS NULL OR occurred_at < $6) \
         AND (audit_seq > $7 OR (audit_seq = $7 AND id > $8)) ORDER BY audit_seq, id LIMIT $9",
        CallRecord::COLUMNS
    ))
    .bind(f.org_id.as_deref())
    .bind(key_id)
    .bind(method)
    .bind(route)
    .bind(f.start)
    .bind(f.end)
    .bind(after.map_or(0, |a| a.0))
    .bind(after.map_or_else(Uuid::nil, |a| a.1))
    .bind(f.limit as i64)
    .fetch_all(db.read())
    .await?;
    rows.iter()
        .map(|r| {
            let c = CallRecord::from_row(r)?;
            let seal: i64 = r.get("audit_seq")?;
            let [tokens_in, tokens_out, .., processing_us] = c.numbers;
            let entry = Entry {
                seq: seal,
                event_id: Some(c.id),
                occurred_at: c.occurred_at,
                kind: EntryKind::ApiCall,
                org_id: Some(c.org_id),
                actor: format!("key:{}", c.key_id),
                action: format!("{} {}", c.method, c.route),
                target: None,
                request_id: Some(c.request_id),
                ip: c.ip,
                user_agent: c.user_agent,
                status: Some(c.status.clamp(0, u16::MAX as i64) as u16),
                processing_us: Some(processing_us.max(0) as u64),
                tokens: Some(tokens_in.saturating_add(tokens_out).max(0) as u64),
                before: None,
                after: None,
                prev_hash: None,
                hash: None,
            };
            Ok((entry, (seal, c.id)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: u128, tags: Value) -> CallRecord {
        CallRecord {
            id: Uuid::from_u128(id),
            org_id: "org_a".into(),
            environment: "live".into(),
            key_id: "key_a".into(),
            occurred_at: DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
            method: "GET".into(),
            route: "/v1/memories/{id}".into(),
            status: 200,
            billable: true,
            numbers: [1, 2, 3, 0, 0, 0, 9, 0, 0, 0, 250],
            model: None,
            request_id: "req_1".into(),
            tags,
            quantities: serde_json::json!({}),
            ip: Some("127.0.0.1".into()),
            user_agent: None,
        }
    }

    #[test]
    fn the_digest_ignores_order_and_json_key_order_but_not_content() {
        let a = record(1, serde_json::json!({"team": "x", "app": "y"}));
        let b = record(2, serde_json::json!({}));
        let one = digest(&mut [a.clone(), b.clone()]);
        // Read back in another order, with the tags' keys reordered by the database.
        let reordered: Value = serde_json::from_str(r#"{"app":"y","team":"x"}"#).unwrap();
        assert_eq!(digest(&mut [b.clone(), record(1, reordered)]), one);
        let mut edited = a.clone();
        edited.status = 201;
        assert_ne!(digest(&mut [edited, b.clone()]), one);
        assert_ne!(digest(&mut [b]), one, "a removed event changes the digest");
    }
}
