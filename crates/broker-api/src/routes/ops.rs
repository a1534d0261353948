//! Health, readiness, metrics and the OpenAPI document.

use actix_web::{HttpResponse, web};

use crate::AppState;
use crate::problem::ApiError;
use crate::views::{Health, Ready};

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, body = Health)))]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Health { status: "ok" })
}

/// The database answers, its schema is current, and every key that sealed a stored secret
/// is configured.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, body = Ready),
        (status = 503, response = crate::openapi::Unavailable),
    )
)]
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let readiness = state.operations().readiness().await?;
    if readiness.pending_migrations > 0 {
        return Err(ApiError::Unavailable(format!(
            "{} migration(s) pending; run `provet-broker migrate`",
            readiness.pending_migrations
        )));
    }
    if !readiness.missing_keys.is_empty() {
        // Named in the answer: a key id is not secret, and it is what the operator must find.
        let detail = format!(
            "stored secrets are sealed with key id(s) {} that this replica does not have: \
             configure that key (secrets.master_key or secrets.previous_keys)",
            readiness.missing_keys.join(", ")
        );
        tracing::error!(missing_keys = %readiness.missing_keys.join(","), "not ready: master key missing");
        return Err(ApiError::NotReady(detail));
    }
    Ok(HttpResponse::Ok().json(Ready {
        status: "ready",
        database: "ok",
        pending_migrations: 0,
    }))
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, content_type = "application/openmetrics-text", body = String)))]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(state.operations().metrics_text().await)
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", responses((status = 200, body = Object)))]
pub async fn openapi() -> HttpResponse {
    HttpResponse::Ok().json(crate::openapi::document())
}
