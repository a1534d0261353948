//! The events a stored hookup message yields, written in its transaction.

use std::collections::BTreeSet;

use broker_domain::{EventType, HookupMessage, api_base_url};
use chrono::{DateTime, Utc};
use sea_orm::ConnectionTrait;
use secrecy::ExposeSecret;
use serde_json::json;

use crate::entity::client;
use crate::events::{NewEvent, append};
use crate::records::HookupOutcome;
use crate::{Result, Store};

/// What one message changed, as the events describe it.
pub(crate) struct HookupChange<'a> {
    pub outcome: HookupOutcome,
    /// The client's field names that changed (never their values).
    pub changed: &'a [&'static str],
    pub departments_before: &'a BTreeSet<i64>,
    pub departments_after: &'a BTreeSet<i64>,
}

/// Appends the message's events; returns their types (for the caller to publish after its
/// commit).
pub(crate) async fn record(
    db: &impl ConnectionTrait,
    msg: &HookupMessage,
    change: &HookupChange<'_>,
    now: DateTime<Utc>,
) -> Result<Vec<EventType>> {
    let provet_id = msg.provet_id.get();
    let mut events = Vec::new();
    match change.outcome {
        HookupOutcome::Unchanged => {}
        HookupOutcome::Registered => events.push(NewEvent::new(
            provet_id,
            EventType::TenantRegistered,
            json!({
                "grant_type": msg.grant_type.as_str(),
                "client_type": msg.client_type.as_str(),
                "departments": change.departments_after,
                "api_base_url": api_base_url(msg.token_url.as_str(), provet_id),
            }),
            now,
        )),
        HookupOutcome::Updated => {
            if !change.changed.is_empty() {
                events.push(NewEvent::new(
                    provet_id,
                    EventType::TenantUpdated,
                    json!({ "changed": change.changed }),
                    now,
                ));
            }
            if change.departments_before != change.departments_after {
                events.push(NewEvent::new(
                    provet_id,
                    EventType::TenantDepartmentsChanged,
                    json!({
                        "departments": change.departments_after,
                        "added": change.departments_after.difference(change.departments_before).collect::<Vec<_>>(),
                        "removed": change.departments_before.difference(change.departments_after).collect::<Vec<_>>(),
                    }),
                    now,
                ));
            }
        }
    }
    let mut types = Vec::with_capacity(events.len());
    for event in &events {
        append(db, event).await?;
        types.push(event.event_type);
    }
    Ok(types)
}

impl Store {
    /// The names of the client fields the message changes, compared with the tenant's
    /// current client (every field when it has none).
    pub(crate) fn changed_client_fields(
        &self,
        current: Option<&client::Model>,
        msg: &HookupMessage,
    ) -> Result<Vec<&'static str>> {
        let Some(c) = current else {
            return Ok(vec![
                "client_id",
                "client_secret",
                "client_type",
                "grant_type",
                "algorithm",
                "token_url",
                "authorize_url",
                "openid_autodiscovery_url",
                "redirect_uris",
            ]);
        };
        let stored_secret = match &c.client_secret {
            Some(sealed) => Some(self.keyring.open(
                &crate::repo::client_secret_aad(c.provet_id, &c.client_id),
                sealed,
            )?),
            None => None,
        };
        let secret_same = match (&stored_secret, &msg.client_secret) {
            (None, None) => true,
            (Some(a), Some(b)) => a.expose_secret() == b.expose_secret(),
            _ => false,
        };
        let redirect_uris: Vec<&str> = msg.redirect_uris.iter().map(|u| u.as_str()).collect();
        let stored_uris: Vec<String> = serde_json::from_str(&c.redirect_uris).unwrap_or_default();
        let fields = [
            ("client_id", c.client_id == msg.client_id),
            ("client_secret", secret_same),
            ("client_type", c.client_type == msg.client_type.as_str()),
            ("grant_type", c.grant_type == msg.grant_type.as_str()),
            (
                "algorithm",
                c.algorithm.as_deref() == msg.algorithm.map(|a| a.as_str()),
            ),
            ("token_url", c.token_url == msg.token_url.as_str()),
            (
                "authorize_url",
                c.authorize_url == msg.authorize_url.as_str(),
            ),
            (
                "openid_autodiscovery_url",
                c.openid_autodiscovery_url.as_deref()
                    == msg.openid_autodiscovery_url.as_ref().map(|u| u.as_str()),
            ),
            ("redirect_uris", stored_uris == redirect_uris),
        ];
        Ok(fields
            .into_iter()
            .filter(|(_, same)| !same)
            .map(|(name, _)| name)
            .collect())
    }
}
