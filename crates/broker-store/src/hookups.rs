//! Storing hookups: load the tenant's state, let `broker_domain::decide_hookup` decide,
//! persist the decision, and record the delivery, all in one transaction per batch.

use std::collections::{BTreeSet, HashSet};

use broker_domain::{
    CredentialsState, DeliveryOutcome, DeliverySource, EventType, FieldError, GrantState,
    HookupDecision, HookupMessage, StoredClient, StoredTenant, TenantStatus, decide_hookup,
};
use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Alias, IntoIden, OnConflict, Query};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseTransaction, EntityTrait,
    IntoActiveModel, NotSet, QueryFilter, QuerySelect, Set,
};
use secrecy::ExposeSecret;
use serde_json::Value;

use crate::crypto::aad;
use crate::discovery::{pending_discovery, sync_discovery};
use crate::entity::{client, department, discovery, grant, hookup_delivery, tenant, token};
use crate::events::{NewEvent, ROWS_PER_INSERT, insert_numbered};
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
    ///
    /// The tenants' rows are created first, in one statement. A tenant it created (the
    /// go-live burst) has nothing to read or compare: its first message is registered with
    /// the others' in a few multi-row statements. Every other message (a known tenant, or a
    /// second message for one) is read, decided and written one by one, under its tenant's
    /// row lock.
    pub async fn apply_hookups(
        &self,
        msgs: &[&HookupMessage],
        source: DeliverySource,
        now: DateTime<Utc>,
    ) -> Result<Vec<HookupDecision>> {
        let w = self.db.begin_write().await?;
        let firsts = first_per_tenant(msgs, now);
        let created = create_tenants(&w.tx, &firsts, now).await?;
        let mut decisions: Vec<Option<HookupDecision>> = vec![None; msgs.len()];
        let registered: Vec<&FirstMessage> = firsts
            .iter()
            .filter(|f| created.contains(&f.msg.provet_id.get()))
            .collect();
        let mut written = self.register_new(&w.tx, &registered, source, now).await?;
        for first in registered {
            decisions[first.index] = Some(first.decision.clone());
        }
        for (msg, decided) in msgs.iter().zip(decisions.iter_mut()) {
            if decided.is_some() {
                continue;
            }
            let stored = self.load_for_hookup(&w.tx, msg).await?;
            let decision = decide_hookup(Some(&stored), msg);
            self.persist(&w.tx, msg, &decision, source, now).await?;
            written.extend(hookup_events::record(&w.tx, msg, &decision, now).await?);
            *decided = Some(decision);
        }
        w.tx.commit().await?;
        self.db.published(&written);
        decisions
            .into_iter()
            .map(|d| d.ok_or_else(|| StoreError::Corrupt("a hookup without a decision".into())))
            .collect()
    }

    /// Registers new tenants' first messages: clients, discovery rows, departments,
    /// deliveries and events, each in one multi-row insert. Their tenant rows exist already,
    /// with the event counter set (`create_tenants`).
    async fn register_new(
        &self,
        tx: &DatabaseTransaction,
        firsts: &[&FirstMessage<'_>],
        source: DeliverySource,
        now: DateTime<Utc>,
    ) -> Result<Vec<EventType>> {
        if firsts.is_empty() {
            return Ok(Vec::new());
        }
        let clients: Vec<client::ActiveModel> =
            firsts.iter().map(|f| self.new_client(f.msg, now)).collect();
        insert_rows::<client::Entity, _>(tx, clients).await?;
        let discovery_rows = firsts.iter().filter_map(|f| {
            let url = f.msg.openid_autodiscovery_url.as_ref()?;
            Some(pending_discovery(f.msg.provet_id.get(), url.as_str(), now))
        });
        insert_rows::<discovery::Entity, _>(tx, discovery_rows.collect()).await?;
        let departments = firsts.iter().flat_map(|f| {
            let provet_id = f.msg.provet_id.get();
            f.decision
                .departments_added
                .iter()
                .map(move |d| department::ActiveModel {
                    provet_id: Set(provet_id),
                    department_id: Set(*d),
                    added_at: Set(now),
                })
        });
        insert_rows::<department::Entity, _>(tx, departments.collect()).await?;
        let deliveries = firsts
            .iter()
            .map(|f| delivery_row(f.msg, f.decision.outcome.into(), source, now));
        insert_rows::<hookup_delivery::Entity, _>(tx, deliveries.collect()).await?;
        let events: Vec<(&NewEvent, i64)> = firsts
            .iter()
            .flat_map(|f| f.events.iter().zip(1..))
            .collect();
        insert_numbered(tx, &events).await?;
        Ok(events.iter().map(|(e, _)| e.event_type).collect())
    }

    /// Locks the tenant's row (PostgreSQL), so that concurrent deliveries for one tenant (on
    /// any replica) apply one after the other, and reads its state.
    async fn load_for_hookup(
        &self,
        tx: &DatabaseTransaction,
        msg: &HookupMessage,
    ) -> Result<StoredTenant> {
        let provet_id = msg.provet_id.get();
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
        Ok(StoredTenant {
            status: tenant_row.status,
            client: current.map(|c| self.stored_client(c)).transpose()?,
            departments,
        })
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
        let row = match existing {
            Some(row) => {
                let mut row = row.into_active_model();
                self.fill_client(&mut row, msg, now);
                row
            }
            None => self.new_client(msg, now),
        };
        row.save(tx).await?;
        Ok(())
    }

    /// A new client row for the message's client.
    fn new_client(&self, msg: &HookupMessage, now: DateTime<Utc>) -> client::ActiveModel {
        let mut row = client::ActiveModel {
            id: NotSet,
            provet_id: Set(msg.provet_id.get()),
            client_id: Set(msg.client_id.clone()),
            created_at: Set(now),
            ..Default::default()
        };
        self.fill_client(&mut row, msg, now);
        row
    }

    /// Sets what the message says of its client (the secret sealed); new credentials have
    /// not been tried yet.
    fn fill_client(&self, row: &mut client::ActiveModel, msg: &HookupMessage, now: DateTime<Utc>) {
        let sealed = msg.client_secret.as_ref().map(|s| {
            self.keyring.seal(
                &aad::client_secret(msg.provet_id.get(), &msg.client_id),
                s.expose_secret(),
            )
        });
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
    hookup_delivery::Entity::insert(delivery_row(msg, outcome, source, now))
        .exec_without_returning(tx)
        .await?;
    Ok(())
}

fn delivery_row(
    msg: &HookupMessage,
    outcome: DeliveryOutcome,
    source: DeliverySource,
    now: DateTime<Utc>,
) -> hookup_delivery::ActiveModel {
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
}

/// The first message of each tenant in a batch, decided as if the tenant were new, with
/// the events that decision writes.
struct FirstMessage<'a> {
    index: usize,
    msg: &'a HookupMessage,
    decision: HookupDecision,
    events: Vec<NewEvent>,
}

fn first_per_tenant<'a>(msgs: &[&'a HookupMessage], now: DateTime<Utc>) -> Vec<FirstMessage<'a>> {
    let mut seen = HashSet::new();
    msgs.iter()
        .enumerate()
        .filter(|(_, m)| seen.insert(m.provet_id.get()))
        .map(|(index, &msg)| {
            let decision = decide_hookup(None, msg);
            let events = hookup_events::events_of(msg, &decision, now);
            FirstMessage {
                index,
                msg,
                decision,
                events,
            }
        })
        .collect()
}

/// Creates the rows of the tenants not stored yet, in one statement per `ROWS_PER_INSERT`;
/// answers which it created. A created tenant's event counter already counts the events its
/// first message writes. (A row another transaction is creating is waited for, then left
/// alone: that tenant is then a known one.)
async fn create_tenants(
    tx: &DatabaseTransaction,
    firsts: &[FirstMessage<'_>],
    now: DateTime<Utc>,
) -> Result<HashSet<i64>> {
    let mut created = HashSet::new();
    for chunk in firsts.chunks(ROWS_PER_INSERT) {
        let mut insert = Query::insert()
            .into_table(tenant::Entity)
            .columns([
                tenant::Column::ProvetId.into_iden(),
                tenant::Column::Status.into_iden(),
                tenant::Column::CreatedAt.into_iden(),
                tenant::Column::UpdatedAt.into_iden(),
                Alias::new("event_sequence").into_iden(),
            ])
            .on_conflict(
                OnConflict::column(tenant::Column::ProvetId)
                    .do_nothing()
                    .to_owned(),
            )
            .returning_col(tenant::Column::ProvetId)
            .to_owned();
        for first in chunk {
            let events = i64::try_from(first.events.len()).unwrap_or(i64::MAX);
            insert.values_panic([
                first.msg.provet_id.get().into(),
                TenantStatus::Active.into(),
                now.into(),
                now.into(),
                events.into(),
            ]);
        }
        for row in tx.query_all(&insert).await? {
            created.insert(row.try_get_by_index::<i64>(0)?);
        }
    }
    Ok(created)
}

/// Inserts rows in multi-row statements of at most `ROWS_PER_INSERT`.
async fn insert_rows<E, A>(tx: &DatabaseTransaction, rows: Vec<A>) -> Result<()>
where
    E: EntityTrait,
    A: ActiveModelTrait<Entity = E>,
{
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let chunk: Vec<A> = rows.by_ref().take(ROWS_PER_INSERT).collect();
        E::insert_many(chunk).exec_without_returning(tx).await?;
    }
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
