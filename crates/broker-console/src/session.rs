//! Sign-in with an admin API key, the session cookie, sign-out, and the checks every page
//! and form make: a live session (else to the sign-in page) and, for every POST, the
//! session's CSRF token.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use broker_api::AppState;
use broker_domain::{AuditAction, AuditOutcome};
use broker_service::console::{ConsoleSession, SignInError, random_token};
use cookie::{Cookie, SameSite};
use maud::html;
use secrecy::SecretString;
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::audit::audit;
use crate::error::ConsoleError;
use crate::layout;

/// The session cookie: a random token; the database keeps its SHA-256.
pub const SESSION_COOKIE: &str = "broker_console";
/// Before sign-in: the token the sign-in form must echo (double submit), so that another
/// site cannot sign a browser in to a session of its choosing.
const SIGN_IN_COOKIE: &str = "broker_console_sign_in";

fn cookie_value(req: &HttpRequest, name: &str) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .filter_map(|v| v.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == name)
        .map(|c| c.value().to_owned())
}

fn cookie(state: &AppState, name: &str, value: &str, max_age: i64) -> String {
    Cookie::build((name, value))
        .path("/console")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(state.console().settings().secure_cookie)
        .max_age(cookie::time::Duration::seconds(max_age))
        .build()
        .to_string()
}

fn equal(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// The signed-in operator, or `SignedOut` (a redirect to the sign-in page).
pub async fn signed_in(
    req: &HttpRequest,
    state: &AppState,
) -> Result<ConsoleSession, ConsoleError> {
    let Some(token) = cookie_value(req, SESSION_COOKIE) else {
        return Err(ConsoleError::SignedOut);
    };
    let session = state
        .console()
        .session(&token)
        .await?
        .ok_or(ConsoleError::SignedOut)?;
    tracing::Span::current().record("api_key", session.key_name.as_str());
    Ok(session)
}

/// For a form: the signed-in operator, whose form carried the session's CSRF token.
pub async fn checked(
    req: &HttpRequest,
    state: &AppState,
    csrf: Option<&str>,
) -> Result<ConsoleSession, ConsoleError> {
    let session = signed_in(req, state).await?;
    match csrf {
        Some(csrf) if equal(csrf, &session.csrf_token) => Ok(session),
        _ => {
            tracing::warn!("console form refused: missing or wrong CSRF token");
            Err(ConsoleError::Csrf)
        }
    }
}

fn sign_in_form(csrf: &str, error: Option<&str>) -> maud::Markup {
    layout::bare(
        "Sign in",
        html! {
            h1 { "Sign in to the console" }
            p { "Paste an " strong { "admin" } " API key (token keys cannot sign in). Create one with "
                code { "provet-broker api-key create --name NAME --role admin" } "." }
            @if let Some(error) = error {
                p.error-text role="alert" id="sign-in-error" { (error) }
            }
            form.stack method="post" action="/console/sign-in" {
                (layout::csrf_field(csrf))
                label { "Admin API key"
                    input type="password" name="key" id="key" autocomplete="off" required autofocus;
                }
                button type="submit" { "Sign in" }
            }
        },
    )
}

/// `GET /console/sign-in`: the form, with a fresh sign-in token in a cookie.
pub async fn sign_in_page(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ConsoleError> {
    if signed_in(&req, &state).await.is_ok() {
        return Ok(redirect("/console"));
    }
    Ok(sign_in_response(
        &state,
        actix_web::http::StatusCode::OK,
        None,
    ))
}

fn sign_in_response(
    state: &AppState,
    status: actix_web::http::StatusCode,
    error: Option<&str>,
) -> HttpResponse {
    let csrf = random_token();
    HttpResponse::build(status)
        .insert_header((
            header::SET_COOKIE,
            cookie(state, SIGN_IN_COOKIE, &csrf, 3600),
        ))
        .content_type("text/html; charset=utf-8")
        .body(sign_in_form(&csrf, error).into_string())
}

#[derive(Deserialize)]
pub struct SignInForm {
    key: Option<SecretString>,
    csrf: Option<String>,
}

/// `POST /console/sign-in`: an admin key opens a session; a wrong key counts towards the
/// same per-address throttle as bad API keys on the API.
pub async fn sign_in(
    state: web::Data<AppState>,
    req: HttpRequest,
    form: web::Form<SignInForm>,
) -> Result<HttpResponse, ConsoleError> {
    let form = form.into_inner();
    let expected = cookie_value(&req, SIGN_IN_COOKIE);
    match (expected.as_deref(), form.csrf.as_deref()) {
        (Some(a), Some(b)) if equal(a, b) => {}
        _ => return Err(ConsoleError::Csrf),
    }
    let peer = req.peer_addr().map(|a| a.ip());
    if let Some(wait) = peer.and_then(|ip| state.auth_failures().blocked(ip)) {
        return Err(ConsoleError::TooManyAttempts(wait));
    }
    let Some(key) = form.key else {
        return Ok(sign_in_response(
            &state,
            actix_web::http::StatusCode::UNAUTHORIZED,
            Some("Paste an admin API key."),
        ));
    };
    match state.console().sign_in(&key).await {
        Ok(session) => {
            tracing::Span::current().record("api_key", session.key_name.as_str());
            audit(&state, &session.key_name, AuditAction::ConsoleSignIn)
                .outcome(AuditOutcome::Ok)
                .await;
            let max_age =
                i64::try_from(state.console().settings().session_ttl.as_secs()).unwrap_or(i64::MAX);
            use secrecy::ExposeSecret;
            Ok(HttpResponse::SeeOther()
                .insert_header((header::LOCATION, "/console"))
                .append_header((
                    header::SET_COOKIE,
                    cookie(
                        &state,
                        SESSION_COOKIE,
                        session.token.expose_secret(),
                        max_age,
                    ),
                ))
                .append_header((header::SET_COOKIE, cookie(&state, SIGN_IN_COOKIE, "", 0)))
                .finish())
        }
        Err(SignInError::UnknownKey) => {
            if let Some(ip) = peer {
                state.auth_failures().failed(ip);
            }
            Ok(sign_in_response(
                &state,
                actix_web::http::StatusCode::UNAUTHORIZED,
                Some(
                    "That API key is unknown or revoked. Check that you pasted the whole key (it starts with pbk_).",
                ),
            ))
        }
        // Unknown keys are not audited (there is no one to name; the throttle counts them).
        Err(SignInError::NotAdmin(name)) => Ok(refused(&state, name, None).await),
        Err(SignInError::Unusable { name, reason }) => {
            Ok(refused(&state, name, Some(reason)).await)
        }
        Err(SignInError::Store(e)) => Err(e.into()),
    }
}

/// A live key that may not sign in (a token key, or an unusable admin key): audited as a
/// refused sign-in by that key.
async fn refused(state: &AppState, name: String, unusable: Option<&str>) -> HttpResponse {
    audit(state, &name, AuditAction::ConsoleSignIn)
        .outcome(AuditOutcome::Refused)
        .await;
    let message = match unusable {
        None => format!(
            "API key `{name}` is a token key: only admin keys can sign in to the console. Sign in with an unscoped admin key."
        ),
        Some(reason) => format!(
            "API key `{name}` cannot be used: {reason}. Sign in with an unscoped admin key."
        ),
    };
    sign_in_response(
        state,
        actix_web::http::StatusCode::FORBIDDEN,
        Some(&message),
    )
}

#[derive(Deserialize)]
pub struct CsrfForm {
    pub csrf: Option<String>,
}

/// `POST /console/sign-out`: deletes the session; its cookie opens nothing any more.
pub async fn sign_out(
    state: web::Data<AppState>,
    req: HttpRequest,
    form: web::Form<CsrfForm>,
) -> Result<HttpResponse, ConsoleError> {
    let session = checked(&req, &state, form.csrf.as_deref()).await?;
    if let Some(token) = cookie_value(&req, SESSION_COOKIE) {
        state.console().sign_out(&token).await?;
    }
    audit(&state, &session.key_name, AuditAction::ConsoleSignOut)
        .outcome(AuditOutcome::Ok)
        .await;
    tracing::info!("console sign-out");
    Ok(HttpResponse::SeeOther()
        .insert_header((header::LOCATION, "/console/sign-in"))
        .insert_header((header::SET_COOKIE, cookie(&state, SESSION_COOKIE, "", 0)))
        .finish())
}

pub fn redirect(to: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, to))
        .finish()
}
