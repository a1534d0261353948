//! API keys: only the SHA-256 of each key is stored, with its first characters to
//! recognise it.

use broker_domain::ApiKeyRole;
use chrono::{DateTime, Utc};
use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, NotSet, QueryFilter, QueryOrder, Set};

use crate::Result;
use crate::db::Db;
use crate::entity::api_key;
use crate::records::ApiKeyRecord;

/// The API keys.
#[derive(Clone)]
pub struct ApiKeys {
    db: Db,
}

impl ApiKeys {
    pub(crate) fn new(db: Db) -> Self {
        Self { db }
    }

    pub async fn insert_api_key(
        &self,
        name: &str,
        role: ApiKeyRole,
        tenants: Option<&[i64]>,
        key_hash: &str,
        key_prefix: &str,
        now: DateTime<Utc>,
    ) -> Result<ApiKeyRecord> {
        let _writer = self.db.sqlite_write_lock().await;
        let row = api_key::ActiveModel {
            id: NotSet,
            name: Set(name.into()),
            role: Set(role),
            tenants: Set(tenants.map(|t| serde_json::to_string(t).unwrap_or_default())),
            key_hash: Set(key_hash.into()),
            key_prefix: Set(key_prefix.into()),
            created_at: Set(now),
            revoked_at: Set(None),
        }
        .insert(&self.db.main)
        .await?;
        Ok(api_key_record(row))
    }

    pub async fn api_keys(&self) -> Result<Vec<ApiKeyRecord>> {
        Ok(api_key::Entity::find()
            .order_by_asc(api_key::Column::Id)
            .all(&self.db.main)
            .await?
            .into_iter()
            .map(api_key_record)
            .collect())
    }

    /// The live (not revoked) key with this hash.
    pub async fn api_key_by_hash(&self, key_hash: &str) -> Result<Option<ApiKeyRecord>> {
        Ok(api_key::Entity::find()
            .filter(api_key::Column::KeyHash.eq(key_hash))
            .filter(api_key::Column::RevokedAt.is_null())
            .one(&self.db.main)
            .await?
            .map(api_key_record))
    }

    /// Revokes by id; false when there is no such live key.
    pub async fn revoke_api_key(&self, id: i64, now: DateTime<Utc>) -> Result<bool> {
        let _writer = self.db.sqlite_write_lock().await;
        let result = api_key::Entity::update_many()
            .col_expr(api_key::Column::RevokedAt, Some(now).into())
            .filter(api_key::Column::Id.eq(id))
            .filter(api_key::Column::RevokedAt.is_null())
            .exec(&self.db.main)
            .await?;
        Ok(result.rows_affected == 1)
    }
}

fn api_key_record(k: api_key::Model) -> ApiKeyRecord {
    ApiKeyRecord {
        id: k.id,
        name: k.name,
        role: k.role,
        tenants: k.tenants.and_then(|t| serde_json::from_str(&t).ok()),
        key_prefix: k.key_prefix,
        created_at: k.created_at,
        revoked_at: k.revoked_at,
    }
}
