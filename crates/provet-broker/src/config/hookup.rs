//! `[hookup]`: the hookup URL's secrets and what a hookup message may name.

use secrecy::SecretString;
use serde::Deserialize;

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
