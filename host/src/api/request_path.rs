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
//! 7. `/v1`: [`idempotency`] (`metering`: a repeated `Idempotency-Key`
//!    gets the stored response), [`quota`] (`billing`), then [`meter`]
//!    (`metering`), which writes the request's usage event, durably, before
//!    the response leaves.
//!    `/admin`: [`require_operator`], then [`idempotency`] and [`meter`].
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
use crate::metering::RequestUsage;
use crate::metering::idempotency::{ClaimOutcome, Completion, IdempotencyKeys, MAX_KEY_LEN, StoredResponse};
use crate::metering::writer::Submission;
use crate::metering::{EventFacts, UsageEvent};

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

/// Account and usage reads stay possible when a quota is used up, so a
/// customer can see why; they are rate limited but neither quota-checked
/// nor billed (their usage events are not billable).
pub(crate) fn metered(path: &str) -> bool {
    path.starts_with("/v1/")
        && !path.starts_with("/v1/account")
        && !path.starts_with("/v1/usage")
        && !path.starts_with("/v1/invoices")
}

/// The header a caller tags a request's usage with (`team=search, feature=chat`).
pub const USAGE_TAGS_HEADER: &str = "x-usage-tags";
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";
pub const IDEMPOTENT_REPLAYED_HEADER: &str = "idempotent-replayed";

/// Routes whose response carries a secret shown once (a new API key): it is
/// never stored, so they take no `Idempotency-Key`.
const SECRET_RESPONSES: &[&str] = &["/v1/account/api-keys", "/v1/account/api-keys/{key_id}/rotate"];

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
        route: Default::default(),
    });
    request.extensions_mut().insert(ctx.clone());
    let started = ctx.started;
    let inner = span.clone();
    let method = request.method().clone();
    let public_path = PUBLIC_PATHS.iter().find(|p| **p == request.uri().path()).copied();
    let for_metrics = ctx.clone();
    let mut response = CURRENT
        .scope(
            ctx,
            async move {
                let response = next.run(request).await;
                let response = envelope::ensure_enveloped(response);
                let status = response.status().as_u16();
                inner.record("status", status);
                let elapsed = started.elapsed().as_secs_f64();
                tracing::debug!(target: "memhost::access", duration_ms = elapsed * 1000.0, "request served");
                let route = for_metrics.route.get().map(String::as_str).or(public_path).unwrap_or("other");
                let status_text = status.to_string();
                crate::telemetry::inc(
                    "memhost_http_requests_total",
                    &[("method", method.as_str()), ("route", route), ("status", &status_text)],
                    1,
                );
                crate::telemetry::observe(
                    "memhost_http_request_duration_seconds",
                    &[("method", method.as_str()), ("route", route)],
                    elapsed,
                );
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

/// Paths outside the authenticated routers, labelled as themselves in
/// `/metrics` (anything else unauthenticated is `other`).
const PUBLIC_PATHS: &[&str] = &["/health", "/ready", "/metrics", "/openapi.json", "/docs"];

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
            crate::telemetry::inc("memhost_http_panics_total", &[], 1);
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
        let _ = ctx.route.set(route.to_string());
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
        Err(refusal) => {
            let outcome = if matches!(refusal, Refusal::Unavailable(_)) { "unavailable" } else { "limited" };
            crate::telemetry::inc("memhost_ratelimit_decisions_total", &[("outcome", outcome)], 1);
            return refused(refusal);
        }
    };
    crate::telemetry::inc("memhost_ratelimit_decisions_total", &[("outcome", "allowed")], 1);
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
            crate::telemetry::inc("memhost_quota_refusals_total", &[("metric", &exceeded.metric)], 1);
            return quota_refused(exceeded);
        }
    }
    next.run(request).await
}

/// 7. (before the quota) `Idempotency-Key` on POST, PUT and DELETE: the
///    first request with a key claims it and runs; a repeat of the same
///    request gets the stored response (`Idempotent-Replayed: true`), not
///    run nor metered again; another request with the key is 422, a repeat
///    while the first runs 409. Keys are per org and key environment.
pub async fn idempotency<N: Next>(state: AppState, request: Request, next: N) -> Response {
    let Some(header) = request.headers().get(IDEMPOTENCY_KEY_HEADER) else {
        return next.run(request).await;
    };
    if !matches!(request.method().as_str(), "POST" | "PUT" | "DELETE") {
        return next.run(request).await;
    }
    let key = match header.to_str() {
        Ok(k) if !k.trim().is_empty() && k.len() <= MAX_KEY_LEN && k.bytes().all(|b| b.is_ascii_graphic()) => {
            k.to_string()
        }
        _ => {
            return ApiError::invalid_field(
                "Idempotency-Key",
                format!("Idempotency-Key must be 1 to {MAX_KEY_LEN} visible ASCII characters"),
            )
            .into_response();
        }
    };
    let route = request.extensions().get::<MatchedPath>().map_or("", |m| m.as_str());
    if SECRET_RESPONSES.contains(&route) && request.method() == axum::http::Method::POST {
        return ApiError::invalid_field(
            "Idempotency-Key",
            "this endpoint's response carries a new API key, shown once and never stored: send it without \
             Idempotency-Key",
        )
        .into_response();
    }
    let Some(principal) = request.extensions().get::<Arc<Principal>>().cloned() else {
        return missing_principal();
    };
    // The body is read here (it is part of what makes two requests the
    // same) and handed on unchanged.
    let (parts, body) = request.into_parts();
    // Plugin uploads have their own, larger limit; every other body the API's.
    let limit = if parts.uri.path() == "/admin/plugins" {
        state.config.max_body_bytes.max(state.config.plugins.max_plugin_bytes as usize)
    } else {
        state.config.max_body_bytes
    };
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(_) => return ApiError::PayloadTooLarge.into_response(),
    };
    let target = parts.uri.path_and_query().map_or_else(|| parts.uri.path().to_string(), |p| p.to_string());
    let hash = IdempotencyKeys::request_hash(parts.method.as_str(), &target, &bytes);
    let keys = state.meter.idempotency();
    let outcome = match keys.claim(&principal.org_id, principal.environment, &key, &hash).await {
        Ok(o) => o,
        Err(e) => {
            return ApiError::Rejected {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: "SERVICE_UNAVAILABLE",
                message: format!("idempotency keys unavailable: {e}"),
                details: None,
            }
            .into_response();
        }
    };
    match outcome {
        ClaimOutcome::Proceed(claim) => {
            let mut request = Request::from_parts(parts, axum::body::Body::from(bytes));
            request.extensions_mut().insert(Arc::new(keys.slot(claim)));
            next.run(request).await
        }
        ClaimOutcome::Replay(stored) => {
            crate::telemetry::inc("memhost_idempotent_replays_total", &[], 1);
            replay(stored)
        }
        ClaimOutcome::Mismatch => ApiError::Rejected {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "IDEMPOTENCY_KEY_REUSED",
            message: format!(
                "Idempotency-Key `{key}` was already used for a different request (method, path or body); \
                 use a new key for a new request"
            ),
            details: Some(serde_json::json!({ "idempotency_key": key })),
        }
        .into_response(),
        ClaimOutcome::InFlight => {
            let mut r = ApiError::Rejected {
                status: StatusCode::CONFLICT,
                code: "IDEMPOTENCY_IN_PROGRESS",
                message: format!(
                    "a request with Idempotency-Key `{key}` is still running; retry after it has answered"
                ),
                details: Some(serde_json::json!({ "idempotency_key": key })),
            }
            .into_response();
            r.headers_mut().insert("retry-after", HeaderValue::from(1u64));
            r
        }
    }
}

fn replay(stored: StoredResponse) -> Response {
    let mut response = Response::new(axum::body::Body::from(stored.body));
    *response.status_mut() = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    for (name, value) in stored.headers {
        if let (Ok(n), Ok(v)) = (axum::http::HeaderName::try_from(name), HeaderValue::from_str(&value)) {
            response.headers_mut().insert(n, v);
        }
    }
    response.headers_mut().insert(IDEMPOTENT_REPLAYED_HEADER, HeaderValue::from_static("true"));
    envelope::mark_enveloped(&mut response);
    response
}

/// Headers kept with an idempotent response for its replays.
const STORED_HEADERS: &[&str] = &["content-type", "location"];

/// 7b. Writes the request's usage event (and its audit entry, and the
///     response of an idempotent request) through the group-commit writer,
///     and answers only once it is committed. If it cannot be written, the
///     answer is 503 `USAGE_NOT_RECORDED`: the work is not billed, and a
///     retry with the same `Idempotency-Key` runs again.
pub async fn meter<N: Next>(state: AppState, mut request: Request, next: N) -> Response {
    let Some(principal) = request.extensions().get::<Arc<Principal>>().cloned() else {
        return missing_principal();
    };
    let tags = match request.headers().get(USAGE_TAGS_HEADER).map(|v| v.to_str()) {
        None => Default::default(),
        Some(Ok(v)) => match crate::metering::parse_tags(v) {
            Ok(t) => t,
            Err(e) => return ApiError::invalid_field("X-Usage-Tags", format!("X-Usage-Tags: {e}")).into_response(),
        },
        Some(Err(_)) => {
            return ApiError::invalid_field("X-Usage-Tags", "X-Usage-Tags must be ASCII").into_response();
        }
    };
    // For handlers that carry the tags further (batch jobs).
    request.extensions_mut().insert(crate::api::extract::UsageTags(tags.clone()));
    if state.config.benchmark_metering_off {
        return next.run(request).await;
    }
    let Some(ctx) = request.extensions().get::<Arc<RequestContext>>().cloned() else {
        return missing_principal();
    };
    let claim = request.extensions().get::<Arc<crate::metering::idempotency::ClaimSlot>>().cloned();
    let route = request.extensions().get::<MatchedPath>().map_or_else(|| "-".to_string(), |m| m.as_str().to_string());
    let method = request.method().as_str().to_string();
    let billable_route = metered(request.uri().path());
    let ip = request.extensions().get::<ClientIp>().and_then(|c| c.0).map(|ip| ip.to_string());
    let user_agent = request
        .headers()
        .get(axum::http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.chars().take(256).collect::<String>());

    let mut response = next.run(request).await;

    let status = response.status().as_u16();
    let event = UsageEvent::new(
        EventFacts {
            org_id: &principal.org_id,
            environment: principal.environment,
            key_id: &principal.key_id,
            method: &method,
            route: &route,
            status,
            billable: billable_route && status < 500,
            request_id: &ctx.request_id,
            processing_us: ctx.started.elapsed().as_micros() as u64,
            tags,
        },
        &ctx.usage,
    );
    // A server error is not stored for replays: the claim is released (when
    // the slot drops) and a retry runs.
    let mut completion = None;
    if status < 500
        && let Some(claim) = claim.as_ref().and_then(|c| c.take())
    {
        let (parts, body) = response.into_parts();
        let bytes = match axum::body::to_bytes(body, usize::MAX).await {
            Ok(b) => b,
            Err(e) => {
                return ApiError::Internal(anyhow::anyhow!("reading the response to store it: {e}")).into_response();
            }
        };
        let headers = STORED_HEADERS
            .iter()
            .filter_map(|h| parts.headers.get(*h).and_then(|v| v.to_str().ok()).map(|v| (h.to_string(), v.to_string())))
            .collect();
        completion = Some(Completion { claim, response: StoredResponse { status, headers, body: bytes.to_vec() } });
        response = Response::from_parts(parts, axum::body::Body::from(bytes));
    }
    let released = completion.as_ref().map(|c| c.claim.clone());
    match state.meter.submit(Submission { event, ip, user_agent, completion }).await {
        Ok(()) => {
            crate::telemetry::inc("memhost_usage_events_total", &[], 1);
            response
        }
        Err(reason) => {
            crate::telemetry::inc("memhost_usage_write_failures_total", &[], 1);
            if let Some(claim) = released {
                state.meter.idempotency().release(&claim).await;
            }
            ApiError::Rejected {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: "USAGE_NOT_RECORDED",
                message: format!(
                    "the request's usage could not be recorded, so it is not billed and its answer is withheld; \
                     retry (with the same Idempotency-Key, if you sent one): {reason}"
                ),
                details: None,
            }
            .into_response()
        }
    }
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
    /// Layer 7: idempotency keys.
    IdempotencyStep => idempotency
);
step!(
    /// Layer 7b: metering.
    MeterStep => meter
);
step!(
    /// Layer 7c: operators only.
    RequireOperatorStep => require_operator
);
