//! `POST /admin/tenants`: an operator registers a tenant by hand, for credentials Provet
//! delivered by email. Body, validation, answers and storage exactly as the hookup's.

use actix_web::{HttpRequest, HttpResponse, web};
use broker_domain::{AuditAction, DeliverySource};

use crate::AppState;
use crate::auth::Caller;
use crate::body::Body;
use crate::openapi::{
    BadRequest, HookupMessageRef, PayloadTooLarge, RequestTimeout, Unavailable,
    UnsupportedMediaType,
};
use crate::problem::ApiError;
use crate::routes::hookup::is_json;
use crate::views::HookupReceiptView;

/// Registers (or updates) a tenant from a hookup message; the delivery is recorded with
/// `"source": "admin"`. A bad message changes nothing and names every bad field.
#[utoipa::path(
    post,
    path = "/admin/tenants",
    tag = "admin",
    request_body(content = HookupMessageRef, content_type = "application/json", description = "The hookup message (Provet's schema)"),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "Stored", body = HookupReceiptView),
        (status = 400, response = BadRequest),
        (status = 408, response = RequestTimeout),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 503, response = Unavailable),
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
