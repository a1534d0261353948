//! provet-broker's schema. One migration per change, named `mYYYYMMDD_HHMMSS_<verb>_<noun>`;
//! the same migrations run on SQLite and PostgreSQL.

pub use sea_orm_migration::prelude::*;

mod m20261128_000001_create_core_tables;
mod m20261128_000002_create_discovery;
mod m20261128_000003_create_tokens;
mod m20261128_000004_create_grants;
mod m20261201_000001_create_token_leases;
mod m20261201_090000_add_delivery_source;
mod m20261201_095000_create_events;
mod m20261201_100000_check_states;
mod m20261201_300000_create_webhooks;
mod m20261201_400000_create_audit_log;
mod m20261201_500000_create_console_sessions;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261128_000001_create_core_tables::Migration),
            Box::new(m20261128_000002_create_discovery::Migration),
            Box::new(m20261128_000003_create_tokens::Migration),
            Box::new(m20261128_000004_create_grants::Migration),
            Box::new(m20261201_000001_create_token_leases::Migration),
            Box::new(m20261201_090000_add_delivery_source::Migration),
            Box::new(m20261201_095000_create_events::Migration),
            Box::new(m20261201_100000_check_states::Migration),
            Box::new(m20261201_300000_create_webhooks::Migration),
            Box::new(m20261201_400000_create_audit_log::Migration),
            Box::new(m20261201_500000_create_console_sessions::Migration),
        ]
    }
}
