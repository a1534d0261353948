//! What the integration's services hear about: the event types of the outbox, and the
//! tenant's REST API root they are told.

use std::fmt;
use std::str::FromStr;

/// The stable names of every event the broker writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    TenantRegistered,
    TenantUpdated,
    TenantDepartmentsChanged,
    TenantRemoved,
    CredentialsOk,
    CredentialsRejected,
    GrantConnected,
    GrantReauthorizationRequired,
    GrantRevoked,
    DiscoveryFailed,
    DiscoveryRecovered,
}

impl EventType {
    pub const ALL: [Self; 11] = [
        Self::TenantRegistered,
        Self::TenantUpdated,
        Self::TenantDepartmentsChanged,
        Self::TenantRemoved,
        Self::CredentialsOk,
        Self::CredentialsRejected,
        Self::GrantConnected,
        Self::GrantReauthorizationRequired,
        Self::GrantRevoked,
        Self::DiscoveryFailed,
        Self::DiscoveryRecovered,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::TenantRegistered => "tenant.registered",
            Self::TenantUpdated => "tenant.updated",
            Self::TenantDepartmentsChanged => "tenant.departments_changed",
            Self::TenantRemoved => "tenant.removed",
            Self::CredentialsOk => "credentials.ok",
            Self::CredentialsRejected => "credentials.rejected",
            Self::GrantConnected => "grant.connected",
            Self::GrantReauthorizationRequired => "grant.reauthorization_required",
            Self::GrantRevoked => "grant.revoked",
            Self::DiscoveryFailed => "discovery.failed",
            Self::DiscoveryRecovered => "discovery.recovered",
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| format!("unknown event type `{s}`"))
    }
}

/// The tenant's Provet REST API root: the origin of its `token_url` plus
/// `/{provet_id}/api/0.1/`. `None` when the URL has no host (a stored URL always has one).
pub fn api_base_url(token_url: &str, provet_id: i64) -> Option<String> {
    let url = url::Url::parse(token_url).ok()?;
    url.host_str()?;
    let origin = url.origin().ascii_serialization();
    Some(format!("{origin}/{provet_id}/api/0.1/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_type_parses_back_from_its_name() {
        for t in EventType::ALL {
            assert_eq!(t.as_str().parse::<EventType>(), Ok(t));
        }
        assert!("tenant.exploded".parse::<EventType>().is_err());
        assert!("".parse::<EventType>().is_err());
    }

    #[test]
    fn the_api_base_url_is_the_token_urls_origin_and_the_tenants_api_path() {
        assert_eq!(
            api_base_url("https://us.provetcloud.com/4321/oauth2/token/", 4321).as_deref(),
            Some("https://us.provetcloud.com/4321/api/0.1/")
        );
        // The path, query and fragment of the token URL do not matter; the port does.
        assert_eq!(
            api_base_url("https://provetcloud.com:8443/x/y?z=1#f", 7).as_deref(),
            Some("https://provetcloud.com:8443/7/api/0.1/")
        );
        // A default port is not repeated; a loopback provider in development works too.
        assert_eq!(
            api_base_url("https://provetcloud.com:443/o/token/", 7).as_deref(),
            Some("https://provetcloud.com/7/api/0.1/")
        );
        assert_eq!(
            api_base_url("http://127.0.0.1:9000/7/oauth2/token/", 7).as_deref(),
            Some("http://127.0.0.1:9000/7/api/0.1/")
        );
        assert_eq!(api_base_url("not a url", 7), None);
        assert_eq!(api_base_url("data:text/plain,x", 7), None);
    }
}
