//! provet-broker's storage: one `Store` over SQLite or PostgreSQL (sea-orm), with every
//! secret sealed by the `Keyring` before it reaches a row.

pub mod crypto;
mod discovery_repo;
mod entity;
pub mod events;
mod grant_repo;
mod hookup_events;
mod records;
mod repo;
mod service_tenants;
mod state_events;
mod token_repo;
pub mod webhooks;

pub use token_repo::{LeaseAttempt, TokenLease};

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use migration::{Migrator, MigratorTrait};
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr, Statement,
};
use tokio::sync::Mutex;

pub use crypto::{CryptoError, Keyring, MasterKey};
pub use records::*;
pub use service_tenants::ServiceTenantQuery;

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

impl StoreError {
    /// The database is not answering (no connection could be had, or it broke), as opposed
    /// to refusing one statement.
    pub fn is_database_away(&self) -> bool {
        matches!(self, Self::Db(DbErr::ConnectionAcquire(_) | DbErr::Conn(_)))
    }

    /// The same failure again, for each of several callers that shared one attempt.
    pub fn duplicate(&self) -> Self {
        match self {
            Self::Db(e) => Self::Db(DbErr::Custom(e.to_string())),
            other => Self::Corrupt(other.to_string()),
        }
    }
}

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
    /// The last answer of `missing_key_ids`, for readiness probes.
    key_check: Arc<std::sync::Mutex<Option<KeyCheck>>>,
    /// Events this process committed: long polls wait on it.
    event_tap: Arc<events::EventTap>,
}

/// Every column that holds sealed values, by table.
const SEALED_COLUMNS: [(&str, &str); 6] = [
    ("clients", "client_secret"),
    ("tokens", "access_token"),
    ("grants", "refresh_token"),
    ("authorizations", "pkce_verifier"),
    ("settings", "value"),
    ("webhooks", "secret"),
];

/// When `missing_key_ids` last looked, and what it found.
type KeyCheck = (Instant, Vec<String>);

/// How long readiness trusts its last look at the key ids in use.
const KEY_CHECK_TTL: Duration = Duration::from_secs(5);

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
        let sqlite_file = if is_sqlite {
            prepare_sqlite_folder(&options.url)?
        } else {
            None
        };
        let db = Database::connect(pool_options(options, options.max_connections, true)).await?;
        let cache_db = Database::connect(pool_options(
            options,
            options.cache_connections.max(1),
            false,
        ))
        .await?;
        if let Some(file) = &sqlite_file {
            // WAL mode is on once connected: the -wal and -shm files exist now. SQLite gives
            // them the database file's mode already; make sure of it for older files.
            for suffix in ["", "-wal", "-shm"] {
                let mut path = file.clone().into_os_string();
                path.push(suffix);
                restrict_file(Path::new(&path))?;
            }
        }
        Ok(Self {
            sqlite_writer: (db.get_database_backend() == DbBackend::Sqlite)
                .then(|| Arc::new(Mutex::new(()))),
            db,
            cache_db,
            keyring,
            key_check: Arc::new(std::sync::Mutex::new(None)),
            event_tap: Arc::default(),
        })
    }

    /// The durable pool's and the cache pool's usage.
    pub fn pool_usage(&self) -> [(&'static str, PoolUsage); 2] {
        [("main", usage(&self.db)), ("cache", usage(&self.cache_db))]
    }

    /// The ids of every key that sealed a stored value: one query per sealed column, each
    /// reading only the distinct `v1:<key id>:` prefixes. Tables not created yet hold none.
    pub async fn sealed_key_ids(&self) -> Result<BTreeSet<String>> {
        let backend = self.db.get_database_backend();
        let mut ids = BTreeSet::new();
        for (table, column) in SEALED_COLUMNS {
            if !self.table_exists(table).await? {
                continue;
            }
            let sql = format!(
                "SELECT DISTINCT substr({column}, 1, {len}) FROM {table} \
                 WHERE {column} IS NOT NULL AND {column} <> ''",
                len = crypto::KEY_PREFIX_LEN
            );
            for row in self
                .db
                .query_all_raw(Statement::from_string(backend, sql))
                .await?
            {
                let prefix: Option<String> = row.try_get_by_index(0)?;
                if let Some(id) = prefix.as_deref().and_then(crypto::key_id_of) {
                    ids.insert(id.to_owned());
                }
            }
        }
        Ok(ids)
    }

    /// The ids of keys that sealed stored values and are not configured (neither the current
    /// key nor a previous one): those values cannot be opened.
    pub async fn missing_key_ids(&self) -> Result<Vec<String>> {
        Ok(self
            .sealed_key_ids()
            .await?
            .into_iter()
            .filter(|id| !self.keyring.has_key(id))
            .collect())
    }

    /// `missing_key_ids`, looked up at most every few seconds (readiness probes come often).
    async fn missing_key_ids_cached(&self) -> Result<Vec<String>> {
        if let Ok(cached) = self.key_check.lock()
            && let Some((at, missing)) = cached.as_ref()
            && at.elapsed() < KEY_CHECK_TTL
        {
            return Ok(missing.clone());
        }
        let missing = self.missing_key_ids().await?;
        if let Ok(mut cached) = self.key_check.lock() {
            *cached = Some((Instant::now(), missing.clone()));
        }
        Ok(missing)
    }

    async fn table_exists(&self, table: &str) -> Result<bool> {
        let backend = self.db.get_database_backend();
        let sql = match backend {
            DbBackend::Postgres => format!(
                "SELECT COUNT(*) FROM information_schema.tables \
                 WHERE table_schema = current_schema() AND table_name = '{table}'"
            ),
            _ => format!(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '{table}'"
            ),
        };
        let count: i64 = match self
            .db
            .query_one_raw(Statement::from_string(backend, sql))
            .await?
        {
            Some(row) => row.try_get_by_index(0)?,
            None => 0,
        };
        Ok(count > 0)
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

    /// Whether the database answers, every migration this build knows has run, and every
    /// key that sealed a stored value is configured.
    pub async fn readiness(&self) -> Result<Readiness> {
        self.db.execute_unprepared("SELECT 1").await?;
        let pending = Migrator::get_pending_migrations(&self.db).await?.len();
        Ok(Readiness {
            pending_migrations: pending,
            missing_keys: self.missing_key_ids_cached().await?,
        })
    }

    pub async fn close(self) {
        let _ = self.cache_db.close().await;
        let _ = self.db.close().await;
    }
}

/// What `/readyz` reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Readiness {
    pub pending_migrations: usize,
    /// Ids of keys that sealed stored values but are not configured.
    pub missing_keys: Vec<String>,
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

/// `sqlite://data/broker.db?mode=rwc` -> create `data/` (mode 0700) and the database file
/// (mode 0600) so that the first run just works and nobody else can read the secrets'
/// ciphertexts, the tokens' metadata or the API key hashes. An existing file is made 0600;
/// an existing folder is left as the operator made it. Returns the file's path.
fn prepare_sqlite_folder(url: &str) -> Result<Option<PathBuf>> {
    let path = url
        .trim_start_matches("sqlite:")
        .trim_start_matches("//")
        .split('?')
        .next()
        .unwrap_or_default();
    if path.is_empty() || path == ":memory:" || path.starts_with("file::memory:") {
        return Ok(None);
    }
    let path = Path::new(path);
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && !parent.exists()
    {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            builder.mode(0o700);
        }
        builder.create(parent).map_err(|e| {
            StoreError::Setup(format!("cannot create folder {}: {e}", parent.display()))
        })?;
        restrict(parent, 0o700)?;
    }
    // A read-only URL must not create anything.
    if url.contains("mode=ro") {
        return Ok(Some(path.to_path_buf()));
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path).map_err(|e| {
        StoreError::Setup(format!(
            "cannot create the database {}: {e}",
            path.display()
        ))
    })?;
    restrict_file(path)?;
    Ok(Some(path.to_path_buf()))
}

/// Makes an existing file readable by its owner only (nothing when it does not exist).
fn restrict_file(path: &Path) -> Result<()> {
    if path.exists() {
        restrict(path, 0o600)?;
    }
    Ok(())
}

#[cfg(unix)]
fn restrict(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|e| {
        StoreError::Setup(format!(
            "cannot restrict the permissions of {}: {e}",
            path.display()
        ))
    })
}

#[cfg(not(unix))]
fn restrict(_path: &Path, _mode: u32) -> Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod hardening_tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn the_sqlite_folder_and_file_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("a/b");
        let url = format!("sqlite://{}/x.db?mode=rwc", folder.display());
        let file = prepare_sqlite_folder(&url).unwrap().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&folder), 0o700);
        assert_eq!(mode(&file), 0o600);
        // An existing, too open file is tightened.
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        prepare_sqlite_folder(&url).unwrap();
        assert_eq!(mode(&file), 0o600);
    }

    #[tokio::test]
    async fn key_ids_in_use_are_found_and_missing_ones_named() {
        let dir = tempfile::tempdir().unwrap();
        let key = || MasterKey::from_base64(&MasterKey::generate_base64()).unwrap();
        let options = StoreOptions {
            url: format!("sqlite://{}/k.db?mode=rwc", dir.path().display()),
            max_connections: 2,
            cache_connections: 1,
            connect_timeout: Duration::from_secs(5),
            acquire_timeout: Duration::from_secs(5),
            busy_timeout: Duration::from_secs(5),
        };
        let first = Store::connect(&options, Arc::new(Keyring::new(key(), vec![])))
            .await
            .unwrap();
        // Before migrations there are no tables and so no sealed values.
        assert!(first.sealed_key_ids().await.unwrap().is_empty());
        first.migrate().await.unwrap();
        first
            .secret_setting_or_insert(
                "probe",
                || secrecy::SecretString::from("v"),
                chrono::Utc::now(),
            )
            .await
            .unwrap();
        let first_id = first.keyring().current_id().to_owned();
        assert_eq!(
            first.sealed_key_ids().await.unwrap(),
            BTreeSet::from([first_id.clone()])
        );
        assert!(first.missing_key_ids().await.unwrap().is_empty());
        let other = Store::connect(&options, Arc::new(Keyring::new(key(), vec![])))
            .await
            .unwrap();
        assert_eq!(
            other.missing_key_ids().await.unwrap(),
            vec![first_id.clone()]
        );
        assert_eq!(other.readiness().await.unwrap().missing_keys, [first_id]);
    }
}
