//! The one application error type; every domain error maps into it here,
//! and it maps to the envelope and the error codes of seed 000 Appendix A.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::envelope::error_response;
use crate::auth::{AuthError, Scope};
use crate::memories::MemoryError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 401: missing, malformed, unknown, revoked, deactivated or expired key.
    #[error("{message}")]
    InvalidApiKey { reason: &'static str, message: String },
    #[error("this API key lacks the `{}` scope", .0.as_str())]
    InsufficientScope(Scope),
    #[error("API keys must be sent in the Authorization header, never in the URL")]
    KeyInUrl,
    #[error("memory {0} not found")]
    MemoryNotFound(String),
    #[error("{kind} {id} not found")]
    NotFound { kind: &'static str, code: &'static str, id: String },
    #[error("no such endpoint")]
    RouteNotFound,
    #[error("method not allowed on this endpoint")]
    MethodNotAllowed,
    #[error("request body is too large")]
    PayloadTooLarge,
    #[error("send the body as JSON with `Content-Type: application/json`")]
    UnsupportedMediaType,
    #[error("{message}")]
    InvalidRequest { message: String, field: Option<String> },
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Provider(String),
    #[error("service not ready: {0}")]
    NotReady(String),
    /// A domain refusal with its own status and code (plugin uploads, …).
    #[error("{message}")]
    Rejected { status: StatusCode, code: &'static str, message: String, details: Option<Value> },
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::InvalidRequest { message: message.into(), field: None }
    }

    pub fn invalid_field(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError::InvalidRequest { message: message.into(), field: Some(field.into()) }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidApiKey { .. } => StatusCode::UNAUTHORIZED,
            ApiError::InsufficientScope(_) | ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::KeyInUrl | ApiError::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::MemoryNotFound(_) | ApiError::NotFound { .. } | ApiError::RouteNotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Provider(_) => StatusCode::BAD_GATEWAY,
            ApiError::NotReady(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Rejected { status, .. } => *status,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidApiKey { .. } => "INVALID_API_KEY",
            ApiError::InsufficientScope(_) => "INSUFFICIENT_SCOPE",
            ApiError::Forbidden(_) => "FORBIDDEN",
            ApiError::KeyInUrl | ApiError::InvalidRequest { .. } => "INVALID_REQUEST",
            ApiError::MemoryNotFound(_) => "MEMORY_NOT_FOUND",
            ApiError::NotFound { code, .. } => code,
            ApiError::RouteNotFound => "NOT_FOUND",
            ApiError::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            ApiError::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            ApiError::UnsupportedMediaType => "UNSUPPORTED_MEDIA_TYPE",
            ApiError::Conflict(_) => "CONFLICT",
            ApiError::Provider(_) => "PROVIDER_ERROR",
            ApiError::NotReady(_) => "SERVICE_UNAVAILABLE",
            ApiError::Rejected { code, .. } => code,
            ApiError::Internal(_) => "INTERNAL_ERROR",
        }
    }

    pub fn details(&self) -> Option<Value> {
        match self {
            ApiError::InvalidApiKey { reason, .. } => Some(json!({ "reason": reason })),
            ApiError::InsufficientScope(scope) => Some(json!({ "required_scope": scope.as_str() })),
            ApiError::KeyInUrl => Some(json!({
                "reason": "api_key_in_url",
                "hint": "send `Authorization: Bearer <key>`; a key that appeared in a URL may be in logs, so rotate it"
            })),
            ApiError::MemoryNotFound(id) => Some(json!({ "memory_id": id })),
            ApiError::NotFound { id, .. } => Some(json!({ "id": id })),
            ApiError::InvalidRequest { field: Some(f), .. } => Some(json!({ "field": f })),
            ApiError::Rejected { details, .. } => details.clone(),
            _ => None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = match &self {
            ApiError::Internal(e) => {
                // Logged once here; the client sees only the request id.
                tracing::error!(error = format!("{e:#}"), "internal error");
                "internal error; quote the request_id when reporting it".to_string()
            }
            other => other.to_string(),
        };
        let details = self.details();
        let retry_after = details.as_ref().and_then(|d| d.get("retry_after_seconds")).and_then(Value::as_u64);
        let mut response = error_response(status, self.code(), &message, details);
        if let Some(seconds) = retry_after {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from(seconds));
        }
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            // The rest of the body was not read, so this connection cannot
            // carry another request: say so, or a client reuses it and fails.
            response
                .headers_mut()
                .insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(axum::http::header::WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Missing
            | AuthError::Malformed
            | AuthError::Unknown
            | AuthError::Revoked
            | AuthError::Inactive
            | AuthError::Expired(_) => ApiError::InvalidApiKey { reason: e.reason(), message: e.to_string() },
            AuthError::Invalid(message) => ApiError::invalid(message),
            AuthError::NotFound { kind, id } => {
                ApiError::NotFound { kind, code: if kind == "org" { "ORG_NOT_FOUND" } else { "KEY_NOT_FOUND" }, id }
            }
            AuthError::Conflict(m) => ApiError::Conflict(m),
            AuthError::Database(e) => ApiError::Internal(e.into()),
        }
    }
}

impl From<MemoryError> for ApiError {
    fn from(e: MemoryError) -> Self {
        match e {
            MemoryError::NotFound(id) => ApiError::MemoryNotFound(id),
            MemoryError::Invalid { field, message } => ApiError::invalid_field(field, message),
            MemoryError::Provider(p) => ApiError::Provider(p.to_string()),
            MemoryError::Database(e) => ApiError::Internal(e.into()),
        }
    }
}

impl From<crate::jobs::JobError> for ApiError {
    fn from(e: crate::jobs::JobError) -> Self {
        use crate::jobs::JobError as J;
        let message = e.to_string();
        match e {
            J::Invalid { field, message } => ApiError::invalid_field(field, message),
            J::NotFound(id) => ApiError::NotFound { kind: "job", code: "JOB_NOT_FOUND", id },
            J::TooMany(cap) => ApiError::Rejected {
                status: StatusCode::TOO_MANY_REQUESTS,
                code: "TOO_MANY_JOBS",
                message,
                details: Some(json!({ "max_pending_jobs": cap })),
            },
            J::Finished { status, .. } => ApiError::Rejected {
                status: StatusCode::CONFLICT,
                code: "JOB_FINISHED",
                message,
                details: Some(json!({ "status": status })),
            },
            J::Database(e) => ApiError::Internal(e.into()),
        }
    }
}

impl From<crate::extraction::ExtractionError> for ApiError {
    fn from(e: crate::extraction::ExtractionError) -> Self {
        use crate::extraction::ExtractionError as X;
        let message = e.to_string();
        match e {
            X::Invalid { field, message } => ApiError::invalid_field(field, message),
            X::NoExtractor => ApiError::Rejected {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                code: "NO_EXTRACTOR",
                message: format!("{message}; an operator activates one (POST /admin/plugins/{{id}}/activate)"),
                details: None,
            },
            // Retryable, before any provider work: the extractor blames
            // something upstream (its LLM unreachable). Once provider work
            // was done it is billed, so the answer is not a server error.
            X::Refused { code, message: why, retryable: true, spent: false } => ApiError::Rejected {
                status: StatusCode::BAD_GATEWAY,
                code: "EXTRACTOR_FAILED",
                message,
                details: Some(json!({ "plugin_code": code, "plugin_message": why, "retryable": true })),
            },
            X::Refused { code, message: why, retryable, .. } => ApiError::Rejected {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                code: "EXTRACTION_REFUSED",
                message,
                details: Some(json!({ "plugin_code": code, "plugin_message": why, "retryable": retryable })),
            },
            X::Failed(reason) => ApiError::Rejected {
                status: StatusCode::BAD_GATEWAY,
                code: "EXTRACTOR_FAILED",
                message,
                details: Some(json!({ "reason": reason })),
            },
            X::Memory(m) => m.into(),
        }
    }
}

impl From<crate::billing::BillingError> for ApiError {
    fn from(e: crate::billing::BillingError) -> Self {
        use crate::billing::BillingError as B;
        let message = e.to_string();
        let rejected = |status: StatusCode, code: &'static str, details: Option<Value>| ApiError::Rejected {
            status,
            code,
            message: message.clone(),
            details,
        };
        match e {
            B::Invalid(m) => ApiError::invalid(m),
            B::PeriodOpen { period, ends } => {
                rejected(StatusCode::CONFLICT, "PERIOD_NOT_CLOSED", Some(json!({ "period": period, "ends_at": ends })))
            }
            B::NotFound(id) => ApiError::NotFound { kind: "invoice", code: "INVOICE_NOT_FOUND", id },
            B::OrgNotFound(id) => ApiError::NotFound { kind: "org", code: "ORG_NOT_FOUND", id },
            B::NoPricing(_) => rejected(StatusCode::SERVICE_UNAVAILABLE, "PRICING_UNAVAILABLE", None),
            B::Pricing(_) => rejected(StatusCode::UNPROCESSABLE_ENTITY, "PRICING_FAILED", None),
            B::Rejected(_) => rejected(StatusCode::UNPROCESSABLE_ENTITY, "PRICING_REJECTED", None),
            B::Conflict(m) => ApiError::Conflict(m),
            B::Plugin(p) => ApiError::from(p),
            B::Db(err) => ApiError::Internal(err.into()),
        }
    }
}

impl From<crate::plugins::PluginError> for ApiError {
    fn from(e: crate::plugins::PluginError) -> Self {
        use crate::plugins::PluginError as P;
        match e {
            P::Db(err) => ApiError::Internal(err.into()),
            P::Internal(err) => ApiError::Internal(err),
            other => ApiError::from(&other),
        }
    }
}

/// By reference: an upload's refusal is kept (shared) to show to whoever
/// polls it.
impl From<&crate::plugins::PluginError> for ApiError {
    fn from(e: &crate::plugins::PluginError) -> Self {
        use crate::plugins::{PluginError as P, RunError, validate::UploadError};
        let rejected = |status: StatusCode, code: &'static str, message: String, details: Option<Value>| {
            ApiError::Rejected { status, code, message, details }
        };
        match e {
            P::Upload(UploadError::TooLarge { size, limit }) => {
                let details = json!({ "reason": "plugin_too_large", "size_bytes": size, "limit_bytes": limit });
                rejected(StatusCode::PAYLOAD_TOO_LARGE, "PLUGIN_TOO_LARGE", e.to_string(), Some(details))
            }
            P::Upload(u) => {
                let details = json!({ "reason": u.code().to_ascii_lowercase(), "trap": u.trap() });
                rejected(StatusCode::UNPROCESSABLE_ENTITY, u.code(), u.to_string(), Some(details))
            }
            P::NotFound(id) => ApiError::NotFound { kind: "plugin", code: "PLUGIN_NOT_FOUND", id: id.clone() },
            P::Ambiguous(_) | P::InvalidRequest(_) => ApiError::invalid(e.to_string()),
            P::InvalidRule(why) => {
                let details = json!({ "field": "rule", "reason": why });
                rejected(StatusCode::BAD_REQUEST, "INVALID_ROUTING_RULE", e.to_string(), Some(details))
            }
            P::InvalidConfig(errors) => {
                let details = json!({ "errors": errors });
                rejected(StatusCode::UNPROCESSABLE_ENTITY, "INVALID_CONFIG", e.to_string(), Some(details))
            }
            P::Conflict(m) => ApiError::Conflict(m.clone()),
            P::Busy(m) => {
                let details = json!({ "retry_after_seconds": 5 });
                rejected(StatusCode::SERVICE_UNAVAILABLE, "UPLOADS_BUSY", m.clone(), Some(details))
            }
            P::NoneActive(_) => rejected(StatusCode::NOT_FOUND, "PLUGIN_NOT_FOUND", e.to_string(), None),
            P::Run(RunError::Call(c)) => {
                let details = json!({ "trap": c.code() });
                rejected(StatusCode::UNPROCESSABLE_ENTITY, "PLUGIN_FAILED", e.to_string(), Some(details))
            }
            P::Run(RunError::WrongKind { .. } | RunError::BadInput(_)) => ApiError::invalid(e.to_string()),
            P::Db(_) | P::Internal(_) => ApiError::Internal(anyhow::anyhow!("{e}")),
        }
    }
}
