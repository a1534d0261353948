//! Configuration: built-in defaults, then `config/default.toml`, then `--config FILE`, then
//! `BROKER_<SECTION>__<KEY>` environment variables. Unknown keys are errors that name the key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use secrecy::SecretString;
use serde::Deserialize;

mod validation;

/// Environment variables `BROKER_<SECTION>__<KEY>` set keys: `BROKER_LOG__LEVEL` is `log.level`.
const ENV_PREFIX: &str = "BROKER_";
const ENV_SPLIT: &str = "__";

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub secrets: SecretsSettings,
    pub hookup: HookupSettings,
    pub discovery: DiscoverySettings,
    pub tokens: TokenSettings,
    pub oauth: OAuthSettings,
    pub upstream: UpstreamSettings,
    pub log: LogSettings,
    pub events: EventSettings,
    pub console: ConsoleSettings,
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Address to listen on; port 0 picks a free one (logged at start).
    pub bind: String,
    /// When set, the internal routes (`/v1`, `/admin`, `/console`, `/metrics`,
    /// `/openapi.json`) are served only on this address and `bind` answers them `404`.
    /// Empty: one listener serves everything.
    pub internal_bind: String,
    /// How Provet and browsers reach this daemon; the hookup URL and the OAuth callback
    /// are built from it.
    pub public_url: String,
    /// HTTP worker threads; 0 means one per core.
    pub workers: usize,
    /// How long in-flight requests may finish after SIGTERM/SIGINT.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// How long a checked API key is trusted without reading the database. A revoke on
    /// one replica reaches the others within this time.
    #[serde(with = "humantime_serde")]
    pub api_key_cache_ttl: Duration,
    /// After this many failed API-key attempts from one address within
    /// `auth_failure_window`, that address gets 429 until the window ends.
    pub auth_failure_limit: u32,
    /// A client must send its request head within this time (slow clients are cut off).
    #[serde(with = "humantime_serde")]
    pub request_header_timeout: Duration,
    /// A request body (on any route) must arrive within this time.
    #[serde(with = "humantime_serde")]
    pub request_body_timeout: Duration,
    /// How long an idle connection is kept open for the client's next request.
    #[serde(with = "humantime_serde")]
    pub keep_alive: Duration,
    #[serde(with = "humantime_serde")]
    pub auth_failure_window: Duration,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8080".into(),
            internal_bind: String::new(),
            public_url: "http://127.0.0.1:8080".into(),
            workers: 0,
            shutdown_timeout: Duration::from_secs(30),
            api_key_cache_ttl: Duration::from_secs(10),
            auth_failure_limit: 20,
            request_header_timeout: Duration::from_secs(5),
            request_body_timeout: Duration::from_secs(10),
            keep_alive: Duration::from_secs(10),
            auth_failure_window: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `sqlite://path?mode=rwc` or `postgres://user@host/db`.
    pub url: String,
    /// Connections of the main pool (hookups, grants, reads).
    pub max_connections: u32,
    /// Connections of the cache pool (cached tokens, credential states, token leases).
    pub cache_connections: u32,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long a request waits for a pooled connection before it fails (503).
    #[serde(with = "humantime_serde")]
    pub acquire_timeout: Duration,
    /// SQLite only: how long a writer waits for another.
    #[serde(with = "humantime_serde")]
    pub busy_timeout: Duration,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: "sqlite://data/broker.db?mode=rwc".into(),
            max_connections: 16,
            cache_connections: 8,
            connect_timeout: Duration::from_secs(5),
            acquire_timeout: Duration::from_secs(5),
            busy_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecretsSettings {
    /// Base64 of 32 bytes. Empty: read `master_key_file`, else generate into `generated_key_file`.
    pub master_key: SecretString,
    /// A file holding the base64 master key (for secret mounts).
    pub master_key_file: String,
    /// Keys that sealed existing rows and must still open them until `rekey` has run.
    pub previous_keys: Vec<SecretString>,
    /// Where a generated key is kept when none is configured.
    pub generated_key_file: PathBuf,
}

impl Default for SecretsSettings {
    fn default() -> Self {
        Self {
            master_key: SecretString::from(String::new()),
            master_key_file: String::new(),
            previous_keys: Vec::new(),
            generated_key_file: PathBuf::from("data/master.key"),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HookupSettings {
    /// The hookup URL's secret path segment. Empty: generated on first run, kept in the database.
    pub secret: SecretString,
    /// Further secrets still accepted (while Provet moves to a new one).
    pub extra_secrets: Vec<SecretString>,
    /// Hosts a hookup's URLs may name: `host` exactly or `*.domain` for any subdomain.
    pub allowed_hosts: Vec<String>,
    /// Accept http:// URLs (only for a provider on loopback in development and tests).
    pub allow_http: bool,
    /// PostgreSQL: hookup batches written at once (SQLite has one writer).
    pub writers: usize,
    /// The most hookups committed in one transaction.
    pub max_batch: usize,
}

impl Default for HookupSettings {
    fn default() -> Self {
        Self {
            secret: SecretString::from(String::new()),
            extra_secrets: Vec::new(),
            allowed_hosts: vec!["provetcloud.com".into(), "*.provetcloud.com".into()],
            allow_http: false,
            writers: 4,
            max_batch: 64,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiscoverySettings {
    /// Run the background worker. Off: discovery only runs when an operator asks.
    pub enabled: bool,
    /// How old a tenant's OpenID Connect metadata may grow before it is fetched again
    /// (with ±10% jitter).
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
    /// Tenants discovered at once, per replica.
    pub concurrency: usize,
    /// Bound on each request (document, JWKS).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// First retry delay after a failure; doubles per failure (±20% jitter) up to `retry_max`.
    #[serde(with = "humantime_serde")]
    pub retry_base: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    /// The document's issuer must equal the discovery URL's prefix (OpenID Connect
    /// Discovery 1.0, 4.3). Off: a mismatch is only a warning.
    pub strict_issuer: bool,
    /// How often the worker looks for due tenants when nothing woke it.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// The least time between two JWKS refetches for an unknown key id, per tenant.
    #[serde(with = "humantime_serde")]
    pub jwks_min_interval: Duration,
}

impl Default for DiscoverySettings {
    fn default() -> Self {
        Self {
            enabled: true,
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

impl DiscoverySettings {
    pub fn to_service(&self) -> broker_service::discovery::DiscoverySettings {
        broker_service::discovery::DiscoverySettings {
            refresh_interval: self.refresh_interval,
            concurrency: self.concurrency,
            timeout: self.timeout,
            retry_base: self.retry_base,
            retry_max: self.retry_max,
            strict_issuer: self.strict_issuer,
            poll_interval: self.poll_interval,
            jwks_min_interval: self.jwks_min_interval,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenSettings {
    /// Connect timeout for token requests.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Bound on a whole token request. Waits for another replica's request are bounded by
    /// twice this plus 5 s.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Refresh a cached token this long before it expires, at most a quarter of its lifetime.
    #[serde(with = "humantime_serde")]
    pub refresh_skew: Duration,
    /// Lifetime assumed when a provider sends neither `expires_in` nor a JWT `exp`.
    #[serde(with = "humantime_serde")]
    pub default_ttl: Duration,
    /// After `invalid_client`, no token request for that client for this long (a new hookup
    /// or `POST /admin/tenants/{id}/verify` ends it early).
    #[serde(with = "humantime_serde")]
    pub rejected_cooldown: Duration,
    /// The longest per-tenant backoff after the provider failed (timeouts, 5xx, 429).
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// How long a replica trusts its memory before checking the database again.
    #[serde(with = "humantime_serde")]
    pub revalidate_after: Duration,
    /// Fetch one token right after a client_credentials hookup to check the credentials.
    pub verify_on_hookup: bool,
    /// Credential checks running at once, per replica.
    pub verify_concurrency: usize,
    /// Credential checks waiting; beyond this they wait for the next sweep.
    pub verify_queue: usize,
    /// How often credentials still unchecked are looked for.
    #[serde(with = "humantime_serde")]
    pub verify_sweep_interval: Duration,
    /// The scopes callers may ask for.
    pub allowed_scopes: Vec<String>,
}

impl Default for TokenSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(10),
            refresh_skew: Duration::from_secs(60),
            default_ttl: Duration::from_secs(3600),
            rejected_cooldown: Duration::from_secs(300),
            max_backoff: Duration::from_secs(60),
            revalidate_after: Duration::from_secs(30),
            verify_on_hookup: true,
            verify_concurrency: 8,
            verify_queue: 10_000,
            verify_sweep_interval: Duration::from_secs(30),
            allowed_scopes: vec!["restapi".into(), "openid".into()],
        }
    }
}

impl TokenSettings {
    pub fn to_service(&self) -> broker_service::tokens::TokenSettings {
        broker_service::tokens::TokenSettings {
            skew: self.refresh_skew,
            skew_fraction: 0.25,
            default_ttl: self.default_ttl,
            rejected_cooldown: self.rejected_cooldown,
            timeout: self.timeout,
            revalidate_after: self.revalidate_after,
            max_backoff: self.max_backoff,
            verify_on_hookup: self.verify_on_hookup,
            verify_concurrency: self.verify_concurrency,
            verify_queue: self.verify_queue,
            verify_sweep_interval: self.verify_sweep_interval,
            allowed_scopes: self.allowed_scopes.clone(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OAuthSettings {
    /// Where a `return_to` may point: absolute http(s) URLs; a `return_to` must have the same
    /// scheme, host and port, and a path under the entry's path by whole segments.
    pub allowed_return_to: Vec<String>,
    /// How long a started authorization waits for its callback.
    #[serde(with = "humantime_serde")]
    pub authorization_ttl: Duration,
    /// Grants not refreshed for this long are refreshed in the background (Provet's refresh
    /// tokens die after 30 days unused).
    #[serde(with = "humantime_serde")]
    pub keepalive_after: Duration,
    /// How often the keep-alive looks for such grants.
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
    /// Clock skew tolerated on ID tokens' `exp` and `iat`.
    #[serde(with = "humantime_serde")]
    pub id_token_leeway: Duration,
}

impl Default for OAuthSettings {
    fn default() -> Self {
        Self {
            allowed_return_to: Vec::new(),
            authorization_ttl: Duration::from_secs(600),
            keepalive_after: Duration::from_secs(20 * 24 * 3600),
            keepalive_interval: Duration::from_secs(3600),
            id_token_leeway: Duration::from_secs(60),
        }
    }
}

impl OAuthSettings {
    /// Fails on an `allowed_return_to` entry that is not an absolute http(s) URL (naming it).
    pub fn to_service(
        &self,
        public_url: &str,
    ) -> Result<broker_service::connect::OAuthSettings, broker_service::connect::ReturnToConfigError>
    {
        Ok(broker_service::connect::OAuthSettings {
            callback_url: format!("{}/oauth/callback", public_url.trim_end_matches('/')),
            allowed_return_to: broker_service::connect::ReturnToPolicy::new(
                &self.allowed_return_to,
            )?,
            authorization_ttl: self.authorization_ttl,
            leeway: self.id_token_leeway,
        })
    }

    /// When idle grants are refreshed.
    pub fn keepalive(&self) -> broker_service::tokens::KeepAlive {
        broker_service::tokens::KeepAlive {
            after: self.keepalive_after,
            interval: self.keepalive_interval,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamSettings {
    /// The proxy for every provider call (discovery, JWKS, tokens), e.g.
    /// `http://user:password@proxy.internal:3128`. Empty: none. Proxy environment variables
    /// (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`) are never used. With a proxy, the
    /// connect-time address guard checks the proxy's address, not the provider's (the proxy
    /// resolves the provider's name): a proxy on a private or loopback address must be listed
    /// exactly in `hookup.allowed_hosts`, and the proxy itself must refuse internal targets.
    pub proxy: SecretString,
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        Self {
            proxy: SecretString::from(String::new()),
        }
    }
}

impl UpstreamSettings {
    /// The proxy, when one is configured.
    pub fn proxy(&self) -> Option<SecretString> {
        use secrecy::ExposeSecret;
        let proxy = self.proxy.expose_secret().trim();
        (!proxy.is_empty()).then(|| SecretString::from(proxy.to_owned()))
    }
}

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

/// `[console]`: the operators' web console.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleSettings {
    /// How long a console session lasts after sign-in.
    #[serde(with = "humantime_serde")]
    pub session_ttl: Duration,
}

impl Default for ConsoleSettings {
    fn default() -> Self {
        Self {
            session_ttl: Duration::from_secs(12 * 3600),
        }
    }
}

impl ConsoleSettings {
    /// The cookie is `Secure` when browsers reach the daemon over https.
    pub fn to_service(&self, public_url: &str) -> broker_service::console::ConsoleSettings {
        broker_service::console::ConsoleSettings {
            session_ttl: self.session_ttl.max(Duration::from_secs(1)),
            secure_cookie: public_url.trim().to_ascii_lowercase().starts_with("https:"),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A tracing filter (`info`, `provet_broker=debug,info`); `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl Settings {
    /// Loads the layers. `config/default.toml` is read when it exists in the working folder.
    pub fn load(config_file: Option<&Path>) -> Result<Self, String> {
        let env = Env::prefixed(ENV_PREFIX).split(ENV_SPLIT);
        let mut figment = Figment::new();
        let default_file = Path::new("config/default.toml");
        if default_file.exists() {
            figment = figment.merge(Toml::file_exact(default_file));
        }
        if let Some(path) = config_file {
            if !path.exists() {
                return Err(format!("config file {} does not exist", path.display()));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        let figment = figment.merge(env);
        let settings: Self = figment
            .extract()
            .map_err(|e| format!("invalid configuration: {}", redacted(e)))?;
        let problems = validation::problems(&settings, &figment);
        if !problems.is_empty() {
            return Err(format!("invalid configuration: {}", problems.join("; ")));
        }
        Ok(settings)
    }
}

/// Keys whose values are secrets (or hold credentials): a configuration error about one of
/// them never repeats its value.
const SECRET_KEYS: [&str; 5] = [
    "secrets",
    "hookup.secret",
    "hookup.extra_secrets",
    "database.url",
    "upstream.proxy",
];

/// Whether a value at `path` may be or contain a secret: a secret key, anything inside
/// one, or a section (or the root) that contains one (`BROKER_DATABASE=...`).
fn may_hold_a_secret(path: &[String]) -> bool {
    let key = path.join(".").to_ascii_lowercase();
    SECRET_KEYS.iter().any(|k| {
        key == *k
            || key.starts_with(&format!("{k}."))
            || key.is_empty()
            || k.starts_with(&format!("{key}."))
    })
}

/// Every error figment found, each with its key and source; for keys that may hold a
/// secret without the value (figment's messages quote it: `found string "..."`). Parse
/// errors of a file quote the offending line: those lines are left out.
fn redacted(error: figment::Error) -> String {
    use figment::error::Kind;
    let messages: Vec<String> = error
        .into_iter()
        .map(|mut e| {
            let secret = may_hold_a_secret(&e.path);
            e.kind = match e.kind {
                Kind::InvalidType(_, expected) | Kind::InvalidValue(_, expected) if secret => {
                    Kind::Message(format!(
                        "invalid value (not shown: the key holds a secret), expected {expected}"
                    ))
                }
                Kind::UnknownVariant(_, _) | Kind::Unsupported(_) | Kind::UnsupportedKey(..)
                    if secret =>
                {
                    Kind::Message("invalid value (not shown: the key holds a secret)".into())
                }
                Kind::Message(_) if secret && !e.path.is_empty() => {
                    Kind::Message("invalid value (not shown: the key holds a secret)".into())
                }
                Kind::Message(message) => Kind::Message(without_source_lines(&message)),
                other => other,
            };
            // figment names an environment variable's key `LOG.LEVEL`: add the variable's
            // own spelling, so the operator can find it.
            let from_env = e
                .metadata
                .as_ref()
                .is_some_and(|md| md.name.contains("environment variable"));
            if from_env && !e.path.is_empty() {
                let name = validation::env_spelling(&e.path.join("."));
                format!("{e} (environment variable {name})")
            } else {
                e.to_string()
            }
        })
        .collect();
    messages.join("; ")
}

/// A parser's message without the lines that quote the input (`12 | master_key = "..."`).
fn without_source_lines(message: &str) -> String {
    message
        .lines()
        .filter(|line| {
            let t = line.trim_start();
            let digits = t.bytes().take_while(u8::is_ascii_digit).count();
            !(t.starts_with('|') || (digits > 0 && t[digits..].trim_start().starts_with('|')))
        })
        .filter(|line| !line.trim().is_empty() && !line.trim().chars().all(|c| c == '^'))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    // figment's Env reads the process environment; tests feed variables through a jail.
    #[test]
    fn layers_and_env_override() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "extra.toml",
                "[server]\nbind = \"0.0.0.0:9\"\n[hookup]\nallow_http = true\n",
            )?;
            jail.set_env("BROKER_DATABASE__URL", "postgres://x/y");
            jail.set_env("BROKER_HOOKUP__ALLOWED_HOSTS", "[\"127.0.0.1\"]");
            jail.set_env("BROKER_DISCOVERY__REFRESH_INTERVAL", "90s");
            let s = Settings::load(Some(Path::new("extra.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(s.server.bind, "0.0.0.0:9");
            assert!(s.hookup.allow_http);
            assert_eq!(s.database.url, "postgres://x/y");
            assert_eq!(s.hookup.allowed_hosts, ["127.0.0.1"]);
            assert_eq!(s.discovery.refresh_interval, Duration::from_secs(90));
            assert_eq!(s.secrets.master_key.expose_secret(), "");
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_named() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("bad.toml", "[server]\nbnd = \"x\"\n")?;
            let err = Settings::load(Some(Path::new("bad.toml")))
                .err()
                .unwrap_or_default();
            assert!(err.contains("bnd"), "{err}");
            jail.set_env("BROKER_HOOKUP__ALLOWED_HOST", "x");
            let err = Settings::load(None).err().unwrap_or_default();
            assert!(err.contains("allowed_host"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn defaults_need_no_configuration() {
        figment::Jail::expect_with(|_| {
            let s = Settings::load(None).map_err(|e| e.to_string())?;
            assert_eq!(s.database.url, "sqlite://data/broker.db?mode=rwc");
            assert_eq!(
                s.hookup.allowed_hosts,
                ["provetcloud.com", "*.provetcloud.com"]
            );
            Ok(())
        });
    }

    #[test]
    fn errors_about_secret_keys_do_not_show_their_values() {
        for (name, value, key) in [
            (
                "BROKER_SECRETS__PREVIOUS_KEYS",
                "c2VjcmV0LWtleS12YWx1ZQ==",
                "previous_keys",
            ),
            (
                "BROKER_HOOKUP__EXTRA_SECRETS",
                "extra-hookup-secret",
                "extra_secrets",
            ),
            (
                "BROKER_SECRETS__MASTER_KEY",
                "[\"listed-secret\"]",
                "master_key",
            ),
            (
                "BROKER_UPSTREAM__PROXY",
                "{url=\"http://u:pw-secret@p:1\"}",
                "proxy",
            ),
            ("BROKER_DATABASE", "postgres://u:db-secret@h/d", "database"),
        ] {
            figment::Jail::expect_with(|jail| {
                jail.set_env(name, value);
                let err = Settings::load(None).err().unwrap_or_default();
                for secret in [
                    "c2VjcmV0",
                    "extra-hookup",
                    "listed-secret",
                    "pw-secret",
                    "db-secret",
                ] {
                    assert!(!err.contains(secret), "{name}: {err}");
                }
                assert!(err.to_ascii_lowercase().contains(key), "{name}: {err}");
                Ok(())
            });
        }
        // Other keys keep figment's full message.
        figment::Jail::expect_with(|jail| {
            jail.set_env("BROKER_SERVER__WORKERS", "many");
            let err = Settings::load(None).err().unwrap_or_default();
            assert!(err.contains("many"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn a_broken_file_line_is_not_quoted() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "broken.toml",
                "[secrets]\nmaster_key = \"unterminated-secret\n",
            )?;
            let err = Settings::load(Some(Path::new("broken.toml")))
                .err()
                .unwrap_or_default();
            assert!(!err.contains("unterminated-secret"), "{err}");
            assert!(err.contains("line 2"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn an_empty_proxy_is_none() {
        figment::Jail::expect_with(|jail| {
            assert!(
                Settings::load(None)
                    .map_err(|e| e.to_string())?
                    .upstream
                    .proxy()
                    .is_none()
            );
            jail.set_env("BROKER_UPSTREAM__PROXY", "http://proxy.internal:3128");
            let s = Settings::load(None).map_err(|e| e.to_string())?;
            assert!(s.upstream.proxy().is_some());
            Ok(())
        });
    }

    /// The shipped files must parse, and default.toml must say what the built-in defaults say.
    #[test]
    fn shipped_config_files_are_valid() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config");
        let from_file: Settings = Figment::new()
            .merge(Toml::file_exact(root.join("default.toml")))
            .extract()
            .unwrap();
        let builtin = Settings::default();
        assert_eq!(format!("{from_file:?}"), format!("{builtin:?}"));
        let production: Settings = Figment::new()
            .merge(Toml::file_exact(root.join("production.example.toml")))
            .extract()
            .unwrap();
        assert!(production.database.url.starts_with("postgres://"));
    }
}
