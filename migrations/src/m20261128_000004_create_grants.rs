//! Authorization-code tenants: pending authorizations (one-time `state`, PKCE verifier
//! sealed) and the grants they produce (refresh token sealed).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Authorizations::Table)
                    // SHA-256 of the state: the state itself is a bearer secret.
                    .col(string_len(Authorizations::StateHash, 64).primary_key())
                    .col(big_integer(Authorizations::ProvetId))
                    .col(string_len(Authorizations::ClientId, 255))
                    .col(text(Authorizations::PkceVerifier))
                    .col(string_len_null(Authorizations::Nonce, 128))
                    .col(string_len(Authorizations::Scope, 255))
                    .col(text(Authorizations::RedirectUri))
                    .col(text_null(Authorizations::ReturnTo))
                    .col(timestamp_with_time_zone(Authorizations::CreatedAt))
                    .col(timestamp_with_time_zone(Authorizations::ExpiresAt))
                    .col(timestamp_with_time_zone_null(Authorizations::UsedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(Authorizations::Table, Authorizations::ProvetId)
                            .to(Tenants::Table, Tenants::ProvetId)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Grants::Table)
                    .col(big_integer(Grants::ProvetId))
                    .col(string_len(Grants::ClientId, 255))
                    .col(string_len(Grants::Subject, 255))
                    .col(text_null(Grants::RefreshToken))
                    .col(string_len(Grants::Scope, 255))
                    .col(string_len(Grants::State, 32))
                    .col(timestamp_with_time_zone(Grants::CreatedAt))
                    .col(timestamp_with_time_zone(Grants::UpdatedAt))
                    .col(timestamp_with_time_zone_null(Grants::LastRefreshAt))
                    .col(text_null(Grants::LastError))
                    .primary_key(
                        Index::create()
                            .col(Grants::ProvetId)
                            .col(Grants::ClientId)
                            .col(Grants::Subject),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(Grants::Table, Grants::ProvetId)
                            .to(Tenants::Table, Tenants::ProvetId)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Grants::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(Authorizations::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum Tenants {
    Table,
    ProvetId,
}

#[derive(DeriveIden)]
enum Authorizations {
    Table,
    StateHash,
    ProvetId,
    ClientId,
    PkceVerifier,
    Nonce,
    Scope,
    RedirectUri,
    ReturnTo,
    CreatedAt,
    ExpiresAt,
    UsedAt,
}

#[derive(DeriveIden)]
enum Grants {
    Table,
    ProvetId,
    ClientId,
    Subject,
    RefreshToken,
    Scope,
    State,
    CreatedAt,
    UpdatedAt,
    LastRefreshAt,
    LastError,
}
