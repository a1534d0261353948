//! The token broker: internal services ask for a tenant's token and get a valid one, served
//! from memory when it can be. When a token must be fetched, exactly one request per token
//! key reaches the provider: callers in one process wait on one single flight per key, and
//! replicas on PostgreSQL take a lease row (see `broker_store::TokenLease`), then re-read
//! what another may have stored. No database connection is held while a provider answers.
//!
//! Where things are: `mod.rs` the `TokenBroker` (hot path, single flight, which client and
//! grant a request resolves to); `policy.rs` the decisions (pure, unit-tested); `request.rs`
//! requests, answers and errors; `settings.rs` the knobs; `memory.rs` what is held in this
//! process; `lease.rs` whose turn it is to ask the provider; `client_credentials.rs`
//! client_credentials fetches and failure handling; `refresh.rs` refresh-token rotation;
//! `checks.rs` the background credential checks and the keep-alive of idle grants.

mod checks;
mod client_credentials;
mod lease;
mod memory;
pub mod policy;
mod refresh;
mod request;
mod settings;

use std::sync::Arc;

use broker_oauth::Upstream;
use broker_oauth::token::{self as oauth, ClientAuth, TokenClient};
use broker_store::{Store, StoredToken, TokenClientRecord, TokenKey};
use chrono::{DateTime, Utc};
use dashmap::DashMap;
use rand::Rng;
use tokio::sync::Mutex;

use checks::CredentialChecks;
pub use checks::KeepAlive;
use memory::Memory;
use policy::{Mode, RequestContext};
pub use request::{BrokeredToken, Source, TokenBrokerError, TokenRequest};
use request::{answer, reconnect, usable_grant};
pub use settings::TokenSettings;

use crate::{Clock, Metrics};

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

/// Hands out tokens. Built once at start-up; shared by every request.
pub struct TokenBroker {
    pub settings: TokenSettings,
    pub upstream: Upstream,
    store: Store,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
    memory: Memory,
    flights: DashMap<TokenKey, Arc<Mutex<()>>>,
    /// Credential checks waiting or running in the background.
    checks: Arc<CredentialChecks>,
    /// This process's name on the leases it takes.
    owner: String,
    /// Hookups in flight: credential checks give way to a burst of them.
    pub foreground: Arc<crate::foreground::Foreground>,
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
        let checks = Arc::new(CredentialChecks::new(settings.verify_queue));
        Self {
            checks,
            settings,
            upstream,
            store,
            metrics,
            clock,
            memory: Memory::default(),
            flights: DashMap::new(),
            owner,
            foreground: Default::default(),
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

    /// Credential checks waiting or running.
    pub fn pending_checks(&self) -> usize {
        self.checks.depth()
    }

    /// A client_credentials tenant's client just arrived: check it soon (when configured).
    pub fn check_after_hookup(&self, provet_id: i64) {
        if self.settings.verify_on_hookup {
            self.checks.schedule(provet_id);
        }
    }

    /// Checks the tenant's credentials now (an operator asked). A provider that is down
    /// leaves the state as it was.
    pub async fn verify_now(&self, provet_id: i64) -> Result<(), TokenBrokerError> {
        match self.verify_credentials(provet_id).await {
            Err(TokenBrokerError::Unavailable { .. }) => Ok(()),
            other => other,
        }
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
            Some(c) if c.tenant_status == broker_domain::TenantStatus::Active => {
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
        if client.grant_type != broker_domain::GrantType::AuthorizationCode {
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

    /// A token as stored, its lifetime clamped.
    pub(crate) fn stored_token(
        &self,
        issued: &oauth::IssuedToken,
        now: DateTime<Utc>,
    ) -> StoredToken {
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
}

/// The token client for a tenant's current client.
pub(crate) fn token_client(client: &TokenClientRecord) -> TokenClient<'_> {
    TokenClient {
        token_url: &client.token_url,
        client_id: &client.client_id,
        client_secret: client.client_secret.as_ref(),
        auth: ClientAuth::from_advertised(&client.auth_methods),
    }
}
