//! Response bodies: what the HTTP API shows of the broker's records. Never a secret.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use broker_domain::{
    ApiKeyRole, ClientType, CredentialsState, DeliveryOutcome, DeliverySource, DiscoveryState,
    GrantState, GrantType, HookupOutcome, SigningAlgorithm, TenantStatus,
};
use broker_service::tenants::ServiceTenant;
use broker_service::{ApiKeyRecord, ClientRecord, DeliveryRecord, DiscoveryRecord, TenantRecord};

/// A tenant as operators see it.
#[derive(Debug, Serialize, ToSchema)]
pub struct TenantView {
    pub provet_id: i64,
    pub status: TenantStatus,
    pub departments: Vec<i64>,
    pub client: Option<ClientView>,
    pub credentials: CredentialsView,
    pub discovery: DiscoveryView,
    pub grants: Vec<GrantView>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub removed_at: Option<DateTime<Utc>>,
    /// Where this tenant's hookup deliveries are listed (`GET`, admin key).
    pub events_url: String,
    /// Where services follow this tenant's events (`GET /v1/events`, scoped by key).
    pub feed_url: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ClientView {
    pub client_id: String,
    pub client_type: ClientType,
    pub grant_type: GrantType,
    pub algorithm: Option<SigningAlgorithm>,
    pub token_url: String,
    pub authorize_url: String,
    pub openid_autodiscovery_url: Option<String>,
    pub redirect_uris: Vec<String>,
    /// Whether a secret is stored (it is never shown).
    pub has_secret: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CredentialsView {
    pub state: CredentialsState,
    pub checked_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DiscoveryView {
    pub state: DiscoveryState,
    pub issuer: Option<String>,
    pub fetched_at: Option<DateTime<Utc>>,
    /// When the worker will fetch again (a refresh, or a retry after a failure).
    pub next_refresh_at: Option<DateTime<Utc>>,
    /// Failures since the last success.
    pub attempts: u32,
    pub last_error: Option<String>,
    pub discovery_url: Option<String>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub jwks_fetched_at: Option<DateTime<Utc>>,
    pub token_endpoint: Option<String>,
    pub authorization_endpoint: Option<String>,
    pub jwks_uri: Option<String>,
    /// Things that did not fail discovery but an operator should know (endpoints that differ
    /// from the hookup's, a relaxed issuer check).
    pub warnings: Vec<String>,
}

impl DiscoveryView {
    pub fn from_record(record: Option<DiscoveryRecord>) -> Self {
        match record {
            None => Self {
                state: DiscoveryState::NotApplicable,
                issuer: None,
                fetched_at: None,
                next_refresh_at: None,
                attempts: 0,
                last_error: None,
                discovery_url: None,
                last_attempt_at: None,
                jwks_fetched_at: None,
                token_endpoint: None,
                authorization_endpoint: None,
                jwks_uri: None,
                warnings: Vec::new(),
            },
            Some(d) => Self {
                state: d.state,
                issuer: d.issuer,
                fetched_at: d.fetched_at,
                next_refresh_at: Some(d.next_due_at),
                attempts: u32::try_from(d.attempts).unwrap_or(0),
                last_error: d.last_error,
                discovery_url: Some(d.discovery_url),
                last_attempt_at: d.last_attempt_at,
                jwks_fetched_at: d.jwks_fetched_at,
                token_endpoint: d.token_endpoint,
                authorization_endpoint: d.authorization_endpoint,
                jwks_uri: d.jwks_uri,
                warnings: d.warnings,
            },
        }
    }
}

/// `POST /admin/discovery/rerun`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RerunRequest {
    /// `failed`, `stale` (older than discovery.refresh_interval) or `all`.
    #[schema(value_type = RerunFilter)]
    pub filter: String,
}

/// Which tenants `POST /admin/discovery/rerun` makes due (documentation of `filter`).
#[derive(ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum RerunFilter {
    Failed,
    Stale,
    All,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RerunScheduled {
    pub scheduled: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GrantView {
    pub subject: String,
    pub state: GrantState,
    pub client_id: String,
    pub scope: String,
    pub created_at: DateTime<Utc>,
    pub last_refresh_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
}

impl From<TenantRecord> for TenantView {
    fn from(t: TenantRecord) -> Self {
        let credentials = CredentialsView {
            state: t
                .client
                .as_ref()
                .map_or(CredentialsState::Unchecked, |c| c.credentials_state),
            checked_at: t.client.as_ref().and_then(|c| c.credentials_checked_at),
            last_error: t
                .client
                .as_ref()
                .and_then(|c| c.credentials_last_error.clone()),
        };
        let discovery = DiscoveryView::from_record(t.discovery);
        Self {
            provet_id: t.provet_id,
            status: t.status,
            departments: t.departments,
            client: t.client.map(ClientView::from),
            credentials,
            discovery,
            grants: t
                .grants
                .into_iter()
                .map(|g| GrantView {
                    subject: g.subject,
                    state: g.state,
                    client_id: g.client_id,
                    scope: g.scope,
                    created_at: g.created_at,
                    last_refresh_at: g.last_refresh_at,
                    last_error: g.last_error,
                })
                .collect(),
            created_at: t.created_at,
            updated_at: t.updated_at,
            removed_at: t.removed_at,
            events_url: format!("/admin/tenants/{}/events", t.provet_id),
            feed_url: "/v1/events".to_owned(),
        }
    }
}

impl From<ClientRecord> for ClientView {
    fn from(c: ClientRecord) -> Self {
        Self {
            client_id: c.client_id,
            client_type: c.client_type,
            grant_type: c.grant_type,
            algorithm: c.algorithm,
            token_url: c.token_url,
            authorize_url: c.authorize_url,
            openid_autodiscovery_url: c.openid_autodiscovery_url,
            redirect_uris: c.redirect_uris,
            has_secret: c.has_secret,
        }
    }
}

/// A page of tenants.
#[derive(Debug, Serialize, ToSchema)]
pub struct TenantPage {
    pub tenants: Vec<TenantView>,
    /// Pass as `after` for the next page; null on the last page.
    pub next_after: Option<i64>,
}

/// One hookup delivery, redacted.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventView {
    pub id: i64,
    pub provet_id: Option<i64>,
    pub client_id: Option<String>,
    pub received_at: DateTime<Utc>,
    /// SHA-256 of the body as received.
    pub digest: String,
    pub outcome: DeliveryOutcome,
    /// The message with its secret replaced by `[redacted]`.
    #[schema(value_type = Option<Object>)]
    pub payload: Option<serde_json::Value>,
    #[schema(value_type = Option<Vec<Object>>)]
    pub errors: Option<serde_json::Value>,
    /// Where the message came from: `hookup` (Provet), `admin` (`POST /admin/tenants`) or
    /// `cli` (`provet-broker tenants add`).
    pub source: DeliverySource,
}

impl From<DeliveryRecord> for EventView {
    fn from(d: DeliveryRecord) -> Self {
        Self {
            id: d.id,
            provet_id: d.provet_id,
            client_id: d.client_id,
            received_at: d.received_at,
            digest: d.digest,
            outcome: d.outcome,
            payload: d.payload,
            errors: d.errors,
            source: d.source,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventPage {
    pub events: Vec<EventView>,
    /// Pass as `before` for older events; null when there are none.
    pub next_before: Option<i64>,
}

/// What Provet is told after a hookup is stored.
#[derive(Debug, Serialize, ToSchema)]
pub struct HookupReceiptView {
    pub provet_id: i64,
    pub client_id: String,
    pub status: HookupOutcome,
}

impl From<broker_service::hookup::HookupReceipt> for HookupReceiptView {
    fn from(r: broker_service::hookup::HookupReceipt) -> Self {
        Self {
            provet_id: r.provet_id,
            client_id: r.client_id,
            status: r.outcome,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyView {
    pub id: i64,
    pub name: String,
    pub role: ApiKeyRole,
    /// Tenants the key may serve; null for all.
    pub tenants: Option<Vec<i64>>,
    /// The key's first characters, to recognise it.
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// `invalid`: the key exists but is refused on every route (see `invalid_reason`).
    pub state: ApiKeyState,
    /// Why the key is invalid; null otherwise.
    pub invalid_reason: Option<String>,
}

/// Whether a key can be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ApiKeyState {
    Active,
    Revoked,
    Invalid,
}

impl From<ApiKeyRecord> for ApiKeyView {
    fn from(k: ApiKeyRecord) -> Self {
        let defect = broker_service::api_keys::key_defect(k.role, k.tenants.as_deref());
        let state = match (&k.revoked_at, defect) {
            (Some(_), _) => ApiKeyState::Revoked,
            (None, Some(_)) => ApiKeyState::Invalid,
            (None, None) => ApiKeyState::Active,
        };
        Self {
            id: k.id,
            name: k.name,
            role: k.role,
            tenants: k.tenants,
            prefix: k.key_prefix,
            created_at: k.created_at,
            revoked_at: k.revoked_at,
            state,
            invalid_reason: defect.map(|d| d.reason().to_owned()),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyList {
    pub api_keys: Vec<ApiKeyView>,
}

/// A key just created; `key` is shown this once and never again.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedApiKey {
    #[serde(flatten)]
    pub api_key: ApiKeyView,
    pub key: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKey {
    /// 1 to 255 printable characters.
    #[schema(
        max_length = 255,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f][^\u0000-\u001f\u007f-\u009f]*$"
    )]
    pub name: String,
    /// `token` or `admin`.
    #[schema(value_type = ApiKeyRole)]
    pub role: String,
    /// Limit the key to these tenants; absent or null for all.
    #[serde(default, deserialize_with = "integers")]
    #[schema(value_type = Option<Vec<ProvetIdValue>>)]
    pub tenants: Option<Vec<i64>>,
}

/// A Provet ID as the API takes it: its schema only (1 to 2^53, as `ProvetId` checks).
pub struct ProvetIdValue;

impl utoipa::PartialSchema for ProvetIdValue {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
            .minimum(Some(1))
            .maximum(Some(broker_domain::tenant::MAX_PROVET_ID))
            .into()
    }
}

impl ToSchema for ProvetIdValue {}

/// Whether a float is an integer we take as one: within ±2^53, where every integer is exact
/// as a float (`7.0`, and `9007199254740992.0`, the largest provet_id). Beyond that a float
/// may be an integer rounded into range (`-9223372036854775809` reads as -2^63), so it is
/// refused rather than taken as another number.
pub(crate) fn is_i64(f: f64) -> bool {
    const EXACT: f64 = 9_007_199_254_740_992.0;
    f.fract() == 0.0 && (-EXACT..=EXACT).contains(&f)
}

/// A list of integers as JSON Schema counts them: `7` and `7.0` alike (a fraction is refused).
fn integers<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<i64>>, D::Error> {
    let numbers: Option<Vec<serde_json::Number>> = Deserialize::deserialize(d)?;
    numbers
        .map(|list| {
            list.iter()
                .map(|n| {
                    n.as_i64()
                        .or_else(|| n.as_f64().filter(|f| is_i64(*f)).map(|f| f as i64))
                        .ok_or_else(|| {
                            serde::de::Error::custom(format!("tenants: {n} is not an integer"))
                        })
                })
                .collect()
        })
        .transpose()
}

/// What an internal service may know about a tenant.
#[derive(Debug, Serialize, ToSchema)]
pub struct ServiceTenantView {
    pub provet_id: i64,
    pub status: TenantStatus,
    pub grant_type: Option<GrantType>,
    pub client_type: Option<ClientType>,
    pub departments: Vec<i64>,
    pub discovery: DiscoveryState,
    /// Whether the broker holds something it can get a token with.
    pub usable_grant: bool,
    /// The tenant's Provet REST API root: `token_url`'s origin plus `/{provet_id}/api/0.1/`.
    pub api_base_url: Option<String>,
    pub updated_at: DateTime<Utc>,
}

impl From<ServiceTenant> for ServiceTenantView {
    fn from(t: ServiceTenant) -> Self {
        let usable_grant = t.usable_grant;
        let view = TenantView::from(t.tenant);
        Self {
            api_base_url: view
                .client
                .as_ref()
                .and_then(|c| broker_domain::api_base_url(&c.token_url, view.provet_id)),
            updated_at: view.updated_at,
            provet_id: view.provet_id,
            status: view.status,
            grant_type: view.client.as_ref().map(|c| c.grant_type),
            client_type: view.client.as_ref().map(|c| c.client_type),
            departments: view.departments,
            discovery: view.discovery.state,
            usable_grant,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    pub status: &'static str,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Ready {
    pub status: &'static str,
    pub database: &'static str,
    pub pending_migrations: usize,
}

/// `POST /v1/tenants/{provet_id}/token`; every field optional.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequestBody {
    /// Space-separated scopes from `tokens.allowed_scopes` (default `restapi`).
    #[schema(
        max_length = 255,
        pattern = "^ *(restapi|openid)( +(restapi|openid))* *$"
    )]
    pub scope: Option<String>,
    /// The token must stay valid at least this many seconds (default 60, at most 36000).
    #[schema(maximum = 36000)]
    pub min_ttl: Option<u64>,
    /// Fetch a new token even if a cached one is valid (concurrent calls share one fetch).
    #[serde(default)]
    pub force_refresh: bool,
    /// For authorization-code tenants with several grants: whose.
    #[schema(pattern = "^[!-~]{1,255}$")]
    pub subject: Option<String>,
}

/// An access token for the tenant.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: String,
    /// Seconds from now until it expires.
    pub expires_in: i64,
    pub expires_at: DateTime<Utc>,
    pub scope: String,
    pub provet_id: i64,
}

/// `POST /v1/tenants/{provet_id}/authorizations`; both fields optional.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartAuthorization {
    /// Where to send the browser once connected; must start with one of
    /// `oauth.allowed_return_to`.
    pub return_to: Option<String>,
    /// Default `openid restapi` for OpenID Connect clients, else `restapi`.
    #[schema(
        max_length = 255,
        pattern = "^ *(restapi|openid)( +(restapi|openid))* *$"
    )]
    pub scope: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuthorizationCreated {
    pub authorize_url: String,
    pub expires_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::CreateApiKey;

    fn tenants(json: &str) -> Result<Option<Vec<i64>>, String> {
        serde_json::from_str::<CreateApiKey>(&format!(
            r#"{{"name": "svc", "role": "token", "tenants": {json}}}"#
        ))
        .map(|k| k.tenants)
        .map_err(|e| e.to_string())
    }

    #[test]
    fn tenant_ids_are_integers_as_json_schema_counts_them() {
        assert_eq!(tenants("[7, 7.0, 61]"), Ok(Some(vec![7, 7, 61])));
        assert_eq!(
            tenants("[9007199254740992, 9007199254740992.0]"),
            Ok(Some(vec![1 << 53, 1 << 53])),
            "the largest provet_id, in both spellings"
        );
        assert_eq!(tenants("null"), Ok(None));
        assert!(
            tenants("[7.5]")
                .unwrap_err()
                .contains("7.5 is not an integer")
        );
        assert!(tenants("[1e300]").is_err());
        assert!(
            tenants("[-9223372036854775809]").is_err(),
            "below i64: not rounded into range"
        );
        assert!(!super::is_i64(-9_223_372_036_854_775_808.0));
        assert!(!super::is_i64(9_007_199_254_740_994.0));
        assert!(super::is_i64(-9_007_199_254_740_992.0));
        assert!(!super::is_i64(f64::NAN));
    }
}
