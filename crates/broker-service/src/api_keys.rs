//! API keys for internal services and operators. Only a SHA-256 of each key is stored: the
//! keys are 256 random bits, so a fast hash is as strong as a slow one here.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use broker_domain::{ApiKeyRole, ProvetId};
use rand::RngCore;
use secrecy::SecretString;
use sha2::{Digest, Sha256};

use std::sync::Arc;

use broker_store::Store;

use crate::{ApiKeyRecord, Clock, StoreError};

const KEY_PREFIX: &str = "pbk_";

/// A key just created: the only time the key itself exists outside its holder.
pub struct NewApiKey {
    pub record: ApiKeyRecord,
    pub key: SecretString,
}

/// Who is calling, once their key checked out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub key_id: i64,
    /// Shared: every request a key makes carries its name (access line, metrics).
    pub name: Arc<str>,
    pub role: ApiKeyRole,
    /// `None`: every tenant.
    pub tenants: Option<Vec<i64>>,
}

impl Principal {
    pub fn may_serve(&self, provet_id: i64) -> bool {
        self.tenants.as_ref().is_none_or(|t| t.contains(&provet_id))
    }
}

/// What a presented key turned out to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Authenticated {
    Valid(Principal),
    /// A live key that must not be used (stored before its shape was checked): refused on
    /// every route, never silently narrowed or widened.
    Unusable {
        name: String,
        defect: KeyDefect,
    },
}

/// Why a stored, unrevoked key cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyDefect {
    /// Admin keys are never tenant-scoped: a tenant list on one cannot be honoured, since
    /// admin routes are not about one tenant.
    ScopedAdmin,
}

impl KeyDefect {
    pub fn reason(self) -> &'static str {
        match self {
            Self::ScopedAdmin => {
                "an admin key with a tenant list: admin keys are never tenant-scoped; revoke it and create an unscoped admin key or a token key for those tenants"
            }
        }
    }
}

/// What is wrong with a stored key's role and tenant list, if anything.
pub fn key_defect(role: ApiKeyRole, tenants: Option<&[i64]>) -> Option<KeyDefect> {
    (role == ApiKeyRole::Admin && tenants.is_some()).then_some(KeyDefect::ScopedAdmin)
}

#[derive(Debug, thiserror::Error)]
pub enum ApiKeyError {
    /// One request field is unacceptable.
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// API keys: created, listed, revoked, and checked on every request.
pub struct ApiKeys {
    store: Store,
    clock: Arc<dyn Clock>,
    /// Recently checked keys, so that the token hot path does not read the database. A
    /// revoke on this replica takes effect at once; on other replicas within `cache_ttl`.
    cache: moka::future::Cache<[u8; 32], Option<Authenticated>>,
}

pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

impl ApiKeys {
    pub fn new(store: Store, clock: Arc<dyn Clock>, cache_ttl: std::time::Duration) -> Self {
        Self {
            store,
            clock,
            cache: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(cache_ttl)
                .build(),
        }
    }

    pub async fn create(
        &self,
        name: &str,
        role: ApiKeyRole,
        tenants: Option<Vec<i64>>,
    ) -> Result<NewApiKey, ApiKeyError> {
        let name = name.trim();
        if name.is_empty() || name.len() > 255 || name.chars().any(char::is_control) {
            return Err(ApiKeyError::Invalid {
                field: "name",
                message: "must be 1 to 255 printable characters".into(),
            });
        }
        if role == ApiKeyRole::Admin && tenants.is_some() {
            return Err(ApiKeyError::Invalid {
                field: "tenants",
                message: "admin keys are never tenant-scoped: omit `tenants` (or send null), or create a `token` key for these tenants".into(),
            });
        }
        if let Some(ids) = &tenants {
            for id in ids {
                ProvetId::new(*id).map_err(|e| ApiKeyError::Invalid {
                    field: "tenants",
                    message: format!("tenant {id}: {e}"),
                })?;
            }
        }
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let key = format!("{KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));
        let record = self
            .store
            .api_keys()
            .insert_api_key(
                name,
                role,
                tenants.as_deref(),
                &hash_key(&key),
                &key[..12],
                self.clock.now(),
            )
            .await?;
        tracing::info!(
            key_id = record.id,
            name,
            role = role.as_str(),
            "API key created"
        );
        Ok(NewApiKey {
            record,
            key: SecretString::from(key),
        })
    }

    pub async fn list(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        self.store.api_keys().api_keys().await
    }

    pub async fn revoke(&self, id: i64) -> Result<bool, StoreError> {
        let revoked = self
            .store
            .api_keys()
            .revoke_api_key(id, self.clock.now())
            .await?;
        self.cache.invalidate_all();
        if revoked {
            tracing::info!(key_id = id, "API key revoked");
        }
        Ok(revoked)
    }

    /// What a bearer key is: `None` for an unknown or revoked key.
    pub async fn authenticate(&self, key: &str) -> Result<Option<Authenticated>, StoreError> {
        if !key.starts_with(KEY_PREFIX) || key.len() > 128 {
            return Ok(None);
        }
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        if let Some(known) = self.cache.get(&digest).await {
            return Ok(known);
        }
        let found = self
            .store
            .api_keys()
            .api_key_by_hash(&hex::encode(digest))
            .await?
            .map(
                |record| match key_defect(record.role, record.tenants.as_deref()) {
                    Some(defect) => Authenticated::Unusable {
                        name: record.name,
                        defect,
                    },
                    None => Authenticated::Valid(Principal {
                        key_id: record.id,
                        role: record.role,
                        name: record.name.into(),
                        tenants: record.tenants,
                    }),
                },
            );
        self.cache.insert(digest, found.clone()).await;
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_keys_with_a_tenant_list_are_defective() {
        use ApiKeyRole::{Admin, Token};
        assert_eq!(key_defect(Admin, None), None);
        assert_eq!(key_defect(Token, None), None);
        assert_eq!(key_defect(Token, Some(&[7])), None);
        assert_eq!(key_defect(Admin, Some(&[7])), Some(KeyDefect::ScopedAdmin));
        assert_eq!(key_defect(Admin, Some(&[])), Some(KeyDefect::ScopedAdmin));
    }
}
