//! Prometheus metrics, in one registry owned by the application (no global recorder).

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry, Unit};

use broker_domain::{CredentialsState, DiscoveryState, GrantState, TenantStatus};

mod labels;

pub use labels::*;

// The label values each counter is created with at start-up: what the call sites pass.
const HOOKUP_OUTCOMES: [&str; 5] = ["registered", "updated", "unchanged", "rejected", "failed"];
const DISCOVERY_OUTCOMES: [&str; 3] = ["ok", "failed", "superseded"];
const UPSTREAM_OUTCOMES: [&str; 4] = ["ok", "rejected", "unavailable", "misconfigured"];
const UPSTREAM_ANSWERS: [&str; 5] = ["2xx", "4xx", "429", "5xx", "none"];
const AUTHORIZATION_OUTCOMES: [&str; 3] = ["started", "completed", "failed"];
const REFRESH_OUTCOMES: [&str; 6] = [
    "ok",
    "retried",
    "invalid_grant",
    "rejected",
    "unavailable",
    "misconfigured",
];
const WEBHOOK_OUTCOMES: [&str; 4] = ["delivered", "retry", "failed", "gone"];
/// Stored discovery states (`not_applicable` is never stored: such tenants have no row).
const DISCOVERY_TENANT_STATES: [DiscoveryState; 3] = [
    DiscoveryState::Pending,
    DiscoveryState::Ok,
    DiscoveryState::Failed,
];
const POOLS: [&str; 2] = ["main", "cache"];

pub struct Metrics {
    registry: Registry,
    pub authorizations: Family<OutcomeLabels, Counter>,
    pub refreshes: Family<OutcomeLabels, Counter>,
    pub grants: Family<StateLabels, Gauge>,
    pub tokens_served: Family<ServedLabels, Counter>,
    pub upstream_token_requests: Family<OutcomeLabels, Counter>,
    pub upstream_token_answers: Family<AnswerLabels, Counter>,
    pub upstream_token_duration: Histogram,
    pub token_lock_wait: Histogram,
    pub discovery_runs: Family<OutcomeLabels, Counter>,
    pub discovery_duration: Histogram,
    pub discovery_tenants: Family<StateLabels, Gauge>,
    pub hookups: Family<OutcomeLabels, Counter>,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_duration: Family<RouteLabels, Histogram>,
    pub db_pool: Family<PoolLabels, Gauge>,
    pub queue_depth: Family<QueueLabels, Gauge>,
    pub cached_tokens: Gauge,
    /// Events committed by this process, by type (synced from the store's tap at render).
    pub events_written: Family<Vec<(&'static str, &'static str)>, Counter>,
    /// Webhook attempts by outcome (`delivered`, `retry`, `failed`, `gone`).
    pub webhook_deliveries: Family<OutcomeLabels, Counter>,
    pub webhook_pending_deliveries: Gauge,
    pub webhook_oldest_pending_seconds: Gauge,
    /// Hookup requests whose secret matched, by which one (`current`, `extra`).
    pub hookup_secret_matches: Family<SecretLabels, Counter>,
    /// One sync of `events_written` at a time (two renders at once would both add).
    events_sync: std::sync::Mutex<()>,
    /// `1`, labelled with the version and the git commit this binary was built from.
    pub build_info: Family<BuildLabels, Gauge>,
    /// Tenants by status (`active`, `removed`).
    pub tenants: Family<StatusLabels, Gauge>,
    /// Active tenants' current clients by credentials state (`unchecked`, `ok`, `rejected`).
    pub tenant_credentials: Family<StateLabels, Gauge>,
}

/// Buckets from 0.5 ms to 16 s: requests to the broker and waits inside it.
fn fast() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Buckets from 5 ms to 41 s: calls to providers.
fn upstream() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

/// Registers each metric as it is created, and hands it back for the struct.
struct Registering(Registry);

impl Registering {
    fn add<M: Metric + Clone>(&mut self, name: &str, help: &str, metric: M) -> M {
        self.0.register(name, help, metric.clone());
        metric
    }

    /// A metric in seconds (the name gets `_seconds`).
    fn seconds<M: Metric + Clone>(&mut self, name: &str, help: &str, metric: M) -> M {
        self.0
            .register_with_unit(name, help, Unit::Seconds, metric.clone());
        metric
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registering(Registry::with_prefix("broker"));
        let metrics = Self {
            authorizations: r.add(
                "authorizations",
                "Authorization-code connections by outcome (started, completed, failed)",
                Family::default(),
            ),
            refreshes: r.add(
                "refreshes",
                "Refresh-token grants sent to providers, by outcome (ok, retried, invalid_grant, rejected, unavailable)",
                Family::default(),
            ),
            grants: r.add("grants", "Grants by state", Family::default()),
            tokens_served: r.add(
                "tokens_served",
                "Access tokens handed out, by API key name and where they came from (no tenant label)",
                Family::default(),
            ),
            upstream_token_requests: r.add(
                "upstream_token_requests",
                "Token requests sent to providers, by outcome (ok, rejected, unavailable, misconfigured)",
                Family::default(),
            ),
            upstream_token_answers: r.add(
                "upstream_token_answers",
                "Token requests sent to providers, by the answer's HTTP status class (2xx, 4xx, 429, 5xx; none: timeout, unreachable, or not a token response)",
                Family::default(),
            ),
            upstream_token_duration: r.seconds(
                "upstream_token_request_duration",
                "Latency of token requests to providers",
                upstream(),
            ),
            token_lock_wait: r.seconds(
                "token_lock_wait",
                "Time spent waiting for the cross-replica token lock",
                fast(),
            ),
            discovery_runs: r.add(
                "discovery_runs",
                "OpenID Connect discovery runs by outcome (ok, failed, superseded)",
                Family::default(),
            ),
            discovery_duration: r.seconds(
                "discovery_duration",
                "Time of one discovery run (document and JWKS)",
                upstream(),
            ),
            discovery_tenants: r.add(
                "discovery_tenants",
                "Tenants with a discovery URL, by discovery state",
                Family::default(),
            ),
            hookups: r.add(
                "hookups",
                "Hookup deliveries by outcome (registered, updated, unchanged, rejected, failed)",
                Family::default(),
            ),
            http_requests: r.add(
                "http_requests",
                "HTTP requests by route and status",
                Family::default(),
            ),
            http_duration: r.seconds(
                "http_request_duration",
                "HTTP request latency by route",
                Family::new_with_constructor(fast),
            ),
            db_pool: r.add(
                "db_pool_connections",
                "Database connections by pool (main, cache) and state (in_use, idle, max)",
                Family::default(),
            ),
            queue_depth: r.add(
                "queue_depth",
                "Background work waiting or running, by queue (credential_checks)",
                Family::default(),
            ),
            cached_tokens: r.add(
                "cached_tokens",
                "Access tokens held in this process's memory",
                Gauge::default(),
            ),
            events_written: r.add(
                "events_written",
                "Events committed to the outbox by this process, by type",
                Family::default(),
            ),
            webhook_deliveries: r.add(
                "webhook_deliveries",
                "Webhook attempts by outcome (delivered, retry, failed, gone)",
                Family::default(),
            ),
            webhook_pending_deliveries: r.add(
                "webhook_pending_deliveries",
                "Webhook deliveries not yet delivered nor failed",
                Gauge::default(),
            ),
            webhook_oldest_pending_seconds: r.add(
                "webhook_oldest_pending_seconds",
                "Age of the oldest pending webhook delivery, in seconds",
                Gauge::default(),
            ),
            hookup_secret_matches: r.add(
                "hookup_secret_matches",
                "Hookup requests by the accepted secret their URL carried (current, extra): an extra secret at zero for long can be retired",
                Family::default(),
            ),
            build_info: r.add(
                "build_info",
                "Always 1: the version and git commit of this binary",
                Family::default(),
            ),
            tenants: r.add("tenants", "Tenants by status (active, removed)", Family::default()),
            tenant_credentials: r.add(
                "tenant_credentials",
                "Active tenants by the state of their current client's credentials (unchecked, ok, rejected)",
                Family::default(),
            ),
            events_sync: std::sync::Mutex::new(()),
            registry: r.0,
        };
        metrics.register_known_series();
        metrics
    }

    /// `broker_build_info`: set once by the binary, which knows its version and commit.
    pub fn set_build_info(&self, version: &str, commit: &str) {
        self.build_info
            .get_or_create(&BuildLabels {
                version: version.to_owned(),
                commit: commit.to_owned(),
            })
            .set(1);
    }

    /// Creates every series whose label values are known at start-up, at zero, so that `rate()`, `increase()` and `absent()` work from the first scrape.
    /// Series labelled by route, status or API key name appear when first used.
    fn register_known_series(&self) {
        // Both secrets from the start: `extra` at zero is the signal to look for.
        for which in crate::hookup::SecretMatch::ALL {
            let _ = self.hookup_secret_matches.get_or_create(&SecretLabels {
                secret: which.as_str(),
            });
        }
        let outcome = |s: &str| OutcomeLabels {
            outcome: s.to_owned(),
        };
        let state = |s: &str| StateLabels {
            state: s.to_owned(),
        };
        for o in HOOKUP_OUTCOMES {
            let _ = self.hookups.get_or_create_owned(&outcome(o));
        }
        for o in DISCOVERY_OUTCOMES {
            let _ = self.discovery_runs.get_or_create_owned(&outcome(o));
        }
        for o in UPSTREAM_OUTCOMES {
            let _ = self
                .upstream_token_requests
                .get_or_create_owned(&outcome(o));
        }
        for class in UPSTREAM_ANSWERS {
            let _ = self
                .upstream_token_answers
                .get_or_create_owned(&AnswerLabels { class });
        }
        for o in AUTHORIZATION_OUTCOMES {
            let _ = self.authorizations.get_or_create_owned(&outcome(o));
        }
        for o in REFRESH_OUTCOMES {
            let _ = self.refreshes.get_or_create_owned(&outcome(o));
        }
        for o in WEBHOOK_OUTCOMES {
            let _ = self.webhook_deliveries.get_or_create_owned(&outcome(o));
        }
        for t in broker_domain::EventType::ALL {
            let _ = self
                .events_written
                .get_or_create_owned(&vec![("type", t.as_str())]);
        }
        for s in TenantStatus::ALL {
            let _ = self.tenants.get_or_create_owned(&StatusLabels {
                status: s.as_str().to_owned(),
            });
        }
        for s in CredentialsState::ALL {
            let _ = self
                .tenant_credentials
                .get_or_create_owned(&state(s.as_str()));
        }
        for s in GrantState::ALL {
            let _ = self.grants.get_or_create_owned(&state(s.as_str()));
        }
        for s in DISCOVERY_TENANT_STATES {
            let _ = self
                .discovery_tenants
                .get_or_create_owned(&state(s.as_str()));
        }
        for pool in POOLS {
            self.pool(pool, 0, 0, 0);
        }
        self.queue("credential_checks", 0);
    }

    /// Sets the fleet gauges from one set of counts; a state absent from the counts is zero.
    pub fn fleet(&self, counts: &broker_store::FleetCounts) {
        fn count<S: PartialEq + Copy>(counts: &[(S, i64)], state: S) -> i64 {
            counts
                .iter()
                .find(|(s, _)| *s == state)
                .map_or(0, |(_, n)| *n)
        }
        for s in TenantStatus::ALL {
            self.tenants
                .get_or_create(&StatusLabels {
                    status: s.as_str().to_owned(),
                })
                .set(count(&counts.tenants, *s));
        }
        for s in CredentialsState::ALL {
            self.tenant_credentials
                .get_or_create(&StateLabels {
                    state: s.as_str().to_owned(),
                })
                .set(count(&counts.credentials, *s));
        }
        for s in GrantState::ALL {
            self.grants
                .get_or_create(&StateLabels {
                    state: s.as_str().to_owned(),
                })
                .set(count(&counts.grants, *s));
        }
        for s in DISCOVERY_TENANT_STATES {
            self.discovery_tenants(s.as_str(), count(&counts.discovery, s));
        }
    }

    /// Brings `broker_events_written_total` up to the totals counted where events commit.
    pub fn events_written_totals(
        &self,
        totals: impl Iterator<Item = (broker_domain::EventType, u64)>,
    ) {
        let Ok(_one_at_a_time) = self.events_sync.lock() else {
            return;
        };
        for (event_type, total) in totals {
            let counter = self
                .events_written
                .get_or_create(&vec![("type", event_type.as_str())]);
            let seen = counter.get();
            if total > seen {
                counter.inc_by(total - seen);
            }
        }
    }

    pub fn hookup(&self, outcome: &str) {
        self.hookups
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    pub fn hookup_secret_matched(&self, which: &'static str) {
        self.hookup_secret_matches
            .get_or_create(&SecretLabels { secret: which })
            .inc();
    }

    pub fn discovery_run(&self, outcome: &str, took: std::time::Duration) {
        self.discovery_runs
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
        self.discovery_duration.observe(took.as_secs_f64());
    }

    pub fn discovery_tenants(&self, state: &str, n: i64) {
        self.discovery_tenants
            .get_or_create(&StateLabels {
                state: state.to_owned(),
            })
            .set(n);
    }

    pub fn token_served(&self, api_key: &Arc<str>, source: &'static str) {
        self.tokens_served
            .get_or_create(&ServedLabels {
                api_key: Escaped(api_key.clone()),
                cache: source,
            })
            .inc();
    }

    pub fn pool(&self, pool: &str, in_use: u32, idle: u32, max: u32) {
        for (state, n) in [("in_use", in_use), ("idle", idle), ("max", max)] {
            self.db_pool
                .get_or_create(&PoolLabels {
                    pool: pool.to_owned(),
                    state: state.to_owned(),
                })
                .set(i64::from(n));
        }
    }

    pub fn queue(&self, queue: &str, depth: usize) {
        self.queue_depth
            .get_or_create(&QueueLabels {
                queue: queue.to_owned(),
            })
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
    }

    /// One token request to a provider: its outcome, the answer's status class (see
    /// `TokenError::answer_class`; `2xx` for a token) and how long it took.
    pub fn upstream_token_request(
        &self,
        outcome: &str,
        answer: &'static str,
        took: std::time::Duration,
    ) {
        self.upstream_token_requests
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
        self.upstream_token_answers
            .get_or_create(&AnswerLabels { class: answer })
            .inc();
        self.upstream_token_duration.observe(took.as_secs_f64());
    }

    pub fn token_lock_wait(&self, took: std::time::Duration) {
        self.token_lock_wait.observe(took.as_secs_f64());
    }

    pub fn authorization(&self, outcome: &str) {
        self.authorizations
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    pub fn refresh(&self, outcome: &str) {
        self.refreshes
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// The Prometheus text exposition.
    /// Counts one webhook attempt by its outcome.
    pub fn webhook_delivery(&self, outcome: &str) {
        self.webhook_deliveries
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
