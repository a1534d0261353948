//! Signed webhooks: registration by operators (`WebhookAdmin`), and the background
//! `WebhookWorker` that turns events into deliveries and sends them with retries.

pub mod policy;
pub mod sender;
pub mod signing;
mod worker;

use std::time::Duration;

use broker_domain::{EventSelection, FieldError, WebhookUrl};
use broker_store::Store;
pub use broker_store::webhooks::{WebhookDeliveryRecord, WebhookRecord};
use chrono::{DateTime, Utc};
use secrecy::SecretString;

pub use worker::{WebhookWorker, attempt_outcome};

use crate::StoreError;

/// How webhooks are delivered.
#[derive(Clone, Debug)]
pub struct WebhookSettings {
    /// The bound on one attempt (`events.timeout`).
    pub timeout: Duration,
    /// The waits after each failed attempt; when they run out the delivery is `failed`.
    pub retry_schedule: Vec<Duration>,
    /// Attempts in flight per endpoint, per replica.
    pub per_endpoint: usize,
    /// Attempts in flight in all, per replica.
    pub concurrency: usize,
    /// How often the workers look for work that another replica created (their own wakes
    /// them at once).
    pub poll_interval: Duration,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(15),
            retry_schedule: policy::DEFAULT_SCHEDULE.to_vec(),
            per_endpoint: 4,
            concurrency: 32,
            poll_interval: Duration::from_millis(200),
        }
    }
}

impl WebhookSettings {
    /// How long a claim on an attempt lasts: well beyond the attempt's timeout, so that a
    /// slow endpoint is never sent the same attempt by a second replica.
    pub fn claim_for(&self) -> Duration {
        self.timeout * 2 + Duration::from_secs(30)
    }
}

/// Why a webhook could not be registered.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("invalid webhook")]
    Invalid(Vec<FieldError>),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A registered webhook and its secret, shown once.
pub struct CreatedWebhook {
    pub record: WebhookRecord,
    pub secret: SecretString,
}

/// What a manual retry did.
pub enum ManualRetry {
    NotFound,
    /// An attempt was already in flight; it stands for this one.
    InFlight(WebhookDeliveryRecord),
    Attempted(WebhookDeliveryRecord),
}

/// The operators' use case: register, list, delete webhooks; see and retry deliveries.
pub struct WebhookAdmin {
    store: Store,
    worker: std::sync::Arc<WebhookWorker>,
}

impl WebhookAdmin {
    pub fn new(store: Store, worker: std::sync::Arc<WebhookWorker>) -> Self {
        Self { store, worker }
    }

    /// Validates every field (naming each bad one) and stores the webhook.
    pub async fn create(
        &self,
        url: &str,
        events: &[String],
        description: &str,
        now: DateTime<Utc>,
    ) -> Result<CreatedWebhook, WebhookError> {
        let mut errors = Vec::new();
        let url = WebhookUrl::parse(url)
            .map_err(|message| errors.push(field("url", message)))
            .ok();
        let events = EventSelection::parse(events)
            .map_err(|message| errors.push(field("events", message)))
            .ok();
        if description.chars().count() > 500 {
            errors.push(field(
                "description",
                "must be at most 500 characters".into(),
            ));
        }
        let (Some(url), Some(events), true) = (url, events, errors.is_empty()) else {
            return Err(WebhookError::Invalid(errors));
        };
        let secret = signing::generate_secret();
        let record = self
            .store
            .webhooks()
            .create_webhook(url.as_str(), &events, description, &secret, now)
            .await?;
        tracing::info!(webhook_id = record.id, "webhook registered");
        Ok(CreatedWebhook { record, secret })
    }

    pub async fn list(&self) -> Result<Vec<WebhookRecord>, StoreError> {
        self.store.webhooks().webhooks().await
    }

    pub async fn get(&self, id: i64) -> Result<Option<WebhookRecord>, StoreError> {
        self.store.webhooks().webhook(id).await
    }

    pub async fn delete(&self, id: i64) -> Result<bool, StoreError> {
        let deleted = self.store.webhooks().delete_webhook(id).await?;
        if deleted {
            tracing::info!(webhook_id = id, "webhook deleted");
        }
        Ok(deleted)
    }

    pub async fn deliveries(
        &self,
        id: i64,
        before: Option<i64>,
        limit: u64,
    ) -> Result<Vec<WebhookDeliveryRecord>, StoreError> {
        self.store
            .webhooks()
            .webhook_deliveries(id, before, limit)
            .await
    }

    /// An attempt now, whatever the delivery's state; answers the delivery after it.
    pub async fn retry(
        &self,
        id: i64,
        event_id: i64,
        now: DateTime<Utc>,
    ) -> Result<ManualRetry, StoreError> {
        self.worker.retry_now(id, event_id, now).await
    }
}

fn field(name: &str, message: String) -> FieldError {
    FieldError {
        field: name.to_owned(),
        message,
    }
}
