//! The pricing config (`policies/pricing.yaml`, seed 000 §3.1, as JSON) and
//! the customer's overrides. Money is a decimal in currency units (`49`,
//! `0.50`) or, in the older form, an integer in micro-units
//! (`base_price_micros`, `price_micros`).

// Some fields are read by the host or other plugins (rate limits, features,
// promotion credits the host grants) or are notes: accepted and validated here.
#![allow(dead_code)]

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use crate::money::Fixed;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "usd")]
    pub currency: String,
    #[serde(default)]
    pub pricing_version: Option<String>,
    #[serde(default)]
    pub effective_date: Option<String>,
    /// The billable metrics (read by the metering policy, not here).
    #[serde(default)]
    pub metrics: BTreeMap<String, Value>,
    pub plans: BTreeMap<String, Plan>,
    #[serde(default)]
    pub addons: BTreeMap<String, AddonDef>,
    /// Per metric: discount on its usage charge from a usage threshold on.
    #[serde(default)]
    pub volume_discounts: BTreeMap<String, Vec<VolumeTier>>,
    #[serde(default)]
    pub promotions: BTreeMap<String, PromotionDef>,
}

fn usd() -> String {
    "USD".into()
}

/// A fixed price, or `custom` (negotiated per customer).
#[derive(Deserialize, Clone, Copy, Debug)]
#[serde(untagged)]
pub enum Price {
    Custom(CustomWord),
    Amount(Fixed),
}

#[derive(Deserialize, Clone, Copy, Debug)]
#[serde(rename_all = "lowercase")]
pub enum CustomWord {
    Custom,
}

/// Included units per metric, or `custom` (from the customer's overrides).
#[derive(Deserialize, Clone, Debug)]
#[serde(untagged)]
pub enum Limits {
    Custom(CustomWord),
    Units(BTreeMap<String, u64>),
}

impl Default for Limits {
    fn default() -> Self {
        Limits::Units(BTreeMap::new())
    }
}

#[derive(Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub base_price: Option<Price>,
    #[serde(default)]
    pub base_price_micros: Option<i64>,
    #[serde(default)]
    pub limits: Limits,
    /// Read by the rate-limit plugin.
    #[serde(default)]
    pub rate_limits: Value,
    #[serde(default)]
    pub features: Vec<String>,
    #[serde(default)]
    pub overage_allowed: Option<bool>,
    /// How units above the included amount are charged, per metric.
    #[serde(default)]
    pub overage: BTreeMap<String, Charge>,
    /// Geographic pricing: what a region changes.
    #[serde(default)]
    pub regions: BTreeMap<String, RegionPrices>,
}

#[derive(Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct RegionPrices {
    #[serde(default)]
    pub currency: Option<String>,
    #[serde(default)]
    pub base_price: Option<Price>,
    #[serde(default)]
    pub base_price_micros: Option<i64>,
    #[serde(default)]
    pub overage: BTreeMap<String, Charge>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug, Default)]
#[serde(rename_all = "snake_case")]
pub enum Model {
    /// `price` per `per` units, pro rata.
    #[default]
    Standard,
    /// Each unit at the price of the tier it falls in.
    Graduated,
    /// Every unit at the price of the tier the total falls in.
    Volume,
    /// `price` per started package of `size` units.
    Package,
    /// `rate` of the quantity (a money amount in micro-units).
    Percentage,
    /// Each part of the amount at the rate of the tier it falls in.
    GraduatedPercentage,
}

/// A metric's charge on its billable units (those above the included amount).
#[derive(Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct Charge {
    #[serde(default)]
    pub model: Model,
    #[serde(default)]
    pub price: Option<Fixed>,
    #[serde(default)]
    pub price_micros: Option<i64>,
    #[serde(default)]
    pub per: Option<u64>,
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub rate: Option<Fixed>,
    /// Percentage models: a fee once the charge applies at all.
    #[serde(default)]
    pub fixed_fee: Option<Fixed>,
    #[serde(default)]
    pub tiers: Vec<Tier>,
}

#[derive(Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    /// Last unit of the tier (inclusive); none: no end.
    #[serde(default)]
    pub up_to: Option<u64>,
    #[serde(default)]
    pub price: Option<Fixed>,
    #[serde(default)]
    pub per: Option<u64>,
    #[serde(default)]
    pub rate: Option<Fixed>,
    #[serde(default)]
    pub flat_fee: Option<Fixed>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(deny_unknown_fields)]
pub struct VolumeTier {
    pub threshold: u64,
    /// A fraction: `0.10` is 10 %.
    pub discount: Fixed,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct AddonDef {
    #[serde(default)]
    pub display_name: Option<String>,
    pub price: Fixed,
    #[serde(default)]
    pub billing: Option<String>,
    /// What one unit is (e.g. 10 000 memories); informational.
    #[serde(default)]
    pub per_unit: Option<u64>,
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Deserialize, Clone)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum PromotionDef {
    /// Granted by the host as a credit when applied; priced as a credit.
    Credit {
        amount: Fixed,
        #[serde(default)]
        eligibility: Option<String>,
        #[serde(default)]
        duration_months: Option<u32>,
    },
    /// A discount on the subtotal while its condition holds.
    Percentage {
        discount: Fixed,
        #[serde(default)]
        condition: Option<String>,
    },
}

/// The org's overrides: only the `pricing` section is ours (the rate-limit
/// plugin reads `rate_limits`).
#[derive(Deserialize, Default)]
pub struct OrgOverrides {
    #[serde(default)]
    pub pricing: Overrides,
}

/// Seed 000's `customer_pricing`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Overrides {
    #[serde(default)]
    pub base_price: Option<Fixed>,
    #[serde(default)]
    pub base_price_micros: Option<i64>,
    /// A negotiated price replacing the base price.
    #[serde(default)]
    pub negotiated_price: Option<Fixed>,
    #[serde(default)]
    pub overage_allowed: Option<bool>,
    #[serde(default)]
    pub limits: BTreeMap<String, u64>,
    /// Custom rates, per metric.
    #[serde(default)]
    pub overage: BTreeMap<String, Charge>,
    /// Percent off the subtotal: `15` is 15 %.
    #[serde(default)]
    pub discount_percent: Option<Fixed>,
    /// `YYYY-MM-DD`: outside these dates the overrides do not apply.
    #[serde(default)]
    pub contract_start: Option<String>,
    #[serde(default)]
    pub contract_end: Option<String>,
    #[serde(default)]
    pub notes: Option<String>,
}
