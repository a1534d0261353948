//! Opening the database: for the daemon and the commands that write (keys checked, a
//! generated key written), or read-only for the commands that only read.

use std::sync::Arc;

use anyhow::{Context, bail};
use broker_store::{Store, StoreError, StoreOptions};

use super::keys::{GeneratedKey, keyring};
use crate::config::Settings;

/// The pools' options from `[database]`.
pub fn store_options(settings: &Settings) -> StoreOptions {
    StoreOptions {
        url: settings.database.url.clone(),
        max_connections: settings.database.max_connections,
        cache_connections: settings.database.cache_connections,
        connect_timeout: settings.database.connect_timeout,
        acquire_timeout: settings.database.acquire_timeout,
        busy_timeout: settings.database.busy_timeout,
    }
}

/// Opens the database (without migrating). Refuses when stored secrets were sealed with a
/// key that is not configured (a lost or wrong master key): every token would fail. A key
/// is generated (first run without configuration) only over a database with nothing sealed.
pub async fn open_store(settings: &Settings) -> anyhow::Result<Store> {
    let (keyring, generated) = keyring(settings)?;
    let store = Store::connect(&store_options(settings), Arc::new(keyring))
        .await
        .with_context(|| {
            format!(
                "cannot open the database ({})",
                redact_url(&settings.database.url)
            )
        })?;
    refuse_unopenable(&store, generated.as_ref()).await?;
    if let Some(key) = generated {
        key.persist()?;
    }
    Ok(store)
}

/// Opens the database for a command that only reads (`tenants list|show`, `api-key list`,
/// `export`, `hookup-url`): it must exist and be migrated. Creates nothing: no SQLite file or
/// folder, no migrations table, no master key (without one configured or generated before,
/// an in-memory key that is never written opens a database with nothing sealed, and a
/// database holding secrets is refused as `open_store` refuses it).
pub async fn open_existing_store(settings: &Settings) -> anyhow::Result<Store> {
    let (keyring, _never_written) = keyring(settings)?;
    let url = redact_url(&settings.database.url);
    let store = match Store::open_existing(&store_options(settings), Arc::new(keyring)).await {
        Ok(store) => store,
        Err(StoreError::NoDatabase) => bail!(
            "there is no database at {url}: this command only reads. Run `provet-broker migrate` (or start the daemon) to create it, or set database.url"
        ),
        Err(StoreError::PendingMigrations(n)) => bail!(
            "the database at {url} is behind this version ({n} migration(s) pending): this command only reads. Run `provet-broker migrate` first"
        ),
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!("cannot open the database ({url})")));
        }
    };
    refuse_unopenable(&store, None).await?;
    Ok(store)
}

/// Refuses a database holding secrets sealed with a key that is not configured; with a key
/// about to be generated (`generated`), the refusal says none is written.
async fn refuse_unopenable(store: &Store, generated: Option<&GeneratedKey>) -> anyhow::Result<()> {
    let missing = store
        .settings()
        .missing_key_ids()
        .await
        .context("reading which keys sealed the stored secrets")?;
    if missing.is_empty() {
        return Ok(());
    }
    let ids = missing.join(", ");
    match generated {
        Some(key) => bail!(
            "refusing to generate a new master key into {}: the database holds secrets sealed with key id(s) {ids}, \
             which no configured key opens. Restore that key file, or set secrets.master_key (or secrets.previous_keys) to that key",
            key.path.display()
        ),
        None => bail!(
            "the database holds secrets sealed with key id(s) {ids}, which are not configured \
             (the current key is {}): set secrets.master_key to that key, or add it to secrets.previous_keys",
            store.keyring().current_id()
        ),
    }
}

/// A database URL without its password, for messages.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}
