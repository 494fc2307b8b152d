//! The OpenAPI 3.1 description, generated from the route annotations, and
//! the docs page (Swagger UI, vendored into the binary: no internet needed).

use axum::Router;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::SwaggerUi;

use super::routes::{account, admin, batch, health, invoices, memories, plugins, pricing, retrieval, usage};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "memhost",
        description = "A memory API for AI applications. Every response is an envelope: \
            `{success, data | error, meta: {request_id, processing_time_ms, usage}}`. \
            Authenticate with `Authorization: Bearer mem_live_…` (or `mem_test_…` for sandbox data)."
    ),
    paths(
        health::health, health::ready,
        memories::create, memories::get, memories::update, memories::delete, memories::list,
        memories::delete_all, memories::history, memories::batch_create,
        batch::extract, batch::embeddings, batch::get, batch::list, batch::cancel,
        retrieval::retrieve, retrieval::query, retrieval::answer,
        account::account, account::limits, account::list_keys, account::create_key, account::revoke_key, account::rotate_key,
        plugins::upload, plugins::list, plugins::get, plugins::activate, plugins::rollback, plugins::deactivate,
        plugins::run, plugins::run_active, plugins::calls,
        usage::usage, usage::history,
        admin::metrics, admin::metric, admin::export, admin::audit_log, admin::audit_verify,
        invoices::upcoming, invoices::list, invoices::get, invoices::admin_upcoming, invoices::admin_list,
        invoices::admin_get, invoices::finalize, invoices::verify, invoices::record_payment, invoices::payments,
        invoices::stripe_meter_events, invoices::stripe_webhook,
        pricing::get, pricing::update, pricing::add_credit, pricing::set_addon, pricing::remove_addon,
        pricing::apply_promotion, pricing::hold_plan_version, pricing::release_plan_version,
        pricing::view, pricing::update_plan, pricing::plans, pricing::deprecate_plan, pricing::reopen_plan,
        pricing::update_catalogue, pricing::simulate, pricing::start_shadow, pricing::shadow,
        pricing::stop_shadow,
    ),
    modifiers(&BearerAuth, &CommonErrors),
    tags(
        (name = "memories", description = "Store and manage memories"),
        (name = "batch", description = "Jobs off the request path: extraction from many dialogues, bulk \
            creation, re-embedding; their status, results and cancellation"),
        (name = "retrieval", description = "Find relevant memories and answer from them"),
        (name = "account", description = "The org and its API keys"),
        (name = "plugins", description = "Operators: upload, activate, roll back and try sandboxed plugins \
            (admin key of an operator org)"),
        (name = "usage", description = "The caller's usage this period and over time"),
        (name = "billing", description = "Invoices: the upcoming one, finalized ones (JSON, CSV, HTML); \
            operators close periods and verify invoices by replay"),
        (name = "operations", description = "Health, readiness, usage metrics, exports and the audit log"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("mem_live_…").build()),
        );
    }
}

/// Adds the errors any operation can answer with, so each path need not
/// repeat them: 401/403 where a key is needed, 400/413/415 where a body is read.
struct CommonErrors;

impl Modify for CommonErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{RefOr, ResponseBuilder, content::ContentBuilder, schema::Ref};
        let error = |description: &str| -> RefOr<utoipa::openapi::Response> {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorEnvelope"))).build(),
                )
                .build()
                .into()
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            let metered = super::request_path::metered(path);
            for op in [&mut item.get, &mut item.put, &mut item.post, &mut item.delete].into_iter().flatten() {
                let responses = &mut op.responses.responses;
                let mut add = |code: &str, description: &str| {
                    responses.entry(code.to_string()).or_insert_with(|| error(description));
                };
                if op.security.is_some() {
                    add("401", "INVALID_API_KEY: missing, malformed, unknown, revoked, deactivated or expired key");
                    add("403", "INSUFFICIENT_SCOPE: the key lacks the scope this operation needs");
                    add(
                        "429",
                        "RATE_LIMIT_EXCEEDED: a rate or concurrency limit is reached; `details` has `rule`, \
                         `limit`, `window`, `retry_after` (seconds, also in `Retry-After`). Every limited \
                         response carries `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset`.",
                    );
                    add(
                        "503",
                        "SERVICE_UNAVAILABLE: the rate-limit store is unreachable and the deployment fails closed; \
                         or USAGE_NOT_RECORDED: the request's usage event could not be written (not billed; retry)",
                    );
                    if metered {
                        add(
                            "402",
                            "QUOTA_EXCEEDED: the plan's quota for this billing period is used up and it allows \
                             no overage; `details` has `metric`, `limit`, `used`",
                        );
                    }
                }
                add("400", "INVALID_REQUEST: bad parameters or body; `details.field` names what was wrong");
                if op.security.is_some() && path.starts_with("/v1/") {
                    add(
                        "409",
                        "IDEMPOTENCY_IN_PROGRESS: a request with this Idempotency-Key is still running; retry later",
                    );
                    add("422", "IDEMPOTENCY_KEY_REUSED: this Idempotency-Key was used for a different request");
                }
                if op.request_body.is_some() {
                    add("413", "PAYLOAD_TOO_LARGE: the body is over the size limit (10 MB by default)");
                    add("415", "UNSUPPORTED_MEDIA_TYPE: the body must be sent as application/json");
                }
            }
        }
    }
}

pub fn docs_router() -> Router {
    Router::new().merge(SwaggerUi::new("/docs").url("/openapi.json", ApiDoc::openapi()))
}
