//! A tenant's actions: re-run discovery, verify credentials, make a connect link, revoke a
//! grant, remove the tenant. Each checks the form's CSRF token, leaves an audit entry, and
//! answers with the tenant's page (after a redirect that names a notice).

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use broker_api::AppState;
use broker_domain::{AuditAction, AuditOutcome};
use broker_service::console::ConsoleSession;
use serde::Deserialize;

use crate::audit::audit;
use crate::error::{ConsoleError, found};
use crate::layout::{html_answer, html_page};
use crate::session::{CsrfForm, checked};
use crate::tenant::{back, provet_id, tenant_page};

/// The operator (the form's CSRF token checked) and the tenant an action is about.
async fn target(
    state: &AppState,
    req: &HttpRequest,
    path: &str,
    csrf: Option<&str>,
) -> Result<(ConsoleSession, i64), ConsoleError> {
    let session = checked(req, state, csrf).await?;
    Ok((session, provet_id(path)?))
}

/// Records the action on tenant `id` with its outcome, and hands its result back.
async fn audited<T, E: Into<ConsoleError>>(
    state: &AppState,
    session: &ConsoleSession,
    action: AuditAction,
    id: i64,
    result: Result<T, E>,
) -> Result<T, ConsoleError> {
    audit(state, &session.key_name, action)
        .tenant(id)
        .finish(result.map_err(Into::into))
        .await
}

/// `POST /console/tenants/{id}/discovery`.
pub async fn rerun_discovery(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    form: web::Form<CsrfForm>,
) -> Result<HttpResponse, ConsoleError> {
    let (session, id) = target(&state, &req, &path, form.csrf.as_deref()).await?;
    let rerun = state.tenant_admin().rediscover(id).await;
    audited(&state, &session, AuditAction::TenantDiscovery, id, rerun).await?;
    Ok(back(id, "discovery"))
}

/// `POST /console/tenants/{id}/verify`.
pub async fn verify(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    form: web::Form<CsrfForm>,
) -> Result<HttpResponse, ConsoleError> {
    let (session, id) = target(&state, &req, &path, form.csrf.as_deref()).await?;
    let verified = state.tenant_admin().verify(id).await;
    audited(&state, &session, AuditAction::TenantVerify, id, verified).await?;
    Ok(back(id, "verified"))
}

/// `POST /console/tenants/{id}/connect-link`: the tenant's page with a fresh link.
pub async fn connect_link(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    form: web::Form<CsrfForm>,
) -> Result<HttpResponse, ConsoleError> {
    let (session, id) = target(&state, &req, &path, form.csrf.as_deref()).await?;
    let link = state.connect().start(id, None, None).await;
    let link = audited(&state, &session, AuditAction::ConnectLink, id, link).await?;
    Ok(html_page(
        tenant_page(&state, &session, id, None, Some(&link), None).await?,
    ))
}

#[derive(Deserialize)]
pub struct RevokeForm {
    csrf: Option<String>,
    subject: String,
}

/// `POST /console/tenants/{id}/revoke-grant`.
pub async fn revoke_grant(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    form: web::Form<RevokeForm>,
) -> Result<HttpResponse, ConsoleError> {
    let (session, id) = target(&state, &req, &path, form.csrf.as_deref()).await?;
    let revoked = found(
        state.connect().revoke_grant(id, &form.subject).await,
        || format!("Tenant {id} has no grant for that subject."),
    )
    .map(|()| back(id, "grant-revoked"));
    audit(&state, &session.key_name, AuditAction::GrantRevoke)
        .tenant(id)
        .target(format!("grant {}", form.subject))
        .finish(revoked)
        .await
}

#[derive(Deserialize)]
pub struct RemoveForm {
    csrf: Option<String>,
    confirm: String,
}

/// `POST /console/tenants/{id}/remove`: only when the form names the provet_id again.
pub async fn remove(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    form: web::Form<RemoveForm>,
) -> Result<HttpResponse, ConsoleError> {
    let (session, id) = target(&state, &req, &path, form.csrf.as_deref()).await?;
    if form.confirm.trim() != id.to_string() {
        audit(&state, &session.key_name, AuditAction::TenantRemove)
            .tenant(id)
            .outcome(AuditOutcome::Refused)
            .await;
        let error = format!("Nothing was removed: type {id} exactly to confirm.");
        let page = tenant_page(&state, &session, id, None, None, Some(&error)).await?;
        return Ok(html_answer(StatusCode::BAD_REQUEST, page));
    }
    let removed = state.tenant_admin().remove(id).await;
    audited(&state, &session, AuditAction::TenantRemove, id, removed).await?;
    Ok(back(id, "removed"))
}
