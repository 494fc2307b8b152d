//! The pricing config as versioned data. The config (`policies/pricing.yaml`,
//! seed 000's schema) is the active global pricing plugin's config; every
//! change activates it anew (validated by the plugin's config schema, with
//! errors that name the field), so each version is an activation that can
//! be listed and rolled back, and is kept by its `pricing_version`.
//!
//! A changed plan does not move its existing customers: before the new
//! version is activated they are held to the plan as it was (a snapshot in
//! `customer_pricing`), until they are moved or the given date passes.
//! Changes come from the admin API (`PUT /admin/pricing/plans/{plan}`), the
//! CLI, or an edit of the policy file, which the server reloads on change.

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::BillingService;
use super::invoices::{BillingError, config_digest};
use crate::audit::{self, Actor, NewEntry};
use crate::plugins::{ActivateRequest, PluginError};
use crate::store::sql::sql;
use crate::supervisor::Shutdown;

/// How often the policy file is checked for changes.
const POLICY_POLL: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PricingView {
    pub plugin_id: String,
    pub activation_id: String,
    pub pricing_version: Option<String>,
    pub activated_at: DateTime<Utc>,
    #[schema(value_type = Object)]
    pub config: Value,
    /// Earlier global pricing versions, newest first.
    pub history: Vec<PricingVersion>,
    /// Why the policy file on disk was not applied, if it is not valid.
    pub policy_error: Option<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PricingVersion {
    pub activation_id: String,
    pub plugin_id: String,
    pub pricing_version: Option<String>,
    pub activated_at: DateTime<Utc>,
    pub deactivated_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanUpdate {
    /// The plan as the pricing config defines plans.
    #[schema(value_type = Object)]
    pub definition: Value,
    /// The new version's name; default: the current one with a `.N` suffix.
    pub pricing_version: Option<String>,
    /// Hold the plan's existing customers to its previous definition
    /// (default true).
    pub grandfather: Option<bool>,
    /// Until then (default: until they are moved).
    pub grandfathered_until: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PricingChanged {
    pub pricing_version: Option<String>,
    pub activation_id: String,
    /// Plans whose definition changed.
    pub changed_plans: Vec<String>,
    /// Customers held to a previous definition by this change.
    pub grandfathered: u64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PlanView {
    pub plan: String,
    #[schema(value_type = Object)]
    pub definition: Value,
    /// Closed to new customers.
    pub deprecated: bool,
    /// Orgs on it now.
    pub customers: i64,
    /// Of them, held to an earlier definition.
    pub grandfathered: i64,
}

/// A catalogue entry other than a plan (`addons`, `promotions`,
/// `volume_discounts`): a new pricing version, for every customer.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CatalogueUpdate {
    #[schema(value_type = Object)]
    pub definition: Value,
    pub pricing_version: Option<String>,
}

/// Catalogue sections an operator may edit entry by entry.
pub const SECTIONS: [&str; 3] = ["addons", "promotions", "volume_discounts"];

fn check_id(what: &str, id: &str) -> Result<(), BillingError> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        return Err(BillingError::Invalid(format!("{what} must be 1 to 64 characters of a-z, 0-9, _ or -")));
    }
    Ok(())
}

/// A config's `pricing_version` (a string or a number), if it has one.
pub(super) fn version_of(config: &Value) -> Option<String> {
    match &config["pricing_version"] {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// `2026-12` → `2026-12.1` → `2026-12.2`.
fn next_version(current: Option<&str>) -> String {
    let Some(v) = current else { return "1".into() };
    match v.rsplit_once('.') {
        Some((head, n)) if n.bytes().all(|b| b.is_ascii_digit()) && !n.is_empty() => {
            format!("{head}.{}", n.parse::<u64>().unwrap_or(0) + 1)
        }
        _ => format!("{v}.1"),
    }
}

impl BillingService {
    pub async fn pricing_view(&self) -> Result<PricingView, BillingError> {
        let active = self.inner.plugins.pricing().global().ok_or_else(|| BillingError::NoPricing("any".into()))?;
        let config: Value = serde_json::from_str(&active.config).unwrap_or(Value::Null);
        let rows = sql("SELECT id, digest, config, activated_at, deactivated_at FROM plugin_activations \
             WHERE kind = 'pricing' AND target = 'global' ORDER BY activated_at DESC LIMIT 100")
        .fetch_all(self.inner.meter.db().read())
        .await?;
        let mut history = Vec::new();
        for r in rows {
            let c: Value = serde_json::from_str(&r.get::<String>("config")?).unwrap_or(Value::Null);
            history.push(PricingVersion {
                activation_id: r.get("id")?,
                plugin_id: r.get("digest")?,
                pricing_version: version_of(&c),
                activated_at: r.time("activated_at")?,
                deactivated_at: r.opt_time("deactivated_at")?,
            });
        }
        Ok(PricingView {
            plugin_id: active.plugin.record.id.clone(),
            activation_id: active.activation.id.clone(),
            pricing_version: version_of(&config),
            activated_at: active.activation.activated_at,
            config,
            history,
            policy_error: self.inner.pricing_policy_error.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        })
    }

    /// The plans of the config in force, with who is on them.
    pub async fn plans(&self) -> Result<Vec<PlanView>, BillingError> {
        let active = self.inner.plugins.pricing().global().ok_or_else(|| BillingError::NoPricing("any".into()))?;
        let config: Value = serde_json::from_str(&active.config).unwrap_or(Value::Null);
        let db = self.inner.meter.db();
        let deprecated: std::collections::HashSet<String> = sql("SELECT plan FROM deprecated_plans")
            .fetch_all(db.read())
            .await?
            .iter()
            .map(|r| r.get::<String>("plan"))
            .collect::<sqlx::Result<_>>()?;
        let mut counts: std::collections::HashMap<String, (i64, i64)> = std::collections::HashMap::new();
        let rows = sql("SELECT o.plan, COUNT(*) AS customers, COUNT(c.plan_snapshot) AS held FROM orgs o \
             LEFT JOIN customer_pricing c ON c.org_id = o.id AND c.snapshot_plan = o.plan GROUP BY o.plan")
        .fetch_all(db.read())
        .await?;
        for r in rows {
            counts.insert(r.get("plan")?, (r.get("customers")?, r.get("held")?));
        }
        Ok(config["plans"]
            .as_object()
            .map(|plans| {
                plans
                    .iter()
                    .map(|(name, def)| {
                        let (customers, grandfathered) = counts.get(name).copied().unwrap_or((0, 0));
                        PlanView {
                            plan: name.clone(),
                            definition: def.clone(),
                            deprecated: deprecated.contains(name),
                            customers,
                            grandfathered,
                        }
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Closes a plan to new customers (or with `open`, reopens it).
    pub async fn deprecate_plan(&self, plan: &str, open: bool, actor: &Actor) -> Result<Vec<PlanView>, BillingError> {
        if !self.plans().await?.iter().any(|p| p.plan == plan) {
            return Err(BillingError::Invalid(format!("the pricing config has no plan `{plan}`")));
        }
        let mut tx = self.inner.meter.db().begin().await?;
        if open {
            sql("DELETE FROM deprecated_plans WHERE plan = $1").bind(plan).execute(&mut tx).await?;
        } else {
            sql("INSERT INTO deprecated_plans (plan, deprecated_at, deprecated_by) VALUES ($1, $2, $3) \
                 ON CONFLICT (plan) DO NOTHING")
            .bind(plan)
            .bind(crate::auth::now())
            .bind(&actor.0)
            .execute(&mut tx)
            .await?;
        }
        let action = if open { "pricing.plan_reopened" } else { "pricing.plan_deprecated" };
        audit::record_in(&mut tx, NewEntry::action(actor, None, action, plan, None, None)).await?;
        tx.commit().await?;
        self.plans().await
    }

    /// Creates or changes one entry of `addons`, `promotions` or
    /// `volume_discounts`: a new pricing version.
    pub async fn update_catalogue(
        &self,
        section: &str,
        id: &str,
        req: CatalogueUpdate,
        actor: &Actor,
    ) -> Result<PricingChanged, BillingError> {
        if !SECTIONS.contains(&section) {
            return Err(BillingError::Invalid(format!("section must be one of {}", SECTIONS.join(", "))));
        }
        check_id(section, id)?;
        let active = self.inner.plugins.pricing().global().ok_or_else(|| BillingError::NoPricing("any".into()))?;
        let mut config: Value = serde_json::from_str(&active.config).unwrap_or_else(|_| json!({}));
        if !config[section].is_object() {
            config[section] = json!({});
        }
        config[section][id] = req.definition;
        config["pricing_version"] =
            json!(req.pricing_version.unwrap_or_else(|| next_version(version_of(&config).as_deref())));
        self.apply_pricing_config(config, true, None, actor).await
    }

    /// Creates or changes one plan: a new pricing version.
    pub async fn update_plan(
        &self,
        plan: &str,
        req: PlanUpdate,
        actor: &Actor,
    ) -> Result<PricingChanged, BillingError> {
        check_id("plan", plan)?;
        if !req.definition.is_object() {
            return Err(BillingError::Invalid("definition must be an object (a plan of the pricing config)".into()));
        }
        let active = self.inner.plugins.pricing().global().ok_or_else(|| BillingError::NoPricing(plan.into()))?;
        let mut config: Value = serde_json::from_str(&active.config).unwrap_or_else(|_| json!({}));
        if !config["plans"].is_object() {
            config["plans"] = json!({});
        }
        config["plans"][plan] = req.definition;
        config["pricing_version"] =
            json!(req.pricing_version.unwrap_or_else(|| next_version(version_of(&config).as_deref())));
        self.apply_pricing_config(config, req.grandfather.unwrap_or(true), req.grandfathered_until, actor).await
    }

    /// Activates a new global pricing config. With `grandfather`, each
    /// customer of a plan whose definition changed (and who is not already
    /// held to a version) is first held to the definition it had.
    pub async fn apply_pricing_config(
        &self,
        new: Value,
        grandfather: bool,
        until: Option<DateTime<Utc>>,
        actor: &Actor,
    ) -> Result<PricingChanged, BillingError> {
        let active = self.inner.plugins.pricing().global().ok_or_else(|| BillingError::NoPricing("any".into()))?;
        let old: Value = serde_json::from_str(&active.config).unwrap_or_else(|_| json!({}));
        let old_version = version_of(&old);
        let changed: Vec<String> = old["plans"]
            .as_object()
            .map(|plans| {
                plans
                    .iter()
                    .filter(|(name, def)| new["plans"].get(name.as_str()) != Some(def))
                    .map(|(n, _)| n.clone())
                    .collect()
            })
            .unwrap_or_default();
        let db = self.inner.meter.db();
        let now = crate::auth::now();
        let mut grandfathered = 0;
        if grandfather {
            let mut tx = db.begin().await?;
            for plan in &changed {
                grandfathered += sql(
                    "INSERT INTO customer_pricing (org_id, snapshot_plan, plan_snapshot, snapshot_version, grandfathered_until, updated_at) \
                     SELECT id, $1, $2, $3, $4, $5 FROM orgs WHERE plan = $1 \
                     ON CONFLICT (org_id) DO UPDATE SET snapshot_plan = excluded.snapshot_plan, plan_snapshot = excluded.plan_snapshot, \
                     snapshot_version = excluded.snapshot_version, grandfathered_until = excluded.grandfathered_until, \
                     updated_at = excluded.updated_at WHERE customer_pricing.plan_snapshot IS NULL",
                )
                .bind(plan)
                .bind(old["plans"][plan].to_string())
                .bind(&old_version)
                .bind(until)
                .bind(now)
                .execute(&mut tx)
                .await?;
            }
            tx.commit().await?;
        }
        let request = ActivateRequest {
            target: Some("global".into()),
            canary_percent: None,
            rule: None,
            config: Some(new.clone()),
        };
        let activation = match self.inner.plugins.activate(&active.plugin.record.id, request, &actor.0).await {
            Ok(a) => a,
            Err(e) => {
                // Not activated: the holds made for it are undone.
                if grandfathered > 0 {
                    sql("UPDATE customer_pricing SET snapshot_plan = NULL, plan_snapshot = NULL, snapshot_version = NULL, \
                         grandfathered_until = NULL WHERE updated_at = $1")
                    .bind(now)
                    .execute(db.write())
                    .await?;
                }
                return Err(BillingError::Plugin(e));
            }
        };
        for config in [&old, &new] {
            let text = config.to_string();
            sql("INSERT INTO pricing_configs (digest, pricing_version, config, created_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (digest) DO NOTHING")
            .bind(config_digest(&text))
            .bind(version_of(config))
            .bind(text)
            .bind(now)
            .execute(db.write())
            .await?;
        }
        let after = json!({ "pricing_version": version_of(&new), "changed_plans": changed, "grandfathered": grandfathered,
            "activation_id": activation.id });
        audit::record(
            db,
            vec![NewEntry::action(
                actor,
                None,
                "pricing.version_activated",
                "pricing",
                Some(json!({
            "pricing_version": old_version })),
                Some(after),
            )],
        )
        .await?;
        self.forget_pricing();
        Ok(PricingChanged {
            pricing_version: version_of(&new),
            activation_id: activation.id,
            changed_plans: changed,
            grandfathered,
        })
    }

    /// Applies the policy file when it differs from the active config, now
    /// and whenever it changes. An invalid file is refused (logged, shown at
    /// `GET /admin/pricing`) and the running config stays.
    pub async fn pricing_policy_loop(self, path: PathBuf, mut shutdown: Shutdown) {
        let mut seen = None;
        let mut tick = tokio::time::interval(POLICY_POLL);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.requested() => return,
            }
            let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
            if modified.is_some() && modified == seen {
                continue;
            }
            seen = modified;
            let outcome = self.reload_pricing_policy(&path).await;
            if let Err(e) = &outcome {
                tracing::warn!(error = %e, path = %path.display(), "pricing policy not applied; the running config stays");
            }
            *self.inner.pricing_policy_error.lock().unwrap_or_else(|e| e.into_inner()) = outcome.err();
        }
    }

    async fn reload_pricing_policy(&self, path: &std::path::Path) -> Result<(), String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        // Unchanged since it was last applied: what the API changed since stays.
        let digest = config_digest(&text);
        let key = path.display().to_string();
        let db = self.inner.meter.db();
        let applied = sql("SELECT digest FROM policy_files WHERE path = $1")
            .bind(&key)
            .fetch_optional(db.read())
            .await
            .map_err(|e| e.to_string())?
            .map(|r| r.get::<String>("digest"))
            .transpose()
            .map_err(|e| e.to_string())?;
        if applied.as_deref() == Some(digest.as_str()) {
            return Ok(());
        }
        let new: Value = serde_yaml_ng::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let Some(active) = self.inner.plugins.pricing().global() else { return Ok(()) };
        let current: Value = serde_json::from_str(&active.config).unwrap_or(Value::Null);
        if current != new {
            let actor = Actor(format!("policy:{}", path.display()));
            let changed = self.apply_pricing_config(new, true, None, &actor).await.map_err(|e| match e {
                BillingError::Plugin(PluginError::InvalidConfig(errors)) => {
                    format!("{}: {}", path.display(), errors.join("; "))
                }
                other => other.to_string(),
            })?;
            tracing::info!(version = ?changed.pricing_version, plans = ?changed.changed_plans,
                grandfathered = changed.grandfathered, "pricing policy applied");
        }
        sql("INSERT INTO policy_files (path, digest, applied_at) VALUES ($1, $2, $3) \
             ON CONFLICT (path) DO UPDATE SET digest = excluded.digest, applied_at = excluded.applied_at")
        .bind(&key)
        .bind(&digest)
        .bind(crate::auth::now())
        .execute(db.write())
        .await
        .map_err(|e| e.to_string())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_count_up() {
        assert_eq!(next_version(Some("2026-12")), "2026-12.1");
        assert_eq!(next_version(Some("2026-12.1")), "2026-12.2");
        assert_eq!(next_version(None), "1");
    }
}
