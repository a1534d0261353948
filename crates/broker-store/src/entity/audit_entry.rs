use broker_domain::{ActorKind, AuditAction, AuditOutcome};
use sea_orm::entity::prelude::*;

/// One admin action: who, what, to which tenant or object, and how it ended. Never a secret.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "audit_log")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub at: DateTimeUtc,
    pub actor_kind: ActorKind,
    pub actor_name: String,
    pub action: AuditAction,
    pub provet_id: Option<i64>,
    pub target: Option<String>,
    pub outcome: AuditOutcome,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
