//! What the store hands out: plain data, no sea-orm types, no secrets.

pub use broker_domain::HookupOutcome;
use broker_domain::{
    ApiKeyRole, ClientType, CredentialsState, DeliveryOutcome, DeliverySource, DiscoveryState,
    GrantState, GrantType, SigningAlgorithm, TenantStatus,
};
use chrono::{DateTime, Utc};
use serde_json::Value;

/// A tenant with its current client and departments.
#[derive(Clone, Debug, PartialEq)]
pub struct TenantRecord {
    pub provet_id: i64,
    pub status: TenantStatus,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub removed_at: Option<DateTime<Utc>>,
    pub departments: Vec<i64>,
    pub client: Option<ClientRecord>,
    /// Present while the tenant has a discovery URL.
    pub discovery: Option<DiscoveryRecord>,
    pub grants: Vec<GrantSummary>,
}

/// A grant as the admin view shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct GrantSummary {
    pub client_id: String,
    pub subject: String,
    pub scope: String,
    pub state: GrantState,
    pub created_at: DateTime<Utc>,
    pub last_refresh_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
}

/// A tenant's OAuth client, without its secret.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientRecord {
    pub client_id: String,
    pub client_type: ClientType,
    pub grant_type: GrantType,
    pub algorithm: Option<SigningAlgorithm>,
    pub token_url: String,
    pub authorize_url: String,
    pub openid_autodiscovery_url: Option<String>,
    pub redirect_uris: Vec<String>,
    pub has_secret: bool,
    pub credentials_state: CredentialsState,
    pub credentials_checked_at: Option<DateTime<Utc>>,
    pub credentials_last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One hookup delivery, redacted.
#[derive(Clone, Debug, PartialEq)]
pub struct DeliveryRecord {
    pub id: i64,
    pub provet_id: Option<i64>,
    pub client_id: Option<String>,
    pub received_at: DateTime<Utc>,
    pub digest: String,
    pub outcome: DeliveryOutcome,
    /// Who made the delivery.
    pub source: DeliverySource,
    pub payload: Option<Value>,
    pub errors: Option<Value>,
}

/// An API key as listed: never the key itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKeyRecord {
    pub id: i64,
    pub name: String,
    pub role: ApiKeyRole,
    pub tenants: Option<Vec<i64>>,
    pub key_prefix: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Which tenants to list.
#[derive(Clone, Debug, Default)]
pub struct TenantFilter {
    pub status: Option<TenantStatus>,
    pub grant_type: Option<GrantType>,
    /// A discovery state; `NotApplicable` lists the tenants without a discovery URL.
    pub discovery: Option<DiscoveryState>,
    /// The current client's credentials state.
    pub credentials: Option<CredentialsState>,
    /// Tenants with at least one grant in this state.
    pub grant_state: Option<GrantState>,
    /// Keyset pagination: tenants with a larger provet_id than this.
    pub after: Option<i64>,
    pub limit: u64,
}

/// What `rekey` did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RekeyReport {
    pub resealed: u64,
    pub already_current: u64,
}

/// A tenant's discovery state, as the admin view shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct DiscoveryRecord {
    pub provet_id: i64,
    pub discovery_url: String,
    pub state: DiscoveryState,
    pub issuer: Option<String>,
    pub token_endpoint: Option<String>,
    pub authorization_endpoint: Option<String>,
    pub jwks_uri: Option<String>,
    pub userinfo_endpoint: Option<String>,
    pub revocation_endpoint: Option<String>,
    pub auth_methods: Vec<String>,
    pub jwks: Option<Value>,
    pub jwks_fetched_at: Option<DateTime<Utc>>,
    /// From the JWKS answer's `Cache-Control: max-age`.
    pub jwks_expires_at: Option<DateTime<Utc>>,
    pub warnings: Vec<String>,
    pub fetched_at: Option<DateTime<Utc>>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub next_due_at: DateTime<Utc>,
    pub attempts: i32,
    pub last_error: Option<String>,
}

/// One claimed piece of discovery work.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscoveryJob {
    pub provet_id: i64,
    pub discovery_url: String,
    /// The hookup's endpoints, to compare with the discovered ones.
    pub token_url: Option<String>,
    pub authorize_url: Option<String>,
}

/// What a discovery run found, to store.
#[derive(Clone, Debug)]
pub struct DiscoverySuccess {
    pub issuer: String,
    pub document: Value,
    pub token_endpoint: Option<String>,
    pub authorization_endpoint: String,
    pub jwks_uri: String,
    pub userinfo_endpoint: Option<String>,
    pub revocation_endpoint: Option<String>,
    pub auth_methods: Vec<String>,
    pub jwks: Value,
    pub jwks_expires_at: Option<DateTime<Utc>>,
    pub warnings: Vec<String>,
}

/// Which tenants `schedule_discovery` makes due now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RerunFilter {
    Failed,
    /// `ok` tenants whose metadata is older than the given time.
    Stale(DateTime<Utc>),
    All,
}

/// Identifies one cached token: tenant, client, scope, and (authorization-code) grant subject.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TokenKey {
    pub provet_id: i64,
    pub client_id: String,
    pub scope: String,
    pub subject: String,
}

/// A stored access token, opened.
#[derive(Clone)]
pub struct StoredToken {
    pub access_token: secrecy::SecretString,
    pub token_type: String,
    pub expires_at: DateTime<Utc>,
    pub obtained_at: DateTime<Utc>,
    /// The scope the provider said it granted, when it said.
    pub granted_scope: Option<String>,
}

/// What the token broker needs to know about a tenant's current client.
#[derive(Clone)]
pub struct TokenClientRecord {
    pub provet_id: i64,
    pub tenant_status: TenantStatus,
    pub client_id: String,
    pub client_secret: Option<secrecy::SecretString>,
    pub client_type: ClientType,
    pub grant_type: GrantType,
    pub token_url: String,
    pub credentials_state: CredentialsState,
    pub credentials_checked_at: Option<DateTime<Utc>>,
    pub authorize_url: String,
    pub redirect_uris: Vec<String>,
    pub algorithm: Option<SigningAlgorithm>,
    /// From discovery: the token endpoint's advertised client authentication methods.
    pub auth_methods: Vec<String>,
    /// From discovery, when it succeeded.
    pub issuer: Option<String>,
    pub revocation_endpoint: Option<String>,
    pub discovery_state: Option<DiscoveryState>,
}

/// A new authorization to remember until its callback.
pub struct NewAuthorization<'a> {
    pub state_hash: &'a str,
    pub provet_id: i64,
    pub client_id: &'a str,
    pub pkce_verifier: &'a secrecy::SecretString,
    pub nonce: Option<&'a str>,
    pub scope: &'a str,
    pub redirect_uri: &'a str,
    pub return_to: Option<&'a str>,
    pub expires_at: DateTime<Utc>,
}

/// A started authorization, taken once by its callback.
pub struct AuthorizationRecord {
    pub provet_id: i64,
    pub client_id: String,
    pub pkce_verifier: secrecy::SecretString,
    pub nonce: Option<String>,
    pub scope: String,
    pub redirect_uri: String,
    pub return_to: Option<String>,
}

/// What taking a `state` found.
pub enum TakenAuthorization {
    Taken(AuthorizationRecord),
    Unknown,
    Expired,
    AlreadyUsed,
}

/// A grant, with its refresh token opened when asked for.
#[derive(Clone)]
pub struct GrantRecord {
    pub provet_id: i64,
    pub client_id: String,
    pub subject: String,
    pub refresh_token: Option<secrecy::SecretString>,
    /// The refresh token as stored (sealed): what a refresh compares before it writes.
    pub refresh_seal: Option<String>,
    pub scope: String,
    pub state: GrantState,
    pub created_at: DateTime<Utc>,
    pub last_refresh_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
}
