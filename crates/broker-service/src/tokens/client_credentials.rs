//! Tokens for client_credentials tenants: the rejected cool-down, the request, and what a
//! provider's refusal or outage means (credentials marked rejected, backoff, stale serving).

use std::time::Duration;

use broker_oauth::token::{self as oauth, TokenError};
use broker_store::{StoredToken, TokenClientRecord, TokenKey};
use chrono::{DateTime, Utc};
use rand::Rng;

use super::lease::Turn;
use super::policy::{self, RequestContext};
use super::{BrokeredToken, Source, TokenBroker, TokenBrokerError, answer};

impl TokenBroker {
    pub(super) async fn fetch_client_credentials(
        &self,
        client: &TokenClientRecord,
        key: &TokenKey,
        ctx: &RequestContext,
    ) -> Result<BrokeredToken, TokenBrokerError> {
        let rejected_at = (client.credentials_state == broker_domain::CredentialsState::Rejected)
            .then_some(client.credentials_checked_at)
            .flatten();
        if policy::in_cooldown(rejected_at, ctx, self.now(), &self.settings) {
            return Err(TokenBrokerError::Rejected {
                code: "invalid_client".into(),
                description: Some(
                    "the provider rejected this client's credentials recently; a new hookup or a credential check tries again".into(),
                ),
            });
        }
        let (lease, stored) = match self.take_turn(key, ctx).await? {
            Turn::Served(token) => return Ok(token),
            Turn::Ours { lease, stored } => (lease, stored),
        };
        let result = self.request_token(client, &key.scope).await;
        let now = self.now();
        match result {
            Ok(issued) => {
                let token = self.stored_token(&issued, now);
                let check_passed = client.credentials_state != broker_domain::CredentialsState::Ok;
                let saved = self
                    .store
                    .tokens()
                    .save_token(key, &token, Some(&lease), check_passed.then_some(now))
                    .await;
                if let Err(e) = saved {
                    let _ = self.store.tokens().release_token_lease(&lease).await;
                    return Err(e.into());
                }
                if check_passed {
                    self.memory.credentials_ok(key.provet_id);
                }
                self.memory.remember(key, &token, now);
                self.memory.clear_backoff(key.provet_id);
                Ok(answer(key, &token, Source::Provider))
            }
            Err(e) => {
                self.store.tokens().release_token_lease(&lease).await?;
                self.token_failed(client, key, stored.as_ref(), ctx, e, now)
                    .await
            }
        }
    }

    async fn request_token(
        &self,
        client: &TokenClientRecord,
        scope: &str,
    ) -> Result<oauth::IssuedToken, TokenError> {
        let started = self.clock.instant();
        let result =
            oauth::client_credentials(&self.upstream, &super::token_client(client), scope).await;
        self.metrics.upstream_token_request(
            outcome(&result),
            result
                .as_ref()
                .map_or_else(TokenError::answer_class, |_| "2xx"),
            self.clock.since(started),
        );
        match &result {
            Ok(_) => {
                tracing::debug!(provet_id = client.provet_id, client_id = %client.client_id, "fetched a token from the provider")
            }
            Err(e) => {
                tracing::warn!(provet_id = client.provet_id, client_id = %client.client_id, error = %e, "token request failed")
            }
        }
        result
    }

    /// What a provider's refusal or failure means for the caller and the tenant.
    pub(super) async fn token_failed(
        &self,
        client: &TokenClientRecord,
        key: &TokenKey,
        stored: Option<&StoredToken>,
        ctx: &RequestContext,
        error: TokenError,
        now: DateTime<Utc>,
    ) -> Result<BrokeredToken, TokenBrokerError> {
        let bad_client = error.is_bad_client();
        match error {
            TokenError::Rejected { code, description } if bad_client => {
                let reason = format!("the provider answered {code}");
                self.store
                    .tokens()
                    .set_credentials_state(
                        client.provet_id,
                        &client.client_id,
                        broker_domain::CredentialsState::Rejected,
                        Some(&reason),
                        now,
                    )
                    .await?;
                self.memory.forget(client.provet_id);
                Err(TokenBrokerError::Rejected { code, description })
            }
            TokenError::Rejected { code, description } => {
                Err(TokenBrokerError::Rejected { code, description })
            }
            TokenError::Misconfigured(m) => Err(TokenBrokerError::Misconfigured(m)),
            TokenError::Unavailable {
                reason,
                retry_after,
                ..
            } => {
                let wait = self.back_off(client.provet_id, retry_after);
                self.serve_stale_or(
                    key,
                    stored,
                    ctx,
                    TokenBrokerError::Unavailable {
                        reason,
                        retry_after: wait,
                    },
                )
            }
        }
    }

    pub(super) fn serve_stale_or(
        &self,
        key: &TokenKey,
        stored: Option<&StoredToken>,
        ctx: &RequestContext,
        error: TokenBrokerError,
    ) -> Result<BrokeredToken, TokenBrokerError> {
        match stored {
            Some(token) if policy::serve_stale(Some(token), ctx, self.now()) => {
                Ok(answer(key, token, Source::Database))
            }
            _ => Err(error),
        }
    }

    /// One more failure for the tenant: the wait before the next request.
    fn back_off(&self, provet_id: i64, retry_after: Option<Duration>) -> Duration {
        let now = self.now();
        let jitter: f64 = rand::rng().random();
        let mut wait = Duration::ZERO;
        self.memory.failed(provet_id, |failures| {
            wait = policy::backoff(failures, retry_after, self.settings.max_backoff, jitter);
            now.checked_add_signed(policy::to_chrono(wait))
                .unwrap_or(DateTime::<Utc>::MAX_UTC)
        });
        wait
    }
}

fn outcome<T>(result: &Result<T, TokenError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(e) => error_outcome(e),
    }
}

pub(super) fn error_outcome(e: &TokenError) -> &'static str {
    match e {
        TokenError::Rejected { .. } => "rejected",
        TokenError::Unavailable { .. } => "unavailable",
        TokenError::Misconfigured(_) => "misconfigured",
    }
}
