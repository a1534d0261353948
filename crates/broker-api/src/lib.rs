//! provet-broker's HTTP interface: routes per resource, the API-key extractor, problem+json
//! errors, request metrics and the OpenAPI document.
//!
//! `lib.rs` the route table (`configure_public` and `configure_internal`, the two surfaces,
//! the internal one being the service API and the admin API; `configure` both), `AppState`
//! with one accessor per use case; `request.rs` the request id, span, metrics and access-log
//! middleware; `routes/` one file per resource (`hookup.rs` Provet's hookup, `service.rs`
//! tenants and tokens for services, `feed.rs` the tenant list and event feed services follow,
//! `registration.rs` tenants entered by hand, `webhooks.rs` webhook endpoints and deliveries,
//! `oauth.rs` the connect flow, `admin.rs` operators, `audit.rs` the audit log, `ops.rs`
//! health, metrics, OpenAPI); `audit.rs` an admin action's audit entry; `problem.rs` the one
//! place errors become problem+json; `views.rs` the JSON bodies; `auth.rs` the API-key
//! extractor; `guard.rs` the failed-key throttle; `body.rs` body size and time limits;
//! `openapi.rs` the document.

pub mod audit;
pub mod auth;
pub mod body;
pub mod guard;
pub mod openapi;
pub mod problem;
pub mod request;
pub mod routes;
pub mod views;

use actix_web::http::Method;
use actix_web::{FromRequest, Handler, HttpResponse, Resource, Responder, Route, web};
use std::sync::Arc;

use broker_service::{
    ApiKeys, AuditLog, Clock, ConnectFlow, Console, Discovery, EventFeed, HookupIntake, Metrics,
    Operations, TenantAdmin, TokenBroker, WebhookAdmin, WebhookWorker,
};

use crate::problem::ApiError;
pub use crate::request::observe;

/// The use cases the routes call, each built once by the binary's start-up.
#[derive(Clone)]
pub struct UseCases {
    pub hookups: Arc<HookupIntake>,
    pub tokens: Arc<TokenBroker>,
    pub connect: Arc<ConnectFlow>,
    pub discovery: Arc<Discovery>,
    pub tenant_admin: Arc<TenantAdmin>,
    pub api_keys: Arc<ApiKeys>,
    pub operations: Arc<Operations>,
    pub events: Arc<EventFeed>,
    pub webhooks: Arc<WebhookAdmin>,
    pub audit: Arc<AuditLog>,
    pub console: Arc<Console>,
    /// Runs in the background (started by the binary); kept here so one value holds every
    /// use case.
    pub webhook_worker: Arc<WebhookWorker>,
    pub metrics: Arc<Metrics>,
    pub clock: Arc<dyn Clock>,
}

/// What every handler gets: built once, shared by all workers. A handler asks for the one
/// use case it serves (`state.tokens()`, `state.tenant_admin()`, ...).
pub struct AppState {
    use_cases: UseCases,
    auth_failures: guard::AuthFailures,
    /// How long a request body may take to arrive.
    body_timeout: std::time::Duration,
    refusal_log: request::RefusalLog,
}

impl AppState {
    pub fn new(
        use_cases: UseCases,
        auth_failures: guard::AuthFailures,
        body_timeout: std::time::Duration,
    ) -> Self {
        // Refused requests' warn lines: 10 at once, then one a second.
        let refusal_log = request::RefusalLog::new(10, 1, use_cases.clock.clone());
        Self {
            use_cases,
            auth_failures,
            body_timeout,
            refusal_log,
        }
    }

    /// `POST /hookup/{secret}`.
    pub fn hookups(&self) -> &HookupIntake {
        &self.use_cases.hookups
    }

    /// `POST /v1/tenants/{id}/token`.
    pub fn tokens(&self) -> &TokenBroker {
        &self.use_cases.tokens
    }

    /// `POST /v1/tenants/{id}/authorizations`, `GET /oauth/callback`, grant revocation.
    pub fn connect(&self) -> &ConnectFlow {
        &self.use_cases.connect
    }

    /// `/admin/tenants/...`, `GET /v1/tenants/{id}`.
    pub fn tenant_admin(&self) -> &TenantAdmin {
        &self.use_cases.tenant_admin
    }

    /// `/admin/api-keys` and every bearer key.
    pub fn api_keys(&self) -> &ApiKeys {
        &self.use_cases.api_keys
    }

    /// `/readyz`, `/metrics`.
    pub fn operations(&self) -> &Operations {
        &self.use_cases.operations
    }

    /// `GET /v1/events`.
    pub fn events(&self) -> &EventFeed {
        &self.use_cases.events
    }

    /// `/admin/webhooks`.
    pub fn webhooks(&self) -> &WebhookAdmin {
        &self.use_cases.webhooks
    }

    /// `GET /admin/audit`, and every admin action's entry.
    pub fn audit(&self) -> &AuditLog {
        &self.use_cases.audit
    }

    /// The operators' console sessions (`/console`).
    pub fn console(&self) -> &Console {
        &self.use_cases.console
    }

    pub fn metrics(&self) -> &Metrics {
        &self.use_cases.metrics
    }

    pub fn clock(&self) -> &dyn Clock {
        self.use_cases.clock.as_ref()
    }

    pub fn auth_failures(&self) -> &guard::AuthFailures {
        &self.auth_failures
    }

    pub fn body_timeout(&self) -> std::time::Duration {
        self.body_timeout
    }

    /// How many refused requests (401, 403, 429) get a warn line.
    pub fn refusal_log(&self) -> &request::RefusalLog {
        &self.refusal_log
    }
}

/// Every route, on one listener (`server.internal_bind` unset): both surfaces. The app must
/// also wrap `observe` and use `not_found` as its default service (see `provet-broker`'s
/// startup).
pub fn configure(cfg: &mut web::ServiceConfig) {
    configure_internal(cfg);
    configure_public(cfg);
}

/// The public surface, what must face the internet: Provet's hookup, the connect flow's
/// callback (a clinic user's browser), and health.
pub fn configure_public(cfg: &mut web::ServiceConfig) {
    use routes::{hookup, oauth, ops};
    cfg.service(
        web::resource("/hookup/{hookup_secret}")
            .app_data(request::RoutePattern("/hookup/{hookup_secret}"))
            .route(web::post().to(hookup::receive))
            // Any other method is as unknown as a wrong secret.
            .default_service(web::to(not_found)),
    )
    .service(resource("/healthz", [on(Method::GET, ops::healthz)]))
    .service(resource("/readyz", [on(Method::GET, ops::readyz)]))
    .service(resource(
        "/oauth/callback",
        [on(Method::GET, oauth::callback)],
    ));
}

/// The internal surface, for the integration's services and operators only: the service API
/// (`/v1`), the admin API, metrics and the OpenAPI document. (The operators' console is
/// mounted beside these, on the same surface, by the binary's startup.)
pub fn configure_internal(cfg: &mut web::ServiceConfig) {
    use routes::ops;
    // The router tries resources in order: the service API (the token hot path) first.
    configure_service_api(cfg);
    cfg.service(resource("/metrics", [on(Method::GET, ops::metrics)]))
        .service(resource("/openapi.json", [on(Method::GET, ops::openapi)]));
    configure_admin_api(cfg);
}

/// `/v1`: what the integration's services ask (tenants, tokens, authorizations, events).
fn configure_service_api(cfg: &mut web::ServiceConfig) {
    use Method as M;
    use routes::{feed, oauth, service};
    cfg.service(resource(
        "/v1/tenants/{provet_id}/token",
        [on(M::POST, service::token)],
    ))
    .service(resource("/v1/tenants", [on(M::GET, feed::list_tenants)]))
    .service(resource(
        "/v1/tenants/{provet_id}",
        [on(M::GET, service::get_tenant)],
    ))
    .service(resource(
        "/v1/tenants/{provet_id}/authorizations",
        [on(M::POST, oauth::start)],
    ))
    .service(resource("/v1/events", [on(M::GET, feed::events)]));
}

/// `/admin`: tenants, discovery, webhooks, API keys and the audit log, for operators.
fn configure_admin_api(cfg: &mut web::ServiceConfig) {
    use Method as M;
    use routes::{admin, registration, webhooks};
    cfg.service(resource(
        "/admin/tenants",
        [
            on(M::GET, admin::list_tenants),
            on(M::POST, registration::register),
        ],
    ))
    .service(resource(
        "/admin/tenants/{provet_id}",
        [
            on(M::GET, admin::get_tenant),
            on(M::DELETE, admin::remove_tenant),
        ],
    ))
    .service(resource(
        "/admin/tenants/{provet_id}/grants/{subject}",
        [on(M::DELETE, admin::revoke_grant)],
    ))
    .service(resource(
        "/admin/tenants/{provet_id}/verify",
        [on(M::POST, admin::verify_tenant)],
    ))
    .service(resource(
        "/admin/tenants/{provet_id}/events",
        [on(M::GET, admin::tenant_events)],
    ))
    .service(resource(
        "/admin/tenants/{provet_id}/discovery",
        [on(M::POST, admin::rerun_tenant_discovery)],
    ))
    .service(resource(
        "/admin/discovery/rerun",
        [on(M::POST, admin::rerun_discovery)],
    ))
    .service(resource(
        "/admin/webhooks",
        [on(M::POST, webhooks::create), on(M::GET, webhooks::list)],
    ))
    .service(resource(
        "/admin/webhooks/{id}",
        [on(M::DELETE, webhooks::delete)],
    ))
    .service(resource(
        "/admin/webhooks/{id}/deliveries",
        [on(M::GET, webhooks::deliveries)],
    ))
    .service(resource(
        "/admin/webhooks/{id}/deliveries/{event_id}/retry",
        [on(M::POST, webhooks::retry)],
    ))
    .service(resource(
        "/admin/api-keys",
        [
            on(M::POST, admin::create_api_key),
            on(M::GET, admin::list_api_keys),
        ],
    ))
    .service(resource(
        "/admin/api-keys/{id}",
        [on(M::DELETE, admin::revoke_api_key)],
    ))
    .service(resource("/admin/audit", [on(M::GET, routes::audit::list)]));
}

/// One method of a path, for [`resource`].
pub fn on<F, Args>(method: Method, handler: F) -> (Method, Route)
where
    F: Handler<Args>,
    Args: FromRequest + 'static,
    F::Output: Responder + 'static,
{
    (method.clone(), web::route().method(method).to(handler))
}

/// A path and every method it answers; any other method answers `405` with an `Allow`
/// header naming them (not `404`: the path exists).
pub fn resource(
    path: &'static str,
    methods: impl IntoIterator<Item = (Method, Route)>,
) -> Resource {
    let mut resource = web::resource(path).app_data(request::RoutePattern(path));
    let mut allow = Vec::new();
    for (method, route) in methods {
        allow.push(method.as_str().to_owned());
        resource = resource.route(route);
    }
    let allow: Arc<str> = allow.join(", ").into();
    resource.default_service(web::to(move || {
        let allow = allow.clone();
        async move { Err::<HttpResponse, _>(ApiError::MethodNotAllowed(allow)) }
    }))
}

/// The answer for every unknown address (and for a wrong hookup secret).
pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound)
}

/// Parses a JSON body after the caller's role was checked (an extractor would parse it
/// first, and tell a caller without the role about the schema).
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::InvalidRequest(format!("invalid JSON body: {e}")))
}

/// Parses an optional JSON body: empty means `T::default()`.
pub fn parse_optional_json<T: serde::de::DeserializeOwned + Default>(
    body: &[u8],
) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        Ok(T::default())
    } else {
        parse_json(body)
    }
}

/// JSON body errors (bad JSON, wrong fields, too large) as problem+json.
pub fn json_config() -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(body::MAX_BODY)
        .error_handler(|err, _| {
            ApiError::InvalidRequest(format!("invalid JSON body: {err}")).into()
        })
}

/// Query-string errors as problem+json.
pub fn query_config() -> web::QueryConfig {
    web::QueryConfig::default()
        .error_handler(|err, _| ApiError::InvalidRequest(format!("invalid query: {err}")).into())
}
