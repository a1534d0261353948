//! Everything provet-broker says to an OAuth provider goes through `Upstream`: one reqwest
//! client with timeouts and no redirects, the host allowlist checked before every request,
//! and bodies read with a size cap.

pub mod discovery;
pub mod id_token;
pub mod resolver;
pub mod token;

use std::sync::Arc;
use std::time::Duration;

use broker_domain::UrlPolicy;
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use url::Url;

/// Limits for upstream calls.
#[derive(Clone, Debug)]
pub struct UpstreamConfig {
    pub connect_timeout: Duration,
    /// The whole request, body included.
    pub timeout: Duration,
    /// The largest body read from a provider.
    pub max_body: usize,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(10),
            max_body: 1024 * 1024,
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
        let http = reqwest::Client::builder()
            .dns_resolver(Arc::new(resolver::GuardedResolver::new(Arc::new(
                policy.allowlist.clone(),
            ))))
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(config.connect_timeout)
            .user_agent(concat!("provet-broker/", env!("CARGO_PKG_VERSION")))
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

/// The innermost cause, which says what happened ("Connection refused (os error 111)").
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut current = err;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}

/// `Retry-After` in seconds (the HTTP-date form is rare from providers and treated as absent).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// `Cache-Control: max-age=N`.
pub fn max_age(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get_all(reqwest::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|d| d.trim().strip_prefix("max-age="))
        .find_map(|n| n.trim_matches('"').parse::<u64>().ok())
        .map(Duration::from_secs)
}
