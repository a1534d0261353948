//! Which upstream URLs the broker may ever call. Every URL in a hookup message is untrusted:
//! nothing authenticates the message, so a URL is only accepted when its host is on the
//! operator's allowlist.

use std::net::IpAddr;

use url::{Host, Url};

/// Host patterns: `example.com` matches exactly that host, `*.example.com` any subdomain of
/// it (not `example.com` itself). Matching ignores ASCII case and a trailing dot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostAllowlist {
    exact: Vec<String>,
    suffixes: Vec<String>,
}

impl HostAllowlist {
    /// Builds the list; a pattern that is empty or has a `*` anywhere but a leading `*.` is an
    /// error naming it.
    pub fn new<I, S>(patterns: I) -> Result<Self, String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut list = Self::default();
        for pattern in patterns {
            let pattern = normalise_host(pattern.as_ref());
            if let Some(suffix) = pattern.strip_prefix("*.") {
                if suffix.is_empty() || suffix.contains('*') {
                    return Err(format!("invalid host pattern `*.{suffix}`"));
                }
                list.suffixes.push(format!(".{suffix}"));
            } else if pattern.is_empty() || pattern.contains('*') {
                return Err(format!("invalid host pattern `{pattern}`"));
            } else {
                list.exact.push(pattern);
            }
        }
        Ok(list)
    }

    /// Whether `host` (a name or an address literal, without brackets) is listed exactly.
    pub fn lists_exactly(&self, host: &str) -> bool {
        let host = normalise_host(host);
        self.exact.contains(&host)
    }

    /// Whether `host` is allowed by any pattern.
    pub fn allows(&self, host: &str) -> bool {
        let host = normalise_host(host);
        self.exact.contains(&host)
            || self
                .suffixes
                .iter()
                .any(|s| host.len() > s.len() && host.ends_with(s.as_str()))
    }
}

fn normalise_host(host: &str) -> String {
    let host = host.trim().trim_end_matches('.');
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    host.to_ascii_lowercase()
}

/// The rules for a URL the broker will call (token, authorize and discovery URLs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UrlPolicy {
    pub allowlist: HostAllowlist,
    /// Accept `http://` (for a provider on loopback during development and tests).
    pub allow_http: bool,
}

impl UrlPolicy {
    /// Parses and checks one upstream URL; the error says what is wrong without echoing the
    /// URL (which may carry credentials).
    pub fn check(&self, raw: &str) -> Result<Url, String> {
        let url = Url::parse(raw).map_err(|e| format!("must be an absolute URL ({e})"))?;
        match url.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            "http" => {
                return Err("must use https (http is not allowed by hookup.allow_http)".into());
            }
            _ => return Err("must be an http(s) URL".into()),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("must not carry a user name or password".into());
        }
        if url.fragment().is_some() {
            return Err("must not carry a fragment".into());
        }
        let host = match url.host() {
            Some(Host::Domain(d)) => d.to_owned(),
            Some(Host::Ipv4(ip)) => {
                return self.check_address(IpAddr::V4(ip)).map(|()| url);
            }
            Some(Host::Ipv6(ip)) => {
                return self.check_address(IpAddr::V6(ip)).map(|()| url);
            }
            None => return Err("must name a host".into()),
        };
        if self.allowlist.allows(&host) {
            Ok(url)
        } else {
            Err(format!("host `{host}` is not on hookup.allowed_hosts"))
        }
    }

    fn check_address(&self, ip: IpAddr) -> Result<(), String> {
        let text = ip.to_string();
        if self.allowlist.lists_exactly(&text) {
            return Ok(());
        }
        if is_internal(ip) {
            Err(format!(
                "address {text} is private, loopback or link-local; list it exactly in hookup.allowed_hosts to allow it"
            ))
        } else {
            Err(format!("host `{text}` is not on hookup.allowed_hosts"))
        }
    }
}

/// Loopback, private, link-local, unspecified, shared, documentation, multicast and
/// unique-local addresses: nothing an outside provider lives on.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || (o[0] == 198 && (o[1] & 0xfe) == 18)
                || o[0] >= 240
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal(IpAddr::V4(v4));
            }
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] == 0x2001 && s[1] == 0x0db8)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provet() -> UrlPolicy {
        UrlPolicy {
            allowlist: HostAllowlist::new(["provetcloud.com", "*.provetcloud.com"])
                .unwrap_or_default(),
            allow_http: false,
        }
    }

    #[test]
    fn wildcard_matches_subdomains_only() {
        let list = HostAllowlist::new(["*.provetcloud.com"]).unwrap_or_default();
        assert!(list.allows("us.provetcloud.com"));
        assert!(list.allows("A.B.ProvetCloud.com."));
        assert!(!list.allows("provetcloud.com"));
        assert!(!list.allows("evilprovetcloud.com"));
        assert!(!list.allows("provetcloud.com.evil.net"));
    }

    #[test]
    fn bad_patterns_are_refused() {
        assert!(HostAllowlist::new(["*"]).is_err());
        assert!(HostAllowlist::new(["a.*.com"]).is_err());
        assert!(HostAllowlist::new([""]).is_err());
    }

    #[test]
    fn upstream_urls_follow_the_policy() {
        let p = provet();
        assert!(
            p.check("https://us.provetcloud.com/4/oauth2/token/")
                .is_ok()
        );
        assert!(p.check("http://us.provetcloud.com/token").is_err());
        assert!(p.check("https://evil.example/token").is_err());
        assert!(p.check("https://user:pw@provetcloud.com/token").is_err());
        assert!(p.check("https://10.0.0.1/token").is_err());
        assert!(p.check("https://[::1]/token").is_err());
        assert!(p.check("https://169.254.169.254/latest").is_err());
        assert!(p.check("ftp://provetcloud.com/x").is_err());
        assert!(p.check("/relative").is_err());
    }

    #[test]
    fn an_exactly_listed_loopback_address_is_allowed() {
        let p = UrlPolicy {
            allowlist: HostAllowlist::new(["127.0.0.1"]).unwrap_or_default(),
            allow_http: true,
        };
        assert!(p.check("http://127.0.0.1:8000/1/oauth2/token/").is_ok());
        assert!(p.check("http://127.0.0.2:8000/").is_err());
    }

    #[test]
    fn internal_addresses() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.1.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:10.0.0.1",
            "100.64.0.1",
            "0.0.0.0",
        ] {
            assert!(
                is_internal(ip.parse().unwrap_or(IpAddr::from([8, 8, 8, 8]))),
                "{ip}"
            );
        }
        assert!(!is_internal(IpAddr::from([8, 8, 8, 8])));
    }
}
