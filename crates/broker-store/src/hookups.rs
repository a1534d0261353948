//! Storing hookups: load the tenant's state, let `broker_domain::decide_hookup` decide,
//! persist the decision, and record the delivery, all in one transaction per batch.

use std::collections::BTreeSet;

use broker_domain::{
    CredentialsState, DeliveryOutcome, DeliverySource, FieldError, GrantState, HookupDecision,
    HookupMessage, StoredClient, StoredTenant, TenantStatus, decide_hookup,
};
use chrono::{DateTime, Utc};
use sea_orm::sea_query::{OnConflict, Query};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseTransaction, EntityTrait,
    IntoActiveModel, NotSet, QueryFilter, QuerySelect, Set,
};
use secrecy::ExposeSecret;
use serde_json::Value;

use crate::crypto::aad;
use crate::discovery::sync_discovery;
use crate::entity::{client, department, grant, hookup_delivery, tenant, token};
use crate::{Result, StoreError, Tenants, hookup_events};

impl Tenants {
    /// Stores a validated hookup message: tenant, client (secret sealed), departments and the
    /// delivery record, in one transaction. Returns what was decided.
    pub async fn apply_hookup(
        &self,
        msg: &HookupMessage,
        source: DeliverySource,
        now: DateTime<Utc>,
    ) -> Result<HookupDecision> {
        let mut decisions = self.apply_hookups(&[msg], source, now).await?;
        decisions
            .pop()
            .ok_or_else(|| StoreError::Corrupt("no outcome for a stored hookup".into()))
    }

    /// Stores several hookup messages in ONE transaction, in the order given (a group
    /// commit: one fsync for all of them). Either all are stored or none. Callers that run
    /// several such batches at once order each batch by provet_id, so that row locks are
    /// always taken in the same order.
    pub async fn apply_hookups(
        &self,
        msgs: &[&HookupMessage],
        source: DeliverySource,
        now: DateTime<Utc>,
    ) -> Result<Vec<HookupDecision>> {
        let w = self.db.begin_write().await?;
        let mut decisions = Vec::with_capacity(msgs.len());
        let mut written = Vec::new();
        for msg in msgs {
            let stored = self.load_for_hookup(&w.tx, msg, now).await?;
            let decision = decide_hookup(stored.as_ref(), msg);
            self.persist(&w.tx, msg, &decision, source, now).await?;
            written.extend(hookup_events::record(&w.tx, msg, &decision, now).await?);
            decisions.push(decision);
        }
        w.tx.commit().await?;
        self.db.published(&written);
        Ok(decisions)
    }

    /// Creates the tenant if new (then there is nothing to read: `None`); otherwise locks
    /// its row, so that concurrent deliveries for one tenant (on any replica) apply one
    /// after the other, and reads its state.
    async fn load_for_hookup(
        &self,
        tx: &DatabaseTransaction,
        msg: &HookupMessage,
        now: DateTime<Utc>,
    ) -> Result<Option<StoredTenant>> {
        let provet_id = msg.provet_id.get();
        let insert = Query::insert()
            .into_table(tenant::Entity)
            .columns([
                tenant::Column::ProvetId,
                tenant::Column::Status,
                tenant::Column::CreatedAt,
                tenant::Column::UpdatedAt,
            ])
            .values_panic([
                provet_id.into(),
                TenantStatus::Active.into(),
                now.into(),
                now.into(),
            ])
            .on_conflict(
                OnConflict::column(tenant::Column::ProvetId)
                    .do_nothing()
                    .to_owned(),
            )
            .to_owned();
        if tx.execute(&insert).await?.rows_affected() == 1 {
            // A new tenant (the go-live burst): nothing to read, compare or revoke.
            return Ok(None);
        }
        let mut select = tenant::Entity::find_by_id(provet_id);
        if self.db.is_postgres() {
            select = select.lock_exclusive();
        }
        let tenant_row = select
            .one(tx)
            .await?
            .ok_or_else(|| StoreError::Corrupt(format!("tenant {provet_id} vanished")))?;
        let current = client::Entity::find()
            .filter(client::Column::ProvetId.eq(provet_id))
            .filter(client::Column::IsCurrent.eq(true))
            .one(tx)
            .await?;
        let departments: BTreeSet<i64> = department::Entity::find()
            .filter(department::Column::ProvetId.eq(provet_id))
            .all(tx)
            .await?
            .into_iter()
            .map(|d| d.department_id)
            .collect();
        Ok(Some(StoredTenant {
            status: tenant_row.status,
            client: current.map(|c| self.stored_client(c)).transpose()?,
            departments,
        }))
    }

    /// A client row as the decision compares it, its secret opened.
    fn stored_client(&self, c: client::Model) -> Result<StoredClient> {
        let client_secret = match &c.client_secret {
            Some(sealed) => Some(
                self.keyring
                    .open(&aad::client_secret(c.provet_id, &c.client_id), sealed)?,
            ),
            None => None,
        };
        Ok(StoredClient {
            client_secret,
            redirect_uris: serde_json::from_str(&c.redirect_uris).unwrap_or_default(),
            client_id: c.client_id,
            algorithm: c.algorithm,
            grant_type: c.grant_type,
            client_type: c.client_type,
            token_url: c.token_url,
            authorize_url: c.authorize_url,
            openid_autodiscovery_url: c.openid_autodiscovery_url,
        })
    }

    /// Writes what `decision` says: the client, revocations, discovery, departments, the
    /// tenant's row, and the delivery.
    async fn persist(
        &self,
        tx: &DatabaseTransaction,
        msg: &HookupMessage,
        decision: &HookupDecision,
        source: DeliverySource,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let provet_id = msg.provet_id.get();
        if decision.client_changed {
            if let Some(old) = &decision.supersedes_client {
                supersede_client(tx, provet_id, old, now).await?;
            }
            self.store_client(tx, msg, now, decision.new_tenant).await?;
            if !decision.new_tenant {
                revoke_for_new_client(tx, msg, now).await?;
            }
        }
        let url = msg.openid_autodiscovery_url.as_ref().map(|u| u.as_str());
        // A new tenant has no discovery row to remove.
        if decision.changes_anything() && (!decision.new_tenant || url.is_some()) {
            sync_discovery(tx, provet_id, url, now).await?;
        }
        if decision.departments_changed() {
            replace_departments(tx, provet_id, decision, now).await?;
        }
        if decision.changes_anything() && !decision.new_tenant {
            tenant::Entity::update_many()
                .col_expr(tenant::Column::Status, TenantStatus::Active.into())
                .col_expr(
                    tenant::Column::RemovedAt,
                    Option::<DateTime<Utc>>::None.into(),
                )
                .col_expr(tenant::Column::UpdatedAt, now.into())
                .filter(tenant::Column::ProvetId.eq(provet_id))
                .exec(tx)
                .await?;
        }
        record_delivery(tx, msg, decision.outcome.into(), source, now).await
    }

    /// Writes the message's client as the tenant's current one: updates its row in place,
    /// or inserts it. New credentials have not been tried yet.
    async fn store_client(
        &self,
        tx: &DatabaseTransaction,
        msg: &HookupMessage,
        now: DateTime<Utc>,
        new_tenant: bool,
    ) -> Result<()> {
        let provet_id = msg.provet_id.get();
        let existing = if new_tenant {
            None
        } else {
            client::Entity::find()
                .filter(client::Column::ProvetId.eq(provet_id))
                .filter(client::Column::ClientId.eq(msg.client_id.as_str()))
                .one(tx)
                .await?
        };
        let sealed = msg.client_secret.as_ref().map(|s| {
            self.keyring.seal(
                &aad::client_secret(provet_id, &msg.client_id),
                s.expose_secret(),
            )
        });
        let mut row = match existing {
            Some(row) => row.into_active_model(),
            None => client::ActiveModel {
                id: NotSet,
                provet_id: Set(provet_id),
                client_id: Set(msg.client_id.clone()),
                created_at: Set(now),
                ..Default::default()
            },
        };
        row.client_secret = Set(sealed);
        row.client_type = Set(msg.client_type);
        row.grant_type = Set(msg.grant_type);
        row.algorithm = Set(msg.algorithm);
        row.token_url = Set(msg.token_url.to_string());
        row.authorize_url = Set(msg.authorize_url.to_string());
        row.openid_autodiscovery_url =
            Set(msg.openid_autodiscovery_url.as_ref().map(|u| u.to_string()));
        row.redirect_uris = Set(redirect_uris_json(msg));
        row.is_current = Set(true);
        row.superseded_at = Set(None);
        row.credentials_state = Set(CredentialsState::Unchecked);
        row.credentials_checked_at = Set(None);
        row.credentials_last_error = Set(None);
        row.updated_at = Set(now);
        row.save(tx).await?;
        Ok(())
    }

    /// Records a delivery that failed validation. Changes nothing else.
    pub async fn record_rejected_delivery(
        &self,
        provet_id: Option<i64>,
        digest: &str,
        errors: &[FieldError],
        now: DateTime<Utc>,
    ) -> Result<()> {
        let errors = serde_json::to_string(errors).unwrap_or_default();
        let _writer = self.db.sqlite_write_lock().await;
        hookup_delivery::ActiveModel {
            id: NotSet,
            provet_id: Set(provet_id),
            client_id: Set(None),
            received_at: Set(now),
            digest: Set(digest.into()),
            outcome: Set(DeliveryOutcome::Rejected),
            source: Set(DeliverySource::Hookup),
            payload: Set(None),
            errors: Set(Some(errors)),
        }
        .insert(&self.db.main)
        .await?;
        Ok(())
    }
}

/// The tenant's current client is replaced by another: it stops being current and its
/// secret is wiped; the row stays for audit.
async fn supersede_client(
    tx: &DatabaseTransaction,
    provet_id: i64,
    client_id: &str,
    now: DateTime<Utc>,
) -> Result<()> {
    client::Entity::update_many()
        .col_expr(client::Column::IsCurrent, false.into())
        .col_expr(client::Column::SupersededAt, Some(now).into())
        .col_expr(client::Column::ClientSecret, Option::<String>::None.into())
        .col_expr(client::Column::UpdatedAt, now.into())
        .filter(client::Column::ProvetId.eq(provet_id))
        .filter(client::Column::ClientId.eq(client_id))
        .exec(tx)
        .await?;
    Ok(())
}

/// Tokens of the old credentials are of no use any more, nor are grants of a client that
/// is no longer the tenant's.
async fn revoke_for_new_client(
    tx: &DatabaseTransaction,
    msg: &HookupMessage,
    now: DateTime<Utc>,
) -> Result<()> {
    let provet_id = msg.provet_id.get();
    token::Entity::delete_many()
        .filter(token::Column::ProvetId.eq(provet_id))
        .exec(tx)
        .await?;
    grant::Entity::update_many()
        .col_expr(grant::Column::State, GrantState::Revoked.into())
        .col_expr(grant::Column::RefreshToken, Option::<String>::None.into())
        .col_expr(
            grant::Column::LastError,
            Some("the tenant's client was replaced by a new hookup".to_owned()).into(),
        )
        .col_expr(grant::Column::UpdatedAt, now.into())
        .filter(grant::Column::ProvetId.eq(provet_id))
        .filter(grant::Column::ClientId.ne(msg.client_id.as_str()))
        .filter(grant::Column::State.ne(GrantState::Revoked))
        .exec(tx)
        .await?;
    Ok(())
}

async fn record_delivery(
    tx: &DatabaseTransaction,
    msg: &HookupMessage,
    outcome: DeliveryOutcome,
    source: DeliverySource,
    now: DateTime<Utc>,
) -> Result<()> {
    hookup_delivery::ActiveModel {
        id: NotSet,
        provet_id: Set(Some(msg.provet_id.get())),
        client_id: Set(Some(msg.client_id.clone())),
        received_at: Set(now),
        digest: Set(msg.digest.clone()),
        outcome: Set(outcome),
        source: Set(source),
        payload: Set(Some(msg.redacted_json().to_string())),
        errors: Set(None),
    }
    .insert(tx)
    .await?;
    Ok(())
}

async fn replace_departments(
    tx: &DatabaseTransaction,
    provet_id: i64,
    decision: &HookupDecision,
    now: DateTime<Utc>,
) -> Result<()> {
    if !decision.departments_removed.is_empty() {
        department::Entity::delete_many()
            .filter(department::Column::ProvetId.eq(provet_id))
            .filter(department::Column::DepartmentId.is_in(decision.departments_removed.clone()))
            .exec(tx)
            .await?;
    }
    let new: Vec<department::ActiveModel> = decision
        .departments_added
        .iter()
        .map(|d| department::ActiveModel {
            provet_id: Set(provet_id),
            department_id: Set(*d),
            added_at: Set(now),
        })
        .collect();
    if !new.is_empty() {
        department::Entity::insert_many(new)
            .exec_without_returning(tx)
            .await?;
    }
    Ok(())
}

fn redirect_uris_json(msg: &HookupMessage) -> String {
    Value::from(
        msg.redirect_uris
            .iter()
            .map(|u| u.as_str())
            .collect::<Vec<_>>(),
    )
    .to_string()
}
