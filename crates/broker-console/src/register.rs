//! Registering a tenant by hand, from the message Provet emailed: checked and stored like a
//! hookup (source `admin`); a bad message comes back with every field error beside it.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use broker_api::AppState;
use broker_domain::{AuditAction, AuditOutcome, DeliverySource, ParseError};
use broker_service::console::ConsoleSession;
use broker_service::hookup::HookupError;
use maud::{Markup, html};
use serde::Deserialize;

use crate::audit::audit;
use crate::error::ConsoleError;
use crate::layout::{Shell, csrf_field, html_answer, html_page};
use crate::session::{checked, signed_in};
use crate::tenant::back;

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
    Shell::signed_in("Register a tenant", session, "register").render(content)
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
            Ok(html_answer(
                StatusCode::BAD_REQUEST,
                register_form(&session, &form.message, &errors),
            ))
        }
        Err(e) => entry.finish(Err(e.into())).await,
    }
}
