//! Events of state transitions (credentials, grants, discovery): written only when a state
//! changes, in the transaction that saves the new state.

use std::collections::BTreeMap;

use broker_domain::{CredentialsState, DiscoveryState, EventType, GrantState};
use chrono::{DateTime, Utc};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter};
use serde_json::json;

use crate::Result;
use crate::entity::client;
use crate::events::{NewEvent, append, insert_numbered, next_sequences};

/// The credential event that saving `new_state` for the client would mean, read before the
/// write: `None` when the state stays as it is (or is not one that has an event).
pub(crate) async fn credentials_transition(
    db: &impl ConnectionTrait,
    provet_id: i64,
    client_id: &str,
    new_state: CredentialsState,
) -> Result<Option<EventType>> {
    let event = match new_state {
        CredentialsState::Ok => EventType::CredentialsOk,
        CredentialsState::Rejected => EventType::CredentialsRejected,
        CredentialsState::Unchecked => return Ok(None),
    };
    let current = client::Entity::find()
        .filter(client::Column::ProvetId.eq(provet_id))
        .filter(client::Column::ClientId.eq(client_id))
        .filter(client::Column::IsCurrent.eq(true))
        .one(db)
        .await?;
    Ok(current
        .filter(|c| c.credentials_state != new_state)
        .map(|_| event))
}

/// Of the clients whose credentials a batch of saves found accepted (tenant -> client id),
/// the tenants whose current client was not `ok` before: their state turns, with an event.
pub(crate) async fn credentials_turning_ok(
    db: &impl ConnectionTrait,
    checked: &BTreeMap<i64, (&str, DateTime<Utc>)>,
) -> Result<Vec<i64>> {
    let current = client::Entity::find()
        .filter(client::Column::ProvetId.is_in(checked.keys().copied()))
        .filter(client::Column::IsCurrent.eq(true))
        .all(db)
        .await?;
    Ok(current
        .into_iter()
        .filter(|c| {
            c.credentials_state != CredentialsState::Ok
                && checked
                    .get(&c.provet_id)
                    .is_some_and(|(client_id, _)| *client_id == c.client_id)
        })
        .map(|c| c.provet_id)
        .collect())
}

/// The `credentials.ok` events of the tenants `credentials_turning_ok` found, written
/// together.
pub(crate) async fn credentials_ok(
    db: &impl ConnectionTrait,
    turned: &[i64],
    checked: &BTreeMap<i64, (&str, DateTime<Utc>)>,
) -> Result<Vec<EventType>> {
    let sequences = next_sequences(db, turned).await?;
    let events: Vec<NewEvent> = turned
        .iter()
        .filter_map(|id| {
            let (_, at) = checked.get(id)?;
            Some(NewEvent::new(
                *id,
                EventType::CredentialsOk,
                json!({ "upstream_error": null }),
                *at,
            ))
        })
        .collect();
    let numbered: Vec<(&NewEvent, i64)> = events
        .iter()
        .filter_map(|e| Some((e, *sequences.get(&e.provet_id)?)))
        .collect();
    insert_numbered(db, &numbered).await?;
    Ok(numbered.iter().map(|(e, _)| e.event_type).collect())
}

/// Writes the credential event of a transition. `error` is the broker's reason ("the
/// provider answered invalid_client"); the event carries the provider's code alone.
pub(crate) async fn credentials_changed(
    db: &impl ConnectionTrait,
    provet_id: i64,
    transition: Option<EventType>,
    error: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Vec<EventType>> {
    let Some(event_type) = transition else {
        return Ok(Vec::new());
    };
    let upstream_error = error.map(|e| e.trim_start_matches("the provider answered "));
    append(
        db,
        &NewEvent::new(
            provet_id,
            event_type,
            json!({ "upstream_error": upstream_error }),
            now,
        ),
    )
    .await?;
    Ok(vec![event_type])
}

/// The event of a grant moving from `before` to `after`, if that transition has one.
pub(crate) fn grant_event(before: GrantState, after: GrantState) -> Option<EventType> {
    if before == after {
        return None;
    }
    match after {
        GrantState::ReauthorizationRequired => Some(EventType::GrantReauthorizationRequired),
        GrantState::Revoked => Some(EventType::GrantRevoked),
        GrantState::Active => None,
    }
}

/// The event of discovery moving from `before` to `after`, if that transition has one.
pub(crate) fn discovery_event(before: DiscoveryState, after: DiscoveryState) -> Option<EventType> {
    use DiscoveryState::{Failed, Ok};
    match (before, after) {
        (Failed, Ok) => Some(EventType::DiscoveryRecovered),
        (b, Failed) if b != Failed => Some(EventType::DiscoveryFailed),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transitions_have_events() {
        assert_eq!(
            grant_event(GrantState::Active, GrantState::ReauthorizationRequired),
            Some(EventType::GrantReauthorizationRequired)
        );
        assert_eq!(
            grant_event(GrantState::Active, GrantState::Revoked),
            Some(EventType::GrantRevoked)
        );
        assert_eq!(grant_event(GrantState::Revoked, GrantState::Revoked), None);
        assert_eq!(grant_event(GrantState::Revoked, GrantState::Active), None);
        assert_eq!(
            discovery_event(DiscoveryState::Pending, DiscoveryState::Failed),
            Some(EventType::DiscoveryFailed)
        );
        assert_eq!(
            discovery_event(DiscoveryState::Ok, DiscoveryState::Failed),
            Some(EventType::DiscoveryFailed)
        );
        assert_eq!(
            discovery_event(DiscoveryState::Failed, DiscoveryState::Failed),
            None
        );
        assert_eq!(
            discovery_event(DiscoveryState::Failed, DiscoveryState::Ok),
            Some(EventType::DiscoveryRecovered)
        );
        assert_eq!(
            discovery_event(DiscoveryState::Pending, DiscoveryState::Ok),
            None
        );
        assert_eq!(
            discovery_event(DiscoveryState::Ok, DiscoveryState::Ok),
            None
        );
    }
}
