use sea_orm::entity::prelude::*;

/// A started authorization: its one-time state (hashed), PKCE verifier (sealed), nonce.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "authorizations")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub state_hash: String,
    pub provet_id: i64,
    pub client_id: String,
    pub pkce_verifier: String,
    pub nonce: Option<String>,
    pub scope: String,
    pub redirect_uri: String,
    pub return_to: Option<String>,
    pub created_at: DateTimeUtc,
    pub expires_at: DateTimeUtc,
    pub used_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
