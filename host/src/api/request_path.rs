//! The request path, one layer per step, in the order a request meets them
//! (`api::router` stacks them in this order; `docs/architecture.md` maps
//! each to its domain):
//!
//! 1. [`request_context`]: the request id, the request's trace span (request
//!    id, method, route, org, key id, status), timing, and the envelope for
//!    responses that left without one.
//! 2. [`catch_panic`]: a panic anywhere below becomes 500 `INTERNAL_ERROR`
//!    in the envelope, logged and counted; the server keeps serving.
//! 3. the body limit (axum's), then [`refuse_key_in_url`].
//!
//! Then, on `/v1` and `/admin` routes only:
//!
//! 4. [`limit_address`]: the per-address rule on failed authentication,
//!    before any key is looked up (`limits`).
//! 5. [`authenticate`]: API key ─▶ principal (`auth`).
//! 6. [`rate_limit`]: the rate-limit plugin's rules on the counter store
//!    (`limits`); adds the `RateLimit-*` headers on the way out.
//! 7. `/v1`: [`quota`] (`billing`), then [`meter`] (`metering`), which
//!    records the request once the handler has answered.
//!    `/admin`: [`require_operator`].
//! 8. the handler (`api/routes/*`).

use std::net::{IpAddr, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::extract::{ConnectInfo, MatchedPath, Request};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;
use percent_encoding::percent_decode_str;
use serde::Serialize;
use tracing::Instrument;

use super::AppState;
use super::envelope::{self, CURRENT, REQUEST_ID_HEADER, RequestContext};
use super::error::ApiError;
use super::step::{Next, step};
use crate::auth::{ApiKey, AuthError, Principal, Scope};
use crate::billing::QuotaExceeded;
use crate::limits::{AddressCheck, RateHeaders, Refusal, RequestFacts};
use crate::metering::{API_CALLS, RequestUsage, TOKENS_PROCESSED};

/// Counts of the request path itself, for `/ready`.
#[derive(Debug, Default)]
pub struct PathStats {
    panics: AtomicU64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PathStatsSnapshot {
    /// Requests whose handler panicked (answered 500) since start.
    pub panics: u64,
}

impl PathStats {
    pub fn snapshot(&self) -> PathStatsSnapshot {
        PathStatsSnapshot { panics: self.panics.load(Ordering::Relaxed) }
    }
}

/// The client address the limits counted this request under.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub Option<IpAddr>);

/// Account reads stay possible when a quota is used up, so a customer can
/// see why; they are rate limited but neither quota-checked nor billed.
pub(crate) fn metered(path: &str) -> bool {
    path.starts_with("/v1/") && !path.starts_with("/v1/account")
}

/// 1. Assigns the request id (the client's `X-Request-ID` if sane), opens
///    the request's span, scopes the context the envelope reads, echoes
///    `X-Request-ID`, and puts any response that left without the envelope
///    (a 405 from the router, a 413 from a body limit) into one.
pub async fn request_context<N: Next>(_: AppState, mut request: Request, next: N) -> Response {
    let request_id = request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| is_valid_request_id(v))
        .map(str::to_string)
        .unwrap_or_else(|| format!("req_{}", uuid::Uuid::now_v7().simple()));
    // At ERROR level so the span exists whatever the log filter: an error
    // line without its request id is the one that cannot be traced.
    let span = tracing::error_span!(
        "request",
        request_id = %request_id,
        method = %request.method(),
        route = tracing::field::Empty,
        org = tracing::field::Empty,
        key_id = tracing::field::Empty,
        status = tracing::field::Empty,
    );
    let ctx = Arc::new(RequestContext {
        request_id: request_id.clone(),
        started: Instant::now(),
        usage: RequestUsage::default(),
        span: span.clone(),
    });
    request.extensions_mut().insert(ctx.clone());
    let started = ctx.started;
    let inner = span.clone();
    let mut response = CURRENT
        .scope(
            ctx,
            async move {
                let response = next.run(request).await;
                let response = envelope::ensure_enveloped(response);
                let status = response.status().as_u16();
                inner.record("status", status);
                tracing::debug!(target: "memhost::access",
                    duration_ms = started.elapsed().as_secs_f64() * 1000.0, "request served");
                response
            }
            .instrument(span),
        )
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

/// 2. A panic below becomes 500 `INTERNAL_ERROR` with the request id; the
///    worker survives and the next request is served as usual.
pub async fn catch_panic<N: Next>(state: AppState, request: Request, next: N) -> Response {
    match AssertUnwindSafe(next.run(request)).catch_unwind().await {
        Ok(response) => response,
        Err(panic) => {
            state.path_stats.panics.fetch_add(1, Ordering::Relaxed);
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a non-text panic payload".into());
            ApiError::Internal(anyhow::anyhow!("the handler panicked: {what}")).into_response()
        }
    }
}

/// 3. Refuses any request whose URL carries something shaped like an API
///    key or a conventional credential parameter, before it reaches a
///    handler. The path and query are checked as the handlers will see them:
///    percent-decoded.
pub async fn refuse_key_in_url<N: Next>(_: AppState, request: Request, next: N) -> Response {
    let uri = request.uri();
    // What a handler sees: the percent-decoded text (decoded only if encoded).
    let decoded_has_key = |s: &str| {
        (s.contains('%') || s.contains('+'))
            && ApiKey::looks_like_key(&percent_decode_str(&s.replace('+', " ")).decode_utf8_lossy())
    };
    let in_path = ApiKey::looks_like_key(uri.path()) || decoded_has_key(uri.path());
    let in_query = uri.query().is_some_and(|q| {
        ApiKey::looks_like_key(q)
            || decoded_has_key(q)
            || q.split('&').any(|pair| {
                let name = pair.split('=').next().unwrap_or("");
                let name = percent_decode_str(&name.replace('+', " ")).decode_utf8_lossy().to_ascii_lowercase();
                matches!(name.as_str(), "api_key" | "apikey" | "key" | "token" | "access_token" | "authorization")
            })
    });
    if in_path || in_query {
        return ApiError::KeyInUrl.into_response();
    }
    next.run(request).await
}

/// 4. Before any key lookup: an address that has failed authentication too
///    often is refused (429) until the window frees.
pub async fn limit_address<N: Next>(state: AppState, mut request: Request, next: N) -> Response {
    let ip = client_ip(&request, state.limits.trust_forwarded_for());
    request.extensions_mut().insert(ClientIp(ip));
    match state.limits.check_address(ip).await {
        // Held until `authenticate` knows the outcome.
        Ok(check) => request.extensions_mut().insert(Arc::new(check)),
        Err(refusal) => return refused(refusal),
    };
    next.run(request).await
}

/// 5. The API key in `Authorization: Bearer` ─▶ the principal, which the
///    rest of the path and the handler read. A failure counts against the
///    address (step 4).
pub async fn authenticate<N: Next>(state: AppState, mut request: Request, next: N) -> Response {
    let check = request.extensions_mut().remove::<Arc<AddressCheck>>();
    let principal = match principal_of(&state, request.headers()).await {
        Ok(p) => p,
        Err(e) => {
            if matches!(e, ApiError::InvalidApiKey { .. }) {
                let ip = request.extensions().get::<ClientIp>().and_then(|c| c.0);
                state.limits.record_auth_failure(ip).await;
            }
            return e.into_response();
        }
    };
    drop(check);
    if let Some(ctx) = request.extensions().get::<Arc<RequestContext>>() {
        let route = request.extensions().get::<MatchedPath>().map_or("", |m| m.as_str());
        record_identity(&ctx.span, route, &principal);
    }
    request.extensions_mut().insert(Arc::new(principal));
    next.run(request).await
}

/// Route, org and key id on the request's span, in one record (each record
/// re-formats the span's fields for the log).
fn record_identity(span: &tracing::Span, route: &str, p: &Principal) {
    let Some(meta) = span.metadata() else { return };
    let fields = meta.fields();
    let (Some(r), Some(o), Some(k)) = (fields.field("route"), fields.field("org"), fields.field("key_id")) else {
        return;
    };
    let (org, key) = (p.org_id.as_str(), p.key_id.as_str());
    span.record_all(&fields.value_set(&[
        (&r, Some(&route as &dyn tracing::Value)),
        (&o, Some(&org as &dyn tracing::Value)),
        (&k, Some(&key as &dyn tracing::Value)),
    ]));
}

async fn principal_of(state: &AppState, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let header = headers.get(AUTHORIZATION).ok_or(AuthError::Missing)?;
    let value = header.to_str().map_err(|_| AuthError::Malformed)?;
    let (scheme, token) = value.trim().split_once(' ').ok_or(AuthError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Malformed.into());
    }
    Ok(state.auth.authenticate(token.trim()).await?)
}

/// 6. The rate-limit rules for this request, decided atomically; 429 (or
///    503 when the store is unreachable and the deployment fails closed).
///    On the way out: the `RateLimit-*` headers, and concurrency leases
///    released (also if the client hangs up: the admission is dropped).
pub async fn rate_limit<N: Next>(state: AppState, request: Request, next: N) -> Response {
    if !state.limits.enabled() {
        return next.run(request).await;
    }
    let Some(principal) = request.extensions().get::<Arc<Principal>>().cloned() else {
        return missing_principal();
    };
    let route = request.extensions().get::<MatchedPath>().map_or_else(|| request.uri().path(), |m| m.as_str());
    let client_ip = request.extensions().get::<ClientIp>().and_then(|c| c.0);
    let facts = RequestFacts { principal: &principal, method: request.method().as_str(), route, client_ip };
    let admission = match state.limits.admit(&facts).await {
        Ok(a) => a,
        Err(refusal) => return refused(refusal),
    };
    let mut response = next.run(request).await;
    if let Some(h) = admission.headers {
        set_rate_headers(response.headers_mut(), h);
    }
    drop(admission);
    response
}

/// 7a. `/v1`: the plan's quotas for this period (402 when used up and the
///     plan allows no overage).
pub async fn quota<N: Next>(state: AppState, request: Request, next: N) -> Response {
    if state.limits.enabled() && metered(request.uri().path()) {
        let Some(principal) = request.extensions().get::<Arc<Principal>>() else {
            return missing_principal();
        };
        if let Err(exceeded) = state.billing.check_quota(principal).await {
            return quota_refused(exceeded);
        }
    }
    next.run(request).await
}

/// 7b. `/v1`: meters the request once the handler has answered (not for
///     server errors, and not for account reads).
pub async fn meter<N: Next>(state: AppState, request: Request, next: N) -> Response {
    let principal =
        metered(request.uri().path()).then(|| request.extensions().get::<Arc<Principal>>().cloned()).flatten();
    let ctx = request.extensions().get::<Arc<RequestContext>>().cloned();
    let response = next.run(request).await;
    if let Some(p) = principal
        && response.status().as_u16() < 500
    {
        state.meter.record(&p.org_id, p.environment, API_CALLS, 1);
        if let Some(ctx) = ctx {
            state.meter.record(&p.org_id, p.environment, TOKENS_PROCESSED, ctx.usage.snapshot().tokens_processed);
        }
    }
    response
}

/// 7c. `/admin`: an admin key of an operator org. Plugins and operator
///     tasks decide every tenant's prices and limits.
pub async fn require_operator<N: Next>(_: AppState, request: Request, next: N) -> Response {
    let Some(principal) = request.extensions().get::<Arc<Principal>>() else {
        return missing_principal();
    };
    if !principal.has_scope(Scope::Admin) {
        return ApiError::InsufficientScope(Scope::Admin).into_response();
    }
    if !principal.operator {
        return ApiError::Forbidden(
            "plugin administration needs an admin key of an operator org (`memhost orgs create --operator`)".into(),
        )
        .into_response();
    }
    next.run(request).await
}

fn missing_principal() -> Response {
    ApiError::Internal(anyhow::anyhow!("route is outside the authentication layer")).into_response()
}

fn client_ip(request: &Request, trust_forwarded_for: bool) -> Option<IpAddr> {
    if trust_forwarded_for
        && let Some(ip) = request
            .headers()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.trim().parse().ok())
    {
        return Some(ip);
    }
    request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip())
}

fn set_rate_headers(headers: &mut HeaderMap, h: RateHeaders) {
    headers.insert("ratelimit-limit", HeaderValue::from(h.limit));
    headers.insert("ratelimit-remaining", HeaderValue::from(h.remaining));
    headers.insert("ratelimit-reset", HeaderValue::from(h.reset_secs));
}

fn refused(refusal: Refusal) -> Response {
    let details = Some(refusal.details());
    let (status, code, message) = match &refusal {
        Refusal::Exceeded { rule, verdict, window_ms, concurrent, .. } => (
            StatusCode::TOO_MANY_REQUESTS,
            "RATE_LIMIT_EXCEEDED",
            if *concurrent {
                format!(
                    "concurrency limit `{rule}` reached: at most {} requests in flight; retry after {} s",
                    verdict.limit,
                    verdict.retry_after_secs()
                )
            } else if rule == crate::limits::UNAUTHENTICATED_RULE {
                format!(
                    "too many requests from this address failed authentication (at most {} per {}); \
                     retry after {} s",
                    verdict.limit,
                    crate::limits::format_window(*window_ms),
                    verdict.retry_after_secs()
                )
            } else {
                format!(
                    "rate limit `{rule}` exceeded: {} per {}; retry after {} s",
                    verdict.limit,
                    crate::limits::format_window(*window_ms),
                    verdict.retry_after_secs()
                )
            },
        ),
        Refusal::Unavailable(reason) => {
            (StatusCode::SERVICE_UNAVAILABLE, "SERVICE_UNAVAILABLE", format!("rate limits unavailable: {reason}"))
        }
    };
    let mut response = ApiError::Rejected { status, code, message, details }.into_response();
    match refusal {
        Refusal::Exceeded { verdict, headers, .. } => {
            response.headers_mut().insert("retry-after", HeaderValue::from(verdict.retry_after_secs()));
            set_rate_headers(response.headers_mut(), headers);
        }
        Refusal::Unavailable(_) => {
            response.headers_mut().insert("retry-after", HeaderValue::from(1u64));
        }
    }
    response
}

fn quota_refused(e: QuotaExceeded) -> Response {
    ApiError::Rejected {
        status: StatusCode::PAYMENT_REQUIRED,
        code: "QUOTA_EXCEEDED",
        message: e.message(),
        details: Some(e.details()),
    }
    .into_response()
}

step!(
    /// Layer 1: request id, span, envelope.
    RequestContextStep => request_context
);
step!(
    /// Layer 2: panics answer 500.
    CatchPanicStep => catch_panic
);
step!(
    /// Layer 3: no keys in URLs.
    RefuseKeyInUrlStep => refuse_key_in_url
);
step!(
    /// Layer 4: the per-address rule before authentication.
    LimitAddressStep => limit_address
);
step!(
    /// Layer 5: the API key.
    AuthenticateStep => authenticate
);
step!(
    /// Layer 6: rate limits.
    RateLimitStep => rate_limit
);
step!(
    /// Layer 7a: quotas.
    QuotaStep => quota
);
step!(
    /// Layer 7b: metering.
    MeterStep => meter
);
step!(
    /// Layer 7c: operators only.
    RequireOperatorStep => require_operator
);
