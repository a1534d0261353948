//! Tenants and their clients: reading them with departments, discovery and grants,
//! removal, the current client's secret, and the hookup deliveries. Storing a hookup is in
//! `hookups.rs`.

use std::sync::Arc;

use broker_domain::{DiscoveryState, EventType, GrantState, TenantStatus};
use chrono::{DateTime, Utc};
use sea_orm::sea_query::Query;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, IntoActiveModel, QueryFilter, QueryOrder,
    QuerySelect, Set,
};

use crate::db::Db;
use crate::discovery;
use crate::entity::discovery as discovery_row;
use crate::entity::{client, department, grant, hookup_delivery, tenant, token};
use crate::events::{NewEvent, append};
use crate::records::{ClientRecord, DeliveryRecord, GrantSummary, TenantFilter, TenantRecord};
use crate::{Keyring, Result};

/// Tenants, their clients and departments, and the hookup deliveries.
#[derive(Clone)]
pub struct Tenants {
    pub(crate) db: Db,
    pub(crate) keyring: Arc<Keyring>,
}

impl Tenants {
    pub(crate) fn new(db: Db, keyring: Arc<Keyring>) -> Self {
        Self { db, keyring }
    }

    /// One tenant with its current client and departments.
    pub async fn tenant(&self, provet_id: i64) -> Result<Option<TenantRecord>> {
        let Some(t) = tenant::Entity::find_by_id(provet_id)
            .one(&self.db.main)
            .await?
        else {
            return Ok(None);
        };
        Ok(self.assemble(vec![t]).await?.pop())
    }

    /// A page of tenants, ordered by provet_id.
    pub async fn tenants(&self, filter: &TenantFilter) -> Result<Vec<TenantRecord>> {
        let mut q = tenant::Entity::find().order_by_asc(tenant::Column::ProvetId);
        if let Some(status) = &filter.status {
            q = q.filter(tenant::Column::Status.eq(*status));
        }
        if let Some(after) = filter.after {
            q = q.filter(tenant::Column::ProvetId.gt(after));
        }
        if let Some(grant) = &filter.grant_type {
            let mut sub = Query::select();
            sub.column(client::Column::ProvetId)
                .from(client::Entity)
                .and_where(client::Column::IsCurrent.eq(true))
                .and_where(client::Column::GrantType.eq(*grant));
            q = q.filter(tenant::Column::ProvetId.in_subquery(sub.to_owned()));
        }
        if let Some(state) = &filter.discovery {
            // A tenant has a discovery row exactly while it has a discovery URL.
            let mut sub = Query::select();
            sub.column(discovery_row::Column::ProvetId)
                .from(discovery_row::Entity);
            if *state == DiscoveryState::NotApplicable {
                q = q.filter(tenant::Column::ProvetId.not_in_subquery(sub.to_owned()));
            } else {
                sub.and_where(discovery_row::Column::State.eq(*state));
                q = q.filter(tenant::Column::ProvetId.in_subquery(sub.to_owned()));
            }
        }
        if let Some(state) = &filter.credentials {
            let mut sub = Query::select();
            sub.column(client::Column::ProvetId)
                .from(client::Entity)
                .and_where(client::Column::IsCurrent.eq(true))
                .and_where(client::Column::CredentialsState.eq(*state));
            q = q.filter(tenant::Column::ProvetId.in_subquery(sub.to_owned()));
        }
        if let Some(state) = &filter.grant_state {
            let mut sub = Query::select();
            sub.column(grant::Column::ProvetId)
                .from(grant::Entity)
                .and_where(grant::Column::State.eq(*state));
            q = q.filter(tenant::Column::ProvetId.in_subquery(sub.to_owned()));
        }
        let rows = q.limit(filter.limit).all(&self.db.main).await?;
        self.assemble(rows).await
    }

    pub(crate) async fn assemble(&self, tenants: Vec<tenant::Model>) -> Result<Vec<TenantRecord>> {
        let ids: Vec<i64> = tenants.iter().map(|t| t.provet_id).collect();
        let clients = client::Entity::find()
            .filter(client::Column::ProvetId.is_in(ids.clone()))
            .filter(client::Column::IsCurrent.eq(true))
            .all(&self.db.main)
            .await?;
        let departments = department::Entity::find()
            .filter(department::Column::ProvetId.is_in(ids.clone()))
            .order_by_asc(department::Column::DepartmentId)
            .all(&self.db.main)
            .await?;
        let discoveries = discovery::records(&self.db.main, ids.clone()).await?;
        let grants = grant::Entity::find()
            .filter(grant::Column::ProvetId.is_in(ids))
            .order_by_desc(grant::Column::CreatedAt)
            .all(&self.db.main)
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
                        state: g.state,
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
            .all(&self.db.main)
            .await?
            .into_iter()
            .map(|d| DeliveryRecord {
                id: d.id,
                provet_id: d.provet_id,
                client_id: d.client_id,
                received_at: d.received_at,
                digest: d.digest,
                outcome: d.outcome,
                source: d.source,
                payload: d.payload.and_then(|p| serde_json::from_str(&p).ok()),
                errors: d.errors.and_then(|e| serde_json::from_str(&e).ok()),
            })
            .collect())
    }

    /// The tenant removed the integration: mark it removed and wipe every secret it had, and
    /// its departments (a re-installation starts from what it sends). Returns false for an
    /// unknown tenant.
    pub async fn remove_tenant(&self, provet_id: i64, now: DateTime<Utc>) -> Result<bool> {
        let w = self.db.begin_write().await?;
        // Lock the tenant row first, as `apply_hookup` does: a removal and a hookup for one
        // tenant then run one after the other, in the same lock order (no deadlock), and the
        // removal sees every client row a hookup committed before it.
        let mut select = tenant::Entity::find_by_id(provet_id);
        if self.db.is_postgres() {
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
        discovery::sync_discovery(&w.tx, provet_id, None, now).await?;
        token::Entity::delete_many()
            .filter(token::Column::ProvetId.eq(provet_id))
            .exec(&w.tx)
            .await?;
        grant::Entity::update_many()
            .col_expr(grant::Column::State, GrantState::Revoked.into())
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
        if t.status != TenantStatus::Removed {
            let mut t = t.into_active_model();
            t.status = Set(TenantStatus::Removed);
            t.removed_at = Set(Some(now));
            t.updated_at = Set(now);
            t.update(&w.tx).await?;
            let removed = NewEvent::new(
                provet_id,
                EventType::TenantRemoved,
                serde_json::Value::Object(Default::default()),
                now,
            );
            append(&w.tx, &removed).await?;
            w.tx.commit().await?;
            self.db.published(&[EventType::TenantRemoved]);
            return Ok(true);
        }
        w.tx.commit().await?;
        Ok(true)
    }
}

fn client_record(c: &client::Model) -> ClientRecord {
    ClientRecord {
        client_id: c.client_id.clone(),
        client_type: c.client_type,
        grant_type: c.grant_type,
        algorithm: c.algorithm,
        token_url: c.token_url.clone(),
        authorize_url: c.authorize_url.clone(),
        openid_autodiscovery_url: c.openid_autodiscovery_url.clone(),
        redirect_uris: serde_json::from_str(&c.redirect_uris).unwrap_or_default(),
        has_secret: c.client_secret.is_some(),
        credentials_state: c.credentials_state,
        credentials_checked_at: c.credentials_checked_at,
        credentials_last_error: c.credentials_last_error.clone(),
        created_at: c.created_at,
        updated_at: c.updated_at,
    }
}
