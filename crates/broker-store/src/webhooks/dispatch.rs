//! The dispatcher's step: new events become delivery rows (one per event and matching
//! endpoint), read by a cursor in the event feed that is kept in the database.

use broker_domain::{DeliveryState, EventSelection, WebhookState};
use chrono::{DateTime, Utc};
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, NotSet, QueryFilter, Set, Statement,
};
use serde_json::json;

use super::Webhooks;
use crate::Result;
use crate::entity::{webhook, webhook_delivery};
use crate::events::{EventCursor, EventQuery, EventRecord, read};

/// What one dispatch round did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DispatchReport {
    pub events: usize,
    pub deliveries: u64,
}

/// An active webhook as the dispatcher matches events against it.
struct Subscriber {
    id: i64,
    selection: EventSelection,
    created_at: DateTime<Utc>,
}

impl Webhooks {
    /// Creates the deliveries of up to `limit` events after the dispatch cursor, for every
    /// active webhook that selects them and existed when they occurred, and moves the cursor
    /// past them: all in one transaction that holds the cursor's row, so that replicas take
    /// turns (PostgreSQL: one that finds it held skips this round).
    pub async fn dispatch_events(&self, limit: u64, now: DateTime<Utc>) -> Result<DispatchReport> {
        // Look first without the writer's lock: with no webhook, or nothing new, a round
        // must cost the hookups nothing.
        if !self.dispatch_has_work().await? {
            return Ok(DispatchReport::default());
        }
        let w = self.db.begin_derived_write().await?;
        let backend = self.db.backend();
        let lock = if backend == DbBackend::Postgres {
            " FOR UPDATE SKIP LOCKED"
        } else {
            ""
        };
        let Some(after) = cursor(&w.tx, backend, lock).await? else {
            // Another replica holds it (or the migration did not run).
            return Ok(DispatchReport::default());
        };
        let events = read(&w.tx, &after_cursor(after, limit)).await?;
        let Some(last) = events.last().map(|e| e.cursor) else {
            return Ok(DispatchReport::default());
        };
        let subscribers = subscribers(&w.tx).await?;
        let deliveries =
            insert_deliveries(&w.tx, delivery_rows(&events, &subscribers, now)).await?;
        let placeholders = if backend == DbBackend::Postgres {
            "$1, event_id = $2"
        } else {
            "?, event_id = ?"
        };
        w.tx.execute_raw(Statement::from_sql_and_values(
            backend,
            format!("UPDATE webhook_cursor SET xid = {placeholders} WHERE id = 1"),
            [last.xid.into(), last.id.into()],
        ))
        .await?;
        w.tx.commit().await?;
        Ok(DispatchReport {
            events: events.len(),
            deliveries,
        })
    }

    /// Whether an active webhook exists and an event lies after the dispatch cursor.
    async fn dispatch_has_work(&self) -> Result<bool> {
        let active = webhook::Entity::find()
            .filter(webhook::Column::State.eq(WebhookState::Active.as_str()))
            .one(&self.db.main)
            .await?;
        if active.is_none() {
            return Ok(false);
        }
        let Some(after) = cursor(&self.db.main, self.db.backend(), "").await? else {
            return Ok(false);
        };
        let next = read(&self.db.main, &after_cursor(after, 1)).await?;
        Ok(!next.is_empty())
    }
}

/// The dispatch cursor (`lock` appended to its query); `None` when its row is missing or,
/// with `FOR UPDATE SKIP LOCKED`, held by another replica.
async fn cursor(
    db: &impl ConnectionTrait,
    backend: DbBackend,
    lock: &str,
) -> Result<Option<EventCursor>> {
    let Some(row) = db
        .query_one_raw(Statement::from_string(
            backend,
            format!("SELECT xid, event_id FROM webhook_cursor WHERE id = 1{lock}"),
        ))
        .await?
    else {
        return Ok(None);
    };
    Ok(Some(EventCursor {
        xid: row.try_get_by_index(0)?,
        id: row.try_get_by_index(1)?,
    }))
}

/// Up to `limit` events of every type and tenant after `after`.
fn after_cursor(after: EventCursor, limit: u64) -> EventQuery {
    EventQuery {
        after,
        limit,
        types: None,
        tenants: None,
    }
}

/// The active webhooks and what they select (one whose selection no longer parses selects
/// nothing).
async fn subscribers(db: &impl ConnectionTrait) -> Result<Vec<Subscriber>> {
    Ok(webhook::Entity::find()
        .filter(webhook::Column::State.eq(WebhookState::Active))
        .all(db)
        .await?
        .into_iter()
        .filter_map(|h| {
            let names: Vec<String> = serde_json::from_str(&h.events).ok()?;
            Some(Subscriber {
                id: h.id,
                selection: EventSelection::parse(&names).ok()?,
                created_at: h.created_at,
            })
        })
        .collect())
}

/// A pending delivery per event and subscriber that selects it and existed when it occurred.
fn delivery_rows(
    events: &[EventRecord],
    subscribers: &[Subscriber],
    now: DateTime<Utc>,
) -> Vec<webhook_delivery::ActiveModel> {
    let mut rows = Vec::new();
    for e in events {
        let payload = json!({
            "id": e.public_id(),
            "type": e.event_type,
            "occurred_at": e.occurred_at,
            "provet_id": e.provet_id,
            "sequence": e.sequence,
            "data": e.data,
        })
        .to_string();
        for hook in subscribers {
            if e.occurred_at >= hook.created_at && hook.selection.matches(&e.event_type) {
                rows.push(webhook_delivery::ActiveModel {
                    id: NotSet,
                    webhook_id: Set(hook.id),
                    event_id: Set(e.id),
                    event_type: Set(e.event_type.clone()),
                    payload: Set(payload.clone()),
                    state: Set(DeliveryState::Pending),
                    attempts: Set(0),
                    created_at: Set(now),
                    next_attempt_at: Set(now),
                    last_attempt_at: Set(None),
                    last_status: Set(None),
                    last_error: Set(None),
                    claimed_until: Set(None),
                    claim_token: Set(None),
                });
            }
        }
    }
    rows
}

/// Inserts the rows in chunks, skipping deliveries that exist; how many were new.
async fn insert_deliveries(
    db: &impl ConnectionTrait,
    rows: Vec<webhook_delivery::ActiveModel>,
) -> Result<u64> {
    let mut inserted = 0;
    for chunk in rows.chunks(200) {
        inserted += webhook_delivery::Entity::insert_many(chunk.to_vec())
            .on_conflict(
                OnConflict::columns([
                    webhook_delivery::Column::WebhookId,
                    webhook_delivery::Column::EventId,
                ])
                .do_nothing()
                .to_owned(),
            )
            .exec_without_returning(db)
            .await?;
    }
    Ok(inserted)
}
