//! `Idempotency-Key` with Stripe's semantics, scoped per org and key
//! environment:
//!
//! - the first request with a key claims it (a `running` row) and runs;
//!   its response is stored **in the same transaction as its usage event**
//!   (`writer.rs`), so a stored response exists exactly when the request
//!   was metered;
//! - a repeat with the same method, path and body gets the stored response
//!   back (`Idempotent-Replayed: true`), neither run nor metered again;
//! - the same key with another request is refused (422), and a repeat while
//!   the first still runs gets 409;
//! - a claim whose request failed (5xx, refused later on the path, panicked)
//!   is released, so a retry runs; a claim of an instance that died (kill -9)
//!   is taken over once that instance stops announcing itself;
//! - keys expire after the retention's `idempotency_hours` (24 by default).

use std::sync::Mutex;
use std::time::Duration;

use chrono::Utc;
use sha2::{Digest, Sha256};

use crate::auth::Environment;
use crate::store::Database;
use crate::store::sql::{Backend, Tx, sql};
use crate::supervisor::Shutdown;

/// How often a running instance announces itself, and after how long
/// without an announcement its claims may be taken over.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
pub const PRESUMED_DEAD_AFTER: Duration = Duration::from_secs(5);

/// Largest `Idempotency-Key`, in characters.
pub const MAX_KEY_LEN: usize = 255;

/// A claimed key: this request runs.
#[derive(Debug, Clone)]
pub struct Claim {
    pub org_id: String,
    pub environment: Environment,
    pub key: String,
    owner: String,
}

/// A response kept for replays.
#[derive(Debug, Clone)]
pub struct StoredResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// What to store when the claimed request's event is written.
#[derive(Debug, Clone)]
pub struct Completion {
    pub claim: Claim,
    pub response: StoredResponse,
}

pub enum ClaimOutcome {
    Proceed(Claim),
    Replay(StoredResponse),
    /// The key was used for a different request.
    Mismatch,
    /// The first request with this key is still running.
    InFlight,
}

/// Holds a claim while its request runs. The meter takes it to store the
/// response; dropped still holding it, the claim is released.
pub struct ClaimSlot {
    claim: Mutex<Option<Claim>>,
    keys: IdempotencyKeys,
}

impl ClaimSlot {
    pub fn take(&self) -> Option<Claim> {
        self.claim.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

impl Drop for ClaimSlot {
    fn drop(&mut self) {
        if let Some(claim) = self.take() {
            let keys = self.keys.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move { keys.release(&claim).await });
            }
        }
    }
}

/// The claims of this instance and the instance's liveness.
#[derive(Clone)]
pub struct IdempotencyKeys {
    db: Database,
    /// This process's id in `instances` and on its claims.
    boot_id: String,
    ttl: chrono::Duration,
}

impl IdempotencyKeys {
    pub fn new(db: Database, ttl_hours: u32) -> IdempotencyKeys {
        IdempotencyKeys {
            db,
            boot_id: format!("boot_{}", uuid::Uuid::now_v7().simple()),
            ttl: chrono::Duration::hours(ttl_hours as i64),
        }
    }

    pub fn boot_id(&self) -> &str {
        &self.boot_id
    }

    pub fn slot(&self, claim: Claim) -> ClaimSlot {
        ClaimSlot { claim: Mutex::new(Some(claim)), keys: self.clone() }
    }

    /// SHA-256 of what makes two requests the same.
    pub fn request_hash(method: &str, path_and_query: &str, body: &[u8]) -> String {
        let mut h = Sha256::new();
        h.update(method.as_bytes());
        h.update(b" ");
        h.update(path_and_query.as_bytes());
        h.update(b"\n");
        h.update(body);
        hex::encode(h.finalize())
    }

    pub async fn claim(
        &self,
        org_id: &str,
        environment: Environment,
        key: &str,
        request_hash: &str,
    ) -> sqlx::Result<ClaimOutcome> {
        let claim =
            Claim { org_id: org_id.to_string(), environment, key: key.to_string(), owner: self.boot_id.clone() };
        // A few rounds at most: each round either decides or clears what
        // stood in the way (an expired key, a dead instance's claim).
        for _ in 0..4 {
            let now = Utc::now();
            let inserted =
                sql("INSERT INTO idempotency_keys (org_id, environment, key, request_hash, state, owner, created_at) \
                 VALUES ($1, $2, $3, $4, 'running', $5, $6) ON CONFLICT (org_id, environment, key) DO NOTHING")
                .bind(org_id)
                .bind(environment.as_str())
                .bind(key)
                .bind(request_hash)
                .bind(&self.boot_id)
                .bind(now)
                .execute(self.db.write())
                .await?;
            if inserted == 1 {
                return Ok(ClaimOutcome::Proceed(claim));
            }
            let Some(row) =
                sql("SELECT request_hash, state, owner, created_at, response_status, response_headers, response_body \
                 FROM idempotency_keys WHERE org_id = $1 AND environment = $2 AND key = $3")
                .bind(org_id)
                .bind(environment.as_str())
                .bind(key)
                .fetch_optional(self.db.write())
                .await?
            else {
                continue; // removed meanwhile: try again
            };
            let created_at = row.time("created_at")?;
            if created_at < now - self.ttl {
                sql("DELETE FROM idempotency_keys WHERE org_id = $1 AND environment = $2 AND key = $3 \
                     AND created_at = $4")
                .bind(org_id)
                .bind(environment.as_str())
                .bind(key)
                .bind(created_at)
                .execute(self.db.write())
                .await?;
                continue;
            }
            if row.get::<String>("request_hash")? != request_hash {
                return Ok(ClaimOutcome::Mismatch);
            }
            if row.get::<String>("state")? == "done" {
                let headers: Vec<(String, String)> =
                    serde_json::from_str(&row.get::<Option<String>>("response_headers")?.unwrap_or_default())
                        .unwrap_or_default();
                return Ok(ClaimOutcome::Replay(StoredResponse {
                    status: row.get::<Option<i32>>("response_status")?.unwrap_or(200) as u16,
                    headers,
                    body: row.get::<Option<Vec<u8>>>("response_body")?.unwrap_or_default(),
                }));
            }
            let owner: String = row.get("owner")?;
            if self.is_alive(&owner).await? {
                return Ok(ClaimOutcome::InFlight);
            }
            // Its instance died with the request unfinished (no event, no
            // stored response): this request runs instead.
            let taken =
                sql("UPDATE idempotency_keys SET owner = $1, created_at = $2 WHERE org_id = $3 AND environment = $4 \
                 AND key = $5 AND owner = $6 AND state = 'running'")
                .bind(&self.boot_id)
                .bind(now)
                .bind(org_id)
                .bind(environment.as_str())
                .bind(key)
                .bind(&owner)
                .execute(self.db.write())
                .await?;
            if taken == 1 {
                return Ok(ClaimOutcome::Proceed(claim));
            }
        }
        Ok(ClaimOutcome::InFlight)
    }

    /// Whether the instance that made a claim still runs. Embedded mode has
    /// one instance: any other owner is an earlier run of this one.
    async fn is_alive(&self, owner: &str) -> sqlx::Result<bool> {
        if owner == self.boot_id {
            return Ok(true);
        }
        if self.db.backend() == Backend::Sqlite {
            return Ok(false);
        }
        let row = sql("SELECT last_seen FROM instances WHERE boot_id = $1")
            .bind(owner)
            .fetch_optional(self.db.read())
            .await?;
        let dead_before = Utc::now() - chrono::Duration::from_std(PRESUMED_DEAD_AFTER).unwrap_or_default();
        Ok(match row {
            Some(r) => r.time("last_seen")? > dead_before,
            None => false,
        })
    }

    /// Stores the response (inside the event writer's transaction).
    pub async fn complete_in(tx: &mut Tx, c: &Completion) -> sqlx::Result<()> {
        let headers = serde_json::to_string(&c.response.headers).unwrap_or_else(|_| "[]".into());
        sql("UPDATE idempotency_keys SET state = 'done', response_status = $1, response_headers = $2, \
             response_body = $3 WHERE org_id = $4 AND environment = $5 AND key = $6 AND owner = $7")
        .bind(c.response.status as i64)
        .bind(headers)
        .bind(c.response.body.as_slice())
        .bind(&c.claim.org_id)
        .bind(c.claim.environment.as_str())
        .bind(&c.claim.key)
        .bind(&c.claim.owner)
        .execute(tx)
        .await?;
        Ok(())
    }

    /// Gives a claim up, so a retry runs.
    pub async fn release(&self, claim: &Claim) {
        let result = sql("DELETE FROM idempotency_keys WHERE org_id = $1 AND environment = $2 AND key = $3 \
                          AND owner = $4 AND state = 'running'")
        .bind(&claim.org_id)
        .bind(claim.environment.as_str())
        .bind(&claim.key)
        .bind(&claim.owner)
        .execute(self.db.write())
        .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not release an idempotency key; it frees when this instance stops");
        }
    }

    /// Deletes keys past their time (retention).
    pub async fn prune(&self) -> sqlx::Result<u64> {
        sql("DELETE FROM idempotency_keys WHERE created_at < $1")
            .bind(Utc::now() - self.ttl)
            .execute(self.db.write())
            .await
    }

    /// Announces this instance every [`HEARTBEAT_EVERY`] so other instances
    /// can tell it is alive before taking over its claims; removed at
    /// shutdown. PostgreSQL only.
    pub async fn heartbeat_loop(self, mut shutdown: Shutdown) {
        if self.db.backend() == Backend::Sqlite {
            // One instance: nobody reads the heartbeat (see `is_alive`).
            return shutdown.requested().await;
        }
        let started = Utc::now();
        let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.requested() => break,
            }
            let result = sql("INSERT INTO instances (boot_id, started_at, last_seen) VALUES ($1, $2, $3) \
                 ON CONFLICT (boot_id) DO UPDATE SET last_seen = excluded.last_seen")
            .bind(&self.boot_id)
            .bind(started)
            .bind(Utc::now())
            .execute(self.db.write())
            .await;
            if let Err(e) = result {
                tracing::warn!(error = %e, "could not announce this instance");
            }
        }
        let _ = sql("DELETE FROM instances WHERE boot_id = $1").bind(&self.boot_id).execute(self.db.write()).await;
        let dead = Utc::now() - chrono::Duration::hours(1);
        let _ = sql("DELETE FROM instances WHERE last_seen < $1").bind(dead).execute(self.db.write()).await;
    }
}
