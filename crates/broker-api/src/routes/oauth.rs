//! The connect flow: services start it; the clinic user's browser comes back to the callback.

use actix_web::http::header;
use actix_web::{HttpResponse, web};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::AppState;
use crate::auth::Caller;
use crate::body::Body;
use crate::openapi::{BadRequest, Conflict, NotFound, PayloadTooLarge, RequestTimeout};
use crate::problem::ApiError;
use crate::routes::admin::{ProvetIdPath, provet_id};
use crate::views::{AuthorizationCreated, StartAuthorization};

/// Starts connecting an authorization-code tenant: answers the URL to send a clinic user's
/// browser to (valid 10 minutes, once).
#[utoipa::path(
    post,
    path = "/v1/tenants/{provet_id}/authorizations",
    tag = "tokens",
    params(ProvetIdPath),
    request_body(content = Option<StartAuthorization>, content_type = "application/json"),
    security(("api_key" = [])),
    responses(
        (status = 200, body = AuthorizationCreated),
        (status = 400, response = BadRequest),
        (status = 404, response = NotFound),
        (status = 408, response = RequestTimeout),
        (status = 409, response = Conflict),
        (status = 413, response = PayloadTooLarge),
    )
)]
pub async fn start(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
    body: Body,
) -> Result<HttpResponse, ApiError> {
    let id = provet_id(&path)?;
    caller.require_tenant(id)?;
    // No body, or `null`, asks for the defaults.
    let body: StartAuthorization =
        crate::parse_optional_json::<Option<StartAuthorization>>(&body.read().await?)?
            .unwrap_or_default();
    let started = state
        .connect()
        .start(id, body.return_to, body.scope)
        .await?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(AuthorizationCreated {
            authorize_url: started.authorize_url,
            expires_at: started.expires_at,
        }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CallbackQuery {
    code: Option<String>,
    /// The one-time state from the authorize URL (a page says so when it is missing).
    #[param(required = true)]
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// Where the provider sends the clinic user's browser back. Redirects to the `return_to`
/// given at the start, or shows a small page; failures show a page that says what to do.
#[utoipa::path(
    get,
    path = "/oauth/callback",
    tag = "tokens",
    params(CallbackQuery),
    responses(
        (status = 200, description = "Connected (HTML)", content_type = "text/html"),
        (status = 303, description = "Connected; redirect to return_to"),
        (status = 400, description = "Unknown, expired or replayed state, or the provider refused (HTML)", content_type = "text/html"),
    )
)]
pub async fn callback(
    state: web::Data<AppState>,
    query: web::Query<CallbackQuery>,
) -> HttpResponse {
    let q = query.into_inner();
    match state
        .connect()
        .complete(
            q.state.as_deref(),
            q.code.as_deref(),
            q.error.as_deref(),
            q.error_description.as_deref(),
        )
        .await
    {
        // Checked again: an authorization started before the check was strict may hold a
        // URL that is not allowed (or not even a valid header).
        Ok(connected) => match connected
            .return_to
            .and_then(|to| state.connect().settings().allowed_return_to.check(&to).ok())
        {
            Some(to) => HttpResponse::SeeOther()
                .insert_header((header::LOCATION, to))
                .finish(),
            None => page(
                actix_web::http::StatusCode::OK,
                "Connected",
                &format!(
                    "The clinic (Provet tenant {}) is connected. You can close this window.",
                    connected.provet_id
                ),
            ),
        },
        Err(e) => page(
            actix_web::http::StatusCode::BAD_REQUEST,
            "Not connected",
            &e.to_string(),
        ),
    }
}

fn page(status: actix_web::http::StatusCode, title: &str, message: &str) -> HttpResponse {
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"></head>\
         <body style=\"font-family: system-ui, sans-serif; max-width: 36rem; margin: 4rem auto; padding: 0 1rem\">\
         <h1>{title}</h1><p>{}</p></body></html>",
        escape(message)
    );
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((
            "content-security-policy",
            "default-src 'none'; style-src 'unsafe-inline'",
        ))
        .body(body)
}

/// The provider's error text comes from a URL anyone can craft.
fn escape(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '<' => "&lt;".to_owned(),
            '>' => "&gt;".to_owned(),
            '&' => "&amp;".to_owned(),
            '"' => "&quot;".to_owned(),
            '\'' => "&#39;".to_owned(),
            c => c.to_string(),
        })
        .collect()
}
