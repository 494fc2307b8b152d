//! Operator commands: orgs, keys, database info. Tables for people,
//! `--json` for scripts.

use std::time::Duration;

use clap::{Args, Subcommand};
use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};
use serde::Serialize;

use crate::audit::Actor;
use crate::auth::{self, ApiKeyRecord, AuthService, CreatedKey, Environment, KeyStatus, NewKey, Scope};
use crate::config::Config;
use crate::store::Database;

#[derive(Args, Clone, Copy)]
pub struct Output {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub(super) json: bool,
}

#[derive(Subcommand)]
pub enum OrgsCommand {
    /// Create an org.
    Create {
        #[arg(long)]
        name: String,
        /// Plan id (e.g. free, starter, professional, enterprise).
        #[arg(long, default_value = "free")]
        plan: String,
        /// The org runs this service: its admin keys may use the admin API
        /// (`/admin/…`: plugins and other operator work).
        #[arg(long)]
        operator: bool,
        /// Per-org overrides, a JSON object, e.g. Enterprise limits:
        /// '{"rate_limits": {"requests_per_minute": 2000}}'.
        #[arg(long)]
        overrides: Option<String>,
        #[command(flatten)]
        out: Output,
    },
    /// Change an org's plan or overrides (effective within seconds).
    Set {
        /// Org id (org_…).
        org: String,
        #[arg(long)]
        plan: Option<String>,
        /// Replaces the org's overrides: a JSON object (`{}` clears them).
        #[arg(long)]
        overrides: Option<String>,
        #[command(flatten)]
        out: Output,
    },
    /// List orgs.
    List {
        #[command(flatten)]
        out: Output,
    },
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Create an API key; it is printed once.
    Create {
        /// The org the key belongs to.
        #[arg(long)]
        org: String,
        #[arg(long, default_value = "")]
        name: String,
        /// Comma-separated: read, write, delete, admin.
        #[arg(long, default_value = "read,write,delete")]
        scopes: String,
        /// Create a sandbox key (mem_test_…) instead of a live one.
        #[arg(long)]
        test: bool,
        /// Days until the key expires (default: never).
        #[arg(long)]
        expires_in_days: Option<u32>,
        #[command(flatten)]
        out: Output,
    },
    /// List keys (of one org, or all).
    List {
        #[arg(long)]
        org: Option<String>,
        #[command(flatten)]
        out: Output,
    },
    /// Check a key: valid or why not, and what it may do.
    Verify {
        key: String,
        #[command(flatten)]
        out: Output,
    },
    /// Replace a key; the old one works until the grace period ends.
    Rotate {
        /// Key id (key_…) or the key itself.
        key: String,
        /// How long the old key keeps working: e.g. 30m, 24h, 7d, or seconds.
        #[arg(long, default_value = "24h")]
        grace: String,
        #[command(flatten)]
        out: Output,
    },
    /// Revoke a key, permanently.
    Revoke {
        key: String,
        #[command(flatten)]
        out: Output,
    },
    /// Deactivate a key (reversible).
    Deactivate {
        key: String,
        #[command(flatten)]
        out: Output,
    },
    /// Reactivate a deactivated key.
    Activate {
        key: String,
        #[command(flatten)]
        out: Output,
    },
}

#[derive(Subcommand)]
pub enum DbCommand {
    /// Backend, location, version, migrations and row counts.
    Info {
        #[command(flatten)]
        out: Output,
    },
}

async fn open(config: &Config) -> anyhow::Result<(Database, AuthService)> {
    let db = Database::connect(&config.store()).await?;
    let secret = auth::secret::load_or_create(config.secret.as_deref(), config.is_postgres(), &config.data_dir)?;
    Ok((db.clone(), AuthService::new(db, secret, Duration::ZERO)))
}

pub async fn orgs(config: Config, cmd: OrgsCommand) -> anyhow::Result<()> {
    let (db, auth) = open(&config).await?;
    match cmd {
        OrgsCommand::Create { name, plan, operator, overrides, out } => {
            let overrides = overrides.as_deref().map(parse_overrides).transpose()?;
            let mut org = auth.create_org(&name, &plan, operator, &Actor::cli()).await?;
            if overrides.is_some() {
                org = auth.update_org(&org.id, None, overrides, &Actor::cli()).await?;
            }
            emit(out, &org, || format!("Org created.\n{}", org_table(std::slice::from_ref(&org))))?;
        }
        OrgsCommand::Set { org, plan, overrides, out } => {
            if plan.is_none() && overrides.is_none() {
                anyhow::bail!("nothing to change: give --plan and/or --overrides");
            }
            let overrides = overrides.as_deref().map(parse_overrides).transpose()?;
            let org = auth.update_org(&org, plan.as_deref(), overrides, &Actor::cli()).await?;
            emit(out, &org, || format!("Org updated.\n{}", org_table(std::slice::from_ref(&org))))?;
        }
        OrgsCommand::List { out } => {
            let orgs = auth.list_orgs().await?;
            emit(out, &orgs, || format!("{}\n{} org(s)", org_table(&orgs), orgs.len()))?;
        }
    }
    db.close().await;
    Ok(())
}

fn org_table(orgs: &[auth::Org]) -> Table {
    let mut t = table(["id", "name", "plan", "operator", "overrides", "created"]);
    for o in orgs {
        t.add_row([
            o.id.clone(),
            o.name.clone(),
            o.plan.clone(),
            o.operator.to_string(),
            o.overrides.to_string(),
            o.created_at.to_rfc3339(),
        ]);
    }
    t
}

fn parse_overrides(text: &str) -> anyhow::Result<serde_json::Value> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| anyhow::anyhow!("--overrides is not valid JSON: {e}"))?;
    anyhow::ensure!(value.is_object(), "--overrides must be a JSON object, e.g. '{{\"rate_limits\": {{}}}}'");
    Ok(value)
}

pub async fn keys(config: Config, cmd: KeysCommand) -> anyhow::Result<()> {
    let (db, auth) = open(&config).await?;
    let result = keys_inner(&auth, cmd).await;
    db.close().await;
    result
}

async fn keys_inner(auth: &AuthService, cmd: KeysCommand) -> anyhow::Result<()> {
    match cmd {
        KeysCommand::Create { org, name, scopes, test, expires_in_days, out } => {
            let scopes = Scope::parse_list(&scopes).map_err(anyhow::Error::msg)?;
            let expires_at = match expires_in_days {
                Some(0) => anyhow::bail!("--expires-in-days must be at least 1"),
                Some(d) => Some(auth::now() + chrono::Duration::days(d.min(3650) as i64)),
                None => None,
            };
            let environment = if test { Environment::Test } else { Environment::Live };
            let created =
                auth.create_key(NewKey { org_id: org, name, environment, scopes, expires_at }, &Actor::cli()).await?;
            emit_created(out, &created, "API key created")?;
        }
        KeysCommand::List { org, out } => {
            let keys = auth.list_keys(org.as_deref()).await?;
            emit(out, &keys, || format!("{}\n{} key(s)", key_table(&keys), keys.len()))?;
        }
        KeysCommand::Verify { key, out } => match auth.verify(&key).await {
            Ok((record, org)) => {
                #[derive(Serialize)]
                struct Valid<'a> {
                    valid: bool,
                    key: &'a ApiKeyRecord,
                    org: &'a auth::Org,
                }
                emit(out, &Valid { valid: true, key: &record, org: &org }, || {
                    let mut t = table(["", ""]);
                    t.add_row(["status".to_string(), "VALID".to_string()]);
                    t.add_row(["key id".to_string(), record.id.clone()]);
                    t.add_row(["prefix".to_string(), format!("{}…", record.prefix)]);
                    t.add_row(["org".to_string(), format!("{} ({})", org.name, org.id)]);
                    t.add_row(["plan".to_string(), org.plan.clone()]);
                    t.add_row(["environment".to_string(), record.environment.to_string()]);
                    t.add_row(["scopes".to_string(), Scope::join(&record.scopes)]);
                    t.add_row(["expires".to_string(), record.expires_at.map_or("never".into(), |e| e.to_rfc3339())]);
                    t.to_string()
                })?;
            }
            Err(e) => {
                if out.json {
                    println!(
                        "{}",
                        serde_json::json!({ "valid": false, "reason": e.reason(), "message": e.to_string() })
                    );
                } else {
                    println!("INVALID: {e}");
                }
                std::process::exit(1);
            }
        },
        KeysCommand::Rotate { key, grace, out } => {
            let grace = parse_duration(&grace)?;
            let created = auth.rotate(&key, grace, &Actor::cli()).await?;
            let old = created.record.rotated_from.clone().unwrap_or_default();
            emit_created(out, &created, &format!("Key {old} rotated; it keeps working for {}", humanize(grace)))?;
        }
        KeysCommand::Revoke { key, out } => status(auth, &key, KeyStatus::Revoked, out).await?,
        KeysCommand::Deactivate { key, out } => status(auth, &key, KeyStatus::Inactive, out).await?,
        KeysCommand::Activate { key, out } => status(auth, &key, KeyStatus::Active, out).await?,
    }
    Ok(())
}

async fn status(auth: &AuthService, key: &str, status: KeyStatus, out: Output) -> anyhow::Result<()> {
    let record = auth.set_status(key, status, &Actor::cli()).await?;
    emit(out, &record, || {
        format!("Key {} is now {}.\n{}", record.id, record.status.as_str(), key_table(std::slice::from_ref(&record)))
    })
}

pub async fn db(config: Config, cmd: DbCommand) -> anyhow::Result<()> {
    let db = Database::connect(&config.store()).await?;
    match cmd {
        DbCommand::Info { out } => {
            let info = db.info().await?;
            emit(out, &info, || {
                let mut t = table(["", ""]);
                t.add_row(["backend".to_string(), info.backend.to_string()]);
                t.add_row(["location".to_string(), info.location.clone()]);
                t.add_row(["server".to_string(), info.server_version.clone()]);
                if let Some(v) = &info.vector_extension {
                    t.add_row(["vectors".to_string(), v.clone()]);
                }
                t.add_row(["migrations applied".to_string(), info.migrations_applied.to_string()]);
                t.add_row(["orgs".to_string(), info.orgs.to_string()]);
                t.add_row(["api keys".to_string(), info.api_keys.to_string()]);
                t.add_row(["memories".to_string(), info.memories.to_string()]);
                t.add_row(["history events".to_string(), info.memory_history.to_string()]);
                t.to_string()
            })?;
        }
    }
    db.close().await;
    Ok(())
}

pub(super) fn emit<T: Serialize>(out: Output, value: &T, human: impl FnOnce() -> String) -> anyhow::Result<()> {
    if out.json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        println!("{}", human());
    }
    Ok(())
}

fn emit_created(out: Output, created: &CreatedKey, headline: &str) -> anyhow::Result<()> {
    emit(out, created, || {
        format!(
            "{headline}.\n\n  {}\n\nSave this key now: it cannot be shown again.\n{}",
            created.key,
            key_table(std::slice::from_ref(&created.record))
        )
    })
}

pub(super) fn table<const N: usize>(header: [&str; N]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED).set_content_arrangement(ContentArrangement::Dynamic);
    if header.iter().any(|h| !h.is_empty()) {
        t.set_header(header);
    }
    t
}

fn key_table(keys: &[ApiKeyRecord]) -> Table {
    let mut t = table(["id", "org", "name", "prefix", "env", "scopes", "status", "expires", "last used"]);
    for k in keys {
        t.add_row([
            k.id.clone(),
            k.org_id.clone(),
            k.name.clone(),
            format!("{}…", k.prefix),
            k.environment.to_string(),
            Scope::join(&k.scopes),
            k.status.as_str().to_string(),
            k.expires_at.map_or("never".into(), |e| e.format("%Y-%m-%d %H:%M").to_string()),
            k.last_used_at.map_or("-".into(), |e| e.format("%Y-%m-%d %H:%M").to_string()),
        ]);
    }
    t
}

/// `90`, `90s`, `30m`, `24h`, `7d`.
pub fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let s = s.trim();
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits.parse().map_err(|_| anyhow::anyhow!("invalid duration `{s}` (try 30m, 24h or 7d)"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => anyhow::bail!("invalid duration unit in `{s}` (use s, m, h or d)"),
    };
    if secs > 30 * 86400 {
        anyhow::bail!("grace period is at most 30 days");
    }
    Ok(Duration::from_secs(secs))
}

fn humanize(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s % 86400 == 0 && s > 0 => format!("{} day(s)", s / 86400),
        s if s % 3600 == 0 && s > 0 => format!("{} hour(s)", s / 3600),
        s if s % 60 == 0 && s > 0 => format!("{} minute(s)", s / 60),
        s => format!("{s} second(s)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90").unwrap().as_secs(), 90);
        assert_eq!(parse_duration("30m").unwrap().as_secs(), 1800);
        assert_eq!(parse_duration("24h").unwrap().as_secs(), 86400);
        assert_eq!(parse_duration("7d").unwrap().as_secs(), 604800);
        assert!(parse_duration("7w").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("31d").is_err());
    }
}
