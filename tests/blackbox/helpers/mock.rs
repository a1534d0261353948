//! Set-ups shared by the tests that run the daemon against a mock provider (wiremock) on
//! 127.0.0.1 over plain http.

use std::time::Duration;

use serde_json::{Value, json};

use super::{Daemon, DaemonConfig};

impl DaemonConfig {
    /// Adds `extra` settings as environment variables (`BROKER_...` names).
    pub fn with_env(mut self, extra: &[(&str, &str)]) -> Self {
        self.extra_env.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        self
    }
}

/// Settings of a daemon that may call a mock provider on 127.0.0.1 over http; `extra` adds
/// settings after those two.
pub fn mock_provider_config(extra: &[(&str, &str)]) -> DaemonConfig {
    DaemonConfig::new().with_env(
        &[
            &[
                ("BROKER_HOOKUP__ALLOWED_HOSTS", r#"["127.0.0.1"]"#),
                ("BROKER_HOOKUP__ALLOW_HTTP", "true"),
            ][..],
            extra,
        ]
        .concat(),
    )
}

/// A client_credentials hookup without OpenID Connect whose token URL is `{base}{token_path}`.
pub fn mock_client_credentials(
    base: &str,
    provet_id: i64,
    client_id: &str,
    secret: &str,
    token_path: &str,
) -> Value {
    json!({
        "provet_id": provet_id,
        "client_id": client_id,
        "client_secret": secret,
        "algorithm": null,
        "authorization_grant_type": "client_credentials",
        "client_type": "confidential",
        "redirect_uris": "",
        "token_url": format!("{base}{token_path}"),
        "authorize_url": format!("{base}/{provet_id}/oauth2/authorize/"),
        "openid_autodiscovery_url": null,
    })
}

/// The authorization-code hookup of tenant 7 (`web-app`, RS256) whose provider is `issuer`.
pub fn web_app_hookup(issuer: &str) -> Value {
    json!({
        "provet_id": 7, "client_id": "web-app", "client_secret": "web-secret", "algorithm": "RS256",
        "authorization_grant_type": "authorization-code", "client_type": "confidential",
        "redirect_uris": "http://broker.test/oauth/callback",
        "token_url": format!("{issuer}/token/"), "authorize_url": format!("{issuer}/authorize/"),
        "openid_autodiscovery_url": format!("{issuer}/.well-known/openid-configuration"),
    })
}

/// Polls the admin view of tenant `id` (every 50 ms, at most 5 s) until its discovery state
/// is `state`; returns the last state seen, so that a caller may assert on it.
pub async fn wait_for_discovery(daemon: &Daemon, admin: &str, id: i64, state: &str) -> Value {
    let mut seen = Value::Null;
    for _ in 0..100 {
        seen = daemon
            .get(&format!("/admin/tenants/{id}"), Some(admin))
            .await
            .1["discovery"]["state"]
            .clone();
        if seen == state {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    seen
}

/// Starts an authorization for tenant 7 (the web app of `web_app_hookup`) and returns the
/// query of its `authorize_url` (`state`, `nonce`, `code_challenge`, ...).
pub async fn start_authorization(
    daemon: &Daemon,
    admin: &str,
) -> std::collections::HashMap<String, String> {
    let (status, started) = daemon.start_authorization(admin, 7, None).await;
    assert_eq!(status, 200, "{started}");
    url::Url::parse(started["authorize_url"].as_str().expect("url"))
        .expect("url")
        .query_pairs()
        .into_owned()
        .collect()
}
