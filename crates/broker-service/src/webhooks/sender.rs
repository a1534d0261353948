//! One attempt: a signed POST of the event's envelope, no redirects, bounded by
//! `events.timeout`, never to a link-local address (literal or resolved); the answer's
//! body is never read.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use broker_domain::WebhookUrl;
use broker_domain::webhooks::is_link_local;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use super::policy::{Answer, retry_after};
use super::signing::sign;
use broker_store::webhooks::{ActiveWebhook, ClaimedDelivery};

/// What one attempt saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempted {
    pub answer: Answer,
    /// A short reason when it was not a 2xx (no body, no secret).
    pub error: Option<String>,
}

/// The HTTP client for webhook endpoints.
#[derive(Clone)]
pub struct WebhookClient {
    http: reqwest::Client,
}

impl WebhookClient {
    pub fn new(timeout: Duration) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .dns_resolver(Arc::new(NoLinkLocal))
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .timeout(timeout)
            .pool_max_idle_per_host(8)
            .user_agent(concat!("provet-broker/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the webhook HTTP client: {e}"))?;
        Ok(Self { http })
    }

    /// Sends the delivery's body, signed now, to the webhook.
    pub async fn attempt(
        &self,
        hook: &ActiveWebhook,
        delivery: &ClaimedDelivery,
        timestamp: i64,
    ) -> Attempted {
        let no_answer = |error: String| Attempted {
            answer: Answer::NoAnswer,
            error: Some(error),
        };
        // Checked again at every attempt: a stored URL predates nothing, but this is cheap.
        if let Err(e) = WebhookUrl::parse(&hook.url) {
            return no_answer(format!("url {e}"));
        }
        let id = delivery.event_public_id();
        let Some(signature) = sign(&hook.secret, &id, timestamp, delivery.payload.as_bytes())
        else {
            return no_answer("the signing secret is unusable".into());
        };
        let sent = self
            .http
            .post(&hook.url)
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(delivery.payload.clone())
            .send()
            .await;
        match sent {
            Ok(response) => {
                let status = response.status().as_u16();
                let wait = retry_after(
                    response
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok()),
                );
                Attempted {
                    answer: Answer::Status(status, wait),
                    error: (!response.status().is_success()).then(|| format!("HTTP {status}")),
                }
            }
            Err(e) => no_answer(describe(&e)),
        }
    }
}

/// A short reason for a failed request, without the URL (it may carry a token).
fn describe(err: &reqwest::Error) -> String {
    let kind = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
    let mut root = None;
    while let Some(s) = source {
        root = Some(s.to_string());
        source = s.source();
    }
    match root {
        Some(root) => format!("{kind}: {root}").chars().take(200).collect(),
        None => kind.into(),
    }
}

/// Resolves names and drops link-local addresses; a name with nothing else is refused.
struct NoLinkLocal;

impl Resolve for NoLinkLocal {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let addrs: Addrs = Box::new(permitted(&host, resolved)?.into_iter());
            Ok(addrs)
        })
    }
}

/// The resolved addresses a delivery may connect to: all but the link-local ones, or an
/// error naming the host when nothing else is left.
fn permitted(host: &str, resolved: Vec<SocketAddr>) -> Result<Vec<SocketAddr>, String> {
    let permitted: Vec<SocketAddr> = resolved
        .into_iter()
        .filter(|a| !is_link_local(a.ip()))
        .collect();
    if permitted.is_empty() {
        Err(format!("`{host}` resolves only to link-local addresses"))
    } else {
        Ok(permitted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn a_name_resolving_only_to_link_local_addresses_is_refused() {
        let err = permitted(
            "metadata.internal",
            addrs(&["169.254.169.254:0", "[fe80::1]:0"]),
        )
        .unwrap_err();
        assert!(err.contains("metadata.internal"), "{err}");
        assert!(permitted("empty.internal", Vec::new()).is_err());
    }

    #[test]
    fn link_local_addresses_are_dropped_and_the_rest_kept() {
        let kept = permitted(
            "sync.internal",
            addrs(&["169.254.10.1:0", "10.0.0.7:0", "[fe80::2]:0", "127.0.0.1:0"]),
        )
        .unwrap();
        assert_eq!(kept, addrs(&["10.0.0.7:0", "127.0.0.1:0"]));
    }
}
