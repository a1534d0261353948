//! Authorizations in flight and the grants they produce. A refresh stores the rotated
//! refresh token and the new access token in one transaction.

use std::sync::Arc;

use broker_domain::GrantState;
use chrono::{DateTime, Utc};
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ColumnTrait, Condition, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set,
    TransactionTrait,
};
use secrecy::{ExposeSecret, SecretString};

use crate::crypto::aad;
use crate::db::Db;
use crate::entity::{authorization, grant, token};
use crate::records::{
    AuthorizationRecord, GrantRecord, NewAuthorization, StoredToken, TakenAuthorization, TokenKey,
};
use crate::token_leases::release_all;
use crate::tokens::{token_row, token_upsert};
use crate::{Keyring, Result, TokenLease};

/// Authorizations in flight and clinic users' grants.
#[derive(Clone)]
pub struct Grants {
    db: Db,
    keyring: Arc<Keyring>,
}

impl Grants {
    pub(crate) fn new(db: Db, keyring: Arc<Keyring>) -> Self {
        Self { db, keyring }
    }

    pub async fn create_authorization(
        &self,
        a: NewAuthorization<'_>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let row = authorization::ActiveModel {
            state_hash: Set(a.state_hash.to_owned()),
            provet_id: Set(a.provet_id),
            client_id: Set(a.client_id.to_owned()),
            pkce_verifier: Set(self.keyring.seal(
                &aad::pkce_verifier(a.state_hash),
                a.pkce_verifier.expose_secret(),
            )),
            nonce: Set(a.nonce.map(str::to_owned)),
            scope: Set(a.scope.to_owned()),
            redirect_uri: Set(a.redirect_uri.to_owned()),
            return_to: Set(a.return_to.map(str::to_owned)),
            created_at: Set(now),
            expires_at: Set(a.expires_at),
            used_at: Set(None),
        };
        let _writer = self.db.sqlite_write_lock().await;
        authorization::Entity::insert(row)
            .exec_without_returning(&self.db.main)
            .await?;
        // Old, finished or expired authorizations are of no further use.
        authorization::Entity::delete_many()
            .filter(authorization::Column::ExpiresAt.lt(now - chrono::Duration::days(1)))
            .exec(&self.db.main)
            .await?;
        Ok(())
    }

    /// Marks the state used (once, on any replica) and returns what it was for.
    pub async fn take_authorization(
        &self,
        state_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<TakenAuthorization> {
        let taken = {
            let _writer = self.db.sqlite_write_lock().await;
            authorization::Entity::update_many()
                .col_expr(authorization::Column::UsedAt, Some(now).into())
                .filter(authorization::Column::StateHash.eq(state_hash))
                .filter(authorization::Column::UsedAt.is_null())
                .filter(authorization::Column::ExpiresAt.gt(now))
                .exec(&self.db.main)
                .await?
                .rows_affected
                == 1
        };
        let Some(row) = authorization::Entity::find_by_id(state_hash.to_owned())
            .one(&self.db.main)
            .await?
        else {
            return Ok(TakenAuthorization::Unknown);
        };
        if !taken {
            return Ok(if row.expires_at <= now && row.used_at.is_none() {
                TakenAuthorization::Expired
            } else {
                TakenAuthorization::AlreadyUsed
            });
        }
        // The verifier is needed once; wipe it now.
        let verifier = self
            .keyring
            .open(&aad::pkce_verifier(state_hash), &row.pkce_verifier)?;
        authorization::Entity::update_many()
            .col_expr(authorization::Column::PkceVerifier, String::new().into())
            .filter(authorization::Column::StateHash.eq(state_hash))
            .exec(&self.db.main)
            .await?;
        Ok(TakenAuthorization::Taken(AuthorizationRecord {
            provet_id: row.provet_id,
            client_id: row.client_id,
            pkce_verifier: verifier,
            nonce: row.nonce,
            scope: row.scope,
            redirect_uri: row.redirect_uri,
            return_to: row.return_to,
        }))
    }

    /// Stores a grant's new refresh token (when one came) and its new access token in one
    /// transaction, so that a rotated refresh token is never lost.
    pub async fn save_grant(
        &self,
        grant_key: (&i64, &str, &str),
        refresh_token: Option<&SecretString>,
        scope: &str,
        token_key: &TokenKey,
        access: &StoredToken,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let (provet_id, client_id, subject) = (*grant_key.0, grant_key.1, grant_key.2);
        let sealed = refresh_token.map(|r| {
            self.keyring.seal(
                &aad::refresh_token(provet_id, client_id, subject),
                r.expose_secret(),
            )
        });
        let _writer = self.db.sqlite_write_lock().await;
        let tx = crate::events::begin_immediate(&self.db.main).await?;
        crate::events::lock_tenant(&tx, provet_id).await?;
        let mut update = vec![
            grant::Column::Scope,
            grant::Column::State,
            grant::Column::UpdatedAt,
            grant::Column::LastRefreshAt,
            grant::Column::LastError,
        ];
        if sealed.is_some() {
            update.push(grant::Column::RefreshToken);
        }
        grant::Entity::insert(grant::ActiveModel {
            provet_id: Set(provet_id),
            client_id: Set(client_id.to_owned()),
            subject: Set(subject.to_owned()),
            refresh_token: Set(sealed),
            scope: Set(scope.to_owned()),
            state: Set(GrantState::Active),
            created_at: Set(now),
            updated_at: Set(now),
            last_refresh_at: Set(Some(now)),
            last_error: Set(None),
        })
        .on_conflict(
            OnConflict::columns([
                grant::Column::ProvetId,
                grant::Column::ClientId,
                grant::Column::Subject,
            ])
            .update_columns(update)
            .to_owned(),
        )
        .exec_without_returning(&tx)
        .await?;
        token::Entity::insert(token_row(&self.keyring, token_key, access))
            .on_conflict(token_upsert())
            .exec_without_returning(&tx)
            .await?;
        let connected = crate::events::NewEvent::new(
            provet_id,
            broker_domain::EventType::GrantConnected,
            serde_json::json!({ "subject": subject }),
            now,
        );
        crate::events::append(&tx, &connected).await?;
        tx.commit().await?;
        self.db.published(&[connected.event_type]);
        Ok(())
    }

    /// After a refresh: stores the rotated refresh token (when one came) and the new access
    /// token in one transaction, only if the grant still holds the refresh token that was
    /// used (`used`, as sealed when it was read): a compare-and-set, so that a rotation
    /// committed meanwhile by another holder is never overwritten with an older token.
    /// Releases the lease in the same transaction. Returns whether the grant was updated.
    pub async fn save_refreshed_grant(
        &self,
        grant: &GrantRecord,
        refresh_token: Option<&SecretString>,
        token_key: &TokenKey,
        access: &StoredToken,
        lease: Option<&TokenLease>,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let mut update = grant::Entity::update_many()
            .col_expr(grant::Column::UpdatedAt, now.into())
            .col_expr(grant::Column::LastRefreshAt, Some(now).into())
            .col_expr(grant::Column::LastError, Option::<String>::None.into());
        if let Some(r) = refresh_token {
            let sealed = self.keyring.seal(
                &aad::refresh_token(grant.provet_id, &grant.client_id, &grant.subject),
                r.expose_secret(),
            );
            update = update.col_expr(grant::Column::RefreshToken, Some(sealed).into());
        }
        let update = update
            .filter(grant::Column::ProvetId.eq(grant.provet_id))
            .filter(grant::Column::ClientId.eq(grant.client_id.as_str()))
            .filter(grant::Column::Subject.eq(grant.subject.as_str()))
            .filter(grant::Column::State.eq(GrantState::Active));
        let update = match &grant.refresh_seal {
            Some(seal) => update.filter(grant::Column::RefreshToken.eq(seal.as_str())),
            None => update.filter(grant::Column::RefreshToken.is_null()),
        };
        let _writer = self.db.sqlite_write_lock().await;
        let tx = self.db.main.begin().await?;
        let updated = update.exec(&tx).await?.rows_affected == 1;
        if updated {
            token::Entity::insert(token_row(&self.keyring, token_key, access))
                .on_conflict(token_upsert())
                .exec_without_returning(&tx)
                .await?;
        }
        if let Some(lease) = lease {
            release_all(&tx, std::iter::once(lease)).await?;
        }
        tx.commit().await?;
        Ok(updated)
    }

    /// One grant: `subject`'s, or the tenant's most recent (preferring active ones).
    pub async fn grant(
        &self,
        provet_id: i64,
        client_id: &str,
        subject: Option<&str>,
    ) -> Result<Option<GrantRecord>> {
        let mut q = grant::Entity::find()
            .filter(grant::Column::ProvetId.eq(provet_id))
            .filter(grant::Column::ClientId.eq(client_id));
        q = match subject {
            Some(s) => q.filter(grant::Column::Subject.eq(s)),
            None => q.filter(grant::Column::State.eq(GrantState::Active)),
        };
        let mut row = q
            .order_by_desc(grant::Column::CreatedAt)
            .limit(1)
            .one(&self.db.main)
            .await?;
        if row.is_none() && subject.is_none() {
            row = grant::Entity::find()
                .filter(grant::Column::ProvetId.eq(provet_id))
                .filter(grant::Column::ClientId.eq(client_id))
                .order_by_desc(grant::Column::CreatedAt)
                .one(&self.db.main)
                .await?;
        }
        row.map(|g| self.grant_record(g, true)).transpose()
    }

    fn grant_record(&self, g: grant::Model, open: bool) -> Result<GrantRecord> {
        let refresh_token = match (&g.refresh_token, open) {
            (Some(sealed), true) => Some(self.keyring.open(
                &aad::refresh_token(g.provet_id, &g.client_id, &g.subject),
                sealed,
            )?),
            _ => None,
        };
        Ok(GrantRecord {
            refresh_seal: g.refresh_token.clone(),
            provet_id: g.provet_id,
            client_id: g.client_id,
            subject: g.subject,
            refresh_token,
            scope: g.scope,
            state: g.state,
            created_at: g.created_at,
            last_refresh_at: g.last_refresh_at,
            last_error: g.last_error,
        })
    }

    /// Marks a grant (e.g. `reauthorization_required` after `invalid_grant`, or `revoked`),
    /// wiping its refresh token and tokens when it can no longer be used.
    pub async fn set_grant_state(
        &self,
        provet_id: i64,
        client_id: &str,
        subject: &str,
        change: GrantChange<'_>,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let GrantChange {
            state,
            error,
            reason,
        } = change;
        let _writer = self.db.sqlite_write_lock().await;
        let tx = crate::events::begin_immediate(&self.db.main).await?;
        crate::events::lock_tenant(&tx, provet_id).await?;
        let before =
            grant::Entity::find_by_id((provet_id, client_id.to_owned(), subject.to_owned()))
                .one(&tx)
                .await?;
        let mut update = grant::Entity::update_many()
            .col_expr(grant::Column::State, state.into())
            .col_expr(grant::Column::LastError, error.map(str::to_owned).into())
            .col_expr(grant::Column::UpdatedAt, now.into());
        if !state.is_active() {
            update = update.col_expr(grant::Column::RefreshToken, Option::<String>::None.into());
        }
        let changed = update
            .filter(grant::Column::ProvetId.eq(provet_id))
            .filter(grant::Column::ClientId.eq(client_id))
            .filter(grant::Column::Subject.eq(subject))
            .exec(&tx)
            .await?
            .rows_affected;
        if !state.is_active() {
            token::Entity::delete_many()
                .filter(token::Column::ProvetId.eq(provet_id))
                .filter(token::Column::ClientId.eq(client_id))
                .filter(token::Column::Subject.eq(subject))
                .exec(&tx)
                .await?;
        }
        let event = before.and_then(|g| crate::state_events::grant_event(g.state, state));
        if let Some(event_type) = event {
            let data = match event_type {
                broker_domain::EventType::GrantReauthorizationRequired => {
                    serde_json::json!({ "subject": subject, "reason": reason.unwrap_or("unknown") })
                }
                _ => serde_json::json!({ "subject": subject }),
            };
            crate::events::append(
                &tx,
                &crate::events::NewEvent::new(provet_id, event_type, data, now),
            )
            .await?;
        }
        tx.commit().await?;
        self.db.published(event.as_slice());
        Ok(changed == 1)
    }

    /// Active grants not refreshed since `before`: the keep-alive's work.
    pub async fn stale_grants(
        &self,
        before: DateTime<Utc>,
        limit: u64,
    ) -> Result<Vec<(i64, String)>> {
        Ok(grant::Entity::find()
            .filter(grant::Column::State.eq(GrantState::Active))
            .filter(
                Condition::any()
                    .add(grant::Column::LastRefreshAt.lt(before))
                    .add(grant::Column::LastRefreshAt.is_null()),
            )
            .order_by_asc(grant::Column::LastRefreshAt)
            .limit(limit)
            .all(&self.db.main)
            .await?
            .into_iter()
            .map(|g| (g.provet_id, g.subject))
            .collect())
    }
}

/// A grant's new state: the stored detail (`error`), and the stable code a
/// `grant.reauthorization_required` event carries (`reason`: ours, never the provider's free
/// text, hence `'static`).
#[derive(Clone, Copy, Debug)]
pub struct GrantChange<'a> {
    pub state: GrantState,
    pub error: Option<&'a str>,
    pub reason: Option<&'static str>,
}
