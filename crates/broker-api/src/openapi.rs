//! The OpenAPI document, generated from the handlers' annotations.

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes::{admin, audit, feed, hookup, oauth, ops, registration, service, webhooks};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "provet-broker",
        description = "Stores Provet Cloud tenants' OAuth clients and hands their access tokens to internal services."
    ),
    paths(
        hookup::receive,
        service::get_tenant,
        feed::list_tenants,
        feed::events,
        registration::register,
        service::token,
        oauth::start,
        oauth::callback,
        admin::list_tenants,
        admin::get_tenant,
        admin::tenant_events,
        admin::remove_tenant,
        admin::rerun_tenant_discovery,
        admin::rerun_discovery,
        admin::verify_tenant,
        admin::revoke_grant,
        admin::create_api_key,
        admin::list_api_keys,
        admin::revoke_api_key,
        audit::list,
        webhooks::create,
        webhooks::list,
        webhooks::delete,
        webhooks::deliveries,
        webhooks::retry,
        ops::healthz,
        ops::readyz,
        ops::metrics,
        ops::openapi,
    ),
    modifiers(&BearerKey)
)]
pub struct ApiDoc;

struct BearerKey;

impl Modify for BearerKey {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}
