//! provet-broker's storage: one `Store` over SQLite or PostgreSQL (sea-orm), with every
//! secret sealed by the `Keyring` before it reaches a row.
//!
//! `Store` is the cheap-to-clone entry point; it hands out one repository per aggregate:
//!
//! - `tenants.rs` (`store.tenants()`): tenants, their clients and departments, removal, and
//!   the hookup deliveries; `hookups.rs` persists a hookup as `broker_domain` decided it.
//! - `tokens.rs` (`store.tokens()`): cached access tokens, clients' credential states, and
//!   the cross-replica token lease; `token_leases.rs` takes and releases leases of
//!   concurrent callers in shared statements, and `group_commit.rs` writes concurrent token
//!   saves in one transaction.
//! - `grants.rs` (`store.grants()`): authorizations in flight and the grants they produce.
//! - `discovery.rs` (`store.discovery()`): OpenID Connect metadata, its schedule and leases.
//! - `api_keys.rs` (`store.api_keys()`): API keys (hashes only).
//! - `audit.rs` (`store.audit()`): the audit log of admin actions.
//! - `events.rs` (`store.events()`): the events outbox (`append` in the transaction of a
//!   change; the feed's safe cursor); `hookup_events.rs` and `state_events.rs` say which
//!   events a hookup and a state transition write.
//! - `webhooks.rs` (`store.webhooks()`): webhook endpoints (secrets sealed), the dispatcher's
//!   cursor, delivery rows and their claims.
//! - `service_tenants.rs`: the tenant list services page through (`GET /v1/tenants`).
//! - `fleet.rs` (`store.fleet()`): counts by state, for the gauges operators alert on.
//! - `console_sessions.rs` (`store.console_sessions()`): operators' console sessions (token
//!   hashes only); `console_queries.rs` (`store.console_queries()`): the console's overview.
//! - `settings.rs` (`store.settings()`): sealed settings, the key ids in use, key rotation.
//!
//! Underneath: `db.rs` (the two pools and SQLite's writer queue), `connect.rs` (opening them),
//! `crypto.rs` (AES-GCM sealing) with `crypto/aad.rs` (what binds each ciphertext to its row),
//! `entity/` (sea-orm entities), `records.rs` (the plain data repositories return).

mod api_keys;
pub mod audit;
mod connect;
mod console_queries;
mod console_sessions;
pub mod crypto;
mod db;
mod discovery;
mod entity;
pub mod events;
mod export;
mod fleet;
mod grants;
mod group_commit;
mod hookup_events;
mod hookups;
mod records;
mod service_tenants;
mod settings;
mod state_events;
mod tenants;
mod token_leases;
mod tokens;
pub mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use migration::{Migrator, MigratorTrait};
use sea_orm::{ConnectionTrait, Database, DbBackend, DbErr};

pub use api_keys::ApiKeys;
pub use audit::{Audit, AuditEntry, AuditQuery};
pub use console_queries::{
    Attention, AttentionItem, ConsoleQueries, FailingWebhook, FleetCount, Overview, RecentEvent,
};
pub use console_sessions::{ConsoleSessionRecord, ConsoleSessions};
pub use crypto::{CryptoError, Keyring, MasterKey};
pub use discovery::Discovery;
pub use fleet::{Fleet, FleetCounts};
pub use grants::{GrantChange, Grants};
pub use records::*;
pub use settings::Settings;
pub use tenants::Tenants;
pub use token_leases::{LeaseAttempt, TokenLease};
pub use tokens::Tokens;

use connect::{pool_options, prepare_sqlite_folder, restrict_file, sqlite_file, usage};
use db::Db;
pub use events::Events;
pub use export::{Dump, DumpCounts};
pub use service_tenants::ServiceTenantQuery;
pub use webhooks::Webhooks;

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
    /// `open_existing` found no database at the URL.
    #[error("the database does not exist")]
    NoDatabase,
    /// `open_existing` found migrations this build knows that have not run.
    #[error("the database is behind: {0} migration(s) pending")]
    PendingMigrations(usize),
    /// `import` found rows in the target.
    #[error("the target database is not empty: it holds {0}")]
    NotEmpty(String),
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

/// The broker's database and the keys that seal its secrets: the entry point that hands
/// out the repositories. Cloning is cheap (every part is shared).
///
/// Two pools over one database (see `db.rs`): on SQLite the cache pool's connections commit
/// without an fsync of their own (`synchronous=NORMAL`; the next full commit or checkpoint
/// makes them durable), on PostgreSQL with `synchronous_commit=off`. Both survive a crash
/// of the process. A request uses one pool at a time and never waits for a second
/// connection while it holds one.
#[derive(Clone)]
pub struct Store {
    db: Db,
    keyring: Arc<Keyring>,
    tenants: Tenants,
    tokens: Tokens,
    grants: Grants,
    discovery: Discovery,
    api_keys: ApiKeys,
    audit: Audit,
    settings: Settings,
    events: Events,
    webhooks: Webhooks,
    console_sessions: ConsoleSessions,
    console_queries: ConsoleQueries,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.db.backend())
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
        let main = Database::connect(pool_options(options, options.max_connections, true)).await?;
        let cache = Database::connect(pool_options(
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
                restrict_file(std::path::Path::new(&path))?;
            }
        }
        let db = Db::new(main, cache);
        Ok(Self {
            tenants: Tenants::new(db.clone(), keyring.clone()),
            tokens: Tokens::new(db.clone(), keyring.clone()),
            grants: Grants::new(db.clone(), keyring.clone()),
            discovery: Discovery::new(db.clone()),
            api_keys: ApiKeys::new(db.clone()),
            audit: Audit::new(db.clone()),
            settings: Settings::new(db.clone(), keyring.clone()),
            events: Events { db: db.clone() },
            webhooks: Webhooks {
                db: db.clone(),
                keyring: keyring.clone(),
            },
            console_sessions: ConsoleSessions::new(db.clone()),
            console_queries: ConsoleQueries::new(db.clone()),
            db,
            keyring,
        })
    }

    /// Connects to a database that must already exist and be migrated, creating nothing (no
    /// SQLite file or folder, no migrations table): for commands that only read.
    pub async fn open_existing(options: &StoreOptions, keyring: Arc<Keyring>) -> Result<Self> {
        if options.url.starts_with("sqlite:")
            && let Some(file) = sqlite_file(&options.url)
            && !file.is_file()
        {
            return Err(StoreError::NoDatabase);
        }
        let store = match Self::connect(options, keyring).await {
            Ok(store) => store,
            // PostgreSQL's "database ... does not exist" (SQLSTATE 3D000).
            Err(StoreError::Db(e)) if e.to_string().contains("does not exist") => {
                return Err(StoreError::NoDatabase);
            }
            Err(e) => return Err(e),
        };
        let pending = Migrator::get_pending_migrations_read_only(&store.db.main)
            .await?
            .len();
        if pending > 0 {
            store.clone().close().await;
            return Err(StoreError::PendingMigrations(pending));
        }
        Ok(store)
    }

    /// Tenants, clients, departments and hookup deliveries.
    pub fn tenants(&self) -> &Tenants {
        &self.tenants
    }

    /// Cached access tokens, credential states and token leases.
    pub fn tokens(&self) -> &Tokens {
        &self.tokens
    }

    /// Authorizations in flight and clinic users' grants.
    pub fn grants(&self) -> &Grants {
        &self.grants
    }

    /// Tenants' OpenID Connect metadata.
    pub fn discovery(&self) -> &Discovery {
        &self.discovery
    }

    pub fn api_keys(&self) -> &ApiKeys {
        &self.api_keys
    }

    /// The audit log of admin actions.
    pub fn audit(&self) -> &Audit {
        &self.audit
    }

    /// The events outbox, as the feed reads it.
    pub fn events(&self) -> &Events {
        &self.events
    }

    /// Webhook endpoints and their deliveries.
    pub fn webhooks(&self) -> &Webhooks {
        &self.webhooks
    }

    /// The console's sessions.
    pub fn console_sessions(&self) -> &ConsoleSessions {
        &self.console_sessions
    }

    /// The console's overview counts and attention lists.
    pub fn console_queries(&self) -> &ConsoleQueries {
        &self.console_queries
    }

    /// Sealed settings, the key ids in use, and key rotation.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Counts of tenants, credentials, discovery and grants by state (metrics).
    pub fn fleet(&self) -> Fleet<'_> {
        Fleet { db: &self.db }
    }

    /// The durable pool's and the cache pool's usage.
    pub fn pool_usage(&self) -> [(&'static str, PoolUsage); 2] {
        [
            ("main", usage(&self.db.main)),
            ("cache", usage(&self.db.cache)),
        ]
    }

    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    pub fn backend_name(&self) -> &'static str {
        match self.db.backend() {
            DbBackend::Postgres => "postgres",
            DbBackend::Sqlite => "sqlite",
            _ => "other",
        }
    }

    /// Applies every pending migration.
    pub async fn migrate(&self) -> Result<()> {
        Migrator::up(&self.db.main, None).await?;
        Ok(())
    }

    /// Whether the database answers, every migration this build knows has run, and every
    /// key that sealed a stored value is configured.
    pub async fn readiness(&self) -> Result<Readiness> {
        self.db.main.execute_unprepared("SELECT 1").await?;
        let pending = Migrator::get_pending_migrations(&self.db.main).await?.len();
        Ok(Readiness {
            pending_migrations: pending,
            missing_keys: self.settings.missing_key_ids_cached().await?,
        })
    }

    pub async fn close(self) {
        let _ = self.db.cache.close().await;
        let _ = self.db.main.close().await;
    }
}

/// What `/readyz` reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Readiness {
    pub pending_migrations: usize,
    /// Ids of keys that sealed stored values but are not configured.
    pub missing_keys: Vec<String>,
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod hardening_tests {
    use std::collections::BTreeSet;

    use super::*;

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
        assert!(first.settings().sealed_key_ids().await.unwrap().is_empty());
        first.migrate().await.unwrap();
        first
            .settings()
            .secret_setting_or_insert(
                "probe",
                || secrecy::SecretString::from("v"),
                #[allow(clippy::disallowed_methods)]
                chrono::Utc::now(),
            )
            .await
            .unwrap();
        let first_id = first.keyring().current_id().to_owned();
        assert_eq!(
            first.settings().sealed_key_ids().await.unwrap(),
            BTreeSet::from([first_id.clone()])
        );
        assert!(first.settings().missing_key_ids().await.unwrap().is_empty());
        let other = Store::connect(&options, Arc::new(Keyring::new(key(), vec![])))
            .await
            .unwrap();
        assert_eq!(
            other.settings().missing_key_ids().await.unwrap(),
            vec![first_id.clone()]
        );
        assert_eq!(other.readiness().await.unwrap().missing_keys, [first_id]);
    }
}
