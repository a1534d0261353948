//! provet-broker's HTTP interface: routes per resource, the API-key extractor, problem+json
//! errors, request metrics and the OpenAPI document.
//!
//! `lib.rs` the route table (`configure`), `AppState` with one accessor per use case, and the
//! request-metrics middleware; `routes/` one file per resource (`hookup.rs` Provet's hookup,
//! `service.rs` tenants and tokens for services, `feed.rs` the tenant list and event feed
//! services follow, `registration.rs` tenants entered by hand, `webhooks.rs` webhook endpoints and deliveries, `oauth.rs` the connect flow, `admin.rs`
//! operators, `ops.rs` health, metrics, OpenAPI); `problem.rs` the one place errors become
//! problem+json; `views.rs` the JSON bodies; `auth.rs` the API-key extractor; `guard.rs`
//! the failed-key throttle; `body.rs` body size and time limits; `openapi.rs` the document.

pub mod audit;
pub mod auth;
pub mod body;
pub mod guard;
pub mod openapi;
pub mod problem;
pub mod routes;
pub mod views;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{Error, HttpResponse, web};
use std::sync::Arc;

use broker_service::metrics::{HttpLabels, MethodLabel, RouteLabels};
use broker_service::{
    ApiKeys, AuditLog, Clock, ConnectFlow, Console, Discovery, EventFeed, HookupIntake, Metrics,
    Operations, TenantAdmin, TokenBroker, WebhookAdmin, WebhookWorker,
};
use tracing::Instrument;

use crate::problem::ApiError;

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
}

impl AppState {
    pub fn new(
        use_cases: UseCases,
        auth_failures: guard::AuthFailures,
        body_timeout: std::time::Duration,
    ) -> Self {
        Self {
            use_cases,
            auth_failures,
            body_timeout,
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
}

/// Registers every route. The app must also wrap `observe` and use `not_found` as its
/// default service (see `provet-broker`'s startup).
pub fn configure(cfg: &mut web::ServiceConfig) {
    use routes::{admin, hookup, oauth, ops, service};
    cfg.service(
        web::resource("/hookup/{hookup_secret}")
            .route(web::post().to(hookup::receive))
            // Any other method is as unknown as a wrong secret.
            .default_service(web::to(not_found)),
    )
    .route("/healthz", web::get().to(ops::healthz))
    .route("/readyz", web::get().to(ops::readyz))
    .route("/metrics", web::get().to(ops::metrics))
    .route("/openapi.json", web::get().to(ops::openapi))
    .route(
        "/v1/tenants/{provet_id}",
        web::get().to(service::get_tenant),
    )
    .route(
        "/v1/tenants/{provet_id}/token",
        web::post().to(service::token),
    )
    .route(
        "/v1/tenants/{provet_id}/authorizations",
        web::post().to(oauth::start),
    )
    .route("/oauth/callback", web::get().to(oauth::callback))
    .route(
        "/admin/tenants/{provet_id}/grants/{subject}",
        web::delete().to(admin::revoke_grant),
    )
    .route("/admin/tenants", web::get().to(admin::list_tenants))
    .route(
        "/admin/tenants",
        web::post().to(routes::registration::register),
    )
    .route("/v1/tenants", web::get().to(routes::feed::list_tenants))
    .route("/v1/events", web::get().to(routes::feed::events))
    .route(
        "/admin/tenants/{provet_id}/verify",
        web::post().to(admin::verify_tenant),
    )
    .route(
        "/admin/tenants/{provet_id}",
        web::get().to(admin::get_tenant),
    )
    .route(
        "/admin/tenants/{provet_id}",
        web::delete().to(admin::remove_tenant),
    )
    .route(
        "/admin/tenants/{provet_id}/events",
        web::get().to(admin::tenant_events),
    )
    .route(
        "/admin/tenants/{provet_id}/discovery",
        web::post().to(admin::rerun_tenant_discovery),
    )
    .route(
        "/admin/discovery/rerun",
        web::post().to(admin::rerun_discovery),
    )
    .route("/admin/webhooks", web::post().to(routes::webhooks::create))
    .route("/admin/webhooks", web::get().to(routes::webhooks::list))
    .route(
        "/admin/webhooks/{id}",
        web::delete().to(routes::webhooks::delete),
    )
    .route(
        "/admin/webhooks/{id}/deliveries",
        web::get().to(routes::webhooks::deliveries),
    )
    .route(
        "/admin/webhooks/{id}/deliveries/{event_id}/retry",
        web::post().to(routes::webhooks::retry),
    )
    .route("/admin/audit", web::get().to(routes::audit::list))
    .route("/admin/api-keys", web::post().to(admin::create_api_key))
    .route("/admin/api-keys", web::get().to(admin::list_api_keys))
    .route(
        "/admin/api-keys/{id}",
        web::delete().to(admin::revoke_api_key),
    );
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

/// Per request: a tracing span with a request id, and the request count and latency by
/// route pattern (never the concrete path, which for the hookup carries its secret). Every
/// label is bounded: standard methods or `other`, route patterns or `unmatched`.
pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let started = state.as_ref().map(|s| s.clock().instant());
    let method = MethodLabel::of(req.method().as_str());
    let route = req
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    let span = tracing::info_span!(
        "request",
        request_id = %format_args!("{:016x}", request_id()),
        method = method.as_str(),
        route = route.as_str(),
        status = tracing::field::Empty,
        api_key = tracing::field::Empty,
    );
    let response = next.call(req).instrument(span.clone()).await?;
    let status = response.status().as_u16();
    span.record("status", status);
    if let (Some(state), Some(started)) = (state, started) {
        let metrics = state.metrics();
        metrics
            .http_duration
            .get_or_create(&RouteLabels {
                method,
                route: route.clone(),
            })
            .observe(state.clock().since(started).as_secs_f64());
        metrics
            .http_requests
            .get_or_create(&HttpLabels {
                method,
                route,
                status,
            })
            .inc();
    }
    Ok(response)
}

/// A correlation id: a per-process random start plus a counter, as 16 hex digits.
fn request_id() -> u64 {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static START: OnceLock<u64> = OnceLock::new();
    let start = *START.get_or_init(rand_id);
    start.wrapping_add(
        NEXT.fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15),
    )
}

fn rand_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded per process and per instance: good enough for correlation ids.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.finish()
}
