//! A customer's pricing (seed 000's `customer_pricing` and its companions):
//! region, pricing overrides, the plan version it is held to
//! (grandfathering, A/B price tests), add-ons, credits and promotions.
//!
//! Every change is tried on the active pricing plugin before it is kept:
//! the customer's current period is priced with the change applied, and a
//! change the plugin refuses (an unknown add-on, malformed overrides, an
//! Enterprise customer without a price) is refused with its reason. Each
//! kept change is written to the audit log in its transaction.

use chrono::{DateTime, Months, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::BillingService;
use super::context::{self, BillingPeriod};
use super::invoices::{BillingError, decimal, failure_text};
use crate::audit::{self, Actor, NewEntry};
use crate::auth::Environment;
use crate::auth::keys::random_base62;
use crate::plugins::pricing::RatingInput;
use crate::store::sql::{Row, sql};

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CustomerPricing {
    pub org_id: String,
    pub plan: String,
    /// The `pricing` section of the org's overrides (negotiated price,
    /// limits, rates, discount, contract dates).
    #[schema(value_type = Object)]
    pub overrides: Value,
    pub region: Option<String>,
    pub stripe_customer_id: Option<String>,
    /// The plan version the customer is held to, if any.
    pub plan_version: Option<HeldPlan>,
    pub addons: Vec<CustomerAddon>,
    pub credits: Vec<Credit>,
    pub promotions: Vec<CustomerPromotion>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct HeldPlan {
    pub plan: String,
    /// The pricing version the definition comes from (or a label).
    pub pricing_version: Option<String>,
    /// None: until the customer is moved.
    pub until: Option<DateTime<Utc>>,
    #[schema(value_type = Object)]
    pub definition: Value,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CustomerAddon {
    pub addon_id: String,
    pub quantity: u32,
    pub price_override_micros: Option<i64>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Credit {
    pub id: String,
    /// `promotion`, `refund`, `manual` or `prepaid`.
    pub source: String,
    pub amount_micros: i64,
    pub remaining_micros: i64,
    pub remaining: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub reference: Option<String>,
    pub note: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CustomerPromotion {
    pub promotion_id: String,
    pub condition_met: bool,
    pub applied_at: DateTime<Utc>,
}

/// `PUT /admin/customers/{org}/pricing`: fields left out stay as they are.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PricingUpdate {
    /// A region (geographic pricing); `null` clears it.
    #[serde(default, with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub region: Option<Option<String>>,
    /// The customer's id at Stripe (the meter-event export names it);
    /// `null` clears it.
    #[serde(default, with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub stripe_customer_id: Option<Option<String>>,
    /// Replaces the `pricing` section of the org's overrides.
    #[schema(value_type = Option<Object>)]
    pub overrides: Option<Value>,
}

mod double_option {
    use serde::{Deserialize, Deserializer};
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
        Option::<String>::deserialize(d).map(Some)
    }
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewCredit {
    /// In currency units: `100`, `"25.50"` (at most 6 decimals).
    #[schema(value_type = String)]
    pub amount: Value,
    /// `manual` (default), `refund`, `promotion` or `prepaid`.
    pub source: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub note: Option<String>,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddonUpdate {
    /// Default 1.
    pub quantity: Option<u32>,
    /// A negotiated price per unit, in currency units.
    #[schema(value_type = Option<String>)]
    pub price: Option<Value>,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PromotionRequest {
    /// The promotion's id in the pricing config (`startup_program`).
    pub code: String,
    /// For a percentage promotion with a condition (an annual commitment):
    /// whether the customer meets it. Default true.
    pub condition_met: Option<bool>,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HoldRequest {
    /// Hold the customer to its plan as this stored pricing version defines it.
    pub pricing_version: Option<String>,
    /// Or to this definition of its plan (an A/B price test's variant).
    #[schema(value_type = Option<Object>)]
    pub definition: Option<Value>,
    /// A name for an inline definition (`starter-b`).
    pub label: Option<String>,
    /// Until then (grandfathering ends); default: until moved.
    pub until: Option<DateTime<Utc>>,
}

/// Currency units (a JSON number or decimal string) to micro-units.
pub fn parse_money(v: &Value, field: &str) -> Result<i64, BillingError> {
    let bad =
        || BillingError::Invalid(format!("{field} must be an amount such as 25 or \"25.50\" (at most 6 decimals)"));
    let text = match v {
        Value::Number(n) if n.is_f64() => format!("{:.6}", n.as_f64().unwrap_or(-1.0)),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.trim().to_string(),
        _ => return Err(bad()),
    };
    let (whole, frac) = text.split_once('.').unwrap_or((&text, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) || frac.len() > 6 {
        return Err(bad());
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let whole: i64 = whole.parse().map_err(|_| bad())?;
    let frac: i64 = if frac.is_empty() { 0 } else { format!("{frac:0<6}").parse().map_err(|_| bad())? };
    whole.checked_mul(1_000_000).and_then(|w| w.checked_add(frac)).ok_or_else(bad)
}

impl BillingService {
    /// Everything that prices this customer beyond its plan.
    pub async fn customer_pricing(&self, org_id: &str) -> Result<CustomerPricing, BillingError> {
        let db = self.inner.meter.db();
        let org = self.billed_org(org_id).await?;
        let overrides: Value = serde_json::from_str(&org.overrides).unwrap_or_else(|_| json!({}));
        let row = sql(
            "SELECT region, stripe_customer_id, snapshot_plan, plan_snapshot, snapshot_version, grandfathered_until \
             FROM customer_pricing WHERE org_id = $1",
        )
        .bind(org_id)
        .fetch_optional(db.read())
        .await?;
        let (mut region, mut stripe_customer_id, mut plan_version) = (None, None, None);
        if let Some(r) = row {
            region = r.get("region")?;
            stripe_customer_id = r.get("stripe_customer_id")?;
            if let (Some(plan), Some(def)) =
                (r.get::<Option<String>>("snapshot_plan")?, r.get::<Option<String>>("plan_snapshot")?)
            {
                plan_version = Some(HeldPlan {
                    plan,
                    pricing_version: r.get("snapshot_version")?,
                    until: r.opt_time("grandfathered_until")?,
                    definition: serde_json::from_str(&def).unwrap_or(Value::Null),
                });
            }
        }
        let addons =
            sql("SELECT addon_id, quantity, price_override FROM customer_addons WHERE org_id = $1 ORDER BY addon_id")
                .bind(org_id)
                .fetch_all(db.read())
                .await?
                .iter()
                .map(|r| {
                    Ok(CustomerAddon {
                        addon_id: r.get("addon_id")?,
                        quantity: r.get::<i64>("quantity")?.clamp(1, u32::MAX as i64) as u32,
                        price_override_micros: r.get("price_override")?,
                    })
                })
                .collect::<sqlx::Result<Vec<_>>>()?;
        let credits =
            sql("SELECT id, source, amount, remaining, expires_at, reference, note, created_at FROM customer_credits \
             WHERE org_id = $1 ORDER BY created_at, id")
            .bind(org_id)
            .fetch_all(db.read())
            .await?
            .iter()
            .map(credit_from)
            .collect::<sqlx::Result<Vec<_>>>()?;
        let promotions =
            sql("SELECT promotion_id, condition_met, applied_at FROM customer_promotions WHERE org_id = $1 \
             ORDER BY applied_at, promotion_id")
            .bind(org_id)
            .fetch_all(db.read())
            .await?
            .iter()
            .map(|r| {
                Ok(CustomerPromotion {
                    promotion_id: r.get("promotion_id")?,
                    condition_met: r.get("condition_met")?,
                    applied_at: r.time("applied_at")?,
                })
            })
            .collect::<sqlx::Result<Vec<_>>>()?;
        Ok(CustomerPricing {
            org_id: org.id,
            plan: org.plan,
            overrides: overrides.get("pricing").cloned().unwrap_or_else(|| json!({})),
            region,
            stripe_customer_id,
            plan_version,
            addons,
            credits,
            promotions,
        })
    }

    /// Prices the customer's current period with `change` applied; the
    /// plugin's refusal becomes the caller's error.
    async fn try_on_plugin(&self, org_id: &str, change: impl FnOnce(&mut RatingInput)) -> Result<(), BillingError> {
        let org = self.billed_org(org_id).await?;
        let period = BillingPeriod::containing(Utc::now());
        let policy = self.inner.meter.policy();
        let mut ctx =
            context::load(self.inner.meter.db(), &policy, std::slice::from_ref(&org), Environment::Live, &period)
                .await?
                .pop()
                .ok_or_else(|| BillingError::OrgNotFound(org_id.to_string()))?;
        change(&mut ctx.input);
        let pricing = self.inner.plugins.pricing();
        let active = pricing.active(org_id, &ctx.plan).ok_or_else(|| BillingError::NoPricing(ctx.plan.clone()))?;
        pricing
            .rate(&active, &ctx.input)
            .await
            .map(|_| ())
            .map_err(|f| BillingError::Rejected(format!("the pricing plugin refuses it: {}", failure_text(&f))))
    }

    /// The active global pricing config, parsed.
    fn pricing_config(&self) -> Option<Value> {
        let active = self.inner.plugins.pricing().global()?;
        serde_json::from_str(&active.config).ok()
    }

    pub async fn update_customer_pricing(
        &self,
        org_id: &str,
        update: PricingUpdate,
        actor: &Actor,
    ) -> Result<CustomerPricing, BillingError> {
        let before = self.customer_pricing(org_id).await?;
        if let Some(Some(region)) = &update.region {
            self.check_region(region)?;
        }
        if let Some(o) = &update.overrides
            && !o.is_object()
        {
            return Err(BillingError::Invalid("overrides must be a JSON object (the `pricing` section)".into()));
        }
        let org = self.billed_org(org_id).await?;
        let mut all: Value = serde_json::from_str(&org.overrides).unwrap_or_else(|_| json!({}));
        if let Some(o) = &update.overrides {
            all["pricing"] = o.clone();
        }
        let overrides_text = all.to_string();
        let region = update.region.clone();
        self.try_on_plugin(org_id, |input| {
            input.overrides = overrides_text.clone();
            if let Some(r) = region {
                input.region = r;
            }
        })
        .await?;
        let now = crate::auth::now();
        let mut tx = self.inner.meter.db().begin().await?;
        if let Some(region) = &update.region {
            sql("INSERT INTO customer_pricing (org_id, region, updated_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (org_id) DO UPDATE SET region = excluded.region, updated_at = excluded.updated_at")
            .bind(org_id)
            .bind(region.clone())
            .bind(now)
            .execute(&mut tx)
            .await?;
        }
        if let Some(customer) = &update.stripe_customer_id {
            sql("INSERT INTO customer_pricing (org_id, stripe_customer_id, updated_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (org_id) DO UPDATE SET stripe_customer_id = excluded.stripe_customer_id, \
                 updated_at = excluded.updated_at")
            .bind(org_id)
            .bind(customer.clone())
            .bind(now)
            .execute(&mut tx)
            .await?;
        }
        if update.overrides.is_some() {
            sql("UPDATE orgs SET overrides = $1 WHERE id = $2")
                .bind(overrides_text)
                .bind(org_id)
                .execute(&mut tx)
                .await?;
        }
        let after = json!({ "region": update.region, "overrides": update.overrides,
            "stripe_customer_id": update.stripe_customer_id });
        let before = json!({ "region": before.region, "overrides": before.overrides });
        audit::record_in(
            &mut tx,
            NewEntry::action(actor, Some(org_id), "pricing.customer_updated", org_id, Some(before), Some(after)),
        )
        .await?;
        tx.commit().await?;
        self.forget_pricing();
        self.customer_pricing(org_id).await
    }

    /// A region is known when some plan of the active config prices it.
    fn check_region(&self, region: &str) -> Result<(), BillingError> {
        let Some(config) = self.pricing_config() else { return Ok(()) };
        let known: Vec<String> = config["plans"]
            .as_object()
            .map(|plans| {
                let mut r: Vec<String> =
                    plans.values().filter_map(|p| p["regions"].as_object()).flat_map(|m| m.keys().cloned()).collect();
                r.sort();
                r.dedup();
                r
            })
            .unwrap_or_default();
        if known.iter().any(|r| r == region) {
            Ok(())
        } else {
            Err(BillingError::Invalid(format!(
                "unknown region `{region}`: the pricing config prices {}",
                if known.is_empty() { "no regions".to_string() } else { known.join(", ") }
            )))
        }
    }

    pub async fn add_credit(&self, org_id: &str, new: NewCredit, actor: &Actor) -> Result<Credit, BillingError> {
        let amount = parse_money(&new.amount, "amount")?;
        if amount <= 0 {
            return Err(BillingError::Invalid("amount must be more than 0".into()));
        }
        let source = new.source.as_deref().unwrap_or("manual");
        if !["manual", "refund", "promotion", "prepaid"].contains(&source) {
            return Err(BillingError::Invalid("source must be manual, refund, promotion or prepaid".into()));
        }
        if new.expires_at.is_some_and(|t| t <= Utc::now()) {
            return Err(BillingError::Invalid("expires_at must be in the future".into()));
        }
        self.billed_org(org_id).await?;
        self.insert_credit(org_id, amount, source, new.expires_at, None, new.note.as_deref(), actor).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn insert_credit(
        &self,
        org_id: &str,
        amount: i64,
        source: &str,
        expires_at: Option<DateTime<Utc>>,
        reference: Option<&str>,
        note: Option<&str>,
        actor: &Actor,
    ) -> Result<Credit, BillingError> {
        let id = format!("cr_{}", random_base62(16));
        let now = crate::auth::now();
        let mut tx = self.inner.meter.db().begin().await?;
        sql("INSERT INTO customer_credits (id, org_id, source, amount, remaining, expires_at, reference, note, created_at) \
             VALUES ($1, $2, $3, $4, $4, $5, $6, $7, $8)")
        .bind(&id)
        .bind(org_id)
        .bind(source)
        .bind(amount)
        .bind(expires_at)
        .bind(reference)
        .bind(note)
        .bind(now)
        .execute(&mut tx)
        .await?;
        let after = json!({ "id": id, "source": source, "amount_micros": amount, "expires_at": expires_at, "reference": reference });
        audit::record_in(
            &mut tx,
            NewEntry::action(actor, Some(org_id), "pricing.credit_granted", &id, None, Some(after)),
        )
        .await?;
        tx.commit().await?;
        let row = sql("SELECT id, source, amount, remaining, expires_at, reference, note, created_at FROM customer_credits WHERE id = $1")
            .bind(&id)
            .fetch_one(self.inner.meter.db().read())
            .await?;
        Ok(credit_from(&row)?)
    }

    /// Subscribes the customer to an add-on (or changes its quantity/price).
    pub async fn set_addon(
        &self,
        org_id: &str,
        addon: &str,
        update: AddonUpdate,
        actor: &Actor,
    ) -> Result<CustomerPricing, BillingError> {
        let quantity = update.quantity.unwrap_or(1);
        if quantity == 0 {
            return Err(BillingError::Invalid("quantity must be at least 1 (remove the add-on instead)".into()));
        }
        let price = update.price.as_ref().map(|p| parse_money(p, "price")).transpose()?;
        let id = addon.to_string();
        self.try_on_plugin(org_id, |input| {
            input.addons.retain(|a| a.id != id);
            input.addons.push(crate::plugins::pricing::AddonSubscription { id, quantity, price_override: price });
        })
        .await?;
        let mut tx = self.inner.meter.db().begin().await?;
        sql("INSERT INTO customer_addons (org_id, addon_id, quantity, price_override, created_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (org_id, addon_id) DO UPDATE SET quantity = excluded.quantity, price_override = excluded.price_override")
        .bind(org_id)
        .bind(addon)
        .bind(quantity)
        .bind(price)
        .bind(crate::auth::now())
        .execute(&mut tx)
        .await?;
        let after = json!({ "addon": addon, "quantity": quantity, "price_override_micros": price });
        audit::record_in(&mut tx, NewEntry::action(actor, Some(org_id), "pricing.addon_set", addon, None, Some(after)))
            .await?;
        tx.commit().await?;
        self.customer_pricing(org_id).await
    }

    pub async fn remove_addon(
        &self,
        org_id: &str,
        addon: &str,
        actor: &Actor,
    ) -> Result<CustomerPricing, BillingError> {
        self.billed_org(org_id).await?;
        let mut tx = self.inner.meter.db().begin().await?;
        let n = sql("DELETE FROM customer_addons WHERE org_id = $1 AND addon_id = $2")
            .bind(org_id)
            .bind(addon)
            .execute(&mut tx)
            .await?;
        if n == 0 {
            return Err(BillingError::Invalid(format!("org {org_id} has no add-on `{addon}`")));
        }
        audit::record_in(&mut tx, NewEntry::action(actor, Some(org_id), "pricing.addon_removed", addon, None, None))
            .await?;
        tx.commit().await?;
        self.customer_pricing(org_id).await
    }

    /// Applies a promotion of the active pricing config by its code. A credit
    /// promotion grants a credit (expiring after its `duration_months`); a
    /// percentage promotion is held by the customer and applied to each
    /// invoice while its condition is met.
    pub async fn apply_promotion(
        &self,
        org_id: &str,
        req: PromotionRequest,
        actor: &Actor,
    ) -> Result<CustomerPricing, BillingError> {
        self.billed_org(org_id).await?;
        let config = self.pricing_config().unwrap_or(Value::Null);
        let promo = config["promotions"].get(&req.code).cloned().ok_or_else(|| {
            let known: Vec<String> =
                config["promotions"].as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default();
            BillingError::Invalid(format!(
                "unknown promotion `{}`; the pricing config has: {}",
                req.code,
                if known.is_empty() { "none".into() } else { known.join(", ") }
            ))
        })?;
        match promo["type"].as_str() {
            Some("credit") => {
                let granted = sql("SELECT 1 AS one FROM customer_credits WHERE org_id = $1 AND source = 'promotion' AND reference = $2")
                    .bind(org_id)
                    .bind(&req.code)
                    .fetch_optional(self.inner.meter.db().read())
                    .await?;
                if granted.is_some() {
                    return Err(BillingError::Conflict(format!(
                        "promotion `{}` was already granted to {org_id}",
                        req.code
                    )));
                }
                let amount = parse_money(&promo["amount"], &format!("promotions.{}.amount", req.code))?;
                let expires = match promo["duration_months"].as_u64() {
                    Some(m) => Some(
                        crate::auth::now()
                            .checked_add_months(Months::new(m as u32))
                            .ok_or_else(|| BillingError::Invalid("duration_months is too long".into()))?,
                    ),
                    None => None,
                };
                let note = promo["eligibility"].as_str().map(|e| format!("eligibility: {e}"));
                self.insert_credit(org_id, amount, "promotion", expires, Some(&req.code), note.as_deref(), actor)
                    .await?;
            }
            Some("percentage") => {
                let met = req.condition_met.unwrap_or(true);
                let code = req.code.clone();
                self.try_on_plugin(org_id, |input| {
                    input.promotions.retain(|p| p.id != code);
                    input.promotions.push(crate::plugins::pricing::AppliedPromotion { id: code, condition_met: met });
                })
                .await?;
                let mut tx = self.inner.meter.db().begin().await?;
                sql("INSERT INTO customer_promotions (org_id, promotion_id, condition_met, applied_at) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (org_id, promotion_id) DO UPDATE SET condition_met = excluded.condition_met")
                .bind(org_id)
                .bind(&req.code)
                .bind(met)
                .bind(crate::auth::now())
                .execute(&mut tx)
                .await?;
                let after = json!({ "promotion": req.code, "condition_met": met });
                audit::record_in(
                    &mut tx,
                    NewEntry::action(actor, Some(org_id), "pricing.promotion_applied", &req.code, None, Some(after)),
                )
                .await?;
                tx.commit().await?;
            }
            other => {
                return Err(BillingError::Invalid(format!(
                    "promotion `{}` has type {:?}; this host applies `credit` and `percentage` promotions",
                    req.code, other
                )));
            }
        }
        self.customer_pricing(org_id).await
    }

    /// Holds the customer to a version of its plan: from a stored pricing
    /// version (grandfathering) or an inline definition (an A/B variant).
    pub async fn hold_plan_version(
        &self,
        org_id: &str,
        req: HoldRequest,
        actor: &Actor,
    ) -> Result<CustomerPricing, BillingError> {
        let org = self.billed_org(org_id).await?;
        let (definition, version) = match (&req.pricing_version, &req.definition) {
            (Some(v), None) => {
                let config = self.stored_pricing_version(v).await?.ok_or_else(|| {
                    BillingError::Invalid(format!("no pricing config with pricing_version `{v}` was ever active"))
                })?;
                let def = config["plans"].get(&org.plan).cloned().ok_or_else(|| {
                    BillingError::Invalid(format!("pricing version `{v}` has no plan `{}`", org.plan))
                })?;
                (def, Some(v.clone()))
            }
            (None, Some(d)) if d.is_object() => (d.clone(), req.label.clone()),
            _ => {
                return Err(BillingError::Invalid(
                    "give either pricing_version or definition (a plan object), not both".into(),
                ));
            }
        };
        let text = definition.to_string();
        let snapshot = text.clone();
        self.try_on_plugin(org_id, |input| input.plan_snapshot = Some(snapshot)).await?;
        let mut tx = self.inner.meter.db().begin().await?;
        sql("INSERT INTO customer_pricing (org_id, snapshot_plan, plan_snapshot, snapshot_version, grandfathered_until, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (org_id) DO UPDATE SET snapshot_plan = excluded.snapshot_plan, \
             plan_snapshot = excluded.plan_snapshot, snapshot_version = excluded.snapshot_version, \
             grandfathered_until = excluded.grandfathered_until, updated_at = excluded.updated_at")
        .bind(org_id)
        .bind(&org.plan)
        .bind(text)
        .bind(&version)
        .bind(req.until)
        .bind(crate::auth::now())
        .execute(&mut tx)
        .await?;
        let after = json!({ "plan": org.plan, "pricing_version": version, "until": req.until });
        audit::record_in(
            &mut tx,
            NewEntry::action(actor, Some(org_id), "pricing.plan_version_held", org_id, None, Some(after)),
        )
        .await?;
        tx.commit().await?;
        self.forget_pricing();
        self.customer_pricing(org_id).await
    }

    /// Moves the customer to the current version of its plan.
    pub async fn release_plan_version(&self, org_id: &str, actor: &Actor) -> Result<CustomerPricing, BillingError> {
        self.billed_org(org_id).await?;
        let mut tx = self.inner.meter.db().begin().await?;
        sql("UPDATE customer_pricing SET snapshot_plan = NULL, plan_snapshot = NULL, snapshot_version = NULL, \
             grandfathered_until = NULL, updated_at = $1 WHERE org_id = $2")
        .bind(crate::auth::now())
        .bind(org_id)
        .execute(&mut tx)
        .await?;
        audit::record_in(
            &mut tx,
            NewEntry::action(actor, Some(org_id), "pricing.plan_version_released", org_id, None, None),
        )
        .await?;
        tx.commit().await?;
        self.forget_pricing();
        self.customer_pricing(org_id).await
    }

    /// A pricing config by its `pricing_version`: one invoices used, or one
    /// a pricing plugin was ever activated with (newest first).
    pub async fn stored_pricing_version(&self, version: &str) -> Result<Option<Value>, BillingError> {
        let db = self.inner.meter.db();
        let stored = sql("SELECT config FROM pricing_configs WHERE pricing_version = $1 ORDER BY created_at DESC")
            .bind(version)
            .fetch_optional(db.read())
            .await?;
        if let Some(r) = stored {
            return Ok(serde_json::from_str(&r.get::<String>("config")?).ok());
        }
        let rows = sql("SELECT config FROM plugin_activations WHERE kind = 'pricing' ORDER BY activated_at DESC")
            .fetch_all(db.read())
            .await?;
        for r in rows {
            let config: Value = serde_json::from_str(&r.get::<String>("config")?).unwrap_or(Value::Null);
            if super::plans::version_of(&config).as_deref() == Some(version) {
                return Ok(Some(config));
            }
        }
        Ok(None)
    }
}

fn credit_from(r: &Row) -> sqlx::Result<Credit> {
    let remaining: i64 = r.get("remaining")?;
    Ok(Credit {
        id: r.get("id")?,
        source: r.get("source")?,
        amount_micros: r.get("amount")?,
        remaining_micros: remaining,
        remaining: decimal(remaining),
        expires_at: r.opt_time("expires_at")?,
        reference: r.get("reference")?,
        note: r.get("note")?,
        created_at: r.time("created_at")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money() {
        assert_eq!(parse_money(&json!(100), "a").unwrap(), 100_000_000);
        assert_eq!(parse_money(&json!("25.50"), "a").unwrap(), 25_500_000);
        assert_eq!(parse_money(&json!(0.000001), "a").unwrap(), 1);
        assert!(parse_money(&json!("1.0000001"), "a").is_err());
        assert!(parse_money(&json!("-1"), "a").is_err());
        assert!(parse_money(&json!("abc"), "a").is_err());
        assert!(parse_money(&json!(null), "a").is_err());
    }
}
