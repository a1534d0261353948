//! provet-broker's use cases. The HTTP layer and the command line call these; these call the
//! store. Nothing here knows about HTTP.

pub mod api_keys;
pub mod authorizations;
pub mod clock;
pub mod discovery;
pub mod hookup;
pub mod metrics;
pub mod tokens;

use std::sync::Arc;

use broker_domain::UrlPolicy;
use broker_store::Store;

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
    pub metrics: Arc<Metrics>,
    pub clock: Arc<dyn Clock>,
    pub discovery: Arc<discovery::Discovery>,
    pub tokens: Arc<tokens::TokenCache>,
    pub api_key_cache: Arc<api_keys::ApiKeyCache>,
    pub oauth: Arc<authorizations::OAuthSettings>,
    /// Background work started by requests (credential checks); joined on shutdown.
    pub tasks: tokio_util::task::TaskTracker,
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

    pub async fn readiness(&self) -> Result<Readiness, StoreError> {
        self.store.readiness().await
    }
}
