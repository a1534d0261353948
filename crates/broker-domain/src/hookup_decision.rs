//! What a valid hookup message does to a tenant, decided without I/O: the store loads the
//! tenant's state, calls `decide_hookup`, and persists the decision.

use std::collections::BTreeSet;

use secrecy::{ExposeSecret, SecretString};

use crate::hookup::HookupMessage;
use crate::states::{ClientType, GrantType, HookupOutcome, SigningAlgorithm, TenantStatus};

/// The names of the client fields a hookup sets, in message order.
pub const CLIENT_FIELDS: [&str; 9] = [
    "client_id",
    "client_secret",
    "algorithm",
    "authorization_grant_type",
    "client_type",
    "redirect_uris",
    "token_url",
    "authorize_url",
    "openid_autodiscovery_url",
];

/// A tenant as stored before the hookup.
#[derive(Clone, Debug)]
pub struct StoredTenant {
    pub status: TenantStatus,
    /// The tenant's current client, its secret opened.
    pub client: Option<StoredClient>,
    pub departments: BTreeSet<i64>,
}

/// A tenant's current client as stored, its secret opened.
#[derive(Clone)]
pub struct StoredClient {
    pub client_id: String,
    pub client_secret: Option<SecretString>,
    pub algorithm: Option<SigningAlgorithm>,
    pub grant_type: GrantType,
    pub client_type: ClientType,
    pub redirect_uris: Vec<String>,
    pub token_url: String,
    pub authorize_url: String,
    pub openid_autodiscovery_url: Option<String>,
}

impl std::fmt::Debug for StoredClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredClient")
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "[redacted]"),
            )
            .finish_non_exhaustive()
    }
}

/// What to do with one hookup message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookupDecision {
    pub outcome: HookupOutcome,
    /// The tenant had no row: nothing was stored before.
    pub new_tenant: bool,
    /// Names (never values) of the client fields that differ from the stored client; every
    /// field when there was none.
    pub changed_fields: Vec<&'static str>,
    /// The client must be written: its tokens are of no use any more, and grants of other
    /// clients are revoked.
    pub client_changed: bool,
    /// The stored current client has another `client_id`: it stops being current and its
    /// secret is wiped (its row stays for audit).
    pub supersedes_client: Option<String>,
    /// The departments after the message.
    pub departments: BTreeSet<i64>,
    pub departments_added: Vec<i64>,
    pub departments_removed: Vec<i64>,
}

impl HookupDecision {
    /// Whether the message changed anything (and so the tenant's row and discovery follow).
    pub fn changes_anything(&self) -> bool {
        self.outcome != HookupOutcome::Unchanged
    }

    pub fn departments_changed(&self) -> bool {
        !self.departments_added.is_empty() || !self.departments_removed.is_empty()
    }
}

/// Decides what `msg` does to the tenant stored as `stored` (`None`: an unknown tenant).
///
/// Registered: a new tenant, or a removed one installing again. Updated: the client or the
/// departments changed. Unchanged: the message says what is stored.
pub fn decide_hookup(stored: Option<&StoredTenant>, msg: &HookupMessage) -> HookupDecision {
    let empty = BTreeSet::new();
    let current = stored.map_or(&empty, |t| &t.departments);
    let departments = msg.departments.apply(current);
    let changed_fields = match stored.and_then(|t| t.client.as_ref()) {
        Some(client) => changed_fields(client, msg),
        None => CLIENT_FIELDS.to_vec(),
    };
    let client_changed = !changed_fields.is_empty();
    let supersedes_client = stored
        .and_then(|t| t.client.as_ref())
        .filter(|c| c.client_id != msg.client_id)
        .map(|c| c.client_id.clone());
    let departments_added: Vec<i64> = departments.difference(current).copied().collect();
    let departments_removed: Vec<i64> = current.difference(&departments).copied().collect();
    let reinstalled = stored.is_some_and(|t| t.status != TenantStatus::Active);
    let outcome = if stored.is_none() || reinstalled {
        HookupOutcome::Registered
    } else if client_changed || !departments_added.is_empty() || !departments_removed.is_empty() {
        HookupOutcome::Updated
    } else {
        HookupOutcome::Unchanged
    };
    HookupDecision {
        outcome,
        new_tenant: stored.is_none(),
        changed_fields,
        client_changed,
        supersedes_client,
        departments,
        departments_added,
        departments_removed,
    }
}

/// The names of the fields in which the message differs from `client`.
fn changed_fields(client: &StoredClient, msg: &HookupMessage) -> Vec<&'static str> {
    let secret_same = match (&client.client_secret, &msg.client_secret) {
        (None, None) => true,
        (Some(a), Some(b)) => a.expose_secret() == b.expose_secret(),
        _ => false,
    };
    let redirect_same = client
        .redirect_uris
        .iter()
        .map(String::as_str)
        .eq(msg.redirect_uris.iter().map(|u| u.as_str()));
    let same = [
        client.client_id == msg.client_id,
        secret_same,
        client.algorithm == msg.algorithm,
        client.grant_type == msg.grant_type,
        client.client_type == msg.client_type,
        redirect_same,
        client.token_url == msg.token_url.as_str(),
        client.authorize_url == msg.authorize_url.as_str(),
        client.openid_autodiscovery_url.as_deref()
            == msg.openid_autodiscovery_url.as_ref().map(|u| u.as_str()),
    ];
    CLIENT_FIELDS
        .into_iter()
        .zip(same)
        .filter_map(|(name, same)| (!same).then_some(name))
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::hosts::{HostAllowlist, UrlPolicy};

    fn message(extra: serde_json::Value) -> HookupMessage {
        let mut v = json!({
            "provet_id": 7, "client_id": "a", "client_secret": "s1", "algorithm": null,
            "authorization_grant_type": "client_credentials", "client_type": "confidential",
            "redirect_uris": "", "token_url": "https://provetcloud.com/7/oauth2/token/",
            "authorize_url": "https://provetcloud.com/7/oauth2/authorize/",
            "openid_autodiscovery_url": null
        });
        if let (Some(obj), Some(extra)) = (v.as_object_mut(), extra.as_object()) {
            obj.extend(extra.clone());
        }
        let policy = UrlPolicy {
            allowlist: HostAllowlist::new(["provetcloud.com"]).unwrap(),
            allow_http: false,
        };
        HookupMessage::parse(v.to_string().as_bytes(), &policy).unwrap()
    }

    /// What storing `message(json!({}))` with departments 1 and 2 leaves behind.
    fn stored() -> StoredTenant {
        StoredTenant {
            status: TenantStatus::Active,
            client: Some(StoredClient {
                client_id: "a".into(),
                client_secret: Some("s1".to_owned().into()),
                algorithm: None,
                grant_type: GrantType::ClientCredentials,
                client_type: ClientType::Confidential,
                redirect_uris: vec![],
                token_url: "https://provetcloud.com/7/oauth2/token/".into(),
                authorize_url: "https://provetcloud.com/7/oauth2/authorize/".into(),
                openid_autodiscovery_url: None,
            }),
            departments: BTreeSet::from([1, 2]),
        }
    }

    #[test]
    fn a_new_tenant_is_registered_with_everything_new() {
        let d = decide_hookup(None, &message(json!({"departments": [3, 1]})));
        assert_eq!(d.outcome, HookupOutcome::Registered);
        assert!(d.new_tenant && d.client_changed && d.changes_anything());
        assert_eq!(d.changed_fields, CLIENT_FIELDS);
        assert_eq!(d.supersedes_client, None);
        assert_eq!(d.departments_added, [1, 3]);
        assert!(d.departments_removed.is_empty());
        assert_eq!(d.departments, BTreeSet::from([1, 3]));
    }

    #[test]
    fn the_same_message_again_is_unchanged() {
        let d = decide_hookup(Some(&stored()), &message(json!({"departments": [1, 2]})));
        assert_eq!(d.outcome, HookupOutcome::Unchanged);
        assert!(!d.new_tenant && !d.client_changed && !d.changes_anything());
        assert!(d.changed_fields.is_empty());
        assert!(!d.departments_changed());
        // Without department fields the stored departments stay.
        let d = decide_hookup(Some(&stored()), &message(json!({})));
        assert_eq!(d.outcome, HookupOutcome::Unchanged);
        assert_eq!(d.departments, BTreeSet::from([1, 2]));
    }

    #[test]
    fn a_department_change_alone_is_an_update_of_departments_only() {
        let d = decide_hookup(
            Some(&stored()),
            &message(json!({"added_department": 5, "removed_department": 1})),
        );
        assert_eq!(d.outcome, HookupOutcome::Updated);
        assert!(!d.client_changed && d.changed_fields.is_empty());
        assert_eq!(d.departments_added, [5]);
        assert_eq!(d.departments_removed, [1]);
        assert_eq!(d.departments, BTreeSet::from([2, 5]));
        let d = decide_hookup(Some(&stored()), &message(json!({"departments": []})));
        assert_eq!(d.departments_removed, [1, 2]);
        assert_eq!(d.outcome, HookupOutcome::Updated);
    }

    #[test]
    fn changed_client_fields_are_named_never_their_values() {
        let d = decide_hookup(
            Some(&stored()),
            &message(json!({
                "client_secret": "s2",
                "token_url": "https://provetcloud.com/7/oauth2/token2/",
                "redirect_uris": "https://provetcloud.com/cb",
            })),
        );
        assert_eq!(d.outcome, HookupOutcome::Updated);
        assert!(d.client_changed);
        assert_eq!(d.supersedes_client, None);
        assert_eq!(
            d.changed_fields,
            ["client_secret", "redirect_uris", "token_url"]
        );
        let d = decide_hookup(
            Some(&stored()),
            &message(json!({
                "client_secret": null,
                "algorithm": "RS256",
                "authorization_grant_type": "authorization-code",
                "client_type": "public",
                "redirect_uris": "https://provetcloud.com/cb",
                "authorize_url": "https://provetcloud.com/7/oauth2/authorize2/",
                "openid_autodiscovery_url": "https://provetcloud.com/.well-known/openid-configuration",
            })),
        );
        assert_eq!(
            d.changed_fields,
            [
                "client_secret",
                "algorithm",
                "authorization_grant_type",
                "client_type",
                "redirect_uris",
                "authorize_url",
                "openid_autodiscovery_url"
            ]
        );
        assert!(!format!("{d:?}").contains("s1"));
    }

    #[test]
    fn a_new_client_id_supersedes_the_stored_client() {
        let d = decide_hookup(Some(&stored()), &message(json!({"client_id": "b"})));
        assert_eq!(d.outcome, HookupOutcome::Updated);
        assert!(d.client_changed);
        assert_eq!(d.changed_fields, ["client_id"]);
        assert_eq!(d.supersedes_client.as_deref(), Some("a"));
    }

    #[test]
    fn a_removed_tenant_installing_again_is_registered() {
        // Removal wipes the secret and the departments.
        let mut removed = stored();
        removed.status = TenantStatus::Removed;
        removed.departments.clear();
        if let Some(c) = removed.client.as_mut() {
            c.client_secret = None;
        }
        let d = decide_hookup(Some(&removed), &message(json!({})));
        assert_eq!(d.outcome, HookupOutcome::Registered);
        assert!(!d.new_tenant && d.client_changed);
        assert_eq!(d.changed_fields, ["client_secret"]);
        // Even a message that matches what is stored registers it again.
        removed.client = stored().client;
        let d = decide_hookup(Some(&removed), &message(json!({})));
        assert_eq!(d.outcome, HookupOutcome::Registered);
        assert!(!d.client_changed);
    }

    #[test]
    fn a_tenant_without_a_current_client_gets_one() {
        let mut t = stored();
        t.client = None;
        let d = decide_hookup(Some(&t), &message(json!({})));
        assert_eq!(d.outcome, HookupOutcome::Updated);
        assert_eq!(d.changed_fields, CLIENT_FIELDS);
        assert_eq!(d.supersedes_client, None);
    }
}
