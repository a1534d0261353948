//! Console errors as HTML pages: each says what happened and what to do next.

use actix_web::http::{StatusCode, header};
use actix_web::{HttpResponse, ResponseError};
use broker_api::problem::ApiError;
use maud::html;

use crate::layout;

#[derive(Debug)]
pub enum ConsoleError {
    /// No (live) session: the browser is sent to sign in.
    SignedOut,
    /// A form without this session's CSRF token.
    Csrf,
    NotFound(String),
    BadForm(String),
    TooManyAttempts(std::time::Duration),
    /// What a use case refused or failed with, as the admin API would answer it.
    Api(ApiError),
}

impl From<ApiError> for ConsoleError {
    fn from(e: ApiError) -> Self {
        Self::Api(e)
    }
}

/// The use cases' errors, as the admin API maps them.
macro_rules! via_api_error {
    ($($t:ty),* $(,)?) => {
        $(impl From<$t> for ConsoleError {
            fn from(e: $t) -> Self {
                Self::Api(e.into())
            }
        })*
    };
}

via_api_error!(
    broker_service::StoreError,
    broker_service::tenants::TenantAdminError,
    broker_service::connect::AuthorizationError,
    broker_service::hookup::HookupError,
    broker_service::api_keys::ApiKeyError,
);

/// The result of a delete or revoke that reports whether its target existed: `NotFound`
/// saying `missing` when there was nothing to act on.
pub fn found<E: Into<ConsoleError>>(
    done: Result<bool, E>,
    missing: impl FnOnce() -> String,
) -> Result<(), ConsoleError> {
    match done {
        Ok(true) => Ok(()),
        Ok(false) => Err(ConsoleError::NotFound(missing())),
        Err(e) => Err(e.into()),
    }
}

impl std::fmt::Display for ConsoleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (title, _) = self.explain();
        f.write_str(&title)
    }
}

impl ConsoleError {
    /// The page's heading and the advice under it.
    fn explain(&self) -> (String, String) {
        match self {
            Self::SignedOut => (
                "Signed out".into(),
                "Your session ended or was never started. Sign in again with an admin API key."
                    .into(),
            ),
            Self::Csrf => (
                "This form has expired".into(),
                "The form did not carry this session's security token (it may come from another tab, an older session or another site). Nothing was changed. Go back, reload the page and submit it again.".into(),
            ),
            Self::NotFound(what) => (
                "Not found".into(),
                format!("{what} Check the address, or start again from the overview."),
            ),
            Self::BadForm(why) => (
                "The form could not be read".into(),
                format!("{why}. Go back, correct the form and submit it again."),
            ),
            Self::TooManyAttempts(wait) => (
                "Too many failed sign-ins".into(),
                format!(
                    "Too many wrong API keys came from this address. Wait {} seconds, then sign in with a valid admin key.",
                    wait.as_secs().max(1)
                ),
            ),
            Self::Api(e) => match e {
                ApiError::TenantNotFound(id) => (
                    "Tenant not found".into(),
                    format!(
                        "Tenant {id} is not registered. Check the provet_id, or register it by hand from the message Provet emailed."
                    ),
                ),
                ApiError::NotFound => (
                    "Not found".into(),
                    "It may have been removed meanwhile. Go back and reload the list.".into(),
                ),
                ApiError::Internal(_) => (
                    "Something went wrong inside the broker".into(),
                    "Nothing is known to have changed. Try again; if it keeps happening, the daemon's log has the cause.".into(),
                ),
                ApiError::Unavailable(_) | ApiError::NotReady(_) => (
                    "The broker cannot serve this now".into(),
                    format!("{e}. Wait a moment and try again; /readyz says when it is ready."),
                ),
                other => (
                    "The action was refused".into(),
                    format!("{other}. Go back, correct it and try again."),
                ),
            },
        }
    }
}

impl ResponseError for ConsoleError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::SignedOut => StatusCode::SEE_OTHER,
            Self::Csrf => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::BadForm(_) => StatusCode::BAD_REQUEST,
            Self::TooManyAttempts(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Api(e) => e.status_code(),
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let Self::SignedOut = self {
            return HttpResponse::SeeOther()
                .insert_header((header::LOCATION, "/console/sign-in"))
                .finish();
        }
        if let Self::Api(ApiError::Internal(cause)) = self {
            tracing::error!(error = %cause, "console request failed");
        }
        let (title, advice) = self.explain();
        let body = layout::bare(
            &title,
            html! {
                h1 { (title) }
                p.advice { (advice) }
                p { a href="/console" { "Back to the overview" } }
            },
        );
        let mut response = HttpResponse::build(self.status_code());
        if let Self::TooManyAttempts(wait) = self {
            response.insert_header((header::RETRY_AFTER, wait.as_secs().max(1).to_string()));
        }
        response
            .content_type("text/html; charset=utf-8")
            .body(body.into_string())
    }
}
