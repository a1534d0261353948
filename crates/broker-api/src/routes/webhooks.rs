//! `/admin/webhooks`: register, list and delete webhooks; see and retry their deliveries
//! (admin keys). The signing secret is shown once, in the answer to the registration.

use actix_web::{HttpResponse, web};
use broker_service::webhooks::{ManualRetry, WebhookDeliveryRecord, WebhookError, WebhookRecord};
use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use broker_domain::AuditAction;

use crate::AppState;
use crate::auth::Caller;
use crate::body::Body;
use crate::openapi::{BadRequest, NotFound, PayloadTooLarge, RequestTimeout};
use crate::problem::ApiError;
use crate::routes::admin::{integer_id, page_size};
use broker_domain::{DeliveryState, WebhookState};

/// An event type a webhook subscribes to, or `*` for every type.
pub struct WebhookEventName;

impl utoipa::PartialSchema for WebhookEventName {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::Type::String)
            .enum_values(Some(
                std::iter::once("*")
                    .chain(broker_domain::EventType::ALL.iter().map(|t| t.as_str())),
            ))
            .into()
    }
}

impl ToSchema for WebhookEventName {}

/// A webhook to register.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    /// An absolute http(s) URL; link-local addresses are refused.
    pub url: String,
    /// Event types, or `["*"]` for every type.
    #[schema(value_type = Vec<WebhookEventName>, min_items = 1)]
    pub events: Vec<String>,
    #[serde(default)]
    pub description: String,
}

/// A webhook (never its secret).
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookView {
    pub id: i64,
    pub url: String,
    pub events: Vec<String>,
    pub description: String,
    /// `active`, or `disabled` after the endpoint answered `410 Gone`.
    pub state: WebhookState,
    pub created_at: DateTime<Utc>,
    pub disabled_at: Option<DateTime<Utc>>,
}

impl From<WebhookRecord> for WebhookView {
    fn from(w: WebhookRecord) -> Self {
        Self {
            id: w.id,
            url: w.url,
            events: w.events,
            description: w.description,
            state: w.state,
            created_at: w.created_at,
            disabled_at: w.disabled_at,
        }
    }
}

/// A registered webhook and its signing secret, shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedWebhook {
    #[serde(flatten)]
    pub webhook: WebhookView,
    /// `whsec_...`: verify `webhook-signature` with it (Standard Webhooks).
    pub secret: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookList {
    pub webhooks: Vec<WebhookView>,
}

/// One event's delivery to the webhook.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookDeliveryView {
    /// The event's id (`webhook-id`).
    pub event_id: String,
    pub event_type: String,
    /// `pending`, `delivered` or `failed`.
    pub state: DeliveryState,
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
    /// When the last attempt was made.
    pub attempted_at: Option<DateTime<Utc>>,
    /// The last attempt's HTTP status, when an answer came.
    pub status: Option<i32>,
    /// Why the last attempt failed (never the answer's body).
    pub error: Option<String>,
    /// When the next attempt is due, for pending deliveries.
    pub next_retry_at: Option<DateTime<Utc>>,
}

impl From<WebhookDeliveryRecord> for WebhookDeliveryView {
    fn from(d: WebhookDeliveryRecord) -> Self {
        Self {
            event_id: d.event_public_id(),
            event_type: d.event_type,
            state: d.state,
            attempts: d.attempts,
            created_at: d.created_at,
            attempted_at: d.last_attempt_at,
            status: d.last_status,
            error: d.last_error,
            next_retry_at: d.next_attempt_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookDeliveryPage {
    pub deliveries: Vec<WebhookDeliveryView>,
    /// Pass as `before` for the next (older) page; absent on the last page.
    pub next_before: Option<i64>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeliveryQuery {
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u64>,
    /// Deliveries older than this (from `next_before`).
    before: Option<i64>,
}

/// An event's id as the feed spells it (`evt_` and 16 hex digits), or its plain number.
fn event_id(raw: &str) -> Result<i64, ApiError> {
    let parsed = match raw.strip_prefix("evt_") {
        Some(hex) => (hex.len() == 16)
            .then(|| i64::from_str_radix(hex, 16).ok())
            .flatten(),
        None => (raw.len() <= 18 && raw.bytes().all(|b| b.is_ascii_digit()))
            .then(|| raw.parse().ok())
            .flatten(),
    };
    parsed
        .ok_or_else(|| ApiError::InvalidRequest("event_id must be an event's id (evt_...)".into()))
}

/// Registers a webhook; the answer carries its signing secret, shown this once.
#[utoipa::path(
    post,
    path = "/admin/webhooks",
    tag = "admin",
    operation_id = "create_webhook",
    request_body = CreateWebhook,
    security(("api_key" = [])),
    responses((status = 201, body = CreatedWebhook), (status = 400, response = BadRequest), (status = 408, response = RequestTimeout), (status = 413, response = PayloadTooLarge))
)]
pub async fn create(
    state: web::Data<AppState>,
    caller: Caller,
    body: Body,
) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    let body = body.read().await?;
    let created = async {
        let body: CreateWebhook = crate::parse_json(&body)?;
        state
            .webhooks()
            .create(
                &body.url,
                &body.events,
                &body.description,
                state.clock().now(),
            )
            .await
            .map_err(|e| match e {
                WebhookError::Invalid(errors) => ApiError::Invalid {
                    detail: errors
                        .iter()
                        .map(|e| format!("{}: {}", e.field, e.message))
                        .collect::<Vec<_>>()
                        .join("; "),
                    errors,
                },
                WebhookError::Store(e) => e.into(),
            })
    }
    .await;
    // The id only: a webhook URL may carry a receiver's token in its query.
    let target = created
        .as_ref()
        .ok()
        .map(|c| format!("webhook {}", c.record.id));
    let created = caller
        .audit(AuditAction::WebhookCreate)
        .maybe_target(target)
        .finish(&state, created)
        .await?;
    Ok(HttpResponse::Created().json(CreatedWebhook {
        webhook: WebhookView::from(created.record),
        secret: created.secret.expose_secret().to_owned(),
    }))
}

/// Lists webhooks (never their secrets).
#[utoipa::path(
    get,
    path = "/admin/webhooks",
    tag = "admin",
    operation_id = "list_webhooks",
    security(("api_key" = [])),
    responses((status = 200, body = WebhookList))
)]
pub async fn list(state: web::Data<AppState>, caller: Caller) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    let webhooks = state.webhooks().list().await?;
    Ok(HttpResponse::Ok().json(WebhookList {
        webhooks: webhooks.into_iter().map(WebhookView::from).collect(),
    }))
}

/// Deletes a webhook and its deliveries.
#[utoipa::path(
    delete,
    path = "/admin/webhooks/{id}",
    tag = "admin",
    operation_id = "delete_webhook",
    params(("id" = i64, Path, description = "The webhook's id")),
    security(("api_key" = [])),
    responses((status = 204, description = "Deleted"), (status = 400, response = BadRequest), (status = 404, response = NotFound))
)]
pub async fn delete(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    let id = integer_id(&path)?;
    let deleted = crate::audit::no_content_if_found(state.webhooks().delete(id).await);
    caller
        .audit(AuditAction::WebhookDelete)
        .target(format!("webhook {id}"))
        .finish(&state, deleted)
        .await
}

/// The webhook's deliveries, newest first: event, last attempt (time, status or error),
/// attempts, state and next retry.
#[utoipa::path(
    get,
    path = "/admin/webhooks/{id}/deliveries",
    tag = "admin",
    operation_id = "webhook_deliveries",
    params(("id" = i64, Path, description = "The webhook's id"), DeliveryQuery),
    security(("api_key" = [])),
    responses((status = 200, body = WebhookDeliveryPage), (status = 400, response = BadRequest), (status = 404, response = NotFound))
)]
pub async fn deliveries(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
    query: web::Query<DeliveryQuery>,
) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    let id = integer_id(&path)?;
    let limit = page_size(query.limit)?;
    if state.webhooks().get(id).await?.is_none() {
        return Err(ApiError::NotFound);
    }
    let deliveries = state.webhooks().deliveries(id, query.before, limit).await?;
    let next_before = (deliveries.len() as u64 == limit)
        .then(|| deliveries.last().map(|d| d.id))
        .flatten();
    Ok(HttpResponse::Ok().json(WebhookDeliveryPage {
        deliveries: deliveries
            .into_iter()
            .map(WebhookDeliveryView::from)
            .collect(),
        next_before,
    }))
}

/// Makes an attempt now, whatever the delivery's state, and answers the delivery after it
/// (`202` when an attempt was already in flight).
#[utoipa::path(
    post,
    path = "/admin/webhooks/{id}/deliveries/{event_id}/retry",
    tag = "admin",
    operation_id = "retry_webhook_delivery",
    params(("id" = i64, Path, description = "The webhook's id"), ("event_id" = String, Path, pattern = "^(evt_[0-7][0-9a-f]{15}|[0-9]{1,18})$", description = "The event's id (`evt_...`, or its number)")),
    security(("api_key" = [])),
    responses((status = 200, description = "Attempted", body = WebhookDeliveryView), (status = 202, description = "An attempt was already in flight", body = WebhookDeliveryView), (status = 400, response = BadRequest), (status = 404, response = NotFound))
)]
pub async fn retry(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    let (id, event) = path.into_inner();
    let (id, event) = (integer_id(&id)?, event_id(&event)?);
    let retried = match state.webhooks().retry(id, event, state.clock().now()).await {
        Ok(ManualRetry::NotFound) => Err(ApiError::NotFound),
        Ok(ManualRetry::InFlight(d)) => {
            Ok(HttpResponse::Accepted().json(WebhookDeliveryView::from(d)))
        }
        Ok(ManualRetry::Attempted(d)) => Ok(HttpResponse::Ok().json(WebhookDeliveryView::from(d))),
        Err(e) => Err(e.into()),
    };
    caller
        .audit(AuditAction::WebhookRetry)
        .target(format!("webhook {id} event {event}"))
        .finish(&state, retried)
        .await
}
