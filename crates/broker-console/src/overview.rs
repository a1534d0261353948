//! `GET /console`: what needs attention, with counts and links, and the fleet at a glance.

use actix_web::{HttpRequest, HttpResponse, web};
use broker_api::AppState;
use broker_service::console::Attention;
use maud::{Markup, html};

use crate::error::ConsoleError;
use crate::layout::{self, Shell, html_page};
use crate::session::signed_in;

fn count(n: i64) -> Markup {
    let class = if n == 0 { "count zero" } else { "count some" };
    html! { div class=(class) { (n) } }
}

fn attention(id: &str, title: &str, list: &Attention, all: Option<&str>) -> Markup {
    html! {
        section.card id=(id) {
            h2 { (title) }
            (count(list.total))
            @if list.items.is_empty() {
                p.muted { "Nothing to do." }
            } @else {
                ul {
                    @for item in &list.items {
                        li {
                            a href={ "/console/tenants/" (item.provet_id) } { "Tenant " (item.provet_id) }
                            @if let Some(subject) = &item.subject { " · grant " code { (subject) } }
                            @if let Some(detail) = &item.detail { br; span.muted { (detail) } }
                        }
                    }
                }
                @if list.total > list.items.len() as i64 {
                    @if let Some(all) = all {
                        p { a href=(all) { "All " (list.total) } }
                    } @else {
                        p.muted { "and " (list.total - list.items.len() as i64) " more" }
                    }
                }
            }
        }
    }
}

pub async fn page(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ConsoleError> {
    let session = signed_in(&req, &state).await?;
    let overview = state.console().overview().await?;
    let now = state.clock().now();
    let failing: i64 = overview
        .failing_webhooks
        .iter()
        .map(|w| w.failed + w.retrying)
        .sum();
    let total: i64 = overview.fleet.iter().map(|f| f.tenants).sum();
    let content = html! {
        h1 { "Overview" }
        h2 { "Needs attention" }
        div.grid {
            (attention("attention-credentials", "Credentials rejected", &overview.credentials_rejected, Some("/console/tenants?credentials=rejected")))
            (attention("attention-grants", "Grants needing reauthorization", &overview.grants_reauthorization, Some("/console/tenants?grant_state=reauthorization_required")))
            (attention("attention-discovery", "Discovery failed", &overview.discovery_failed, Some("/console/tenants?discovery=failed")))
            section.card id="attention-webhooks" {
                h2 { "Webhook deliveries failing" }
                (count(failing))
                @if overview.failing_webhooks.is_empty() {
                    p.muted { "Nothing to do." }
                } @else {
                    ul {
                        @for w in &overview.failing_webhooks {
                            li {
                                a href={ "/console/webhooks/" (w.webhook_id) } { "Webhook " (w.webhook_id) }
                                " " code { (w.url) } br;
                                (layout::badge(&format!("{} failed", w.failed), layout::Tone::Bad)) " "
                                (layout::badge(&format!("{} retrying", w.retrying), layout::Tone::Warn))
                            }
                        }
                    }
                }
            }
        }
        h2 { "Fleet" }
        section.card id="fleet" {
            p { strong { (total) } " tenants. Last hookup: "
                @if let Some((at, provet_id)) = overview.last_hookup {
                    (layout::time(at, now))
                    @if let Some(id) = provet_id { " (" a href={ "/console/tenants/" (id) } { "tenant " (id) } ")" }
                } @else { span.none { "never" } }
            }
            div.table-wrap {
                table {
                    thead { tr { th { "Status" } th { "Grant type" } th { "Tenants" } } }
                    tbody {
                        @for f in &overview.fleet {
                            tr {
                                td { (layout::state_badge(&f.status)) }
                                td { (f.grant_type.as_deref().unwrap_or("no client")) }
                                td {
                                    a href={ "/console/tenants?status=" (f.status) (f.grant_type.as_deref().map(|g| format!("&grant_type={g}")).unwrap_or_default()) } { (f.tenants) }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(html_page(
        Shell::signed_in("Overview", &session, "overview").render(content),
    ))
}
