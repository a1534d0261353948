//! Webhooks: the list, register (the signing secret shown once), a webhook's deliveries with
//! retry, delete.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use broker_api::AppState;
use broker_domain::{AuditAction, AuditOutcome};
use broker_service::console::ConsoleSession;
use broker_service::webhooks::{ManualRetry, WebhookError};
use maud::{Markup, html};
use secrecy::ExposeSecret;
use serde::Deserialize;

use crate::audit::audit;
use crate::error::{ConsoleError, found};
use crate::layout::{
    self, NoticeQuery, Shell, copy_field, csrf_field, html_answer, html_page, maybe_time,
    state_badge,
};
use crate::session::{CsrfForm, checked, redirect, signed_in};

async fn list_page(
    state: &AppState,
    session: &ConsoleSession,
    created: Option<(i64, &str)>,
    errors: &[(String, String)],
    notice: Option<&str>,
) -> Result<Markup, ConsoleError> {
    let hooks = state.webhooks().list().await?;
    let now = state.clock().now();
    let content = html! {
        h1 { "Webhooks" }
        (layout::notice(notice))
        @if let Some((id, secret)) = created {
            section.card.once id="created-webhook" {
                h2 { "Webhook " (id) " registered" }
                p { strong { "Copy the signing secret now: it is shown this once." } " Receivers verify each delivery's " code { "webhook-signature" } " with it." }
                (copy_field("new-secret", secret))
            }
        }
        section.card {
            h2 { "Register a webhook" }
            @if !errors.is_empty() {
                ul.field-errors role="alert" { @for (f, m) in errors { li { code { (f) } ": " (m) } } }
            }
            form.stack method="post" action="/console/webhooks" {
                (csrf_field(&session.csrf_token))
                label { "URL" input type="url" name="url" required placeholder="https://service.internal/provet-events"; }
                label { "Events (names separated by commas, or * for all)" input type="text" name="events" value="*" required; }
                label { "Description" input type="text" name="description" maxlength="500"; }
                button type="submit" id="create-webhook" { "Register" }
            }
        }
        @if hooks.is_empty() { p.muted { "No webhooks yet." } } @else {
            div.table-wrap { table id="webhooks" {
                thead { tr { th { "Id" } th { "URL" } th { "Events" } th { "State" } th { "Created" } } }
                tbody { @for w in &hooks {
                    tr {
                        td { a href={ "/console/webhooks/" (w.id) } { (w.id) } }
                        td { code { (w.url) } @if !w.description.is_empty() { br; span.muted { (w.description) } } }
                        td { (w.events.join(", ")) }
                        td { (state_badge(w.state.as_str())) }
                        td { (layout::time(w.created_at, now)) }
                    }
                } }
            } }
        }
    };
    Ok(Shell::signed_in("Webhooks", session, "webhooks").render(content))
}

pub async fn list(
    state: web::Data<AppState>,
    req: HttpRequest,
    query: web::Query<NoticeQuery>,
) -> Result<HttpResponse, ConsoleError> {
    let session = signed_in(&req, &state).await?;
    let notice = query.text("deleted", "The webhook was deleted.");
    Ok(html_page(
        list_page(&state, &session, None, &[], notice).await?,
    ))
}

#[derive(Deserialize)]
pub struct CreateForm {
    csrf: Option<String>,
    url: String,
    events: String,
    #[serde(default)]
    description: String,
}

pub async fn create(
    state: web::Data<AppState>,
    req: HttpRequest,
    form: web::Form<CreateForm>,
) -> Result<HttpResponse, ConsoleError> {
    let session = checked(&req, &state, form.csrf.as_deref()).await?;
    let events: Vec<String> = form
        .events
        .split([',', ' '])
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::to_owned)
        .collect();
    let now = state.clock().now();
    let created = state
        .webhooks()
        .create(form.url.trim(), &events, form.description.trim(), now)
        .await;
    let entry = audit(&state, &session.key_name, AuditAction::WebhookCreate);
    let entry = match &created {
        Ok(c) => entry.target(format!("webhook {}", c.record.id)),
        Err(_) => entry,
    };
    entry
        .outcome(match &created {
            Ok(_) => AuditOutcome::Ok,
            Err(WebhookError::Invalid(_)) => AuditOutcome::Refused,
            Err(WebhookError::Store(_)) => AuditOutcome::Failed,
        })
        .await;
    match created {
        Ok(created) => {
            let page = list_page(
                &state,
                &session,
                Some((created.record.id, created.secret.expose_secret())),
                &[],
                None,
            )
            .await?;
            Ok(html_answer(StatusCode::CREATED, page))
        }
        Err(WebhookError::Invalid(errors)) => {
            let errors: Vec<_> = errors.into_iter().map(|e| (e.field, e.message)).collect();
            let page = list_page(&state, &session, None, &errors, None).await?;
            Ok(html_answer(StatusCode::BAD_REQUEST, page))
        }
        Err(WebhookError::Store(e)) => Err(e.into()),
    }
}

fn webhook_id(raw: &str) -> Result<i64, ConsoleError> {
    raw.parse()
        .map_err(|_| ConsoleError::NotFound("That is not a webhook id.".into()))
}

/// `GET /console/webhooks/{id}`: the webhook and its newest deliveries.
pub async fn page(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<NoticeQuery>,
) -> Result<HttpResponse, ConsoleError> {
    let session = signed_in(&req, &state).await?;
    let id = webhook_id(&path)?;
    let Some(hook) = state.webhooks().get(id).await? else {
        return Err(ConsoleError::NotFound(format!(
            "Webhook {id} does not exist."
        )));
    };
    let deliveries = state.webhooks().deliveries(id, None, 100).await?;
    let now = state.clock().now();
    let csrf = &session.csrf_token;
    let notice = query.text("retried", "An attempt was made now; its outcome is below.");
    let title = format!("Webhook {id}");
    let content = html! {
        h1 { "Webhook " (id) " " (state_badge(hook.state.as_str())) }
        (layout::notice(notice))
        section.card {
            dl.facts {
                dt { "URL" } dd { code { (hook.url) } }
                dt { "Events" } dd { (hook.events.join(", ")) }
                dt { "Description" } dd { (hook.description) }
                dt { "Created" } dd { (layout::time(hook.created_at, now)) }
                dt { "Disabled" } dd { (maybe_time(hook.disabled_at, now)) }
            }
            form.actions method="post" action={ "/console/webhooks/" (id) "/delete" } {
                (csrf_field(csrf))
                button.danger type="submit" { "Delete webhook" }
            }
        }
        h2 { "Deliveries" }
        @if deliveries.is_empty() { p.muted { "None yet." } } @else {
            div.table-wrap { table id="deliveries" {
                thead { tr { th { "Event" } th { "Type" } th { "State" } th { "Attempts" } th { "Last attempt" } th { "Answer" } th { "Next retry" } th {} } }
                tbody { @for d in &deliveries {
                    tr {
                        td { code { (d.event_public_id()) } }
                        td { (d.event_type) }
                        td { (state_badge(d.state.as_str())) }
                        td { (d.attempts) }
                        td { (maybe_time(d.last_attempt_at, now)) }
                        td { @if let Some(s) = d.last_status { "HTTP " (s) } @if let Some(e) = &d.last_error { " " span.error-text { (e) } } }
                        td { (maybe_time(d.next_attempt_at, now)) }
                        td {
                            form.inline method="post" action={ "/console/webhooks/" (id) "/deliveries/" (d.event_id) "/retry" } {
                                (csrf_field(csrf))
                                button.secondary type="submit" { "Retry now" }
                            }
                        }
                    }
                } }
            } }
        }
    };
    Ok(html_page(
        Shell::signed_in(&title, &session, "webhooks").render(content),
    ))
}

pub async fn delete(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    form: web::Form<CsrfForm>,
) -> Result<HttpResponse, ConsoleError> {
    let session = checked(&req, &state, form.csrf.as_deref()).await?;
    let id = webhook_id(&path)?;
    let result = found(state.webhooks().delete(id).await, || {
        format!("Webhook {id} does not exist.")
    })
    .map(|()| redirect("/console/webhooks?notice=deleted"));
    audit(&state, &session.key_name, AuditAction::WebhookDelete)
        .target(format!("webhook {id}"))
        .finish(result)
        .await
}

pub async fn retry(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    form: web::Form<CsrfForm>,
) -> Result<HttpResponse, ConsoleError> {
    let session = checked(&req, &state, form.csrf.as_deref()).await?;
    let (id, event_id) = path.into_inner();
    let id = webhook_id(&id)?;
    let event_id: i64 = event_id
        .parse()
        .map_err(|_| ConsoleError::NotFound("That is not an event id.".into()))?;
    let result = match state
        .webhooks()
        .retry(id, event_id, state.clock().now())
        .await
    {
        Ok(ManualRetry::NotFound) => Err(ConsoleError::NotFound(format!(
            "Webhook {id} has no delivery of that event."
        ))),
        Ok(ManualRetry::InFlight(_) | ManualRetry::Attempted(_)) => {
            Ok(redirect(&format!("/console/webhooks/{id}?notice=retried")))
        }
        Err(e) => Err(e.into()),
    };
    audit(&state, &session.key_name, AuditAction::WebhookRetry)
        .target(format!("webhook {id} event {event_id}"))
        .finish(result)
        .await
}
