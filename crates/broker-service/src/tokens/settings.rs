//! How the token broker behaves (`tokens.*` in the configuration).

use std::time::Duration;

/// How the token broker behaves.
#[derive(Clone, Debug)]
pub struct TokenSettings {
    /// Refresh this long before expiry (clamped to `skew_fraction` of the token's lifetime).
    pub skew: Duration,
    pub skew_fraction: f64,
    /// Lifetime assumed when the provider gives neither `expires_in` nor a JWT `exp`.
    pub default_ttl: Duration,
    /// After `invalid_client`, how long no request is sent for that client (unless a new
    /// hookup or an admin verify comes first).
    pub rejected_cooldown: Duration,
    /// The upstream timeout; leases last longer than the requests they cover.
    pub timeout: Duration,
    /// How long a memory entry is trusted before the database is consulted again (another
    /// replica may have removed the tenant or replaced its client).
    pub revalidate_after: Duration,
    /// The longest per-tenant backoff after upstream failures.
    pub max_backoff: Duration,
    /// Check a client_credentials tenant's credentials (by fetching a token) after a hookup.
    pub verify_on_hookup: bool,
    /// Credential checks running at once, per replica.
    pub verify_concurrency: usize,
    /// Checks waiting to run; beyond this, a check waits for the next sweep.
    pub verify_queue: usize,
    /// How often unchecked credentials are looked for (checks that could not run).
    pub verify_sweep_interval: Duration,
    /// The scopes callers may ask for.
    pub allowed_scopes: Vec<String>,
}

impl Default for TokenSettings {
    fn default() -> Self {
        Self {
            skew: Duration::from_secs(60),
            skew_fraction: 0.25,
            default_ttl: Duration::from_secs(3600),
            rejected_cooldown: Duration::from_secs(300),
            timeout: Duration::from_secs(10),
            revalidate_after: Duration::from_secs(30),
            max_backoff: Duration::from_secs(60),
            verify_on_hookup: true,
            verify_concurrency: 8,
            verify_queue: 10_000,
            verify_sweep_interval: Duration::from_secs(30),
            allowed_scopes: vec!["restapi".into(), "openid".into()],
        }
    }
}

impl TokenSettings {
    /// A lease covers one upstream request (two for a refresh retried after a rotation
    /// elsewhere), each bounded by the timeout, with room for the database: past it, another
    /// replica may take over (a dead replica's turn passes on within this).
    pub(super) fn lease_ttl(&self) -> Duration {
        self.timeout * 2 + Duration::from_secs(2)
    }

    /// How long a caller waits for another replica's turn: a dead holder's lease expires
    /// within this.
    pub(super) fn lease_wait(&self) -> Duration {
        self.lease_ttl() + Duration::from_secs(2)
    }
}
