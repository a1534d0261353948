//! The audit log: every admin action through the API, the CLI or the console, with who did
//! it, to what, and how it ended. Rows are only ever appended; no secret is stored.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The actions of `broker_domain::AuditAction`, spelt as there.
const ACTIONS: [&str; 17] = [
    "tenant.register",
    "tenant.remove",
    "tenant.verify",
    "tenant.discovery",
    "discovery.rerun",
    "grant.revoke",
    "tenant.connect_link",
    "api_key.create",
    "api_key.revoke",
    "webhook.create",
    "webhook.delete",
    "webhook.retry",
    "console.sign_in",
    "console.sign_out",
    "keys.rekey",
    "data.import",
    "data.export",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(AuditLog::Table)
                    .col(big_pk_auto(AuditLog::Id))
                    .col(timestamp_with_time_zone(AuditLog::At))
                    .col(
                        string_len(AuditLog::ActorKind, 16).check(
                            Expr::col(AuditLog::ActorKind).is_in(["api_key", "cli", "console"]),
                        ),
                    )
                    .col(string_len(AuditLog::ActorName, 200))
                    .col(
                        string_len(AuditLog::Action, 32)
                            .check(Expr::col(AuditLog::Action).is_in(ACTIONS)),
                    )
                    .col(big_integer_null(AuditLog::ProvetId))
                    .col(string_len_null(AuditLog::Target, 200))
                    .col(
                        string_len(AuditLog::Outcome, 16)
                            .check(Expr::col(AuditLog::Outcome).is_in(["ok", "refused", "failed"])),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("audit_log_by_action")
                    .table(AuditLog::Table)
                    .col(AuditLog::Action)
                    .col(AuditLog::Id)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(AuditLog::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum AuditLog {
    Table,
    Id,
    At,
    ActorKind,
    ActorName,
    Action,
    ProvetId,
    Target,
    Outcome,
}
