//! The response envelope of every endpoint (seed 000 §1.3) and the request
//! context that fills its `meta`.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
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
}

tokio::task_local! {
    static CURRENT: Arc<RequestContext>;
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

/// Outermost middleware: assigns the request id, scopes the context, echoes
/// `X-Request-ID`, and puts any response that left without the envelope
/// (a 405 from the router, a 413 from a body limit) into one.
pub async fn request_context(mut request: Request, next: Next) -> Response {
    let request_id = request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| is_valid_request_id(v))
        .map(str::to_string)
        .unwrap_or_else(|| format!("req_{}", uuid::Uuid::now_v7().simple()));
    let ctx = Arc::new(RequestContext {
        request_id: request_id.clone(),
        started: Instant::now(),
        usage: RequestUsage::default(),
    });
    request.extensions_mut().insert(ctx.clone());
    let mut response = CURRENT
        .scope(ctx, async move {
            let response = next.run(request).await;
            if response.extensions().get::<Enveloped>().is_some() { response } else { wrap_bare(response) }
        })
        .await;
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    response
}

/// Accepts ids a client may reasonably send: 1–128 visible ASCII characters.
fn is_valid_request_id(v: &str) -> bool {
    !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic())
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
