//! `[database]` (the two pools) and `[secrets]` (the master keys that seal secrets at rest).

use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

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
