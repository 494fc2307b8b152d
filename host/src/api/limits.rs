//! The request path's limits step: authenticate, rate limits (429), quotas
//! (402), then the handler; afterwards meter the request, release
//! concurrency leases and add the `RateLimit-*` headers.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::envelope::RequestContext;
use super::error::ApiError;
use crate::auth::Principal;
use crate::limits::{API_CALLS, RateHeaders, Refusal, RequestFacts, TOKENS_PROCESSED};

/// The client address the limits counted this request under.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub Option<IpAddr>);

/// Paths whose requests are limited and metered: the API, not health
/// checks or docs.
fn limited(path: &str) -> bool {
    path.starts_with("/v1/") || path.starts_with("/admin/")
}

/// Account reads stay possible when a quota is used up, so a customer can
/// see why; they are rate limited but neither quota-checked nor billed.
pub(crate) fn metered(path: &str) -> bool {
    path.starts_with("/v1/") && !path.starts_with("/v1/account")
}

pub async fn enforce(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let path = request.uri().path().to_string();
    if !limited(&path) || !request.headers().contains_key(AUTHORIZATION) {
        return next.run(request).await;
    }
    let principal = match super::extract::authenticate(&state, request.headers()).await {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let client_ip = client_ip(&request, state.limits.trust_forwarded_for());
    request.extensions_mut().insert(principal.clone());
    request.extensions_mut().insert(ClientIp(client_ip));
    if !state.limits.enabled() {
        return next.run(request).await;
    }

    let route = request.extensions().get::<MatchedPath>().map_or(path.clone(), |m| m.as_str().to_string());
    let facts = RequestFacts { principal: &principal, method: request.method().as_str(), route: &route, client_ip };
    let admission = match state.limits.admit(&facts).await {
        Ok(a) => a,
        Err(refusal) => return refused(refusal),
    };
    let metered = metered(&path);
    if metered && let Err(refusal) = state.limits.check_quota(&principal).await {
        let mut response = refused(refusal);
        if let Some(h) = admission.headers {
            set_rate_headers(response.headers_mut(), h);
        }
        drop(admission);
        return response;
    }

    let ctx = request.extensions().get::<Arc<RequestContext>>().cloned();
    let mut response = next.run(request).await;

    if metered && response.status().as_u16() < 500 {
        record_usage(&state, &principal, ctx.as_deref());
    }
    if let Some(h) = admission.headers {
        set_rate_headers(response.headers_mut(), h);
    }
    // Dropping the admission releases its concurrency leases.
    drop(admission);
    response
}

fn record_usage(state: &AppState, p: &Principal, ctx: Option<&RequestContext>) {
    let meter = state.limits.meter();
    meter.record(&p.org_id, p.environment, API_CALLS, 1);
    if let Some(ctx) = ctx {
        meter.record(&p.org_id, p.environment, TOKENS_PROCESSED, ctx.usage.snapshot().tokens_processed);
    }
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
            } else {
                format!(
                    "rate limit `{rule}` exceeded: {} per {}; retry after {} s",
                    verdict.limit,
                    crate::limits::format_window(*window_ms),
                    verdict.retry_after_secs()
                )
            },
        ),
        Refusal::Quota { metric, limit, used, hard } => (
            StatusCode::PAYMENT_REQUIRED,
            "QUOTA_EXCEEDED",
            if *hard {
                format!("hard limit of {limit} {metric} this billing period reached ({used} used)")
            } else {
                format!(
                    "quota of {limit} {metric} this billing period used up ({used} used); \
                     the plan allows no overage: upgrade the plan to continue"
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
        Refusal::Quota { .. } => {}
    }
    response
}
