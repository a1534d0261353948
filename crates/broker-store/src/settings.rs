//! Broker-wide settings (sealed), the ids of the keys that sealed stored values, and key
//! rotation: re-sealing every secret under the current key.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{OnConflict, Query};
use sea_orm::{ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, QueryFilter, Statement};
use secrecy::{ExposeSecret, SecretString};

use crate::crypto::{self, aad};
use crate::db::Db;
use crate::entity::{authorization, client, grant, setting, token};
use crate::records::{RekeyReport, TokenKey};
use crate::{Keyring, Result, StoreError};

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

/// Settings and the keys that seal secrets.
#[derive(Clone)]
pub struct Settings {
    db: Db,
    keyring: Arc<Keyring>,
    /// The last answer of `missing_key_ids`, for readiness probes.
    key_check: Arc<std::sync::Mutex<Option<KeyCheck>>>,
}

impl Settings {
    pub(crate) fn new(db: Db, keyring: Arc<Keyring>) -> Self {
        Self {
            db,
            keyring,
            key_check: Arc::new(std::sync::Mutex::new(None)),
        }
    }

    /// The sealed setting `name`, if stored (never generates one).
    pub async fn secret_setting(&self, name: &str) -> Result<Option<SecretString>> {
        let Some(row) = setting::Entity::find_by_id(name.to_owned())
            .one(&self.db.main)
            .await?
        else {
            return Ok(None);
        };
        Ok(Some(self.keyring.open(&aad::setting(name), &row.value)?))
    }

    /// The sealed setting `name`, or `generate()`'s value stored now. When two replicas start
    /// at once, both end up with the one value that was stored first.
    pub async fn secret_setting_or_insert(
        &self,
        name: &str,
        generate: impl FnOnce() -> SecretString,
        now: DateTime<Utc>,
    ) -> Result<(SecretString, bool)> {
        let aad = aad::setting(name);
        if let Some(row) = setting::Entity::find_by_id(name.to_owned())
            .one(&self.db.main)
            .await?
        {
            return Ok((self.keyring.open(&aad, &row.value)?, false));
        }
        let value = generate();
        let insert = Query::insert()
            .into_table(setting::Entity)
            .columns([
                setting::Column::Name,
                setting::Column::Value,
                setting::Column::UpdatedAt,
            ])
            .values_panic([
                name.into(),
                self.keyring.seal(&aad, value.expose_secret()).into(),
                now.into(),
            ])
            .on_conflict(
                OnConflict::column(setting::Column::Name)
                    .do_nothing()
                    .to_owned(),
            )
            .to_owned();
        if self.db.main.execute(&insert).await?.rows_affected() == 1 {
            return Ok((value, true));
        }
        let row = setting::Entity::find_by_id(name.to_owned())
            .one(&self.db.main)
            .await?
            .ok_or_else(|| StoreError::Corrupt(format!("setting {name} vanished")))?;
        Ok((self.keyring.open(&aad, &row.value)?, false))
    }

    /// The ids of every key that sealed a stored value: one query per sealed column, each
    /// reading only the distinct `v1:<key id>:` prefixes. Tables not created yet hold none.
    pub async fn sealed_key_ids(&self) -> Result<BTreeSet<String>> {
        let backend = self.db.backend();
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
                .main
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
    pub(crate) async fn missing_key_ids_cached(&self) -> Result<Vec<String>> {
        if let Ok(cached) = self.key_check.lock()
            && let Some((at, missing)) = cached.as_ref()
            && at.elapsed() < KEY_CHECK_TTL
        {
            return Ok(missing.clone());
        }
        let missing = self.missing_key_ids().await?;
        if let Ok(mut cached) = self.key_check.lock() {
            // A probe's cache timer, not a decision about stored data: no Clock needed.
            #[allow(clippy::disallowed_methods)]
            let at = Instant::now();
            *cached = Some((at, missing.clone()));
        }
        Ok(missing)
    }

    async fn table_exists(&self, table: &str) -> Result<bool> {
        let backend = self.db.backend();
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
            .main
            .query_one_raw(Statement::from_string(backend, sql))
            .await?
        {
            Some(row) => row.try_get_by_index(0)?,
            None => 0,
        };
        Ok(count > 0)
    }

    /// Re-seals every secret not sealed with the current key. Each row is rewritten only
    /// where it still holds the ciphertext that was read (a conditional update), so a
    /// concurrent writer is never undone.
    pub async fn rekey(&self) -> Result<RekeyReport> {
        let mut report = RekeyReport::default();
        self.rekey_clients(&mut report).await?;
        self.rekey_tokens(&mut report).await?;
        self.rekey_grants(&mut report).await?;
        self.rekey_authorizations(&mut report).await?;
        self.rekey_settings(&mut report).await?;
        crate::webhooks::Webhooks {
            db: self.db.clone(),
            keyring: self.keyring.clone(),
        }
        .rekey(&mut report)
        .await?;
        Ok(report)
    }

    async fn rekey_clients(&self, report: &mut RekeyReport) -> Result<()> {
        for c in client::Entity::find()
            .filter(client::Column::ClientSecret.is_not_null())
            .all(&self.db.main)
            .await?
        {
            let Some(sealed) = c.client_secret else {
                continue;
            };
            let aad = aad::client_secret(c.provet_id, &c.client_id);
            let Some(new) = self.reseal(&aad, &sealed, report)? else {
                continue;
            };
            let _writer = self.db.sqlite_write_lock().await;
            report.resealed += client::Entity::update_many()
                .col_expr(client::Column::ClientSecret, Some(new).into())
                .filter(client::Column::Id.eq(c.id))
                .filter(client::Column::ClientSecret.eq(sealed))
                .exec(&self.db.main)
                .await?
                .rows_affected;
        }
        Ok(())
    }

    async fn rekey_tokens(&self, report: &mut RekeyReport) -> Result<()> {
        for t in token::Entity::find().all(&self.db.main).await? {
            let key = TokenKey {
                provet_id: t.provet_id,
                client_id: t.client_id.clone(),
                scope: t.scope.clone(),
                subject: t.subject.clone(),
            };
            let Some(new) = self.reseal(&aad::access_token(&key), &t.access_token, report)? else {
                continue;
            };
            let _writer = self.db.sqlite_write_lock().await;
            report.resealed += token::Entity::update_many()
                .col_expr(token::Column::AccessToken, new.into())
                .filter(token::Column::ProvetId.eq(t.provet_id))
                .filter(token::Column::ClientId.eq(t.client_id.as_str()))
                .filter(token::Column::Scope.eq(t.scope.as_str()))
                .filter(token::Column::Subject.eq(t.subject.as_str()))
                .filter(token::Column::AccessToken.eq(t.access_token))
                .exec(&self.db.main)
                .await?
                .rows_affected;
        }
        Ok(())
    }

    async fn rekey_grants(&self, report: &mut RekeyReport) -> Result<()> {
        for g in grant::Entity::find()
            .filter(grant::Column::RefreshToken.is_not_null())
            .all(&self.db.main)
            .await?
        {
            let Some(sealed) = g.refresh_token else {
                continue;
            };
            let aad = aad::refresh_token(g.provet_id, &g.client_id, &g.subject);
            let Some(new) = self.reseal(&aad, &sealed, report)? else {
                continue;
            };
            let _writer = self.db.sqlite_write_lock().await;
            report.resealed += grant::Entity::update_many()
                .col_expr(grant::Column::RefreshToken, Some(new).into())
                .filter(grant::Column::ProvetId.eq(g.provet_id))
                .filter(grant::Column::ClientId.eq(g.client_id.as_str()))
                .filter(grant::Column::Subject.eq(g.subject.as_str()))
                .filter(grant::Column::RefreshToken.eq(sealed))
                .exec(&self.db.main)
                .await?
                .rows_affected;
        }
        Ok(())
    }

    async fn rekey_authorizations(&self, report: &mut RekeyReport) -> Result<()> {
        for a in authorization::Entity::find()
            .filter(authorization::Column::PkceVerifier.ne(""))
            .all(&self.db.main)
            .await?
        {
            let aad = aad::pkce_verifier(&a.state_hash);
            let Some(new) = self.reseal(&aad, &a.pkce_verifier, report)? else {
                continue;
            };
            let _writer = self.db.sqlite_write_lock().await;
            report.resealed += authorization::Entity::update_many()
                .col_expr(authorization::Column::PkceVerifier, new.into())
                .filter(authorization::Column::StateHash.eq(a.state_hash.as_str()))
                .filter(authorization::Column::PkceVerifier.eq(a.pkce_verifier))
                .exec(&self.db.main)
                .await?
                .rows_affected;
        }
        Ok(())
    }

    async fn rekey_settings(&self, report: &mut RekeyReport) -> Result<()> {
        for s in setting::Entity::find().all(&self.db.main).await? {
            let Some(new) = self.reseal(&aad::setting(&s.name), &s.value, report)? else {
                continue;
            };
            let _writer = self.db.sqlite_write_lock().await;
            report.resealed += setting::Entity::update_many()
                .col_expr(setting::Column::Value, new.into())
                .filter(setting::Column::Name.eq(s.name.as_str()))
                .filter(setting::Column::Value.eq(s.value))
                .exec(&self.db.main)
                .await?
                .rows_affected;
        }
        Ok(())
    }

    /// The value sealed again with the current key, or `None` when it already is.
    fn reseal(&self, aad: &str, sealed: &str, report: &mut RekeyReport) -> Result<Option<String>> {
        if self.keyring.is_current(sealed) {
            report.already_current += 1;
            return Ok(None);
        }
        Ok(Some(self.keyring.seal(
            aad,
            self.keyring.open(aad, sealed)?.expose_secret(),
        )))
    }
}
