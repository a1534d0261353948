//! `/v1/tenants` and `/v1/events`: how a service follows the clinics. It lists the tenants
//! once, then follows the event feed from the cursor it keeps.

use std::time::Duration;

use actix_web::{HttpResponse, web};
use broker_domain::{EventType, TenantStatus};
use broker_service::ServiceTenantQuery;
use broker_service::events::{FeedRequest, MAX_LIMIT, MAX_WAIT};
use broker_service::{EventCursor, EventRecord};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::auth::Caller;
use crate::problem::ApiError;
use crate::views::ServiceTenantView;

const DEFAULT_LIMIT: u64 = 100;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ServiceTenantParams {
    /// Page size, 1 to 500 (default 100; other values are clamped).
    limit: Option<i64>,
    /// Tenants after this provet_id (from `next_after`).
    after: Option<i64>,
    /// `active` (default), `removed` or `all`.
    #[param(value_type = Option<TenantStatusFilter>)]
    status: Option<String>,
    /// Only tenants changed at or after this time (RFC 3339).
    #[param(value_type = Option<DateTime<Utc>>)]
    updated_since: Option<String>,
}

/// Which tenants `GET /v1/tenants` lists (documentation of the `status` parameter).
#[derive(ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum TenantStatusFilter {
    Active,
    Removed,
    All,
}

/// A page of tenants for a service.
#[derive(Debug, Serialize, ToSchema)]
pub struct ServiceTenantPage {
    pub tenants: Vec<ServiceTenantView>,
    /// Pass as `after` for the next page; null on the last page.
    pub next_after: Option<i64>,
}

/// The tenants this key may serve (every tenant for an unscoped key), by provet_id.
#[utoipa::path(
    get,
    path = "/v1/tenants",
    tag = "tokens",
    params(ServiceTenantParams),
    security(("api_key" = [])),
    operation_id = "service_list_tenants",
    responses(
        (status = 200, body = ServiceTenantPage),
        (status = 400, response = crate::openapi::BadRequest),
    )
)]
pub async fn list_tenants(
    state: web::Data<AppState>,
    caller: Caller,
    params: web::Query<ServiceTenantParams>,
) -> Result<HttpResponse, ApiError> {
    let params = params.into_inner();
    // Without a filter, only active tenants; `all` lifts it.
    let status = match params.status.as_deref() {
        None => Some(TenantStatus::Active),
        Some("all") => None,
        Some(s) => Some(
            s.parse::<TenantStatus>()
                .map_err(|_| invalid("status", "must be `active`, `removed` or `all`".into()))?,
        ),
    };
    let updated_since = params
        .updated_since
        .as_deref()
        .map(|s| {
            DateTime::parse_from_rfc3339(s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| invalid("updated_since", format!("must be an RFC 3339 time: {e}")))
        })
        .transpose()?;
    let limit = page_limit(params.limit).clamp(1, MAX_LIMIT);
    let tenants = state
        .tenant_admin()
        .service_tenants(&ServiceTenantQuery {
            status,
            updated_since,
            tenants: caller.0.tenants.clone(),
            after: params.after,
            limit,
        })
        .await?;
    let next_after = (tenants.len() as u64 == limit)
        .then(|| tenants.last().map(|t| t.tenant.provet_id))
        .flatten();
    Ok(HttpResponse::Ok().json(ServiceTenantPage {
        tenants: tenants.into_iter().map(ServiceTenantView::from).collect(),
        next_after,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventParams {
    /// Resume after this cursor (a `next_after`); absent: from the oldest event kept.
    after: Option<String>,
    /// Page size, 1 to 500 (default 100; other values are clamped).
    limit: Option<i64>,
    /// Comma-separated event types; absent: every type.
    #[param(value_type = Option<Vec<crate::openapi::EventTypeName>>, style = Form, explode = false, min_items = 1)]
    types: Option<String>,
    /// Hold an empty answer open up to this long (`10s`, `500ms`; at most `30s`).
    #[param(pattern = r"^(([0-9]|[12][0-9]|30)s|([0-9]{1,4}|[12][0-9]{4}|30000)ms)$")]
    wait: Option<String>,
}

/// One event.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventEnvelope {
    /// `evt_` and a sortable id.
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub occurred_at: DateTime<Utc>,
    pub provet_id: i64,
    /// Per tenant, increasing: drop anything older than what was applied.
    pub sequence: i64,
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
}

impl From<EventRecord> for EventEnvelope {
    fn from(e: EventRecord) -> Self {
        Self {
            id: e.public_id(),
            event_type: e.event_type,
            occurred_at: e.occurred_at,
            provet_id: e.provet_id,
            sequence: e.sequence,
            data: e.data,
        }
    }
}

/// A page of the feed.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventFeedPage {
    pub events: Vec<EventEnvelope>,
    /// Always a cursor to resume from (also on an empty page).
    pub next_after: String,
}

/// The event feed for this key's tenants, oldest first. A cursor never skips an event, also
/// one committed late by a concurrent transaction.
#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "tokens",
    params(EventParams),
    security(("api_key" = [])),
    responses(
        (status = 200, body = EventFeedPage),
        (status = 400, response = crate::openapi::BadRequest),
    )
)]
pub async fn events(
    state: web::Data<AppState>,
    caller: Caller,
    params: web::Query<EventParams>,
) -> Result<HttpResponse, ApiError> {
    let params = params.into_inner();
    let after = params
        .after
        .as_deref()
        .map(|a| {
            EventCursor::decode(a)
                .ok_or_else(|| invalid("after", "is not a cursor this feed gave out".into()))
        })
        .transpose()?;
    let types = params.types.as_deref().map(parse_types).transpose()?;
    let wait = params.wait.as_deref().map(parse_wait).transpose()?;
    let page = state
        .events()
        .page(&FeedRequest {
            after,
            limit: page_limit(params.limit),
            types,
            tenants: caller.0.tenants.clone(),
            wait: wait.unwrap_or(Duration::ZERO),
        })
        .await?;
    Ok(HttpResponse::Ok().json(EventFeedPage {
        next_after: page.next_after.encode(),
        events: page.events.into_iter().map(EventEnvelope::from).collect(),
    }))
}

/// A page size as asked (any int64: below 1 means 1, the feed clamps the top).
fn page_limit(limit: Option<i64>) -> u64 {
    limit.map_or(DEFAULT_LIMIT, |n| u64::try_from(n.max(1)).unwrap_or(1))
}

fn parse_types(text: &str) -> Result<Vec<EventType>, ApiError> {
    let mut types = Vec::new();
    let mut unknown = Vec::new();
    for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        match name.parse::<EventType>() {
            Ok(t) => types.push(t),
            Err(_) => unknown.push(name.to_owned()),
        }
    }
    if !unknown.is_empty() {
        return Err(invalid(
            "types",
            format!("unknown event type(s): {}", unknown.join(", ")),
        ));
    }
    if types.is_empty() {
        return Err(invalid("types", "names no event type".into()));
    }
    Ok(types)
}

fn parse_wait(text: &str) -> Result<Duration, ApiError> {
    let wait = humantime_serde::re::humantime::parse_duration(text.trim())
        .map_err(|e| invalid("wait", format!("must be a duration like `10s`: {e}")))?;
    if wait > MAX_WAIT {
        return Err(invalid("wait", "must be at most 30s".into()));
    }
    Ok(wait)
}

fn invalid(field: &str, message: String) -> ApiError {
    ApiError::Invalid {
        detail: format!("{field}: {message}"),
        errors: vec![broker_domain::FieldError {
            field: field.to_owned(),
            message,
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_up_to_thirty_seconds_are_accepted() {
        assert_eq!(parse_wait("10s").ok(), Some(Duration::from_secs(10)));
        assert_eq!(parse_wait("500ms").ok(), Some(Duration::from_millis(500)));
        assert_eq!(parse_wait("30s").ok(), Some(MAX_WAIT));
        for bad in ["31s", "1m", "ten", "10", ""] {
            assert!(parse_wait(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn types_are_a_comma_list_of_known_names() {
        assert_eq!(
            parse_types("tenant.registered, grant.revoked").ok(),
            Some(vec![EventType::TenantRegistered, EventType::GrantRevoked])
        );
        assert!(parse_types("tenant.registered,tenant.exploded").is_err());
        assert!(parse_types(",").is_err());
    }
}
