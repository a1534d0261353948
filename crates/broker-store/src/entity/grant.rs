use broker_domain::GrantState;
use sea_orm::entity::prelude::*;

/// A clinic user's grant: the refresh token (sealed) that keeps the tenant connected.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Serialize, serde::Deserialize)]
#[sea_orm(table_name = "grants")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub provet_id: i64,
    #[sea_orm(primary_key, auto_increment = false)]
    pub client_id: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub subject: String,
    pub refresh_token: Option<String>,
    pub scope: String,
    pub state: GrantState,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub last_refresh_at: Option<DateTimeUtc>,
    pub last_error: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
