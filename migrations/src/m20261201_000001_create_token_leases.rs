//! Leases that let one replica at a time ask a provider for a token key, without holding a
//! database connection across the request; and the scope a provider actually granted.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(TokenLeases::Table)
                    // A digest of the token key (tenant, client, scope, subject).
                    .col(string_len(TokenLeases::LockKey, 64).primary_key())
                    .col(big_integer(TokenLeases::ProvetId))
                    .col(string_len(TokenLeases::Owner, 64))
                    // Increases with every new holder: a holder whose lease was taken over
                    // can tell.
                    .col(big_integer(TokenLeases::Fence))
                    .col(timestamp_with_time_zone(TokenLeases::ExpiresAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(TokenLeases::Table, TokenLeases::ProvetId)
                            .to(Tenants::Table, Tenants::ProvetId)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Tokens::Table)
                    .add_column(text_null(Tokens::GrantedScope))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Tokens::Table)
                    .drop_column(Tokens::GrantedScope)
                    .to_owned(),
            )
            .await?;
        manager
            .drop_table(Table::drop().table(TokenLeases::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum Tenants {
    Table,
    ProvetId,
}

#[derive(DeriveIden)]
enum Tokens {
    Table,
    GrantedScope,
}

#[derive(DeriveIden)]
enum TokenLeases {
    Table,
    LockKey,
    ProvetId,
    Owner,
    Fence,
    ExpiresAt,
}
