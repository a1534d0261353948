//! The background half of webhooks: a dispatcher that turns new events into deliveries, and
//! a sender that claims due deliveries and attempts them, a few at a time per endpoint, so
//! that one slow or failing endpoint never holds up another.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use broker_store::Store;
use broker_store::webhooks::{
    ActiveWebhook, AttemptNext, AttemptOutcome, ClaimedDelivery, PendingDeliveries,
};
use chrono::{DateTime, Utc};
use rand::Rng;
use std::time::Instant;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::policy::{Answer, after_attempt};
use super::sender::{Attempted, WebhookClient};
use super::{ManualRetry, WebhookSettings};
use crate::foreground::{Foreground, MAX_YIELD};
use crate::{Clock, Metrics, StoreError};

/// Events turned into deliveries per dispatch transaction.
const DISPATCH_BATCH: u64 = 500;
/// How long the sender trusts its list of active webhooks.
const HOOKS_TTL: Duration = Duration::from_secs(1);
/// How often the pending-deliveries gauges are refreshed.
const GAUGES_EVERY: Duration = Duration::from_secs(2);

/// The outcome to record for an attempt (`jitter` in [0, 1) spreads retries).
pub fn attempt_outcome(
    attempted: Attempted,
    claim: &ClaimedDelivery,
    schedule: &[Duration],
    jitter: f64,
    now: DateTime<Utc>,
) -> AttemptOutcome {
    let attempt = u32::try_from(claim.attempts).unwrap_or(0).saturating_add(1);
    AttemptOutcome {
        at: now,
        status: match attempted.answer {
            Answer::Status(s, _) => Some(s),
            Answer::NoAnswer => None,
        },
        error: attempted.error,
        next: after_attempt(attempted.answer, attempt, schedule, jitter, now),
    }
}

/// The dispatcher and the sender, and what they share.
pub struct WebhookWorker {
    store: Store,
    client: WebhookClient,
    settings: WebhookSettings,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
    /// Hookups in flight: dispatching and sending wait (a bounded while) for a burst to
    /// pass, so that deliveries take the CPU and the database after the intake, not from it.
    foreground: Arc<Foreground>,
    /// Wakes the sender: new deliveries, a finished attempt.
    work: Notify,
    overall: Arc<Semaphore>,
    endpoints: Mutex<HashMap<i64, Arc<Semaphore>>>,
    hooks: tokio::sync::Mutex<Option<(Instant, Vec<ActiveWebhook>)>>,
    attempts: TaskTracker,
}

impl WebhookWorker {
    pub fn new(
        store: Store,
        settings: WebhookSettings,
        metrics: Arc<Metrics>,
        clock: Arc<dyn Clock>,
        foreground: Arc<Foreground>,
    ) -> Result<Self, String> {
        Ok(Self {
            foreground,
            client: WebhookClient::new(settings.timeout)?,
            overall: Arc::new(Semaphore::new(settings.concurrency.max(1))),
            store,
            settings,
            metrics,
            clock,
            work: Notify::new(),
            endpoints: Mutex::new(HashMap::new()),
            hooks: tokio::sync::Mutex::new(None),
            attempts: TaskTracker::new(),
        })
    }

    /// Creates deliveries for new events until `stop`: at once after this process commits
    /// events, within `poll_interval` after another replica does.
    pub async fn run_dispatcher(self: Arc<Self>, stop: CancellationToken) {
        let mut gauges_at = self.clock.instant();
        loop {
            let committed = self.store.events().tap().committed().notified();
            tokio::pin!(committed);
            committed.as_mut().enable();
            self.foreground.yield_to_burst(MAX_YIELD).await;
            loop {
                match self
                    .store
                    .webhooks()
                    .dispatch_events(DISPATCH_BATCH, self.clock.now())
                    .await
                {
                    Ok(report) => {
                        if report.deliveries > 0 {
                            self.work.notify_one();
                        }
                        if report.events < usize::try_from(DISPATCH_BATCH).unwrap_or(500) {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "could not dispatch events to webhooks");
                        break;
                    }
                }
            }
            if self.clock.since(gauges_at) >= GAUGES_EVERY {
                gauges_at = self.clock.instant();
                self.refresh_gauges().await;
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = &mut committed => {}
                _ = tokio::time::sleep(self.settings.poll_interval) => {}
            }
        }
    }

    /// Attempts due deliveries until `stop`, then waits for the attempts in flight.
    pub async fn run_sender(self: Arc<Self>, stop: CancellationToken) {
        loop {
            let woken = self.work.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            self.foreground.yield_to_burst(MAX_YIELD).await;
            if let Err(e) = self.clone().send_round().await {
                tracing::warn!(error = %e, "could not claim webhook deliveries");
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = &mut woken => {}
                _ = tokio::time::sleep(self.settings.poll_interval) => {}
            }
        }
        self.attempts.close();
        self.attempts.wait().await;
    }

    async fn refresh_gauges(&self) {
        match self.store.webhooks().pending_deliveries().await {
            Ok(PendingDeliveries { count, oldest }) => {
                self.metrics.webhook_pending_deliveries.set(count);
                let age = oldest.map_or(0, |t| (self.clock.now() - t).num_seconds().max(0));
                self.metrics.webhook_oldest_pending_seconds.set(age);
            }
            Err(e) => tracing::debug!(error = %e, "could not count pending deliveries"),
        }
    }

    async fn active_hooks(&self) -> Result<Vec<ActiveWebhook>, StoreError> {
        let mut cached = self.hooks.lock().await;
        if let Some((at, hooks)) = cached.as_ref()
            && self.clock.since(*at) < HOOKS_TTL
        {
            return Ok(hooks.clone());
        }
        let hooks = self.store.webhooks().active_webhooks().await?;
        *cached = Some((self.clock.instant(), hooks.clone()));
        Ok(hooks)
    }

    fn endpoint(&self, id: i64) -> Arc<Semaphore> {
        let mut endpoints = self
            .endpoints
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        endpoints
            .entry(id)
            .or_insert_with(|| Arc::new(Semaphore::new(self.settings.per_endpoint.max(1))))
            .clone()
    }

    /// For each active endpoint with room, claims as many due deliveries as it has room for
    /// and starts their attempts.
    async fn send_round(self: Arc<Self>) -> Result<(), StoreError> {
        for hook in self.active_hooks().await? {
            let endpoint = self.endpoint(hook.id);
            let room = endpoint
                .available_permits()
                .min(self.overall.available_permits());
            if room == 0 {
                continue;
            }
            let now = self.clock.now();
            let until = now
                + chrono::Duration::from_std(self.settings.claim_for())
                    .unwrap_or(chrono::Duration::minutes(1));
            let claimed = self
                .store
                .webhooks()
                .claim_deliveries(hook.id, room as u64, now, until)
                .await?;
            for delivery in claimed {
                let (Ok(one), Ok(all)) = (
                    endpoint.clone().acquire_owned().await,
                    self.overall.clone().acquire_owned().await,
                ) else {
                    return Ok(());
                };
                let worker = self.clone();
                let hook = hook.clone();
                self.attempts.spawn(async move {
                    worker.attempt(&hook, &delivery).await;
                    drop((one, all));
                    worker.work.notify_one();
                });
            }
        }
        Ok(())
    }

    /// Sends one claimed delivery and records the outcome.
    async fn attempt(&self, hook: &ActiveWebhook, delivery: &ClaimedDelivery) -> AttemptNext {
        let attempted = self
            .client
            .attempt(hook, delivery, self.clock.now().timestamp())
            .await;
        let jitter = rand::rng().random::<f64>();
        let outcome = attempt_outcome(
            attempted,
            delivery,
            &self.settings.retry_schedule,
            jitter,
            self.clock.now(),
        );
        let label = match outcome.next {
            AttemptNext::Delivered => "delivered",
            AttemptNext::RetryAt(_) => "retry",
            AttemptNext::Failed => "failed",
            AttemptNext::Gone => "gone",
        };
        self.metrics.webhook_delivery(label);
        if outcome.next != AttemptNext::Delivered {
            tracing::warn!(
                webhook_id = hook.id,
                event_id = %delivery.event_public_id(),
                attempt = delivery.attempts + 1,
                error = outcome.error.as_deref().unwrap_or(""),
                next = label,
                "webhook attempt failed"
            );
        }
        if outcome.next == AttemptNext::Gone {
            tracing::warn!(
                webhook_id = hook.id,
                "webhook endpoint answered 410 Gone: webhook disabled"
            );
            *self.hooks.lock().await = None;
        }
        match self
            .store
            .webhooks()
            .record_attempt(delivery, &outcome)
            .await
        {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                webhook_id = hook.id,
                event_id = %delivery.event_public_id(),
                "a webhook attempt outlived its claim; its outcome was not recorded"
            ),
            Err(e) => tracing::warn!(error = %e, "could not record a webhook attempt"),
        }
        outcome.next
    }

    /// A manual retry: one attempt now, whatever the delivery's state.
    pub async fn retry_now(
        &self,
        webhook_id: i64,
        event_id: i64,
        now: DateTime<Utc>,
    ) -> Result<ManualRetry, StoreError> {
        let Some(hook) = self
            .store
            .webhooks()
            .webhook_for_attempt(webhook_id)
            .await?
        else {
            return Ok(ManualRetry::NotFound);
        };
        let until = now
            + chrono::Duration::from_std(self.settings.claim_for())
                .unwrap_or(chrono::Duration::minutes(1));
        let claimed = self
            .store
            .webhooks()
            .claim_delivery_now(webhook_id, event_id, now, until)
            .await?;
        let Some(delivery) = claimed else {
            return Ok(
                match self
                    .store
                    .webhooks()
                    .webhook_delivery(webhook_id, event_id)
                    .await?
                {
                    Some(record) => ManualRetry::InFlight(record),
                    None => ManualRetry::NotFound,
                },
            );
        };
        self.attempt(&hook, &delivery).await;
        Ok(
            match self
                .store
                .webhooks()
                .webhook_delivery(webhook_id, event_id)
                .await?
            {
                Some(record) => ManualRetry::Attempted(record),
                None => ManualRetry::NotFound,
            },
        )
    }
}
