use broker_domain::DiscoveryState;
use sea_orm::entity::prelude::*;

/// A tenant's OpenID Connect metadata and the state of fetching it.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Serialize, serde::Deserialize)]
#[sea_orm(table_name = "discovery")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub provet_id: i64,
    pub discovery_url: String,
    pub state: DiscoveryState,
    pub issuer: Option<String>,
    pub document: Option<String>,
    pub token_endpoint: Option<String>,
    pub authorization_endpoint: Option<String>,
    pub jwks_uri: Option<String>,
    pub userinfo_endpoint: Option<String>,
    pub revocation_endpoint: Option<String>,
    /// JSON array of token endpoint auth methods.
    pub auth_methods: Option<String>,
    pub jwks: Option<String>,
    pub jwks_fetched_at: Option<DateTimeUtc>,
    pub jwks_expires_at: Option<DateTimeUtc>,
    /// JSON array of strings.
    pub warnings: Option<String>,
    pub fetched_at: Option<DateTimeUtc>,
    pub last_attempt_at: Option<DateTimeUtc>,
    pub next_due_at: DateTimeUtc,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
