//! Every state column accepts only its values: a CHECK constraint per column, so that a
//! misspelt state fails at the database instead of being stored.
//!
//! PostgreSQL adds the constraints in place. SQLite cannot add a CHECK to an existing table,
//! so each table is rebuilt (the documented procedure: foreign keys off on one connection,
//! create the new table, copy, drop, rename, recreate the indexes, check the foreign keys,
//! commit), keeping every row. The values are spelled here, not taken from the domain: a
//! migration records the schema as it was when it ran.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::sqlx::{self, Row, SqliteConnection};
use sea_orm_migration::sea_orm::{ConnectionTrait, DatabaseExecutor, DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Table, column, allowed values. NULL passes a CHECK, so nullable columns stay nullable.
const CHECKS: [(&str, &str, &[&str]); 10] = [
    ("tenants", "status", &["active", "removed"]),
    ("clients", "client_type", &["confidential", "public"]),
    (
        "clients",
        "grant_type",
        &["authorization_code", "client_credentials"],
    ),
    ("clients", "algorithm", &["HS256", "RS256"]),
    (
        "clients",
        "credentials_state",
        &["unchecked", "ok", "rejected"],
    ),
    ("discovery", "state", &["pending", "ok", "failed"]),
    (
        "grants",
        "state",
        &["active", "reauthorization_required", "revoked"],
    ),
    (
        "hookup_deliveries",
        "outcome",
        &["registered", "updated", "unchanged", "rejected"],
    ),
    ("hookup_deliveries", "source", &["hookup", "admin", "cli"]),
    ("api_keys", "role", &["token", "admin"]),
];

fn constraint_name(table: &str, column: &str) -> String {
    format!("{table}_{column}_check")
}

/// `CONSTRAINT "<name>" CHECK ("<column>" IN ('a', 'b'))`.
fn constraint(table: &str, column: &str, values: &[&str]) -> String {
    let values: Vec<String> = values.iter().map(|v| format!("'{v}'")).collect();
    format!(
        "CONSTRAINT \"{}\" CHECK (\"{column}\" IN ({}))",
        constraint_name(table, column),
        values.join(", ")
    )
}

/// The tables with constrained columns, each once, in `CHECKS` order.
fn tables() -> Vec<&'static str> {
    let mut tables: Vec<&str> = Vec::new();
    for (table, _, _) in CHECKS {
        if !tables.contains(&table) {
            tables.push(table);
        }
    }
    tables
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        if db.get_database_backend() == DbBackend::Postgres {
            for (table, column, values) in CHECKS {
                let sql = format!(
                    "ALTER TABLE \"{table}\" ADD {}",
                    constraint(table, column, values)
                );
                db.execute_unprepared(&sql).await?;
            }
            return Ok(());
        }
        rebuild_sqlite(manager, true).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        if db.get_database_backend() == DbBackend::Postgres {
            for (table, column, _) in CHECKS {
                let sql = format!(
                    "ALTER TABLE \"{table}\" DROP CONSTRAINT \"{}\"",
                    constraint_name(table, column)
                );
                db.execute_unprepared(&sql).await?;
            }
            return Ok(());
        }
        rebuild_sqlite(manager, false).await
    }
}

fn sqlx_err(e: sqlx::Error) -> DbErr {
    DbErr::Migration(format!("rebuilding a table for its CHECK constraints: {e}"))
}

/// Rebuilds every constrained table with (`add`) or without its CHECK constraints, on one
/// connection with foreign keys off (dropping `tenants` would otherwise cascade).
async fn rebuild_sqlite(manager: &SchemaManager<'_>, add: bool) -> Result<(), DbErr> {
    let DatabaseExecutor::Connection(db) = manager.get_connection() else {
        return Err(DbErr::Migration(
            "the SQLite CHECK migration needs a connection, not a transaction".into(),
        ));
    };
    let mut conn = db
        .get_sqlite_connection_pool()
        .acquire()
        .await
        .map_err(sqlx_err)?;
    sqlx::query("PRAGMA foreign_keys = OFF")
        .execute(&mut *conn)
        .await
        .map_err(sqlx_err)?;
    let result = rebuild_all(&mut conn, add).await;
    let restored = sqlx::query("PRAGMA foreign_keys = ON")
        .execute(&mut *conn)
        .await
        .map_err(sqlx_err);
    result.and(restored.map(|_| ()))
}

async fn rebuild_all(conn: &mut SqliteConnection, add: bool) -> Result<(), DbErr> {
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut *conn)
        .await
        .map_err(sqlx_err)?;
    let mut result = Ok(());
    for table in tables() {
        result = rebuild_table(conn, table, add).await;
        if result.is_err() {
            break;
        }
    }
    if result.is_ok() {
        // Foreign keys were off: make sure every reference still holds before committing.
        let broken = sqlx::query("PRAGMA foreign_key_check")
            .fetch_all(&mut *conn)
            .await
            .map_err(sqlx_err)?;
        if !broken.is_empty() {
            result = Err(DbErr::Migration(format!(
                "{} rows would break a foreign key",
                broken.len()
            )));
        }
    }
    let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
    sqlx::query(end)
        .execute(&mut *conn)
        .await
        .map_err(sqlx_err)?;
    result
}

async fn rebuild_table(conn: &mut SqliteConnection, table: &str, add: bool) -> Result<(), DbErr> {
    let create: String =
        sqlx::query("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?")
            .bind(table)
            .fetch_one(&mut *conn)
            .await
            .map_err(sqlx_err)?
            .try_get(0)
            .map_err(sqlx_err)?;
    let indexes: Vec<String> = sqlx::query(
        "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL",
    )
    .bind(table)
    .fetch_all(&mut *conn)
    .await
    .map_err(sqlx_err)?
    .iter()
    .map(|row| row.try_get(0))
    .collect::<Result<_, _>>()
    .map_err(sqlx_err)?;
    let Some(definition) = new_definition(table, &create, add) else {
        return Ok(());
    };
    let new = format!("{table}__rebuilt");
    let statements = [
        format!("DROP TABLE IF EXISTS \"{new}\""),
        format!("CREATE TABLE \"{new}\" {definition}"),
        format!("INSERT INTO \"{new}\" SELECT * FROM \"{table}\""),
        format!("DROP TABLE \"{table}\""),
        format!("ALTER TABLE \"{new}\" RENAME TO \"{table}\""),
    ];
    for sql in statements.iter().chain(indexes.iter()) {
        // Built from this migration's constants and the schema's own text, never from input.
        sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
            .execute(&mut *conn)
            .await
            .map_err(sqlx_err)?;
    }
    Ok(())
}

/// The table's column list with its CHECK constraints added (or removed), or `None` when
/// there is nothing to change.
fn new_definition(table: &str, create: &str, add: bool) -> Option<String> {
    let open = create.find('(')?;
    let close = create.rfind(')')?;
    let mut body = create[open + 1..close].to_owned();
    for (t, column, values) in CHECKS.iter().filter(|(t, _, _)| *t == table) {
        let clause = format!(", {}", constraint(t, column, values));
        let present = body.contains(&clause);
        if add && !present {
            body.push_str(&clause);
        } else if !add && present {
            body = body.replace(&clause, "");
        }
    }
    (body != create[open + 1..close]).then(|| format!("({body})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constraints_are_appended_once_and_removed_again() {
        let create = r#"CREATE TABLE "api_keys" ( "id" integer NOT NULL PRIMARY KEY, "role" varchar(16) NOT NULL )"#;
        let added = new_definition("api_keys", create, true).unwrap_or_default();
        assert_eq!(
            added,
            r#"( "id" integer NOT NULL PRIMARY KEY, "role" varchar(16) NOT NULL , CONSTRAINT "api_keys_role_check" CHECK ("role" IN ('token', 'admin')))"#
        );
        let rebuilt = format!("CREATE TABLE \"api_keys\" {added}");
        assert_eq!(new_definition("api_keys", &rebuilt, true), None);
        assert_eq!(
            new_definition("api_keys", &rebuilt, false).as_deref(),
            Some(&create[create.find('(').unwrap_or(0)..])
        );
    }
}
