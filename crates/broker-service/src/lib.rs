//! provet-broker's use cases. The HTTP layer and the command line call these; these call the
//! store. Nothing here knows about HTTP.

pub mod api_keys;
pub mod authorizations;
pub mod clock;
pub mod discovery;
pub mod events;
pub mod hookup;
pub mod metrics;
pub mod registration;
pub mod service_tenants;
pub mod tokens;
pub mod webhooks;

use std::sync::Arc;

use broker_domain::UrlPolicy;
use broker_store::Store;

pub use broker_store::events::{EventCursor, EventRecord};
pub use broker_store::{
    ApiKeyRecord, ClientRecord, DeliveryRecord, DiscoveryRecord, HookupOutcome, Readiness,
    RerunFilter, StoreError, TenantFilter, TenantRecord,
};
pub use clock::{Clock, SystemClock};
pub use metrics::Metrics;

/// Everything the use cases share, built once at start.
#[derive(Clone)]
pub struct Broker {
    pub store: Store,
    pub policy: Arc<UrlPolicy>,
    pub hookup_secrets: Arc<hookup::HookupSecrets>,
    pub hookup_writer: Arc<hookup::HookupWriter>,
    pub metrics: Arc<Metrics>,
    pub clock: Arc<dyn Clock>,
    pub discovery: Arc<discovery::Discovery>,
    pub tokens: Arc<tokens::TokenBroker>,
    /// Credential checks waiting or running in the background.
    pub credential_checks: Arc<tokens::CredentialChecks>,
    pub api_key_cache: Arc<api_keys::ApiKeyCache>,
    pub oauth: Arc<authorizations::OAuthSettings>,
    /// Background work started by requests (credential checks); joined on shutdown.
    pub tasks: tokio_util::task::TaskTracker,
    /// The event feed and its pruning.
    pub events: Arc<events::EventFeed>,
    /// Webhooks: registration, deliveries, and the worker that sends them.
    pub webhooks: Arc<webhooks::WebhookAdmin>,
    pub webhook_worker: Arc<webhooks::WebhookWorker>,
}

impl Broker {
    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.clock.now()
    }

    /// The tenant view; `None` for an unknown tenant.
    pub async fn tenant(&self, provet_id: i64) -> Result<Option<TenantRecord>, StoreError> {
        self.store.tenant(provet_id).await
    }

    pub async fn tenants(&self, filter: &TenantFilter) -> Result<Vec<TenantRecord>, StoreError> {
        self.store.tenants(filter).await
    }

    pub async fn deliveries(
        &self,
        provet_id: i64,
        before: Option<i64>,
        limit: u64,
    ) -> Result<Vec<DeliveryRecord>, StoreError> {
        self.store.deliveries(provet_id, before, limit).await
    }

    /// The tenant removed the integration: disable it and wipe its secrets.
    pub async fn remove_tenant(&self, provet_id: i64) -> Result<bool, StoreError> {
        let removed = self.store.remove_tenant(provet_id, self.now()).await?;
        self.tokens.forget(provet_id);
        if removed {
            tracing::info!(provet_id, "tenant removed; its secrets were wiped");
        }
        Ok(removed)
    }

    /// The metrics in the Prometheus text format, with the gauges of the moment (pools,
    /// queues, memory) read just before.
    pub fn metrics_text(&self) -> String {
        for (pool, usage) in self.store.pool_usage() {
            let in_use = usage.size.saturating_sub(usage.idle);
            self.metrics.pool(pool, in_use, usage.idle, usage.max);
        }
        self.metrics
            .queue("credential_checks", self.credential_checks.depth());
        self.metrics
            .cached_tokens
            .set(i64::try_from(self.tokens.cached_tokens()).unwrap_or(i64::MAX));
        self.metrics
            .events_written_totals(self.store.event_tap().written());
        self.metrics.render()
    }

    /// A valid access token for the tenant (see `tokens`).
    pub async fn token(
        &self,
        provet_id: i64,
        request: &tokens::TokenRequest,
    ) -> Result<tokens::BrokeredToken, tokens::TokenBrokerError> {
        self.tokens.token(provet_id, request).await
    }

    /// Checks the tenant's credentials now (an operator asked). A provider that is down
    /// leaves the state as it was.
    pub async fn verify_credentials(&self, provet_id: i64) -> Result<(), tokens::TokenBrokerError> {
        match self.tokens.verify_credentials(provet_id).await {
            Err(tokens::TokenBrokerError::Unavailable { .. }) => Ok(()),
            other => other,
        }
    }

    /// Refreshes idle grants every `keepalive_interval` until `stop`.
    pub async fn run_keepalive(self, stop: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(self.oauth.keepalive_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let before = self.now() - tokens::policy::to_chrono(self.oauth.keepalive_after);
            match self.tokens.keep_grants_alive(before).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(refreshed = n, "keep-alive refreshed idle grants"),
                Err(e) => tracing::warn!(error = %e, "keep-alive could not list grants"),
            }
        }
    }

    /// Runs the hookup writers (group commit) until `stop`.
    pub async fn run_hookup_writer(self, stop: tokio_util::sync::CancellationToken) {
        self.hookup_writer
            .clone()
            .run(self.store.clone(), stop)
            .await;
    }

    /// Runs the credential-check queue until `stop`.
    pub async fn run_credential_checks(self, stop: tokio_util::sync::CancellationToken) {
        let settings = &self.tokens.settings;
        self.credential_checks
            .clone()
            .run(
                self.tokens.clone(),
                settings.verify_concurrency,
                settings.verify_sweep_interval,
                stop,
            )
            .await;
    }

    /// A token's lifetime as the provider gave it, clamped.
    pub(crate) fn lifetime_of(
        &self,
        issued: &broker_oauth::token::IssuedToken,
    ) -> chrono::Duration {
        use secrecy::ExposeSecret;
        tokens::policy::lifetime(
            issued.expires_in,
            broker_oauth::token::jwt_expiry(issued.access_token.expose_secret()),
            self.now(),
            self.tokens.settings.default_ttl,
        )
    }

    pub async fn readiness(&self) -> Result<Readiness, StoreError> {
        self.store.readiness().await
    }
}
