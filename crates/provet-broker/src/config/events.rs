//! `[events]`: the outbox's pull feed and the webhooks that push it.

use std::time::Duration;

use serde::Deserialize;

/// `[events]`: the outbox's pull feed (and, later, webhooks).
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventSettings {
    /// How long the pull feed keeps events.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// The bound on one webhook attempt.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// How often a waiting `GET /v1/events` looks for events committed by other replicas.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// How often events older than `retention` are deleted.
    #[serde(with = "humantime_serde")]
    pub prune_interval: Duration,
    /// The waits after each failed webhook attempt; when they run out the delivery is
    /// `failed`. The contract's schedule by default; shorter ones are for tests.
    pub webhook_retry_schedule: Vec<humantime_serde::Serde<Duration>>,
    /// Webhook attempts in flight per endpoint, and in all (per replica).
    pub webhook_per_endpoint: usize,
    pub webhook_concurrency: usize,
}

impl Default for EventSettings {
    fn default() -> Self {
        let feed = broker_service::events::EventSettings::default();
        Self {
            retention: feed.retention,
            timeout: Duration::from_secs(15),
            poll_interval: feed.poll_interval,
            prune_interval: feed.prune_interval,
            webhook_retry_schedule: broker_service::webhooks::policy::DEFAULT_SCHEDULE
                .into_iter()
                .map(humantime_serde::Serde::from)
                .collect(),
            webhook_per_endpoint: 4,
            webhook_concurrency: 32,
        }
    }
}

impl EventSettings {
    pub fn to_service(&self) -> broker_service::events::EventSettings {
        broker_service::events::EventSettings {
            retention: self.retention,
            poll_interval: self.poll_interval.max(Duration::from_millis(10)),
            prune_interval: self.prune_interval.max(Duration::from_secs(1)),
        }
    }

    pub fn to_webhooks(&self) -> broker_service::webhooks::WebhookSettings {
        broker_service::webhooks::WebhookSettings {
            timeout: self.timeout.max(Duration::from_millis(100)),
            retry_schedule: self
                .webhook_retry_schedule
                .iter()
                .map(|d| d.into_inner())
                .collect(),
            per_endpoint: self.webhook_per_endpoint.max(1),
            concurrency: self.webhook_concurrency.max(1),
            poll_interval: self.poll_interval.max(Duration::from_millis(10)),
        }
    }
}
