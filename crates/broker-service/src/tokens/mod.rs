//! The token broker: internal services ask for a tenant's token and get a valid one, served
//! from memory when it can be. When a token must be fetched, exactly one request per token
//! key reaches the provider: callers in one process wait on one single flight per key, and
//! replicas on PostgreSQL take a lease row (see `broker_store::TokenLease`), then re-read
//! what another may have stored. No database connection is held while a provider answers.
//!
//! The decisions are in `policy` (pure, unit-tested); this file does the I/O around them;
//! `refresh` rotates refresh tokens; `checks` runs credential checks in the background.

mod checks;
mod memory;
pub mod policy;
mod refresh;

use std::sync::Arc;
use std::time::Duration;

use broker_domain::{CredentialsState, GrantType, TenantStatus};
use broker_oauth::Upstream;
use broker_oauth::token::{self as oauth, ClientAuth, TokenClient, TokenError};
use broker_store::{GrantRecord, Store, StoredToken, TokenClientRecord, TokenKey, TokenLease};
use chrono::{DateTime, Utc};
use dashmap::DashMap;
use rand::Rng;
use secrecy::SecretString;
use tokio::sync::Mutex;

pub use checks::CredentialChecks;
use memory::Memory;
use policy::{Mode, RequestContext};

use crate::{Clock, Metrics, StoreError};

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
    /// The upstream timeout; leases last longer than the requests they cover.
    pub timeout: Duration,
    /// How long a memory entry is trusted before the database is consulted again (another
    /// replica may have removed the tenant or replaced its client).
    pub revalidate_after: Duration,
    /// The longest per-tenant backoff after upstream failures.
    pub max_backoff: Duration,
    /// Check a client_credentials tenant's credentials (by fetching a token) after a hookup.
    pub verify_on_hookup: bool,
    /// Credential checks running at once, per replica.
    pub verify_concurrency: usize,
    /// Checks waiting to run; beyond this, a check waits for the next sweep.
    pub verify_queue: usize,
    /// How often unchecked credentials are looked for (checks that could not run).
    pub verify_sweep_interval: Duration,
    /// The scopes callers may ask for.
    pub allowed_scopes: Vec<String>,
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
            verify_concurrency: 8,
            verify_queue: 10_000,
            verify_sweep_interval: Duration::from_secs(30),
            allowed_scopes: vec!["restapi".into(), "openid".into()],
        }
    }
}

impl TokenSettings {
    /// A lease covers one upstream request (two for a refresh retried after a rotation
    /// elsewhere), each bounded by the timeout, with room for the database: past it, another
    /// replica may take over (a dead replica's turn passes on within this).
    fn lease_ttl(&self) -> Duration {
        self.timeout * 2 + Duration::from_secs(2)
    }

    /// How long a caller waits for another replica's turn: a dead holder's lease expires
    /// within this.
    fn lease_wait(&self) -> Duration {
        self.lease_ttl() + Duration::from_secs(2)
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

/// What a request resolved to.
enum Target {
    ClientCredentials(TokenKey),
    Grant(TokenKey),
}

impl Target {
    fn key(&self) -> &TokenKey {
        match self {
            Self::ClientCredentials(k) | Self::Grant(k) => k,
        }
    }
}

/// What `take_turn` found.
enum Turn {
    Served(BrokeredToken),
    /// This caller holds the lease and must ask the provider; `stored` is what the database
    /// held when it was taken.
    Ours {
        lease: TokenLease,
        stored: Option<StoredToken>,
    },
}

/// Hands out tokens. Built once at start-up; shared by every request.
pub struct TokenBroker {
    pub settings: TokenSettings,
    pub upstream: Upstream,
    pub(crate) store: Store,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
    memory: Memory,
    flights: DashMap<TokenKey, Arc<Mutex<()>>>,
    /// This process's name on the leases it takes.
    owner: String,
}

impl TokenBroker {
    pub fn new(
        settings: TokenSettings,
        upstream: Upstream,
        store: Store,
        metrics: Arc<Metrics>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let owner = format!("{:016x}", rand::rng().random::<u64>());
        Self {
            settings,
            upstream,
            store,
            metrics,
            clock,
            memory: Memory::default(),
            flights: DashMap::new(),
            owner,
        }
    }

    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Drops everything held for a tenant (new client, removal, new grant).
    pub fn forget(&self, provet_id: i64) {
        self.memory.forget(provet_id);
    }

    /// Frees memory that can serve no one any more; run now and then.
    pub fn sweep(&self) {
        self.memory
            .sweep(self.now(), self.settings.revalidate_after * 10);
        self.flights.retain(|_, f| Arc::strong_count(f) > 1);
    }

    /// Tokens held in memory.
    pub fn cached_tokens(&self) -> usize {
        self.memory.token_count()
    }

    /// A valid access token for the tenant, per the caller's request.
    pub async fn token(
        &self,
        provet_id: i64,
        request: &TokenRequest,
    ) -> Result<BrokeredToken, TokenBrokerError> {
        let now = self.now();
        let scope = policy::scope(request.scope.as_deref(), &self.settings.allowed_scopes)
            .map_err(TokenBrokerError::InvalidRequest)?;
        let subject = policy::subject(request.subject.as_deref())
            .map_err(TokenBrokerError::InvalidRequest)?;
        let ctx = RequestContext {
            min_ttl: policy::min_ttl(request.min_ttl).map_err(TokenBrokerError::InvalidRequest)?,
            mode: if request.force_refresh {
                Mode::ForceRefresh
            } else {
                Mode::Cached
            },
            arrived: now,
        };
        let alias = memory::alias(&scope, subject.as_deref());
        if let Some(cached) = self.memory.lookup(provet_id, &alias)
            && policy::serve_from_memory(
                &cached.token,
                cached.validated_at,
                &ctx,
                now,
                &self.settings,
            )
        {
            return Ok(answer(&cached.key, &cached.token, Source::Memory));
        }
        self.slow_path(provet_id, &scope, subject.as_deref(), alias, &ctx, None)
            .await
    }

    /// Fetches a token now to learn whether the credentials work, ignoring the rejection
    /// cool-down and any backoff; records `ok` or `rejected`. A provider that is down
    /// changes nothing (`Unavailable`: the check runs again later).
    pub async fn verify_credentials(&self, provet_id: i64) -> Result<(), TokenBrokerError> {
        self.verify_with(provet_id, None).await
    }

    async fn verify_with(
        &self,
        provet_id: i64,
        client: Option<Arc<TokenClientRecord>>,
    ) -> Result<(), TokenBrokerError> {
        self.memory.clear_backoff(provet_id);
        let ctx = RequestContext {
            min_ttl: chrono::Duration::zero(),
            mode: Mode::Verify,
            arrived: self.now(),
        };
        let alias = memory::alias("restapi", None);
        match self
            .slow_path(provet_id, "restapi", None, alias, &ctx, client)
            .await
        {
            Ok(_) | Err(TokenBrokerError::Rejected { .. }) => Ok(()),
            Err(TokenBrokerError::Unavailable {
                reason,
                retry_after,
            }) => {
                tracing::warn!(
                    provet_id,
                    reason,
                    "credential check: provider unavailable; state unchanged, checked again later"
                );
                Err(TokenBrokerError::Unavailable {
                    reason,
                    retry_after,
                })
            }
            Err(e) => Err(e),
        }
    }

    async fn slow_path(
        &self,
        provet_id: i64,
        scope: &str,
        subject: Option<&str>,
        alias: String,
        ctx: &RequestContext,
        client: Option<Arc<TokenClientRecord>>,
    ) -> Result<BrokeredToken, TokenBrokerError> {
        let client = match client {
            Some(c) => c,
            None => self.client(provet_id, ctx.mode).await?,
        };
        let target = self.resolve(&client, scope, subject).await?;
        let key = target.key().clone();
        self.memory.alias_to(alias, &key);

        let flight = self
            .flights
            .entry(key.clone())
            .or_insert_with(|| Arc::new(Mutex::new(())))
            .clone();
        let result = {
            let _turn = flight.lock().await;
            // Whoever held the flight before us may have fetched what we need.
            match self.memory.token(&key).filter(|c| {
                policy::will_do(&c.token, ctx, self.now(), &self.settings)
                    && (c.token.obtained_at >= ctx.arrived
                        || policy::serve_from_memory(
                            &c.token,
                            c.validated_at,
                            &RequestContext {
                                mode: Mode::Cached,
                                ..*ctx
                            },
                            self.now(),
                            &self.settings,
                        ))
            }) {
                Some(c) => Ok(answer(&c.key, &c.token, Source::Memory)),
                None => match target {
                    Target::ClientCredentials(key) => {
                        self.fetch_client_credentials(&client, &key, ctx).await
                    }
                    Target::Grant(key) => self.refresh_grant(&client, &key, ctx).await,
                },
            }
        };
        drop(flight);
        self.flights
            .remove_if(&key, |_, f| Arc::strong_count(f) == 1);
        result
    }

    /// The tenant's current client: from memory while it is fresh (not for checks), else
    /// from the database.
    async fn client(
        &self,
        provet_id: i64,
        mode: Mode,
    ) -> Result<Arc<TokenClientRecord>, TokenBrokerError> {
        let now = self.now();
        if mode != Mode::Verify
            && let Some(c) = self.memory.client(provet_id)
            && now - c.validated_at < policy::to_chrono(self.settings.revalidate_after)
        {
            return Ok(c.record);
        }
        match self.store.tokens().token_client(provet_id).await? {
            Some(c) if c.tenant_status == TenantStatus::Active => {
                let record = Arc::new(c);
                self.memory.set_client(record.clone(), now);
                Ok(record)
            }
            _ => {
                self.memory.forget(provet_id);
                Err(TokenBrokerError::TenantNotFound(provet_id))
            }
        }
    }

    /// The token key a request is for: the client and scope for client_credentials; the
    /// grant (by subject, else the most recent) for authorization-code tenants, whose tokens
    /// are kept under the grant's own scope.
    async fn resolve(
        &self,
        client: &TokenClientRecord,
        scope: &str,
        subject: Option<&str>,
    ) -> Result<Target, TokenBrokerError> {
        let provet_id = client.provet_id;
        if client.grant_type != GrantType::AuthorizationCode {
            if subject.is_some() {
                return Err(TokenBrokerError::InvalidRequest(format!(
                    "subject names a clinic user's grant; tenant {provet_id} uses client_credentials and has none"
                )));
            }
            return Ok(Target::ClientCredentials(TokenKey {
                provet_id,
                client_id: client.client_id.clone(),
                scope: scope.to_owned(),
                subject: String::new(),
            }));
        }
        let Some(grant) = self
            .store
            .grants()
            .grant(provet_id, &client.client_id, subject)
            .await?
        else {
            return Err(reconnect(
                provet_id,
                match subject {
                    Some(_) => "no grant with this subject",
                    None => "no clinic user has connected yet",
                },
            ));
        };
        usable_grant(&grant, scope)?;
        Ok(Target::Grant(TokenKey {
            provet_id,
            client_id: client.client_id.clone(),
            scope: grant.scope.clone(),
            subject: grant.subject.clone(),
        }))
    }

    async fn fetch_client_credentials(
        &self,
        client: &TokenClientRecord,
        key: &TokenKey,
        ctx: &RequestContext,
    ) -> Result<BrokeredToken, TokenBrokerError> {
        let rejected_at = (client.credentials_state == CredentialsState::Rejected)
            .then_some(client.credentials_checked_at)
            .flatten();
        if policy::in_cooldown(rejected_at, ctx, self.now(), &self.settings) {
            return Err(TokenBrokerError::Rejected {
                code: "invalid_client".into(),
                description: Some(
                    "the provider rejected this client's credentials recently; a new hookup or a credential check tries again".into(),
                ),
            });
        }
        let (lease, stored) = match self.take_turn(key, ctx).await? {
            Turn::Served(token) => return Ok(token),
            Turn::Ours { lease, stored } => (lease, stored),
        };
        let result = self.request_token(client, &key.scope).await;
        let now = self.now();
        match result {
            Ok(issued) => {
                let token = self.stored_token(&issued, now);
                let check_passed = client.credentials_state != CredentialsState::Ok;
                let saved = self
                    .store
                    .tokens()
                    .save_token(key, &token, Some(&lease), check_passed.then_some(now))
                    .await;
                if let Err(e) = saved {
                    let _ = self.store.tokens().release_token_lease(&lease).await;
                    return Err(e.into());
                }
                if check_passed {
                    self.memory.credentials_ok(key.provet_id);
                }
                self.memory.remember(key, &token, now);
                self.memory.clear_backoff(key.provet_id);
                Ok(answer(key, &token, Source::Provider))
            }
            Err(e) => {
                self.store.tokens().release_token_lease(&lease).await?;
                self.token_failed(client, key, stored.as_ref(), ctx, e, now)
                    .await
            }
        }
    }

    /// Before asking the provider: a stored token that will do is served; during a backoff
    /// a token that still meets `min_ttl` is served, else 503; otherwise this caller takes
    /// the lease (waiting, without holding a connection, while another replica has it) and
    /// looks again, as another replica may have stored a token meanwhile.
    async fn take_turn(
        &self,
        key: &TokenKey,
        ctx: &RequestContext,
    ) -> Result<Turn, TokenBrokerError> {
        if let Some(b) = self.memory.backoff(key.provet_id)
            && b.until > self.now()
        {
            let stored = self.store.tokens().load_token(key).await?;
            let wait = (b.until - self.now()).to_std().unwrap_or_default();
            return self
                .serve_stale_or(
                    key,
                    stored.as_ref(),
                    ctx,
                    TokenBrokerError::Unavailable {
                        reason: "the provider failed recently; backing off".into(),
                        retry_after: wait.max(Duration::from_secs(1)),
                    },
                )
                .map(Turn::Served);
        }
        let started = tokio::time::Instant::now();
        let deadline = started + self.settings.lease_wait();
        let mut pause = Duration::from_millis(5);
        loop {
            let attempt = self
                .store
                .tokens()
                .try_token_lease(key, &self.owner, self.settings.lease_ttl())
                .await?;
            let now = self.now();
            if let Some(token) = attempt
                .stored
                .as_ref()
                .filter(|t| policy::will_do(t, ctx, now, &self.settings))
            {
                if let Some(lease) = &attempt.lease {
                    self.store.tokens().release_token_lease(lease).await?;
                }
                self.memory.remember(key, token, now);
                return Ok(Turn::Served(answer(key, token, Source::Database)));
            }
            if let Some(lease) = attempt.lease {
                self.metrics.token_lock_wait(started.elapsed());
                return Ok(Turn::Ours {
                    lease,
                    stored: attempt.stored,
                });
            }
            if tokio::time::Instant::now() + pause > deadline {
                return Err(TokenBrokerError::Unavailable {
                    reason: "another replica is still asking the provider".into(),
                    retry_after: Duration::from_secs(1),
                });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    async fn request_token(
        &self,
        client: &TokenClientRecord,
        scope: &str,
    ) -> Result<oauth::IssuedToken, TokenError> {
        let started = tokio::time::Instant::now();
        let result = oauth::client_credentials(
            &self.upstream,
            &TokenClient {
                token_url: &client.token_url,
                client_id: &client.client_id,
                client_secret: client.client_secret.as_ref(),
                auth: ClientAuth::from_advertised(&client.auth_methods),
            },
            scope,
        )
        .await;
        self.metrics
            .upstream_token_request(outcome(&result), started.elapsed());
        match &result {
            Ok(_) => {
                tracing::debug!(provet_id = client.provet_id, client_id = %client.client_id, "fetched a token from the provider")
            }
            Err(e) => {
                tracing::warn!(provet_id = client.provet_id, client_id = %client.client_id, error = %e, "token request failed")
            }
        }
        result
    }

    /// A token as stored, its lifetime clamped.
    fn stored_token(&self, issued: &oauth::IssuedToken, now: DateTime<Utc>) -> StoredToken {
        use secrecy::ExposeSecret;
        let lifetime = policy::lifetime(
            issued.expires_in,
            oauth::jwt_expiry(issued.access_token.expose_secret()),
            now,
            self.settings.default_ttl,
        );
        StoredToken {
            expires_at: now
                .checked_add_signed(lifetime)
                .unwrap_or(DateTime::<Utc>::MAX_UTC),
            obtained_at: now,
            token_type: issued.token_type.clone(),
            access_token: issued.access_token.clone(),
            granted_scope: issued.scope.clone(),
        }
    }

    /// What a provider's refusal or failure means for the caller and the tenant.
    async fn token_failed(
        &self,
        client: &TokenClientRecord,
        key: &TokenKey,
        stored: Option<&StoredToken>,
        ctx: &RequestContext,
        error: TokenError,
        now: DateTime<Utc>,
    ) -> Result<BrokeredToken, TokenBrokerError> {
        let bad_client = error.is_bad_client();
        match error {
            TokenError::Rejected { code, description } if bad_client => {
                let reason = format!("the provider answered {code}");
                self.store
                    .tokens()
                    .set_credentials_state(
                        client.provet_id,
                        &client.client_id,
                        CredentialsState::Rejected,
                        Some(&reason),
                        now,
                    )
                    .await?;
                self.memory.forget(client.provet_id);
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
                    ctx,
                    TokenBrokerError::Unavailable {
                        reason,
                        retry_after: wait,
                    },
                )
            }
        }
    }

    fn serve_stale_or(
        &self,
        key: &TokenKey,
        stored: Option<&StoredToken>,
        ctx: &RequestContext,
        error: TokenBrokerError,
    ) -> Result<BrokeredToken, TokenBrokerError> {
        match stored {
            Some(token) if policy::serve_stale(Some(token), ctx, self.now()) => {
                Ok(answer(key, token, Source::Database))
            }
            _ => Err(error),
        }
    }

    /// One more failure for the tenant: the wait before the next request.
    fn back_off(&self, provet_id: i64, retry_after: Option<Duration>) -> Duration {
        let now = self.now();
        let jitter: f64 = rand::rng().random();
        let mut wait = Duration::ZERO;
        self.memory.failed(provet_id, |failures| {
            wait = policy::backoff(failures, retry_after, self.settings.max_backoff, jitter);
            now.checked_add_signed(policy::to_chrono(wait))
                .unwrap_or(DateTime::<Utc>::MAX_UTC)
        });
        wait
    }
}

fn answer(key: &TokenKey, token: &StoredToken, source: Source) -> BrokeredToken {
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

fn outcome<T>(result: &Result<T, TokenError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(e) => error_outcome(e),
    }
}

fn error_outcome(e: &TokenError) -> &'static str {
    match e {
        TokenError::Rejected { .. } => "rejected",
        TokenError::Unavailable { .. } => "unavailable",
        TokenError::Misconfigured(_) => "misconfigured",
    }
}

fn reconnect(provet_id: i64, detail: &str) -> TokenBrokerError {
    TokenBrokerError::ReauthorizationRequired(format!(
        "tenant {provet_id}: {detail}; a clinic user must connect again (start a new authorization)"
    ))
}

/// A grant serves a request when it is active and covers the scope asked for.
fn usable_grant(grant: &GrantRecord, scope: &str) -> Result<(), TokenBrokerError> {
    if !grant.state.is_active() {
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
