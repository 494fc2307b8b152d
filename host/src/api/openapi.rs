//! The OpenAPI 3.1 description, generated from the route annotations, and
//! the docs page (Swagger UI, vendored into the binary: no internet needed).

use axum::Router;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::SwaggerUi;

use super::routes::{account, health, memories, retrieval};

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
        memories::delete_all, memories::history,
        retrieval::retrieve, retrieval::query, retrieval::answer,
        account::account, account::list_keys, account::create_key, account::revoke_key, account::rotate_key,
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "memories", description = "Store and manage memories"),
        (name = "retrieval", description = "Find relevant memories and answer from them"),
        (name = "account", description = "The org and its API keys"),
        (name = "operations", description = "Health and readiness"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("mem_live_…")
                    .build(),
            ),
        );
    }
}

pub fn docs_router() -> Router {
    Router::new().merge(SwaggerUi::new("/docs").url("/openapi.json", ApiDoc::openapi()))
}
