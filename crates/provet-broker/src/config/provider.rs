//! What the daemon says to providers: `[discovery]` (OpenID Connect metadata), `[tokens]`
//! (token requests and the cache), `[oauth]` (the connect flow and keep-alive) and
//! `[upstream]` (the proxy for every provider call).

use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

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

#[cfg(test)]
#[allow(clippy::result_large_err)]
mod tests {
    use crate::config::Settings;

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
}
