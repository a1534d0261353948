use sea_orm::entity::prelude::*;

/// One event's delivery to one webhook, with its retry state and claim.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "webhook_deliveries")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub webhook_id: i64,
    /// `events.id`.
    pub event_id: i64,
    pub event_type: String,
    /// The envelope sent (JSON).
    pub payload: String,
    /// `pending`, `delivered` or `failed`.
    pub state: broker_domain::DeliveryState,
    pub attempts: i32,
    pub created_at: DateTimeUtc,
    pub next_attempt_at: DateTimeUtc,
    pub last_attempt_at: Option<DateTimeUtc>,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    pub claimed_until: Option<DateTimeUtc>,
    pub claim_token: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
