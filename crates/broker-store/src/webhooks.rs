//! Webhooks and their deliveries. The dispatcher turns new events into delivery rows (one
//! per event and matching endpoint) by a cursor in the event feed kept in the database; the
//! sender claims due deliveries for longer than an attempt may take (PostgreSQL: `FOR
//! UPDATE SKIP LOCKED`, so that replicas never share one), sends outside any transaction,
//! and records the outcome only while it still holds the claim (a compare-and-set on the
//! claim's token).
//!
//! Dispatching, claims and outcomes are derived state (`Db::begin_derived_write`: on SQLite
//! without an fsync of their own): every delivery comes from the durable events outbox, so
//! what a power cut may lose is redone from the cursor, and a delivery is at worst sent again
//! (at least once). Endpoints themselves are written durably.

use broker_domain::{DeliveryState, EventSelection, WebhookState};
use chrono::{DateTime, Utc};
use rand::RngCore;
use sea_orm::sea_query::{LockBehavior, LockType, OnConflict};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, ConnectionTrait, DbBackend, EntityTrait, NotSet,
    QueryFilter, QueryOrder, QuerySelect, Set, Statement,
};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use crate::entity::{webhook, webhook_delivery};
use crate::events::{EventCursor, EventQuery, read};
use crate::records::RekeyReport;
use std::sync::Arc;

use crate::crypto::aad;
use crate::db::Db;
use crate::{Keyring, Result};

/// Webhooks and their deliveries (`store.webhooks()`).
#[derive(Clone)]
pub struct Webhooks {
    pub(crate) db: Db,
    pub(crate) keyring: Arc<Keyring>,
}

/// A webhook as listed (never its secret).
#[derive(Clone, Debug, PartialEq)]
pub struct WebhookRecord {
    pub id: i64,
    pub url: String,
    pub events: Vec<String>,
    pub description: String,
    pub state: WebhookState,
    pub created_at: DateTime<Utc>,
    pub disabled_at: Option<DateTime<Utc>>,
}

/// An active webhook with its signing secret, for the sender.
#[derive(Clone, Debug)]
pub struct ActiveWebhook {
    pub id: i64,
    pub url: String,
    pub secret: SecretString,
}

/// One delivery, as the deliveries list shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct WebhookDeliveryRecord {
    pub id: i64,
    pub webhook_id: i64,
    pub event_id: i64,
    pub event_type: String,
    pub state: DeliveryState,
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    /// When the next attempt is due (pending deliveries only).
    pub next_attempt_at: Option<DateTime<Utc>>,
}

impl WebhookDeliveryRecord {
    /// The event's public id, as in its envelope.
    pub fn event_public_id(&self) -> String {
        format!("evt_{:016x}", self.event_id)
    }
}

/// A delivery claimed for one attempt.
#[derive(Clone, Debug)]
pub struct ClaimedDelivery {
    pub id: i64,
    pub webhook_id: i64,
    pub event_id: i64,
    pub payload: String,
    /// Attempts made before this one.
    pub attempts: i32,
    /// Proves the claim when the outcome is written.
    pub claim_token: String,
}

impl ClaimedDelivery {
    pub fn event_public_id(&self) -> String {
        format!("evt_{:016x}", self.event_id)
    }
}

/// What became of one attempt.
#[derive(Clone, Debug, PartialEq)]
pub struct AttemptOutcome {
    pub at: DateTime<Utc>,
    /// The HTTP status, when an answer came.
    pub status: Option<u16>,
    /// A short reason, when it was not a 2xx.
    pub error: Option<String>,
    pub next: AttemptNext,
}

/// What follows an attempt.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum AttemptNext {
    Delivered,
    RetryAt(DateTime<Utc>),
    Failed,
    /// `410 Gone`: this delivery fails and the webhook is disabled.
    Gone,
}

/// What one dispatch round did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DispatchReport {
    pub events: usize,
    pub deliveries: u64,
}

/// Pending deliveries, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PendingDeliveries {
    pub count: i64,
    pub oldest: Option<DateTime<Utc>>,
}

fn record_of(w: webhook::Model) -> WebhookRecord {
    WebhookRecord {
        id: w.id,
        events: serde_json::from_str(&w.events).unwrap_or_default(),
        url: w.url,
        description: w.description,
        state: w.state,
        created_at: w.created_at,
        disabled_at: w.disabled_at,
    }
}

fn delivery_of(d: webhook_delivery::Model) -> WebhookDeliveryRecord {
    let state = d.state;
    WebhookDeliveryRecord {
        id: d.id,
        webhook_id: d.webhook_id,
        event_id: d.event_id,
        event_type: d.event_type,
        state,
        attempts: d.attempts,
        created_at: d.created_at,
        last_attempt_at: d.last_attempt_at,
        last_status: d.last_status,
        last_error: d.last_error,
        next_attempt_at: (state == DeliveryState::Pending).then_some(d.next_attempt_at),
    }
}

fn claim_token() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

impl Webhooks {
    /// Stores a webhook with its secret sealed to the new row.
    pub async fn create_webhook(
        &self,
        url: &str,
        events: &EventSelection,
        description: &str,
        secret: &SecretString,
        now: DateTime<Utc>,
    ) -> Result<WebhookRecord> {
        let w = self.db.begin_write().await?;
        let row = webhook::ActiveModel {
            id: NotSet,
            url: Set(url.to_owned()),
            events: Set(Value::from(events.names()).to_string()),
            description: Set(description.to_owned()),
            secret: Set(String::new()),
            state: Set(WebhookState::Active),
            created_at: Set(now),
            disabled_at: Set(None),
        }
        .insert(&w.tx)
        .await?;
        let sealed = self
            .keyring
            .seal(&aad::webhook_secret(row.id), secret.expose_secret());
        let row = webhook::ActiveModel {
            id: Set(row.id),
            secret: Set(sealed),
            ..Default::default()
        }
        .update(&w.tx)
        .await?;
        w.tx.commit().await?;
        Ok(record_of(row))
    }

    pub async fn webhooks(&self) -> Result<Vec<WebhookRecord>> {
        Ok(webhook::Entity::find()
            .order_by_asc(webhook::Column::Id)
            .all(&self.db.main)
            .await?
            .into_iter()
            .map(record_of)
            .collect())
    }

    pub async fn webhook(&self, id: i64) -> Result<Option<WebhookRecord>> {
        Ok(webhook::Entity::find_by_id(id)
            .one(&self.db.main)
            .await?
            .map(record_of))
    }

    /// The active webhooks with their secrets opened.
    pub async fn active_webhooks(&self) -> Result<Vec<ActiveWebhook>> {
        webhook::Entity::find()
            .filter(webhook::Column::State.eq(WebhookState::Active))
            .order_by_asc(webhook::Column::Id)
            .all(&self.db.main)
            .await?
            .into_iter()
            .map(|w| {
                Ok(ActiveWebhook {
                    secret: self.keyring.open(&aad::webhook_secret(w.id), &w.secret)?,
                    id: w.id,
                    url: w.url,
                })
            })
            .collect()
    }

    /// One webhook with its secret, whatever its state (manual retries).
    pub async fn webhook_for_attempt(&self, id: i64) -> Result<Option<ActiveWebhook>> {
        let Some(w) = webhook::Entity::find_by_id(id).one(&self.db.main).await? else {
            return Ok(None);
        };
        Ok(Some(ActiveWebhook {
            secret: self.keyring.open(&aad::webhook_secret(w.id), &w.secret)?,
            id: w.id,
            url: w.url,
        }))
    }

    /// Deletes a webhook and its deliveries; `false` when there was none.
    pub async fn delete_webhook(&self, id: i64) -> Result<bool> {
        let w = self.db.begin_write().await?;
        webhook_delivery::Entity::delete_many()
            .filter(webhook_delivery::Column::WebhookId.eq(id))
            .exec(&w.tx)
            .await?;
        let gone = webhook::Entity::delete_by_id(id)
            .exec(&w.tx)
            .await?
            .rows_affected;
        w.tx.commit().await?;
        Ok(gone > 0)
    }

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
        let Some(row) =
            w.tx.query_one_raw(Statement::from_string(
                backend,
                format!("SELECT xid, event_id FROM webhook_cursor WHERE id = 1{lock}"),
            ))
            .await?
        else {
            // Another replica holds it (or the migration did not run).
            return Ok(DispatchReport::default());
        };
        let after = EventCursor {
            xid: row.try_get_by_index(0)?,
            id: row.try_get_by_index(1)?,
        };
        let events = read(
            &w.tx,
            &EventQuery {
                after,
                limit,
                types: None,
                tenants: None,
            },
        )
        .await?;
        let Some(last) = events.last().map(|e| e.cursor) else {
            return Ok(DispatchReport::default());
        };
        let hooks: Vec<(i64, EventSelection, DateTime<Utc>)> = webhook::Entity::find()
            .filter(webhook::Column::State.eq(WebhookState::Active))
            .all(&w.tx)
            .await?
            .into_iter()
            .filter_map(|h| {
                let names: Vec<String> = serde_json::from_str(&h.events).ok()?;
                Some((h.id, EventSelection::parse(&names).ok()?, h.created_at))
            })
            .collect();
        let mut rows = Vec::new();
        for e in &events {
            let payload = json!({
                "id": e.public_id(),
                "type": e.event_type,
                "occurred_at": e.occurred_at,
                "provet_id": e.provet_id,
                "sequence": e.sequence,
                "data": e.data,
            })
            .to_string();
            for (hook, selection, created_at) in &hooks {
                if e.occurred_at >= *created_at && selection.matches(&e.event_type) {
                    rows.push(webhook_delivery::ActiveModel {
                        id: NotSet,
                        webhook_id: Set(*hook),
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
        let mut deliveries = 0;
        for chunk in rows.chunks(200) {
            deliveries += webhook_delivery::Entity::insert_many(chunk.to_vec())
                .on_conflict(
                    OnConflict::columns([
                        webhook_delivery::Column::WebhookId,
                        webhook_delivery::Column::EventId,
                    ])
                    .do_nothing()
                    .to_owned(),
                )
                .exec_without_returning(&w.tx)
                .await?;
        }
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
        let backend = self.db.backend();
        let Some(row) = self
            .db
            .main
            .query_one_raw(Statement::from_string(
                backend,
                "SELECT xid, event_id FROM webhook_cursor WHERE id = 1".to_owned(),
            ))
            .await?
        else {
            return Ok(false);
        };
        let after = EventCursor {
            xid: row.try_get_by_index(0)?,
            id: row.try_get_by_index(1)?,
        };
        let next = read(
            &self.db.main,
            &EventQuery {
                after,
                limit: 1,
                types: None,
                tenants: None,
            },
        )
        .await?;
        Ok(!next.is_empty())
    }

    /// Claims up to `limit` of the webhook's due deliveries until `claimed_until`.
    pub async fn claim_deliveries(
        &self,
        webhook_id: i64,
        limit: u64,
        now: DateTime<Utc>,
        claimed_until: DateTime<Utc>,
    ) -> Result<Vec<ClaimedDelivery>> {
        let due = Condition::all()
            .add(webhook_delivery::Column::WebhookId.eq(webhook_id))
            .add(webhook_delivery::Column::State.eq(DeliveryState::Pending))
            .add(webhook_delivery::Column::NextAttemptAt.lte(now));
        self.claim(due, limit, now, claimed_until).await
    }

    /// Claims one delivery for an attempt now, whatever its state, unless an attempt is in
    /// flight. `None` when there is no such delivery or it is claimed.
    pub async fn claim_delivery_now(
        &self,
        webhook_id: i64,
        event_id: i64,
        now: DateTime<Utc>,
        claimed_until: DateTime<Utc>,
    ) -> Result<Option<ClaimedDelivery>> {
        let one = Condition::all()
            .add(webhook_delivery::Column::WebhookId.eq(webhook_id))
            .add(webhook_delivery::Column::EventId.eq(event_id));
        Ok(self
            .claim(one, 1, now, claimed_until)
            .await?
            .into_iter()
            .next())
    }

    async fn claim(
        &self,
        which: Condition,
        limit: u64,
        now: DateTime<Utc>,
        claimed_until: DateTime<Utc>,
    ) -> Result<Vec<ClaimedDelivery>> {
        let w = self.db.begin_derived_write().await?;
        let mut q = webhook_delivery::Entity::find()
            .filter(which)
            .filter(
                Condition::any()
                    .add(webhook_delivery::Column::ClaimedUntil.is_null())
                    .add(webhook_delivery::Column::ClaimedUntil.lt(now)),
            )
            .order_by_asc(webhook_delivery::Column::NextAttemptAt)
            .order_by_asc(webhook_delivery::Column::Id)
            .limit(limit);
        if self.db.is_postgres() {
            q = q.lock_with_behavior(LockType::Update, LockBehavior::SkipLocked);
        }
        let rows = q.all(&w.tx).await?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let token = claim_token();
        webhook_delivery::Entity::update_many()
            .col_expr(
                webhook_delivery::Column::ClaimedUntil,
                Some(claimed_until).into(),
            )
            .col_expr(
                webhook_delivery::Column::ClaimToken,
                Some(token.clone()).into(),
            )
            .filter(webhook_delivery::Column::Id.is_in(rows.iter().map(|r| r.id)))
            .exec(&w.tx)
            .await?;
        w.tx.commit().await?;
        Ok(rows
            .into_iter()
            .map(|r| ClaimedDelivery {
                id: r.id,
                webhook_id: r.webhook_id,
                event_id: r.event_id,
                payload: r.payload,
                attempts: r.attempts,
                claim_token: token.clone(),
            })
            .collect())
    }

    /// Records an attempt's outcome while the claim still holds; `false` when it did not
    /// (the claim expired and another sender took the delivery). A `Gone` also disables the
    /// webhook.
    pub async fn record_attempt(
        &self,
        claim: &ClaimedDelivery,
        outcome: &AttemptOutcome,
    ) -> Result<bool> {
        let (state, next_at) = match outcome.next {
            AttemptNext::Delivered => (DeliveryState::Delivered, outcome.at),
            AttemptNext::RetryAt(at) => (DeliveryState::Pending, at),
            AttemptNext::Failed | AttemptNext::Gone => (DeliveryState::Failed, outcome.at),
        };
        let error = outcome
            .error
            .as_deref()
            .map(|e| e.chars().take(200).collect::<String>());
        let w = self.db.begin_derived_write().await?;
        let updated = webhook_delivery::Entity::update_many()
            .col_expr(
                webhook_delivery::Column::State,
                state.as_str().to_owned().into(),
            )
            .col_expr(
                webhook_delivery::Column::Attempts,
                (claim.attempts + 1).into(),
            )
            .col_expr(webhook_delivery::Column::NextAttemptAt, next_at.into())
            .col_expr(
                webhook_delivery::Column::LastAttemptAt,
                Some(outcome.at).into(),
            )
            .col_expr(
                webhook_delivery::Column::LastStatus,
                outcome.status.map(i32::from).into(),
            )
            .col_expr(webhook_delivery::Column::LastError, error.into())
            .col_expr(
                webhook_delivery::Column::ClaimedUntil,
                Option::<DateTime<Utc>>::None.into(),
            )
            .col_expr(
                webhook_delivery::Column::ClaimToken,
                Option::<String>::None.into(),
            )
            .filter(webhook_delivery::Column::Id.eq(claim.id))
            .filter(webhook_delivery::Column::ClaimToken.eq(claim.claim_token.as_str()))
            .exec(&w.tx)
            .await?
            .rows_affected
            == 1;
        if updated && outcome.next == AttemptNext::Gone {
            webhook::Entity::update_many()
                .col_expr(webhook::Column::State, WebhookState::Disabled.into())
                .col_expr(webhook::Column::DisabledAt, Some(outcome.at).into())
                .filter(webhook::Column::Id.eq(claim.webhook_id))
                .exec(&w.tx)
                .await?;
        }
        w.tx.commit().await?;
        Ok(updated)
    }

    /// A webhook's deliveries, newest first, before the delivery id `before`.
    pub async fn webhook_deliveries(
        &self,
        webhook_id: i64,
        before: Option<i64>,
        limit: u64,
    ) -> Result<Vec<WebhookDeliveryRecord>> {
        let mut q = webhook_delivery::Entity::find()
            .filter(webhook_delivery::Column::WebhookId.eq(webhook_id))
            .order_by_desc(webhook_delivery::Column::Id)
            .limit(limit);
        if let Some(before) = before {
            q = q.filter(webhook_delivery::Column::Id.lt(before));
        }
        Ok(q.all(&self.db.main)
            .await?
            .into_iter()
            .map(delivery_of)
            .collect())
    }

    /// One delivery by webhook and event.
    pub async fn webhook_delivery(
        &self,
        webhook_id: i64,
        event_id: i64,
    ) -> Result<Option<WebhookDeliveryRecord>> {
        Ok(webhook_delivery::Entity::find()
            .filter(webhook_delivery::Column::WebhookId.eq(webhook_id))
            .filter(webhook_delivery::Column::EventId.eq(event_id))
            .one(&self.db.main)
            .await?
            .map(delivery_of))
    }

    /// How many deliveries are pending and since when the oldest.
    pub async fn pending_deliveries(&self) -> Result<PendingDeliveries> {
        let row: Option<(i64, Option<DateTime<Utc>>)> = webhook_delivery::Entity::find()
            .select_only()
            .column_as(webhook_delivery::Column::Id.count(), "count")
            .column_as(webhook_delivery::Column::CreatedAt.min(), "oldest")
            .filter(webhook_delivery::Column::State.eq(DeliveryState::Pending))
            .into_tuple()
            .one(&self.db.main)
            .await?;
        Ok(
            row.map_or_else(PendingDeliveries::default, |(count, oldest)| {
                PendingDeliveries { count, oldest }
            }),
        )
    }

    /// Re-seals webhook secrets not sealed with the current key (see `rekey`).
    pub(crate) async fn rekey(&self, report: &mut RekeyReport) -> Result<()> {
        for h in webhook::Entity::find().all(&self.db.main).await? {
            let aad = aad::webhook_secret(h.id);
            if self.keyring.is_current(&h.secret) {
                report.already_current += 1;
                continue;
            }
            let new = self
                .keyring
                .seal(&aad, self.keyring.open(&aad, &h.secret)?.expose_secret());
            let _writer = self.db.sqlite_write_lock().await;
            report.resealed += webhook::Entity::update_many()
                .col_expr(webhook::Column::Secret, new.into())
                .filter(webhook::Column::Id.eq(h.id))
                .filter(webhook::Column::Secret.eq(h.secret))
                .exec(&self.db.main)
                .await?
                .rows_affected;
        }
        Ok(())
    }
}
