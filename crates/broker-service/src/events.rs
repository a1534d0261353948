//! The pull feed of events (`GET /v1/events`) with its long poll, and the pruning of events
//! older than the retention.

use std::sync::Arc;
use std::time::Duration;

use broker_domain::EventType;
use broker_store::Events;
use broker_store::events::{EventCursor, EventQuery, EventRecord, EventTap};
use tokio_util::sync::CancellationToken;

use crate::{Clock, StoreError};

/// The longest a feed request may wait for an event.
pub const MAX_WAIT: Duration = Duration::from_secs(30);
/// The largest page.
pub const MAX_LIMIT: u64 = 500;

/// How the feed and its pruning behave.
#[derive(Clone, Debug)]
pub struct EventSettings {
    /// Events older than this are deleted.
    pub retention: Duration,
    /// How often a waiting feed request looks for events committed by other replicas.
    pub poll_interval: Duration,
    /// How often old events are pruned.
    pub prune_interval: Duration,
}

impl Default for EventSettings {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(7 * 24 * 3600),
            poll_interval: Duration::from_millis(200),
            prune_interval: Duration::from_secs(600),
        }
    }
}

/// One request for a page of the feed.
#[derive(Clone, Debug, Default)]
pub struct FeedRequest {
    pub after: Option<EventCursor>,
    pub limit: u64,
    pub types: Option<Vec<EventType>>,
    /// The caller's tenants; `None` for every tenant.
    pub tenants: Option<Vec<i64>>,
    /// How long to hold an empty answer open (at most `MAX_WAIT`).
    pub wait: Duration,
}

/// A page and where to resume.
#[derive(Clone, Debug)]
pub struct FeedPage {
    pub events: Vec<EventRecord>,
    /// Always a cursor: after the last event, or the request's own on an empty page.
    pub next_after: EventCursor,
}

/// The event feed: reads pages, waits for events when asked to, prunes old ones.
pub struct EventFeed {
    events: Events,
    settings: EventSettings,
    clock: Arc<dyn Clock>,
}

impl EventFeed {
    pub fn new(events: Events, settings: EventSettings, clock: Arc<dyn Clock>) -> Self {
        Self {
            events,
            settings,
            clock,
        }
    }

    /// What this process committed (for the metrics).
    pub fn tap(&self) -> &EventTap {
        self.events.tap()
    }

    /// The next page after the request's cursor. With `wait`, an empty page is held open
    /// until an event arrives: at once when this process commits one, within
    /// `poll_interval` when another replica does. No connection is held while waiting.
    pub async fn page(&self, request: &FeedRequest) -> Result<FeedPage, StoreError> {
        let after = request.after.unwrap_or(EventCursor::START);
        let query = EventQuery {
            after,
            limit: request.limit.clamp(1, MAX_LIMIT),
            types: request.types.clone(),
            tenants: request.tenants.clone(),
        };
        let deadline = self.clock.instant() + request.wait.min(MAX_WAIT);
        loop {
            // Registered before the read, so that a commit between the read and the wait
            // still wakes this request.
            let committed = self.events.tap().committed().notified();
            tokio::pin!(committed);
            committed.as_mut().enable();
            let events = self.events.page(&query).await?;
            let now = self.clock.instant();
            if !events.is_empty() || now >= deadline {
                let next_after = events.last().map_or(after, |e| e.cursor);
                return Ok(FeedPage { events, next_after });
            }
            let pause = self.settings.poll_interval.min(deadline - now);
            tokio::select! {
                _ = &mut committed => {}
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Deletes events older than the retention every `prune_interval`, until `stop`.
    pub async fn run_pruner(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.settings.prune_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let Ok(retention) = chrono::Duration::from_std(self.settings.retention) else {
                continue;
            };
            let Some(before) = self.clock.now().checked_sub_signed(retention) else {
                continue;
            };
            match self.events.prune(before).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(pruned = n, "deleted events older than events.retention"),
                Err(e) => tracing::warn!(error = %e, "could not prune old events"),
            }
        }
    }
}
