//! Invoices. Customers: `/v1/invoices/upcoming` (the current period priced
//! now), `/v1/invoices` and `/v1/invoices/{id}`, as JSON, CSV or printable
//! HTML. Operators: any org's invoices and preview, period close
//! (`/admin/invoices/finalize`) and replay (`/admin/invoices/{id}/verify`).
//! Reading invoices is not billed (`request_path::metered`).

use axum::extract::{Path, State};
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::usage::csv_response;
use crate::api::AppState;
use crate::api::envelope::{ApiOk, Envelope, ErrorEnvelope};
use crate::api::error::ApiError;
use crate::api::extract::{ApiJson, ApiQuery, Auth, RawBody};
use crate::audit::Actor;
use crate::auth::{Environment, Scope};
use crate::billing::payments::{Payment, PaymentRequest, WebhookOutcome, verify_stripe_signature};
use crate::billing::{FinalizeReport, InvoiceFilter, InvoiceVerification, InvoiceView, render};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct InvoiceFormat {
    /// `json` (default), `csv` or `html` (a printable page).
    pub format: Option<String>,
}

#[derive(Debug, Clone, Copy)]
enum Format {
    Json,
    Csv,
    Html,
}

fn format(f: Option<&str>) -> Result<Format, ApiError> {
    match f {
        None | Some("json") => Ok(Format::Json),
        Some("csv") => Ok(Format::Csv),
        Some("html") => Ok(Format::Html),
        Some(other) => {
            Err(ApiError::invalid_field("format", format!("format must be json, csv or html (got `{other}`)")))
        }
    }
}

fn respond(inv: InvoiceView, f: Format) -> Response {
    match f {
        Format::Json => ApiOk::ok(inv).into_response(),
        Format::Csv => {
            let name = format!("invoice-{}-{}.csv", inv.id.as_deref().unwrap_or("upcoming"), inv.period);
            csv_response(&name, render::csv(&inv))
        }
        Format::Html => ([(CONTENT_TYPE, "text/html; charset=utf-8")], render::html(&inv)).into_response(),
    }
}

/// The current period priced now by the active pricing plugin: what the
/// invoice would be if the period closed at this moment. A test key sees
/// its sandbox usage (`livemode: false`), which is never invoiced.
#[utoipa::path(get, path = "/v1/invoices/upcoming", tag = "billing", security(("bearer" = [])), params(InvoiceFormat),
    responses((status = 200, body = Envelope<InvoiceView>), (status = 422, description = "PRICING_FAILED", body = ErrorEnvelope),
        (status = 503, description = "PRICING_UNAVAILABLE", body = ErrorEnvelope)))]
pub async fn upcoming(
    State(state): State<AppState>,
    auth: Auth,
    ApiQuery(q): ApiQuery<InvoiceFormat>,
) -> Result<Response, ApiError> {
    let f = format(q.format.as_deref())?;
    let p = auth.require(Scope::Read)?;
    // From the database, not the key cache: a plan or price change shows at once.
    let org = state.billing.billed_org(&p.org_id).await?;
    Ok(respond(state.billing.preview(org, p.environment).await?, f))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct InvoiceListParams {
    /// `YYYY-MM`.
    pub period: Option<String>,
    /// `finalized`, `paid`, `payment_failed` or `void`.
    pub status: Option<String>,
    /// 1–1000, default 100; newest period first.
    pub limit: Option<usize>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AdminInvoiceListParams {
    pub org: Option<String>,
    pub period: Option<String>,
    pub status: Option<String>,
    pub limit: Option<usize>,
}

fn filter(
    org_id: Option<String>,
    period: Option<String>,
    status: Option<String>,
    limit: Option<usize>,
) -> Result<InvoiceFilter, ApiError> {
    if let Some(p) = &period
        && crate::billing::BillingPeriod::parse(p).is_none()
    {
        return Err(ApiError::invalid_field("period", format!("period must be YYYY-MM (got `{p}`)")));
    }
    if let Some(s) = &status
        && !["finalized", "paid", "payment_failed", "void"].contains(&s.as_str())
    {
        return Err(ApiError::invalid_field("status", "status must be finalized, paid, payment_failed or void"));
    }
    let limit = limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid_field("limit", "limit must be 1 to 1000"));
    }
    Ok(InvoiceFilter { org_id, period, status, limit })
}

/// The caller's finalized invoices, newest period first (none for a test key).
#[utoipa::path(get, path = "/v1/invoices", tag = "billing", security(("bearer" = [])), params(InvoiceListParams),
    responses((status = 200, body = Envelope<Vec<InvoiceView>>)))]
pub async fn list(
    State(state): State<AppState>,
    auth: Auth,
    ApiQuery(q): ApiQuery<InvoiceListParams>,
) -> Result<ApiOk<Vec<InvoiceView>>, ApiError> {
    let p = auth.require(Scope::Read)?;
    let f = filter(Some(p.org_id.clone()), q.period, q.status, q.limit)?;
    if p.environment == Environment::Test {
        return Ok(ApiOk::ok(Vec::new()));
    }
    Ok(ApiOk::ok(state.billing.invoices(&f).await?))
}

/// One of the caller's invoices.
#[utoipa::path(get, path = "/v1/invoices/{id}", tag = "billing", security(("bearer" = [])), params(InvoiceFormat,
        ("id" = String, Path, description = "inv_…")),
    responses((status = 200, body = Envelope<InvoiceView>), (status = 404, description = "INVOICE_NOT_FOUND", body = ErrorEnvelope)))]
pub async fn get(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<InvoiceFormat>,
) -> Result<Response, ApiError> {
    let f = format(q.format.as_deref())?;
    let p = auth.require(Scope::Read)?;
    if p.environment == Environment::Test {
        return Err(crate::billing::BillingError::NotFound(id).into());
    }
    Ok(respond(state.billing.invoice(&id, Some(&p.org_id)).await?, f))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AdminUpcomingParams {
    /// The org (org_…).
    pub org: String,
    pub format: Option<String>,
}

/// Any org's live preview of the current period.
#[utoipa::path(get, path = "/admin/invoices/upcoming", tag = "billing", security(("bearer" = [])), params(AdminUpcomingParams),
    responses((status = 200, body = Envelope<InvoiceView>), (status = 404, body = ErrorEnvelope)))]
pub async fn admin_upcoming(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<AdminUpcomingParams>,
) -> Result<Response, ApiError> {
    let f = format(q.format.as_deref())?;
    let org = state.billing.billed_org(&q.org).await?;
    Ok(respond(state.billing.preview(org, Environment::Live).await?, f))
}

/// Every org's finalized invoices, filtered.
#[utoipa::path(get, path = "/admin/invoices", tag = "billing", security(("bearer" = [])), params(AdminInvoiceListParams),
    responses((status = 200, body = Envelope<Vec<InvoiceView>>)))]
pub async fn admin_list(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<AdminInvoiceListParams>,
) -> Result<ApiOk<Vec<InvoiceView>>, ApiError> {
    let f = filter(q.org, q.period, q.status, q.limit)?;
    Ok(ApiOk::ok(state.billing.invoices(&f).await?))
}

/// Any invoice.
#[utoipa::path(get, path = "/admin/invoices/{id}", tag = "billing", security(("bearer" = [])), params(InvoiceFormat,
        ("id" = String, Path, description = "inv_…")),
    responses((status = 200, body = Envelope<InvoiceView>), (status = 404, body = ErrorEnvelope)))]
pub async fn admin_get(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<InvoiceFormat>,
) -> Result<Response, ApiError> {
    let f = format(q.format.as_deref())?;
    Ok(respond(state.billing.invoice(&id, None).await?, f))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FinalizeRequest {
    /// The closed period, `YYYY-MM`.
    pub period: String,
    /// Only these orgs (default: every org that existed before the period ended).
    pub orgs: Option<Vec<String>>,
}

/// Closes a period: an immutable invoice per org, credits drawn once, an
/// `invoice.created` event each. Idempotent: a rerun makes only what is
/// missing (orgs that failed before) and changes nothing else.
#[utoipa::path(post, path = "/admin/invoices/finalize", tag = "billing", security(("bearer" = [])), request_body = FinalizeRequest,
    responses((status = 200, body = Envelope<FinalizeReport>),
        (status = 409, description = "PERIOD_NOT_CLOSED", body = ErrorEnvelope)))]
pub async fn finalize(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(body): ApiJson<FinalizeRequest>,
) -> Result<ApiOk<FinalizeReport>, ApiError> {
    let actor = Actor::key(&auth.0.key_id);
    let report = state.billing.finalize(&body.period, body.orgs.as_deref(), &actor, &|_, _| {}).await?;
    Ok(ApiOk::ok(report))
}

/// Re-prices a finalized invoice with the plugin and config it records and
/// compares, to the micro-unit.
#[utoipa::path(post, path = "/admin/invoices/{id}/verify", tag = "billing", security(("bearer" = [])),
    params(("id" = String, Path, description = "inv_…")),
    responses((status = 200, body = Envelope<InvoiceVerification>), (status = 404, body = ErrorEnvelope)))]
pub async fn verify(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<ApiOk<InvoiceVerification>, ApiError> {
    Ok(ApiOk::ok(state.billing.verify(&id).await?))
}

/// Records a payment, or a failed payment, on an invoice. A failure
/// records a `billing.payment_failed` event.
#[utoipa::path(post, path = "/admin/invoices/{id}/payments", tag = "billing", security(("bearer" = [])),
    params(("id" = String, Path, description = "inv_…")), request_body = PaymentRequest,
    responses((status = 201, body = Envelope<Payment>), (status = 404, body = ErrorEnvelope),
        (status = 409, description = "already paid, or void", body = ErrorEnvelope)))]
pub async fn record_payment(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<PaymentRequest>,
) -> Result<ApiOk<Payment>, ApiError> {
    let actor = Actor::key(&auth.0.key_id);
    Ok(ApiOk::created(state.billing.record_payment(&id, body, "manual", &actor).await?))
}

/// The payments recorded on an invoice.
#[utoipa::path(get, path = "/admin/invoices/{id}/payments", tag = "billing", security(("bearer" = [])),
    params(("id" = String, Path, description = "inv_…")),
    responses((status = 200, body = Envelope<Vec<Payment>>), (status = 404, body = ErrorEnvelope)))]
pub async fn payments(State(state): State<AppState>, Path(id): Path<String>) -> Result<ApiOk<Vec<Payment>>, ApiError> {
    Ok(ApiOk::ok(state.billing.payments(&id).await?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PeriodParam {
    /// A finalized period, `YYYY-MM`.
    pub period: String,
}

/// A finalized period's usage as Stripe meter events, one JSON object per
/// line (Stripe's `billing.meter_event` shape, with an idempotent
/// `identifier`), for operators who sync usage to Stripe Billing.
#[utoipa::path(get, path = "/admin/invoices/stripe-meter-events", tag = "billing", security(("bearer" = [])),
    params(PeriodParam), responses((status = 200, description = "application/x-ndjson", body = String)))]
pub async fn stripe_meter_events(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<PeriodParam>,
) -> Result<Response, ApiError> {
    let events = state.billing.stripe_meter_events(&q.period).await?;
    let mut body = String::new();
    for e in events {
        body.push_str(&e.to_string());
        body.push('\n');
    }
    Ok(([(CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}

/// Stripe's webhook: the `Stripe-Signature` header must sign the payload
/// with the configured secret within 5 minutes; each event is handled once.
/// `invoice.payment_failed` naming a memhost invoice (its
/// `metadata.memhost_invoice_id`) records the failure.
#[utoipa::path(post, path = "/webhooks/stripe", tag = "billing",
    request_body(content = String, content_type = "application/json", description = "a Stripe event, as Stripe sent it"),
    responses((status = 200, body = Envelope<WebhookOutcome>),
        (status = 400, description = "INVALID_SIGNATURE or a payload that is not an event", body = ErrorEnvelope),
        (status = 404, description = "no webhook secret configured", body = ErrorEnvelope)))]
pub async fn stripe_webhook(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    RawBody(body): RawBody,
) -> Result<ApiOk<WebhookOutcome>, ApiError> {
    let Some(secret) = state.config.stripe_webhook_secret.as_deref() else {
        return Err(ApiError::RouteNotFound);
    };
    let signature = headers.get("stripe-signature").and_then(|v| v.to_str().ok()).unwrap_or("");
    if let Err(reason) = verify_stripe_signature(secret, signature, &body, chrono::Utc::now().timestamp()) {
        return Err(ApiError::Rejected {
            status: axum::http::StatusCode::BAD_REQUEST,
            code: "INVALID_SIGNATURE",
            message: format!("Stripe-Signature refused: {reason}"),
            details: None,
        });
    }
    let event: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| ApiError::invalid(format!("the payload is not JSON: {e}")))?;
    Ok(ApiOk::ok(state.billing.stripe_event(&event).await?))
}
