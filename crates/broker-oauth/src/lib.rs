//! Everything provet-broker says to an OAuth provider goes through `Upstream`: one reqwest
//! client with timeouts and no redirects, the host allowlist checked before every request,
//! and bodies read with a size cap.
//!
//! `lib.rs` `Upstream` itself; `resolver.rs` DNS answers checked against internal
//! addresses; `token.rs` token requests (client credentials, code exchange, refresh,
//! revocation); `authorize.rs` PKCE and the authorize URL; `id_token.rs` ID-token checks and
//! the key each algorithm needs; `discovery.rs` OpenID Connect discovery and JWKS.

pub mod authorize;
pub mod discovery;
pub mod id_token;
pub mod resolver;
pub mod token;

use std::sync::Arc;
use std::time::Duration;

use broker_domain::UrlPolicy;
use broker_domain::hosts::is_internal;
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use url::Url;

/// Limits for upstream calls.
#[derive(Clone, Debug)]
pub struct UpstreamConfig {
    pub connect_timeout: Duration,
    /// The whole request, body included.
    pub timeout: Duration,
    /// The largest body read from a provider.
    pub max_body: usize,
    /// The one proxy every provider call goes through (`upstream.proxy`), if any. Proxy
    /// variables of the environment (`HTTPS_PROXY`, `ALL_PROXY` ...) are never used: they
    /// would bypass the address guard and hand client secrets to whoever the environment
    /// names. With a proxy, the connect-time address guard checks the proxy's address (the
    /// proxy resolves the provider's name); the allowlist still checks every URL's host.
    pub proxy: Option<SecretString>,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(10),
            max_body: 1024 * 1024,
            proxy: None,
        }
    }
}

/// Why an upstream call failed. Display is a sentence an operator can act on; it never holds
/// credentials (URLs are reduced to their host).
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("{0}")]
    Disallowed(String),
    #[error("could not connect to {host}: {reason}")]
    Connect { host: String, reason: String },
    #[error("no answer from {host} within {timeout:?}")]
    Timeout { host: String, timeout: Duration },
    #[error(
        "{host} answered HTTP {status} with a redirect to {location}; redirects are never followed"
    )]
    Redirect {
        host: String,
        status: u16,
        location: String,
    },
    #[error("{host} answered HTTP {status}")]
    Status {
        host: String,
        status: u16,
        body: Vec<u8>,
        retry_after: Option<Duration>,
    },
    #[error("{host} sent a body over {limit} bytes")]
    TooLarge { host: String, limit: usize },
    #[error("request to {host} failed: {reason}")]
    Other { host: String, reason: String },
}

/// An answer with status 2xx, its body read in full.
#[derive(Debug)]
pub struct UpstreamResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

/// The one HTTP client for providers.
#[derive(Clone)]
pub struct Upstream {
    http: reqwest::Client,
    policy: Arc<UrlPolicy>,
    config: UpstreamConfig,
}

impl Upstream {
    pub fn new(policy: Arc<UrlPolicy>, config: UpstreamConfig) -> Result<Self, String> {
        let mut builder = reqwest::Client::builder()
            // No proxy from the environment, ever; only the configured one.
            .no_proxy()
            .dns_resolver(Arc::new(resolver::GuardedResolver::new(Arc::new(
                policy.allowlist.clone(),
            ))))
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(config.connect_timeout)
            .user_agent(concat!("provet-broker/", env!("CARGO_PKG_VERSION")));
        if let Some(proxy) = &config.proxy {
            builder = builder.proxy(configured_proxy(proxy, &policy)?);
        }
        let http = builder
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Self {
            http,
            policy,
            config,
        })
    }

    /// The same client (one connection pool, one resolver) with another total timeout and
    /// body cap: discovery and token requests share the client, not the limits.
    pub fn with_limits(&self, timeout: Duration, max_body: usize) -> Self {
        Self {
            http: self.http.clone(),
            policy: self.policy.clone(),
            config: UpstreamConfig {
                connect_timeout: self.config.connect_timeout,
                timeout,
                max_body,
                proxy: self.config.proxy.clone(),
            },
        }
    }

    /// The reqwest client, for the oauth2 and openidconnect crates.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub fn config(&self) -> &UpstreamConfig {
        &self.config
    }

    /// Checks a URL against the allowlist before anything is sent to it.
    pub fn check(&self, url: &str) -> Result<Url, UpstreamError> {
        self.policy.check(url).map_err(UpstreamError::Disallowed)
    }

    /// GET with the allowlist, timeouts and body cap.
    pub async fn get(&self, url: &str) -> Result<UpstreamResponse, UpstreamError> {
        let url = self.check(url)?;
        let request = self
            .http
            .request(Method::GET, url.clone())
            .header("accept", "application/json");
        self.send(&url, request).await
    }

    /// Sends a prepared request to `url` (already checked) and reads the answer; any status
    /// but 2xx is an error.
    pub async fn send(
        &self,
        url: &Url,
        request: reqwest::RequestBuilder,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let response = self.send_raw(url, request).await?;
        if !response.status.is_success() {
            return Err(UpstreamError::Status {
                host: url.host_str().unwrap_or_default().to_owned(),
                status: response.status.as_u16(),
                retry_after: retry_after(&response.headers),
                body: response.body,
            });
        }
        Ok(response)
    }

    /// Sends and reads the answer whatever its status, except a redirect (never followed).
    pub async fn send_raw(
        &self,
        url: &Url,
        request: reqwest::RequestBuilder,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let host = url.host_str().unwrap_or_default().to_owned();
        let response = request
            .timeout(self.config.timeout)
            .send()
            .await
            .map_err(|e| self.classify(&host, e))?;
        let status = response.status();
        let headers = response.headers().clone();
        if status.is_redirection() {
            let location = headers
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|l| url.join(l).ok())
                .and_then(|u| u.host_str().map(str::to_owned))
                .unwrap_or_else(|| "an unknown place".into());
            return Err(UpstreamError::Redirect {
                host,
                status: status.as_u16(),
                location,
            });
        }
        let body = self.read_body(&host, response).await?;
        Ok(UpstreamResponse {
            status,
            headers,
            body,
        })
    }

    async fn read_body(
        &self,
        host: &str,
        mut response: reqwest::Response,
    ) -> Result<Vec<u8>, UpstreamError> {
        if response
            .content_length()
            .is_some_and(|n| n > self.config.max_body as u64)
        {
            return Err(UpstreamError::TooLarge {
                host: host.to_owned(),
                limit: self.config.max_body,
            });
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| self.classify(host, e))? {
            if body.len() + chunk.len() > self.config.max_body {
                return Err(UpstreamError::TooLarge {
                    host: host.to_owned(),
                    limit: self.config.max_body,
                });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    fn classify(&self, host: &str, err: reqwest::Error) -> UpstreamError {
        let host = host.to_owned();
        if err.is_timeout() {
            UpstreamError::Timeout {
                host,
                timeout: self.config.timeout,
            }
        } else if err.is_connect() {
            UpstreamError::Connect {
                host,
                reason: root_cause(&err),
            }
        } else {
            UpstreamError::Other {
                host,
                reason: root_cause(&err),
            }
        }
    }
}

/// `upstream.proxy` as a reqwest proxy for every scheme. Messages never repeat the URL (it
/// may carry credentials). A proxy named by a literal internal address must be listed
/// exactly in the allowlist, as a provider's would: names are checked when they resolve.
fn configured_proxy(proxy: &SecretString, policy: &UrlPolicy) -> Result<reqwest::Proxy, String> {
    let url = Url::parse(proxy.expose_secret().trim())
        .map_err(|e| format!("upstream.proxy is not an absolute URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("upstream.proxy must be an http:// or https:// URL".into());
    }
    let literal = match url.host() {
        Some(url::Host::Ipv4(ip)) => Some(std::net::IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => Some(std::net::IpAddr::V6(ip)),
        Some(url::Host::Domain(_)) => None,
        None => return Err("upstream.proxy must name a host".into()),
    };
    if let Some(ip) = literal
        && is_internal(ip)
        && !policy.allowlist.lists_exactly(&ip.to_string())
    {
        return Err(format!(
            "upstream.proxy is at the private, loopback or link-local address {ip}: the address guard checks the proxy's address, so list {ip} exactly in hookup.allowed_hosts to allow it"
        ));
    }
    reqwest::Proxy::all(url.as_str())
        .map_err(|_| "upstream.proxy is not a usable proxy URL".to_owned())
}

/// The innermost cause, which says what happened ("Connection refused (os error 111)").
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut current = err;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}

/// The longest wait a provider's `Retry-After` may impose (a larger one is clamped to it).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// The longest JWKS lifetime a provider's `Cache-Control: max-age` may claim.
pub const MAX_JWKS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// `Retry-After` in seconds, at most `MAX_RETRY_AFTER` (the HTTP-date form is rare from
/// providers and treated as absent). Providers control this number: an absurd one must not
/// overflow the caller's clock arithmetic.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_seconds(v.trim()))
        .map(|d| d.min(MAX_RETRY_AFTER))
}

/// `Cache-Control: max-age=N`, at most `MAX_JWKS_MAX_AGE`.
pub fn max_age(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get_all(reqwest::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|d| d.trim().strip_prefix("max-age="))
        .find_map(|n| parse_seconds(n.trim_matches('"')))
        .map(|d| d.min(MAX_JWKS_MAX_AGE))
}

/// A non-negative decimal number of seconds; digits beyond `u64` saturate instead of
/// failing (the caller clamps anyway).
fn parse_seconds(text: &str) -> Option<Duration> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(Duration::from_secs(text.parse::<u64>().unwrap_or(u64::MAX)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{CACHE_CONTROL, HeaderValue, RETRY_AFTER};

    fn headers(name: reqwest::header::HeaderName, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(value).unwrap());
        h
    }

    fn policy(hosts: &[&str]) -> UrlPolicy {
        UrlPolicy {
            allowlist: broker_domain::HostAllowlist::new(hosts.iter().copied()).unwrap(),
            allow_http: true,
        }
    }

    #[test]
    fn a_proxy_on_an_internal_address_must_be_listed() {
        let proxy = SecretString::from("http://user:pw@10.0.0.5:3128");
        let err = configured_proxy(&proxy, &policy(&["provetcloud.com"])).unwrap_err();
        assert!(err.contains("10.0.0.5") && !err.contains("pw"), "{err}");
        assert!(configured_proxy(&proxy, &policy(&["10.0.0.5"])).is_ok());
        assert!(
            configured_proxy(
                &SecretString::from("http://proxy.example:3128"),
                &policy(&["provetcloud.com"])
            )
            .is_ok()
        );
        let err = configured_proxy(&SecretString::from("socks5://x:1"), &policy(&[])).unwrap_err();
        assert!(err.contains("http"), "{err}");
    }

    #[test]
    fn retry_after_is_clamped() {
        assert_eq!(
            retry_after(&headers(RETRY_AFTER, "7")),
            Some(Duration::from_secs(7))
        );
        for huge in ["18446744073709551615", "99999999999999999999999"] {
            assert_eq!(
                retry_after(&headers(RETRY_AFTER, huge)),
                Some(MAX_RETRY_AFTER)
            );
        }
        assert_eq!(retry_after(&headers(RETRY_AFTER, "-1")), None);
        assert_eq!(
            retry_after(&headers(RETRY_AFTER, "Wed, 21 Oct 2015 07:28:00 GMT")),
            None
        );
    }

    #[test]
    fn max_age_is_clamped() {
        assert_eq!(
            max_age(&headers(CACHE_CONTROL, "public, max-age=3600")),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(
            max_age(&headers(CACHE_CONTROL, "max-age=100000000000000")),
            Some(MAX_JWKS_MAX_AGE)
        );
        assert_eq!(
            max_age(&headers(
                CACHE_CONTROL,
                "max-age=\"99999999999999999999999\""
            )),
            Some(MAX_JWKS_MAX_AGE)
        );
        assert_eq!(max_age(&headers(CACHE_CONTROL, "no-store")), None);
    }
}
