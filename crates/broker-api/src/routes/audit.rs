//! `GET /admin/audit`: the audit log of admin actions, newest first (admin keys).

use actix_web::{HttpResponse, web};
use broker_domain::{ActorKind, AuditAction, AuditOutcome};
use broker_service::{AuditEntry, AuditQuery};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::auth::Caller;
use crate::openapi::BadRequest;
use crate::problem::ApiError;

const DEFAULT_PAGE: u64 = 50;
const MAX_PAGE: u64 = broker_service::audit::MAX_PAGE;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    /// Entries older than this id (from `next_before`).
    #[serde(default, deserialize_with = "integer")]
    #[param(value_type = Option<i64>)]
    before: Option<i64>,
    /// Page size, 1 to 500 (default 50).
    #[serde(default, deserialize_with = "integer")]
    #[param(minimum = 1, maximum = 500, value_type = Option<i64>)]
    limit: Option<i64>,
    /// Only this action, e.g. `tenant.remove`.
    action: Option<AuditAction>,
    /// Only entries about this tenant.
    #[serde(default, deserialize_with = "integer")]
    #[param(value_type = Option<i64>)]
    provet_id: Option<i64>,
}

/// An integer query value as JSON Schema counts integers: `7` and `7.0` alike.
fn integer<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    let Some(raw) = Option::<String>::deserialize(d)? else {
        return Ok(None);
    };
    raw.parse::<i64>()
        .ok()
        .or_else(|| {
            raw.parse::<f64>()
                .ok()
                .filter(|f| crate::views::is_i64(*f))
                .map(|f| f as i64)
        })
        .map(Some)
        .ok_or_else(|| serde::de::Error::custom(format!("`{raw}` is not an integer")))
}

/// Who did an action.
#[derive(Debug, Serialize, ToSchema)]
pub struct ActorView {
    pub kind: ActorKind,
    /// The API key's name, the console's signed-in key's name, or the CLI's user.
    pub name: String,
}

/// One admin action.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEntryView {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub actor: ActorView,
    pub action: AuditAction,
    pub provet_id: Option<i64>,
    /// What else was acted on: an API key's id and name, a webhook's id, a grant's subject.
    pub target: Option<String>,
    pub outcome: AuditOutcome,
}

impl From<AuditEntry> for AuditEntryView {
    fn from(e: AuditEntry) -> Self {
        Self {
            id: e.id,
            at: e.at,
            actor: ActorView {
                kind: e.record.actor.kind,
                name: e.record.actor.name,
            },
            action: e.record.action,
            provet_id: e.record.provet_id.map(|p| p.get()),
            target: e.record.target,
            outcome: e.record.outcome,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    pub entries: Vec<AuditEntryView>,
    /// Pass as `before` for older entries; null when there are none.
    pub next_before: Option<i64>,
}

/// The audit log: every admin action through the API, the console or the CLI, newest first.
#[utoipa::path(
    get,
    path = "/admin/audit",
    tag = "admin",
    params(AuditParams),
    security(("api_key" = [])),
    responses((status = 200, body = AuditPage), (status = 400, response = BadRequest))
)]
pub async fn list(
    state: web::Data<AppState>,
    caller: Caller,
    query: web::Query<AuditParams>,
) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    let q = query.into_inner();
    let limit = match q.limit {
        None => DEFAULT_PAGE,
        Some(n) if (1..=MAX_PAGE as i64).contains(&n) => n as u64,
        Some(_) => {
            return Err(ApiError::InvalidRequest(format!(
                "limit must be from 1 to {MAX_PAGE}"
            )));
        }
    };
    let entries = state
        .audit()
        .list(AuditQuery {
            before: q.before,
            limit,
            action: q.action,
            provet_id: q.provet_id,
        })
        .await?;
    let next_before = (entries.len() as u64 == limit)
        .then(|| entries.last().map(|e| e.id))
        .flatten();
    Ok(HttpResponse::Ok().json(AuditPage {
        entries: entries.into_iter().map(AuditEntryView::from).collect(),
        next_before,
    }))
}
