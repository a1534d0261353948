//! provet-broker's storage: one `Store` over SQLite or PostgreSQL (sea-orm), with every
//! secret sealed by the `Keyring` before it reaches a row.

pub mod crypto;
mod discovery_repo;
mod entity;
mod grant_repo;
mod records;
mod repo;
mod token_repo;

pub use token_repo::TokenLock;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use migration::{Migrator, MigratorTrait};
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr};
use tokio::sync::Mutex;

pub use crypto::{CryptoError, Keyring, MasterKey};
pub use records::*;

/// Everything that can go wrong in storage. Messages never contain secrets.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] DbErr),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
    #[error("cannot prepare the database: {0}")]
    Setup(String),
    #[error("timed out waiting for another replica's token request: {0}")]
    LockTimeout(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Database connection settings.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    pub url: String,
    pub max_connections: u32,
    pub connect_timeout: Duration,
    /// How long SQLite waits for another writer before giving up.
    pub busy_timeout: Duration,
}

/// The broker's database and the keys that seal its secrets.
#[derive(Clone)]
pub struct Store {
    db: DatabaseConnection,
    keyring: Arc<Keyring>,
    /// SQLite has one writer: writers queue here rather than on SQLITE_BUSY.
    sqlite_writer: Option<Arc<Mutex<()>>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.db.get_database_backend())
            .field("key", &self.keyring.current_id())
            .finish()
    }
}

impl Store {
    /// Connects; for SQLite creates the file (and its folder), turns on WAL, a busy timeout,
    /// full fsync on commit and foreign keys.
    pub async fn connect(options: &StoreOptions, keyring: Arc<Keyring>) -> Result<Self> {
        let is_sqlite = options.url.starts_with("sqlite:");
        if is_sqlite {
            prepare_sqlite_folder(&options.url)?;
        }
        let busy = options.busy_timeout;
        let mut connect = ConnectOptions::new(options.url.clone());
        connect
            .max_connections(options.max_connections)
            .min_connections(1)
            .connect_timeout(options.connect_timeout)
            .acquire_timeout(options.connect_timeout.max(busy))
            .sqlx_logging(false)
            .map_sqlx_sqlite_opts(move |o| {
                o.journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Full)
                    .busy_timeout(busy)
                    .foreign_keys(true)
                    .create_if_missing(true)
            });
        let db = Database::connect(connect).await?;
        Ok(Self {
            sqlite_writer: (db.get_database_backend() == DbBackend::Sqlite)
                .then(|| Arc::new(Mutex::new(()))),
            db,
            keyring,
        })
    }

    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    pub fn backend_name(&self) -> &'static str {
        match self.db.get_database_backend() {
            DbBackend::Postgres => "postgres",
            DbBackend::Sqlite => "sqlite",
            _ => "other",
        }
    }

    /// Applies every pending migration.
    pub async fn migrate(&self) -> Result<()> {
        Migrator::up(&self.db, None).await?;
        Ok(())
    }

    /// Whether the database answers and every migration this build knows has run.
    pub async fn readiness(&self) -> Result<Readiness> {
        self.db.execute_unprepared("SELECT 1").await?;
        let pending = Migrator::get_pending_migrations(&self.db).await?.len();
        Ok(Readiness {
            pending_migrations: pending,
        })
    }

    pub async fn close(self) {
        let _ = self.db.close().await;
    }
}

/// What `/readyz` reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Readiness {
    pub pending_migrations: usize,
}

/// `sqlite://data/broker.db?mode=rwc` -> create `data/` so the first run just works.
fn prepare_sqlite_folder(url: &str) -> Result<()> {
    let path = url
        .trim_start_matches("sqlite:")
        .trim_start_matches("//")
        .split('?')
        .next()
        .unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        return Ok(());
    }
    if let Some(parent) = Path::new(path)
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
    {
        std::fs::create_dir_all(parent).map_err(|e| {
            StoreError::Setup(format!("cannot create folder {}: {e}", parent.display()))
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
