//! The events a stored hookup message yields, written in its transaction: what
//! `broker_domain::decide_hookup` decided, told to the integration's services.

use broker_domain::{EventType, HookupDecision, HookupMessage, HookupOutcome, api_base_url};
use chrono::{DateTime, Utc};
use sea_orm::ConnectionTrait;
use serde_json::json;

use crate::Result;
use crate::events::{NewEvent, append};

/// The events of one decision (none for an unchanged message).
pub(crate) fn events_of(
    msg: &HookupMessage,
    decision: &HookupDecision,
    now: DateTime<Utc>,
) -> Vec<NewEvent> {
    let provet_id = msg.provet_id.get();
    let event = |event_type, data| NewEvent::new(provet_id, event_type, data, now);
    match decision.outcome {
        HookupOutcome::Unchanged => Vec::new(),
        HookupOutcome::Registered => vec![event(
            EventType::TenantRegistered,
            json!({
                "grant_type": msg.grant_type.as_str(),
                "client_type": msg.client_type.as_str(),
                "departments": decision.departments,
                "api_base_url": api_base_url(msg.token_url.as_str(), provet_id),
            }),
        )],
        HookupOutcome::Updated => {
            let mut events = Vec::new();
            if !decision.changed_fields.is_empty() {
                events.push(event(
                    EventType::TenantUpdated,
                    json!({ "changed": decision.changed_fields }),
                ));
            }
            if decision.departments_changed() {
                events.push(event(
                    EventType::TenantDepartmentsChanged,
                    json!({
                        "departments": decision.departments,
                        "added": decision.departments_added,
                        "removed": decision.departments_removed,
                    }),
                ));
            }
            events
        }
    }
}

/// Appends the decision's events; returns their types (for the caller to publish after its
/// commit).
pub(crate) async fn record(
    db: &impl ConnectionTrait,
    msg: &HookupMessage,
    decision: &HookupDecision,
    now: DateTime<Utc>,
) -> Result<Vec<EventType>> {
    let events = events_of(msg, decision, now);
    for event in &events {
        append(db, event).await?;
    }
    Ok(events.iter().map(|e| e.event_type).collect())
}
