//! Console sessions: the SHA-256 of each session token, the admin key that signed in, the
//! session's CSRF token and its expiry. A session whose key was revoked is gone.

use chrono::{DateTime, Utc};
use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, NotSet, QueryFilter, Set};

use crate::Result;
use crate::db::Db;
use crate::entity::{api_key, console_session};

/// A live session, with the key that opened it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsoleSessionRecord {
    pub id: i64,
    pub api_key_id: i64,
    pub api_key_name: String,
    pub csrf_token: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// The console's sessions.
#[derive(Clone)]
pub struct ConsoleSessions {
    db: Db,
}

impl ConsoleSessions {
    pub(crate) fn new(db: Db) -> Self {
        Self { db }
    }

    pub async fn insert_session(
        &self,
        token_hash: &str,
        api_key_id: i64,
        csrf_token: &str,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<()> {
        let _writer = self.db.sqlite_write_lock().await;
        console_session::ActiveModel {
            id: NotSet,
            token_hash: Set(token_hash.into()),
            api_key_id: Set(api_key_id),
            csrf_token: Set(csrf_token.into()),
            created_at: Set(now),
            expires_at: Set(expires_at),
        }
        .insert(&self.db.main)
        .await?;
        Ok(())
    }

    /// The unexpired session with this token hash, if its key is still live.
    pub async fn live_session(
        &self,
        token_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<ConsoleSessionRecord>> {
        let Some(session) = console_session::Entity::find()
            .filter(console_session::Column::TokenHash.eq(token_hash))
            .filter(console_session::Column::ExpiresAt.gt(now))
            .one(&self.db.main)
            .await?
        else {
            return Ok(None);
        };
        let key = api_key::Entity::find_by_id(session.api_key_id)
            .filter(api_key::Column::RevokedAt.is_null())
            .one(&self.db.main)
            .await?;
        Ok(key.map(|key| ConsoleSessionRecord {
            id: session.id,
            api_key_id: session.api_key_id,
            api_key_name: key.name,
            csrf_token: session.csrf_token,
            created_at: session.created_at,
            expires_at: session.expires_at,
        }))
    }

    /// Deletes the session; false when there was none.
    pub async fn delete_session(&self, token_hash: &str) -> Result<bool> {
        let _writer = self.db.sqlite_write_lock().await;
        let result = console_session::Entity::delete_many()
            .filter(console_session::Column::TokenHash.eq(token_hash))
            .exec(&self.db.main)
            .await?;
        Ok(result.rows_affected > 0)
    }

    /// Deletes every session expired at `now`; answers how many.
    pub async fn prune_sessions(&self, now: DateTime<Utc>) -> Result<u64> {
        let _writer = self.db.sqlite_write_lock().await;
        let result = console_session::Entity::delete_many()
            .filter(console_session::Column::ExpiresAt.lte(now))
            .exec(&self.db.main)
            .await?;
        Ok(result.rows_affected)
    }
}
