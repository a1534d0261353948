//! Deliveries: claimed for one attempt (PostgreSQL: `FOR UPDATE SKIP LOCKED`, so that
//! replicas never share one), their outcome recorded only while the claim holds (a
//! compare-and-set on the claim's token), and listed for operators.

use broker_domain::{DeliveryState, WebhookState};
use chrono::{DateTime, Utc};
use rand::RngCore;
use sea_orm::sea_query::{LockBehavior, LockType};
use sea_orm::{ColumnTrait, Condition, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use super::Webhooks;
use crate::Result;
use crate::entity::{webhook, webhook_delivery};

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

/// Pending deliveries, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PendingDeliveries {
    pub count: i64,
    pub oldest: Option<DateTime<Utc>>,
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
}
