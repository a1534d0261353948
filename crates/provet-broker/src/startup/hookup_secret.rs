//! The hookup URL: its secrets (configured, or generated once and kept in the database) and
//! the URL given to Provet.

use anyhow::{Context, bail};
use broker_service::hookup::HookupSecrets;
use broker_service::{Clock, SystemClock};
use broker_store::Store;
use secrecy::{ExposeSecret, SecretString};

use crate::config::Settings;

/// The hookup URL's secrets: configured (at least 16 characters each), or generated once
/// and kept in the database. The URL is a credential: it is logged in full only by the
/// start that generated it; every other start logs its fingerprint
/// (`provet-broker hookup-url` prints the URL).
pub(super) async fn hookup_secrets(
    settings: &Settings,
    store: &Store,
    public_url: &url::Url,
) -> anyhow::Result<HookupSecrets> {
    let (hookup_secret, generated) = if settings.hookup.secret.expose_secret().is_empty() {
        store
            .settings()
            .secret_setting_or_insert(
                HOOKUP_SECRET_SETTING,
                HookupSecrets::generate,
                SystemClock.now(),
            )
            .await
            .context("reading the hookup secret")?
    } else {
        (configured_hookup_secret(settings)?, false)
    };
    for (i, extra) in settings.hookup.extra_secrets.iter().enumerate() {
        if extra.expose_secret().len() < 16 {
            bail!(
                "hookup.extra_secrets[{i}] must be at least 16 characters, like hookup.secret: each one opens the hookup URL"
            );
        }
    }
    let secrets = HookupSecrets::new(hookup_secret, &settings.hookup.extra_secrets);
    if generated {
        tracing::info!(
            hookup_url = %hookup_url(public_url, secrets.current()),
            fingerprint = %secrets.fingerprint(),
            "give Provet this hookup URL (generated now and stored in the database; logged this once, `provet-broker hookup-url` prints it again)"
        );
    } else {
        tracing::info!(
            fingerprint = %secrets.fingerprint(),
            source = if settings.hookup.secret.expose_secret().is_empty() { "database" } else { "hookup.secret" },
            extra_secrets = settings.hookup.extra_secrets.len(),
            "hookup URL ready (`provet-broker hookup-url` prints it)"
        );
    }
    Ok(secrets)
}

/// The settings row that holds a generated hookup secret.
const HOOKUP_SECRET_SETTING: &str = "hookup_secret";

/// `hookup.secret`, refused when too short to protect anything.
fn configured_hookup_secret(settings: &Settings) -> anyhow::Result<SecretString> {
    if settings.hookup.secret.expose_secret().len() < 16 {
        bail!(
            "hookup.secret must be at least 16 characters: it is the only thing protecting the hookup URL"
        );
    }
    Ok(settings.hookup.secret.clone())
}

/// The current hookup secret without generating one: `hookup.secret`, else the stored one
/// (`None` before the daemon's first start).
pub async fn current_hookup_secret(
    settings: &Settings,
    store: Option<&Store>,
) -> anyhow::Result<Option<SecretString>> {
    if !settings.hookup.secret.expose_secret().is_empty() {
        return configured_hookup_secret(settings).map(Some);
    }
    let Some(store) = store else {
        return Ok(None);
    };
    store
        .settings()
        .secret_setting(HOOKUP_SECRET_SETTING)
        .await
        .context("reading the hookup secret")
}

/// The URL to give Provet: `server.public_url`, `/hookup/`, the secret.
pub fn hookup_url(public_url: &url::Url, secret: &SecretString) -> String {
    let base = public_url.as_str().trim_end_matches('/');
    format!("{base}/hookup/{}", secret.expose_secret())
}
