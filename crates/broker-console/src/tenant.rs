//! A tenant's page: its client, credentials, discovery, grants, recent hookup deliveries and
//! events, and the forms of its actions (`tenant_actions.rs` handles them).

use actix_web::{HttpRequest, HttpResponse, web};
use broker_api::AppState;
use broker_domain::{GrantState, GrantType, TenantStatus};
use broker_service::connect::AuthorizationStart;
use broker_service::console::{ConsoleSession, RecentEvent};
use broker_service::{DeliveryRecord, TenantRecord};
use chrono::{DateTime, Utc};
use maud::{Markup, html};

use crate::error::ConsoleError;
use crate::layout::{
    self, NoticeQuery, Shell, copy_field, csrf_field, html_page, maybe_time, state_badge,
};
use crate::session::{redirect, signed_in};

/// Parses a `{provet_id}` path segment; a bad one is a page that is not there.
pub fn provet_id(raw: &str) -> Result<i64, ConsoleError> {
    broker_api::routes::admin::provet_id(raw)
        .map_err(|_| ConsoleError::NotFound(format!("`{raw}` is not a provet_id.")))
}

/// The words for a `?notice=` code (fixed texts: nothing from the address is shown).
fn notice_text(code: Option<&str>) -> Option<&'static str> {
    Some(match code? {
        "discovery" => "Discovery ran. Its state is below.",
        "verified" => "Credentials checked. The outcome is below.",
        "grant-revoked" => "The grant was revoked.",
        "removed" => "The tenant was removed: its secret, grants and tokens are wiped.",
        "registered" => "Registered: a new tenant.",
        "updated" => "Stored: the tenant was updated.",
        "unchanged" => "Stored: the message changed nothing.",
        _ => return None,
    })
}

/// Redirects to the tenant's page, which shows the notice `notice` names.
pub fn back(id: i64, notice: &str) -> HttpResponse {
    redirect(&format!("/console/tenants/{id}?notice={notice}"))
}

/// `GET /console/tenants/{provet_id}`.
pub async fn page(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<NoticeQuery>,
) -> Result<HttpResponse, ConsoleError> {
    let session = signed_in(&req, &state).await?;
    let id = provet_id(&path)?;
    let notice = notice_text(query.notice.as_deref());
    Ok(html_page(
        tenant_page(&state, &session, id, notice, None, None).await?,
    ))
}

/// A tenant's page, with an optional notice, connect link or removal error.
pub async fn tenant_page(
    state: &AppState,
    session: &ConsoleSession,
    id: i64,
    notice: Option<&str>,
    connect: Option<&AuthorizationStart>,
    remove_error: Option<&str>,
) -> Result<Markup, ConsoleError> {
    let t = state.tenant_admin().tenant(id).await?;
    let deliveries = state.tenant_admin().deliveries(id, None, 10).await?;
    let events = state.console().recent_events(id, 20).await?;
    let document = state.console().discovery_document(id).await?;
    let now = state.clock().now();
    let csrf = &session.csrf_token;
    let active = t.status == TenantStatus::Active;
    let authorization_code = t
        .client
        .as_ref()
        .is_some_and(|c| c.grant_type == GrantType::AuthorizationCode);
    let title = format!("Tenant {id}");
    let content = html! {
        h1 { "Tenant " (id) " " (state_badge(t.status.as_str())) }
        (layout::notice(notice))
        @if let Some(link) = connect { (connect_link_card(link, now)) }
        @if active { (actions_card(&t, csrf, authorization_code)) }
        div.grid {
            (client_card(&t, now))
            (credentials_card(&t, now))
            (discovery_card(&t, document.as_deref(), now))
        }
        (grants_card(&t, csrf, authorization_code, now))
        (deliveries_card(&deliveries, now))
        (events_card(&events, now))
        @if active { (remove_card(id, csrf, remove_error)) }
    };
    Ok(Shell::signed_in(&title, session, "tenants").render(content))
}

/// The link a clinic user opens to connect, shown once after it was made.
fn connect_link_card(link: &AuthorizationStart, now: DateTime<Utc>) -> Markup {
    html! {
        section.card id="connect-link" {
            h2 { "Connect link" }
            p { "Send this link to a user of the clinic. It opens Provet's sign-in; once they allow access, the grant appears below. It works once, until " (layout::time(link.expires_at, now)) "." }
            (copy_field("connect-url", &link.authorize_url))
        }
    }
}

/// The actions an active tenant offers.
fn actions_card(t: &TenantRecord, csrf: &str, authorization_code: bool) -> Markup {
    let id = t.provet_id;
    html! {
        section.card id="actions" {
            h2 { "Actions" }
            div.actions {
                @if t.discovery.is_some() {
                    form.inline method="post" action={ "/console/tenants/" (id) "/discovery" } {
                        (csrf_field(csrf)) button type="submit" id="rerun-discovery" { "Re-run discovery" }
                    }
                }
                form.inline method="post" action={ "/console/tenants/" (id) "/verify" } {
                    (csrf_field(csrf)) button type="submit" id="verify" { "Verify credentials" }
                }
                @if authorization_code {
                    form.inline method="post" action={ "/console/tenants/" (id) "/connect-link" } {
                        (csrf_field(csrf)) button type="submit" id="make-connect-link" { "Make a connect link" }
                    }
                }
            }
        }
    }
}

/// The current client (never its secret) and the departments.
fn client_card(t: &TenantRecord, now: DateTime<Utc>) -> Markup {
    html! {
        section.card id="client" {
            h2 { "Client" }
            @if let Some(c) = &t.client {
                dl.facts {
                    dt { "client_id" } dd { code { (c.client_id) } }
                    dt { "Grant type" } dd { (c.grant_type.as_str()) }
                    dt { "Client type" } dd { (c.client_type.as_str()) }
                    dt { "Algorithm" } dd { (c.algorithm.map(|a| a.as_str()).unwrap_or("none")) }
                    dt { "Secret" } dd { @if c.has_secret { "stored (never shown)" } @else { span.none { "none" } } }
                    dt { "Token URL" } dd { code { (c.token_url) } }
                    dt { "Authorize URL" } dd { code { (c.authorize_url) } }
                    dt { "Discovery URL" } dd { code { (c.openid_autodiscovery_url.as_deref().unwrap_or("none")) } }
                    dt { "Redirect URIs" } dd { @for u in &c.redirect_uris { code { (u) } br; } }
                    dt { "Stored" } dd { (layout::time(c.updated_at, now)) }
                }
            } @else {
                p.muted { "No client: the tenant was removed." }
            }
            p { "Departments: "
                @if t.departments.is_empty() { span.none { "none" } }
                @for d in &t.departments { code { (d) } " " }
            }
        }
    }
}

/// The credentials state, as the last check left it.
fn credentials_card(t: &TenantRecord, now: DateTime<Utc>) -> Markup {
    html! {
        section.card id="credentials" {
            h2 { "Credentials" }
            @if let Some(c) = &t.client {
                p { (state_badge(c.credentials_state.as_str())) }
                dl.facts {
                    dt { "Checked" } dd { (maybe_time(c.credentials_checked_at, now)) }
                    dt { "Last error" } dd { (c.credentials_last_error.as_deref().unwrap_or("none")) }
                }
            } @else { p.muted { "None." } }
        }
    }
}

/// The discovery state, with the fetched document when there is one.
fn discovery_card(t: &TenantRecord, document: Option<&str>, now: DateTime<Utc>) -> Markup {
    html! {
        section.card id="discovery" {
            h2 { "Discovery" }
            @if let Some(d) = &t.discovery {
                p { (state_badge(d.state.as_str())) }
                dl.facts {
                    dt { "Issuer" } dd { (d.issuer.as_deref().unwrap_or("not yet known")) }
                    dt { "Fetched" } dd { (maybe_time(d.fetched_at, now)) }
                    dt { "Last attempt" } dd { (maybe_time(d.last_attempt_at, now)) }
                    dt { "Next" } dd { (layout::time(d.next_due_at, now)) }
                    dt { "Attempts" } dd { (d.attempts) }
                    dt { "Last error" } dd.error-text[d.last_error.is_some()] { (d.last_error.as_deref().unwrap_or("none")) }
                    @if !d.warnings.is_empty() {
                        dt { "Warnings" } dd { @for w in &d.warnings { (w) br; } }
                    }
                }
                @if let Some(doc) = document {
                    details { summary { "Discovery document" } pre { (pretty(doc)) } }
                }
            } @else {
                p { (state_badge("not_applicable")) " The client names no discovery URL." }
            }
        }
    }
}

/// The grants of connected clinic users, each revocable.
fn grants_card(
    t: &TenantRecord,
    csrf: &str,
    authorization_code: bool,
    now: DateTime<Utc>,
) -> Markup {
    let id = t.provet_id;
    html! {
        section.card id="grants" {
            h2 { "Grants" }
            @if t.grants.is_empty() {
                p.muted { @if authorization_code { "No clinic user has connected yet: make a connect link." } @else { "None: this tenant uses client credentials." } }
            } @else {
                div.table-wrap { table {
                    thead { tr { th { "Subject" } th { "State" } th { "Scope" } th { "Connected" } th { "Last refresh" } th { "Last error" } th {} } }
                    tbody {
                        @for g in &t.grants {
                            tr {
                                td { code { (g.subject) } }
                                td { (state_badge(g.state.as_str())) }
                                td { (g.scope) }
                                td { (layout::time(g.created_at, now)) }
                                td { (maybe_time(g.last_refresh_at, now)) }
                                td { (g.last_error.as_deref().unwrap_or("")) }
                                td {
                                    @if g.state != GrantState::Revoked {
                                        form.inline method="post" action={ "/console/tenants/" (id) "/revoke-grant" } {
                                            (csrf_field(csrf))
                                            input type="hidden" name="subject" value=(g.subject);
                                            button.danger type="submit" { "Revoke" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                } }
            }
        }
    }
}

/// The newest hookup deliveries.
fn deliveries_card(deliveries: &[DeliveryRecord], now: DateTime<Utc>) -> Markup {
    html! {
        section.card id="deliveries" {
            h2 { "Recent hookup deliveries" }
            @if deliveries.is_empty() { p.muted { "None." } } @else {
                div.table-wrap { table {
                    thead { tr { th { "Received" } th { "Source" } th { "Outcome" } th { "client_id" } } }
                    tbody { @for d in deliveries {
                        tr {
                            td { (layout::time(d.received_at, now)) }
                            td { (d.source.as_str()) }
                            td { (state_badge(d.outcome.as_str())) }
                            td { code { (d.client_id.as_deref().unwrap_or("")) } }
                        }
                    } }
                } }
            }
        }
    }
}

/// The newest events the tenant's changes wrote (while the feed keeps them).
fn events_card(events: &[RecentEvent], now: DateTime<Utc>) -> Markup {
    html! {
        section.card id="events" {
            h2 { "Recent events" }
            @if events.is_empty() { p.muted { "None kept (events are kept for events.retention)." } } @else {
                div.table-wrap { table {
                    thead { tr { th { "When" } th { "Sequence" } th { "Type" } th { "Data" } } }
                    tbody { @for e in events {
                        tr {
                            td { (layout::time(e.occurred_at, now)) }
                            td { (e.sequence) }
                            td { code { (e.event_type) } }
                            td { code { (e.data) } }
                        }
                    } }
                } }
            }
        }
    }
}

/// Removing the tenant, confirmed by typing its provet_id.
fn remove_card(id: i64, csrf: &str, remove_error: Option<&str>) -> Markup {
    html! {
        section.card id="remove" {
            h2 { "Remove the tenant" }
            p { "When the clinic removed the integration: disables the tenant and wipes its secret, grants and tokens. Type the provet_id to confirm." }
            @if let Some(error) = remove_error { p.error-text role="alert" { (error) } }
            form.actions method="post" action={ "/console/tenants/" (id) "/remove" } {
                (csrf_field(csrf))
                label { "provet_id" input type="text" name="confirm" inputmode="numeric" autocomplete="off" required; }
                button.danger type="submit" id="remove-tenant" { "Remove tenant " (id) }
            }
        }
    }
}

fn pretty(doc: &str) -> String {
    serde_json::from_str::<serde_json::Value>(doc)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| doc.to_owned())
}
