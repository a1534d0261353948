//! What operators and orchestrators read: readiness and the metrics of the moment.

use std::sync::Arc;

use broker_store::{Readiness, Store};

use crate::tokens::TokenBroker;
use crate::{Metrics, StoreError};

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
    /// queues, memory) read just before.
    pub fn metrics_text(&self) -> String {
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
