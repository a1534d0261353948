//! What callers send and get back: the request, the token handed out, the errors, and the
//! rule that decides whether a grant can serve a request.

use std::time::Duration;

use broker_store::{GrantRecord, StoredToken, TokenKey};
use chrono::{DateTime, Utc};
use secrecy::SecretString;

use crate::StoreError;

/// A caller's request.
#[derive(Clone, Debug, Default)]
pub struct TokenRequest {
    pub scope: Option<String>,
    pub min_ttl: Option<u64>,
    pub force_refresh: bool,
    pub subject: Option<String>,
}

/// Where an answer came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// This process's memory.
    Memory,
    /// The database (a restart, or another replica fetched it).
    Database,
    /// The provider, just now.
    Provider,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Memory => "hit",
            Self::Database => "shared",
            Self::Provider => "miss",
        }
    }
}

/// A token handed to a caller.
#[derive(Clone)]
pub struct BrokeredToken {
    pub provet_id: i64,
    pub access_token: SecretString,
    pub token_type: String,
    pub expires_at: DateTime<Utc>,
    /// What the provider granted (else what was asked).
    pub scope: String,
    pub source: Source,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenBrokerError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("tenant {0} is not registered")]
    TenantNotFound(i64),
    #[error("{0}")]
    ReauthorizationRequired(String),
    #[error("the provider rejected the request: {code}")]
    Rejected {
        code: String,
        description: Option<String>,
    },
    #[error("the provider is unavailable: {reason}")]
    Unavailable {
        reason: String,
        retry_after: Duration,
    },
    #[error("{0}")]
    Misconfigured(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub(super) fn answer(key: &TokenKey, token: &StoredToken, source: Source) -> BrokeredToken {
    BrokeredToken {
        provet_id: key.provet_id,
        access_token: token.access_token.clone(),
        token_type: token.token_type.clone(),
        expires_at: token.expires_at,
        scope: token
            .granted_scope
            .clone()
            .unwrap_or_else(|| key.scope.clone()),
        source,
    }
}

pub(super) fn reconnect(provet_id: i64, detail: &str) -> TokenBrokerError {
    TokenBrokerError::ReauthorizationRequired(format!(
        "tenant {provet_id}: {detail}; a clinic user must connect again (start a new authorization)"
    ))
}

/// A grant serves a request when it is active and covers the scope asked for.
pub(super) fn usable_grant(grant: &GrantRecord, scope: &str) -> Result<(), TokenBrokerError> {
    if grant.state != broker_domain::GrantState::Active {
        return Err(reconnect(
            grant.provet_id,
            &format!(
                "the grant is {}{}",
                grant.state,
                grant
                    .last_error
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            ),
        ));
    }
    let granted: Vec<&str> = grant.scope.split(' ').collect();
    if let Some(missing) = scope.split(' ').find(|s| !granted.contains(s)) {
        return Err(TokenBrokerError::InvalidRequest(format!(
            "scope `{missing}` was not granted (the grant has `{}`)",
            grant.scope
        )));
    }
    Ok(())
}
