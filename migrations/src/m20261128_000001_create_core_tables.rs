//! The foundation: tenants, their OAuth clients and departments, every hookup delivery,
//! API keys, and broker-wide settings (the generated hookup secret).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Tenants::Table)
                    .col(big_integer(Tenants::ProvetId).primary_key())
                    .col(string_len(Tenants::Status, 16))
                    .col(timestamp_with_time_zone(Tenants::CreatedAt))
                    .col(timestamp_with_time_zone(Tenants::UpdatedAt))
                    .col(timestamp_with_time_zone_null(Tenants::RemovedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Clients::Table)
                    .col(big_pk_auto(Clients::Id))
                    .col(big_integer(Clients::ProvetId))
                    .col(string_len(Clients::ClientId, 255))
                    .col(text_null(Clients::ClientSecret))
                    .col(string_len(Clients::ClientType, 16))
                    .col(string_len(Clients::GrantType, 32))
                    .col(string_len_null(Clients::Algorithm, 16))
                    .col(text(Clients::TokenUrl))
                    .col(text(Clients::AuthorizeUrl))
                    .col(text_null(Clients::OpenidAutodiscoveryUrl))
                    .col(text(Clients::RedirectUris))
                    .col(boolean(Clients::IsCurrent))
                    .col(timestamp_with_time_zone_null(Clients::SupersededAt))
                    .col(string_len(Clients::CredentialsState, 16))
                    .col(timestamp_with_time_zone_null(Clients::CredentialsCheckedAt))
                    .col(text_null(Clients::CredentialsLastError))
                    .col(timestamp_with_time_zone(Clients::CreatedAt))
                    .col(timestamp_with_time_zone(Clients::UpdatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(Clients::Table, Clients::ProvetId)
                            .to(Tenants::Table, Tenants::ProvetId)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("clients_tenant_client_unique")
                    .table(Clients::Table)
                    .col(Clients::ProvetId)
                    .col(Clients::ClientId)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Departments::Table)
                    .col(big_integer(Departments::ProvetId))
                    .col(big_integer(Departments::DepartmentId))
                    .col(timestamp_with_time_zone(Departments::AddedAt))
                    .primary_key(
                        Index::create()
                            .col(Departments::ProvetId)
                            .col(Departments::DepartmentId),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(Departments::Table, Departments::ProvetId)
                            .to(Tenants::Table, Tenants::ProvetId)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(HookupDeliveries::Table)
                    .col(big_pk_auto(HookupDeliveries::Id))
                    .col(big_integer_null(HookupDeliveries::ProvetId))
                    .col(string_len_null(HookupDeliveries::ClientId, 255))
                    .col(timestamp_with_time_zone(HookupDeliveries::ReceivedAt))
                    .col(string_len(HookupDeliveries::Digest, 64))
                    .col(string_len(HookupDeliveries::Outcome, 16))
                    .col(text_null(HookupDeliveries::Payload))
                    .col(text_null(HookupDeliveries::Errors))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("hookup_deliveries_tenant")
                    .table(HookupDeliveries::Table)
                    .col(HookupDeliveries::ProvetId)
                    .col(HookupDeliveries::Id)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(ApiKeys::Table)
                    .col(big_pk_auto(ApiKeys::Id))
                    .col(string_len(ApiKeys::Name, 255))
                    .col(string_len(ApiKeys::Role, 16))
                    .col(text_null(ApiKeys::Tenants))
                    .col(string_len_uniq(ApiKeys::KeyHash, 64))
                    .col(string_len(ApiKeys::KeyPrefix, 16))
                    .col(timestamp_with_time_zone(ApiKeys::CreatedAt))
                    .col(timestamp_with_time_zone_null(ApiKeys::RevokedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Settings::Table)
                    .col(string_len(Settings::Name, 64).primary_key())
                    .col(text(Settings::Value))
                    .col(timestamp_with_time_zone(Settings::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            Settings::Table.into_iden(),
            ApiKeys::Table.into_iden(),
            HookupDeliveries::Table.into_iden(),
            Departments::Table.into_iden(),
            Clients::Table.into_iden(),
            Tenants::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Tenants {
    Table,
    ProvetId,
    Status,
    CreatedAt,
    UpdatedAt,
    RemovedAt,
}

#[derive(DeriveIden)]
enum Clients {
    Table,
    Id,
    ProvetId,
    ClientId,
    ClientSecret,
    ClientType,
    GrantType,
    Algorithm,
    TokenUrl,
    AuthorizeUrl,
    OpenidAutodiscoveryUrl,
    RedirectUris,
    IsCurrent,
    SupersededAt,
    CredentialsState,
    CredentialsCheckedAt,
    CredentialsLastError,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Departments {
    Table,
    ProvetId,
    DepartmentId,
    AddedAt,
}

#[derive(DeriveIden)]
enum HookupDeliveries {
    Table,
    Id,
    ProvetId,
    ClientId,
    ReceivedAt,
    Digest,
    Outcome,
    Payload,
    Errors,
}

#[derive(DeriveIden)]
enum ApiKeys {
    Table,
    Id,
    Name,
    Role,
    Tenants,
    KeyHash,
    KeyPrefix,
    CreatedAt,
    RevokedAt,
}

#[derive(DeriveIden)]
enum Settings {
    Table,
    Name,
    Value,
    UpdatedAt,
}
