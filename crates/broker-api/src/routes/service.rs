//! `/v1/...`: what internal services ask of the broker (token or admin keys).

use actix_web::{HttpResponse, web};

use crate::AppState;
use crate::auth::Caller;
use crate::body::Body;
use crate::problem::ApiError;
use crate::routes::admin::provet_id;
use crate::views::{ServiceTenantView, TokenRequestBody, TokenResponse};
use broker_service::tokens::TokenRequest;
use secrecy::ExposeSecret;

/// What a service may know about a tenant: grant type, departments, discovery state, and
/// whether the broker can get a token for it. Never secrets.
#[utoipa::path(
    get,
    path = "/v1/tenants/{provet_id}",
    tag = "tokens",
    params(("provet_id" = i64, Path)),
    security(("api_key" = [])),
    responses(
        (status = 200, body = ServiceTenantView),
        (status = 401, body = crate::problem::Problem),
        (status = 403, body = crate::problem::Problem),
        (status = 404, description = "Unknown or removed tenant", body = crate::problem::Problem),
    )
)]
pub async fn get_tenant(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = provet_id(&path)?;
    caller.require_tenant(id)?;
    let tenant = state.tenant_admin().service_tenant(id).await?;
    Ok(HttpResponse::Ok().json(ServiceTenantView::from(tenant)))
}

/// An access token for the tenant, from the cache when one is valid long enough.
///
/// Exactly one request per need reaches the provider, whatever the number of concurrent
/// callers and replicas.
#[utoipa::path(
    post,
    path = "/v1/tenants/{provet_id}/token",
    tag = "tokens",
    params(("provet_id" = i64, Path)),
    request_body(content = Option<TokenRequestBody>, content_type = "application/json"),
    security(("api_key" = [])),
    responses(
        (status = 200, body = TokenResponse),
        (status = 400, description = "invalid_request", body = crate::problem::Problem),
        (status = 401, body = crate::problem::Problem),
        (status = 403, body = crate::problem::Problem),
        (status = 404, description = "tenant_not_found", body = crate::problem::Problem),
        (status = 408, description = "request_timeout: the body did not arrive in time", body = crate::problem::Problem),
        (status = 409, description = "reauthorization_required or misconfigured", body = crate::problem::Problem),
        (status = 502, description = "upstream_rejected (with `upstream_error`)", body = crate::problem::Problem),
        (status = 413, description = "payload_too_large: body over 64 KiB", body = crate::problem::Problem),
        (status = 503, description = "upstream_unavailable (with Retry-After)", body = crate::problem::Problem),
    )
)]
pub async fn token(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
    body: Body,
) -> Result<HttpResponse, ApiError> {
    let id = provet_id(&path)?;
    caller.require_tenant(id)?;
    let body: TokenRequestBody = crate::parse_optional_json(&body.read().await?)?;
    let token = state
        .tokens()
        .token(
            id,
            &TokenRequest {
                scope: body.scope,
                min_ttl: body.min_ttl,
                force_refresh: body.force_refresh,
                subject: body.subject,
            },
        )
        .await?;
    state
        .metrics()
        .token_served(&caller.0.name, token.source.as_str());
    let now = state.clock().now();
    Ok(HttpResponse::Ok()
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
        .json(TokenResponse {
            access_token: token.access_token.expose_secret().to_owned(),
            token_type: token.token_type,
            expires_in: (token.expires_at - now).num_seconds().max(0),
            expires_at: token.expires_at,
            scope: token.scope,
            provet_id: id,
        }))
}
