use broker_domain::{DeliveryOutcome, DeliverySource};
use sea_orm::entity::prelude::*;

/// One POST to the hookup URL that passed the secret check: accepted or rejected.
/// `payload` is the redacted message (JSON), `errors` the field errors (JSON) of a rejection.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Serialize, serde::Deserialize)]
#[sea_orm(table_name = "hookup_deliveries")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub provet_id: Option<i64>,
    pub client_id: Option<String>,
    pub received_at: DateTimeUtc,
    pub digest: String,
    pub outcome: DeliveryOutcome,
    pub source: DeliverySource,
    pub payload: Option<String>,
    pub errors: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
