use sea_orm::entity::prelude::*;

/// One event of the outbox, written in the transaction of the change it describes.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "events")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    /// The writing transaction's id on PostgreSQL, 0 on SQLite.
    pub xid: i64,
    pub provet_id: i64,
    pub sequence: i64,
    pub event_type: String,
    pub occurred_at: DateTimeUtc,
    /// A JSON object.
    pub data: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
