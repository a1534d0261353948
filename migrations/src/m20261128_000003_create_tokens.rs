//! Access tokens handed out, sealed, so that a restart or another replica reuses a valid one.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Tokens::Table)
                    .col(big_integer(Tokens::ProvetId))
                    .col(string_len(Tokens::ClientId, 255))
                    .col(string_len(Tokens::Scope, 255))
                    // The grant's subject for authorization-code tenants; empty otherwise.
                    .col(string_len(Tokens::Subject, 255))
                    .col(text(Tokens::AccessToken))
                    .col(string_len(Tokens::TokenType, 32))
                    .col(timestamp_with_time_zone(Tokens::ExpiresAt))
                    .col(timestamp_with_time_zone(Tokens::ObtainedAt))
                    .primary_key(
                        Index::create()
                            .col(Tokens::ProvetId)
                            .col(Tokens::ClientId)
                            .col(Tokens::Scope)
                            .col(Tokens::Subject),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(Tokens::Table, Tokens::ProvetId)
                            .to(Tenants::Table, Tenants::ProvetId)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Tokens::Table).to_owned())
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
    ProvetId,
    ClientId,
    Scope,
    Subject,
    AccessToken,
    TokenType,
    ExpiresAt,
    ObtainedAt,
}
