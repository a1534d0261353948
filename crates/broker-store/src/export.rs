//! The whole broker as one value (`Dump`), for `provet-broker export` and `import`: every
//! tenant, client, department, discovery record, grant, cached token, API key, setting,
//! webhook, hookup delivery and audit entry, with each secret opened with the store's keys and sealed
//! again under the export's own key (and the reverse on import).
//!
//! Left out, on purpose: the events outbox and webhook deliveries (the feed's positions are
//! positions in one database: followers start again from the tenant list after a move),
//! authorizations in flight (minutes long; a clinic user starts again) and token leases
//! (held for seconds). Tenants keep their event counter, so `sequence` keeps increasing.
//!
//! In the dump each sealed value's associated data is the store's own (`crypto/aad.rs`)
//! behind `export.`, so a value moved to another record of the file does not open either.

use std::collections::BTreeMap;

use sea_orm::sea_query::{Alias, Expr, ExprTrait, Query};
use sea_orm::{
    AccessMode, ActiveModelTrait, ConnectionTrait, DatabaseTransaction, DbBackend, EntityTrait,
    IntoActiveModel, IsolationLevel, PaginatorTrait, QueryOrder, Statement, TransactionTrait,
};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

use crate::crypto::aad;
use crate::entity::{
    api_key, audit_entry, client, department, discovery, grant, hookup_delivery, setting, tenant,
    token, webhook,
};
use crate::records::TokenKey;
use crate::{Keyring, Result, Store, StoreError};

/// Rows per INSERT: well under SQLite's and PostgreSQL's bound on bound parameters.
const INSERT_CHUNK: usize = 100;

/// Every exported row, secrets sealed under the export's key. Opaque outside the store:
/// serialise it, count it, import it.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Dump {
    tenants: Vec<TenantRow>,
    clients: Vec<client::Model>,
    departments: Vec<department::Model>,
    discovery: Vec<discovery::Model>,
    grants: Vec<grant::Model>,
    tokens: Vec<token::Model>,
    api_keys: Vec<api_key::Model>,
    settings: Vec<setting::Model>,
    webhooks: Vec<webhook::Model>,
    hookup_deliveries: Vec<hookup_delivery::Model>,
    audit_log: Vec<audit_entry::Model>,
}

/// A tenant and its event counter (a column the entity does not map).
#[derive(Debug, Serialize, Deserialize)]
struct TenantRow {
    #[serde(flatten)]
    tenant: tenant::Model,
    event_sequence: i64,
}

/// How many rows of each kind a dump holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DumpCounts {
    pub tenants: usize,
    pub clients: usize,
    pub departments: usize,
    pub discovery: usize,
    pub grants: usize,
    pub tokens: usize,
    pub api_keys: usize,
    pub settings: usize,
    pub webhooks: usize,
    pub hookup_deliveries: usize,
    pub audit_log: usize,
}

impl Dump {
    pub fn counts(&self) -> DumpCounts {
        DumpCounts {
            tenants: self.tenants.len(),
            clients: self.clients.len(),
            departments: self.departments.len(),
            discovery: self.discovery.len(),
            grants: self.grants.len(),
            tokens: self.tokens.len(),
            api_keys: self.api_keys.len(),
            settings: self.settings.len(),
            webhooks: self.webhooks.len(),
            hookup_deliveries: self.hookup_deliveries.len(),
            audit_log: self.audit_log.len(),
        }
    }

    /// Opens every sealed value with `from` and seals it again with `to`, each under the
    /// associated data `from_aad` / `to_aad` make of the store's own.
    fn reseal(
        &mut self,
        from: &Keyring,
        from_aad: impl Fn(&str) -> String,
        to: &Keyring,
        to_aad: impl Fn(&str) -> String,
    ) -> Result<()> {
        let move_value = |row_aad: String, value: &mut String| -> Result<()> {
            let plain = from.open(&from_aad(&row_aad), value)?;
            *value = to.seal(&to_aad(&row_aad), plain.expose_secret());
            Ok(())
        };
        for c in &mut self.clients {
            if let Some(secret) = c.client_secret.as_mut().filter(|s| !s.is_empty()) {
                move_value(aad::client_secret(c.provet_id, &c.client_id), secret)?;
            }
        }
        for g in &mut self.grants {
            if let Some(refresh) = g.refresh_token.as_mut().filter(|s| !s.is_empty()) {
                move_value(
                    aad::refresh_token(g.provet_id, &g.client_id, &g.subject),
                    refresh,
                )?;
            }
        }
        for t in &mut self.tokens {
            let key = TokenKey {
                provet_id: t.provet_id,
                client_id: t.client_id.clone(),
                scope: t.scope.clone(),
                subject: t.subject.clone(),
            };
            move_value(aad::access_token(&key), &mut t.access_token)?;
        }
        for s in &mut self.settings {
            move_value(aad::setting(&s.name), &mut s.value)?;
        }
        for w in &mut self.webhooks {
            move_value(aad::webhook_secret(w.id), &mut w.secret)?;
        }
        Ok(())
    }
}

/// The associated data of a value in a dump: the store's, marked as the export's.
fn export_aad(row: &str) -> String {
    format!("export.{row}")
}

/// The associated data of an API key's hash in a dump (the store keeps it plain).
fn key_hash_aad(id: i64) -> String {
    format!("export.api_keys.key_hash:{id}")
}

/// Every exported row, read in `tx`, secrets as stored.
async fn read_dump(tx: &DatabaseTransaction) -> Result<Dump> {
    Ok(Dump {
        tenants: tenant_rows(tx).await?,
        clients: client::Entity::find()
            .order_by_asc(client::Column::Id)
            .all(tx)
            .await?,
        departments: department::Entity::find()
            .order_by_asc(department::Column::ProvetId)
            .order_by_asc(department::Column::DepartmentId)
            .all(tx)
            .await?,
        discovery: discovery_rows(tx).await?,
        grants: grant::Entity::find()
            .order_by_asc(grant::Column::ProvetId)
            .all(tx)
            .await?,
        tokens: token::Entity::find()
            .order_by_asc(token::Column::ProvetId)
            .all(tx)
            .await?,
        api_keys: api_key::Entity::find()
            .order_by_asc(api_key::Column::Id)
            .all(tx)
            .await?,
        settings: setting::Entity::find()
            .order_by_asc(setting::Column::Name)
            .all(tx)
            .await?,
        webhooks: webhook::Entity::find()
            .order_by_asc(webhook::Column::Id)
            .all(tx)
            .await?,
        hookup_deliveries: hookup_delivery::Entity::find()
            .order_by_asc(hookup_delivery::Column::Id)
            .all(tx)
            .await?,
        audit_log: audit_entry::Entity::find()
            .order_by_asc(audit_entry::Column::Id)
            .all(tx)
            .await?,
    })
}

/// The tenants with their event sequences (a column the entity leaves out).
async fn tenant_rows(tx: &DatabaseTransaction) -> Result<Vec<TenantRow>> {
    let sequences: BTreeMap<i64, i64> = tx
        .query_all_raw(Statement::from_string(
            tx.get_database_backend(),
            "SELECT provet_id, event_sequence FROM tenants",
        ))
        .await?
        .into_iter()
        .map(|row| Ok((row.try_get_by_index(0)?, row.try_get_by_index(1)?)))
        .collect::<Result<_, sea_orm::DbErr>>()?;
    Ok(tenant::Entity::find()
        .order_by_asc(tenant::Column::ProvetId)
        .all(tx)
        .await?
        .into_iter()
        .map(|tenant| TenantRow {
            event_sequence: sequences.get(&tenant.provet_id).copied().unwrap_or(0),
            tenant,
        })
        .collect())
}

/// The discovery rows without their leases: a lease names a process of the old deployment.
async fn discovery_rows(tx: &DatabaseTransaction) -> Result<Vec<discovery::Model>> {
    Ok(discovery::Entity::find()
        .order_by_asc(discovery::Column::ProvetId)
        .all(tx)
        .await?
        .into_iter()
        .map(|d| discovery::Model {
            lease_owner: None,
            lease_expires_at: None,
            ..d
        })
        .collect())
}

impl Store {
    /// Reads every exported row in one snapshot and seals its secrets under `seal`.
    pub async fn export(&self, seal: &Keyring) -> Result<Dump> {
        let tx = self.snapshot().await?;
        let mut dump = read_dump(&tx).await?;
        tx.commit().await?;
        dump.reseal(&self.keyring, |a| a.to_owned(), seal, export_aad)?;
        // Only a SHA-256 of each API key is stored, and a hash of a 256-bit random key
        // gives nothing to guess from; sealed all the same, so that a stolen export file
        // does not even tell which keys exist.
        for k in &mut dump.api_keys {
            k.key_hash = seal.seal(&key_hash_aad(k.id), &k.key_hash);
        }
        Ok(dump)
    }

    /// A transaction that sees one state of every table: on PostgreSQL a read-only
    /// repeatable-read transaction (read committed would let a concurrent hookup land between
    /// two tables); a SQLite read transaction in WAL mode is one already.
    async fn snapshot(&self) -> Result<DatabaseTransaction> {
        Ok(if self.db.is_postgres() {
            self.db
                .main
                .begin_with_config(
                    Some(IsolationLevel::RepeatableRead),
                    Some(AccessMode::ReadOnly),
                )
                .await?
        } else {
            self.db.main.begin().await?
        })
    }

    /// Loads a dump into this (migrated, empty) database in one transaction, its secrets
    /// opened with `seal` and sealed again under this store's key. Every secret is opened
    /// before anything is written, so a wrong key or a tampered file writes nothing.
    pub async fn import(&self, mut dump: Dump, seal: &Keyring) -> Result<DumpCounts> {
        dump.reseal(seal, export_aad, &self.keyring, |a| a.to_owned())?;
        for k in &mut dump.api_keys {
            let hash = seal.open(&key_hash_aad(k.id), &k.key_hash)?;
            k.key_hash = hash.expose_secret().to_owned();
        }
        let counts = dump.counts();
        let write = self.db.begin_write().await?;
        let tx = &write.tx;
        refuse_non_empty(tx).await?;
        let sequences: Vec<(i64, i64)> = dump
            .tenants
            .iter()
            .map(|t| (t.tenant.provet_id, t.event_sequence))
            .collect();
        insert_all::<tenant::Entity>(tx, dump.tenants.into_iter().map(|t| t.tenant)).await?;
        for (provet_id, sequence) in sequences.into_iter().filter(|(_, s)| *s != 0) {
            let update = Query::update()
                .table(Alias::new("tenants"))
                .value(Alias::new("event_sequence"), sequence)
                .and_where(Expr::col(Alias::new("provet_id")).eq(provet_id))
                .to_owned();
            tx.execute(&update).await?;
        }
        insert_all::<client::Entity>(tx, dump.clients).await?;
        insert_all::<department::Entity>(tx, dump.departments).await?;
        insert_all::<discovery::Entity>(tx, dump.discovery).await?;
        insert_all::<grant::Entity>(tx, dump.grants).await?;
        insert_all::<token::Entity>(tx, dump.tokens).await?;
        insert_all::<api_key::Entity>(tx, dump.api_keys).await?;
        insert_all::<setting::Entity>(tx, dump.settings).await?;
        insert_all::<webhook::Entity>(tx, dump.webhooks).await?;
        insert_all::<hookup_delivery::Entity>(tx, dump.hookup_deliveries).await?;
        insert_all::<audit_entry::Entity>(tx, dump.audit_log).await?;
        if tx.get_database_backend() == DbBackend::Postgres {
            // Rows came with their ids: move each id sequence past them. (SQLite's
            // AUTOINCREMENT follows explicit ids by itself.)
            for table in [
                "clients",
                "api_keys",
                "webhooks",
                "hookup_deliveries",
                "audit_log",
            ] {
                tx.execute_unprepared(&format!(
                    "SELECT setval(pg_get_serial_sequence('{table}', 'id'), \
                     COALESCE((SELECT MAX(id) FROM {table}), 0) + 1, false)"
                ))
                .await?;
            }
        }
        write.tx.commit().await?;
        Ok(counts)
    }
}

/// Refuses a target that holds anything an import would write (or that a daemon wrote:
/// a stored hookup secret, an API key), naming what it found.
async fn refuse_non_empty(tx: &impl ConnectionTrait) -> Result<()> {
    let found = [
        ("tenant(s)", tenant::Entity::find().count(tx).await?),
        ("client(s)", client::Entity::find().count(tx).await?),
        ("API key(s)", api_key::Entity::find().count(tx).await?),
        ("setting(s)", setting::Entity::find().count(tx).await?),
        ("webhook(s)", webhook::Entity::find().count(tx).await?),
        (
            "hookup delivery(ies)",
            hookup_delivery::Entity::find().count(tx).await?,
        ),
        (
            "audit entry(ies)",
            audit_entry::Entity::find().count(tx).await?,
        ),
    ];
    let held: Vec<String> = found
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(what, n)| format!("{n} {what}"))
        .collect();
    if held.is_empty() {
        Ok(())
    } else {
        Err(StoreError::NotEmpty(held.join(", ")))
    }
}

/// Inserts rows as they are (ids included), a chunk per statement.
async fn insert_all<E>(
    tx: &impl ConnectionTrait,
    rows: impl IntoIterator<Item = E::Model>,
) -> Result<()>
where
    E: EntityTrait,
    E::Model: IntoActiveModel<E::ActiveModel>,
    E::ActiveModel: ActiveModelTrait<Entity = E> + Send,
{
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let chunk: Vec<E::ActiveModel> = rows
            .by_ref()
            .take(INSERT_CHUNK)
            .map(|m| m.into_active_model().reset_all())
            .collect();
        E::insert_many(chunk).exec_without_returning(tx).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::disallowed_methods)] // test fixtures stamp rows with the real time

    use std::sync::Arc;
    use std::time::Duration;

    use secrecy::SecretString;

    use super::*;
    use crate::{MasterKey, StoreOptions};

    fn key() -> MasterKey {
        MasterKey::from_base64(&MasterKey::generate_base64()).unwrap()
    }

    async fn store(dir: &tempfile::TempDir, name: &str) -> Store {
        let store = Store::connect(
            &StoreOptions {
                url: format!("sqlite://{}/{name}.db?mode=rwc", dir.path().display()),
                max_connections: 2,
                cache_connections: 1,
                connect_timeout: Duration::from_secs(5),
                acquire_timeout: Duration::from_secs(5),
                busy_timeout: Duration::from_secs(5),
            },
            Arc::new(Keyring::new(key(), vec![])),
        )
        .await
        .unwrap();
        store.migrate().await.unwrap();
        store
    }

    async fn setting(store: &Store, name: &str, value: &str) -> String {
        let (value, _) = store
            .settings()
            .secret_setting_or_insert(
                name,
                || SecretString::from(value.to_owned()),
                chrono::Utc::now(),
            )
            .await
            .unwrap();
        value.expose_secret().to_owned()
    }

    #[tokio::test]
    async fn import_reseals_under_the_target_key_and_refuses_moved_values() {
        let dir = tempfile::tempdir().unwrap();
        let source = store(&dir, "source").await;
        setting(&source, "a", "first-value").await;
        setting(&source, "b", "second-value").await;
        let seal = Keyring::new(key(), vec![]);
        let dump = source.export(&seal).await.unwrap();
        let text = serde_json::to_string(&dump).unwrap();
        assert!(!text.contains("first-value") && !text.contains("second-value"));

        // Values swapped between two records do not open: nothing is written.
        let mut swapped: Dump = serde_json::from_str(&text).unwrap();
        let first = swapped.settings[0].value.clone();
        swapped.settings[0].value = swapped.settings[1].value.clone();
        swapped.settings[1].value = first;
        let target = store(&dir, "target").await;
        assert!(matches!(
            target.import(swapped, &seal).await,
            Err(StoreError::Crypto(crate::CryptoError::Forged))
        ));
        assert!(
            setting::Entity::find()
                .all(&target.db.main)
                .await
                .unwrap()
                .is_empty()
        );

        // Under another export key nothing opens either.
        let other = Keyring::new(key(), vec![]);
        let dump: Dump = serde_json::from_str(&text).unwrap();
        assert!(target.import(dump, &other).await.is_err());

        let dump: Dump = serde_json::from_str(&text).unwrap();
        assert_eq!(target.import(dump, &seal).await.unwrap().settings, 2);
        assert_eq!(setting(&target, "a", "unused").await, "first-value");
        assert_eq!(setting(&target, "b", "unused").await, "second-value");
        assert!(
            target
                .settings()
                .missing_key_ids()
                .await
                .unwrap()
                .is_empty()
        );

        // A second import finds the target holding data.
        let dump: Dump = serde_json::from_str(&text).unwrap();
        assert!(matches!(
            target.import(dump, &seal).await,
            Err(StoreError::NotEmpty(what)) if what.contains("2 setting(s)")
        ));
    }
}
