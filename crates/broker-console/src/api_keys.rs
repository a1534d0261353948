//! API keys: the list, create (the key shown once), revoke.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use broker_api::AppState;
use broker_domain::{ApiKeyRole, AuditAction, AuditOutcome};
use broker_service::api_keys::ApiKeyError;
use broker_service::console::ConsoleSession;
use maud::{Markup, html};
use secrecy::ExposeSecret;
use serde::Deserialize;

use crate::audit::audit;
use crate::error::{ConsoleError, found};
use crate::layout::{
    self, NoticeQuery, Shell, copy_field, csrf_field, html_answer, html_page, state_badge,
};
use crate::session::{CsrfForm, checked, redirect, signed_in};

async fn keys_page(
    state: &AppState,
    session: &ConsoleSession,
    created: Option<(&str, &str)>,
    error: Option<&str>,
    notice: Option<&str>,
) -> Result<Markup, ConsoleError> {
    let keys = state.api_keys().list().await?;
    let now = state.clock().now();
    let csrf = &session.csrf_token;
    let content = html! {
        h1 { "API keys" }
        (layout::notice(notice))
        @if let Some((name, key)) = created {
            section.card.once id="created-key" {
                h2 { "Key “" (name) "” created" }
                p { strong { "Copy it now: it is shown this once." } " Only its SHA-256 is stored." }
                (copy_field("new-key", key))
            }
        }
        section.card {
            h2 { "Create a key" }
            @if let Some(error) = error { p.error-text role="alert" { (error) } }
            form.stack method="post" action="/console/api-keys" {
                (csrf_field(csrf))
                label { "Name" input type="text" name="name" required maxlength="255"; }
                label { "Role"
                    select name="role" {
                        option value="token" selected { "token: services get tokens" }
                        option value="admin" { "admin: operators (this console, /admin)" }
                    }
                }
                label { "Tenants (token keys only; provet_ids separated by commas; empty: every tenant)"
                    input type="text" name="tenants" inputmode="numeric";
                }
                button type="submit" id="create-key" { "Create key" }
            }
        }
        div.table-wrap { table id="api-keys" {
            thead { tr { th { "Id" } th { "Name" } th { "Role" } th { "Tenants" } th { "Starts with" } th { "Created" } th { "State" } th {} } }
            tbody { @for k in &keys {
                tr {
                    td { (k.id) }
                    td { (k.name) }
                    td { (k.role.as_str()) }
                    td { @match &k.tenants { Some(t) => { (t.iter().map(i64::to_string).collect::<Vec<_>>().join(", ")) }, None => { "every tenant" } } }
                    td { code { (k.key_prefix) "…" } }
                    td { (layout::time(k.created_at, now)) }
                    td { @if let Some(at) = k.revoked_at { (state_badge("revoked")) " " (layout::time(at, now)) } @else { (state_badge("active")) } }
                    td {
                        @if k.revoked_at.is_none() {
                            form.inline method="post" action={ "/console/api-keys/" (k.id) "/revoke" } {
                                (csrf_field(csrf))
                                button.danger type="submit" { "Revoke" }
                            }
                        }
                    }
                }
            } }
        } }
    };
    Ok(Shell::signed_in("API keys", session, "api-keys").render(content))
}

pub async fn list(
    state: web::Data<AppState>,
    req: HttpRequest,
    query: web::Query<NoticeQuery>,
) -> Result<HttpResponse, ConsoleError> {
    let session = signed_in(&req, &state).await?;
    let notice = query.text("revoked", "The key was revoked.");
    Ok(html_page(
        keys_page(&state, &session, None, None, notice).await?,
    ))
}

#[derive(Deserialize)]
pub struct CreateForm {
    csrf: Option<String>,
    name: String,
    role: String,
    #[serde(default)]
    tenants: String,
}

pub async fn create(
    state: web::Data<AppState>,
    req: HttpRequest,
    form: web::Form<CreateForm>,
) -> Result<HttpResponse, ConsoleError> {
    let session = checked(&req, &state, form.csrf.as_deref()).await?;
    let refuse = |state: web::Data<AppState>, session: ConsoleSession, why: String| async move {
        let page = keys_page(&state, &session, None, Some(&why), None).await?;
        Ok::<_, ConsoleError>(html_answer(StatusCode::BAD_REQUEST, page))
    };
    let Ok(role) = form.role.parse::<ApiKeyRole>() else {
        return refuse(state, session, "Role: choose token or admin.".into()).await;
    };
    let mut tenants = Vec::new();
    for part in form
        .tenants
        .split([',', ' '])
        .filter(|p| !p.trim().is_empty())
    {
        match part.trim().parse::<i64>() {
            Ok(id) => tenants.push(id),
            Err(_) => {
                return refuse(
                    state,
                    session,
                    format!("Tenants: `{part}` is not a provet_id."),
                )
                .await;
            }
        }
    }
    let tenants = (!tenants.is_empty()).then_some(tenants);
    let created = state.api_keys().create(&form.name, role, tenants).await;
    let entry = audit(&state, &session.key_name, AuditAction::ApiKeyCreate);
    let entry = match &created {
        Ok(c) => entry.target(format!("api key {} ({})", c.record.id, c.record.name)),
        Err(_) => entry.target(format!("name {}", form.name.trim())),
    };
    entry
        .outcome(match &created {
            Ok(_) => AuditOutcome::Ok,
            Err(ApiKeyError::Invalid { .. }) => AuditOutcome::Refused,
            Err(_) => AuditOutcome::Failed,
        })
        .await;
    match created {
        Ok(created) => {
            let page = keys_page(
                &state,
                &session,
                Some((&created.record.name, created.key.expose_secret())),
                None,
                None,
            )
            .await?;
            Ok(html_answer(StatusCode::CREATED, page))
        }
        Err(ApiKeyError::Invalid { field, message }) => {
            refuse(state, session, format!("{field}: {message}")).await
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn revoke(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    form: web::Form<CsrfForm>,
) -> Result<HttpResponse, ConsoleError> {
    let session = checked(&req, &state, form.csrf.as_deref()).await?;
    let id: i64 = path
        .parse()
        .map_err(|_| ConsoleError::NotFound("That is not an API key id.".into()))?;
    let result = found(state.api_keys().revoke(id).await, || {
        format!("API key {id} does not exist or is already revoked.")
    })
    .map(|()| redirect("/console/api-keys?notice=revoked"));
    audit(&state, &session.key_name, AuditAction::ApiKeyRevoke)
        .target(format!("api key {id}"))
        .finish(result)
        .await
}
