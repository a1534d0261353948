//! Webhooks and their deliveries. The dispatcher turns new events into delivery rows (one
//! per event and matching endpoint) by a cursor in the event feed kept in the database
//! (`webhooks/dispatch.rs`); the sender claims due deliveries for longer than an attempt may
//! take (PostgreSQL: `FOR UPDATE SKIP LOCKED`, so that replicas never share one), sends
//! outside any transaction, and records the outcome only while it still holds the claim (a
//! compare-and-set on the claim's token; `webhooks/deliveries.rs`). Here the endpoints, their
//! secrets sealed.
//!
//! Dispatching, claims and outcomes are derived state (`Db::begin_derived_write`: on SQLite
//! without an fsync of their own): every delivery comes from the durable events outbox, so
//! what a power cut may lose is redone from the cursor, and a delivery is at worst sent again
//! (at least once). Endpoints themselves are written durably.

use std::sync::Arc;

use broker_domain::{EventSelection, WebhookState};
use chrono::{DateTime, Utc};
use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, NotSet, QueryFilter, QueryOrder, Set};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use crate::crypto::aad;
use crate::db::Db;
use crate::entity::{webhook, webhook_delivery};
use crate::records::RekeyReport;
use crate::{Keyring, Result};

mod deliveries;
mod dispatch;

pub use deliveries::{
    AttemptNext, AttemptOutcome, ClaimedDelivery, PendingDeliveries, WebhookDeliveryRecord,
};
pub use dispatch::DispatchReport;

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

    /// Every webhook, oldest first.
    pub async fn webhooks(&self) -> Result<Vec<WebhookRecord>> {
        Ok(webhook::Entity::find()
            .order_by_asc(webhook::Column::Id)
            .all(&self.db.main)
            .await?
            .into_iter()
            .map(record_of)
            .collect())
    }

    /// One webhook by id.
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
            .map(|w| self.opened(w))
            .collect()
    }

    /// One webhook with its secret, whatever its state (manual retries).
    pub async fn webhook_for_attempt(&self, id: i64) -> Result<Option<ActiveWebhook>> {
        webhook::Entity::find_by_id(id)
            .one(&self.db.main)
            .await?
            .map(|w| self.opened(w))
            .transpose()
    }

    /// The webhook with its secret opened.
    fn opened(&self, w: webhook::Model) -> Result<ActiveWebhook> {
        Ok(ActiveWebhook {
            secret: self.keyring.open(&aad::webhook_secret(w.id), &w.secret)?,
            id: w.id,
            url: w.url,
        })
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
