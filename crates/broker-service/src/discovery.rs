//! The discovery worker: claims due tenants through the database (so replicas share the
//! work without overlap), fetches and checks their OpenID Connect metadata and JWKS, and
//! schedules the next run: a refresh after `refresh_interval`, or a retry with exponential
//! backoff after a failure. Both carry jitter so that thousands of tenants registered in one
//! burst do not stay in lockstep.

use broker_domain::DiscoveryState;
use std::sync::Arc;
use std::time::{Duration, Instant};

use broker_oauth::discovery::{self as oidc, DiscoveryError};
use broker_oauth::{Upstream, UpstreamError};
use broker_store::{DiscoveryJob, DiscoveryRecord, DiscoverySuccess, RerunFilter, Store};
use chrono::{DateTime, Utc};
use rand::Rng;
use serde_json::Value;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{Clock, Metrics, StoreError};

/// How discovery behaves.
#[derive(Clone, Debug)]
pub struct DiscoverySettings {
    pub refresh_interval: Duration,
    pub concurrency: usize,
    pub timeout: Duration,
    pub retry_base: Duration,
    pub retry_max: Duration,
    pub strict_issuer: bool,
    /// How often the worker looks for due tenants when nothing woke it.
    pub poll_interval: Duration,
    /// The least time between two JWKS fetches for an unknown `kid`, per tenant.
    pub jwks_min_interval: Duration,
}

impl Default for DiscoverySettings {
    fn default() -> Self {
        Self {
            refresh_interval: Duration::from_secs(24 * 3600),
            concurrency: 16,
            timeout: Duration::from_secs(10),
            retry_base: Duration::from_secs(30),
            retry_max: Duration::from_secs(3600),
            strict_issuer: true,
            poll_interval: Duration::from_secs(1),
            jwks_min_interval: Duration::from_secs(60),
        }
    }
}

/// OpenID Connect discovery: the background worker, the runs an operator asks for, and the
/// JWKS the connect flow checks ID tokens with.
pub struct Discovery {
    settings: DiscoverySettings,
    upstream: Upstream,
    store: Store,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
    /// Identifies this process's leases.
    owner: String,
    /// Wakes the worker when tenants become due (a hookup, an admin rerun).
    wake: Notify,
}

impl Discovery {
    pub fn new(
        settings: DiscoverySettings,
        upstream: Upstream,
        store: Store,
        metrics: Arc<Metrics>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let owner = format!("{}-{:08x}", std::process::id(), rand::rng().random::<u32>());
        Self {
            settings,
            upstream,
            store,
            metrics,
            clock,
            owner,
            wake: Notify::new(),
        }
    }

    /// Tenants became due (a new discovery URL): the worker looks now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// A lease outlives any one run (two requests, each bounded by the timeout).
    fn lease(&self) -> chrono::Duration {
        to_chrono(self.settings.timeout * 3 + Duration::from_secs(5))
    }

    /// `base * 2^(attempts-1)`, capped, then jittered by ±20%.
    pub fn backoff(&self, attempts: i32) -> Duration {
        let exponent = u32::try_from(attempts.saturating_sub(1).clamp(0, 30)).unwrap_or(30);
        let raw = self
            .settings
            .retry_base
            .saturating_mul(2u32.saturating_pow(exponent))
            .min(self.settings.retry_max);
        jitter(raw, 0.2)
    }
}

fn jitter(d: Duration, fraction: f64) -> Duration {
    let factor = 1.0 + rand::rng().random_range(-fraction..=fraction);
    d.mul_f64(factor)
}

fn to_chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// When a JWKS fetched at `now` with `max_age` goes stale: the provider's number, bounded
/// (`MAX_JWKS_MAX_AGE`) so that no `max-age` can overflow the date.
fn jwks_expiry(now: DateTime<Utc>, max_age: Duration) -> DateTime<Utc> {
    let age = to_chrono(max_age.min(broker_oauth::MAX_JWKS_MAX_AGE));
    now.checked_add_signed(age).unwrap_or(now)
}

/// How one run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunOutcome {
    Ok,
    Failed(String),
    /// The lease was lost (the URL changed, or another replica took over).
    Superseded,
}

impl Discovery {
    /// Runs the worker until `stop` is cancelled; in-flight runs finish first.
    pub async fn run_worker(self: Arc<Self>, stop: CancellationToken) {
        let concurrency = self.settings.concurrency.max(1);
        let mut running: JoinSet<()> = JoinSet::new();
        let mut poll = tokio::time::interval(self.settings.poll_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut gauge_refreshed: Option<Instant> = None;
        tracing::info!(owner = %self.owner, concurrency, "discovery worker started");
        loop {
            if gauge_refreshed.is_none_or(|at| self.clock.since(at) > Duration::from_secs(10)) {
                self.refresh_discovery_gauge().await;
                gauge_refreshed = Some(self.clock.instant());
            }
            // Collect every finished run first, so that one claim fills all free slots.
            while running.try_join_next().is_some() {}
            let free = concurrency.saturating_sub(running.len());
            let mut claimed = 0;
            if free > 0 && !stop.is_cancelled() {
                match self.claim(free as u64, None).await {
                    Ok(jobs) => {
                        claimed = jobs.len();
                        for job in jobs {
                            let discovery = self.clone();
                            running.spawn(async move {
                                discovery.run_job(job).await;
                            });
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "discovery worker could not claim work"),
                }
            }
            // Claimed a full batch: there may be more due at once.
            if claimed > 0 && claimed == free {
                continue;
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = poll.tick() => {}
                Some(_) = running.join_next(), if !running.is_empty() => {}
            }
        }
        while running.join_next().await.is_some() {}
        tracing::info!("discovery worker stopped");
    }

    async fn claim(&self, limit: u64, only: Option<i64>) -> Result<Vec<DiscoveryJob>, StoreError> {
        let now = self.now();
        let d = self;
        self.store
            .discovery()
            .claim_discovery(&d.owner, now, now + d.lease(), limit, only)
            .await
    }

    /// Runs discovery for one tenant now (an operator asked), and answers its new state.
    /// `None` when the tenant has no discovery URL.
    pub async fn discover_now(
        &self,
        provet_id: i64,
    ) -> Result<Option<DiscoveryRecord>, StoreError> {
        let Some(job) = self.claim(1, Some(provet_id)).await?.pop() else {
            return Ok(None);
        };
        self.run_job(job).await;
        self.store.discovery().discovery(provet_id).await
    }

    /// Makes many tenants due; the worker (or `discover_due`) picks them up.
    pub async fn schedule_discovery(&self, filter: RerunFilter) -> Result<u64, StoreError> {
        let n = self
            .store
            .discovery()
            .schedule_discovery(filter, self.now())
            .await?;
        self.wake();
        tracing::info!(scheduled = n, ?filter, "discovery rerun scheduled");
        Ok(n)
    }

    /// Tenants per discovery state.
    pub async fn state_counts(&self) -> Result<Vec<(DiscoveryState, i64)>, StoreError> {
        self.store.discovery().discovery_state_counts().await
    }

    /// The `stale` filter: metadata older than the refresh interval.
    pub fn stale_filter(&self) -> RerunFilter {
        RerunFilter::Stale(self.now() - to_chrono(self.settings.refresh_interval))
    }

    /// Claims and runs due work until none is left (the CLI's loop, without the daemon).
    /// Calls `progress` after each batch.
    pub async fn discover_due(
        self: &Arc<Self>,
        mut progress: impl FnMut(usize),
    ) -> Result<usize, StoreError> {
        let concurrency = self.settings.concurrency.max(1);
        let mut done = 0;
        loop {
            let jobs = self.claim(concurrency as u64, None).await?;
            if jobs.is_empty() {
                return Ok(done);
            }
            let mut set = JoinSet::new();
            for job in jobs {
                let discovery = self.clone();
                set.spawn(async move { discovery.run_job(job).await });
            }
            while set.join_next().await.is_some() {
                done += 1;
            }
            progress(done);
        }
    }

    async fn run_job(&self, job: DiscoveryJob) -> RunOutcome {
        let span = tracing::info_span!("discovery", provet_id = job.provet_id);
        async {
            let started = self.clock.instant();
            let d = self;
            // Two requests, each bounded by the upstream timeout; bound the pair as well.
            let result = tokio::time::timeout(
                d.settings.timeout * 2 + Duration::from_secs(1),
                oidc::discover(&d.upstream, &job.discovery_url, d.settings.strict_issuer),
            )
            .await
            .unwrap_or_else(|_| {
                Err(DiscoveryError::Document(UpstreamError::Timeout {
                    host: url_host(&job.discovery_url),
                    timeout: d.settings.timeout * 2,
                }))
            });
            let now = self.now();
            let outcome = match result {
                Ok(found) => self.record_success(&job, found, now).await,
                Err(e) => self.record_failure(&job, &e.to_string(), now).await,
            };
            let label = match &outcome {
                RunOutcome::Ok => DiscoveryState::Ok.as_str(),
                RunOutcome::Failed(_) => DiscoveryState::Failed.as_str(),
                RunOutcome::Superseded => "superseded",
            };
            self.metrics.discovery_run(label, self.clock.since(started));
            outcome
        }
        .instrument(span)
        .await
    }

    async fn record_success(
        &self,
        job: &DiscoveryJob,
        found: oidc::Discovered,
        now: DateTime<Utc>,
    ) -> RunOutcome {
        let d = self;
        let mut warnings = found.warnings;
        if let (Some(hookup), Some(discovered)) = (&job.token_url, &found.token_endpoint)
            && !same_url(hookup, discovered)
        {
            warnings.push(format!(
                "discovered token_endpoint `{discovered}` differs from the hookup's token_url `{hookup}`; the hookup's is used"
            ));
        }
        if let Some(hookup) = &job.authorize_url
            && !same_url(hookup, &found.authorization_endpoint)
        {
            warnings.push(format!(
                "discovered authorization_endpoint `{}` differs from the hookup's authorize_url `{hookup}`; the hookup's is used",
                found.authorization_endpoint
            ));
        }
        for w in &warnings {
            tracing::warn!(warning = %w, "discovery warning");
        }
        let jwks_expires_at = found.jwks.max_age.map(|age| jwks_expiry(now, age));
        let success = DiscoverySuccess {
            issuer: found.issuer.clone(),
            document: found.document,
            token_endpoint: found.token_endpoint,
            authorization_endpoint: found.authorization_endpoint,
            jwks_uri: found.jwks_uri,
            userinfo_endpoint: found.userinfo_endpoint,
            revocation_endpoint: found.revocation_endpoint,
            auth_methods: found.token_endpoint_auth_methods,
            jwks: found.jwks.keys,
            jwks_expires_at,
            warnings,
        };
        let next = now + to_chrono(jitter(d.settings.refresh_interval, 0.1));
        match self
            .store
            .discovery()
            .discovery_succeeded(&d.owner, job, success, now, next)
            .await
        {
            Ok(true) => {
                tracing::info!(issuer = %found.issuer, "discovery ok");
                RunOutcome::Ok
            }
            Ok(false) => RunOutcome::Superseded,
            Err(e) => {
                tracing::error!(error = %e, "could not store discovery result");
                RunOutcome::Failed(e.to_string())
            }
        }
    }

    async fn record_failure(
        &self,
        job: &DiscoveryJob,
        error: &str,
        now: DateTime<Utc>,
    ) -> RunOutcome {
        let d = self;
        let backoff = |attempts| now + to_chrono(d.backoff(attempts));
        match self
            .store
            .discovery()
            .discovery_failed(&d.owner, job, error, now, backoff)
            .await
        {
            Ok(Some(attempts)) => {
                tracing::warn!(error, attempts, "discovery failed; will retry with backoff");
                RunOutcome::Failed(error.to_owned())
            }
            Ok(None) => RunOutcome::Superseded,
            Err(e) => {
                tracing::error!(error = %e, "could not store discovery failure");
                RunOutcome::Failed(error.to_owned())
            }
        }
    }

    /// The key with `kid` from the tenant's JWKS. An unknown `kid`, or a JWKS older than its
    /// `Cache-Control: max-age`, refetches the JWKS, at most once per `jwks_min_interval`
    /// per tenant across all replicas; a stale key is still used if the refetch fails.
    pub async fn jwk(&self, provet_id: i64, kid: &str) -> Result<Option<Value>, StoreError> {
        let Some(record) = self.store.discovery().discovery(provet_id).await? else {
            return Ok(None);
        };
        let now = self.now();
        let cached = record.jwks.as_ref().and_then(|j| find_key(j, kid));
        let expired = record.jwks_expires_at.is_some_and(|at| at <= now);
        if cached.is_some() && !expired {
            return Ok(cached);
        }
        let Some(jwks_uri) = record.jwks_uri else {
            return Ok(cached);
        };
        let not_since = now - to_chrono(self.settings.jwks_min_interval);
        if !self
            .store
            .discovery()
            .claim_jwks_refetch(provet_id, now, not_since)
            .await?
        {
            tracing::debug!(provet_id, kid, "JWKS was fetched recently, not refetching");
            return Ok(cached);
        }
        match oidc::fetch_jwks(&self.upstream, &jwks_uri).await {
            Ok(jwks) => {
                let expires = jwks.max_age.map(|age| jwks_expiry(now, age));
                self.store
                    .discovery()
                    .store_jwks(provet_id, &jwks.keys, expires, now)
                    .await?;
                tracing::info!(provet_id, kid, expired, "refetched the JWKS");
                Ok(find_key(&jwks.keys, kid))
            }
            Err(e) => {
                tracing::warn!(provet_id, error = %e, "JWKS refetch failed");
                Ok(cached)
            }
        }
    }

    async fn refresh_discovery_gauge(&self) {
        match self.store.discovery().discovery_state_counts().await {
            Ok(counts) => {
                for state in [
                    DiscoveryState::Pending,
                    DiscoveryState::Ok,
                    DiscoveryState::Failed,
                ] {
                    let n = counts
                        .iter()
                        .find(|(s, _)| *s == state)
                        .map_or(0, |(_, n)| *n);
                    self.metrics.discovery_tenants(state.as_str(), n);
                }
            }
            Err(e) => tracing::debug!(error = %e, "could not count discovery states"),
        }
    }
}

fn find_key(jwks: &Value, kid: &str) -> Option<Value> {
    jwks.get("keys")?
        .as_array()?
        .iter()
        .find(|k| k.get("kid").and_then(Value::as_str) == Some(kid))
        .cloned()
}

fn same_url(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

fn url_host(url: &str) -> String {
    url::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_jwks_max_age_is_bounded() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        assert_eq!(
            jwks_expiry(now, Duration::from_secs(100_000_000_000_000)),
            now + chrono::Duration::days(1)
        );
        assert_eq!(
            jwks_expiry(now, Duration::from_secs(60)),
            now + chrono::Duration::seconds(60)
        );
        assert_eq!(
            jwks_expiry(now, Duration::MAX),
            now + chrono::Duration::days(1)
        );
    }
}
