//! Extractors that turn bad input into clear envelope errors: JSON bodies
//! naming the bad field, and the API key from the `Authorization` header.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use super::AppState;
use super::error::ApiError;
use crate::auth::{ApiKey, AuthError, Principal, Scope};

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
pub struct Auth(pub Principal);

impl Auth {
    pub fn require(&self, scope: Scope) -> Result<&Principal, ApiError> {
        if self.0.has_scope(scope) { Ok(&self.0) } else { Err(ApiError::InsufficientScope(scope)) }
    }
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        // The limits middleware has usually authenticated the request already.
        if let Some(p) = parts.extensions.get::<Principal>() {
            return Ok(Auth(p.clone()));
        }
        Ok(Auth(authenticate(state, &parts.headers).await?))
    }
}

/// The principal of the key in the `Authorization: Bearer` header.
pub async fn authenticate(state: &AppState, headers: &axum::http::HeaderMap) -> Result<Principal, ApiError> {
    let header = headers.get(AUTHORIZATION).ok_or(AuthError::Missing)?;
    let value = header.to_str().map_err(|_| AuthError::Malformed)?;
    let (scheme, token) = value.trim().split_once(' ').ok_or(AuthError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Malformed.into());
    }
    Ok(state.auth.authenticate(token.trim()).await?)
}

/// Refuses any request whose URL carries something shaped like an API key
/// or a conventional credential parameter, before it reaches a handler.
pub async fn refuse_key_in_url(request: Request, next: Next) -> Response {
    let uri = request.uri();
    let in_path = ApiKey::looks_like_key(uri.path());
    let in_query = uri.query().is_some_and(|q| {
        ApiKey::looks_like_key(q)
            || q.split('&').any(|pair| {
                let name = pair.split('=').next().unwrap_or("").to_ascii_lowercase();
                matches!(name.as_str(), "api_key" | "apikey" | "key" | "token" | "access_token" | "authorization")
            })
    });
    if in_path || in_query {
        return ApiError::KeyInUrl.into_response();
    }
    next.run(request).await
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
