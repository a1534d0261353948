//! Refresh-token rotation for authorization-code tenants. Provet's refresh tokens rotate on
//! every use with no grace period, so: one refresh per grant at a time (the single flight in
//! this process, the lease across replicas); the grant is read again once the lease is
//! held; the rotated refresh token and the new access token are committed, with a
//! compare-and-set on the refresh token that was used, before anyone gets the token.

use broker_oauth::token::{self as oauth, TokenError};
use broker_store::{
    GrantChange, GrantRecord, StoreError, StoredToken, TokenClientRecord, TokenKey, TokenLease,
};
use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;

use super::lease::Turn;
use super::policy::RequestContext;
use super::{BrokeredToken, Source, TokenBroker, TokenBrokerError, answer, reconnect};

enum RefreshFailure {
    /// The grant cannot be used any more: a clinic user must connect again.
    GrantLost(String),
    Token(TokenError),
    Store(StoreError),
}

impl From<StoreError> for RefreshFailure {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

impl TokenBroker {
    /// The grant's cached access token, or a refresh.
    pub(super) async fn refresh_grant(
        &self,
        client: &TokenClientRecord,
        key: &TokenKey,
        ctx: &RequestContext,
    ) -> Result<BrokeredToken, TokenBrokerError> {
        let provet_id = key.provet_id;
        let (lease, stored) = match self.take_turn(key, ctx).await? {
            Turn::Served(token) => return Ok(token),
            Turn::Ours { lease, stored } => (lease, stored),
        };
        let result = self.refresh_holding(client, key, &lease).await;
        if result.is_err() {
            // On success the lease went with the commit.
            self.store.tokens().release_token_lease(&lease).await?;
        }
        match result {
            Ok(token) => {
                self.memory.remember(key, &token, self.now());
                self.memory.clear_backoff(provet_id);
                Ok(answer(key, &token, Source::Provider))
            }
            Err(RefreshFailure::GrantLost(detail)) => {
                self.memory.forget(provet_id);
                Err(reconnect(provet_id, &detail))
            }
            Err(RefreshFailure::Token(e)) => {
                self.token_failed(client, key, stored.as_ref(), ctx, e, self.now())
                    .await
            }
            Err(RefreshFailure::Store(e)) => Err(e.into()),
        }
    }

    /// Refreshes while holding the lease. On `invalid_grant` the grant is read once more, in
    /// case it was rotated meanwhile; only a second refusal marks it
    /// `reauthorization_required`.
    async fn refresh_holding(
        &self,
        client: &TokenClientRecord,
        key: &TokenKey,
        lease: &TokenLease,
    ) -> Result<StoredToken, RefreshFailure> {
        let mut retried = false;
        loop {
            let grant = self
                .store
                .grants()
                .grant(key.provet_id, &key.client_id, Some(&key.subject))
                .await?
                .filter(|g| g.state == broker_domain::GrantState::Active)
                .ok_or_else(|| RefreshFailure::GrantLost("the grant is no longer active".into()))?;
            let Some(refresh_token) = grant.refresh_token.clone() else {
                return Err(RefreshFailure::GrantLost(
                    "the provider gave no refresh token".into(),
                ));
            };
            let started = self.clock.instant();
            let result = oauth::refresh(
                &self.upstream,
                &super::token_client(client),
                &refresh_token,
                &grant.scope,
            )
            .await;
            let now = self.now();
            match result {
                Ok(issued) => {
                    self.metrics
                        .upstream_token_request("ok", "2xx", self.clock.since(started));
                    self.metrics.refresh(if retried { "retried" } else { "ok" });
                    return self.save_refresh(&grant, &issued, key, lease, now).await;
                }
                Err(e) if e.is_invalid_grant() => {
                    self.metrics.upstream_token_request(
                        "rejected",
                        e.answer_class(),
                        self.clock.since(started),
                    );
                    let current = self
                        .store
                        .grants()
                        .grant(key.provet_id, &key.client_id, Some(&key.subject))
                        .await?;
                    let rotated = current
                        .as_ref()
                        .and_then(|g| g.refresh_token.as_ref())
                        .is_some_and(|t| t.expose_secret() != refresh_token.expose_secret());
                    if rotated && !retried {
                        retried = true;
                        tracing::warn!(
                            provet_id = key.provet_id,
                            "invalid_grant with a refresh token rotated meanwhile; retrying with the newer one"
                        );
                        continue;
                    }
                    self.metrics.refresh("invalid_grant");
                    return Err(self.grant_lost(key, &e, now).await?);
                }
                Err(e) => {
                    let outcome = super::client_credentials::error_outcome(&e);
                    self.metrics.upstream_token_request(
                        outcome,
                        e.answer_class(),
                        self.clock.since(started),
                    );
                    self.metrics.refresh(outcome);
                    return Err(RefreshFailure::Token(e));
                }
            }
        }
    }

    /// Commits the rotated refresh token and the new access token (a compare-and-set on the
    /// refresh token used).
    async fn save_refresh(
        &self,
        grant: &GrantRecord,
        issued: &oauth::IssuedToken,
        key: &TokenKey,
        lease: &TokenLease,
        now: DateTime<Utc>,
    ) -> Result<StoredToken, RefreshFailure> {
        let token = self.stored_token(issued, now);
        let saved = self
            .store
            .grants()
            .save_refreshed_grant(
                grant,
                issued.refresh_token.as_ref(),
                key,
                &token,
                Some(lease),
                now,
            )
            .await?;
        if saved {
            tracing::info!(provet_id = key.provet_id, subject = %key.subject, "refreshed a grant");
        } else {
            // Someone rotated the grant while our lease ran out; theirs is the one stored.
            // Our access token is still good to hand out.
            tracing::warn!(provet_id = key.provet_id, subject = %key.subject, "the grant was rotated elsewhere during this refresh; kept the other rotation");
        }
        Ok(token)
    }

    /// The provider refused the grant for good: a clinic user must connect again.
    async fn grant_lost(
        &self,
        key: &TokenKey,
        error: &TokenError,
        now: DateTime<Utc>,
    ) -> Result<RefreshFailure, StoreError> {
        let detail = format!("the provider answered {error}");
        self.store
            .grants()
            .set_grant_state(
                key.provet_id,
                &key.client_id,
                &key.subject,
                GrantChange {
                    state: broker_domain::GrantState::ReauthorizationRequired,
                    error: Some(&detail),
                    reason: Some("invalid_grant"),
                },
                now,
            )
            .await?;
        tracing::warn!(provet_id = key.provet_id, subject = %key.subject, "grant lost: reauthorization required");
        Ok(RefreshFailure::GrantLost(detail))
    }
}
