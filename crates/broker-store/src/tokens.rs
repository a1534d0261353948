//! Cached access tokens and the credential state of clients (the cross-replica lock that
//! lets one request per token key reach the provider is in `token_leases`).

use broker_domain::{CredentialsState, GrantType, TenantStatus};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, HashMap};

use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, Set};
use secrecy::ExposeSecret;

use crate::crypto::aad;
use crate::db::Db;
use crate::entity::{client, discovery, tenant, token};
use crate::group_commit::GroupCommit;
use crate::records::{StoredToken, TokenClientRecord, TokenKey};
use crate::token_leases::{LEASES_PER_BATCH, LeaseAttempt, LeaseJob, TokenLease, release_all};
use crate::{Keyring, Result};

/// Cached access tokens, the credential state of clients, and the token lease.
#[derive(Clone)]
pub struct Tokens {
    pub(crate) db: Db,
    pub(crate) keyring: Arc<Keyring>,
    /// Concurrent token saves, written together.
    saves: Arc<GroupCommit<SaveJob>>,
    /// Concurrent attempts to take token leases (PostgreSQL), taken together.
    pub(crate) leases: Arc<GroupCommit<LeaseJob, LeaseAttempt>>,
}

/// Most saves in one transaction.
const SAVES_PER_BATCH: usize = 128;

impl Tokens {
    pub(crate) fn new(db: Db, keyring: Arc<Keyring>) -> Self {
        // PostgreSQL writes a few batches at once (on the cache pool, which token leases
        // share); SQLite has one writer.
        let writers = if db.is_postgres() { 2 } else { 1 };
        Self {
            db,
            keyring,
            saves: Arc::new(GroupCommit::new(writers, SAVES_PER_BATCH)),
            leases: Arc::new(GroupCommit::new(writers, LEASES_PER_BATCH)),
        }
    }

    /// The current client of a tenant, its secret opened, with what discovery advertised.
    pub async fn token_client(&self, provet_id: i64) -> Result<Option<TokenClientRecord>> {
        Ok(self.token_clients(&[provet_id]).await?.pop())
    }

    /// `token_client` for several tenants in three queries (tenants without a current client
    /// are left out).
    pub async fn token_clients(&self, provet_ids: &[i64]) -> Result<Vec<TokenClientRecord>> {
        let ids = provet_ids.iter().copied();
        let tenants: HashMap<i64, tenant::Model> = tenant::Entity::find()
            .filter(tenant::Column::ProvetId.is_in(ids.clone()))
            .all(&self.db.main)
            .await?
            .into_iter()
            .map(|t| (t.provet_id, t))
            .collect();
        if tenants.is_empty() {
            return Ok(Vec::new());
        }
        let clients = client::Entity::find()
            .filter(client::Column::ProvetId.is_in(ids.clone()))
            .filter(client::Column::IsCurrent.eq(true))
            .all(&self.db.main)
            .await?;
        let mut discovered: HashMap<i64, discovery::Model> = discovery::Entity::find()
            .filter(discovery::Column::ProvetId.is_in(ids))
            .all(&self.db.main)
            .await?
            .into_iter()
            .map(|d| (d.provet_id, d))
            .collect();
        clients
            .into_iter()
            .filter_map(|c| {
                let status = tenants.get(&c.provet_id)?.status;
                let discovered = discovered.remove(&c.provet_id);
                Some(self.token_client_record(status, c, discovered))
            })
            .collect()
    }

    fn token_client_record(
        &self,
        tenant_status: TenantStatus,
        c: client::Model,
        discovered: Option<discovery::Model>,
    ) -> Result<TokenClientRecord> {
        let secret = match &c.client_secret {
            Some(sealed) => Some(
                self.keyring
                    .open(&aad::client_secret(c.provet_id, &c.client_id), sealed)?,
            ),
            None => None,
        };
        let auth_methods = discovered
            .as_ref()
            .and_then(|d| d.auth_methods.as_deref())
            .and_then(|m| serde_json::from_str(m).ok())
            .unwrap_or_default();
        Ok(TokenClientRecord {
            provet_id: c.provet_id,
            tenant_status,
            client_id: c.client_id,
            client_secret: secret,
            client_type: c.client_type,
            grant_type: c.grant_type,
            token_url: c.token_url,
            authorize_url: c.authorize_url,
            redirect_uris: serde_json::from_str(&c.redirect_uris).unwrap_or_default(),
            algorithm: c.algorithm,
            credentials_state: c.credentials_state,
            credentials_checked_at: c.credentials_checked_at,
            auth_methods,
            issuer: discovered.as_ref().and_then(|d| d.issuer.clone()),
            revocation_endpoint: discovered
                .as_ref()
                .and_then(|d| d.revocation_endpoint.clone()),
            discovery_state: discovered.map(|d| d.state),
        })
    }

    /// Tenants whose current client_credentials client has not been checked yet.
    pub async fn unchecked_clients(&self, limit: u64) -> Result<Vec<i64>> {
        use sea_orm::sea_query::Query;
        use sea_orm::{QueryOrder, QuerySelect};
        let active = Query::select()
            .column(tenant::Column::ProvetId)
            .from(tenant::Entity)
            .and_where(tenant::Column::Status.eq(TenantStatus::Active))
            .to_owned();
        Ok(client::Entity::find()
            .filter(client::Column::ProvetId.in_subquery(active))
            .filter(client::Column::IsCurrent.eq(true))
            .filter(client::Column::GrantType.eq(GrantType::ClientCredentials))
            .filter(client::Column::CredentialsState.eq(CredentialsState::Unchecked))
            .order_by_asc(client::Column::Id)
            .limit(limit)
            .all(&self.db.main)
            .await?
            .into_iter()
            .map(|c| c.provet_id)
            .collect())
    }

    /// Records whether the provider accepted the client's credentials; a change of state
    /// writes its event in the same transaction.
    pub async fn set_credentials_state(
        &self,
        provet_id: i64,
        client_id: &str,
        state: CredentialsState,
        error: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let _writer = self.db.sqlite_write_lock().await;
        let tx = crate::events::begin_immediate(&self.db.cache).await?;
        crate::events::lock_tenant(&tx, provet_id).await?;
        let transition =
            crate::state_events::credentials_transition(&tx, provet_id, client_id, state).await?;
        client::Entity::update_many()
            .col_expr(client::Column::CredentialsState, state.into())
            .col_expr(client::Column::CredentialsCheckedAt, Some(now).into())
            .col_expr(
                client::Column::CredentialsLastError,
                error.map(str::to_owned).into(),
            )
            .filter(client::Column::ProvetId.eq(provet_id))
            .filter(client::Column::ClientId.eq(client_id))
            .exec(&tx)
            .await?;
        let written =
            crate::state_events::credentials_changed(&tx, provet_id, transition, error, now)
                .await?;
        tx.commit().await?;
        self.db.published(&written);
        Ok(())
    }

    pub async fn load_token(&self, key: &TokenKey) -> Result<Option<StoredToken>> {
        let row = token::Entity::find_by_id((
            key.provet_id,
            key.client_id.clone(),
            key.scope.clone(),
            key.subject.clone(),
        ))
        .one(&self.db.main)
        .await?;
        row.map(|row| open_token(&self.keyring, key, row))
            .transpose()
    }

    /// Stores a fetched token (and, when it changed, the client's credential state) and
    /// releases the lease, in one transaction on the cache pool: with the saves of other
    /// callers at the same moment (see `group_commit`).
    pub async fn save_token(
        &self,
        key: &TokenKey,
        token: &StoredToken,
        lease: Option<&TokenLease>,
        credentials_ok: Option<DateTime<Utc>>,
    ) -> Result<()> {
        let job = SaveJob {
            key: key.clone(),
            row: token_row(&self.keyring, key, token),
            lease: lease.cloned(),
            credentials_ok,
        };
        let db = self.db.clone();
        self.saves
            .submit(job, move |jobs| save_batch(db.clone(), jobs))
            .await
    }
}

/// A stored token, its access token opened.
pub(crate) fn open_token(
    keyring: &Keyring,
    key: &TokenKey,
    row: token::Model,
) -> Result<StoredToken> {
    Ok(StoredToken {
        access_token: keyring.open(&aad::access_token(key), &row.access_token)?,
        token_type: row.token_type,
        expires_at: row.expires_at,
        obtained_at: row.obtained_at,
        granted_scope: row.granted_scope,
    })
}

/// A token's row, its access token sealed.
pub(crate) fn token_row(
    keyring: &Keyring,
    key: &TokenKey,
    token: &StoredToken,
) -> token::ActiveModel {
    token::ActiveModel {
        provet_id: Set(key.provet_id),
        client_id: Set(key.client_id.clone()),
        scope: Set(key.scope.clone()),
        subject: Set(key.subject.clone()),
        access_token: Set(keyring.seal(&aad::access_token(key), token.access_token.expose_secret())),
        token_type: Set(token.token_type.clone()),
        expires_at: Set(token.expires_at),
        obtained_at: Set(token.obtained_at),
        granted_scope: Set(token.granted_scope.clone()),
    }
}

pub(crate) fn token_upsert() -> OnConflict {
    OnConflict::columns([
        token::Column::ProvetId,
        token::Column::ClientId,
        token::Column::Scope,
        token::Column::Subject,
    ])
    .update_columns([
        token::Column::AccessToken,
        token::Column::TokenType,
        token::Column::ExpiresAt,
        token::Column::ObtainedAt,
        token::Column::GrantedScope,
    ])
    .to_owned()
}

/// One caller's token save.
struct SaveJob {
    key: TokenKey,
    /// The token's row, its access token sealed.
    row: token::ActiveModel,
    lease: Option<TokenLease>,
    /// The provider accepted the client's credentials at this time.
    credentials_ok: Option<DateTime<Utc>>,
}

/// Writes a batch of saves in one transaction; if that fails for a reason other than the
/// database being away, each save alone, so that one bad save fails alone.
async fn save_batch(db: Db, jobs: Vec<SaveJob>) -> Vec<Result<()>> {
    match write_saves(&db, &jobs).await {
        Ok(()) => jobs.iter().map(|_| Ok(())).collect(),
        Err(e) if jobs.len() == 1 || e.is_database_away() => {
            jobs.iter().map(|_| Err(e.duplicate())).collect()
        }
        Err(_) => {
            let mut results = Vec::with_capacity(jobs.len());
            for job in &jobs {
                results.push(write_saves(&db, std::slice::from_ref(job)).await);
            }
            results
        }
    }
}

/// The tokens, the credential states that turned `ok` (each with its event) and the leases'
/// release, in a few statements whatever the number of saves.
async fn write_saves(db: &Db, jobs: &[SaveJob]) -> Result<()> {
    // One row per key (the last save wins); keys and tenants in one order across batches,
    // so that concurrent batches take row locks in the same order.
    let mut rows: BTreeMap<(i64, &str, &str, &str), &SaveJob> = BTreeMap::new();
    for job in jobs {
        let k = &job.key;
        rows.insert((k.provet_id, &k.client_id, &k.scope, &k.subject), job);
    }
    let checked: BTreeMap<i64, (&str, DateTime<Utc>)> = jobs
        .iter()
        .filter_map(|j| {
            Some((
                j.key.provet_id,
                (j.key.client_id.as_str(), j.credentials_ok?),
            ))
        })
        .collect();
    let _writer = db.sqlite_write_lock().await;
    let tx = crate::events::begin_immediate(&db.cache).await?;
    let turned_ok = if checked.is_empty() {
        Vec::new()
    } else {
        crate::events::lock_tenants(&tx, checked.keys().copied()).await?;
        crate::state_events::credentials_turning_ok(&tx, &checked).await?
    };
    token::Entity::insert_many(rows.values().map(|j| j.row.clone()))
        .on_conflict(token_upsert())
        .exec_without_returning(&tx)
        .await?;
    let written = crate::state_events::credentials_ok(&tx, &turned_ok, &checked).await?;
    if !checked.is_empty() {
        let pairs = checked.iter().map(|(provet_id, (client_id, _))| {
            Expr::tuple([Expr::val(*provet_id), Expr::val(*client_id)])
        });
        let at = checked.values().map(|(_, at)| *at).max();
        client::Entity::update_many()
            .col_expr(
                client::Column::CredentialsState,
                CredentialsState::Ok.into(),
            )
            .col_expr(client::Column::CredentialsCheckedAt, at.into())
            .col_expr(
                client::Column::CredentialsLastError,
                Option::<String>::None.into(),
            )
            .filter(
                Expr::tuple([
                    Expr::col(client::Column::ProvetId),
                    Expr::col(client::Column::ClientId),
                ])
                .is_in(pairs),
            )
            .exec(&tx)
            .await?;
    }
    release_all(&tx, jobs.iter().filter_map(|j| j.lease.as_ref())).await?;
    tx.commit().await?;
    db.published(&written);
    Ok(())
}
