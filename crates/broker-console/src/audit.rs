//! Every console action leaves an audit entry with actor kind `console` and the signed-in
//! key's name (`audit(...)` before, `finish(result)` after), and `GET /console/audit` pages
//! through the log.

use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use broker_api::AppState;
use broker_domain::{Actor, AuditAction, AuditOutcome, AuditRecord, ProvetId};
use broker_service::AuditQuery;
use maud::html;
use serde::Deserialize;

use crate::error::ConsoleError;
use crate::layout::{self, Shell, html_page};
use crate::session::signed_in;

/// A console action about to be recorded.
#[must_use = "an audited action must be finished with its result"]
pub struct Pending<'a> {
    state: &'a AppState,
    record: AuditRecord,
}

/// Starts the entry of an action by the operator signed in with key `key_name`.
pub fn audit<'a>(state: &'a AppState, key_name: &str, action: AuditAction) -> Pending<'a> {
    Pending {
        state,
        record: AuditRecord::new(Actor::console(key_name), action, AuditOutcome::Ok),
    }
}

impl Pending<'_> {
    pub fn tenant(mut self, provet_id: i64) -> Self {
        if let Ok(id) = ProvetId::new(provet_id) {
            self.record = self.record.tenant(id);
        }
        self
    }

    /// What else was acted on (an id, a name, a subject; never a secret).
    pub fn target(mut self, target: impl Into<String>) -> Self {
        self.record = self.record.target(target);
        self
    }

    /// Records an outcome decided by the caller.
    pub async fn outcome(mut self, outcome: AuditOutcome) {
        self.record.outcome = outcome;
        self.state.audit().record(self.record).await;
    }

    /// Records the result's outcome (`refused` for an answer below 500, `failed` above) and
    /// hands the result back.
    pub async fn finish<T>(mut self, result: Result<T, ConsoleError>) -> Result<T, ConsoleError> {
        self.record.outcome = match &result {
            Ok(_) => AuditOutcome::Ok,
            Err(e) if e.status_code().is_client_error() => AuditOutcome::Refused,
            Err(_) => AuditOutcome::Failed,
        };
        self.state.audit().record(self.record).await;
        result
    }
}

#[derive(Deserialize)]
pub struct LogQuery {
    before: Option<i64>,
    action: Option<String>,
    provet_id: Option<String>,
}

const PAGE: u64 = 50;

/// `GET /console/audit`: newest first, filtered by action or tenant.
pub async fn page(
    state: web::Data<AppState>,
    req: HttpRequest,
    query: web::Query<LogQuery>,
) -> Result<HttpResponse, ConsoleError> {
    let session = signed_in(&req, &state).await?;
    let q = query.into_inner();
    let action_name = q.action.as_deref().map(str::trim).filter(|a| !a.is_empty());
    let action = action_name
        .map(str::parse::<AuditAction>)
        .transpose()
        .map_err(|_| ConsoleError::BadForm("unknown action".into()))?;
    let provet_id = q
        .provet_id
        .as_deref()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::parse::<i64>)
        .transpose()
        .map_err(|_| ConsoleError::BadForm("provet_id: a number".into()))?;
    let entries = state
        .audit()
        .list(AuditQuery {
            before: q.before,
            limit: PAGE,
            action,
            provet_id,
        })
        .await?;
    let now = state.clock().now();
    let next = (entries.len() as u64 == PAGE)
        .then(|| entries.last().map(|e| e.id))
        .flatten();
    let next_href = next.map(|before| {
        let mut href = format!("/console/audit?before={before}");
        if let Some(a) = action_name {
            href.push_str(&format!("&action={a}"));
        }
        if let Some(p) = provet_id {
            href.push_str(&format!("&provet_id={p}"));
        }
        href
    });
    let content = html! {
        h1 { "Audit log" }
        p.muted { "Every admin action through the API, this console and the command line." }
        form.filters method="get" action="/console/audit" {
            label { "Action"
                select name="action" {
                    option value="" selected[action.is_none()] { "any" }
                    @for a in AuditAction::ALL {
                        option value=(a.as_str()) selected[action == Some(*a)] { (a.as_str()) }
                    }
                }
            }
            label { "provet_id" input type="search" name="provet_id" inputmode="numeric" value=(provet_id.map(|p| p.to_string()).unwrap_or_default()); }
            button type="submit" { "Filter" }
            a href="/console/audit" { "Clear" }
        }
        @if entries.is_empty() { p.muted { "No entries." } } @else {
            div.table-wrap { table id="audit" {
                thead { tr { th { "When" } th { "Who" } th { "Action" } th { "Tenant" } th { "Target" } th { "Outcome" } } }
                tbody { @for e in &entries {
                    tr {
                        td { (layout::time(e.at, now)) }
                        td { (e.record.actor.kind.as_str().replace('_', " ")) ": " strong { (e.record.actor.name) } }
                        td { code { (e.record.action.as_str()) } }
                        td { @if let Some(id) = e.record.provet_id { a href={ "/console/tenants/" (id.get()) } { (id.get()) } } }
                        td { (e.record.target.as_deref().unwrap_or("")) }
                        td { (layout::state_badge(e.record.outcome.as_str())) }
                    }
                } }
            } }
            @if let Some(href) = next_href { p.pager { a href=(href) rel="next" { "Older entries" } } }
        }
    };
    Ok(html_page(
        Shell::signed_in("Audit log", &session, "audit").render(content),
    ))
}
