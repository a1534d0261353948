use sea_orm::entity::prelude::*;

/// An endpoint events are pushed to. `secret` is the sealed `whsec_...` signing secret.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Serialize, serde::Deserialize)]
#[sea_orm(table_name = "webhooks")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub url: String,
    /// JSON array of event types, or `["*"]`.
    pub events: String,
    pub description: String,
    pub secret: String,
    /// `active` or `disabled`.
    pub state: broker_domain::WebhookState,
    pub created_at: DateTimeUtc,
    pub disabled_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
