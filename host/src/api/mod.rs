//! HTTP: the router and the request path (`request_path.rs`), the envelope,
//! errors and extractors. Routes stay thin: they parse, check the scope, and
//! call a domain service.

pub mod envelope;
pub mod error;
pub mod extract;
pub mod openapi;
pub mod request_path;
pub mod routes;
pub mod step;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, Method};
use axum::routing::{delete, get, post, put};
use tower::ServiceBuilder;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::auth::AuthService;
use crate::billing::BillingService;
use crate::config::Config;
use crate::limits::LimitService;
use crate::memories::MemoryService;
use crate::metering::UsageMeter;
use crate::plugins::PluginService;
use crate::store::Database;
use crate::supervisor::Supervisor;
use error::ApiError;
use request_path as path;
use step::steps;

/// What handlers and the request path share: the domain services, behind
/// one `Arc`. axum clones the state for every layer and handler of every
/// request, so a clone must be one reference count, not one per service.
#[derive(Clone)]
pub struct AppState(Arc<Services>);

impl AppState {
    pub fn new(services: Services) -> AppState {
        AppState(Arc::new(services))
    }
}

impl std::ops::Deref for AppState {
    type Target = Services;
    fn deref(&self) -> &Services {
        &self.0
    }
}

/// The domain services a server runs with.
pub struct Services {
    pub config: Arc<Config>,
    pub db: Database,
    pub auth: AuthService,
    pub memories: MemoryService,
    pub plugins: PluginService,
    pub limits: LimitService,
    pub billing: BillingService,
    pub jobs: crate::jobs::JobService,
    pub meter: UsageMeter,
    pub supervisor: Supervisor,
    pub path_stats: Arc<path::PathStats>,
}

/// The HTTP API: the request path of `request_path.rs`, in its order, around
/// the `/v1` (customers) and `/admin` (operators) routers.
pub fn router(state: AppState) -> anyhow::Result<Router> {
    use routes::{account, admin, batch, health, invoices, memories, plugins, pricing, retrieval, usage};

    let st = &state;
    let mut v1 = Router::new()
        .route("/v1/memories", post(memories::create).get(memories::list).delete(memories::delete_all))
        .route("/v1/batch/memories", post(memories::batch_create))
        .route("/v1/batch/extract", post(batch::extract))
        .route("/v1/batch/embeddings", post(batch::embeddings))
        .route("/v1/batch", get(batch::list))
        .route("/v1/batch/{job_id}", get(batch::get))
        .route("/v1/batch/{job_id}/cancel", post(batch::cancel))
        .route("/v1/memories/{id}", get(memories::get).put(memories::update).delete(memories::delete))
        .route("/v1/memories/{id}/history", get(memories::history))
        .route("/v1/retrieve", post(retrieval::retrieve))
        .route("/v1/query", post(retrieval::query))
        .route("/v1/query/answer", post(retrieval::answer))
        .route("/v1/account", get(account::account))
        .route("/v1/account/limits", get(account::limits))
        .route("/v1/account/api-keys", get(account::list_keys).post(account::create_key))
        .route("/v1/account/api-keys/{key_id}", delete(account::revoke_key))
        .route("/v1/account/api-keys/{key_id}/rotate", post(account::rotate_key))
        .route("/v1/usage", get(usage::usage))
        .route("/v1/usage/history", get(usage::history))
        .route("/v1/invoices", get(invoices::list))
        .route("/v1/invoices/upcoming", get(invoices::upcoming))
        .route("/v1/invoices/{id}", get(invoices::get));
    if state.config.fault_injection {
        // Test-only: proves a panicking handler answers 500 and the server serves on.
        v1 = v1.route("/v1/debug/panic", get(health::panic_on_purpose));
    }
    // Steps 4–7 for customers: per-address limit, authentication, rate
    // limit, idempotency keys, quota, then metering around the handler.
    let v1 = v1.route_layer(step::chain(
        st,
        steps![
            path::LimitAddressStep,
            path::AuthenticateStep,
            path::RateLimitStep,
            path::IdempotencyStep,
            path::QuotaStep,
            path::MeterStep
        ],
    ));

    let admin = Router::new()
        .route("/admin/plugins", post(plugins::upload).layer(DefaultBodyLimit::disable()).get(plugins::list))
        .route("/admin/plugins/{id}", get(plugins::get))
        .route("/admin/plugins/{id}/activate", post(plugins::activate))
        .route("/admin/plugins/{id}/rollback", post(plugins::rollback))
        .route("/admin/plugins/{id}/deactivate", post(plugins::deactivate))
        .route("/admin/plugins/{id}/run", post(plugins::run))
        .route("/admin/plugins/{id}/calls", get(plugins::calls))
        .route("/admin/plugins/active/{kind}/run", post(plugins::run_active))
        .route("/admin/plugins/{id}/simulate", post(pricing::simulate))
        .route(
            "/admin/plugins/{id}/shadow",
            post(pricing::start_shadow).get(pricing::shadow).delete(pricing::stop_shadow),
        )
        .route("/admin/metrics", get(admin::metrics))
        .route("/admin/metrics/{name}", get(admin::metric))
        .route("/admin/usage/export", get(admin::export))
        .route("/admin/audit", get(admin::audit_log))
        .route("/admin/audit/verify", get(admin::audit_verify))
        .route("/admin/invoices", get(invoices::admin_list))
        .route("/admin/invoices/upcoming", get(invoices::admin_upcoming))
        .route("/admin/invoices/finalize", post(invoices::finalize))
        .route("/admin/invoices/{id}", get(invoices::admin_get))
        .route("/admin/invoices/{id}/verify", post(invoices::verify))
        .route("/admin/invoices/{id}/payments", post(invoices::record_payment).get(invoices::payments))
        .route("/admin/invoices/stripe-meter-events", get(invoices::stripe_meter_events))
        .route("/admin/pricing", get(pricing::view))
        .route("/admin/pricing/plans", get(pricing::plans))
        .route("/admin/pricing/plans/{plan}", put(pricing::update_plan))
        .route("/admin/pricing/plans/{plan}/deprecate", post(pricing::deprecate_plan).delete(pricing::reopen_plan))
        .route("/admin/pricing/{section}/{id}", put(pricing::update_catalogue))
        .route("/admin/customers/{org}/pricing", get(pricing::get).put(pricing::update))
        .route("/admin/customers/{org}/credits", post(pricing::add_credit))
        .route("/admin/customers/{org}/addons/{addon}", put(pricing::set_addon).delete(pricing::remove_addon))
        .route("/admin/customers/{org}/promotions", post(pricing::apply_promotion))
        .route(
            "/admin/customers/{org}/plan-version",
            put(pricing::hold_plan_version).delete(pricing::release_plan_version),
        )
        // Steps 4–7 for operators: the same, the operator check, then
        // idempotency keys and metering (operator calls are audited too).
        .route_layer(step::chain(
            st,
            steps![
                path::LimitAddressStep,
                path::AuthenticateStep,
                path::RateLimitStep,
                path::RequireOperatorStep,
                path::IdempotencyStep,
                path::MeterStep
            ],
        ));

    let api = Router::new()
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .route("/metrics", get(health::metrics))
        // Signed by Stripe, not by an API key.
        .route("/webhooks/stripe", post(invoices::stripe_webhook))
        .merge(v1)
        .merge(admin)
        .with_state(state.clone())
        .merge(openapi::docs_router())
        .fallback(|| async { ApiError::RouteNotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed });
    // Steps 1–3, outermost first (CORS between them, so refusals carry its headers).
    let api = api.layer(
        ServiceBuilder::new()
            .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
            .layer(step::chain(st, steps![path::RefuseKeyInUrlStep])),
    );
    let api = match cors_layer(&state.config.cors_origins)? {
        Some(cors) => api.layer(cors),
        None => api,
    };
    Ok(api.layer(step::chain(st, steps![path::RequestContextStep, path::CatchPanicStep])))
}

/// CORS for the configured origins only; none configured means no CORS headers.
fn cors_layer(origins: &[String]) -> anyhow::Result<Option<CorsLayer>> {
    if origins.is_empty() {
        return Ok(None);
    }
    let list = origins
        .iter()
        .map(|o| HeaderValue::from_str(o).map_err(|_| anyhow::anyhow!("invalid CORS origin `{o}`")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(list))
            .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
            .allow_headers([
                axum::http::header::AUTHORIZATION,
                axum::http::header::CONTENT_TYPE,
                HeaderName::from_static(envelope::REQUEST_ID_HEADER),
                HeaderName::from_static(request_path::IDEMPOTENCY_KEY_HEADER),
                HeaderName::from_static(request_path::USAGE_TAGS_HEADER),
            ])
            .expose_headers([
                HeaderName::from_static(envelope::REQUEST_ID_HEADER),
                HeaderName::from_static(request_path::IDEMPOTENT_REPLAYED_HEADER),
                HeaderName::from_static("ratelimit-limit"),
                HeaderName::from_static("ratelimit-remaining"),
                HeaderName::from_static("ratelimit-reset"),
                HeaderName::from_static("retry-after"),
            ])
            .max_age(std::time::Duration::from_secs(600)),
    ))
}
