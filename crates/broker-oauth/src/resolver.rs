//! DNS resolution that refuses internal addresses. The allowlist is checked on names
//! before any request; this checks what the names resolve to, at connection time, so that
//! an allowed name pointing at a private, loopback or link-local address (DNS rebinding, a
//! misconfigured record) is never connected to, unless that address itself is allowed.

use std::net::SocketAddr;
use std::sync::Arc;

use broker_domain::HostAllowlist;
use broker_domain::hosts::is_internal;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

pub struct GuardedResolver {
    allowlist: Arc<HostAllowlist>,
}

impl GuardedResolver {
    pub fn new(allowlist: Arc<HostAllowlist>) -> Self {
        Self { allowlist }
    }

    /// Keeps the addresses the broker may connect to.
    pub fn permitted(
        allowlist: &HostAllowlist,
        addrs: impl Iterator<Item = SocketAddr>,
    ) -> Vec<SocketAddr> {
        addrs
            .filter(|a| !is_internal(a.ip()) || allowlist.lists_exactly(&a.ip().to_string()))
            .collect()
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allowlist = self.allowlist.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let permitted = Self::permitted(&allowlist, resolved.iter().copied());
            if permitted.is_empty() {
                let found: Vec<String> = resolved.iter().map(|a| a.ip().to_string()).collect();
                return Err(format!(
                    "`{host}` resolves only to private, loopback or link-local addresses ({}); list the address in hookup.allowed_hosts to allow it",
                    found.join(", ")
                )
                .into());
            }
            let addrs: Addrs = Box::new(permitted.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_need_an_exact_listing() {
        let list = HostAllowlist::new(["*.provetcloud.com", "127.0.0.1"]).unwrap();
        let addrs = [
            "10.0.0.1:0",
            "127.0.0.1:0",
            "[::1]:0",
            "93.184.216.34:0",
            "169.254.169.254:0",
        ]
        .iter()
        .map(|a| a.parse::<SocketAddr>().unwrap());
        let kept: Vec<String> = GuardedResolver::permitted(&list, addrs)
            .iter()
            .map(|a| a.ip().to_string())
            .collect();
        assert_eq!(kept, ["127.0.0.1", "93.184.216.34"]);
    }

    #[tokio::test]
    async fn a_name_resolving_to_loopback_is_refused_unless_the_address_is_listed() {
        let refused = GuardedResolver::new(Arc::new(HostAllowlist::new(["localhost"]).unwrap()));
        let err = refused
            .resolve("localhost".parse().unwrap())
            .await
            .err()
            .map(|e| e.to_string());
        assert!(err.unwrap_or_default().contains("resolves only to"));
        let allowed = GuardedResolver::new(Arc::new(
            HostAllowlist::new(["localhost", "127.0.0.1"]).unwrap(),
        ));
        let addrs: Vec<SocketAddr> = allowed
            .resolve("localhost".parse().unwrap())
            .await
            .map(|a| a.collect())
            .unwrap_or_default();
        assert!(addrs.iter().any(|a| a.ip().to_string() == "127.0.0.1"));
    }
}
