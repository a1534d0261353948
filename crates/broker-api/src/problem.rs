//! The one place where errors become HTTP: RFC 9457 problem+json with a stable `code`.
//! Every use case's error is mapped here (the `From` impls at the end), and each variant's
//! code, status and text are decided here. Internal causes are logged with their chain; the
//! client sees an opaque message.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use broker_domain::FieldError;
use serde::Serialize;
use utoipa::ToSchema;

/// An RFC 9457 problem document.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// `urn:provet-broker:problem:<code>`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// The provider's OAuth error code, for `upstream_rejected`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_error: Option<String>,
    /// Every offending field, for validation errors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<ProblemField>>,
    /// The request's id, as in the answer's `X-Request-Id` header: quote it when asking
    /// an operator about this answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProblemField {
    pub field: String,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("not found")]
    NotFound,
    /// The path exists, not with this method: the methods it has (`GET, POST`).
    #[error("this address answers only {0}")]
    MethodNotAllowed(std::sync::Arc<str>),
    #[error("{0}")]
    TenantNotFound(i64),
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    Forbidden(String),
    #[error("{detail}")]
    Invalid {
        detail: String,
        errors: Vec<FieldError>,
    },
    #[error("{0}")]
    InvalidRequest(String),
    #[error("the request body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the request body must be JSON (Content-Type: application/json)")]
    UnsupportedMediaType,
    #[error("the database is unavailable")]
    Unavailable(String),
    /// This replica cannot serve (a key that sealed stored secrets is missing).
    #[error("{0}")]
    NotReady(String),
    #[error("the request body did not arrive in time")]
    RequestTimeout,
    #[error("too many failed API-key attempts from this address; wait and retry")]
    TooManyRequests(std::time::Duration),
    #[error("{0}")]
    ReauthorizationRequired(String),
    #[error("{0}")]
    Misconfigured(String),
    #[error("the provider rejected the token request: {upstream_error}{}", description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    UpstreamRejected {
        upstream_error: String,
        description: Option<String>,
    },
    #[error("the provider is unavailable: {reason}")]
    UpstreamUnavailable {
        reason: String,
        retry_after: std::time::Duration,
    },
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// Logs the cause and hides it from the client.
    pub fn internal(err: impl std::fmt::Display) -> Self {
        Self::Internal(err.to_string())
    }

    /// A `400` naming the one offending field.
    pub fn invalid_field(field: &str, message: String) -> Self {
        Self::Invalid {
            detail: format!("{field}: {message}"),
            errors: vec![FieldError {
                field: field.to_owned(),
                message,
            }],
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::NotFound => "not_found",
            Self::MethodNotAllowed(_) => "method_not_allowed",
            Self::TenantNotFound(_) => "tenant_not_found",
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::Invalid { .. } | Self::InvalidRequest(_) => "invalid_request",
            Self::TooLarge(_) => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::Unavailable(_) => "unavailable",
            Self::TooManyRequests(_) => "too_many_requests",
            Self::RequestTimeout => "request_timeout",
            Self::Internal(_) => "internal",
            Self::ReauthorizationRequired(_) => "reauthorization_required",
            Self::Misconfigured(_) | Self::NotReady(_) => "misconfigured",
            Self::UpstreamRejected { .. } => "upstream_rejected",
            Self::UpstreamUnavailable { .. } => "upstream_unavailable",
        }
    }

    fn detail(&self) -> String {
        match self {
            Self::NotFound => "there is nothing at this address".into(),
            Self::TenantNotFound(id) => format!("tenant {id} is not registered"),
            Self::Internal(_) => {
                "the broker failed to handle this request; the cause is in its log".into()
            }
            Self::Unavailable(_) => "the database is unavailable; retry shortly".into(),
            other => other.to_string(),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::NotFound | Self::TenantNotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::Invalid { .. } | Self::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unavailable(_) | Self::UpstreamUnavailable { .. } | Self::NotReady(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::ReauthorizationRequired(_) | Self::Misconfigured(_) => StatusCode::CONFLICT,
            Self::UpstreamRejected { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            Self::Internal(cause) => tracing::error!(error = %cause, "request failed"),
            Self::Unavailable(cause) => tracing::warn!(error = %cause, "database unavailable"),
            _ => {}
        }
        let status = self.status_code();
        let problem = Problem {
            kind: format!("urn:provet-broker:problem:{}", self.code()),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: self.detail(),
            code: self.code(),
            upstream_error: match self {
                Self::UpstreamRejected { upstream_error, .. } => Some(upstream_error.clone()),
                _ => None,
            },
            errors: match self {
                Self::Invalid { errors, .. } => Some(
                    errors
                        .iter()
                        .map(|e| ProblemField {
                            field: e.field.clone(),
                            message: e.message.clone(),
                        })
                        .collect(),
                ),
                _ => None,
            },
            request_id: crate::request::current_request_id(),
        };
        let mut response = HttpResponse::build(status);
        response.content_type("application/problem+json");
        if matches!(self, Self::Unauthorized(_)) {
            response.insert_header((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")));
        }
        match self {
            Self::Unavailable(_) => {
                response.insert_header((header::RETRY_AFTER, HeaderValue::from_static("5")));
            }
            Self::TooManyRequests(wait) => {
                response.insert_header((header::RETRY_AFTER, wait.as_secs().max(1).to_string()));
            }
            Self::UpstreamUnavailable { retry_after, .. } => {
                let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
                response.insert_header((header::RETRY_AFTER, secs.to_string()));
            }
            Self::MethodNotAllowed(allow) => {
                response.insert_header((header::ALLOW, allow.as_ref()));
            }
            _ => {}
        }
        response.json(problem)
    }
}

impl From<broker_service::tokens::TokenBrokerError> for ApiError {
    fn from(err: broker_service::tokens::TokenBrokerError) -> Self {
        use broker_service::tokens::TokenBrokerError as E;
        match err {
            E::InvalidRequest(m) => Self::InvalidRequest(m),
            E::TenantNotFound(id) => Self::TenantNotFound(id),
            E::ReauthorizationRequired(m) => Self::ReauthorizationRequired(m),
            E::Rejected { code, description } => Self::UpstreamRejected {
                upstream_error: code,
                description,
            },
            E::Unavailable {
                reason,
                retry_after,
            } => Self::UpstreamUnavailable {
                reason,
                retry_after,
            },
            E::Misconfigured(m) => Self::Misconfigured(m),
            E::Store(e) => e.into(),
        }
    }
}

impl From<broker_service::StoreError> for ApiError {
    fn from(err: broker_service::StoreError) -> Self {
        match err {
            broker_service::StoreError::Db(e) => Self::Unavailable(e.to_string()),
            other => Self::internal(other),
        }
    }
}

impl From<broker_service::tenants::TenantAdminError> for ApiError {
    fn from(err: broker_service::tenants::TenantAdminError) -> Self {
        use broker_service::tenants::TenantAdminError as E;
        match err {
            E::TenantNotFound(id) => Self::TenantNotFound(id),
            E::Token(e) => e.into(),
            E::Store(e) => e.into(),
        }
    }
}

impl From<broker_service::api_keys::ApiKeyError> for ApiError {
    fn from(err: broker_service::api_keys::ApiKeyError) -> Self {
        use broker_service::api_keys::ApiKeyError as E;
        match err {
            E::Invalid { field, message } => Self::invalid_field(field, message),
            E::Store(e) => e.into(),
        }
    }
}

impl From<broker_service::connect::AuthorizationError> for ApiError {
    fn from(err: broker_service::connect::AuthorizationError) -> Self {
        use broker_service::connect::AuthorizationError as E;
        match err {
            E::InvalidRequest(m) => Self::InvalidRequest(m),
            E::ReturnTo(e) => Self::Invalid {
                detail: format!("return_to {e}"),
                errors: vec![FieldError {
                    field: "return_to".into(),
                    message: e.to_string(),
                }],
            },
            E::TenantNotFound(id) => Self::TenantNotFound(id),
            E::Misconfigured(m) => Self::Misconfigured(m),
            E::Store(e) => e.into(),
        }
    }
}

impl From<broker_service::hookup::HookupError> for ApiError {
    fn from(err: broker_service::hookup::HookupError) -> Self {
        use broker_domain::ParseError;
        use broker_service::hookup::HookupError as E;
        match err {
            E::Invalid(ParseError::InvalidJson(message)) => Self::Invalid {
                detail: "the body is not valid JSON".into(),
                errors: vec![FieldError {
                    field: "$".into(),
                    message,
                }],
            },
            E::Invalid(ParseError::Invalid(errors)) => Self::Invalid {
                detail: format!(
                    "the message does not follow the hookup schema: {} problem(s), each named in `errors`",
                    errors.len()
                ),
                errors,
            },
            E::Store(e) => e.into(),
        }
    }
}
