//! The store's operations. Each write that must be atomic runs in one transaction.

use std::collections::BTreeSet;

use broker_domain::{DeliverySource, EventType, FieldError, HookupMessage};
use chrono::{DateTime, Utc};
use sea_orm::sea_query::{OnConflict, Query};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseTransaction, DbBackend, EntityTrait,
    IntoActiveModel, NotSet, QueryFilter, QueryOrder, QuerySelect, Set, SqliteTransactionMode,
    TransactionOptions, TransactionTrait,
};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use tokio::sync::MutexGuard;

use crate::entity::{
    api_key, authorization, client, department, discovery, grant, hookup_delivery, setting, tenant,
    token,
};
use crate::events::{NewEvent, append};
use crate::hookup_events::{self, HookupChange};
use crate::records::*;
use crate::{Result, Store, StoreError};

/// Associated data for a client secret: the row's natural identity.
pub(crate) fn client_secret_aad(provet_id: i64, client_id: &str) -> String {
    format!("clients.client_secret:{provet_id}:{client_id}")
}

fn setting_aad(name: &str) -> String {
    format!("settings.value:{name}")
}

/// A write transaction, holding the SQLite writer lock for its lifetime.
pub(crate) struct WriteTx<'a> {
    pub(crate) tx: DatabaseTransaction,
    _writer: Option<MutexGuard<'a, ()>>,
}

impl Store {
    pub(crate) async fn begin_write(&self) -> Result<WriteTx<'_>> {
        let writer = match &self.sqlite_writer {
            Some(lock) => Some(lock.lock().await),
            None => None,
        };
        let tx = self
            .db
            .begin_with_options(TransactionOptions {
                sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                ..Default::default()
            })
            .await?;
        Ok(WriteTx {
            tx,
            _writer: writer,
        })
    }

    /// For single statements outside `begin_write`: on SQLite, queue behind other writers.
    pub(crate) async fn sqlite_write_lock(&self) -> Option<MutexGuard<'_, ()>> {
        match &self.sqlite_writer {
            Some(lock) => Some(lock.lock().await),
            None => None,
        }
    }

    pub(crate) fn is_postgres(&self) -> bool {
        self.db.get_database_backend() == DbBackend::Postgres
    }

    /// Stores a validated hookup message: tenant, client (secret sealed), departments and the
    /// delivery record, in one transaction. Returns what changed.
    pub async fn apply_hookup(
        &self,
        msg: &HookupMessage,
        now: DateTime<Utc>,
    ) -> Result<HookupOutcome> {
        self.apply_hookup_from(msg, DeliverySource::Hookup, now)
            .await
    }

    /// `apply_hookup` for a message from `source` (an operator, the command line).
    pub async fn apply_hookup_from(
        &self,
        msg: &HookupMessage,
        source: DeliverySource,
        now: DateTime<Utc>,
    ) -> Result<HookupOutcome> {
        let mut outcomes = self.apply_hookups_from(&[msg], source, now).await?;
        outcomes
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
        now: DateTime<Utc>,
    ) -> Result<Vec<HookupOutcome>> {
        self.apply_hookups_from(msgs, DeliverySource::Hookup, now)
            .await
    }

    /// `apply_hookups` for messages from `source`; their events are written in the same
    /// transaction.
    pub async fn apply_hookups_from(
        &self,
        msgs: &[&HookupMessage],
        source: DeliverySource,
        now: DateTime<Utc>,
    ) -> Result<Vec<HookupOutcome>> {
        let w = self.begin_write().await?;
        let mut outcomes = Vec::with_capacity(msgs.len());
        let mut written = Vec::new();
        for msg in msgs {
            outcomes.push(self.apply_in(&w.tx, msg, source, now, &mut written).await?);
        }
        w.tx.commit().await?;
        self.published(&written);
        Ok(outcomes)
    }

    async fn apply_in(
        &self,
        tx: &DatabaseTransaction,
        msg: &HookupMessage,
        source: DeliverySource,
        now: DateTime<Utc>,
        written: &mut Vec<EventType>,
    ) -> Result<HookupOutcome> {
        let provet_id = msg.provet_id.get();

        // Create the tenant if new; then lock its row so concurrent deliveries for one tenant
        // (on any replica) apply one after the other.
        let inserted = tx
            .execute(
                Query::insert()
                    .into_table(tenant::Entity)
                    .columns([
                        tenant::Column::ProvetId,
                        tenant::Column::Status,
                        tenant::Column::CreatedAt,
                        tenant::Column::UpdatedAt,
                    ])
                    .values_panic([provet_id.into(), "active".into(), now.into(), now.into()])
                    .on_conflict(
                        OnConflict::column(tenant::Column::ProvetId)
                            .do_nothing()
                            .to_owned(),
                    ),
            )
            .await?
            .rows_affected()
            == 1;
        if inserted {
            // A new tenant (the go-live burst): nothing to read, compare or revoke.
            return self.register_in(tx, msg, source, now, written).await;
        }
        let mut select = tenant::Entity::find_by_id(provet_id);
        if self.is_postgres() {
            select = select.lock_exclusive();
        }
        let tenant_row = select
            .one(tx)
            .await?
            .ok_or_else(|| StoreError::Corrupt(format!("tenant {provet_id} vanished")))?;
        let reactivated = tenant_row.status != "active";

        let current = client::Entity::find()
            .filter(client::Column::ProvetId.eq(provet_id))
            .filter(client::Column::IsCurrent.eq(true))
            .one(tx)
            .await?;
        let current_departments: BTreeSet<i64> = department::Entity::find()
            .filter(department::Column::ProvetId.eq(provet_id))
            .all(tx)
            .await?
            .into_iter()
            .map(|d| d.department_id)
            .collect();
        let next_departments = msg.departments.apply(&current_departments);

        let client_changed = match &current {
            Some(c) if c.client_id == msg.client_id => !self.client_matches(c, msg)?,
            _ => true,
        };
        let departments_changed = next_departments != current_departments;
        let outcome = if inserted || reactivated {
            HookupOutcome::Registered
        } else if client_changed || departments_changed {
            HookupOutcome::Updated
        } else {
            HookupOutcome::Unchanged
        };

        let changed_fields = if client_changed && !reactivated {
            self.changed_client_fields(current.as_ref(), msg)?
        } else {
            Vec::new()
        };
        if client_changed {
            self.store_client(tx, current, msg, now, false).await?;
            // Tokens of the old credentials are of no use any more, nor are grants of a
            // client that is no longer the tenant's.
            token::Entity::delete_many()
                .filter(token::Column::ProvetId.eq(provet_id))
                .exec(tx)
                .await?;
            grant::Entity::update_many()
                .col_expr(grant::Column::State, "revoked".into())
                .col_expr(grant::Column::RefreshToken, Option::<String>::None.into())
                .col_expr(
                    grant::Column::LastError,
                    Some("the tenant's client was replaced by a new hookup".to_owned()).into(),
                )
                .col_expr(grant::Column::UpdatedAt, now.into())
                .filter(grant::Column::ProvetId.eq(provet_id))
                .filter(grant::Column::ClientId.ne(msg.client_id.as_str()))
                .filter(grant::Column::State.ne("revoked"))
                .exec(tx)
                .await?;
        }
        if outcome != HookupOutcome::Unchanged {
            self.sync_discovery(
                tx,
                provet_id,
                msg.openid_autodiscovery_url.as_ref().map(|u| u.as_str()),
                now,
            )
            .await?;
        }
        if departments_changed {
            replace_departments(tx, provet_id, &current_departments, &next_departments, now)
                .await?;
        }
        if outcome != HookupOutcome::Unchanged && !inserted {
            let mut t = tenant_row.into_active_model();
            t.status = Set("active".into());
            t.removed_at = Set(None);
            t.updated_at = Set(now);
            t.update(tx).await?;
        }
        let change = HookupChange {
            outcome,
            changed: &changed_fields,
            departments_before: &current_departments,
            departments_after: &next_departments,
        };
        written.extend(hookup_events::record(tx, msg, &change, now).await?);
        record_delivery(tx, msg, outcome, source, now).await?;
        Ok(outcome)
    }

    /// A tenant seen for the first time (its row was just inserted): the client, its
    /// discovery row, departments and the delivery, with no reads.
    async fn register_in(
        &self,
        tx: &DatabaseTransaction,
        msg: &HookupMessage,
        source: DeliverySource,
        now: DateTime<Utc>,
        written: &mut Vec<EventType>,
    ) -> Result<HookupOutcome> {
        let provet_id = msg.provet_id.get();
        self.store_client(tx, None, msg, now, true).await?;
        if let Some(url) = &msg.openid_autodiscovery_url {
            self.sync_discovery(tx, provet_id, Some(url.as_str()), now)
                .await?;
        }
        let departments = msg.departments.apply(&BTreeSet::new());
        if !departments.is_empty() {
            replace_departments(tx, provet_id, &BTreeSet::new(), &departments, now).await?;
        }
        let change = HookupChange {
            outcome: HookupOutcome::Registered,
            changed: &[],
            departments_before: &BTreeSet::new(),
            departments_after: &departments,
        };
        written.extend(hookup_events::record(tx, msg, &change, now).await?);
        record_delivery(tx, msg, HookupOutcome::Registered, source, now).await?;
        Ok(HookupOutcome::Registered)
    }

    /// Whether the stored client already says everything the message says.
    fn client_matches(&self, c: &client::Model, msg: &HookupMessage) -> Result<bool> {
        let stored_secret = match &c.client_secret {
            Some(sealed) => Some(
                self.keyring
                    .open(&client_secret_aad(c.provet_id, &c.client_id), sealed)?,
            ),
            None => None,
        };
        let secret_same = match (&stored_secret, &msg.client_secret) {
            (None, None) => true,
            (Some(a), Some(b)) => a.expose_secret() == b.expose_secret(),
            _ => false,
        };
        Ok(secret_same
            && c.is_current
            && c.client_type == msg.client_type.as_str()
            && c.grant_type == msg.grant_type.as_str()
            && c.algorithm.as_deref() == msg.algorithm.map(|a| a.as_str())
            && c.token_url == msg.token_url.as_str()
            && c.authorize_url == msg.authorize_url.as_str()
            && c.openid_autodiscovery_url.as_deref()
                == msg.openid_autodiscovery_url.as_ref().map(|u| u.as_str())
            && c.redirect_uris == redirect_uris_json(msg))
    }

    /// Writes the message's client: updates the current one in place, or supersedes it
    /// (secret wiped, row kept for audit) and makes the message's client current.
    async fn store_client(
        &self,
        tx: &DatabaseTransaction,
        current: Option<client::Model>,
        msg: &HookupMessage,
        now: DateTime<Utc>,
        new_tenant: bool,
    ) -> Result<()> {
        let provet_id = msg.provet_id.get();
        if let Some(old) = current.filter(|c| c.client_id != msg.client_id) {
            let mut old = old.into_active_model();
            old.is_current = Set(false);
            old.superseded_at = Set(Some(now));
            old.client_secret = Set(None);
            old.updated_at = Set(now);
            old.update(tx).await?;
        }
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
                &client_secret_aad(provet_id, &msg.client_id),
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
        row.client_type = Set(msg.client_type.as_str().into());
        row.grant_type = Set(msg.grant_type.as_str().into());
        row.algorithm = Set(msg.algorithm.map(|a| a.as_str().into()));
        row.token_url = Set(msg.token_url.to_string());
        row.authorize_url = Set(msg.authorize_url.to_string());
        row.openid_autodiscovery_url =
            Set(msg.openid_autodiscovery_url.as_ref().map(|u| u.to_string()));
        row.redirect_uris = Set(redirect_uris_json(msg));
        row.is_current = Set(true);
        row.superseded_at = Set(None);
        // New credentials have not been tried yet.
        row.credentials_state = Set("unchecked".into());
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
        let _writer = self.sqlite_write_lock().await;
        hookup_delivery::ActiveModel {
            id: NotSet,
            provet_id: Set(provet_id),
            client_id: Set(None),
            received_at: Set(now),
            digest: Set(digest.into()),
            outcome: Set("rejected".into()),
            payload: Set(None),
            errors: Set(Some(errors)),
            source: Set(DeliverySource::Hookup.as_str().into()),
        }
        .insert(&self.db)
        .await?;
        Ok(())
    }

    /// One tenant with its current client and departments.
    pub async fn tenant(&self, provet_id: i64) -> Result<Option<TenantRecord>> {
        let Some(t) = tenant::Entity::find_by_id(provet_id).one(&self.db).await? else {
            return Ok(None);
        };
        Ok(self.assemble(vec![t]).await?.pop())
    }

    /// A page of tenants, ordered by provet_id.
    pub async fn tenants(&self, filter: &TenantFilter) -> Result<Vec<TenantRecord>> {
        let mut q = tenant::Entity::find().order_by_asc(tenant::Column::ProvetId);
        if let Some(status) = &filter.status {
            q = q.filter(tenant::Column::Status.eq(status.as_str()));
        }
        if let Some(after) = filter.after {
            q = q.filter(tenant::Column::ProvetId.gt(after));
        }
        if let Some(grant) = &filter.grant_type {
            let mut sub = Query::select();
            sub.column(client::Column::ProvetId)
                .from(client::Entity)
                .and_where(client::Column::IsCurrent.eq(true))
                .and_where(client::Column::GrantType.eq(grant.as_str()));
            q = q.filter(tenant::Column::ProvetId.in_subquery(sub.to_owned()));
        }
        if let Some(state) = &filter.discovery {
            // A tenant has a discovery row exactly while it has a discovery URL.
            let mut sub = Query::select();
            sub.column(discovery::Column::ProvetId)
                .from(discovery::Entity);
            if state == "not_applicable" {
                q = q.filter(tenant::Column::ProvetId.not_in_subquery(sub.to_owned()));
            } else {
                sub.and_where(discovery::Column::State.eq(state.as_str()));
                q = q.filter(tenant::Column::ProvetId.in_subquery(sub.to_owned()));
            }
        }
        let rows = q.limit(filter.limit).all(&self.db).await?;
        self.assemble(rows).await
    }

    pub(crate) async fn assemble(&self, tenants: Vec<tenant::Model>) -> Result<Vec<TenantRecord>> {
        let ids: Vec<i64> = tenants.iter().map(|t| t.provet_id).collect();
        let clients = client::Entity::find()
            .filter(client::Column::ProvetId.is_in(ids.clone()))
            .filter(client::Column::IsCurrent.eq(true))
            .all(&self.db)
            .await?;
        let departments = department::Entity::find()
            .filter(department::Column::ProvetId.is_in(ids.clone()))
            .order_by_asc(department::Column::DepartmentId)
            .all(&self.db)
            .await?;
        let discoveries = self
            .discoveries(tenants.iter().map(|t| t.provet_id).collect())
            .await?;
        let grants = grant::Entity::find()
            .filter(
                grant::Column::ProvetId
                    .is_in(tenants.iter().map(|t| t.provet_id).collect::<Vec<_>>()),
            )
            .order_by_desc(grant::Column::CreatedAt)
            .all(&self.db)
            .await?;
        Ok(tenants
            .into_iter()
            .map(|t| TenantRecord {
                grants: grants
                    .iter()
                    .filter(|g| g.provet_id == t.provet_id)
                    .map(|g| GrantSummary {
                        client_id: g.client_id.clone(),
                        subject: g.subject.clone(),
                        scope: g.scope.clone(),
                        state: g.state.clone(),
                        created_at: g.created_at,
                        last_refresh_at: g.last_refresh_at,
                        last_error: g.last_error.clone(),
                    })
                    .collect(),
                discovery: discoveries
                    .iter()
                    .find(|d| d.provet_id == t.provet_id)
                    .cloned(),
                provet_id: t.provet_id,
                departments: departments
                    .iter()
                    .filter(|d| d.provet_id == t.provet_id)
                    .map(|d| d.department_id)
                    .collect(),
                client: clients
                    .iter()
                    .find(|c| c.provet_id == t.provet_id)
                    .map(client_record),
                status: t.status,
                created_at: t.created_at,
                updated_at: t.updated_at,
                removed_at: t.removed_at,
            })
            .collect())
    }

    /// Hookup deliveries for one tenant, newest first.
    pub async fn deliveries(
        &self,
        provet_id: i64,
        before: Option<i64>,
        limit: u64,
    ) -> Result<Vec<DeliveryRecord>> {
        let mut q = hookup_delivery::Entity::find()
            .filter(hookup_delivery::Column::ProvetId.eq(provet_id))
            .order_by_desc(hookup_delivery::Column::Id);
        if let Some(before) = before {
            q = q.filter(hookup_delivery::Column::Id.lt(before));
        }
        Ok(q.limit(limit)
            .all(&self.db)
            .await?
            .into_iter()
            .map(|d| DeliveryRecord {
                id: d.id,
                provet_id: d.provet_id,
                client_id: d.client_id,
                received_at: d.received_at,
                digest: d.digest,
                outcome: d.outcome,
                payload: d.payload.and_then(|p| serde_json::from_str(&p).ok()),
                errors: d.errors.and_then(|e| serde_json::from_str(&e).ok()),
                source: d.source,
            })
            .collect())
    }

    /// The tenant removed the integration: mark it removed and wipe every secret it had, and
    /// its departments (a re-installation starts from what it sends). Returns false for an
    /// unknown tenant.
    pub async fn remove_tenant(&self, provet_id: i64, now: DateTime<Utc>) -> Result<bool> {
        let w = self.begin_write().await?;
        // Lock the tenant row first, as `apply_hookup` does: a removal and a hookup for one
        // tenant then run one after the other, in the same lock order (no deadlock), and the
        // removal sees every client row a hookup committed before it.
        let mut select = tenant::Entity::find_by_id(provet_id);
        if self.is_postgres() {
            select = select.lock_exclusive();
        }
        let Some(t) = select.one(&w.tx).await? else {
            return Ok(false);
        };
        client::Entity::update_many()
            .col_expr(client::Column::ClientSecret, Option::<String>::None.into())
            .col_expr(client::Column::UpdatedAt, now.into())
            .filter(client::Column::ProvetId.eq(provet_id))
            .exec(&w.tx)
            .await?;
        self.sync_discovery(&w.tx, provet_id, None, now).await?;
        token::Entity::delete_many()
            .filter(token::Column::ProvetId.eq(provet_id))
            .exec(&w.tx)
            .await?;
        grant::Entity::update_many()
            .col_expr(grant::Column::State, "revoked".into())
            .col_expr(grant::Column::RefreshToken, Option::<String>::None.into())
            .col_expr(
                grant::Column::LastError,
                Some("the tenant removed the integration".to_owned()).into(),
            )
            .col_expr(grant::Column::UpdatedAt, now.into())
            .filter(grant::Column::ProvetId.eq(provet_id))
            .exec(&w.tx)
            .await?;
        department::Entity::delete_many()
            .filter(department::Column::ProvetId.eq(provet_id))
            .exec(&w.tx)
            .await?;
        if t.status != "removed" {
            let mut t = t.into_active_model();
            t.status = Set("removed".into());
            t.removed_at = Set(Some(now));
            t.updated_at = Set(now);
            t.update(&w.tx).await?;
            let removed = NewEvent::new(
                provet_id,
                EventType::TenantRemoved,
                Value::Object(Default::default()),
                now,
            );
            append(&w.tx, &removed).await?;
            w.tx.commit().await?;
            self.published(&[EventType::TenantRemoved]);
            return Ok(true);
        }
        w.tx.commit().await?;
        Ok(true)
    }

    /// The current client's secret of an active tenant, opened.
    pub async fn client_secret(&self, provet_id: i64) -> Result<Option<SecretString>> {
        let Some(c) = client::Entity::find()
            .filter(client::Column::ProvetId.eq(provet_id))
            .filter(client::Column::IsCurrent.eq(true))
            .one(&self.db)
            .await?
        else {
            return Ok(None);
        };
        match c.client_secret {
            Some(sealed) => Ok(Some(
                self.keyring
                    .open(&client_secret_aad(c.provet_id, &c.client_id), &sealed)?,
            )),
            None => Ok(None),
        }
    }

    // ---- API keys ----

    pub async fn insert_api_key(
        &self,
        name: &str,
        role: &str,
        tenants: Option<&[i64]>,
        key_hash: &str,
        key_prefix: &str,
        now: DateTime<Utc>,
    ) -> Result<ApiKeyRecord> {
        let _writer = self.sqlite_write_lock().await;
        let row = api_key::ActiveModel {
            id: NotSet,
            name: Set(name.into()),
            role: Set(role.into()),
            tenants: Set(tenants.map(|t| serde_json::to_string(t).unwrap_or_default())),
            key_hash: Set(key_hash.into()),
            key_prefix: Set(key_prefix.into()),
            created_at: Set(now),
            revoked_at: Set(None),
        }
        .insert(&self.db)
        .await?;
        Ok(api_key_record(row))
    }

    pub async fn api_keys(&self) -> Result<Vec<ApiKeyRecord>> {
        Ok(api_key::Entity::find()
            .order_by_asc(api_key::Column::Id)
            .all(&self.db)
            .await?
            .into_iter()
            .map(api_key_record)
            .collect())
    }

    /// The live (not revoked) key with this hash.
    pub async fn api_key_by_hash(&self, key_hash: &str) -> Result<Option<ApiKeyRecord>> {
        Ok(api_key::Entity::find()
            .filter(api_key::Column::KeyHash.eq(key_hash))
            .filter(api_key::Column::RevokedAt.is_null())
            .one(&self.db)
            .await?
            .map(api_key_record))
    }

    /// Revokes by id; false when there is no such live key.
    pub async fn revoke_api_key(&self, id: i64, now: DateTime<Utc>) -> Result<bool> {
        let _writer = self.sqlite_write_lock().await;
        let result = api_key::Entity::update_many()
            .col_expr(api_key::Column::RevokedAt, Some(now).into())
            .filter(api_key::Column::Id.eq(id))
            .filter(api_key::Column::RevokedAt.is_null())
            .exec(&self.db)
            .await?;
        Ok(result.rows_affected == 1)
    }

    // ---- settings ----

    /// The sealed setting `name`, or `generate()`'s value stored now. When two replicas start
    /// at once, both end up with the one value that was stored first.
    pub async fn secret_setting_or_insert(
        &self,
        name: &str,
        generate: impl FnOnce() -> SecretString,
        now: DateTime<Utc>,
    ) -> Result<(SecretString, bool)> {
        let aad = setting_aad(name);
        if let Some(row) = setting::Entity::find_by_id(name.to_owned())
            .one(&self.db)
            .await?
        {
            return Ok((self.keyring.open(&aad, &row.value)?, false));
        }
        let value = generate();
        let inserted = self
            .db
            .execute(
                Query::insert()
                    .into_table(setting::Entity)
                    .columns([
                        setting::Column::Name,
                        setting::Column::Value,
                        setting::Column::UpdatedAt,
                    ])
                    .values_panic([
                        name.into(),
                        self.keyring.seal(&aad, value.expose_secret()).into(),
                        now.into(),
                    ])
                    .on_conflict(
                        OnConflict::column(setting::Column::Name)
                            .do_nothing()
                            .to_owned(),
                    ),
            )
            .await?
            .rows_affected()
            == 1;
        if inserted {
            return Ok((value, true));
        }
        let row = setting::Entity::find_by_id(name.to_owned())
            .one(&self.db)
            .await?
            .ok_or_else(|| StoreError::Corrupt(format!("setting {name} vanished")))?;
        Ok((self.keyring.open(&aad, &row.value)?, false))
    }

    // ---- key rotation ----

    /// Re-seals every secret not sealed with the current key. Each row is rewritten only if
    /// it still holds the ciphertext that was read, so concurrent writers are never undone.
    pub async fn rekey(&self) -> Result<RekeyReport> {
        let mut report = RekeyReport::default();
        // Each row is rewritten only where it still holds the ciphertext read (a
        // conditional update), so a concurrent writer is never undone.
        for c in client::Entity::find()
            .filter(client::Column::ClientSecret.is_not_null())
            .all(&self.db)
            .await?
        {
            let Some(sealed) = c.client_secret else {
                continue;
            };
            let Some(new) = self.reseal(
                &client_secret_aad(c.provet_id, &c.client_id),
                &sealed,
                &mut report,
            )?
            else {
                continue;
            };
            let _writer = self.sqlite_write_lock().await;
            report.resealed += client::Entity::update_many()
                .col_expr(client::Column::ClientSecret, Some(new).into())
                .filter(client::Column::Id.eq(c.id))
                .filter(client::Column::ClientSecret.eq(sealed))
                .exec(&self.db)
                .await?
                .rows_affected;
        }
        for t in token::Entity::find().all(&self.db).await? {
            let key = TokenKey {
                provet_id: t.provet_id,
                client_id: t.client_id.clone(),
                scope: t.scope.clone(),
                subject: t.subject.clone(),
            };
            let Some(new) = self.reseal(
                &crate::token_repo::token_aad(&key),
                &t.access_token,
                &mut report,
            )?
            else {
                continue;
            };
            let _writer = self.sqlite_write_lock().await;
            report.resealed += token::Entity::update_many()
                .col_expr(token::Column::AccessToken, new.into())
                .filter(token::Column::ProvetId.eq(t.provet_id))
                .filter(token::Column::ClientId.eq(t.client_id.as_str()))
                .filter(token::Column::Scope.eq(t.scope.as_str()))
                .filter(token::Column::Subject.eq(t.subject.as_str()))
                .filter(token::Column::AccessToken.eq(t.access_token))
                .exec(&self.db)
                .await?
                .rows_affected;
        }
        for g in grant::Entity::find()
            .filter(grant::Column::RefreshToken.is_not_null())
            .all(&self.db)
            .await?
        {
            let Some(sealed) = g.refresh_token else {
                continue;
            };
            let aad = crate::grant_repo::refresh_aad(g.provet_id, &g.client_id, &g.subject);
            let Some(new) = self.reseal(&aad, &sealed, &mut report)? else {
                continue;
            };
            let _writer = self.sqlite_write_lock().await;
            report.resealed += grant::Entity::update_many()
                .col_expr(grant::Column::RefreshToken, Some(new).into())
                .filter(grant::Column::ProvetId.eq(g.provet_id))
                .filter(grant::Column::ClientId.eq(g.client_id.as_str()))
                .filter(grant::Column::Subject.eq(g.subject.as_str()))
                .filter(grant::Column::RefreshToken.eq(sealed))
                .exec(&self.db)
                .await?
                .rows_affected;
        }
        for a in authorization::Entity::find()
            .filter(authorization::Column::PkceVerifier.ne(""))
            .all(&self.db)
            .await?
        {
            let aad = crate::grant_repo::verifier_aad(&a.state_hash);
            let Some(new) = self.reseal(&aad, &a.pkce_verifier, &mut report)? else {
                continue;
            };
            let _writer = self.sqlite_write_lock().await;
            report.resealed += authorization::Entity::update_many()
                .col_expr(authorization::Column::PkceVerifier, new.into())
                .filter(authorization::Column::StateHash.eq(a.state_hash.as_str()))
                .filter(authorization::Column::PkceVerifier.eq(a.pkce_verifier))
                .exec(&self.db)
                .await?
                .rows_affected;
        }
        for s in setting::Entity::find().all(&self.db).await? {
            let Some(new) = self.reseal(&setting_aad(&s.name), &s.value, &mut report)? else {
                continue;
            };
            let _writer = self.sqlite_write_lock().await;
            report.resealed += setting::Entity::update_many()
                .col_expr(setting::Column::Value, new.into())
                .filter(setting::Column::Name.eq(s.name.as_str()))
                .filter(setting::Column::Value.eq(s.value))
                .exec(&self.db)
                .await?
                .rows_affected;
        }
        self.rekey_webhooks(&mut report).await?;
        Ok(report)
    }

    /// The value sealed again with the current key, or `None` when it already is.
    fn reseal(&self, aad: &str, sealed: &str, report: &mut RekeyReport) -> Result<Option<String>> {
        if self.keyring.is_current(sealed) {
            report.already_current += 1;
            return Ok(None);
        }
        Ok(Some(self.keyring.seal(
            aad,
            self.keyring.open(aad, sealed)?.expose_secret(),
        )))
    }
}

async fn record_delivery(
    tx: &DatabaseTransaction,
    msg: &HookupMessage,
    outcome: HookupOutcome,
    source: DeliverySource,
    now: DateTime<Utc>,
) -> Result<()> {
    hookup_delivery::ActiveModel {
        id: NotSet,
        provet_id: Set(Some(msg.provet_id.get())),
        client_id: Set(Some(msg.client_id.clone())),
        received_at: Set(now),
        digest: Set(msg.digest.clone()),
        outcome: Set(outcome.as_str().into()),
        payload: Set(Some(msg.redacted_json().to_string())),
        errors: Set(None),
        source: Set(source.as_str().into()),
    }
    .insert(tx)
    .await?;
    Ok(())
}

async fn replace_departments(
    tx: &DatabaseTransaction,
    provet_id: i64,
    current: &BTreeSet<i64>,
    next: &BTreeSet<i64>,
    now: DateTime<Utc>,
) -> Result<()> {
    let gone: Vec<i64> = current.difference(next).copied().collect();
    if !gone.is_empty() {
        department::Entity::delete_many()
            .filter(department::Column::ProvetId.eq(provet_id))
            .filter(department::Column::DepartmentId.is_in(gone))
            .exec(tx)
            .await?;
    }
    let new: Vec<department::ActiveModel> = next
        .difference(current)
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

fn client_record(c: &client::Model) -> ClientRecord {
    ClientRecord {
        client_id: c.client_id.clone(),
        client_type: c.client_type.clone(),
        grant_type: c.grant_type.clone(),
        algorithm: c.algorithm.clone(),
        token_url: c.token_url.clone(),
        authorize_url: c.authorize_url.clone(),
        openid_autodiscovery_url: c.openid_autodiscovery_url.clone(),
        redirect_uris: serde_json::from_str(&c.redirect_uris).unwrap_or_default(),
        has_secret: c.client_secret.is_some(),
        credentials_state: c.credentials_state.clone(),
        credentials_checked_at: c.credentials_checked_at,
        credentials_last_error: c.credentials_last_error.clone(),
        created_at: c.created_at,
        updated_at: c.updated_at,
    }
}

fn api_key_record(k: api_key::Model) -> ApiKeyRecord {
    ApiKeyRecord {
        id: k.id,
        name: k.name,
        role: k.role,
        tenants: k.tenants.and_then(|t| serde_json::from_str(&t).ok()),
        key_prefix: k.key_prefix,
        created_at: k.created_at,
        revoked_at: k.revoked_at,
    }
}
