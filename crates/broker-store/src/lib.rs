//! provet-broker's storage: one `Store` over SQLite or PostgreSQL (sea-orm), with every
//! secret sealed by the `Keyring` before it reaches a row.

pub mod crypto;
mod discovery_repo;
mod entity;
mod grant_repo;
mod records;
mod repo;
mod token_repo;

pub use token_repo::{LeaseAttempt, TokenLease};

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
    /// Connections of the second pool, for cache-grade writes (tokens, credential states,
    /// leases) that need no fsync of their own.
    pub cache_connections: u32,
    pub connect_timeout: Duration,
    /// How long a caller waits for a pooled connection.
    pub acquire_timeout: Duration,
    /// How long SQLite waits for another writer before giving up.
    pub busy_timeout: Duration,
}

/// How busy a connection pool is, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolUsage {
    pub size: u32,
    pub idle: u32,
    pub max: u32,
}

/// The broker's database and the keys that seal its secrets.
///
/// Two pools over one database: `db` for writes that must survive a power cut before they
/// are acknowledged (hookups, grants, keys), and `cache_db` for what can be fetched again
/// if lost (cached access tokens, credential states, token leases): on SQLite its
/// connections commit without an fsync of their own (`synchronous=NORMAL`; the next full
/// commit or checkpoint makes them durable), on PostgreSQL with `synchronous_commit=off`.
/// Both survive a crash of the process. A request uses one pool at a time and never waits
/// for a second connection while it holds one.
#[derive(Clone)]
pub struct Store {
    db: DatabaseConnection,
    cache_db: DatabaseConnection,
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
    /// full fsync on commit (relaxed on the cache pool) and foreign keys.
    pub async fn connect(options: &StoreOptions, keyring: Arc<Keyring>) -> Result<Self> {
        let is_sqlite = options.url.starts_with("sqlite:");
        if is_sqlite {
            prepare_sqlite_folder(&options.url)?;
        }
        let db = Database::connect(pool_options(options, options.max_connections, true)).await?;
        let cache_db = Database::connect(pool_options(
            options,
            options.cache_connections.max(1),
            false,
        ))
        .await?;
        Ok(Self {
            sqlite_writer: (db.get_database_backend() == DbBackend::Sqlite)
                .then(|| Arc::new(Mutex::new(()))),
            db,
            cache_db,
            keyring,
        })
    }

    /// The durable pool's and the cache pool's usage.
    pub fn pool_usage(&self) -> [(&'static str, PoolUsage); 2] {
        [("main", usage(&self.db)), ("cache", usage(&self.cache_db))]
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
        let _ = self.cache_db.close().await;
        let _ = self.db.close().await;
    }
}

/// What `/readyz` reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Readiness {
    pub pending_migrations: usize,
}

fn pool_options(options: &StoreOptions, max: u32, durable: bool) -> ConnectOptions {
    let busy = options.busy_timeout;
    let mut connect = ConnectOptions::new(options.url.clone());
    connect
        .max_connections(max)
        .min_connections(1)
        .connect_timeout(options.connect_timeout)
        .acquire_timeout(options.acquire_timeout.max(Duration::from_millis(100)))
        .sqlx_logging(false)
        .map_sqlx_sqlite_opts(move |o| {
            o.journal_mode(SqliteJournalMode::Wal)
                .synchronous(if durable {
                    SqliteSynchronous::Full
                } else {
                    SqliteSynchronous::Normal
                })
                .busy_timeout(busy)
                .foreign_keys(true)
                .create_if_missing(true)
        });
    if !durable {
        connect.map_sqlx_postgres_opts(|o| o.options([("synchronous_commit", "off")]));
    }
    connect
}

fn usage(db: &DatabaseConnection) -> PoolUsage {
    use sea_orm::DatabaseConnectionType as C;
    let (size, idle, max) = match &db.inner {
        C::SqlxSqlitePoolConnection(_) => {
            let p = db.get_sqlite_connection_pool();
            (p.size(), p.num_idle(), p.options().get_max_connections())
        }
        C::SqlxPostgresPoolConnection(_) => {
            let p = db.get_postgres_connection_pool();
            (p.size(), p.num_idle(), p.options().get_max_connections())
        }
        _ => (0, 0, 0),
    };
    PoolUsage {
        size,
        idle: u32::try_from(idle).unwrap_or(u32::MAX),
        max,
    }
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
