//! The connections every repository shares: the durable pool, the cache pool, and SQLite's
//! queue of writers.

use std::sync::Arc;

use sea_orm::{
    DatabaseConnection, DatabaseTransaction, DbBackend, SqliteTransactionMode, TransactionOptions,
    TransactionTrait,
};
use tokio::sync::{Mutex, MutexGuard};

use broker_domain::EventType;

use crate::Result;
use crate::events::EventTap;

/// Two pools over one database: `main` for writes that must survive a power cut before they
/// are acknowledged (hookups, grants, keys), and `cache` for what can be fetched again if
/// lost (cached access tokens, credential states, token leases).
#[derive(Clone)]
pub(crate) struct Db {
    pub(crate) main: DatabaseConnection,
    pub(crate) cache: DatabaseConnection,
    /// SQLite has one writer: writers queue here rather than on SQLITE_BUSY.
    sqlite_writer: Option<Arc<Mutex<()>>>,
    /// Events this process committed: long polls wait on it, metrics count it.
    pub(crate) event_tap: Arc<EventTap>,
}

/// A write transaction, holding the SQLite writer lock for its lifetime.
pub(crate) struct WriteTx<'a> {
    pub(crate) tx: DatabaseTransaction,
    _writer: Option<MutexGuard<'a, ()>>,
}

impl Db {
    pub(crate) fn new(main: DatabaseConnection, cache: DatabaseConnection) -> Self {
        Self {
            sqlite_writer: (main.get_database_backend() == DbBackend::Sqlite)
                .then(|| Arc::new(Mutex::new(()))),
            main,
            cache,
            event_tap: Arc::default(),
        }
    }

    /// After a commit that wrote events of these types.
    pub(crate) fn published(&self, types: &[EventType]) {
        self.event_tap.published(types);
    }

    /// A transaction on the durable pool that writes (`BEGIN IMMEDIATE` on SQLite).
    pub(crate) async fn begin_write(&self) -> Result<WriteTx<'_>> {
        let writer = self.sqlite_write_lock().await;
        let tx = self
            .main
            .begin_with_options(TransactionOptions {
                sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                ..Default::default()
            })
            .await?;
        Ok(WriteTx {
            tx,
            _writer: writer,
        })
    }

    /// A write transaction for state that can be derived again if a power cut loses its
    /// last commits, such as webhook claims and delivery outcomes (losing one means a
    /// delivery is sent again: at least once). On SQLite it runs on the cache pool (no fsync
    /// of its own beside the hookups' one writer); on PostgreSQL on the durable pool, where
    /// measurements showed the cache pool's few connections (shared with token saves) cost
    /// more than the commit they save.
    pub(crate) async fn begin_derived_write(&self) -> Result<WriteTx<'_>> {
        let writer = self.sqlite_write_lock().await;
        let pool = if self.is_postgres() {
            &self.main
        } else {
            &self.cache
        };
        let tx = pool
            .begin_with_options(TransactionOptions {
                sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                ..Default::default()
            })
            .await?;
        Ok(WriteTx {
            tx,
            _writer: writer,
        })
    }

    /// For single statements outside `begin_write`: on SQLite, queue behind other writers.
    pub(crate) async fn sqlite_write_lock(&self) -> Option<MutexGuard<'_, ()>> {
        match &self.sqlite_writer {
            Some(lock) => Some(lock.lock().await),
            None => None,
        }
    }

    pub(crate) fn backend(&self) -> DbBackend {
        self.main.get_database_backend()
    }

    pub(crate) fn is_postgres(&self) -> bool {
        self.backend() == DbBackend::Postgres
    }
}
