//! The token broker: internal services ask for a tenant's token and get a valid one, served
//! from memory when it can be. When a token must be fetched, exactly one request per token
//! key reaches the provider: callers in one process wait on one single-flight mutex, and
//! replicas on PostgreSQL take an advisory lock, then re-read what another may have stored.

use std::sync::Arc;
use std::time::{Duration, Instant};

use broker_oauth::Upstream;
use broker_oauth::token::{self as oauth, ClientAuth, TokenClient, TokenError};
use broker_store::{StoredToken, TokenClientRecord, TokenKey};
use chrono::{DateTime, Utc};
use dashmap::DashMap;
use secrecy::SecretString;
use tokio::sync::Mutex;

use crate::{Broker, StoreError};

/// How the token broker behaves.
#[derive(Clone, Debug)]
pub struct TokenSettings {
    /// Refresh this long before expiry (clamped to `skew_fraction` of the token's lifetime).
    pub skew: Duration,
    pub skew_fraction: f64,
    /// Lifetime assumed when the provider gives neither `expires_in` nor a JWT `exp`.
    pub default_ttl: Duration,
    /// After `invalid_client`, how long no request is sent for that client (unless a new
    /// hookup or an admin verify comes first).
    pub rejected_cooldown: Duration,
    /// The upstream timeout; lock waits are bounded by twice this plus a margin.
    pub timeout: Duration,
    /// How long a memory entry is trusted before the database is consulted again (another
    /// replica may have removed the tenant or replaced its client).
    pub revalidate_after: Duration,
    /// The longest per-tenant backoff after upstream failures.
    pub max_backoff: Duration,
    /// Fetch one token right after a client_credentials hookup, to check the credentials.
    pub verify_on_hookup: bool,
}

impl Default for TokenSettings {
    fn default() -> Self {
        Self {
            skew: Duration::from_secs(60),
            skew_fraction: 0.25,
            default_ttl: Duration::from_secs(3600),
            rejected_cooldown: Duration::from_secs(300),
            timeout: Duration::from_secs(10),
            revalidate_after: Duration::from_secs(30),
            max_backoff: Duration::from_secs(60),
            verify_on_hookup: true,
        }
    }
}

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

/// What the token broker keeps in memory.
pub struct TokenCache {
    pub settings: TokenSettings,
    pub upstream: Upstream,
    entries: DashMap<MemoryKey, Arc<Cached>>,
    flights: DashMap<MemoryKey, Arc<Mutex<()>>>,
    backoff: DashMap<i64, Backoff>,
}

/// Memory is keyed without the client id (which needs the database to know); the entry
/// carries its full key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct MemoryKey {
    provet_id: i64,
    scope: String,
    subject: String,
}

struct Cached {
    key: TokenKey,
    token: StoredToken,
    validated_at: Instant,
}

/// What `take_turn` found.
enum Turn {
    Served(BrokeredToken),
    /// This caller holds the lock and must ask the provider; `stored` is what the database
    /// held after the lock was taken.
    Ours {
        lock: broker_store::TokenLock,
        stored: Option<StoredToken>,
    },
}

enum RefreshFailure {
    /// The grant cannot be used any more: a clinic user must connect again.
    GrantLost(String),
    Token(TokenError),
    Store(StoreError),
}

impl From<StoreError> for RefreshFailure {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

#[derive(Clone, Copy)]
struct Backoff {
    until: Instant,
    failures: u32,
}

impl TokenCache {
    pub fn new(settings: TokenSettings, upstream: Upstream) -> Self {
        Self {
            settings,
            upstream,
            entries: DashMap::new(),
            flights: DashMap::new(),
            backoff: DashMap::new(),
        }
    }

    /// Drops everything held for a tenant (new client, removal).
    pub fn forget(&self, provet_id: i64) {
        self.entries.retain(|k, _| k.provet_id != provet_id);
        self.backoff.remove(&provet_id);
    }

    /// The threshold below which a token is refreshed: `max(min_ttl, skew)`, the skew
    /// clamped to a fraction of the token's lifetime.
    fn refresh_below(&self, token: &StoredToken, min_ttl: chrono::Duration) -> chrono::Duration {
        let lifetime = (token.expires_at - token.obtained_at).num_milliseconds() as f64;
        let cap = chrono::Duration::milliseconds((lifetime * self.settings.skew_fraction) as i64);
        min_ttl.max(to_chrono(self.settings.skew).min(cap))
    }
}

fn to_chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

pub(crate) fn normalise_scope(scope: Option<&str>) -> Result<String, TokenBrokerError> {
    let scope = scope.unwrap_or("restapi");
    let mut parts: Vec<&str> = scope.split_whitespace().collect();
    if parts.is_empty() || scope.len() > 255 {
        return Err(TokenBrokerError::InvalidRequest(
            "scope must name 1 or more scopes, at most 255 characters".into(),
        ));
    }
    if let Some(bad) = parts.iter().find(|p| {
        !p.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
    }) {
        return Err(TokenBrokerError::InvalidRequest(format!(
            "scope `{bad}` has characters a scope may not have"
        )));
    }
    parts.sort_unstable();
    parts.dedup();
    Ok(parts.join(" "))
}

impl Broker {
    fn tokens(&self) -> &TokenCache {
        &self.tokens
    }

    /// A valid access token for the tenant, per the caller's request.
    pub async fn token(
        &self,
        provet_id: i64,
        request: &TokenRequest,
    ) -> Result<BrokeredToken, TokenBrokerError> {
        let scope = normalise_scope(request.scope.as_deref())?;
        let min_ttl = match request.min_ttl {
            None => chrono::Duration::seconds(60),
            Some(n) if n <= 36_000 => chrono::Duration::seconds(n as i64),
            Some(_) => {
                return Err(TokenBrokerError::InvalidRequest(
                    "min_ttl must be from 0 to 36000 seconds".into(),
                ));
            }
        };
        let subject = request.subject.clone().unwrap_or_default();
        let mkey = MemoryKey {
            provet_id,
            scope,
            subject,
        };
        let arrived = self.now();
        if !request.force_refresh
            && let Some(token) = self.memory_hit(&mkey, min_ttl, arrived)
        {
            return Ok(token);
        }
        let flight = self
            .tokens()
            .flights
            .entry(mkey.clone())
            .or_insert_with(|| Arc::new(Mutex::new(())))
            .clone();
        let _turn = flight.lock().await;
        // Whoever held the flight before us may have fetched what we need.
        if let Some(cached) = self.tokens().entries.get(&mkey).map(|e| e.clone()) {
            // Fetched after we arrived: good for any caller, forced or not.
            let fresh_enough = cached.token.obtained_at >= arrived;
            let still_good = !request.force_refresh
                && self.usable(&cached.token, min_ttl, self.now())
                && cached.validated_at.elapsed() < self.tokens().settings.revalidate_after;
            if fresh_enough || still_good {
                return Ok(self.answer(&cached.key, &cached.token, Source::Memory));
            }
        }
        self.fetch(&mkey, min_ttl, request.force_refresh, arrived, false)
            .await
    }

    fn usable(&self, token: &StoredToken, min_ttl: chrono::Duration, now: DateTime<Utc>) -> bool {
        token.expires_at - now >= self.tokens().refresh_below(token, min_ttl)
    }

    fn memory_hit(
        &self,
        mkey: &MemoryKey,
        min_ttl: chrono::Duration,
        now: DateTime<Utc>,
    ) -> Option<BrokeredToken> {
        let cached = self.tokens().entries.get(mkey)?;
        if cached.validated_at.elapsed() >= self.tokens().settings.revalidate_after
            || !self.usable(&cached.token, min_ttl, now)
        {
            return None;
        }
        Some(self.answer(&cached.key, &cached.token, Source::Memory))
    }

    fn answer(&self, key: &TokenKey, token: &StoredToken, source: Source) -> BrokeredToken {
        BrokeredToken {
            provet_id: key.provet_id,
            access_token: token.access_token.clone(),
            token_type: token.token_type.clone(),
            expires_at: token.expires_at,
            scope: key.scope.clone(),
            source,
        }
    }

    fn remember(&self, mkey: &MemoryKey, key: &TokenKey, token: &StoredToken) {
        self.tokens().entries.insert(
            mkey.clone(),
            Arc::new(Cached {
                key: key.clone(),
                token: token.clone(),
                validated_at: Instant::now(),
            }),
        );
    }

    /// The slow path, inside this process's single flight for the key.
    async fn fetch(
        &self,
        mkey: &MemoryKey,
        min_ttl: chrono::Duration,
        force: bool,
        arrived: DateTime<Utc>,
        ignore_cooldown: bool,
    ) -> Result<BrokeredToken, TokenBrokerError> {
        let provet_id = mkey.provet_id;
        let client = match self.store.token_client(provet_id).await? {
            Some(c) if c.tenant_status == "active" => c,
            _ => {
                self.tokens().forget(provet_id);
                return Err(TokenBrokerError::TenantNotFound(provet_id));
            }
        };
        if client.grant_type == "authorization_code" {
            return self
                .fetch_grant(mkey, &client, min_ttl, force, arrived)
                .await;
        }
        let now = self.now();
        if !ignore_cooldown
            && client.credentials_state == "rejected"
            && client
                .credentials_checked_at
                .is_some_and(|at| now - at < to_chrono(self.tokens().settings.rejected_cooldown))
        {
            return Err(TokenBrokerError::Rejected {
                code: "invalid_client".into(),
                description: Some(
                    "the provider rejected this client's credentials recently; a new hookup or POST /admin/tenants/{id}/verify tries again".into(),
                ),
            });
        }
        let key = TokenKey {
            provet_id,
            client_id: client.client_id.clone(),
            scope: mkey.scope.clone(),
            subject: mkey.subject.clone(),
        };
        let lock_wait = self.tokens().settings.timeout * 2 + Duration::from_secs(5);
        let (lock, stored) = match self
            .take_turn(mkey, &key, min_ttl, force, arrived, lock_wait)
            .await?
        {
            Turn::Served(token) => return Ok(token),
            Turn::Ours { lock, stored } => (lock, stored),
        };

        let result = self.request_token(&client, &key.scope).await;
        let now = self.now();
        match result {
            Ok(issued) => {
                let token = StoredToken {
                    expires_at: now + to_chrono(self.lifetime_of(&issued)),
                    obtained_at: now,
                    token_type: issued.token_type,
                    access_token: issued.access_token,
                };
                self.store.save_token(&key, &token).await?;
                lock.release().await?;
                self.remember(mkey, &key, &token);
                self.tokens().backoff.remove(&provet_id);
                if client.credentials_state != "ok" {
                    self.store
                        .set_credentials_state(provet_id, &client.client_id, "ok", None, now)
                        .await?;
                }
                Ok(self.answer(&key, &token, Source::Provider))
            }
            Err(e) => {
                lock.release().await?;
                self.token_failed(&client, &key, stored.as_ref(), min_ttl, e, now)
                    .await
            }
        }
    }

    /// Before asking the provider: a stored token that will do (fetched after this caller
    /// arrived, or valid long enough when not forced) is served; during a backoff a token
    /// that still meets `min_ttl` is served, else 503; otherwise this caller waits for the
    /// cross-replica lock and looks again, as another replica may have stored one meanwhile.
    async fn take_turn(
        &self,
        mkey: &MemoryKey,
        key: &TokenKey,
        min_ttl: chrono::Duration,
        force: bool,
        arrived: DateTime<Utc>,
        lock_wait: Duration,
    ) -> Result<Turn, TokenBrokerError> {
        let will_do = |token: &StoredToken| {
            token.obtained_at >= arrived || (!force && self.usable(token, min_ttl, self.now()))
        };
        let stored = self.store.load_token(key).await?;
        if let Some(token) = stored.as_ref().filter(|t| will_do(t)) {
            self.remember(mkey, key, token);
            return Ok(Turn::Served(self.answer(key, token, Source::Database)));
        }
        if let Some(wait) = self.backing_off(key.provet_id) {
            return self
                .serve_stale_or(
                    key,
                    stored.as_ref(),
                    min_ttl,
                    TokenBrokerError::Unavailable {
                        reason: "the provider failed recently; backing off".into(),
                        retry_after: wait,
                    },
                )
                .map(Turn::Served);
        }
        let lock_started = Instant::now();
        let lock = match self.store.lock_token(key, lock_wait).await {
            Ok(lock) => lock,
            Err(StoreError::LockTimeout(reason)) => {
                return Err(TokenBrokerError::Unavailable {
                    reason: format!("another replica is still asking the provider ({reason})"),
                    retry_after: Duration::from_secs(1),
                });
            }
            Err(e) => return Err(e.into()),
        };
        self.metrics.token_lock_wait(lock_started.elapsed());
        let stored = self.store.load_token(key).await?;
        if let Some(token) = stored.as_ref().filter(|t| will_do(t)) {
            lock.release().await?;
            self.remember(mkey, key, token);
            return Ok(Turn::Served(self.answer(key, token, Source::Database)));
        }
        Ok(Turn::Ours { lock, stored })
    }

    /// The slow path for an authorization-code tenant: the grant's cached access token, or a
    /// refresh. The refresh is single-flight per grant (this process's flight, then the
    /// database lock across replicas), re-reads the grant under the lock (another replica may
    /// have rotated its refresh token), and commits the rotated refresh token with the new
    /// access token before anyone gets it.
    async fn fetch_grant(
        &self,
        mkey: &MemoryKey,
        client: &TokenClientRecord,
        min_ttl: chrono::Duration,
        force: bool,
        arrived: DateTime<Utc>,
    ) -> Result<BrokeredToken, TokenBrokerError> {
        let provet_id = client.provet_id;
        let requested = (!mkey.subject.is_empty()).then_some(mkey.subject.as_str());
        let reconnect = |detail: &str| {
            TokenBrokerError::ReauthorizationRequired(format!(
                "tenant {provet_id}: {detail}; a clinic user must connect again (POST /v1/tenants/{provet_id}/authorizations)"
            ))
        };
        let Some(grant) = self
            .store
            .grant(provet_id, &client.client_id, requested)
            .await?
        else {
            return Err(reconnect(match requested {
                Some(_) => "no grant with this subject",
                None => "no clinic user has connected yet",
            }));
        };
        if grant.state != "active" {
            return Err(reconnect(&format!(
                "the grant is {}{}",
                grant.state,
                grant
                    .last_error
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            )));
        }
        // Tokens are kept under the grant's own scope; a caller may ask for less.
        let granted: Vec<&str> = grant.scope.split(' ').collect();
        if let Some(missing) = mkey.scope.split(' ').find(|s| !granted.contains(s)) {
            return Err(TokenBrokerError::InvalidRequest(format!(
                "scope `{missing}` was not granted (the grant has `{}`)",
                grant.scope
            )));
        }
        let key = TokenKey {
            provet_id,
            client_id: client.client_id.clone(),
            scope: grant.scope.clone(),
            subject: grant.subject.clone(),
        };
        let lock_wait = self.tokens().settings.timeout * 4 + Duration::from_secs(5);
        let (lock, stored) = match self
            .take_turn(mkey, &key, min_ttl, force, arrived, lock_wait)
            .await?
        {
            Turn::Served(token) => return Ok(token),
            Turn::Ours { lock, stored } => (lock, stored),
        };
        let result = self.refresh_grant_locked(client, &key).await;
        // Whatever happened is committed; now the next replica may go.
        lock.release().await?;
        match result {
            Ok(token) => {
                self.remember(mkey, &key, &token);
                self.tokens().backoff.remove(&provet_id);
                Ok(self.answer(&key, &token, Source::Provider))
            }
            Err(RefreshFailure::GrantLost(detail)) => {
                self.tokens().forget(provet_id);
                Err(reconnect(&detail))
            }
            Err(RefreshFailure::Token(e)) => {
                self.token_failed(client, &key, stored.as_ref(), min_ttl, e, self.now())
                    .await
            }
            Err(RefreshFailure::Store(e)) => Err(e.into()),
        }
    }

    /// Refreshes under the lock: the grant is read again here, and on `invalid_grant` it is
    /// read once more, in case another replica rotated it in between; only a second refusal
    /// marks it `reauthorization_required`.
    async fn refresh_grant_locked(
        &self,
        client: &TokenClientRecord,
        key: &TokenKey,
    ) -> Result<StoredToken, RefreshFailure> {
        use secrecy::ExposeSecret;
        let mut retried = false;
        loop {
            let grant = self
                .store
                .grant(key.provet_id, &key.client_id, Some(&key.subject))
                .await?
                .filter(|g| g.state == "active")
                .ok_or_else(|| RefreshFailure::GrantLost("the grant is no longer active".into()))?;
            let Some(refresh_token) = grant.refresh_token.clone() else {
                return Err(RefreshFailure::GrantLost(
                    "the provider gave no refresh token".into(),
                ));
            };
            let started = Instant::now();
            let result = oauth::refresh(
                &self.tokens().upstream,
                &crate::authorizations::token_client(client),
                &refresh_token,
                &grant.scope,
            )
            .await;
            let now = self.now();
            match result {
                Ok(issued) => {
                    self.metrics.upstream_token_request("ok", started.elapsed());
                    self.metrics.refresh(if retried { "retried" } else { "ok" });
                    let token = StoredToken {
                        expires_at: now + to_chrono(self.lifetime_of(&issued)),
                        obtained_at: now,
                        token_type: issued.token_type.clone(),
                        access_token: issued.access_token.clone(),
                    };
                    // The rotated refresh token and the new access token, in one
                    // transaction, before anyone gets the token.
                    self.store
                        .save_grant(
                            (&key.provet_id, &key.client_id, &key.subject),
                            issued.refresh_token.as_ref(),
                            &grant.scope,
                            key,
                            &token,
                            now,
                        )
                        .await?;
                    tracing::info!(provet_id = key.provet_id, subject = %key.subject, "refreshed a grant");
                    return Ok(token);
                }
                Err(e) if e.is_invalid_grant() => {
                    self.metrics
                        .upstream_token_request("rejected", started.elapsed());
                    let current = self
                        .store
                        .grant(key.provet_id, &key.client_id, Some(&key.subject))
                        .await?;
                    let rotated = current
                        .as_ref()
                        .and_then(|g| g.refresh_token.as_ref())
                        .is_some_and(|t| t.expose_secret() != refresh_token.expose_secret());
                    if rotated && !retried {
                        retried = true;
                        tracing::warn!(
                            provet_id = key.provet_id,
                            "invalid_grant with a refresh token rotated meanwhile; retrying with the newer one"
                        );
                        continue;
                    }
                    self.metrics.refresh("invalid_grant");
                    let detail = format!("the provider answered {e}");
                    self.store
                        .set_grant_state(
                            key.provet_id,
                            &key.client_id,
                            &key.subject,
                            "reauthorization_required",
                            Some(&detail),
                            now,
                        )
                        .await?;
                    tracing::warn!(provet_id = key.provet_id, subject = %key.subject, "grant lost: reauthorization required");
                    return Err(RefreshFailure::GrantLost(detail));
                }
                Err(e) => {
                    let outcome = match &e {
                        TokenError::Rejected { .. } => "rejected",
                        TokenError::Unavailable { .. } => "unavailable",
                        TokenError::Misconfigured(_) => "misconfigured",
                    };
                    self.metrics
                        .upstream_token_request(outcome, started.elapsed());
                    self.metrics.refresh(outcome);
                    return Err(RefreshFailure::Token(e));
                }
            }
        }
    }

    /// Refreshes every active grant not refreshed for `keepalive_after`, so that refresh
    /// tokens (which die after 30 days unused) never expire on an idle clinic.
    pub async fn keep_grants_alive(&self) -> Result<usize, StoreError> {
        let before = self.now() - to_chrono(self.oauth.keepalive_after);
        let stale = self.store.stale_grants(before, 500).await?;
        let mut refreshed = 0;
        for (provet_id, subject) in stale {
            let request = TokenRequest {
                scope: None,
                min_ttl: Some(0),
                force_refresh: true,
                subject: Some(subject.clone()),
            };
            match self.token(provet_id, &request).await {
                Ok(_) => refreshed += 1,
                Err(e) => {
                    tracing::warn!(provet_id, subject, error = %e, "keep-alive refresh failed")
                }
            }
        }
        Ok(refreshed)
    }

    /// Runs the keep-alive every `keepalive_interval` until `stop`.
    pub async fn run_keepalive(self, stop: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(self.oauth.keepalive_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            match self.keep_grants_alive().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(refreshed = n, "keep-alive refreshed idle grants"),
                Err(e) => tracing::warn!(error = %e, "keep-alive could not list grants"),
            }
        }
    }

    async fn request_token(
        &self,
        client: &TokenClientRecord,
        scope: &str,
    ) -> Result<oauth::IssuedToken, TokenError> {
        let started = Instant::now();
        let result = oauth::client_credentials(
            &self.tokens().upstream,
            &TokenClient {
                token_url: &client.token_url,
                client_id: &client.client_id,
                client_secret: client.client_secret.as_ref(),
                auth: ClientAuth::from_advertised(&client.auth_methods),
            },
            scope,
        )
        .await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(TokenError::Rejected { .. }) => "rejected",
            Err(TokenError::Unavailable { .. }) => "unavailable",
            Err(TokenError::Misconfigured(_)) => "misconfigured",
        };
        self.metrics
            .upstream_token_request(outcome, started.elapsed());
        match &result {
            Ok(_) => {
                tracing::info!(provet_id = client.provet_id, client_id = %client.client_id, "fetched a token from the provider")
            }
            Err(e) => {
                tracing::warn!(provet_id = client.provet_id, client_id = %client.client_id, error = %e, "token request failed")
            }
        }
        result
    }

    /// `expires_in`; else a JWT's `exp`; else the configured default. Never zero.
    pub(crate) fn lifetime_of(&self, issued: &oauth::IssuedToken) -> Duration {
        use secrecy::ExposeSecret;
        let from_jwt = || {
            oauth::jwt_expiry(issued.access_token.expose_secret()).and_then(|exp| {
                let now = u64::try_from(self.now().timestamp()).ok()?;
                exp.checked_sub(now).map(Duration::from_secs)
            })
        };
        issued
            .expires_in
            .filter(|d| !d.is_zero())
            .or_else(from_jwt)
            .filter(|d| !d.is_zero())
            .unwrap_or(self.tokens().settings.default_ttl)
    }

    async fn token_failed(
        &self,
        client: &TokenClientRecord,
        key: &TokenKey,
        stored: Option<&StoredToken>,
        min_ttl: chrono::Duration,
        error: TokenError,
        now: DateTime<Utc>,
    ) -> Result<BrokeredToken, TokenBrokerError> {
        let bad_client = error.is_bad_client();
        match error {
            TokenError::Rejected { code, description } if bad_client => {
                let reason = format!("the provider answered {code}");
                self.store
                    .set_credentials_state(
                        client.provet_id,
                        &client.client_id,
                        "rejected",
                        Some(&reason),
                        now,
                    )
                    .await?;
                self.tokens().forget(client.provet_id);
                Err(TokenBrokerError::Rejected { code, description })
            }
            TokenError::Rejected { code, description } => {
                Err(TokenBrokerError::Rejected { code, description })
            }
            TokenError::Misconfigured(m) => Err(TokenBrokerError::Misconfigured(m)),
            TokenError::Unavailable {
                reason,
                retry_after,
            } => {
                let wait = self.back_off(client.provet_id, retry_after);
                self.serve_stale_or(
                    key,
                    stored,
                    min_ttl,
                    TokenBrokerError::Unavailable {
                        reason,
                        retry_after: wait,
                    },
                )
            }
        }
    }

    /// While upstream fails, a token that still meets `min_ttl` is better than an error.
    fn serve_stale_or(
        &self,
        key: &TokenKey,
        stored: Option<&StoredToken>,
        min_ttl: chrono::Duration,
        error: TokenBrokerError,
    ) -> Result<BrokeredToken, TokenBrokerError> {
        match stored {
            Some(token) if token.expires_at - self.now() >= min_ttl => {
                Ok(self.answer(key, token, Source::Database))
            }
            _ => Err(error),
        }
    }

    fn backing_off(&self, provet_id: i64) -> Option<Duration> {
        let b = *self.tokens().backoff.get(&provet_id)?;
        b.until.checked_duration_since(Instant::now())
    }

    /// Doubles the tenant's backoff (1 s, 2 s, 4 s ... max), or takes the provider's
    /// `Retry-After` when it is longer. Returns the wait.
    fn back_off(&self, provet_id: i64, retry_after: Option<Duration>) -> Duration {
        let settings = &self.tokens().settings;
        let mut entry = self.tokens().backoff.entry(provet_id).or_insert(Backoff {
            until: Instant::now(),
            failures: 0,
        });
        entry.failures = entry.failures.saturating_add(1);
        let exponential = Duration::from_secs(1u64 << entry.failures.saturating_sub(1).min(16))
            .min(settings.max_backoff);
        let wait = retry_after
            .map_or(exponential, |r| r.max(exponential))
            .max(Duration::from_secs(1));
        entry.until = Instant::now() + wait;
        wait
    }

    /// Fetches a token now to learn whether the credentials work, ignoring the rejection
    /// cool-down; records `ok` or `rejected`. Returns the credential state.
    pub async fn verify_credentials(&self, provet_id: i64) -> Result<(), TokenBrokerError> {
        let mkey = MemoryKey {
            provet_id,
            scope: "restapi".into(),
            subject: String::new(),
        };
        let flight = self
            .tokens()
            .flights
            .entry(mkey.clone())
            .or_insert_with(|| Arc::new(Mutex::new(())))
            .clone();
        let _turn = flight.lock().await;
        self.tokens().backoff.remove(&provet_id);
        let arrived = self.now();
        match self
            .fetch(&mkey, chrono::Duration::zero(), true, arrived, true)
            .await
        {
            Ok(_) | Err(TokenBrokerError::Rejected { .. }) => Ok(()),
            Err(TokenBrokerError::Unavailable { reason, .. }) => {
                tracing::warn!(
                    provet_id,
                    reason,
                    "credential check: provider unavailable; state unchanged"
                );
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// After a client_credentials hookup: check the credentials in the background.
    pub(crate) fn verify_in_background(&self, provet_id: i64) {
        if !self.tokens().settings.verify_on_hookup {
            return;
        }
        let broker = self.clone();
        self.tasks.spawn(async move {
            if let Err(e) = broker.verify_credentials(provet_id).await {
                tracing::warn!(provet_id, error = %e, "credential check failed");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_are_normalised() {
        assert_eq!(normalise_scope(None).unwrap(), "restapi");
        assert_eq!(
            normalise_scope(Some("restapi openid restapi")).unwrap(),
            "openid restapi"
        );
        assert!(normalise_scope(Some("  ")).is_err());
        assert!(normalise_scope(Some("a\"b")).is_err());
    }
}
