//! Who made a hookup delivery: Provet's hookup POST (every delivery so far), an operator
//! through the admin API, or the CLI.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(HookupDeliveries::Table)
                    .add_column(string_len(HookupDeliveries::Source, 16).default("hookup"))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(HookupDeliveries::Table)
                    .drop_column(HookupDeliveries::Source)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum HookupDeliveries {
    Table,
    Source,
}
