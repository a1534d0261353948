//! Webhooks: the endpoints events are pushed to (signing secret sealed), one delivery row
//! per event and endpoint with its retry state and claim, and the dispatcher's cursor in the
//! event feed.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Webhooks::Table)
                    .col(big_pk_auto(Webhooks::Id))
                    .col(text(Webhooks::Url))
                    // JSON array of event types, or ["*"].
                    .col(text(Webhooks::Events))
                    .col(text(Webhooks::Description).default(""))
                    // Sealed `whsec_...`, bound to the row's id.
                    .col(text(Webhooks::Secret))
                    .col(
                        string_len(Webhooks::State, 16)
                            .default("active")
                            .check(Expr::col(Webhooks::State).is_in(["active", "disabled"])),
                    )
                    .col(timestamp_with_time_zone(Webhooks::CreatedAt))
                    .col(timestamp_with_time_zone_null(Webhooks::DisabledAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(WebhookDeliveries::Table)
                    .col(big_pk_auto(WebhookDeliveries::Id))
                    .col(big_integer(WebhookDeliveries::WebhookId))
                    .col(big_integer(WebhookDeliveries::EventId))
                    .col(string_len(WebhookDeliveries::EventType, 64))
                    // The event's envelope as sent: the same body on every attempt.
                    .col(text(WebhookDeliveries::Payload))
                    .col(
                        string_len(WebhookDeliveries::State, 16)
                            .default("pending")
                            .check(Expr::col(WebhookDeliveries::State).is_in([
                                "pending",
                                "delivered",
                                "failed",
                            ])),
                    )
                    .col(integer(WebhookDeliveries::Attempts).default(0))
                    .col(timestamp_with_time_zone(WebhookDeliveries::CreatedAt))
                    .col(timestamp_with_time_zone(WebhookDeliveries::NextAttemptAt))
                    .col(timestamp_with_time_zone_null(
                        WebhookDeliveries::LastAttemptAt,
                    ))
                    .col(integer_null(WebhookDeliveries::LastStatus))
                    .col(string_len_null(WebhookDeliveries::LastError, 200))
                    // A claim outlives an attempt's timeout; the token makes the outcome's
                    // write a compare-and-set.
                    .col(timestamp_with_time_zone_null(
                        WebhookDeliveries::ClaimedUntil,
                    ))
                    .col(string_len_null(WebhookDeliveries::ClaimToken, 32))
                    .foreign_key(
                        ForeignKey::create()
                            .from(WebhookDeliveries::Table, WebhookDeliveries::WebhookId)
                            .to(Webhooks::Table, Webhooks::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("webhook_deliveries_once")
                    .table(WebhookDeliveries::Table)
                    .col(WebhookDeliveries::WebhookId)
                    .col(WebhookDeliveries::EventId)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("webhook_deliveries_due")
                    .table(WebhookDeliveries::Table)
                    .col(WebhookDeliveries::State)
                    .col(WebhookDeliveries::WebhookId)
                    .col(WebhookDeliveries::NextAttemptAt)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(WebhookCursor::Table)
                    .col(integer(WebhookCursor::Id).primary_key())
                    .col(big_integer(WebhookCursor::Xid).default(0))
                    .col(big_integer(WebhookCursor::EventId).default(0))
                    .to_owned(),
            )
            .await?;
        manager
            .exec_stmt(
                Query::insert()
                    .into_table(WebhookCursor::Table)
                    .columns([
                        WebhookCursor::Id,
                        WebhookCursor::Xid,
                        WebhookCursor::EventId,
                    ])
                    .values_panic([1.into(), 0.into(), 0.into()])
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(WebhookCursor::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(WebhookDeliveries::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(Webhooks::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum Webhooks {
    Table,
    Id,
    Url,
    Events,
    Description,
    Secret,
    State,
    CreatedAt,
    DisabledAt,
}

#[derive(DeriveIden)]
enum WebhookDeliveries {
    Table,
    Id,
    WebhookId,
    EventId,
    EventType,
    Payload,
    State,
    Attempts,
    CreatedAt,
    NextAttemptAt,
    LastAttemptAt,
    LastStatus,
    LastError,
    ClaimedUntil,
    ClaimToken,
}

#[derive(DeriveIden)]
enum WebhookCursor {
    Table,
    Id,
    Xid,
    EventId,
}
