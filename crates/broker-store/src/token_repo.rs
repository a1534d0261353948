//! Cached access tokens, the credential state of clients, and the cross-replica lock that
//! lets one request per token key reach the provider.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseTransaction, DbBackend, EntityTrait, QueryFilter, Set,
    Statement, TransactionTrait,
};
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};

use crate::entity::{client, discovery, tenant, token};
use crate::records::*;
use crate::{Result, Store, StoreError};

pub(crate) fn token_aad(key: &TokenKey) -> String {
    format!(
        "tokens.access_token:{}:{}:{}:{}",
        key.provet_id, key.client_id, key.scope, key.subject
    )
}

/// Held while one replica fetches a token for a key; dropped (or `release`d) to let the
/// next one in. On SQLite (one process) it holds nothing.
pub struct TokenLock {
    tx: Option<DatabaseTransaction>,
}

impl TokenLock {
    pub async fn release(self) -> Result<()> {
        if let Some(tx) = self.tx {
            tx.commit().await?;
        }
        Ok(())
    }
}

impl Store {
    /// The current client of a tenant, its secret opened, with what discovery advertised.
    pub async fn token_client(&self, provet_id: i64) -> Result<Option<TokenClientRecord>> {
        let Some(t) = tenant::Entity::find_by_id(provet_id).one(&self.db).await? else {
            return Ok(None);
        };
        let Some(c) = client::Entity::find()
            .filter(client::Column::ProvetId.eq(provet_id))
            .filter(client::Column::IsCurrent.eq(true))
            .one(&self.db)
            .await?
        else {
            return Ok(None);
        };
        let secret = match &c.client_secret {
            Some(sealed) => Some(self.keyring.open(
                &crate::repo::client_secret_aad(c.provet_id, &c.client_id),
                sealed,
            )?),
            None => None,
        };
        let discovered = discovery::Entity::find_by_id(provet_id)
            .one(&self.db)
            .await?;
        let auth_methods = discovered
            .as_ref()
            .and_then(|d| d.auth_methods.as_deref())
            .and_then(|m| serde_json::from_str(m).ok())
            .unwrap_or_default();
        Ok(Some(TokenClientRecord {
            provet_id,
            tenant_status: t.status,
            client_id: c.client_id,
            client_secret: secret,
            client_type: c.client_type,
            grant_type: c.grant_type,
            token_url: c.token_url,
            authorize_url: c.authorize_url,
            redirect_uris: serde_json::from_str(&c.redirect_uris).unwrap_or_default(),
            algorithm: c.algorithm,
            credentials_state: c.credentials_state,
            credentials_checked_at: c.credentials_checked_at,
            auth_methods,
            issuer: discovered.as_ref().and_then(|d| d.issuer.clone()),
            revocation_endpoint: discovered
                .as_ref()
                .and_then(|d| d.revocation_endpoint.clone()),
            discovery_state: discovered.map(|d| d.state),
        }))
    }

    /// Records whether the provider accepted the client's credentials.
    pub async fn set_credentials_state(
        &self,
        provet_id: i64,
        client_id: &str,
        state: &str,
        error: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let _writer = self.sqlite_write_lock().await;
        client::Entity::update_many()
            .col_expr(client::Column::CredentialsState, state.into())
            .col_expr(client::Column::CredentialsCheckedAt, Some(now).into())
            .col_expr(
                client::Column::CredentialsLastError,
                error.map(str::to_owned).into(),
            )
            .filter(client::Column::ProvetId.eq(provet_id))
            .filter(client::Column::ClientId.eq(client_id))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    pub async fn load_token(&self, key: &TokenKey) -> Result<Option<StoredToken>> {
        let Some(row) = token::Entity::find_by_id((
            key.provet_id,
            key.client_id.clone(),
            key.scope.clone(),
            key.subject.clone(),
        ))
        .one(&self.db)
        .await?
        else {
            return Ok(None);
        };
        Ok(Some(StoredToken {
            access_token: self.keyring.open(&token_aad(key), &row.access_token)?,
            token_type: row.token_type,
            expires_at: row.expires_at,
            obtained_at: row.obtained_at,
        }))
    }

    pub async fn save_token(&self, key: &TokenKey, token: &StoredToken) -> Result<()> {
        let row = token::ActiveModel {
            provet_id: Set(key.provet_id),
            client_id: Set(key.client_id.clone()),
            scope: Set(key.scope.clone()),
            subject: Set(key.subject.clone()),
            access_token: Set(self
                .keyring
                .seal(&token_aad(key), token.access_token.expose_secret())),
            token_type: Set(token.token_type.clone()),
            expires_at: Set(token.expires_at),
            obtained_at: Set(token.obtained_at),
        };
        let _writer = self.sqlite_write_lock().await;
        token::Entity::insert(row)
            .on_conflict(
                OnConflict::columns([
                    token::Column::ProvetId,
                    token::Column::ClientId,
                    token::Column::Scope,
                    token::Column::Subject,
                ])
                .update_columns([
                    token::Column::AccessToken,
                    token::Column::TokenType,
                    token::Column::ExpiresAt,
                    token::Column::ObtainedAt,
                ])
                .to_owned(),
            )
            .exec_without_returning(&self.db)
            .await?;
        Ok(())
    }

    /// Forgets every cached token of a tenant (removal, a superseded client).
    pub async fn delete_tokens(&self, provet_id: i64) -> Result<u64> {
        let _writer = self.sqlite_write_lock().await;
        Ok(token::Entity::delete_many()
            .filter(token::Column::ProvetId.eq(provet_id))
            .exec(&self.db)
            .await?
            .rows_affected)
    }

    /// Takes the cross-replica lock for `key`, waiting at most `wait`. PostgreSQL: a
    /// transaction-scoped advisory lock. SQLite: one process, so the caller's in-process
    /// single-flight is the whole lock.
    pub async fn lock_token(&self, key: &TokenKey, wait: std::time::Duration) -> Result<TokenLock> {
        if self.db.get_database_backend() != DbBackend::Postgres {
            return Ok(TokenLock { tx: None });
        }
        let digest = Sha256::digest(
            format!(
                "{}|{}|{}|{}",
                key.provet_id, key.client_id, key.scope, key.subject
            )
            .as_bytes(),
        );
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest[..8]);
        let lock_id = i64::from_be_bytes(id);
        let tx = self.db.begin().await?;
        tx.execute_unprepared(&format!(
            "SET LOCAL lock_timeout = '{}ms'",
            wait.as_millis()
        ))
        .await?;
        tx.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pg_advisory_xact_lock($1)",
            [lock_id.into()],
        ))
        .await
        .map_err(|e| StoreError::LockTimeout(e.to_string()))?;
        Ok(TokenLock { tx: Some(tx) })
    }
}
