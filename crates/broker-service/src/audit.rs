//! The audit log: every admin action through the API, the CLI or the console is recorded
//! after it ran, with its outcome. Recording never fails the action it describes (the action
//! has happened); a write that fails is logged at `error`.

use std::sync::Arc;

use broker_domain::AuditRecord;
use broker_store::{AuditEntry, AuditQuery, Store};

use crate::{Clock, StoreError};

/// Entries per page, at most.
pub const MAX_PAGE: u64 = 500;

/// Records and lists admin actions.
pub struct AuditLog {
    store: Store,
    clock: Arc<dyn Clock>,
}

impl AuditLog {
    pub fn new(store: Store, clock: Arc<dyn Clock>) -> Self {
        Self { store, clock }
    }

    /// Appends the entry and logs the action at `info`.
    pub async fn record(&self, record: AuditRecord) {
        tracing::info!(
            action = record.action.as_str(),
            actor_kind = record.actor.kind.as_str(),
            actor = %record.actor.name,
            provet_id = record.provet_id.map(|p| p.get()),
            target = record.target.as_deref(),
            outcome = record.outcome.as_str(),
            "admin action"
        );
        if let Err(e) = self.store.audit().append(&record, self.clock.now()).await {
            tracing::error!(
                action = record.action.as_str(),
                error = %e,
                "could not write the audit entry for an admin action that ran"
            );
        }
    }

    /// A page, newest first; `limit` is clamped to 1..=`MAX_PAGE`.
    pub async fn list(&self, mut query: AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        query.limit = query.limit.clamp(1, MAX_PAGE);
        self.store.audit().list(&query).await
    }
}
