//! The OpenAPI 3.1 document, generated from the handlers' annotations.
//!
//! Errors are described once, as shared responses (`components.responses`) whose body is the
//! `Problem` schema served as `application/problem+json`. Every operation that takes an API
//! key answers what the key extractor answers (`401`, `403`, `429`, `503`): those are added
//! here, from the operation's `security`, so no route can forget them. The hookup message is
//! described by its own JSON Schema (`hookup.schema.json`), spliced in as written: it uses
//! `if`/`then`, which the generator's schema types do not model.

use serde_json::{Value, json};
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Object, Ref, RefOr, Type};
use utoipa::{Modify, OpenApi, PartialSchema, ToResponse, ToSchema};

use crate::routes::{admin, audit, feed, hookup, oauth, ops, registration, service, webhooks};

/// The hookup message's schema, named `HookupMessage` in `components.schemas`.
const HOOKUP_SCHEMA: &str = include_str!("hookup.schema.json");

/// The problem+json media type every error is served as.
pub const PROBLEM_JSON: &str = "application/problem+json";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "provet-broker",
        description = "Stores Provet Cloud tenants' OAuth clients and hands their access tokens to internal services. Every error is `application/problem+json` (RFC 9457) with a stable `code`."
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
    components(
        schemas(
            crate::problem::Problem,
            crate::problem::ProblemField,
            EventTypeName,
            crate::routes::webhooks::WebhookEventName,
            crate::routes::feed::TenantStatusFilter,
            crate::views::RerunFilter,
        ),
        responses(
            BadRequest,
            Unauthorized,
            Forbidden,
            NotFound,
            RequestTimeout,
            Conflict,
            PayloadTooLarge,
            UnsupportedMediaType,
            TooManyRequests,
            BadGateway,
            Unavailable,
        )
    ),
    modifiers(&BearerKey, &KeyedResponses, &ProblemRequestId)
)]
pub struct ApiDoc;

/// The document as served: the generated one with the hookup message's schema spliced in.
pub fn document() -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_else(|_| json!({}));
    let hookup: Value = serde_json::from_str(HOOKUP_SCHEMA).unwrap_or_else(|_| json!({}));
    if let Some(schemas) = doc
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    {
        schemas.insert("HookupMessage".to_owned(), hookup);
        if let Some(Value::Object(create)) = schemas.get_mut("CreateApiKey") {
            // Admin keys are never tenant-scoped (`if`/`then`, beyond the generator's types).
            create.insert(
                "if".to_owned(),
                json!({"properties": {"role": {"const": "admin"}}, "required": ["role"]}),
            );
            create.insert(
                "then".to_owned(),
                json!({"properties": {"tenants": {"type": "null"}}}),
            );
            if let Some(items) = create
                .get_mut("properties")
                .and_then(|p| p.pointer_mut("/tenants/items"))
            {
                *items = json!({"type": "integer", "minimum": 1, "maximum": broker_domain::tenant::MAX_PROVET_ID});
            }
        }
    }
    doc
}

/// A `$ref` to the hookup message's schema, for the request bodies that carry one.
pub struct HookupMessageRef;

impl PartialSchema for HookupMessageRef {
    fn schema() -> RefOr<utoipa::openapi::schema::Schema> {
        RefOr::Ref(Ref::from_schema_name("HookupMessage"))
    }
}

impl ToSchema for HookupMessageRef {
    fn name() -> std::borrow::Cow<'static, str> {
        "HookupMessage".into()
    }
}

/// An event type's stable name (`tenant.registered`, ...).
pub struct EventTypeName;

impl PartialSchema for EventTypeName {
    fn schema() -> RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(
                broker_domain::EventType::ALL
                    .iter()
                    .map(|t| t.as_str().to_owned()),
            ))
            .into()
    }
}

impl ToSchema for EventTypeName {}

/// A shared error response: a `Problem` as `application/problem+json`.
fn problem_response(description: &str, headers: &[(&str, &str)]) -> Response {
    let mut builder = ResponseBuilder::new().description(description).content(
        PROBLEM_JSON,
        ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("Problem")))
            .build(),
    );
    for (name, text) in headers {
        builder = builder.header(
            *name,
            HeaderBuilder::new()
                .schema(Object::with_type(Type::String))
                .description(Some(*text))
                .build(),
        );
    }
    builder.build()
}

/// Declares shared error responses: `Name: "description" [, headers]`.
macro_rules! problem_responses {
    ($($name:ident: $description:literal $(, $header:literal => $text:literal)*;)*) => {$(
        #[doc = $description]
        pub struct $name;

        impl<'r> ToResponse<'r> for $name {
            fn response() -> (&'r str, RefOr<Response>) {
                (stringify!($name), problem_response($description, &[$(($header, $text)),*]).into())
            }
        }
    )*};
}

problem_responses! {
    BadRequest: "`invalid_request`: a bad parameter or body; `errors` names every offending field";
    Unauthorized: "`unauthorized`: no API key, or an unknown or revoked one",
        "WWW-Authenticate" => "`Bearer`";
    Forbidden: "`forbidden`: the key's role or tenants do not allow this, or the key is unusable";
    NotFound: "`not_found` or `tenant_not_found`";
    RequestTimeout: "`request_timeout`: the body did not arrive in time";
    Conflict: "`reauthorization_required` or `misconfigured`";
    PayloadTooLarge: "`payload_too_large`: the body is over 64 KiB";
    UnsupportedMediaType: "`unsupported_media_type`: the body must be JSON";
    TooManyRequests: "`too_many_requests`: too many failed API-key attempts from this address",
        "Retry-After" => "Seconds to wait";
    BadGateway: "`upstream_rejected`: the provider refused (its OAuth error in `upstream_error`)";
    Unavailable: "`unavailable` (the database) or `upstream_unavailable` (the provider): retry",
        "Retry-After" => "Seconds to wait";
}

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

/// What the API-key extractor answers before any handler runs, on every keyed operation.
struct KeyedResponses;

impl Modify for KeyedResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let shared = [
            ("401", Unauthorized::response().0),
            ("403", Forbidden::response().0),
            ("429", TooManyRequests::response().0),
            ("503", Unavailable::response().0),
        ];
        for item in openapi.paths.paths.values_mut() {
            for operation in [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                if operation.security.as_ref().is_none_or(Vec::is_empty) {
                    continue;
                }
                for (status, name) in shared {
                    operation
                        .responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert_with(|| RefOr::Ref(Ref::from_response_name(name)));
                }
            }
        }
    }
}

/// Problem bodies carry the request's id (`X-Request-Id`) when the daemon knows it.
struct ProblemRequestId;

impl Modify for ProblemRequestId {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let Some(components) = openapi.components.as_mut() else {
            return;
        };
        if let Some(RefOr::T(utoipa::openapi::schema::Schema::Object(problem))) =
            components.schemas.get_mut("Problem")
        {
            problem
                .properties
                .entry("request_id".to_owned())
                .or_insert_with(|| {
                    utoipa::openapi::ObjectBuilder::new()
                        .schema_type(Type::String)
                        .description(Some("The request's `X-Request-Id`."))
                        .into()
                });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hookup_schema_is_spliced_in() {
        let doc = document();
        assert_eq!(
            doc["components"]["schemas"]["HookupMessage"]["required"][0],
            "provet_id"
        );
        assert_eq!(
            doc["paths"]["/hookup/{hookup_secret}"]["post"]["requestBody"]["content"]["application/json"]
                ["schema"]["$ref"],
            "#/components/schemas/HookupMessage"
        );
    }

    #[test]
    fn keyed_operations_declare_the_extractors_answers() {
        let doc = document();
        let token = &doc["paths"]["/v1/tenants/{provet_id}/token"]["post"]["responses"];
        for status in ["401", "403", "429"] {
            assert!(token[status]["$ref"].is_string(), "{status}: {token}");
        }
        let hookup = &doc["paths"]["/hookup/{hookup_secret}"]["post"]["responses"];
        assert!(hookup["401"].is_null(), "the hookup takes no key");
    }
}
