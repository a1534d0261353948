//! Background token work, bounded so that it never starves requests: credential checks
//! after hookups (a queue with a fixed number of workers, and a sweep that picks up checks
//! that could not run), and the keep-alive of idle grants.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use broker_domain::{CredentialsState, GrantType, TenantStatus};
use broker_store::TokenClientRecord;
use dashmap::DashMap;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{TokenBroker, TokenBrokerError, TokenRequest};
use crate::foreground::MAX_YIELD;

/// The background check runs only while the credentials are still unchecked (a token
/// request may have settled them meanwhile).
fn needs_check(c: &TokenClientRecord) -> bool {
    c.tenant_status == TenantStatus::Active
        && c.credentials_state == CredentialsState::Unchecked
        && c.grant_type == GrantType::ClientCredentials
}

/// When idle grants are refreshed (`oauth.keepalive_*` in the configuration).
#[derive(Clone, Copy, Debug)]
pub struct KeepAlive {
    /// Grants not refreshed for this long are refreshed.
    pub after: Duration,
    /// How often such grants are looked for.
    pub interval: Duration,
}

/// Unchecked clients a sweep reads at most.
const SWEEP_PAGE: u64 = 1000;
/// How often the loop looks whether an early sweep is due.
const DRAINED_EVERY: Duration = Duration::from_millis(500);

/// The credential-check queue. `schedule` never waits: when the queue is full, the check
/// is left to the sweep, which finds every client still `unchecked` in the database. The
/// sweep runs every `verify_sweep_interval`, and also as soon as the queue has drained
/// after checks were left behind (a go-live burst larger than the queue), provided the
/// checks since the last sweep reached verdicts: a provider that is down is asked again
/// at the interval, not in a loop.
pub struct CredentialChecks {
    queue: mpsc::Sender<i64>,
    receiver: std::sync::Mutex<Option<mpsc::Receiver<i64>>>,
    /// Tenants queued or being checked, so that one is never checked twice at once.
    pending: DashMap<i64, ()>,
    /// Checks were dropped (queue full) or a sweep found a full page since the last sweep.
    left_behind: AtomicBool,
    /// Checks that ended `ok` or `rejected` since the last sweep.
    verdicts: AtomicUsize,
}

impl CredentialChecks {
    pub fn new(capacity: usize) -> Self {
        let (queue, receiver) = mpsc::channel(capacity.max(1));
        Self {
            queue,
            receiver: std::sync::Mutex::new(Some(receiver)),
            pending: DashMap::new(),
            left_behind: AtomicBool::new(false),
            verdicts: AtomicUsize::new(0),
        }
    }

    /// Asks for a check of the tenant's credentials soon.
    pub fn schedule(&self, provet_id: i64) {
        if self.pending.insert(provet_id, ()).is_some() {
            return;
        }
        if self.queue.try_send(provet_id).is_err() {
            self.pending.remove(&provet_id);
            self.left_behind.store(true, Ordering::Relaxed);
            tracing::debug!(
                provet_id,
                "credential-check queue full; the sweep will pick it up"
            );
        }
    }

    /// Checks waiting or running.
    pub fn depth(&self) -> usize {
        self.pending.len()
    }

    /// Whether to sweep now rather than at the interval: checks were left behind, the
    /// queue has (nearly) drained, and the last ones reached verdicts.
    fn early_sweep_due(&self, concurrency: usize) -> bool {
        self.left_behind.load(Ordering::Relaxed)
            && self.depth() < concurrency.max(1)
            && self.verdicts.load(Ordering::Relaxed) > 0
    }

    /// Runs checks, `concurrency` at a time, until `stop`; every `sweep` looks for
    /// credentials still unchecked (new on another replica, or not checkable before).
    async fn run(
        self: Arc<Self>,
        tokens: Arc<TokenBroker>,
        concurrency: usize,
        sweep: Duration,
        stop: CancellationToken,
    ) {
        let Some(mut receiver) = self.receiver.lock().ok().and_then(|mut r| r.take()) else {
            tracing::error!("credential checks started twice");
            return;
        };
        let workers = Workers {
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            running: TaskTracker::new(),
            stop: stop.clone(),
        };
        let mut tick = tokio::time::interval(sweep.max(Duration::from_millis(100)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut drained = tokio::time::interval(DRAINED_EVERY);
        drained.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                Some(first) = receiver.recv() => {
                    // A burst of hookups goes first: checks are what it leaves behind.
                    tokens.foreground.yield_to_burst(MAX_YIELD).await;
                    let mut ids = vec![first];
                    while ids.len() < concurrency.max(1) {
                        match receiver.try_recv() {
                            Ok(id) => ids.push(id),
                            Err(_) => break,
                        }
                    }
                    if !self.start_checks(&tokens, ids, &workers).await {
                        break;
                    }
                }
                _ = tick.tick() => self.sweep(&tokens).await,
                _ = drained.tick() => {
                    if self.early_sweep_due(concurrency) {
                        self.sweep(&tokens).await;
                    }
                }
            }
        }
        workers.running.close();
        workers.running.wait().await;
    }

    /// Reads the clients of `ids` in one go and starts a check for each that still needs
    /// one, as workers come free. `false` when stopped meanwhile.
    async fn start_checks(
        self: &Arc<Self>,
        tokens: &Arc<TokenBroker>,
        ids: Vec<i64>,
        workers: &Workers,
    ) -> bool {
        let clients = match tokens.store.tokens().token_clients(&ids).await {
            Ok(clients) => clients,
            Err(e) => {
                // Still unchecked in the database: the sweep finds them again.
                tracing::warn!(error = %e, checks = ids.len(), "could not read clients to check; checking them later");
                ids.iter().for_each(|id| {
                    self.pending.remove(id);
                });
                return true;
            }
        };
        let mut due: HashMap<i64, TokenClientRecord> = clients
            .into_iter()
            .filter(needs_check)
            .map(|c| (c.provet_id, c))
            .collect();
        for provet_id in ids {
            let Some(client) = due.remove(&provet_id) else {
                self.pending.remove(&provet_id);
                continue;
            };
            let permit = tokio::select! {
                p = workers.permits.clone().acquire_owned() => p,
                _ = workers.stop.cancelled() => return false,
            };
            let Ok(permit) = permit else { return false };
            let (this, tokens) = (self.clone(), tokens.clone());
            workers.running.spawn(async move {
                match tokens.verify_with(provet_id, Some(Arc::new(client))).await {
                    Ok(()) => {
                        this.verdicts.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(TokenBrokerError::Unavailable { .. }) => {}
                    Err(TokenBrokerError::TenantNotFound(_)) => {}
                    Err(e) => tracing::warn!(provet_id, error = %e, "credential check failed"),
                }
                this.pending.remove(&provet_id);
                drop(permit);
            });
        }
        true
    }

    /// Schedules the credentials still unchecked in the database, and frees memory.
    async fn sweep(&self, tokens: &TokenBroker) {
        self.left_behind.store(false, Ordering::Relaxed);
        self.verdicts.store(0, Ordering::Relaxed);
        if tokens.settings.verify_on_hookup {
            match tokens.store.tokens().unchecked_clients(SWEEP_PAGE).await {
                Ok(ids) => {
                    if ids.len() as u64 >= SWEEP_PAGE {
                        self.left_behind.store(true, Ordering::Relaxed);
                    }
                    ids.into_iter().for_each(|id| self.schedule(id));
                }
                Err(e) => tracing::warn!(error = %e, "could not look for unchecked credentials"),
            }
        }
        tokens.sweep();
    }
}

/// The checks running, and how many may.
struct Workers {
    permits: Arc<Semaphore>,
    running: TaskTracker,
    stop: CancellationToken,
}

impl TokenBroker {
    /// Runs the credential-check queue until `stop`.
    pub async fn run_credential_checks(self: Arc<Self>, stop: CancellationToken) {
        let (concurrency, sweep) = (
            self.settings.verify_concurrency,
            self.settings.verify_sweep_interval,
        );
        self.checks
            .clone()
            .run(self.clone(), concurrency, sweep, stop)
            .await;
    }

    /// Refreshes idle grants every `keep.interval` until `stop`.
    pub async fn run_keepalive(self: Arc<Self>, keep: KeepAlive, stop: CancellationToken) {
        let mut tick = tokio::time::interval(keep.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let before = super::policy::keepalive_cutoff(self.now(), keep.after);
            match self.keep_grants_alive(before).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(refreshed = n, "keep-alive refreshed idle grants"),
                Err(e) => tracing::warn!(error = %e, "keep-alive could not list grants"),
            }
        }
    }

    /// Refreshes every active grant not refreshed since `before`, one at a time, so that
    /// refresh tokens (which die after 30 days unused) never expire on an idle clinic.
    pub async fn keep_grants_alive(
        &self,
        before: chrono::DateTime<chrono::Utc>,
    ) -> Result<usize, broker_store::StoreError> {
        let stale = self.store.grants().stale_grants(before, 500).await?;
        let mut refreshed = 0;
        for (provet_id, subject) in stale {
            let request = TokenRequest {
                scope: None,
                min_ttl: Some(0),
                force_refresh: true,
                subject: Some(subject.clone()),
            };
            match self.token(provet_id, &request).await {
                Ok(_) => refreshed += 1,
                Err(e) => {
                    tracing::warn!(provet_id, subject, error = %e, "keep-alive refresh failed")
                }
            }
        }
        Ok(refreshed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_early_sweep_follows_left_behind_checks_only_after_progress() {
        let checks = CredentialChecks::new(1);
        checks.schedule(1);
        assert!(!checks.early_sweep_due(8), "nothing left behind yet");
        checks.schedule(2);
        assert_eq!(checks.depth(), 1, "the second did not fit the queue");
        assert!(
            !checks.early_sweep_due(8),
            "no verdict yet: a provider that is down is not asked again in a loop"
        );
        checks.verdicts.fetch_add(1, Ordering::Relaxed);
        assert!(checks.early_sweep_due(8), "left behind, drained, progress");
        assert!(
            !checks.early_sweep_due(1),
            "not while the queue still holds as many as the workers take"
        );
    }
}
