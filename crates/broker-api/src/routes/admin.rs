//! `/admin/...`: operators' view of tenants, hookup deliveries and API keys (admin keys).

use actix_web::{HttpResponse, web};
use broker_domain::{ApiKeyRole, AuditAction, ProvetId};
use broker_service::TenantFilter;
use broker_service::tenants::Rerun;
use secrecy::ExposeSecret;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::AppState;
use crate::auth::Caller;
use crate::body::Body;
use crate::openapi::{BadGateway, BadRequest, Conflict, NotFound, PayloadTooLarge, RequestTimeout};
use crate::problem::ApiError;
use crate::views::{
    ApiKeyList, ApiKeyView, CreateApiKey, CreatedApiKey, CredentialsView, DiscoveryView, EventPage,
    EventView, RerunRequest, RerunScheduled, TenantPage, TenantView,
};

const DEFAULT_PAGE: u64 = 50;
const MAX_PAGE: u64 = 500;

/// Parses a `{provet_id}` path segment.
pub fn provet_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse::<ProvetId>()
        .map(ProvetId::get)
        .map_err(|e| ApiError::InvalidRequest(format!("provet_id {e}")))
}

/// A `limit` query parameter: 1 to 500, 50 when absent.
pub(crate) fn page_size(limit: Option<u64>) -> Result<u64, ApiError> {
    match limit {
        None => Ok(DEFAULT_PAGE),
        Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::InvalidRequest(format!(
            "limit must be from 1 to {MAX_PAGE}"
        ))),
    }
}

/// Runs an admin action on the tenant a `{provet_id}` segment names, and records it in the
/// audit log with its outcome.
async fn on_tenant<T, E: Into<ApiError>>(
    state: &AppState,
    caller: &Caller,
    path: &str,
    action: AuditAction,
    run: impl AsyncFnOnce(i64) -> Result<T, E>,
) -> Result<T, ApiError> {
    let id = provet_id(path)?;
    let result = run(id).await;
    caller.audit(action).tenant(id).finish(state, result).await
}

/// Parses an `{id}` path segment (an API key's, a webhook's).
pub(crate) fn integer_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::InvalidRequest("id must be an integer".into()))
}

/// A `{provet_id}` path segment (documentation only: handlers parse it with `provet_id`, so
/// that a bad one is a problem+json `400`).
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub struct ProvetIdPath {
    /// The tenant's Provet ID.
    #[param(minimum = 1, maximum = 9007199254740992_i64, example = 4321)]
    provet_id: i64,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct TenantQuery {
    #[param(value_type = Option<broker_domain::TenantStatus>)]
    status: Option<String>,
    #[param(value_type = Option<broker_domain::GrantType>)]
    grant_type: Option<String>,
    #[param(value_type = Option<broker_domain::DiscoveryState>)]
    discovery: Option<String>,
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u64>,
    /// Tenants after this provet_id (from `next_after`).
    after: Option<i64>,
}

/// Lists tenants, filtered and paginated by provet_id.
#[utoipa::path(
    get,
    path = "/admin/tenants",
    tag = "admin",
    operation_id = "admin_list_tenants",
    params(TenantQuery),
    security(("api_key" = [])),
    responses((status = 200, body = TenantPage), (status = 400, response = BadRequest))
)]
pub async fn list_tenants(
    state: web::Data<AppState>,
    caller: Caller,
    query: web::Query<TenantQuery>,
) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    let q = query.into_inner();
    let status = q
        .status
        .as_deref()
        .map(str::parse::<broker_domain::TenantStatus>)
        .transpose()
        .map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
    let grant_type = match q.grant_type.as_deref() {
        None => None,
        Some(g) => Some(broker_domain::GrantType::parse(g).ok_or_else(|| {
            ApiError::InvalidRequest(
                "grant_type must be `authorization_code` or `client_credentials`".into(),
            )
        })?),
    };
    let discovery = q
        .discovery
        .as_deref()
        .map(str::parse::<broker_domain::DiscoveryState>)
        .transpose()
        .map_err(|_| {
            ApiError::InvalidRequest(
                "discovery must be `pending`, `ok`, `failed` or `not_applicable`".into(),
            )
        })?;
    let limit = page_size(q.limit)?;
    let tenants = state
        .tenant_admin()
        .tenants(&TenantFilter {
            status,
            grant_type,
            discovery,
            after: q.after,
            limit,
            ..Default::default()
        })
        .await?;
    let next_after = (tenants.len() as u64 == limit)
        .then(|| tenants.last().map(|t| t.provet_id))
        .flatten();
    Ok(HttpResponse::Ok().json(TenantPage {
        tenants: tenants.into_iter().map(TenantView::from).collect(),
        next_after,
    }))
}

/// One tenant: client (no secret), credentials, discovery and grants.
#[utoipa::path(
    get,
    path = "/admin/tenants/{provet_id}",
    tag = "admin",
    operation_id = "admin_get_tenant",
    params(ProvetIdPath),
    security(("api_key" = [])),
    responses((status = 200, body = TenantView), (status = 400, response = BadRequest), (status = 404, response = NotFound))
)]
pub async fn get_tenant(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    let id = provet_id(&path)?;
    let tenant = state.tenant_admin().tenant(id).await?;
    Ok(HttpResponse::Ok().json(TenantView::from(tenant)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventQuery {
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u64>,
    /// Events older than this id (from `next_before`).
    before: Option<i64>,
}

/// Every hookup delivery for the tenant, newest first, redacted.
#[utoipa::path(
    get,
    path = "/admin/tenants/{provet_id}/events",
    tag = "admin",
    params(ProvetIdPath, EventQuery),
    security(("api_key" = [])),
    responses((status = 200, body = EventPage), (status = 400, response = BadRequest), (status = 404, response = NotFound))
)]
pub async fn tenant_events(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
    query: web::Query<EventQuery>,
) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    let id = provet_id(&path)?;
    let limit = page_size(query.limit)?;
    let events = state
        .tenant_admin()
        .deliveries(id, query.before, limit)
        .await?;
    let next_before = (events.len() as u64 == limit)
        .then(|| events.last().map(|e| e.id))
        .flatten();
    Ok(HttpResponse::Ok().json(EventPage {
        events: events.into_iter().map(EventView::from).collect(),
        next_before,
    }))
}

/// The tenant removed the integration: disable it and wipe its secret, grants and tokens.
#[utoipa::path(
    delete,
    path = "/admin/tenants/{provet_id}",
    tag = "admin",
    params(ProvetIdPath),
    security(("api_key" = [])),
    responses((status = 200, body = TenantView), (status = 400, response = BadRequest), (status = 404, response = NotFound))
)]
pub async fn remove_tenant(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    let tenant = on_tenant(
        &state,
        &caller,
        &path,
        AuditAction::TenantRemove,
        async |id| state.tenant_admin().remove(id).await,
    )
    .await?;
    Ok(HttpResponse::Ok().json(TenantView::from(tenant)))
}

/// Creates an API key; the answer carries the key, shown this once.
#[utoipa::path(
    post,
    path = "/admin/api-keys",
    tag = "admin",
    request_body = CreateApiKey,
    security(("api_key" = [])),
    responses((status = 201, body = CreatedApiKey), (status = 400, response = BadRequest), (status = 408, response = RequestTimeout), (status = 413, response = PayloadTooLarge))
)]
pub async fn create_api_key(
    state: web::Data<AppState>,
    caller: Caller,
    body: Body,
) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    let body = body.read().await?;
    let mut name = None;
    let created = async {
        let body: CreateApiKey = crate::parse_json(&body)?;
        name = Some(body.name.clone());
        let role: ApiKeyRole = body
            .role
            .parse()
            .map_err(|e: broker_domain::UnknownState| {
                ApiError::invalid_field("role", e.to_string())
            })?;
        Ok::<_, ApiError>(
            state
                .api_keys()
                .create(&body.name, role, body.tenants)
                .await?,
        )
    }
    .await;
    let target = match &created {
        Ok(c) => Some(format!("api key {} ({})", c.record.id, c.record.name)),
        Err(_) => name.map(|name| format!("name {name}")),
    };
    let created = caller
        .audit(AuditAction::ApiKeyCreate)
        .maybe_target(target)
        .finish(&state, created)
        .await?;
    Ok(HttpResponse::Created().json(CreatedApiKey {
        api_key: ApiKeyView::from(created.record),
        key: created.key.expose_secret().to_owned(),
    }))
}

/// Lists API keys (never the keys themselves).
#[utoipa::path(
    get,
    path = "/admin/api-keys",
    tag = "admin",
    security(("api_key" = [])),
    responses((status = 200, body = ApiKeyList))
)]
pub async fn list_api_keys(
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    let keys = state.api_keys().list().await?;
    Ok(HttpResponse::Ok().json(ApiKeyList {
        api_keys: keys.into_iter().map(ApiKeyView::from).collect(),
    }))
}

/// Revokes an API key at once.
#[utoipa::path(
    delete,
    path = "/admin/api-keys/{id}",
    tag = "admin",
    params(("id" = i64, Path, description = "The key's id")),
    security(("api_key" = [])),
    responses((status = 204, description = "Revoked"), (status = 400, response = BadRequest), (status = 404, response = NotFound))
)]
pub async fn revoke_api_key(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    let id = integer_id(&path)?;
    let revoked = crate::audit::no_content_if_found(state.api_keys().revoke(id).await);
    caller
        .audit(AuditAction::ApiKeyRevoke)
        .target(format!("api key {id}"))
        .finish(&state, revoked)
        .await
}

/// Runs OpenID Connect discovery for the tenant now and answers its discovery state
/// (`200` also when the run failed: the state says so).
#[utoipa::path(
    post,
    path = "/admin/tenants/{provet_id}/discovery",
    tag = "admin",
    params(ProvetIdPath),
    security(("api_key" = [])),
    responses((status = 200, body = DiscoveryView), (status = 400, response = BadRequest), (status = 404, response = NotFound))
)]
pub async fn rerun_tenant_discovery(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    let record = on_tenant(
        &state,
        &caller,
        &path,
        AuditAction::TenantDiscovery,
        async |id| state.tenant_admin().rediscover(id).await,
    )
    .await?;
    Ok(HttpResponse::Ok().json(DiscoveryView::from_record(record)))
}

/// Makes many tenants' discovery due now; the workers pick them up.
#[utoipa::path(
    post,
    path = "/admin/discovery/rerun",
    tag = "admin",
    request_body = RerunRequest,
    security(("api_key" = [])),
    responses((status = 202, body = RerunScheduled), (status = 400, response = BadRequest), (status = 408, response = RequestTimeout), (status = 413, response = PayloadTooLarge))
)]
pub async fn rerun_discovery(
    state: web::Data<AppState>,
    caller: Caller,
    body: Body,
) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    let body = body.read().await?;
    let mut filter = None;
    let scheduled = async {
        let body: RerunRequest = crate::parse_json(&body)?;
        let which = match body.filter.as_str() {
            "failed" => Rerun::Failed,
            "stale" => Rerun::Stale,
            "all" => Rerun::All,
            _ => {
                return Err(ApiError::InvalidRequest(
                    "filter must be `failed`, `stale` or `all`".into(),
                ));
            }
        };
        filter = Some(body.filter.clone());
        Ok(state.tenant_admin().schedule_discovery(which).await?)
    }
    .await;
    let scheduled = caller
        .audit(AuditAction::DiscoveryRerun)
        .maybe_target(filter.map(|f| format!("filter {f}")))
        .finish(&state, scheduled)
        .await?;
    Ok(HttpResponse::Accepted().json(RerunScheduled { scheduled }))
}

/// Checks the tenant's client credentials now (one token request, which fills the cache),
/// ignoring any rejection cool-down; answers the credentials state.
#[utoipa::path(
    post,
    path = "/admin/tenants/{provet_id}/verify",
    tag = "admin",
    params(ProvetIdPath),
    security(("api_key" = [])),
    responses((status = 200, body = CredentialsView), (status = 400, response = BadRequest), (status = 404, response = NotFound), (status = 409, response = Conflict), (status = 502, response = BadGateway))
)]
pub async fn verify_tenant(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    let tenant = on_tenant(
        &state,
        &caller,
        &path,
        AuditAction::TenantVerify,
        async |id| state.tenant_admin().verify(id).await,
    )
    .await?;
    Ok(HttpResponse::Ok().json(TenantView::from(tenant).credentials))
}

/// Revokes one grant: at the provider when it has a revocation endpoint, and here (the
/// refresh token and cached tokens are wiped).
#[utoipa::path(
    delete,
    path = "/admin/tenants/{provet_id}/grants/{subject}",
    tag = "admin",
    params(ProvetIdPath, ("subject" = String, Path, description = "The grant's subject")),
    security(("api_key" = [])),
    responses((status = 204, description = "Revoked"), (status = 400, response = BadRequest), (status = 404, response = NotFound))
)]
pub async fn revoke_grant(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    let (id, subject) = path.into_inner();
    let id = provet_id(&id)?;
    let revoked =
        crate::audit::no_content_if_found(state.connect().revoke_grant(id, &subject).await);
    caller
        .audit(AuditAction::GrantRevoke)
        .tenant(id)
        .target(format!("grant {subject}"))
        .finish(&state, revoked)
        .await
}
