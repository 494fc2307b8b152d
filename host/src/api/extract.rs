//! Extractors that turn bad input into clear envelope errors (JSON bodies
//! naming the bad field, query parameters, raw bodies), and the principal
//! the request path authenticated.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::auth::{Principal, Scope};

/// A JSON body. Wrong content type: 415; too large: 413; bad JSON or a field
/// of the wrong type: 400 with `details.field`.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let is_json = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|mime| {
                let mime = mime.trim().to_ascii_lowercase();
                mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
            });
        if !is_json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge
            } else {
                ApiError::invalid(format!("could not read the request body: {rejection}"))
            }
        })?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Parses JSON, naming the field at fault.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.to_string();
        if inner.is_syntax() || inner.is_eof() {
            return ApiError::invalid(format!("request body is not valid JSON: {message}"));
        }
        let named = ["missing field `", "unknown field `"]
            .iter()
            .find_map(|p| message.split_once(p).and_then(|(_, rest)| rest.split_once('`')).map(|(f, _)| f.to_string()));
        // A missing field is reported at its parent's path, an unknown one at its own.
        let field = match (path.as_str(), named) {
            (".", Some(f)) => f,
            (p, Some(f)) if p != f && !p.ends_with(&format!(".{f}")) => format!("{p}.{f}"),
            (p, _) => p.to_string(),
        };
        let field = if field.is_empty() || field == "." { "body".to_string() } else { field };
        ApiError::invalid_field(field.clone(), format!("invalid `{field}`: {message}"))
    })
}

/// The principal of an authenticated request.
pub struct Auth(pub std::sync::Arc<Principal>);

impl Auth {
    pub fn require(&self, scope: Scope) -> Result<&Principal, ApiError> {
        if self.0.has_scope(scope) { Ok(&self.0) } else { Err(ApiError::InsufficientScope(scope)) }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Auth {
    type Rejection = ApiError;

    /// The principal the request path's `authenticate` layer found.
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<std::sync::Arc<Principal>>()
            .cloned()
            .map(Auth)
            .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("route is outside the authentication layer")))
    }
}

/// The request's usage tags (`X-Usage-Tags`), as the request path's meter
/// step parsed and checked them; none outside it. A batch job carries them
/// to every item's usage event.
#[derive(Debug, Clone, Default)]
pub struct UsageTags(pub std::collections::BTreeMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for UsageTags {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts.extensions.get::<UsageTags>().cloned().unwrap_or_default())
    }
}

/// The raw request body; too large: 413 in the envelope.
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        Bytes::from_request(req, state).await.map(RawBody).map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge
            } else {
                ApiError::invalid(format!("could not read the request body: {rejection}"))
            }
        })
    }
}

/// Query parameters; unknown or ill-typed ones: 400 in the envelope.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or("");
        serde_urlencoded::from_str(query)
            .map(ApiQuery)
            .map_err(|e| ApiError::invalid(format!("invalid query parameters: {e}")))
    }
}
