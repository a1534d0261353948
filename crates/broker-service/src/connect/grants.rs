//! Revoking a grant: at the provider when it can, and here.

use broker_oauth::token as oauth;
use broker_store::GrantChange;

use super::ConnectFlow;
use crate::StoreError;

impl ConnectFlow {
    /// Revokes one grant: at the provider when discovery gave a revocation endpoint (a
    /// failure there is logged, not fatal), then here. False when there is no such grant.
    pub async fn revoke_grant(&self, provet_id: i64, subject: &str) -> Result<bool, StoreError> {
        let Some(client) = self.store.tokens().token_client(provet_id).await? else {
            return Ok(false);
        };
        let Some(grant) = self
            .store
            .grants()
            .grant(provet_id, &client.client_id, Some(subject))
            .await?
        else {
            return Ok(false);
        };
        if let (Some(refresh_token), Some(endpoint)) =
            (&grant.refresh_token, &client.revocation_endpoint)
        {
            match oauth::revoke(
                &self.tokens.upstream,
                endpoint,
                &crate::tokens::token_client(&client),
                refresh_token,
            )
            .await
            {
                Ok(()) => {
                    tracing::info!(provet_id, subject, "refresh token revoked at the provider")
                }
                Err(e) => {
                    tracing::warn!(provet_id, subject, error = %e, "revocation at the provider failed; revoking here anyway")
                }
            }
        }
        let now = self.now();
        self.store
            .grants()
            .set_grant_state(
                provet_id,
                &client.client_id,
                subject,
                GrantChange {
                    state: broker_domain::GrantState::Revoked,
                    error: Some("revoked by an operator"),
                    reason: None,
                },
                now,
            )
            .await?;
        self.tokens.forget(provet_id);
        Ok(true)
    }
}
