//! HTTP: the router, the envelope, errors and extractors. Routes stay thin:
//! they parse, check the scope, and call a domain service.

pub mod envelope;
pub mod error;
pub mod extract;
pub mod limits;
pub mod openapi;
pub mod routes;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, Method};
use axum::routing::{get, post};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::auth::AuthService;
use crate::config::Config;
use crate::limits::LimitService;
use crate::memories::MemoryService;
use crate::plugins::PluginService;
use crate::store::Database;
use error::ApiError;

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub db: Database,
    pub auth: AuthService,
    pub memories: MemoryService,
    pub plugins: PluginService,
    pub limits: LimitService,
}

pub fn router(state: AppState) -> anyhow::Result<Router> {
    use routes::{account, health, memories, plugins, retrieval};
    let api = Router::new()
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .route("/v1/memories", post(memories::create).get(memories::list).delete(memories::delete_all))
        .route("/v1/memories/{id}", get(memories::get).put(memories::update).delete(memories::delete))
        .route("/v1/memories/{id}/history", get(memories::history))
        .route("/v1/retrieve", post(retrieval::retrieve))
        .route("/v1/query", post(retrieval::query))
        .route("/v1/query/answer", post(retrieval::answer))
        .route("/v1/account", get(account::account))
        .route("/v1/account/limits", get(account::limits))
        .route("/v1/account/api-keys", get(account::list_keys).post(account::create_key))
        .route("/v1/account/api-keys/{key_id}", axum::routing::delete(account::revoke_key))
        .route("/v1/account/api-keys/{key_id}/rotate", post(account::rotate_key))
        .route(
            "/admin/plugins",
            post(plugins::upload).layer(DefaultBodyLimit::max(plugins::UPLOAD_BODY_LIMIT)).get(plugins::list),
        )
        .route("/admin/plugins/{id}", get(plugins::get))
        .route("/admin/plugins/{id}/activate", post(plugins::activate))
        .route("/admin/plugins/{id}/rollback", post(plugins::rollback))
        .route("/admin/plugins/{id}/deactivate", post(plugins::deactivate))
        .route("/admin/plugins/{id}/run", post(plugins::run))
        .route("/admin/plugins/active/{kind}/run", post(plugins::run_active))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), limits::enforce))
        .with_state(state.clone())
        .merge(openapi::docs_router())
        .fallback(|| async { ApiError::RouteNotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .layer(axum::middleware::from_fn(extract::refuse_key_in_url));
    let api = match cors_layer(&state.config.cors_origins)? {
        Some(cors) => api.layer(cors),
        None => api,
    };
    Ok(api.layer(axum::middleware::from_fn(envelope::request_context)))
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
            ])
            .expose_headers([HeaderName::from_static(envelope::REQUEST_ID_HEADER)])
            .max_age(std::time::Duration::from_secs(600)),
    ))
}
