//! Hookup intake: Provet delivers a tenant's OAuth client; the message is validated, stored
//! in one transaction (through the group-commit writer), and only then answered.
//!
//! `mod.rs` is the use case (`HookupIntake`); `registration.rs` the same for a message an
//! operator enters by hand (`POST /admin/tenants`, `tenants add`); `secrets.rs` the hookup
//! URL's secret; `writer.rs` the batching writer tasks.

mod registration;
mod secrets;
mod writer;

use std::sync::Arc;

use broker_domain::{
    DeliveryOutcome, FieldError, GrantType, HookupMessage, ParseError, ProvetId, Rejected,
    UrlPolicy,
};
use broker_store::Store;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use secrets::{HookupSecrets, SecretMatch, fingerprint};
pub use writer::HookupWriter;

use crate::discovery::Discovery;
use crate::tokens::TokenBroker;
use crate::{Clock, HookupOutcome, Metrics, StoreError};

/// What Provet is told once a message is stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookupReceipt {
    pub provet_id: i64,
    pub client_id: String,
    pub outcome: HookupOutcome,
}

#[derive(Debug, thiserror::Error)]
pub enum HookupError {
    #[error(transparent)]
    Invalid(#[from] ParseError),
    #[error("the message could not be stored: {0}")]
    Store(#[from] StoreError),
}

/// Receives the hookups Provet delivers.
pub struct HookupIntake {
    store: Store,
    policy: Arc<UrlPolicy>,
    secrets: HookupSecrets,
    writer: Arc<HookupWriter>,
    /// New credentials: cached tokens are dropped, a credential check is scheduled.
    tokens: Arc<TokenBroker>,
    /// New discovery URLs wake the worker.
    discovery: Arc<Discovery>,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
}

/// What a `HookupIntake` is built from.
pub struct HookupIntakeParts {
    pub store: Store,
    pub policy: Arc<UrlPolicy>,
    pub secrets: HookupSecrets,
    pub writer: HookupWriter,
    pub tokens: Arc<TokenBroker>,
    pub discovery: Arc<Discovery>,
    pub metrics: Arc<Metrics>,
    pub clock: Arc<dyn Clock>,
}

impl HookupIntake {
    pub fn new(parts: HookupIntakeParts) -> Self {
        Self {
            store: parts.store,
            policy: parts.policy,
            secrets: parts.secrets,
            writer: Arc::new(parts.writer),
            tokens: parts.tokens,
            discovery: parts.discovery,
            metrics: parts.metrics,
            clock: parts.clock,
        }
    }

    /// The hookup URL's secrets (checked before anything else about a request).
    pub fn secrets(&self) -> &HookupSecrets {
        &self.secrets
    }

    /// Whether `candidate` opens the hookup URL; counts which accepted secret it was
    /// (`broker_hookup_secret_matches_total`), so an operator sees when an extra secret is
    /// no longer used.
    pub fn admit(&self, candidate: &str) -> bool {
        let Some(which) = self.secrets.matches(candidate) else {
            return false;
        };
        self.metrics.hookup_secret_matched(which.as_str());
        true
    }

    /// Runs the group-commit writers until `stop`.
    pub async fn run_writer(self: Arc<Self>, stop: CancellationToken) {
        self.writer.clone().run(self.store.clone(), stop).await;
    }

    /// Validates and stores one hookup body. `Ok` means it is durably stored.
    pub async fn receive(&self, body: &[u8]) -> Result<HookupReceipt, HookupError> {
        let _in_flight = self.tokens.foreground.enter();
        let msg = match HookupMessage::parse_naming_tenant(body, &self.policy) {
            Ok(msg) => msg,
            Err(rejected) => {
                self.record_rejection(body, &rejected).await;
                self.metrics.hookup(DeliveryOutcome::Rejected.as_str());
                return Err(rejected.error.into());
            }
        };
        let span = tracing::info_span!(
            "hookup",
            provet_id = msg.provet_id.get(),
            client_id = %msg.client_id
        );
        self.store_message(msg).instrument(span).await
    }

    async fn store_message(&self, msg: HookupMessage) -> Result<HookupReceipt, HookupError> {
        match self.writer.store(&self.store, &msg, self.clock.now()).await {
            Ok(decision) => Ok(self.stored(msg, decision.outcome)),
            Err(err) => {
                self.metrics.hookup("failed");
                tracing::error!(
                    error = %err,
                    "hookup could not be stored; Provet will see a 503 and may retry"
                );
                Err(err.into())
            }
        }
    }

    /// What follows a stored message, whatever its source: metrics, the log line, and for
    /// new credentials the token cache, discovery and a credential check.
    fn stored(&self, msg: HookupMessage, outcome: HookupOutcome) -> HookupReceipt {
        self.metrics.hookup(outcome.as_str());
        if outcome != HookupOutcome::Unchanged {
            self.credentials_changed(&msg);
        }
        tracing::info!(
            outcome = outcome.as_str(),
            grant_type = msg.grant_type.as_str(),
            "hookup stored"
        );
        HookupReceipt {
            provet_id: msg.provet_id.get(),
            client_id: msg.client_id,
            outcome,
        }
    }

    /// New credentials: nothing cached for the old ones may be served; discovery and a
    /// credential check run for the new ones.
    fn credentials_changed(&self, msg: &HookupMessage) {
        let provet_id = msg.provet_id.get();
        self.tokens.forget(provet_id);
        if msg.openid_autodiscovery_url.is_some() {
            self.discovery.wake();
        }
        if msg.grant_type == GrantType::ClientCredentials {
            self.tokens.check_after_hookup(provet_id);
        }
    }

    /// Keeps a trace of a rejected delivery (its digest and field errors; never the body)
    /// under the tenant it names, when it names one validly.
    async fn record_rejection(&self, body: &[u8], rejected: &Rejected) {
        let errors = match &rejected.error {
            ParseError::Invalid(errors) => errors.clone(),
            ParseError::InvalidJson(message) => vec![FieldError {
                field: "$".into(),
                message: message.clone(),
            }],
        };
        let provet_id = rejected.provet_id.map(ProvetId::get);
        let digest = hex::encode(Sha256::digest(body));
        tracing::warn!(
            provet_id,
            fields = ?errors.iter().map(|e| e.field.as_str()).collect::<Vec<_>>(),
            "hookup rejected"
        );
        if let Err(e) = self
            .store
            .tenants()
            .record_rejected_delivery(provet_id, &digest, &errors, self.clock.now())
            .await
        {
            tracing::warn!(error = %e, "could not record a rejected hookup delivery");
        }
    }
}
