//! The response envelope of every endpoint (seed 000 §1.3) and the request
//! context that fills its `meta`.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};

use super::error::ApiError;
use crate::metering::{RequestUsage, UsageSnapshot};

pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Per-request facts shared by the handler and the envelope.
#[derive(Debug)]
pub struct RequestContext {
    pub request_id: String,
    pub started: Instant,
    pub usage: RequestUsage,
    /// The request's trace span (the request path records org, key and
    /// route on it as it learns them).
    pub span: tracing::Span,
    /// The route template, once authentication has matched it (for `/metrics`).
    pub route: std::sync::OnceLock<String>,
}

tokio::task_local! {
    /// Scoped by the request path's first layer (`request_context`).
    pub(super) static CURRENT: Arc<RequestContext>;
}

/// The context of the request being served, if any.
pub fn current() -> Option<Arc<RequestContext>> {
    CURRENT.try_with(Arc::clone).ok()
}

/// Marks responses that already carry the envelope.
#[derive(Clone, Copy)]
struct Enveloped;

#[derive(Serialize, utoipa::ToSchema)]
pub struct Meta {
    pub request_id: String,
    pub processing_time_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageSnapshot>,
}

/// The success envelope, as documented in the OpenAPI description.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Envelope<T> {
    pub success: bool,
    pub data: T,
    pub meta: Meta,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// One of the codes of the error table (e.g. `INVALID_REQUEST`).
    pub code: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub details: Option<Value>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorEnvelope {
    pub success: bool,
    pub error: ErrorBody,
    pub meta: Meta,
}

fn meta(with_usage: bool) -> Meta {
    match current() {
        Some(ctx) => Meta {
            request_id: ctx.request_id.clone(),
            processing_time_ms: (ctx.started.elapsed().as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0,
            usage: with_usage.then(|| ctx.usage.snapshot()),
        },
        None => Meta { request_id: String::new(), processing_time_ms: 0.0, usage: None },
    }
}

/// A successful response: `data` inside the envelope.
pub struct ApiOk<T>(pub StatusCode, pub T);

impl<T> ApiOk<T> {
    pub fn ok(data: T) -> Self {
        ApiOk(StatusCode::OK, data)
    }
    pub fn created(data: T) -> Self {
        ApiOk(StatusCode::CREATED, data)
    }
}

impl<T: Serialize> IntoResponse for ApiOk<T> {
    fn into_response(self) -> Response {
        let body = json!({ "success": true, "data": self.1, "meta": meta(true) });
        let mut response = (self.0, Json(body)).into_response();
        response.extensions_mut().insert(Enveloped);
        response
    }
}

/// Writes an error envelope.
pub fn error_response(status: StatusCode, code: &str, message: &str, details: Option<Value>) -> Response {
    let mut error = json!({ "code": code, "message": message });
    if let Some(d) = details {
        error["details"] = d;
    }
    let body = json!({ "success": false, "error": error, "meta": meta(false) });
    let mut response = (status, Json(body)).into_response();
    response.extensions_mut().insert(Enveloped);
    response
}

/// Marks a response built elsewhere (a stored idempotent response) as
/// already carrying the envelope.
pub(super) fn mark_enveloped(response: &mut Response) {
    response.extensions_mut().insert(Enveloped);
}

/// The response as it is if it carries the envelope (or is a success);
/// otherwise an envelope for its status, keeping its headers.
pub(super) fn ensure_enveloped(response: Response) -> Response {
    if response.extensions().get::<Enveloped>().is_some() { response } else { wrap_bare(response) }
}

fn wrap_bare(response: Response) -> Response {
    let status = response.status();
    if status.is_success() || status.is_redirection() || status.is_informational() {
        return response;
    }
    let error = match status {
        StatusCode::NOT_FOUND => ApiError::RouteNotFound,
        StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed,
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType,
        s if s.is_client_error() => ApiError::invalid(s.canonical_reason().unwrap_or("bad request")),
        _ => ApiError::Internal(anyhow::anyhow!("unhandled response status {status}")),
    };
    let mut wrapped = error.into_response();
    // Keep headers such as `Allow` on a 405.
    for (name, value) in response.headers() {
        if name != axum::http::header::CONTENT_TYPE && name != axum::http::header::CONTENT_LENGTH {
            wrapped.headers_mut().insert(name, value.clone());
        }
    }
    wrapped
}

/// Extracts the request context in a handler.
pub struct Ctx(pub Arc<RequestContext>);

impl<S: Send + Sync> FromRequestParts<S> for Ctx {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Arc<RequestContext>>()
            .cloned()
            .map(Ctx)
            .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("request context middleware missing")))
    }
}
