//! The operators' console: sessions (sign in with an admin API key, look a session up by its
//! cookie, sign out) and the read models its pages show beside the other use cases' data
//! (the overview, a tenant's recent events and discovery document). Sessions live in the
//! database, so every replica honours them; only a SHA-256 of each session token is stored.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use broker_domain::ApiKeyRole;
use broker_store::Store;
pub use broker_store::{
    Attention, AttentionItem, ConsoleSessionRecord, FailingWebhook, FleetCount, Overview,
    RecentEvent,
};
use chrono::{DateTime, Utc};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use crate::api_keys::Authenticated;
use crate::{ApiKeys, Clock, StoreError};

/// How the console's sessions behave.
#[derive(Clone, Debug)]
pub struct ConsoleSettings {
    /// How long a session lasts after sign-in.
    pub session_ttl: Duration,
    /// Mark the cookie `Secure` (the public URL is https).
    pub secure_cookie: bool,
}

/// Why a sign-in was refused.
#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    #[error("the API key is unknown or revoked")]
    UnknownKey,
    #[error("API key `{0}` is a token key: only admin keys can sign in to the console")]
    NotAdmin(String),
    #[error("API key `{name}` cannot be used: {reason}")]
    Unusable { name: String, reason: &'static str },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A session just opened: the token goes into the cookie, this once.
pub struct NewSession {
    pub token: SecretString,
    pub key_name: String,
    pub expires_at: DateTime<Utc>,
}

/// A signed-in operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsoleSession {
    pub api_key_id: i64,
    /// The admin key's name: what audit entries name as the actor.
    pub key_name: String,
    /// Every form carries it; a POST without it is refused.
    pub csrf_token: String,
    pub expires_at: DateTime<Utc>,
}

impl From<ConsoleSessionRecord> for ConsoleSession {
    fn from(r: ConsoleSessionRecord) -> Self {
        Self {
            api_key_id: r.api_key_id,
            key_name: r.api_key_name,
            csrf_token: r.csrf_token,
            expires_at: r.expires_at,
        }
    }
}

/// The console's use case: sessions, and what its pages read.
pub struct Console {
    store: Store,
    api_keys: Arc<ApiKeys>,
    clock: Arc<dyn Clock>,
    settings: ConsoleSettings,
}

/// 32 random bytes, URL-safe base64.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

impl Console {
    pub fn new(
        store: Store,
        api_keys: Arc<ApiKeys>,
        clock: Arc<dyn Clock>,
        settings: ConsoleSettings,
    ) -> Self {
        Self {
            store,
            api_keys,
            clock,
            settings,
        }
    }

    pub fn settings(&self) -> &ConsoleSettings {
        &self.settings
    }

    /// Opens a session for an unscoped admin key; token keys are refused.
    pub async fn sign_in(&self, key: &SecretString) -> Result<NewSession, SignInError> {
        let principal = match self.api_keys.authenticate(key.expose_secret()).await? {
            None => return Err(SignInError::UnknownKey),
            Some(Authenticated::Unusable { name, defect }) => {
                return Err(SignInError::Unusable {
                    name,
                    reason: defect.reason(),
                });
            }
            Some(Authenticated::Valid(p)) => p,
        };
        if principal.role != ApiKeyRole::Admin || principal.tenants.is_some() {
            return Err(SignInError::NotAdmin(principal.name.to_string()));
        }
        let now = self.clock.now();
        // Expired sessions go whenever someone signs in: rare enough, and bounded.
        self.store.console_sessions().prune_sessions(now).await?;
        let ttl = chrono::Duration::from_std(self.settings.session_ttl)
            .unwrap_or(chrono::Duration::hours(12))
            .max(chrono::Duration::seconds(1));
        let expires_at = now + ttl;
        let token = random_token();
        self.store
            .console_sessions()
            .insert_session(
                &token_hash(&token),
                principal.key_id,
                &random_token(),
                now,
                expires_at,
            )
            .await?;
        tracing::info!(api_key = &*principal.name, "console sign-in");
        Ok(NewSession {
            token: SecretString::from(token),
            key_name: principal.name.to_string(),
            expires_at,
        })
    }

    /// The live session this token opens, if any (expired, signed out, or its key revoked:
    /// none).
    pub async fn session(&self, token: &str) -> Result<Option<ConsoleSession>, StoreError> {
        if token.is_empty() || token.len() > 128 {
            return Ok(None);
        }
        Ok(self
            .store
            .console_sessions()
            .live_session(&token_hash(token), self.clock.now())
            .await?
            .map(ConsoleSession::from))
    }

    /// Ends the session; the cookie no longer opens anything, on any replica.
    pub async fn sign_out(&self, token: &str) -> Result<bool, StoreError> {
        self.store
            .console_sessions()
            .delete_session(&token_hash(token))
            .await
    }

    /// What needs attention, and the fleet by status and grant type.
    pub async fn overview(&self) -> Result<Overview, StoreError> {
        self.store.console_queries().overview().await
    }

    /// The tenant's newest events, newest first.
    pub async fn recent_events(
        &self,
        provet_id: i64,
        limit: u64,
    ) -> Result<Vec<RecentEvent>, StoreError> {
        self.store
            .console_queries()
            .recent_events(provet_id, limit.min(200))
            .await
    }

    /// The tenant's discovery document as fetched (JSON text), if any.
    pub async fn discovery_document(&self, provet_id: i64) -> Result<Option<String>, StoreError> {
        self.store
            .console_queries()
            .discovery_document(provet_id)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_distinct_and_hashed_to_hex() {
        let (a, b) = (random_token(), random_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        let h = token_hash(&a);
        assert_eq!(h.len(), 64);
        assert!(h.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(h, token_hash(&b));
    }
}
