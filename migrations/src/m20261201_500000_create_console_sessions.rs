//! Console sessions: one row per signed-in operator browser. Only a SHA-256 of the session
//! token is stored; the row names the admin key that signed in (a revoked or deleted key
//! ends its sessions) and holds the session's CSRF token.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ConsoleSessions::Table)
                    .col(big_pk_auto(ConsoleSessions::Id))
                    // Hex SHA-256 of the 32 random bytes in the cookie.
                    .col(string_len(ConsoleSessions::TokenHash, 64).unique_key())
                    .col(big_integer(ConsoleSessions::ApiKeyId))
                    .col(string_len(ConsoleSessions::CsrfToken, 64))
                    .col(timestamp_with_time_zone(ConsoleSessions::CreatedAt))
                    .col(timestamp_with_time_zone(ConsoleSessions::ExpiresAt))
                    .check(
                        Expr::col(ConsoleSessions::ExpiresAt)
                            .gt(Expr::col(ConsoleSessions::CreatedAt)),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(ConsoleSessions::Table, ConsoleSessions::ApiKeyId)
                            .to(ApiKeys::Table, ApiKeys::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("console_sessions_expiry")
                    .table(ConsoleSessions::Table)
                    .col(ConsoleSessions::ExpiresAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(ConsoleSessions::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum ConsoleSessions {
    Table,
    Id,
    TokenHash,
    ApiKeyId,
    CsrfToken,
    CreatedAt,
    ExpiresAt,
}

#[derive(DeriveIden)]
enum ApiKeys {
    Table,
    Id,
}
