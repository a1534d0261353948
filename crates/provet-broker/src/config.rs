//! Configuration: built-in defaults, then `config/default.toml`, then `--config FILE`, then
//! `BROKER_<SECTION>__<KEY>` environment variables. Unknown keys are errors that name the key.
//!
//! One file per group of sections: `server.rs` (`[server]`, `[console]`, `[log]`),
//! `storage.rs` (`[database]`, `[secrets]`), `hookup.rs`, `provider.rs` (`[discovery]`,
//! `[tokens]`, `[oauth]`, `[upstream]`: what is said to providers), `events.rs`. Beside them
//! `validation.rs` names values that cannot work, and `redaction.rs` keeps secrets out of
//! error messages.

use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;

mod events;
mod hookup;
mod provider;
mod redaction;
mod server;
mod storage;
mod validation;

pub use events::EventSettings;
pub use hookup::HookupSettings;
pub use provider::{DiscoverySettings, OAuthSettings, TokenSettings, UpstreamSettings};
pub use server::{ConsoleSettings, LogFormat, LogSettings, ServerSettings};
pub use storage::{DatabaseSettings, SecretsSettings};

/// Environment variables `BROKER_<SECTION>__<KEY>` set keys: `BROKER_LOG__LEVEL` is `log.level`.
const ENV_PREFIX: &str = "BROKER_";
const ENV_SPLIT: &str = "__";

/// Every section of the configuration.
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
            .map_err(|e| format!("invalid configuration: {}", redaction::redacted(e)))?;
        let problems = validation::problems(&settings, &figment);
        if !problems.is_empty() {
            return Err(format!("invalid configuration: {}", problems.join("; ")));
        }
        Ok(settings)
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)]
mod tests {
    use std::time::Duration;

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
