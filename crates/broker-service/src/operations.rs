//! What operators and orchestrators read: readiness and the metrics of the moment.

use std::sync::Arc;
use std::time::Duration;

use broker_store::{Readiness, Store};

use crate::tokens::TokenBroker;
use crate::{Metrics, StoreError};

/// The bound on the counts read for one scrape (Prometheus' default scrape timeout is 10 s).
const FLEET_COUNT_TIMEOUT: Duration = Duration::from_secs(2);

/// Health and metrics.
pub struct Operations {
    store: Store,
    tokens: Arc<TokenBroker>,
    metrics: Arc<Metrics>,
}

impl Operations {
    pub fn new(store: Store, tokens: Arc<TokenBroker>, metrics: Arc<Metrics>) -> Self {
        Self {
            store,
            tokens,
            metrics,
        }
    }

    pub async fn readiness(&self) -> Result<Readiness, StoreError> {
        self.store.readiness().await
    }

    /// The metrics in the Prometheus text format, with the gauges of the moment (pools,
    /// queues, memory, and the counts by state) read just before.
    ///
    /// The counts are four grouped queries (tenants, current clients, discovery, grants),
    /// each one index or table scan: a few milliseconds at 10,000 tenants, on a scrape every
    /// 15-60 s. When the database does not answer within `FLEET_COUNT_TIMEOUT` the gauges
    /// keep their last values, so the scrape itself still succeeds during an outage.
    pub async fn metrics_text(&self) -> String {
        match tokio::time::timeout(FLEET_COUNT_TIMEOUT, self.store.fleet().counts()).await {
            Ok(Ok(counts)) => self.metrics.fleet(&counts),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not count tenants by state for /metrics")
            }
            Err(_) => tracing::warn!(
                timeout = ?FLEET_COUNT_TIMEOUT,
                "counting tenants by state for /metrics timed out; gauges keep their last values"
            ),
        }
        for (pool, usage) in self.store.pool_usage() {
            let in_use = usage.size.saturating_sub(usage.idle);
            self.metrics.pool(pool, in_use, usage.idle, usage.max);
        }
        self.metrics
            .queue("credential_checks", self.tokens.pending_checks());
        self.metrics
            .cached_tokens
            .set(i64::try_from(self.tokens.cached_tokens()).unwrap_or(i64::MAX));
        self.metrics
            .events_written_totals(self.store.events().tap().written());
        self.metrics.render()
    }
}
