//! Whose turn it is to ask the provider: a backoff serves what is stored or refuses; else
//! this caller takes the token lease (replicas on PostgreSQL share it), waiting without a
//! database connection while another holds it, and reads what the holder stored.

use std::time::Duration;

use broker_store::{StoredToken, TokenKey, TokenLease};

use super::policy::{self, RequestContext};
use super::{BrokeredToken, Source, TokenBroker, TokenBrokerError, answer};

/// What `take_turn` found.
pub(super) enum Turn {
    Served(BrokeredToken),
    /// This caller holds the lease and must ask the provider; `stored` is what the database
    /// held when it was taken.
    Ours {
        lease: TokenLease,
        stored: Option<StoredToken>,
    },
}

impl TokenBroker {
    /// Before asking the provider: a stored token that will do is served; during a backoff
    /// a token that still meets `min_ttl` is served, else 503; otherwise this caller takes
    /// the lease (waiting, without holding a connection, while another replica has it) and
    /// looks again, as another replica may have stored a token meanwhile.
    pub(super) async fn take_turn(
        &self,
        key: &TokenKey,
        ctx: &RequestContext,
    ) -> Result<Turn, TokenBrokerError> {
        if let Some(b) = self.memory.backoff(key.provet_id)
            && b.until > self.now()
        {
            let stored = self.store.tokens().load_token(key).await?;
            let wait = (b.until - self.now()).to_std().unwrap_or_default();
            return self
                .serve_stale_or(
                    key,
                    stored.as_ref(),
                    ctx,
                    TokenBrokerError::Unavailable {
                        reason: "the provider failed recently; backing off".into(),
                        retry_after: wait.max(Duration::from_secs(1)),
                    },
                )
                .map(Turn::Served);
        }
        let started = self.clock.instant();
        let deadline = started + self.settings.lease_wait();
        let mut pause = Duration::from_millis(5);
        loop {
            let attempt = self
                .store
                .tokens()
                .try_token_lease(key, &self.owner, self.settings.lease_ttl())
                .await?;
            let now = self.now();
            if let Some(token) = attempt
                .stored
                .as_ref()
                .filter(|t| policy::will_do(t, ctx, now, &self.settings))
            {
                if let Some(lease) = &attempt.lease {
                    self.store.tokens().release_token_lease(lease).await?;
                }
                self.memory.remember(key, token, now);
                return Ok(Turn::Served(answer(key, token, Source::Database)));
            }
            if let Some(lease) = attempt.lease {
                self.metrics.token_lock_wait(self.clock.since(started));
                return Ok(Turn::Ours {
                    lease,
                    stored: attempt.stored,
                });
            }
            if self.clock.instant() + pause > deadline {
                return Err(TokenBrokerError::Unavailable {
                    reason: "another replica is still asking the provider".into(),
                    retry_after: Duration::from_secs(1),
                });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }
}
