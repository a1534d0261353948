//! provet-broker's operator console: `GET /console` and the pages under it, rendered on the
//! server (maud), with no external assets and a strict Content-Security-Policy. Operators
//! sign in with an admin API key; every action goes through the same use cases as the admin
//! API (`broker_api::AppState` accessors).
//!
//! `session.rs` sign-in, the session cookie and the CSRF check; `error.rs` error pages that
//! say what to do; `layout.rs` the page shell, HTML answers, badges and times; one file per
//! page: `overview.rs`, `tenants.rs` (the list), `tenant.rs` (a tenant's page) with
//! `tenant_actions.rs` (its actions), `register.rs` (registration by hand), `api_keys.rs`,
//! `webhooks.rs`, `audit.rs` (every action's entry, and the log's page); `assets/` the CSS
//! and the small copy-button script.

mod api_keys;
mod audit;
mod error;
mod layout;
mod overview;
mod register;
mod session;
mod tenant;
mod tenant_actions;
mod tenants;
mod webhooks;

use actix_web::http::header::{self, HeaderValue};
use actix_web::middleware::DefaultHeaders;
use actix_web::{HttpResponse, web};

pub use error::ConsoleError;

/// The policy every console answer carries: nothing but this daemon, no inline script or
/// style, no framing, forms only back to here.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The largest form the console accepts (a pasted hookup message fits).
const MAX_FORM: usize = 64 * 1024;

/// Registers `/console` and everything under it.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/console")
            .app_data(
                web::FormConfig::default()
                    .limit(MAX_FORM)
                    .error_handler(|err, _| ConsoleError::BadForm(err.to_string()).into()),
            )
            .app_data(
                web::QueryConfig::default()
                    .error_handler(|err, _| ConsoleError::BadForm(err.to_string()).into()),
            )
            .wrap(
                DefaultHeaders::new()
                    .add((
                        header::CONTENT_SECURITY_POLICY,
                        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
                    ))
                    .add((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
                    .add((header::X_FRAME_OPTIONS, "DENY"))
                    .add((header::REFERRER_POLICY, "no-referrer"))
                    .add((header::CACHE_CONTROL, "no-store")),
            )
            .route("", web::get().to(overview::page))
            .route("/", web::get().to(overview::page))
            .route("/assets/console.css", web::get().to(stylesheet))
            .route("/assets/console.js", web::get().to(script))
            .route("/sign-in", web::get().to(session::sign_in_page))
            .route("/sign-in", web::post().to(session::sign_in))
            .route("/sign-out", web::post().to(session::sign_out))
            .route("/tenants", web::get().to(tenants::list))
            .route("/register", web::get().to(register::register_page))
            .route("/register", web::post().to(register::register))
            .route("/tenants/{provet_id}", web::get().to(tenant::page))
            .route(
                "/tenants/{provet_id}/discovery",
                web::post().to(tenant_actions::rerun_discovery),
            )
            .route(
                "/tenants/{provet_id}/verify",
                web::post().to(tenant_actions::verify),
            )
            .route(
                "/tenants/{provet_id}/connect-link",
                web::post().to(tenant_actions::connect_link),
            )
            .route(
                "/tenants/{provet_id}/revoke-grant",
                web::post().to(tenant_actions::revoke_grant),
            )
            .route(
                "/tenants/{provet_id}/remove",
                web::post().to(tenant_actions::remove),
            )
            .route("/api-keys", web::get().to(api_keys::list))
            .route("/api-keys", web::post().to(api_keys::create))
            .route("/api-keys/{id}/revoke", web::post().to(api_keys::revoke))
            .route("/audit", web::get().to(audit::page))
            .route("/webhooks", web::get().to(webhooks::list))
            .route("/webhooks", web::post().to(webhooks::create))
            .route("/webhooks/{id}", web::get().to(webhooks::page))
            .route("/webhooks/{id}/delete", web::post().to(webhooks::delete))
            .route(
                "/webhooks/{id}/deliveries/{event_id}/retry",
                web::post().to(webhooks::retry),
            )
            .default_service(web::to(not_found)),
    );
}

async fn stylesheet() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/css; charset=utf-8")
        .body(include_str!("assets/console.css"))
}

async fn script() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .body(include_str!("assets/console.js"))
}

async fn not_found() -> Result<HttpResponse, ConsoleError> {
    Err(ConsoleError::NotFound(
        "There is no console page at this address.".into(),
    ))
}
