//! Prometheus metrics, in one registry owned by the application (no global recorder).

use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use broker_domain::{CredentialsState, DiscoveryState, GrantState, TenantStatus};

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

/// A provider's answer by HTTP status class (`2xx`, `4xx`, `429`, `5xx`, `none`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AnswerLabels {
    pub class: &'static str,
}

/// An HTTP method as a label: the standard ones, everything else `other` (a client may
/// send any token as a method; each would otherwise become a series).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum MethodLabel {
    Get,
    Post,
    Put,
    Delete,
    Patch,
    Head,
    Options,
    Other,
}

impl MethodLabel {
    pub fn of(method: &str) -> Self {
        match method {
            "GET" => Self::Get,
            "POST" => Self::Post,
            "PUT" => Self::Put,
            "DELETE" => Self::Delete,
            "PATCH" => Self::Patch,
            "HEAD" => Self::Head,
            "OPTIONS" => Self::Options,
            _ => Self::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Delete => "DELETE",
            Self::Patch => "PATCH",
            Self::Head => "HEAD",
            Self::Options => "OPTIONS",
            Self::Other => "other",
        }
    }
}

impl EncodeLabelValue for MethodLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        encoder.write_str(self.as_str())
    }
}

/// A label value chosen by people (an API key's name), escaped as the text format requires
/// (the encoder writes values as they are).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Escaped(pub Arc<str>);

impl EncodeLabelValue for Escaped {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        for c in self.0.chars() {
            match c {
                '\\' => encoder.write_str("\\\\")?,
                '"' => encoder.write_str("\\\"")?,
                '\n' => encoder.write_str("\\n")?,
                c if c.is_control() => {}
                c => encoder.write_char(c)?,
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: MethodLabel,
    /// The route pattern (`/v1/tenants/{provet_id}`) or `unmatched`, never the concrete
    /// path: the hookup path carries the hookup secret, and paths are unbounded. Borrowed
    /// from the route table on the hot path (no allocation per request).
    pub route: Cow<'static, str>,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: MethodLabel,
    pub route: Cow<'static, str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    /// `main` or `cache`.
    pub pool: String,
    /// `in_use`, `idle` or `max`.
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: String,
    /// The git commit (12 hex digits), or `unknown` when built outside a checkout.
    pub commit: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    pub queue: String,
}

/// Tokens served, by API key (bounded by the keys an admin created) and source. No tenant
/// label: one series per tenant per key would grow without bound and publish the tenant
/// list.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServedLabels {
    pub api_key: Escaped,
    /// `hit` (memory), `shared` (database: a restart or another replica), `miss` (provider).
    pub cache: &'static str,
}

/// Which accepted hookup secret opened a hookup URL: `current` or `extra`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SecretLabels {
    pub secret: &'static str,
}

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

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("broker");
        let hookups = Family::<OutcomeLabels, Counter>::default();
        let events_written = Family::<Vec<(&'static str, &'static str)>, Counter>::default();
        registry.register(
            "events_written",
            "Events committed to the outbox by this process, by type",
            events_written.clone(),
        );
        let webhook_deliveries = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "webhook_deliveries",
            "Webhook attempts by outcome (delivered, retry, failed, gone)",
            webhook_deliveries.clone(),
        );
        let webhook_pending_deliveries = Gauge::default();
        registry.register(
            "webhook_pending_deliveries",
            "Webhook deliveries not yet delivered nor failed",
            webhook_pending_deliveries.clone(),
        );
        let webhook_oldest_pending_seconds = Gauge::default();
        registry.register(
            "webhook_oldest_pending_seconds",
            "Age of the oldest pending webhook delivery, in seconds",
            webhook_oldest_pending_seconds.clone(),
        );
        registry.register(
            "hookups",
            "Hookup deliveries by outcome (registered, updated, unchanged, rejected, failed)",
            hookups.clone(),
        );
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by route and status",
            http_requests.clone(),
        );
        let http_duration = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        registry.register_with_unit(
            "http_request_duration",
            "HTTP request latency by route",
            prometheus_client::registry::Unit::Seconds,
            http_duration.clone(),
        );
        let discovery_runs = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "discovery_runs",
            "OpenID Connect discovery runs by outcome (ok, failed, superseded)",
            discovery_runs.clone(),
        );
        let discovery_duration = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        registry.register_with_unit(
            "discovery_duration",
            "Time of one discovery run (document and JWKS)",
            prometheus_client::registry::Unit::Seconds,
            discovery_duration.clone(),
        );
        let discovery_tenants = Family::<StateLabels, Gauge>::default();
        registry.register(
            "discovery_tenants",
            "Tenants with a discovery URL, by discovery state",
            discovery_tenants.clone(),
        );
        let tokens_served = Family::<ServedLabels, Counter>::default();
        registry.register(
            "tokens_served",
            "Access tokens handed out, by API key name and where they came from (no tenant label)",
            tokens_served.clone(),
        );
        let upstream_token_requests = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "upstream_token_requests",
            "Token requests sent to providers, by outcome (ok, rejected, unavailable, misconfigured)",
            upstream_token_requests.clone(),
        );
        let upstream_token_answers = Family::<AnswerLabels, Counter>::default();
        registry.register(
            "upstream_token_answers",
            "Token requests sent to providers, by the answer's HTTP status class (2xx, 4xx, 429, 5xx; none: timeout, unreachable, or not a token response)",
            upstream_token_answers.clone(),
        );
        let upstream_token_duration = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        registry.register_with_unit(
            "upstream_token_request_duration",
            "Latency of token requests to providers",
            prometheus_client::registry::Unit::Seconds,
            upstream_token_duration.clone(),
        );
        let token_lock_wait = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register_with_unit(
            "token_lock_wait",
            "Time spent waiting for the cross-replica token lock",
            prometheus_client::registry::Unit::Seconds,
            token_lock_wait.clone(),
        );
        let authorizations = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "authorizations",
            "Authorization-code connections by outcome (started, completed, failed)",
            authorizations.clone(),
        );
        let refreshes = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "refreshes",
            "Refresh-token grants sent to providers, by outcome (ok, retried, invalid_grant, rejected, unavailable)",
            refreshes.clone(),
        );
        let grants = Family::<StateLabels, Gauge>::default();
        registry.register("grants", "Grants by state", grants.clone());
        let db_pool = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "db_pool_connections",
            "Database connections by pool (main, cache) and state (in_use, idle, max)",
            db_pool.clone(),
        );
        let queue_depth = Family::<QueueLabels, Gauge>::default();
        registry.register(
            "queue_depth",
            "Background work waiting or running, by queue (credential_checks)",
            queue_depth.clone(),
        );
        let cached_tokens = Gauge::default();
        registry.register(
            "cached_tokens",
            "Access tokens held in this process's memory",
            cached_tokens.clone(),
        );
        let hookup_secret_matches = Family::<SecretLabels, Counter>::default();
        registry.register(
            "hookup_secret_matches",
            "Hookup requests by the accepted secret their URL carried (current, extra): an extra secret at zero for long can be retired",
            hookup_secret_matches.clone(),
        );
        // Both series from the start: `extra` at zero is the signal to look for.
        for which in crate::hookup::SecretMatch::ALL {
            let _ = hookup_secret_matches.get_or_create(&SecretLabels {
                secret: which.as_str(),
            });
        }
        let build_info = Family::<BuildLabels, Gauge>::default();
        registry.register(
            "build_info",
            "Always 1: the version and git commit of this binary",
            build_info.clone(),
        );
        let tenants = Family::<StatusLabels, Gauge>::default();
        registry.register(
            "tenants",
            "Tenants by status (active, removed)",
            tenants.clone(),
        );
        let tenant_credentials = Family::<StateLabels, Gauge>::default();
        registry.register(
            "tenant_credentials",
            "Active tenants by the state of their current client's credentials (unchecked, ok, rejected)",
            tenant_credentials.clone(),
        );
        let metrics = Self {
            registry,
            hookup_secret_matches,
            authorizations,
            refreshes,
            grants,
            tokens_served,
            upstream_token_requests,
            upstream_token_answers,
            upstream_token_duration,
            token_lock_wait,
            discovery_runs,
            discovery_duration,
            discovery_tenants,
            hookups,
            http_requests,
            http_duration,
            db_pool,
            queue_depth,
            cached_tokens,
            events_written,
            webhook_deliveries,
            webhook_pending_deliveries,
            webhook_oldest_pending_seconds,
            events_sync: std::sync::Mutex::new(()),
            build_info,
            tenants,
            tenant_credentials,
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
