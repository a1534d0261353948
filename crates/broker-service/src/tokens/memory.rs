//! What the token broker keeps in this process's memory, per tenant: its client, the tokens
//! fetched for it, how callers' spellings of a request map to token keys, and its backoff.
//! One map keyed by tenant, so that forgetting a tenant (new client, removal) is one removal
//! and the hot path is one lookup.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use broker_domain::CredentialsState;
use broker_store::{StoredToken, TokenClientRecord, TokenKey};
use chrono::{DateTime, Utc};
use dashmap::DashMap;

/// A token held in memory, and when it was last known to match the database.
pub(super) struct Cached {
    pub key: TokenKey,
    pub token: StoredToken,
    pub validated_at: DateTime<Utc>,
}

#[derive(Clone)]
pub(super) struct CachedClient {
    pub record: Arc<TokenClientRecord>,
    pub validated_at: DateTime<Utc>,
}

#[derive(Clone, Copy)]
pub(super) struct Backoff {
    pub until: DateTime<Utc>,
    pub failures: u32,
}

#[derive(Default)]
struct TenantMemory {
    client: Option<CachedClient>,
    /// A caller's spelling (normalised scope, subject as asked) -> the key it resolved to.
    /// Every spelling of one grant points at one key, so a refresh serves them all.
    aliases: HashMap<String, TokenKey>,
    tokens: HashMap<TokenKey, Arc<Cached>>,
    backoff: Option<Backoff>,
}

impl TenantMemory {
    fn is_empty(&self) -> bool {
        self.client.is_none() && self.tokens.is_empty() && self.backoff.is_none()
    }
}

#[derive(Default)]
pub(super) struct Memory {
    tenants: DashMap<i64, TenantMemory>,
}

/// A spelling's map key. A subject is never empty (the request parser refuses it), so the
/// default grant and a named one never collide.
pub(super) fn alias(scope: &str, subject: Option<&str>) -> String {
    let subject = subject.unwrap_or("");
    let mut a = String::with_capacity(scope.len() + 1 + subject.len());
    a.push_str(scope);
    a.push('\u{0}');
    a.push_str(subject);
    a
}

impl Memory {
    /// The token a spelling resolved to last time, if one is held.
    pub fn lookup(&self, provet_id: i64, alias: &str) -> Option<Arc<Cached>> {
        let tenant = self.tenants.get(&provet_id)?;
        let key = tenant.aliases.get(alias)?;
        tenant.tokens.get(key).cloned()
    }

    pub fn token(&self, key: &TokenKey) -> Option<Arc<Cached>> {
        self.tenants.get(&key.provet_id)?.tokens.get(key).cloned()
    }

    /// Points a spelling at a key (only after the key was resolved from stored state, so
    /// made-up spellings leave nothing behind).
    pub fn alias_to(&self, alias: String, key: &TokenKey) {
        let mut tenant = self.tenants.entry(key.provet_id).or_default();
        if tenant.aliases.get(&alias) != Some(key) {
            tenant.aliases.insert(alias, key.clone());
        }
    }

    pub fn remember(&self, key: &TokenKey, token: &StoredToken, now: DateTime<Utc>) {
        self.tenants
            .entry(key.provet_id)
            .or_default()
            .tokens
            .insert(
                key.clone(),
                Arc::new(Cached {
                    key: key.clone(),
                    token: token.clone(),
                    validated_at: now,
                }),
            );
    }

    pub fn client(&self, provet_id: i64) -> Option<CachedClient> {
        self.tenants.get(&provet_id)?.client.clone()
    }

    pub fn set_client(&self, record: Arc<TokenClientRecord>, now: DateTime<Utc>) {
        let provet_id = record.provet_id;
        self.tenants.entry(provet_id).or_default().client = Some(CachedClient {
            record,
            validated_at: now,
        });
    }

    /// The provider accepted the cached client's credentials.
    pub fn credentials_ok(&self, provet_id: i64) {
        if let Some(mut tenant) = self.tenants.get_mut(&provet_id)
            && let Some(c) = tenant.client.as_mut()
            && c.record.credentials_state != CredentialsState::Ok
        {
            let mut record = (*c.record).clone();
            record.credentials_state = CredentialsState::Ok;
            c.record = Arc::new(record);
        }
    }

    /// Drops everything held for a tenant.
    pub fn forget(&self, provet_id: i64) {
        self.tenants.remove(&provet_id);
    }

    pub fn backoff(&self, provet_id: i64) -> Option<Backoff> {
        self.tenants.get(&provet_id)?.backoff
    }

    /// Counts one more failure; answers the count.
    pub fn failed(&self, provet_id: i64, until: impl FnOnce(u32) -> DateTime<Utc>) -> u32 {
        let mut tenant = self.tenants.entry(provet_id).or_default();
        let failures = tenant.backoff.map_or(0, |b| b.failures).saturating_add(1);
        tenant.backoff = Some(Backoff {
            until: until(failures),
            failures,
        });
        failures
    }

    pub fn clear_backoff(&self, provet_id: i64) {
        if let Some(mut tenant) = self.tenants.get_mut(&provet_id) {
            tenant.backoff = None;
        }
    }

    /// Frees what can no longer serve anyone: expired tokens, clients and backoffs not
    /// looked at for `idle`, aliases to nothing, and tenants left empty.
    pub fn sweep(&self, now: DateTime<Utc>, idle: StdDuration) {
        let idle = chrono::Duration::from_std(idle).unwrap_or(chrono::Duration::MAX);
        self.tenants.retain(|_, t| {
            t.tokens.retain(|_, c| c.token.expires_at > now);
            let tokens = &t.tokens;
            t.aliases.retain(|_, key| tokens.contains_key(key));
            if t.client
                .as_ref()
                .is_some_and(|c| now - c.validated_at > idle)
            {
                t.client = None;
            }
            if t.backoff.is_some_and(|b| b.until < now) {
                t.backoff = None;
            }
            !t.is_empty()
        });
    }

    /// Tokens held, for metrics and tests.
    pub fn token_count(&self) -> usize {
        self.tenants.iter().map(|t| t.tokens.len()).sum()
    }
}
