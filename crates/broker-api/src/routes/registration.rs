//! `POST /admin/tenants`: an operator registers a tenant by hand, for credentials Provet
//! delivered by email. Body, validation, answers and storage exactly as the hookup's.

use actix_web::{HttpRequest, HttpResponse, web};
use broker_domain::{AuditAction, DeliverySource};

use crate::AppState;
use crate::auth::Caller;
use crate::body::Body;
use crate::problem::ApiError;
use crate::routes::hookup::is_json;
use crate::views::HookupReceiptView;

/// Registers (or updates) a tenant from a hookup message; the delivery is recorded with
/// `"source": "admin"`. A bad message changes nothing and names every bad field.
#[utoipa::path(
    post,
    path = "/admin/tenants",
    tag = "admin",
    request_body(content = Object, content_type = "application/json", description = "The hookup message (Provet's schema)"),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "Stored", body = HookupReceiptView),
        (status = 400, description = "Invalid JSON or schema violations, every field named", body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 401, body = crate::problem::Problem),
        (status = 403, body = crate::problem::Problem),
        (status = 413, description = "Body over 64 KiB", body = crate::problem::Problem),
        (status = 415, description = "Not JSON", body = crate::problem::Problem),
        (status = 503, description = "Not stored; retry", body = crate::problem::Problem),
    )
)]
pub async fn register(
    state: web::Data<AppState>,
    caller: Caller,
    req: HttpRequest,
    body: Body,
) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    let registered = async {
        if !is_json(&req) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let body = body.read().await?;
        Ok(state
            .hookups()
            .register(&body, DeliverySource::Admin)
            .await?)
    }
    .await;
    let audit = caller.audit(AuditAction::TenantRegister);
    let audit = match &registered {
        Ok(r) => audit.tenant(r.provet_id),
        Err(_) => audit,
    };
    let receipt = audit.finish(&state, registered).await?;
    Ok(HttpResponse::Ok().json(HookupReceiptView::from(receipt)))
}
