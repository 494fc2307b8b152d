//! `/admin/customers/{org}/…`: a customer's pricing (region, overrides, the
//! plan version it is held to, add-ons, credits, promotions). Each change
//! is tried on the active pricing plugin first and audited.

use axum::extract::{Path, State};

use crate::api::AppState;
use crate::api::envelope::{ApiOk, Envelope, ErrorEnvelope};
use crate::api::error::ApiError;
use crate::api::extract::{ApiJson, Auth};
use crate::audit::Actor;
use crate::billing::customers::{
    AddonUpdate, Credit, CustomerPricing, HoldRequest, NewCredit, PricingUpdate, PromotionRequest,
};
use crate::billing::plans::{CatalogueUpdate, PlanUpdate, PlanView, PricingChanged, PricingView};
use crate::billing::simulate::{ShadowView, SimulateRequest, SimulationReport};

fn actor(auth: &Auth) -> Actor {
    Actor::key(&auth.0.key_id)
}

/// Everything that prices this customer beyond its plan.
#[utoipa::path(get, path = "/admin/customers/{org}/pricing", tag = "billing", security(("bearer" = [])),
    params(("org" = String, Path, description = "org_…")),
    responses((status = 200, body = Envelope<CustomerPricing>), (status = 404, body = ErrorEnvelope)))]
pub async fn get(State(state): State<AppState>, Path(org): Path<String>) -> Result<ApiOk<CustomerPricing>, ApiError> {
    Ok(ApiOk::ok(state.billing.customer_pricing(&org).await?))
}

/// Sets the customer's region and/or pricing overrides.
#[utoipa::path(put, path = "/admin/customers/{org}/pricing", tag = "billing", security(("bearer" = [])),
    params(("org" = String, Path, description = "org_…")), request_body = PricingUpdate,
    responses((status = 200, body = Envelope<CustomerPricing>),
        (status = 422, description = "PRICING_REJECTED: the pricing plugin refuses the change", body = ErrorEnvelope)))]
pub async fn update(
    State(state): State<AppState>,
    auth: Auth,
    Path(org): Path<String>,
    ApiJson(body): ApiJson<PricingUpdate>,
) -> Result<ApiOk<CustomerPricing>, ApiError> {
    Ok(ApiOk::ok(state.billing.update_customer_pricing(&org, body, &actor(&auth)).await?))
}

/// Grants a credit (drawn by invoices, soonest expiry first).
#[utoipa::path(post, path = "/admin/customers/{org}/credits", tag = "billing", security(("bearer" = [])),
    params(("org" = String, Path, description = "org_…")), request_body = NewCredit,
    responses((status = 201, body = Envelope<Credit>), (status = 404, body = ErrorEnvelope)))]
pub async fn add_credit(
    State(state): State<AppState>,
    auth: Auth,
    Path(org): Path<String>,
    ApiJson(body): ApiJson<NewCredit>,
) -> Result<ApiOk<Credit>, ApiError> {
    Ok(ApiOk::created(state.billing.add_credit(&org, body, &actor(&auth)).await?))
}

/// Subscribes the customer to an add-on, or changes its quantity or price.
#[utoipa::path(put, path = "/admin/customers/{org}/addons/{addon}", tag = "billing", security(("bearer" = [])),
    params(("org" = String, Path, description = "org_…"), ("addon" = String, Path, description = "add-on id")),
    request_body = AddonUpdate,
    responses((status = 200, body = Envelope<CustomerPricing>), (status = 422, body = ErrorEnvelope)))]
pub async fn set_addon(
    State(state): State<AppState>,
    auth: Auth,
    Path((org, addon)): Path<(String, String)>,
    ApiJson(body): ApiJson<AddonUpdate>,
) -> Result<ApiOk<CustomerPricing>, ApiError> {
    Ok(ApiOk::ok(state.billing.set_addon(&org, &addon, body, &actor(&auth)).await?))
}

#[utoipa::path(delete, path = "/admin/customers/{org}/addons/{addon}", tag = "billing", security(("bearer" = [])),
    params(("org" = String, Path, description = "org_…"), ("addon" = String, Path, description = "add-on id")),
    responses((status = 200, body = Envelope<CustomerPricing>)))]
pub async fn remove_addon(
    State(state): State<AppState>,
    auth: Auth,
    Path((org, addon)): Path<(String, String)>,
) -> Result<ApiOk<CustomerPricing>, ApiError> {
    Ok(ApiOk::ok(state.billing.remove_addon(&org, &addon, &actor(&auth)).await?))
}

/// Applies a promotion of the pricing config by its code.
#[utoipa::path(post, path = "/admin/customers/{org}/promotions", tag = "billing", security(("bearer" = [])),
    params(("org" = String, Path, description = "org_…")), request_body = PromotionRequest,
    responses((status = 200, body = Envelope<CustomerPricing>), (status = 409, body = ErrorEnvelope)))]
pub async fn apply_promotion(
    State(state): State<AppState>,
    auth: Auth,
    Path(org): Path<String>,
    ApiJson(body): ApiJson<PromotionRequest>,
) -> Result<ApiOk<CustomerPricing>, ApiError> {
    Ok(ApiOk::ok(state.billing.apply_promotion(&org, body, &actor(&auth)).await?))
}

/// Holds the customer to a version of its plan (grandfathering, A/B tests).
#[utoipa::path(put, path = "/admin/customers/{org}/plan-version", tag = "billing", security(("bearer" = [])),
    params(("org" = String, Path, description = "org_…")), request_body = HoldRequest,
    responses((status = 200, body = Envelope<CustomerPricing>), (status = 422, body = ErrorEnvelope)))]
pub async fn hold_plan_version(
    State(state): State<AppState>,
    auth: Auth,
    Path(org): Path<String>,
    ApiJson(body): ApiJson<HoldRequest>,
) -> Result<ApiOk<CustomerPricing>, ApiError> {
    Ok(ApiOk::ok(state.billing.hold_plan_version(&org, body, &actor(&auth)).await?))
}

/// Moves the customer to the current version of its plan.
#[utoipa::path(delete, path = "/admin/customers/{org}/plan-version", tag = "billing", security(("bearer" = [])),
    params(("org" = String, Path, description = "org_…")),
    responses((status = 200, body = Envelope<CustomerPricing>)))]
pub async fn release_plan_version(
    State(state): State<AppState>,
    auth: Auth,
    Path(org): Path<String>,
) -> Result<ApiOk<CustomerPricing>, ApiError> {
    Ok(ApiOk::ok(state.billing.release_plan_version(&org, &actor(&auth)).await?))
}

/// The pricing config in force (the global pricing activation's), its
/// version history, and why the policy file was refused, if it was.
#[utoipa::path(get, path = "/admin/pricing", tag = "billing", security(("bearer" = [])),
    responses((status = 200, body = Envelope<PricingView>)))]
pub async fn view(State(state): State<AppState>) -> Result<ApiOk<PricingView>, ApiError> {
    Ok(ApiOk::ok(state.billing.pricing_view().await?))
}

/// Creates or changes a plan: a new pricing version, validated by the
/// pricing plugin's config schema. Existing customers of a changed plan
/// keep its previous definition (grandfathering) unless told otherwise.
#[utoipa::path(put, path = "/admin/pricing/plans/{plan}", tag = "billing", security(("bearer" = [])),
    params(("plan" = String, Path, description = "plan id")), request_body = PlanUpdate,
    responses((status = 200, body = Envelope<PricingChanged>),
        (status = 422, description = "INVALID_CONFIG: `details.errors` name each field", body = ErrorEnvelope)))]
pub async fn update_plan(
    State(state): State<AppState>,
    auth: Auth,
    Path(plan): Path<String>,
    ApiJson(body): ApiJson<PlanUpdate>,
) -> Result<ApiOk<PricingChanged>, ApiError> {
    Ok(ApiOk::ok(state.billing.update_plan(&plan, body, &actor(&auth)).await?))
}

/// Prices recorded periods with a candidate pricing plugin (or the active
/// one with a candidate config) and compares per org with what was
/// invoiced (or, for periods not closed, what the active plugin prices).
#[utoipa::path(post, path = "/admin/plugins/{id}/simulate", tag = "billing", security(("bearer" = [])),
    params(("id" = String, Path, description = "the candidate pricing plugin (id or unique prefix)")),
    request_body = SimulateRequest,
    responses((status = 200, body = Envelope<SimulationReport>), (status = 404, body = ErrorEnvelope)))]
pub async fn simulate(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<SimulateRequest>,
) -> Result<ApiOk<SimulationReport>, ApiError> {
    Ok(ApiOk::ok(state.billing.simulate(&id, body, &|_, _| {}).await?))
}

#[derive(Debug, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ShadowRequest {
    /// The candidate's config; default: the active global pricing config.
    #[schema(value_type = Option<Object>)]
    pub config: Option<serde_json::Value>,
}

/// Shadow mode: the candidate prices every live preview beside the active
/// plugin; differences are counted in `/metrics` and listed here.
#[utoipa::path(post, path = "/admin/plugins/{id}/shadow", tag = "billing", security(("bearer" = [])),
    params(("id" = String, Path, description = "the candidate pricing plugin")), request_body = ShadowRequest,
    responses((status = 200, body = Envelope<ShadowView>)))]
pub async fn start_shadow(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ShadowRequest>,
) -> Result<ApiOk<ShadowView>, ApiError> {
    Ok(ApiOk::ok(state.billing.start_shadow(&id, body.config).await?))
}

/// What the shadow candidate has seen on this instance.
#[utoipa::path(get, path = "/admin/plugins/{id}/shadow", tag = "billing", security(("bearer" = [])),
    params(("id" = String, Path, description = "the candidate pricing plugin")),
    responses((status = 200, body = Envelope<ShadowView>), (status = 400, body = ErrorEnvelope)))]
pub async fn shadow(State(state): State<AppState>, Path(id): Path<String>) -> Result<ApiOk<ShadowView>, ApiError> {
    Ok(ApiOk::ok(state.billing.shadow(&id).await?))
}

/// Ends shadow mode, answering what it saw.
#[utoipa::path(delete, path = "/admin/plugins/{id}/shadow", tag = "billing", security(("bearer" = [])),
    params(("id" = String, Path, description = "the candidate pricing plugin")),
    responses((status = 200, body = Envelope<ShadowView>)))]
pub async fn stop_shadow(State(state): State<AppState>, Path(id): Path<String>) -> Result<ApiOk<ShadowView>, ApiError> {
    let view = state.billing.shadow(&id).await?;
    state.billing.stop_shadow();
    Ok(ApiOk::ok(view))
}

/// The plans of the pricing config in force: definition, deprecated or
/// not, customers on it and how many are held to an earlier definition.
#[utoipa::path(get, path = "/admin/pricing/plans", tag = "billing", security(("bearer" = [])),
    responses((status = 200, body = Envelope<Vec<PlanView>>)))]
pub async fn plans(State(state): State<AppState>) -> Result<ApiOk<Vec<PlanView>>, ApiError> {
    Ok(ApiOk::ok(state.billing.plans().await?))
}

/// Closes a plan to new customers; its customers keep it.
#[utoipa::path(post, path = "/admin/pricing/plans/{plan}/deprecate", tag = "billing", security(("bearer" = [])),
    params(("plan" = String, Path, description = "plan id")),
    responses((status = 200, body = Envelope<Vec<PlanView>>), (status = 400, body = ErrorEnvelope)))]
pub async fn deprecate_plan(
    State(state): State<AppState>,
    auth: Auth,
    Path(plan): Path<String>,
) -> Result<ApiOk<Vec<PlanView>>, ApiError> {
    Ok(ApiOk::ok(state.billing.deprecate_plan(&plan, false, &actor(&auth)).await?))
}

/// Reopens a deprecated plan to new customers.
#[utoipa::path(delete, path = "/admin/pricing/plans/{plan}/deprecate", tag = "billing", security(("bearer" = [])),
    params(("plan" = String, Path, description = "plan id")),
    responses((status = 200, body = Envelope<Vec<PlanView>>)))]
pub async fn reopen_plan(
    State(state): State<AppState>,
    auth: Auth,
    Path(plan): Path<String>,
) -> Result<ApiOk<Vec<PlanView>>, ApiError> {
    Ok(ApiOk::ok(state.billing.deprecate_plan(&plan, true, &actor(&auth)).await?))
}

/// Creates or changes an add-on, a promotion or a metric's volume
/// discounts: a new pricing version, validated by the plugin's schema.
#[utoipa::path(put, path = "/admin/pricing/{section}/{id}", tag = "billing", security(("bearer" = [])),
    params(("section" = String, Path, description = "addons, promotions or volume_discounts"),
        ("id" = String, Path, description = "the entry's id (a metric for volume_discounts)")),
    request_body = CatalogueUpdate,
    responses((status = 200, body = Envelope<PricingChanged>), (status = 422, body = ErrorEnvelope)))]
pub async fn update_catalogue(
    State(state): State<AppState>,
    auth: Auth,
    Path((section, id)): Path<(String, String)>,
    ApiJson(body): ApiJson<CatalogueUpdate>,
) -> Result<ApiOk<PricingChanged>, ApiError> {
    Ok(ApiOk::ok(state.billing.update_catalogue(&section, &id, body, &actor(&auth)).await?))
}
