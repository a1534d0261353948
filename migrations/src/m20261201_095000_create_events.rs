//! The events outbox: every change worth acting on, written in the transaction of the change.
//! A per-tenant counter on `tenants` numbers each tenant's events (`sequence`).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Events::Table)
                    // SQLite: AUTOINCREMENT, so that an id is never reused once pruned.
                    .col(big_pk_auto(Events::Id))
                    // PostgreSQL: the writing transaction's id (`pg_current_xact_id()`), the
                    // feed's visibility bound; 0 on SQLite, which has one writer.
                    .col(big_integer(Events::Xid).default(0))
                    .col(big_integer(Events::ProvetId))
                    .col(big_integer(Events::Sequence))
                    .col(string_len(Events::EventType, 64))
                    .col(timestamp_with_time_zone(Events::OccurredAt))
                    // JSON object; never a secret.
                    .col(text(Events::Data))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("events_feed_order")
                    .table(Events::Table)
                    .col(Events::Xid)
                    .col(Events::Id)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("events_occurred_at")
                    .table(Events::Table)
                    .col(Events::OccurredAt)
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Tenants::Table)
                    .add_column(big_integer(Tenants::EventSequence).default(0))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Tenants::Table)
                    .drop_column(Tenants::EventSequence)
                    .to_owned(),
            )
            .await?;
        manager
            .drop_table(Table::drop().table(Events::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum Events {
    Table,
    Id,
    Xid,
    ProvetId,
    Sequence,
    EventType,
    OccurredAt,
    Data,
}

#[derive(DeriveIden)]
enum Tenants {
    Table,
    EventSequence,
}
