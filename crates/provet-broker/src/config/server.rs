//! `[server]` (listeners, timeouts, API-key checks), `[console]` and `[log]`.

use std::time::Duration;

use serde::Deserialize;

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
