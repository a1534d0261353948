//! Discovery state: scheduling, claiming with a lease, and recording results.

use broker_domain::{DiscoveryState, EventType};
use chrono::{DateTime, Utc};
use sea_orm::sea_query::{LockBehavior, LockType, OnConflict, Query};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DatabaseTransaction, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, Set, UpdateMany,
};
use serde_json::Value;

use crate::db::Db;
use crate::entity::{client, discovery};
use crate::records::{DiscoveryJob, DiscoveryRecord, DiscoverySuccess, RerunFilter};
use crate::{Result, StoreError};

/// Tenants' OpenID Connect metadata and the schedule of fetching it.
#[derive(Clone)]
pub struct Discovery {
    db: Db,
}

impl Discovery {
    pub(crate) fn new(db: Db) -> Self {
        Self { db }
    }

    /// Claims up to `limit` due tenants that nobody holds, for `lease`, as `owner`. On
    /// PostgreSQL `FOR UPDATE SKIP LOCKED` keeps replicas off each other's rows; on SQLite
    /// the single writer does.
    pub async fn claim_discovery(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u64,
        only: Option<i64>,
    ) -> Result<Vec<DiscoveryJob>> {
        let w = self.db.begin_write().await?;
        let mut q = discovery::Entity::find();
        q = match only {
            // An explicit run ignores the schedule and any lease.
            Some(id) => q.filter(discovery::Column::ProvetId.eq(id)),
            None => q
                .filter(discovery::Column::NextDueAt.lte(now))
                .filter(
                    Condition::any()
                        .add(discovery::Column::LeaseExpiresAt.is_null())
                        .add(discovery::Column::LeaseExpiresAt.lt(now)),
                )
                .order_by_asc(discovery::Column::NextDueAt),
        };
        q = q.limit(limit);
        if self.db.is_postgres() {
            q = q.lock_with_behavior(LockType::Update, LockBehavior::SkipLocked);
        }
        let rows = q.all(&w.tx).await?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<i64> = rows.iter().map(|r| r.provet_id).collect();
        discovery::Entity::update_many()
            .col_expr(discovery::Column::LeaseOwner, Some(owner.to_owned()).into())
            .col_expr(discovery::Column::LeaseExpiresAt, Some(lease_until).into())
            .filter(discovery::Column::ProvetId.is_in(ids.clone()))
            .exec(&w.tx)
            .await?;
        let clients = client::Entity::find()
            .filter(client::Column::ProvetId.is_in(ids))
            .filter(client::Column::IsCurrent.eq(true))
            .all(&w.tx)
            .await?;
        w.tx.commit().await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let c = clients.iter().find(|c| c.provet_id == r.provet_id);
                DiscoveryJob {
                    provet_id: r.provet_id,
                    discovery_url: r.discovery_url,
                    token_url: c.map(|c| c.token_url.clone()),
                    authorize_url: c.map(|c| c.authorize_url.clone()),
                }
            })
            .collect())
    }

    /// Records a successful run and releases the lease.
    pub async fn discovery_succeeded(
        &self,
        owner: &str,
        job: &DiscoveryJob,
        found: DiscoverySuccess,
        now: DateTime<Utc>,
        next_due: DateTime<Utc>,
    ) -> Result<bool> {
        // One conditional statement: the row is written only while this replica still holds
        // its lease for the same URL (a hookup may have changed it, or the lease moved on).
        let update = success_update(owner, job, found, now, next_due);
        let w = self.db.begin_write().await?;
        crate::events::lock_tenant(&w.tx, job.provet_id).await?;
        let before = discovery::Entity::find_by_id(job.provet_id)
            .one(&w.tx)
            .await?;
        let updated = update.exec(&w.tx).await?.rows_affected == 1;
        let event = before.filter(|_| updated).and_then(|d| {
            crate::state_events::discovery_event(d.state, DiscoveryState::Ok)
                .map(|t| (t, d.last_error))
        });
        if let Some((event_type, last_error)) = &event {
            append_discovery_event(
                &w.tx,
                job.provet_id,
                *event_type,
                last_error.as_deref(),
                now,
            )
            .await?;
        }
        w.tx.commit().await?;
        if let Some((event_type, _)) = event {
            self.db.published(&[event_type]);
        }
        Ok(updated)
    }

    /// Records a failed run (metadata from an earlier success is kept) and releases the lease.
    pub async fn discovery_failed(
        &self,
        owner: &str,
        job: &DiscoveryJob,
        error: &str,
        now: DateTime<Utc>,
        next_due: impl FnOnce(i32) -> DateTime<Utc>,
    ) -> Result<Option<i32>> {
        // The prior state (which decides the event) is read under the tenant's lock, in the
        // transaction that writes the new one, and the write is conditional on the lease:
        // a concurrent transition or a lease that moved on cannot slip between them.
        let w = self.db.begin_write().await?;
        crate::events::lock_tenant(&w.tx, job.provet_id).await?;
        let Some(row) = leased(owner, job).one(&w.tx).await? else {
            return Ok(None);
        };
        let attempts = row.attempts.saturating_add(1);
        let event = crate::state_events::discovery_event(row.state, DiscoveryState::Failed);
        let updated = discovery::Entity::update_many()
            .col_expr(discovery::Column::State, DiscoveryState::Failed.into())
            .col_expr(discovery::Column::LastError, Some(error.to_owned()).into())
            .col_expr(discovery::Column::LastAttemptAt, Some(now).into())
            .col_expr(discovery::Column::Attempts, attempts.into())
            .col_expr(discovery::Column::NextDueAt, next_due(attempts).into())
            .col_expr(discovery::Column::LeaseOwner, Option::<String>::None.into())
            .col_expr(
                discovery::Column::LeaseExpiresAt,
                Option::<DateTime<Utc>>::None.into(),
            )
            .filter(discovery::Column::ProvetId.eq(job.provet_id))
            .filter(discovery::Column::LeaseOwner.eq(owner))
            .filter(discovery::Column::DiscoveryUrl.eq(job.discovery_url.as_str()))
            .exec(&w.tx)
            .await?
            .rows_affected
            == 1;
        if !updated {
            return Ok(None);
        }
        if let Some(event_type) = event {
            append_discovery_event(&w.tx, job.provet_id, event_type, Some(error), now).await?;
        }
        w.tx.commit().await?;
        self.db.published(event.as_slice());
        Ok(Some(attempts))
    }

    /// Stores a JWKS fetched on demand (an unknown `kid`).
    pub async fn store_jwks(
        &self,
        provet_id: i64,
        jwks: &Value,
        expires_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let _writer = self.db.sqlite_write_lock().await;
        discovery::Entity::update_many()
            .col_expr(discovery::Column::Jwks, Some(jwks.to_string()).into())
            .col_expr(discovery::Column::JwksFetchedAt, Some(now).into())
            .col_expr(discovery::Column::JwksExpiresAt, expires_at.into())
            .filter(discovery::Column::ProvetId.eq(provet_id))
            .exec(&self.db.main)
            .await?;
        Ok(())
    }

    /// Claims the right to refetch a tenant's JWKS: true for at most one caller per
    /// `min_interval`, across replicas (a conditional update is the arbiter).
    pub async fn claim_jwks_refetch(
        &self,
        provet_id: i64,
        now: DateTime<Utc>,
        not_since: DateTime<Utc>,
    ) -> Result<bool> {
        let _writer = self.db.sqlite_write_lock().await;
        let result = discovery::Entity::update_many()
            .col_expr(discovery::Column::JwksFetchedAt, Some(now).into())
            .filter(discovery::Column::ProvetId.eq(provet_id))
            .filter(
                Condition::any()
                    .add(discovery::Column::JwksFetchedAt.is_null())
                    .add(discovery::Column::JwksFetchedAt.lt(not_since)),
            )
            .exec(&self.db.main)
            .await?;
        Ok(result.rows_affected == 1)
    }

    pub async fn discovery(&self, provet_id: i64) -> Result<Option<DiscoveryRecord>> {
        Ok(discovery::Entity::find_by_id(provet_id)
            .one(&self.db.main)
            .await?
            .map(discovery_record))
    }

    /// Makes the matching tenants due now; returns how many.
    pub async fn schedule_discovery(&self, filter: RerunFilter, now: DateTime<Utc>) -> Result<u64> {
        let mut q =
            discovery::Entity::update_many().col_expr(discovery::Column::NextDueAt, now.into());
        q = match filter {
            RerunFilter::Failed => q.filter(discovery::Column::State.eq(DiscoveryState::Failed)),
            RerunFilter::Stale(before) => q.filter(
                Condition::any()
                    .add(discovery::Column::FetchedAt.is_null())
                    .add(discovery::Column::FetchedAt.lt(before)),
            ),
            RerunFilter::All => q,
        };
        let _writer = self.db.sqlite_write_lock().await;
        Ok(q.exec(&self.db.main).await?.rows_affected)
    }

    /// Tenants per discovery state (tenants without a discovery URL are `not_applicable`).
    pub async fn discovery_state_counts(&self) -> Result<Vec<(DiscoveryState, i64)>> {
        let rows = self
            .db
            .main
            .query_all(
                Query::select()
                    .column(discovery::Column::State)
                    .expr(sea_orm::sea_query::Func::count(
                        sea_orm::sea_query::Expr::col(discovery::Column::ProvetId),
                    ))
                    .from(discovery::Entity)
                    .group_by_col(discovery::Column::State),
            )
            .await?;
        let mut counts = Vec::new();
        for row in rows {
            let state: String = row.try_get_by_index(0)?;
            let state = state
                .parse()
                .map_err(|e: broker_domain::UnknownState| StoreError::Corrupt(e.to_string()))?;
            let n: i64 = row.try_get_by_index(1)?;
            counts.push((state, n));
        }
        Ok(counts)
    }
}

/// Keeps the discovery row in step with the tenant's discovery URL: a new or changed URL
/// is due at once; no URL means nothing to discover.
pub(crate) async fn sync_discovery(
    tx: &DatabaseTransaction,
    provet_id: i64,
    url: Option<&str>,
    now: DateTime<Utc>,
) -> Result<()> {
    let Some(url) = url else {
        discovery::Entity::delete_by_id(provet_id).exec(tx).await?;
        return Ok(());
    };
    let existing = discovery::Entity::find_by_id(provet_id).one(tx).await?;
    if existing.as_ref().is_some_and(|d| d.discovery_url == url) {
        return Ok(());
    }
    let row = pending_discovery(provet_id, url, now);
    discovery::Entity::insert(row)
        .on_conflict(
            OnConflict::column(discovery::Column::ProvetId)
                .update_columns([
                    discovery::Column::DiscoveryUrl,
                    discovery::Column::State,
                    discovery::Column::Issuer,
                    discovery::Column::Document,
                    discovery::Column::TokenEndpoint,
                    discovery::Column::AuthorizationEndpoint,
                    discovery::Column::JwksUri,
                    discovery::Column::UserinfoEndpoint,
                    discovery::Column::RevocationEndpoint,
                    discovery::Column::AuthMethods,
                    discovery::Column::Jwks,
                    discovery::Column::JwksFetchedAt,
                    discovery::Column::JwksExpiresAt,
                    discovery::Column::Warnings,
                    discovery::Column::FetchedAt,
                    discovery::Column::LastAttemptAt,
                    discovery::Column::NextDueAt,
                    discovery::Column::Attempts,
                    discovery::Column::LastError,
                    discovery::Column::LeaseOwner,
                    discovery::Column::LeaseExpiresAt,
                ])
                .to_owned(),
        )
        .exec_without_returning(tx)
        .await?;
    Ok(())
}

/// The discovery records of these tenants (those that have one).
pub(crate) async fn records<C: ConnectionTrait>(
    db: &C,
    ids: Vec<i64>,
) -> Result<Vec<DiscoveryRecord>> {
    Ok(discovery::Entity::find()
        .filter(discovery::Column::ProvetId.is_in(ids))
        .all(db)
        .await?
        .into_iter()
        .map(discovery_record)
        .collect())
}

fn discovery_record(d: discovery::Model) -> DiscoveryRecord {
    DiscoveryRecord {
        provet_id: d.provet_id,
        discovery_url: d.discovery_url,
        state: d.state,
        issuer: d.issuer,
        token_endpoint: d.token_endpoint,
        authorization_endpoint: d.authorization_endpoint,
        jwks_uri: d.jwks_uri,
        userinfo_endpoint: d.userinfo_endpoint,
        revocation_endpoint: d.revocation_endpoint,
        auth_methods: d
            .auth_methods
            .and_then(|m| serde_json::from_str(&m).ok())
            .unwrap_or_default(),
        jwks: d.jwks.and_then(|j| serde_json::from_str(&j).ok()),
        jwks_fetched_at: d.jwks_fetched_at,
        jwks_expires_at: d.jwks_expires_at,
        warnings: d
            .warnings
            .and_then(|w| serde_json::from_str(&w).ok())
            .unwrap_or_default(),
        fetched_at: d.fetched_at,
        last_attempt_at: d.last_attempt_at,
        next_due_at: d.next_due_at,
        attempts: d.attempts,
        last_error: d.last_error,
    }
}

/// The one conditional statement that records a successful run and releases the lease.
fn success_update(
    owner: &str,
    job: &DiscoveryJob,
    found: DiscoverySuccess,
    now: DateTime<Utc>,
    next_due: DateTime<Utc>,
) -> UpdateMany<discovery::Entity> {
    let warnings = (!found.warnings.is_empty()).then(|| Value::from(found.warnings).to_string());
    discovery::Entity::update_many()
        .col_expr(discovery::Column::State, DiscoveryState::Ok.into())
        .col_expr(discovery::Column::Issuer, Some(found.issuer).into())
        .col_expr(
            discovery::Column::Document,
            Some(found.document.to_string()).into(),
        )
        .col_expr(
            discovery::Column::TokenEndpoint,
            found.token_endpoint.into(),
        )
        .col_expr(
            discovery::Column::AuthorizationEndpoint,
            Some(found.authorization_endpoint).into(),
        )
        .col_expr(discovery::Column::JwksUri, Some(found.jwks_uri).into())
        .col_expr(
            discovery::Column::UserinfoEndpoint,
            found.userinfo_endpoint.into(),
        )
        .col_expr(
            discovery::Column::RevocationEndpoint,
            found.revocation_endpoint.into(),
        )
        .col_expr(
            discovery::Column::AuthMethods,
            Some(Value::from(found.auth_methods).to_string()).into(),
        )
        .col_expr(discovery::Column::Jwks, Some(found.jwks.to_string()).into())
        .col_expr(discovery::Column::JwksFetchedAt, Some(now).into())
        .col_expr(
            discovery::Column::JwksExpiresAt,
            found.jwks_expires_at.into(),
        )
        .col_expr(discovery::Column::Warnings, warnings.into())
        .col_expr(discovery::Column::FetchedAt, Some(now).into())
        .col_expr(discovery::Column::LastAttemptAt, Some(now).into())
        .col_expr(discovery::Column::NextDueAt, next_due.into())
        .col_expr(discovery::Column::Attempts, 0.into())
        .col_expr(discovery::Column::LastError, Option::<String>::None.into())
        .col_expr(discovery::Column::LeaseOwner, Option::<String>::None.into())
        .col_expr(
            discovery::Column::LeaseExpiresAt,
            Option::<DateTime<Utc>>::None.into(),
        )
        .filter(discovery::Column::ProvetId.eq(job.provet_id))
        .filter(discovery::Column::LeaseOwner.eq(owner))
        .filter(discovery::Column::DiscoveryUrl.eq(job.discovery_url.as_str()))
}

/// The event of a run that changed the tenant's discovery state, in the run's transaction.
async fn append_discovery_event(
    tx: &DatabaseTransaction,
    provet_id: i64,
    event_type: EventType,
    last_error: Option<&str>,
    now: DateTime<Utc>,
) -> Result<()> {
    crate::events::append(
        tx,
        &crate::events::NewEvent::new(
            provet_id,
            event_type,
            serde_json::json!({ "last_error": last_error }),
            now,
        ),
    )
    .await
}

/// The row still leased by `owner` for the same URL (a hookup may have changed it, or the
/// lease may have expired and moved on).
fn leased(owner: &str, job: &DiscoveryJob) -> sea_orm::Select<discovery::Entity> {
    discovery::Entity::find_by_id(job.provet_id)
        .filter(discovery::Column::LeaseOwner.eq(owner))
        .filter(discovery::Column::DiscoveryUrl.eq(job.discovery_url.as_str()))
}

/// A discovery row for a new URL: due now, nothing known yet.
pub(crate) fn pending_discovery(
    provet_id: i64,
    url: &str,
    now: DateTime<Utc>,
) -> discovery::ActiveModel {
    discovery::ActiveModel {
        provet_id: Set(provet_id),
        discovery_url: Set(url.to_owned()),
        state: Set(DiscoveryState::Pending),
        issuer: Set(None),
        document: Set(None),
        token_endpoint: Set(None),
        authorization_endpoint: Set(None),
        jwks_uri: Set(None),
        userinfo_endpoint: Set(None),
        revocation_endpoint: Set(None),
        auth_methods: Set(None),
        jwks: Set(None),
        jwks_fetched_at: Set(None),
        jwks_expires_at: Set(None),
        warnings: Set(None),
        fetched_at: Set(None),
        last_attempt_at: Set(None),
        next_due_at: Set(now),
        attempts: Set(0),
        last_error: Set(None),
        lease_owner: Set(None),
        lease_expires_at: Set(None),
    }
}
