//! `/v1/...`: what internal services ask of the broker (token or admin keys).

use actix_web::{HttpResponse, web};

use crate::AppState;
use crate::auth::Caller;
use crate::body::Body;
use crate::openapi::{
    BadGateway, BadRequest, Conflict, NotFound, PayloadTooLarge, RequestTimeout, Unavailable,
};
use crate::problem::ApiError;
use crate::routes::admin::{ProvetIdPath, provet_id};
use crate::views::{ServiceTenantView, TokenRequestBody, TokenResponse};
use broker_service::tokens::TokenRequest;
use secrecy::ExposeSecret;

/// What a service may know about a tenant: grant type, departments, discovery state, and
/// whether the broker can get a token for it. Never secrets.
#[utoipa::path(
    get,
    path = "/v1/tenants/{provet_id}",
    tag = "tokens",
    operation_id = "service_get_tenant",
    params(ProvetIdPath),
    security(("api_key" = [])),
    responses(
        (status = 200, body = ServiceTenantView),
        (status = 400, response = BadRequest),
        (status = 404, response = NotFound),
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
    params(ProvetIdPath),
    request_body(content = Option<TokenRequestBody>, content_type = "application/json"),
    security(("api_key" = [])),
    responses(
        (status = 200, body = TokenResponse),
        (status = 400, response = BadRequest),
        (status = 404, response = NotFound),
        (status = 408, response = RequestTimeout),
        (status = 409, response = Conflict),
        (status = 413, response = PayloadTooLarge),
        (status = 502, response = BadGateway),
        (status = 503, response = Unavailable),
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
    // No body, or `null`, asks for the defaults.
    let body: TokenRequestBody =
        crate::parse_optional_json::<Option<TokenRequestBody>>(&body.read().await?)?
            .unwrap_or_default();
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
