//! `/v1/...`: what internal services ask of the broker (token or admin keys).

use actix_web::{HttpResponse, web};

use crate::AppState;
use crate::auth::Caller;
use crate::problem::ApiError;
use crate::routes::admin::provet_id;
use crate::views::ServiceTenantView;

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
    let tenant = state
        .broker
        .tenant(id)
        .await?
        .filter(|t| t.status == "active")
        .ok_or(ApiError::TenantNotFound(id))?;
    Ok(HttpResponse::Ok().json(ServiceTenantView::from(tenant)))
}
