//! OpenID Connect discovery state per tenant, with a lease so that one replica works on a
//! tenant at a time (a crashed replica's lease expires and another takes over).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Discovery::Table)
                    .col(big_integer(Discovery::ProvetId).primary_key())
                    .col(text(Discovery::DiscoveryUrl))
                    .col(string_len(Discovery::State, 16))
                    .col(text_null(Discovery::Issuer))
                    .col(text_null(Discovery::Document))
                    .col(text_null(Discovery::TokenEndpoint))
                    .col(text_null(Discovery::AuthorizationEndpoint))
                    .col(text_null(Discovery::JwksUri))
                    .col(text_null(Discovery::UserinfoEndpoint))
                    .col(text_null(Discovery::RevocationEndpoint))
                    .col(text_null(Discovery::AuthMethods))
                    .col(text_null(Discovery::Jwks))
                    .col(timestamp_with_time_zone_null(Discovery::JwksFetchedAt))
                    .col(timestamp_with_time_zone_null(Discovery::JwksExpiresAt))
                    .col(text_null(Discovery::Warnings))
                    .col(timestamp_with_time_zone_null(Discovery::FetchedAt))
                    .col(timestamp_with_time_zone_null(Discovery::LastAttemptAt))
                    .col(timestamp_with_time_zone(Discovery::NextDueAt))
                    .col(integer(Discovery::Attempts))
                    .col(text_null(Discovery::LastError))
                    .col(string_len_null(Discovery::LeaseOwner, 64))
                    .col(timestamp_with_time_zone_null(Discovery::LeaseExpiresAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(Discovery::Table, Discovery::ProvetId)
                            .to(Tenants::Table, Tenants::ProvetId)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("discovery_due")
                    .table(Discovery::Table)
                    .col(Discovery::NextDueAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Discovery::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum Tenants {
    Table,
    ProvetId,
}

#[derive(DeriveIden)]
#[allow(clippy::enum_variant_names)]
enum Discovery {
    Table,
    ProvetId,
    DiscoveryUrl,
    State,
    Issuer,
    Document,
    TokenEndpoint,
    AuthorizationEndpoint,
    JwksUri,
    UserinfoEndpoint,
    RevocationEndpoint,
    AuthMethods,
    Jwks,
    JwksFetchedAt,
    JwksExpiresAt,
    Warnings,
    FetchedAt,
    LastAttemptAt,
    NextDueAt,
    Attempts,
    LastError,
    LeaseOwner,
    LeaseExpiresAt,
}
