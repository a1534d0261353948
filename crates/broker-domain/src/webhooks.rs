//! Webhooks: where events are pushed, which events, and the state of each delivery.

use std::collections::BTreeSet;
use std::net::IpAddr;

use url::Url;

use crate::EventType;

/// Whether an address is link-local (169.254.0.0/16, fe80::/10, also as an IPv4-mapped
/// IPv6 address): cloud metadata services live there, so a webhook may never reach one.
pub fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.is_link_local(),
            None => (v6.segments()[0] & 0xffc0) == 0xfe80,
        },
    }
}

/// An absolute http(s) URL whose host is not a link-local address literal. Loopback and
/// private addresses are allowed: internal services live there. Names are checked again
/// when they are resolved, at every attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookUrl(Url);

impl WebhookUrl {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let url = Url::parse(raw.trim()).map_err(|e| format!("must be an absolute URL ({e})"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err("must be an http or https URL".into());
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("must not carry a user name or password".into());
        }
        match url.host() {
            None => return Err("must have a host".into()),
            Some(url::Host::Ipv4(ip)) if is_link_local(IpAddr::V4(ip)) => {
                return Err(format!("{ip} is a link-local address, which is refused"));
            }
            Some(url::Host::Ipv6(ip)) if is_link_local(IpAddr::V6(ip)) => {
                return Err(format!("{ip} is a link-local address, which is refused"));
            }
            Some(_) => {}
        }
        Ok(Self(url))
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    pub fn url(&self) -> &Url {
        &self.0
    }
}

/// Which events a webhook receives: every type (`["*"]`) or the ones listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventSelection {
    All,
    Only(BTreeSet<EventType>),
}

impl EventSelection {
    /// `["*"]` or a non-empty list of known event types; every unknown name is reported.
    pub fn parse<S: AsRef<str>>(names: &[S]) -> Result<Self, String> {
        if names.is_empty() {
            return Err("must list at least one event type, or \"*\"".into());
        }
        if names.iter().any(|n| n.as_ref() == "*") {
            return if names.len() == 1 {
                Ok(Self::All)
            } else {
                Err("\"*\" must stand alone".into())
            };
        }
        let mut types = BTreeSet::new();
        let mut unknown = Vec::new();
        for name in names {
            match name.as_ref().parse::<EventType>() {
                Ok(t) => {
                    types.insert(t);
                }
                Err(_) => unknown.push(format!("`{}`", name.as_ref())),
            }
        }
        if unknown.is_empty() {
            Ok(Self::Only(types))
        } else {
            Err(format!("unknown event type(s) {}", unknown.join(", ")))
        }
    }

    pub fn matches(&self, event_type: &str) -> bool {
        match self {
            Self::All => true,
            Self::Only(types) => types.iter().any(|t| t.as_str() == event_type),
        }
    }

    /// The names, as stored and shown: `["*"]` or the types.
    pub fn names(&self) -> Vec<String> {
        match self {
            Self::All => vec!["*".into()],
            Self::Only(types) => types.iter().map(|t| t.as_str().to_owned()).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DeliveryState, WebhookState};

    #[test]
    fn webhook_urls_are_absolute_http_and_never_link_local() {
        for ok in [
            "https://hooks.example.com/provet",
            "http://127.0.0.1:9000/hook",
            "http://10.1.2.3/x",
            "http://[::1]:8080/",
        ] {
            assert!(WebhookUrl::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "/relative",
            "ftp://example.com/",
            "http://169.254.169.254/latest/meta-data",
            "http://[fe80::1]/",
            "http://[::ffff:169.254.1.1]/",
            "https://user:pw@example.com/",
            "not a url",
        ] {
            assert!(WebhookUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn event_selections_are_star_or_known_types() {
        assert_eq!(EventSelection::parse(&["*"]), Ok(EventSelection::All));
        let only = EventSelection::parse(&["tenant.registered", "tenant.removed"]).unwrap();
        assert!(only.matches("tenant.removed"));
        assert!(!only.matches("grant.revoked"));
        assert_eq!(only.names(), ["tenant.registered", "tenant.removed"]);
        let err = EventSelection::parse(&["tenant.registered", "x.y", "z"]).unwrap_err();
        assert!(err.contains("`x.y`") && err.contains("`z`"), "{err}");
        assert!(EventSelection::parse::<&str>(&[]).is_err());
        assert!(EventSelection::parse(&["*", "tenant.removed"]).is_err());
    }

    #[test]
    fn states_round_trip() {
        for s in [
            DeliveryState::Pending,
            DeliveryState::Delivered,
            DeliveryState::Failed,
        ] {
            assert_eq!(s.as_str().parse::<DeliveryState>(), Ok(s));
        }
        assert_eq!(
            "disabled".parse::<WebhookState>(),
            Ok(WebhookState::Disabled)
        );
        assert!("gone".parse::<WebhookState>().is_err());
    }
}
