//! Tenants: the list (filters, search by provet_id, paging), a tenant's page and its actions
//! (re-run discovery, verify credentials, a connect link, revoke a grant, remove), and
//! registering a tenant by hand from the message Provet emailed.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use broker_api::AppState;
use broker_domain::{
    AuditAction, AuditOutcome, CredentialsState, DeliverySource, DiscoveryState, GrantState,
    GrantType, ParseError, TenantStatus,
};
use broker_service::console::ConsoleSession;
use broker_service::hookup::HookupError;
use broker_service::{TenantFilter, TenantRecord};
use maud::{Markup, html};
use serde::Deserialize;

use crate::audit::audit;
use crate::error::ConsoleError;
use crate::layout::{self, Shell, csrf_field, maybe_time, state_badge};
use crate::overview::html_page;
use crate::session::{checked, redirect, signed_in};

const PAGE: u64 = 50;

fn shell<'a>(title: &'a str, session: &'a ConsoleSession, section: &'a str) -> Shell<'a> {
    Shell {
        title,
        key_name: &session.key_name,
        csrf: &session.csrf_token,
        section,
    }
}

fn provet_id(raw: &str) -> Result<i64, ConsoleError> {
    broker_api::routes::admin::provet_id(raw)
        .map_err(|_| ConsoleError::NotFound(format!("`{raw}` is not a provet_id.")))
}

#[derive(Deserialize)]
pub struct ListQuery {
    status: Option<String>,
    grant_type: Option<String>,
    discovery: Option<String>,
    credentials: Option<String>,
    grant_state: Option<String>,
    /// A provet_id to find.
    q: Option<String>,
    after: Option<i64>,
}

fn nonempty(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

fn select(name: &str, label: &str, current: Option<&str>, options: &[&str]) -> Markup {
    html! {
        label { (label)
            select name=(name) {
                option value="" selected[current.is_none()] { "any" }
                @for o in options {
                    option value=(o) selected[current == Some(*o)] { (o.replace('_', " ")) }
                }
            }
        }
    }
}

/// `GET /console/tenants`.
pub async fn list(
    state: web::Data<AppState>,
    req: HttpRequest,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ConsoleError> {
    let session = signed_in(&req, &state).await?;
    let q = query.into_inner();
    let bad = |what: &str| ConsoleError::BadForm(format!("unknown {what}"));
    let status = nonempty(&q.status)
        .map(str::parse::<TenantStatus>)
        .transpose()
        .map_err(|_| bad("status"))?;
    let grant_type = nonempty(&q.grant_type)
        .map(str::parse::<GrantType>)
        .transpose()
        .map_err(|_| bad("grant type"))?;
    let discovery = nonempty(&q.discovery)
        .map(str::parse::<DiscoveryState>)
        .transpose()
        .map_err(|_| bad("discovery state"))?;
    let credentials = nonempty(&q.credentials)
        .map(str::parse::<CredentialsState>)
        .transpose()
        .map_err(|_| bad("credentials state"))?;
    let grant_state = nonempty(&q.grant_state)
        .map(str::parse::<GrantState>)
        .transpose()
        .map_err(|_| bad("grant state"))?;
    let search = nonempty(&q.q);
    let tenants: Vec<TenantRecord> = if let Some(search) = search {
        let id = search
            .parse::<i64>()
            .map_err(|_| ConsoleError::BadForm("search by provet_id: a number".into()))?;
        match state.tenant_admin().tenant(id).await {
            Ok(t) => vec![t],
            Err(broker_service::tenants::TenantAdminError::TenantNotFound(_)) => vec![],
            Err(e) => return Err(e.into()),
        }
    } else {
        state
            .tenant_admin()
            .tenants(&TenantFilter {
                status,
                grant_type,
                discovery,
                credentials,
                grant_state,
                after: q.after,
                limit: PAGE,
            })
            .await?
    };
    let now = state.clock().now();
    let next = (search.is_none() && tenants.len() as u64 == PAGE)
        .then(|| tenants.last().map(|t| t.provet_id))
        .flatten();
    let keep = |after: i64| {
        let mut parts = vec![];
        for (k, v) in [
            ("status", nonempty(&q.status)),
            ("grant_type", nonempty(&q.grant_type)),
            ("discovery", nonempty(&q.discovery)),
            ("credentials", nonempty(&q.credentials)),
            ("grant_state", nonempty(&q.grant_state)),
        ] {
            if let Some(v) = v {
                parts.push(format!("{k}={v}"));
            }
        }
        parts.push(format!("after={after}"));
        format!("/console/tenants?{}", parts.join("&"))
    };
    let content = html! {
        h1 { "Tenants" }
        form.filters method="get" action="/console/tenants" {
            label { "provet_id"
                input type="search" name="q" inputmode="numeric" value=(search.unwrap_or(""));
            }
            (select("status", "Status", nonempty(&q.status), &["active", "removed"]))
            (select("grant_type", "Grant type", nonempty(&q.grant_type), &["client_credentials", "authorization_code"]))
            (select("discovery", "Discovery", nonempty(&q.discovery), &["pending", "ok", "failed", "not_applicable"]))
            (select("credentials", "Credentials", nonempty(&q.credentials), &CredentialsState::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>()))
            (select("grant_state", "Grants", nonempty(&q.grant_state), &GrantState::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>()))
            button type="submit" { "Filter" }
            a href="/console/tenants" { "Clear" }
        }
        @if tenants.is_empty() {
            p.muted id="no-tenants" { "No tenant matches. Clear the filters, or register a tenant by hand." }
        } @else {
            div.table-wrap {
                table id="tenants" {
                    thead { tr { th { "provet_id" } th { "Status" } th { "Grant type" } th { "Credentials" } th { "Discovery" } th { "Updated" } } }
                    tbody {
                        @for t in &tenants {
                            tr {
                                td { a href={ "/console/tenants/" (t.provet_id) } { (t.provet_id) } }
                                td { (state_badge(t.status.as_str())) }
                                td { (t.client.as_ref().map(|c| c.grant_type.as_str()).unwrap_or("-")) }
                                td { @if let Some(c) = &t.client { (state_badge(c.credentials_state.as_str())) } @else { "-" } }
                                td { @if let Some(d) = &t.discovery { (state_badge(d.state.as_str())) } @else { (state_badge("not_applicable")) } }
                                td { (layout::time(t.updated_at, now)) }
                            }
                        }
                    }
                }
            }
            @if let Some(after) = next {
                p.pager { a href=(keep(after)) rel="next" { "Next page" } }
            }
        }
    };
    Ok(html_page(
        shell("Tenants", &session, "tenants").render(content),
    ))
}

#[derive(Deserialize)]
pub struct PageQuery {
    notice: Option<String>,
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

/// `GET /console/tenants/{provet_id}`.
pub async fn page(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ConsoleError> {
    let session = signed_in(&req, &state).await?;
    let id = provet_id(&path)?;
    let notice = notice_text(query.notice.as_deref());
    Ok(html_page(
        tenant_page(&state, &session, id, notice, None, None).await?,
    ))
}

/// A tenant's page, with an optional notice, connect link or removal error.
async fn tenant_page(
    state: &AppState,
    session: &ConsoleSession,
    id: i64,
    notice: Option<&str>,
    connect: Option<&broker_service::connect::AuthorizationStart>,
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
        @if let Some(link) = connect {
            section.card id="connect-link" {
                h2 { "Connect link" }
                p { "Send this link to a user of the clinic. It opens Provet's sign-in; once they allow access, the grant appears below. It works once, until " (layout::time(link.expires_at, now)) "." }
                div.copy {
                    input type="text" id="connect-url" readonly value=(link.authorize_url);
                    button type="button" data-copy="connect-url" { "Copy" }
                }
            }
        }
        @if active {
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
        div.grid {
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
                    @if let Some(doc) = &document {
                        details { summary { "Discovery document" } pre { (pretty(doc)) } }
                    }
                } @else {
                    p { (state_badge("not_applicable")) " The client names no discovery URL." }
                }
            }
        }
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
                                    @if g.state != broker_domain::GrantState::Revoked {
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
        section.card id="deliveries" {
            h2 { "Recent hookup deliveries" }
            @if deliveries.is_empty() { p.muted { "None." } } @else {
                div.table-wrap { table {
                    thead { tr { th { "Received" } th { "Source" } th { "Outcome" } th { "client_id" } } }
                    tbody { @for d in &deliveries {
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
        section.card id="events" {
            h2 { "Recent events" }
            @if events.is_empty() { p.muted { "None kept (events are kept for events.retention)." } } @else {
                div.table-wrap { table {
                    thead { tr { th { "When" } th { "Sequence" } th { "Type" } th { "Data" } } }
                    tbody { @for e in &events {
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
        @if active {
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
    };
    Ok(shell(&title, session, "tenants").render(content))
}

fn pretty(doc: &str) -> String {
    serde_json::from_str::<serde_json::Value>(doc)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| doc.to_owned())
}

#[derive(Deserialize)]
pub struct ActionForm {
    csrf: Option<String>,
}

fn back(id: i64, notice: &str) -> HttpResponse {
    redirect(&format!("/console/tenants/{id}?notice={notice}"))
}

/// `POST /console/tenants/{id}/discovery`.
pub async fn rerun_discovery(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    form: web::Form<ActionForm>,
) -> Result<HttpResponse, ConsoleError> {
    let session = checked(&req, &state, form.csrf.as_deref()).await?;
    let id = provet_id(&path)?;
    let result = state
        .tenant_admin()
        .rediscover(id)
        .await
        .map_err(ConsoleError::from);
    audit(&state, &session.key_name, AuditAction::TenantDiscovery)
        .tenant(id)
        .finish(result)
        .await?;
    Ok(back(id, "discovery"))
}

/// `POST /console/tenants/{id}/verify`.
pub async fn verify(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    form: web::Form<ActionForm>,
) -> Result<HttpResponse, ConsoleError> {
    let session = checked(&req, &state, form.csrf.as_deref()).await?;
    let id = provet_id(&path)?;
    let result = state
        .tenant_admin()
        .verify(id)
        .await
        .map_err(ConsoleError::from);
    audit(&state, &session.key_name, AuditAction::TenantVerify)
        .tenant(id)
        .finish(result)
        .await?;
    Ok(back(id, "verified"))
}

/// `POST /console/tenants/{id}/connect-link`: the tenant's page with a fresh link.
pub async fn connect_link(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    form: web::Form<ActionForm>,
) -> Result<HttpResponse, ConsoleError> {
    let session = checked(&req, &state, form.csrf.as_deref()).await?;
    let id = provet_id(&path)?;
    let link = state
        .connect()
        .start(id, None, None)
        .await
        .map_err(ConsoleError::from);
    let link = audit(&state, &session.key_name, AuditAction::ConnectLink)
        .tenant(id)
        .finish(link)
        .await?;
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
    let session = checked(&req, &state, form.csrf.as_deref()).await?;
    let id = provet_id(&path)?;
    let result = match state.connect().revoke_grant(id, &form.subject).await {
        Ok(true) => Ok(back(id, "grant-revoked")),
        Ok(false) => Err(ConsoleError::NotFound(format!(
            "Tenant {id} has no grant for that subject."
        ))),
        Err(e) => Err(e.into()),
    };
    audit(&state, &session.key_name, AuditAction::GrantRevoke)
        .tenant(id)
        .target(format!("grant {}", form.subject))
        .finish(result)
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
    let session = checked(&req, &state, form.csrf.as_deref()).await?;
    let id = provet_id(&path)?;
    if form.confirm.trim() != id.to_string() {
        audit(&state, &session.key_name, AuditAction::TenantRemove)
            .tenant(id)
            .outcome(AuditOutcome::Refused)
            .await;
        let page = tenant_page(
            &state,
            &session,
            id,
            None,
            None,
            Some(&format!(
                "Nothing was removed: type {id} exactly to confirm."
            )),
        )
        .await?;
        return Ok(HttpResponse::build(StatusCode::BAD_REQUEST)
            .content_type("text/html; charset=utf-8")
            .body(page.into_string()));
    }
    let result = state
        .tenant_admin()
        .remove(id)
        .await
        .map_err(ConsoleError::from);
    audit(&state, &session.key_name, AuditAction::TenantRemove)
        .tenant(id)
        .finish(result)
        .await?;
    Ok(back(id, "removed"))
}

fn register_form(session: &ConsoleSession, message: &str, errors: &[(String, String)]) -> Markup {
    let content = html! {
        h1 { "Register a tenant by hand" }
        p { "When Provet delivered a clinic's credentials by email: paste the message (the JSON Provet would have sent to the hookup URL). It is checked and stored exactly like a hookup, recorded with source " code { "admin" } "." }
        form.stack method="post" action="/console/register" {
            (csrf_field(&session.csrf_token))
            label { "Hookup message (JSON)"
                textarea name="message" id="message" required spellcheck="false" placeholder="{\"provet_id\": 7, \"client_id\": \"...\", ...}" { (message) }
            }
            @if !errors.is_empty() {
                div id="field-errors" role="alert" {
                    p.error-text { "Nothing was stored. Correct these and submit again:" }
                    ul.field-errors {
                        @for (field, message) in errors {
                            li { code { (field) } ": " (message) }
                        }
                    }
                }
            }
            button type="submit" id="register" { "Register" }
        }
    };
    shell("Register a tenant", session, "register").render(content)
}

/// `GET /console/register`.
pub async fn register_page(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ConsoleError> {
    let session = signed_in(&req, &state).await?;
    Ok(html_page(register_form(&session, "", &[])))
}

#[derive(Deserialize)]
pub struct RegisterForm {
    csrf: Option<String>,
    message: String,
}

/// `POST /console/register`: stored like `POST /admin/tenants`; a bad message is shown
/// again with every field error beside it.
pub async fn register(
    state: web::Data<AppState>,
    req: HttpRequest,
    form: web::Form<RegisterForm>,
) -> Result<HttpResponse, ConsoleError> {
    let session = checked(&req, &state, form.csrf.as_deref()).await?;
    let registered = state
        .hookups()
        .register(form.message.as_bytes(), DeliverySource::Admin)
        .await;
    let entry = audit(&state, &session.key_name, AuditAction::TenantRegister);
    match registered {
        Ok(receipt) => {
            entry
                .tenant(receipt.provet_id)
                .target(format!("client {}", receipt.client_id))
                .outcome(AuditOutcome::Ok)
                .await;
            Ok(back(receipt.provet_id, receipt.outcome.as_str()))
        }
        Err(HookupError::Invalid(e)) => {
            entry.outcome(AuditOutcome::Refused).await;
            let errors = match e {
                ParseError::InvalidJson(why) => {
                    vec![("$".to_owned(), format!("not valid JSON: {why}"))]
                }
                ParseError::Invalid(errors) => {
                    errors.into_iter().map(|e| (e.field, e.message)).collect()
                }
            };
            Ok(HttpResponse::build(StatusCode::BAD_REQUEST)
                .content_type("text/html; charset=utf-8")
                .body(register_form(&session, &form.message, &errors).into_string()))
        }
        Err(e) => entry.finish(Err(e.into())).await,
    }
}
