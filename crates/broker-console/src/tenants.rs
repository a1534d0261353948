//! The tenant list: filters by state, search by provet_id, paging. A tenant's page is
//! `tenant.rs`, its actions `tenant_actions.rs`, registering one by hand `register.rs`.

use std::str::FromStr;

use actix_web::{HttpRequest, HttpResponse, web};
use broker_api::AppState;
use broker_domain::{CredentialsState, DiscoveryState, GrantState, GrantType, TenantStatus};
use broker_service::tenants::TenantAdminError;
use broker_service::{TenantFilter, TenantRecord};
use chrono::{DateTime, Utc};
use maud::{Markup, html};
use serde::Deserialize;

use crate::error::ConsoleError;
use crate::layout::{self, Shell, html_page, state_badge};
use crate::session::signed_in;

const PAGE: u64 = 50;

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

impl ListQuery {
    /// The filters parsed into their states (a page's worth from `after`).
    fn filter(&self) -> Result<TenantFilter, ConsoleError> {
        Ok(TenantFilter {
            status: parsed::<TenantStatus>(&self.status, "status")?,
            grant_type: parsed::<GrantType>(&self.grant_type, "grant type")?,
            discovery: parsed::<DiscoveryState>(&self.discovery, "discovery state")?,
            credentials: parsed::<CredentialsState>(&self.credentials, "credentials state")?,
            grant_state: parsed::<GrantState>(&self.grant_state, "grant state")?,
            after: self.after,
            limit: PAGE,
        })
    }

    /// The address of the page after `after`, with the same filters.
    fn next_page(&self, after: i64) -> String {
        let mut parts = vec![];
        for (k, v) in [
            ("status", nonempty(&self.status)),
            ("grant_type", nonempty(&self.grant_type)),
            ("discovery", nonempty(&self.discovery)),
            ("credentials", nonempty(&self.credentials)),
            ("grant_state", nonempty(&self.grant_state)),
        ] {
            if let Some(v) = v {
                parts.push(format!("{k}={v}"));
            }
        }
        parts.push(format!("after={after}"));
        format!("/console/tenants?{}", parts.join("&"))
    }
}

fn nonempty(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// A filter's state, when one is chosen.
fn parsed<T: FromStr>(raw: &Option<String>, what: &str) -> Result<Option<T>, ConsoleError> {
    nonempty(raw)
        .map(str::parse::<T>)
        .transpose()
        .map_err(|_| ConsoleError::BadForm(format!("unknown {what}")))
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
    let filter = q.filter()?;
    let search = nonempty(&q.q);
    let tenants = match search {
        Some(search) => find(&state, search).await?,
        None => state.tenant_admin().tenants(&filter).await?,
    };
    let now = state.clock().now();
    let next = (search.is_none() && tenants.len() as u64 == PAGE)
        .then(|| tenants.last().map(|t| t.provet_id))
        .flatten();
    let content = html! {
        h1 { "Tenants" }
        (filter_form(&q, search))
        @if tenants.is_empty() {
            p.muted id="no-tenants" { "No tenant matches. Clear the filters, or register a tenant by hand." }
        } @else {
            (tenant_table(&tenants, now))
            @if let Some(after) = next {
                p.pager { a href=(q.next_page(after)) rel="next" { "Next page" } }
            }
        }
    };
    Ok(html_page(
        Shell::signed_in("Tenants", &session, "tenants").render(content),
    ))
}

/// The tenant a search names, or none.
async fn find(state: &AppState, search: &str) -> Result<Vec<TenantRecord>, ConsoleError> {
    let id = search
        .parse::<i64>()
        .map_err(|_| ConsoleError::BadForm("search by provet_id: a number".into()))?;
    match state.tenant_admin().tenant(id).await {
        Ok(t) => Ok(vec![t]),
        Err(TenantAdminError::TenantNotFound(_)) => Ok(vec![]),
        Err(e) => Err(e.into()),
    }
}

/// The search box and the filters, as chosen.
fn filter_form(q: &ListQuery, search: Option<&str>) -> Markup {
    html! {
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
    }
}

/// One row per tenant, linking to its page.
fn tenant_table(tenants: &[TenantRecord], now: DateTime<Utc>) -> Markup {
    html! {
        div.table-wrap {
            table id="tenants" {
                thead { tr { th { "provet_id" } th { "Status" } th { "Grant type" } th { "Credentials" } th { "Discovery" } th { "Updated" } } }
                tbody {
                    @for t in tenants {
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
    }
}
