//! Orgs, API keys and the principal a request acts as.
//!
//! [`AuthService`] owns the `orgs` and `api_keys` tables in both backends.

pub mod keys;
mod repo;
pub mod secret;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use keys::{ApiKey, Environment};

use crate::audit::{self, Actor, NewEntry};
use crate::store::Database;
use crate::store::sql::Tx;

/// What a key may do. `admin` implies every other scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Read,
    Write,
    Delete,
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 4] = [Scope::Read, Scope::Write, Scope::Delete, Scope::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Delete => "delete",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// Parses `read,write`; the error names the bad scope.
    pub fn parse_list(s: &str) -> Result<Vec<Scope>, String> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            out.push(
                Scope::parse(part)
                    .ok_or_else(|| format!("unknown scope `{part}` (expected read, write, delete or admin)"))?,
            );
        }
        normalize_scopes(out)
    }

    pub fn join(scopes: &[Scope]) -> String {
        scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(",")
    }
}

/// Sorts and de-duplicates; an empty list is refused.
pub fn normalize_scopes(mut scopes: Vec<Scope>) -> Result<Vec<Scope>, String> {
    scopes.sort();
    scopes.dedup();
    if scopes.is_empty() {
        return Err("a key needs at least one scope".into());
    }
    Ok(scopes)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum KeyStatus {
    Active,
    Inactive,
    Revoked,
}

impl KeyStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyStatus::Active => "active",
            KeyStatus::Inactive => "inactive",
            KeyStatus::Revoked => "revoked",
        }
    }

    pub fn parse(s: &str) -> Option<KeyStatus> {
        match s {
            "active" => Some(KeyStatus::Active),
            "inactive" => Some(KeyStatus::Inactive),
            "revoked" => Some(KeyStatus::Revoked),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Org {
    pub id: String,
    pub name: String,
    pub plan: String,
    /// An operator org runs the service: its admin keys may use `/admin`.
    pub operator: bool,
    /// Per-org overrides of its plan (a JSON object), passed to the pricing
    /// and rate-limit plugins: Enterprise limits and prices live here.
    #[schema(value_type = Object)]
    pub overrides: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

/// What a key lookup learns about the key's org.
#[derive(Debug, Clone)]
pub struct KeyOwner {
    pub plan: String,
    pub operator: bool,
    /// The org's overrides as JSON text (`{}` when none).
    pub overrides: Arc<str>,
}

/// An API key as stored: never the key itself.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ApiKeyRecord {
    pub id: String,
    pub org_id: String,
    pub name: String,
    pub environment: Environment,
    /// The first characters of the key, for recognising it.
    pub prefix: String,
    pub scopes: Vec<Scope>,
    pub status: KeyStatus,
    pub expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// Set on a key created by rotating another.
    pub rotated_from: Option<String>,
    /// Set on a key that was rotated; it works until `expires_at`.
    pub rotated_to: Option<String>,
}

impl ApiKeyRecord {
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }
}

/// Who a request acts for: resolved from its API key.
#[derive(Debug, Clone)]
pub struct Principal {
    pub org_id: String,
    pub plan: String,
    /// The org runs this service: its admin keys may use `/admin`.
    pub operator: bool,
    pub key_id: String,
    pub scopes: Vec<Scope>,
    pub environment: Environment,
    /// The org's plan overrides as JSON text (`{}` when none).
    pub overrides: Arc<str>,
}

impl Principal {
    /// What a usable key of `owner`'s org acts as.
    fn of(record: ApiKeyRecord, owner: KeyOwner) -> Principal {
        Principal {
            org_id: record.org_id,
            plan: owner.plan,
            operator: owner.operator,
            key_id: record.id,
            scopes: record.scopes,
            environment: record.environment,
            overrides: owner.overrides,
        }
    }

    pub fn has_scope(&self, scope: Scope) -> bool {
        self.scopes.contains(&Scope::Admin) || self.scopes.contains(&scope)
    }
}

/// Why a key was refused. The message is safe to show to the caller.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing API key: send it as `Authorization: Bearer mem_live_…`")]
    Missing,
    #[error("malformed API key: expected `Authorization: Bearer mem_live_<32 characters>` or mem_test_…")]
    Malformed,
    #[error("unknown API key")]
    Unknown,
    #[error("this API key has been revoked")]
    Revoked,
    #[error("this API key is deactivated")]
    Inactive,
    #[error("this API key expired at {0}")]
    Expired(DateTime<Utc>),
    #[error("{0}")]
    Invalid(String),
    #[error("{kind} {id} not found")]
    NotFound { kind: &'static str, id: String },
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl AuthError {
    /// A short machine-readable reason for 401 responses.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Malformed => "malformed",
            AuthError::Unknown => "unknown",
            AuthError::Revoked => "revoked",
            AuthError::Inactive => "inactive",
            AuthError::Expired(_) => "expired",
            _ => "invalid",
        }
    }
}

/// A request to create a key.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub org_id: String,
    pub name: String,
    pub environment: Environment,
    pub scopes: Vec<Scope>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// The result of creating or rotating a key: the only time the key is shown.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CreatedKey {
    /// The full key. Store it now: it cannot be shown again.
    pub key: String,
    #[serde(flatten)]
    pub record: ApiKeyRecord,
}

/// How often `last_used_at` is written per key; the column is informational,
/// and a write on every request would serialise SQLite writers.
const LAST_USED_EVERY: Duration = Duration::from_secs(60);

/// Most verified keys kept in [`KeyCache`]; past it the cache starts over.
const KEY_CACHE_MAX: usize = 100_000;

/// Verified key records by key hash, for `ttl`: saves the key lookup on most
/// requests. Expiry is still checked on every request against the record;
/// a revocation, deactivation or rotation made through this process takes
/// effect at once, one made elsewhere (the CLI, another instance) within `ttl`.
struct KeyCache {
    ttl: Duration,
    entries: Mutex<HashMap<String, (Instant, ApiKeyRecord, KeyOwner)>>,
}

impl KeyCache {
    fn get(&self, hash: &str) -> Option<(ApiKeyRecord, KeyOwner)> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let (at, record, owner) = entries.get(hash)?;
        (at.elapsed() < self.ttl).then(|| (record.clone(), owner.clone()))
    }

    fn put(&self, hash: String, record: ApiKeyRecord, owner: KeyOwner) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= KEY_CACHE_MAX {
            entries.clear();
        }
        entries.insert(hash, (Instant::now(), record, owner));
    }

    fn forget(&self, key_id: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|_, (_, record, _)| record.id != key_id);
    }

    fn forget_org(&self, org_id: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|_, (_, record, _)| record.org_id != org_id);
    }
}

#[derive(Clone)]
pub struct AuthService {
    db: Database,
    secret: Arc<[u8]>,
    last_used: Arc<Mutex<HashMap<String, Instant>>>,
    cache: Arc<KeyCache>,
}

impl AuthService {
    /// `cache_ttl` zero disables the verified-key cache.
    pub fn new(db: Database, secret: Vec<u8>, cache_ttl: Duration) -> AuthService {
        AuthService {
            db,
            secret: secret.into(),
            last_used: Default::default(),
            cache: Arc::new(KeyCache { ttl: cache_ttl, entries: Default::default() }),
        }
    }

    pub async fn create_org(&self, name: &str, plan: &str, operator: bool, actor: &Actor) -> Result<Org, AuthError> {
        let name = name.trim();
        if name.is_empty() || name.len() > 200 {
            return Err(AuthError::Invalid("org name must be 1 to 200 characters".into()));
        }
        let plan = check_plan(plan)?;
        self.check_open(plan).await?;
        let org = Org {
            id: format!("org_{}", keys::random_base62(16)),
            name: name.to_string(),
            plan: plan.to_string(),
            operator,
            overrides: serde_json::json!({}),
            created_at: now(),
        };
        let mut tx = self.db.begin().await?;
        repo::insert_org(&mut tx, &org).await?;
        repo::insert_plan_change(&mut tx, &org.id, org.created_at, &org.plan).await?;
        audit::record_in(&mut tx, NewEntry::action(actor, Some(&org.id), "org.created", &org.id, None, org_json(&org)))
            .await?;
        tx.commit().await?;
        Ok(org)
    }

    /// Changes an org's plan and/or its overrides (a JSON object, replacing
    /// the previous one). Applies to its keys at once in this process, and
    /// within the key cache's lifetime elsewhere.
    pub async fn update_org(
        &self,
        id: &str,
        plan: Option<&str>,
        overrides: Option<serde_json::Value>,
        actor: &Actor,
    ) -> Result<Org, AuthError> {
        let org = self.get_org(id).await?;
        let before = org_json(&org);
        let plan = match plan {
            Some(p) if p.trim() != org.plan => {
                let p = check_plan(p)?;
                self.check_open(p).await?;
                p.to_string()
            }
            Some(p) => check_plan(p)?.to_string(),
            None => org.plan.clone(),
        };
        let overrides = overrides.unwrap_or(org.overrides);
        if !overrides.is_object() {
            return Err(AuthError::Invalid("overrides must be a JSON object".into()));
        }
        let mut tx = self.db.begin().await?;
        repo::set_org(&mut tx, id, &plan, &overrides).await?;
        if plan != org.plan {
            repo::insert_plan_change(&mut tx, id, now(), &plan).await?;
        }
        let after = serde_json::json!({ "plan": plan, "overrides": overrides });
        audit::record_in(&mut tx, NewEntry::action(actor, Some(id), "org.updated", id, before, Some(after))).await?;
        tx.commit().await?;
        self.cache.forget_org(id);
        self.get_org(id).await
    }

    /// New customers may not join a deprecated plan (its customers keep it).
    async fn check_open(&self, plan: &str) -> Result<(), AuthError> {
        if repo::plan_deprecated(&self.db, plan).await? {
            return Err(AuthError::Invalid(format!(
                "plan `{plan}` is deprecated: its customers keep it, but no org can join it"
            )));
        }
        Ok(())
    }

    pub async fn list_orgs(&self) -> Result<Vec<Org>, AuthError> {
        Ok(repo::list_orgs(&self.db).await?)
    }

    pub async fn get_org(&self, id: &str) -> Result<Org, AuthError> {
        repo::get_org(&self.db, id).await?.ok_or_else(|| AuthError::NotFound { kind: "org", id: id.to_string() })
    }

    pub async fn create_key(&self, new: NewKey, actor: &Actor) -> Result<CreatedKey, AuthError> {
        let mut tx = self.db.begin().await?;
        let created = self.create_key_in(&mut tx, new, None, actor).await?;
        tx.commit().await?;
        Ok(created)
    }

    async fn create_key_in(
        &self,
        tx: &mut Tx,
        new: NewKey,
        rotated_from: Option<String>,
        actor: &Actor,
    ) -> Result<CreatedKey, AuthError> {
        let name = new.name.trim();
        if name.len() > 200 {
            return Err(AuthError::Invalid("key name must be at most 200 characters".into()));
        }
        let scopes = normalize_scopes(new.scopes).map_err(AuthError::Invalid)?;
        let created_at = now();
        if let Some(exp) = new.expires_at
            && exp <= created_at
        {
            return Err(AuthError::Invalid("expires_at must be in the future".into()));
        }
        self.get_org(&new.org_id).await?;
        let key = ApiKey::generate(new.environment);
        let record = ApiKeyRecord {
            id: format!("key_{}", keys::random_base62(16)),
            org_id: new.org_id,
            name: name.to_string(),
            environment: new.environment,
            prefix: key.display_prefix(),
            scopes,
            status: KeyStatus::Active,
            expires_at: new.expires_at,
            created_at,
            last_used_at: None,
            revoked_at: None,
            rotated_from,
            rotated_to: None,
        };
        repo::insert_key(tx, &record, &key.hash(&self.secret)).await?;
        audit::record_in(
            tx,
            NewEntry::action(actor, Some(&record.org_id), "key.created", &record.id, None, key_json(&record)),
        )
        .await?;
        Ok(CreatedKey { key: key.expose().to_string(), record })
    }

    /// Keys of one org, or of every org when `org_id` is `None` (operator view).
    pub async fn list_keys(&self, org_id: Option<&str>) -> Result<Vec<ApiKeyRecord>, AuthError> {
        Ok(repo::list_keys(&self.db, org_id).await?)
    }

    /// Finds a key by its id (`key_…`) or by the full key itself.
    pub async fn find_key(&self, id_or_key: &str) -> Result<ApiKeyRecord, AuthError> {
        let found = if let Some(key) = ApiKey::parse(id_or_key) {
            repo::key_by_hash(&self.db, &key.hash(&self.secret)).await?.map(|(k, _)| k)
        } else {
            repo::get_key(&self.db, id_or_key).await?
        };
        found.ok_or_else(|| AuthError::NotFound { kind: "API key", id: redact(id_or_key) })
    }

    /// A key of one org; another org's key is "not found".
    pub async fn find_org_key(&self, org_id: &str, key_id: &str) -> Result<ApiKeyRecord, AuthError> {
        match repo::get_key(&self.db, key_id).await? {
            Some(k) if k.org_id == org_id => Ok(k),
            _ => Err(AuthError::NotFound { kind: "API key", id: redact(key_id) }),
        }
    }

    /// The principal a stored key acts as now, if it is still usable: a
    /// batch job runs as the key that submitted it.
    pub async fn principal_of_key(&self, org_id: &str, key_id: &str) -> Result<Principal, AuthError> {
        let record = self.find_org_key(org_id, key_id).await?;
        check_usable(&record, now())?;
        let org = self.get_org(org_id).await?;
        let owner = KeyOwner { plan: org.plan, operator: org.operator, overrides: org.overrides.to_string().into() };
        Ok(Principal::of(record, owner))
    }

    /// Checks a presented key and returns the principal it acts as.
    pub async fn authenticate(&self, presented: &str) -> Result<Principal, AuthError> {
        let key = ApiKey::parse(presented).ok_or(AuthError::Malformed)?;
        let hash = key.hash(&self.secret);
        let (record, owner) = match self.cache.get(&hash) {
            Some(hit) => hit,
            None => {
                let found = repo::key_by_hash(&self.db, &hash).await?.ok_or(AuthError::Unknown)?;
                self.cache.put(hash, found.0.clone(), found.1.clone());
                found
            }
        };
        check_usable(&record, now())?;
        self.touch(&record.id);
        Ok(Principal::of(record, owner))
    }

    /// Like [`authenticate`](Self::authenticate) but returns the whole record
    /// and the org, for `memhost keys verify`.
    pub async fn verify(&self, presented: &str) -> Result<(ApiKeyRecord, Org), AuthError> {
        let key = ApiKey::parse(presented).ok_or(AuthError::Malformed)?;
        let (record, _) = repo::key_by_hash(&self.db, &key.hash(&self.secret)).await?.ok_or(AuthError::Unknown)?;
        check_usable(&record, now())?;
        let org = self.get_org(&record.org_id).await?;
        Ok((record, org))
    }

    /// Issues a replacement key with the same org, environment, name and
    /// scopes. The new key works at once; the old one keeps working for
    /// `grace` and then expires.
    pub async fn rotate(&self, key_id: &str, grace: Duration, actor: &Actor) -> Result<CreatedKey, AuthError> {
        let old = self.find_key(key_id).await?;
        check_usable(&old, now())?;
        if old.rotated_to.is_some() {
            return Err(AuthError::Conflict(format!(
                "key {} was already rotated; rotate its replacement instead",
                old.id
            )));
        }
        let grace =
            chrono::Duration::from_std(grace).map_err(|_| AuthError::Invalid("grace period too long".into()))?;
        let mut tx = self.db.begin().await?;
        let created = self
            .create_key_in(
                &mut tx,
                NewKey {
                    org_id: old.org_id.clone(),
                    name: old.name.clone(),
                    environment: old.environment,
                    scopes: old.scopes.clone(),
                    expires_at: old.expires_at,
                },
                Some(old.id.clone()),
                actor,
            )
            .await?;
        let grace_end = now() + grace;
        let old_expiry = old.expires_at.map_or(grace_end, |e| e.min(grace_end));
        repo::mark_rotated(&mut tx, &old.id, &created.record.id, old_expiry).await?;
        let after = serde_json::json!({ "rotated_to": created.record.id, "expires_at": old_expiry });
        audit::record_in(
            &mut tx,
            NewEntry::action(actor, Some(&old.org_id), "key.rotated", &old.id, key_json(&old), Some(after)),
        )
        .await?;
        tx.commit().await?;
        self.cache.forget(&old.id);
        Ok(created)
    }

    /// Revokes (permanent), deactivates or reactivates a key.
    pub async fn set_status(&self, key_id: &str, status: KeyStatus, actor: &Actor) -> Result<ApiKeyRecord, AuthError> {
        let key = self.find_key(key_id).await?;
        if key.status == KeyStatus::Revoked && status != KeyStatus::Revoked {
            return Err(AuthError::Conflict(format!("key {} is revoked; revocation is permanent", key.id)));
        }
        let revoked_at = (status == KeyStatus::Revoked).then(now);
        let action = match status {
            KeyStatus::Revoked => "key.revoked",
            KeyStatus::Inactive => "key.deactivated",
            KeyStatus::Active => "key.activated",
        };
        let mut tx = self.db.begin().await?;
        repo::set_key_status(&mut tx, &key.id, status, revoked_at.or(key.revoked_at)).await?;
        let after = serde_json::json!({ "status": status.as_str() });
        audit::record_in(
            &mut tx,
            NewEntry::action(actor, Some(&key.org_id), action, &key.id, key_json(&key), Some(after)),
        )
        .await?;
        tx.commit().await?;
        self.cache.forget(&key.id);
        self.find_key(&key.id).await
    }

    /// Records that a key was used, at most once a minute per key, off the request path.
    fn touch(&self, key_id: &str) {
        {
            let mut seen = self.last_used.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            if seen.get(key_id).is_some_and(|t| now.duration_since(*t) < LAST_USED_EVERY) {
                return;
            }
            seen.insert(key_id.to_string(), now);
        }
        let db = self.db.clone();
        let key_id = key_id.to_string();
        tokio::spawn(async move {
            if let Err(e) = repo::touch_key(&db, &key_id, Utc::now()).await {
                tracing::warn!(error = %e, key_id, "could not record key use");
            }
        });
    }
}

fn check_plan(plan: &str) -> Result<&str, AuthError> {
    let plan = plan.trim();
    if plan.is_empty() || plan.len() > 64 || !plan.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(AuthError::Invalid("plan must be 1 to 64 characters of a-z, 0-9, _ or -".into()));
    }
    Ok(plan)
}

fn check_usable(record: &ApiKeyRecord, now: DateTime<Utc>) -> Result<(), AuthError> {
    match record.status {
        KeyStatus::Revoked => return Err(AuthError::Revoked),
        KeyStatus::Inactive => return Err(AuthError::Inactive),
        KeyStatus::Active => {}
    }
    if record.is_expired(now) {
        return Err(AuthError::Expired(record.expires_at.unwrap_or(now)));
    }
    Ok(())
}

/// Never echo a full key back in an error: a key-shaped id shows its first
/// 13 characters (the display prefix), anything else at most 64. Counted in
/// characters, so a multi-byte character is never cut.
fn redact(s: &str) -> String {
    if ApiKey::looks_like_key(s) {
        format!("{}…", s.chars().take(13).collect::<String>())
    } else {
        s.chars().take(64).collect()
    }
}

/// Now, truncated to microseconds so that what we store and what we return agree.
/// What the audit log keeps of an org (never a secret).
fn org_json(org: &Org) -> Option<serde_json::Value> {
    Some(
        serde_json::json!({ "name": org.name, "plan": org.plan, "operator": org.operator, "overrides": org.overrides }),
    )
}

/// What the audit log keeps of a key: its id, prefix and settings, never the key.
fn key_json(k: &ApiKeyRecord) -> Option<serde_json::Value> {
    Some(serde_json::json!({
        "name": k.name, "environment": k.environment.as_str(), "prefix": k.prefix,
        "scopes": Scope::join(&k.scopes), "status": k.status.as_str(), "expires_at": k.expires_at,
    }))
}

/// Compares secrets in time that does not depend on where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub fn now() -> DateTime<Utc> {
    let t = Utc::now();
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_counts_characters_not_bytes() {
        // The id of a request that once panicked a worker: byte 13 falls
        // inside `é`.
        let id = "éééééééémem_live_x";
        assert_eq!(redact(id), "éééééééémem_l…");
        let key = "mem_live_0123456789abcdefghijABCDEFGHIJ01";
        assert_eq!(redact(key), "mem_live_0123…");
        assert_eq!(redact(&"é".repeat(100)).chars().count(), 64);
    }
}
