use broker_domain::{ClientType, CredentialsState, GrantType, SigningAlgorithm};
use sea_orm::entity::prelude::*;

/// One OAuth client of a tenant. `client_secret` holds ciphertext (see `crypto`), never
/// plaintext; superseded clients keep their row for audit with the secret wiped.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Serialize, serde::Deserialize)]
#[sea_orm(table_name = "clients")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub provet_id: i64,
    pub client_id: String,
    pub client_secret: Option<String>,
    pub client_type: ClientType,
    pub grant_type: GrantType,
    pub algorithm: Option<SigningAlgorithm>,
    pub token_url: String,
    pub authorize_url: String,
    pub openid_autodiscovery_url: Option<String>,
    /// JSON array of strings.
    pub redirect_uris: String,
    pub is_current: bool,
    pub superseded_at: Option<DateTimeUtc>,
    pub credentials_state: CredentialsState,
    pub credentials_checked_at: Option<DateTimeUtc>,
    pub credentials_last_error: Option<String>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
