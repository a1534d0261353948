//! Opening the pools: SQLite's file and folder (private), its pragmas, and pool sizes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{ConnectOptions, DatabaseConnection};

use crate::{PoolUsage, Result, StoreError, StoreOptions};

/// Prepared statements kept per PostgreSQL connection (sqlx's default is 100).
const STATEMENT_CACHE: usize = 1024;

pub(crate) fn pool_options(options: &StoreOptions, max: u32, durable: bool) -> ConnectOptions {
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
    connect.map_sqlx_postgres_opts(move |o| {
        // Batched writes (hookups, token saves and leases) have one statement text per
        // batch size: room for all of them, so that none is parsed and planned again.
        let o = o.statement_cache_capacity(STATEMENT_CACHE);
        if durable {
            o
        } else {
            o.options([("synchronous_commit", "off")])
        }
    });
    connect
}

pub(crate) fn usage(db: &DatabaseConnection) -> PoolUsage {
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
pub(crate) fn prepare_sqlite_folder(url: &str) -> Result<Option<PathBuf>> {
    let Some(path) = sqlite_file(url) else {
        return Ok(None);
    };
    let path = path.as_path();
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

/// The file a `sqlite:` URL names, or `None` for an in-memory database.
pub(crate) fn sqlite_file(url: &str) -> Option<PathBuf> {
    let path = url
        .trim_start_matches("sqlite:")
        .trim_start_matches("//")
        .split('?')
        .next()
        .unwrap_or_default();
    if path.is_empty() || path == ":memory:" || path.starts_with("file::memory:") {
        return None;
    }
    Some(PathBuf::from(path))
}

/// Makes an existing file readable by its owner only (nothing when it does not exist).
pub(crate) fn restrict_file(path: &Path) -> Result<()> {
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
mod tests {
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
}
