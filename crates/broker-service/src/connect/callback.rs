//! The browser's return from the provider: the one-time state is taken, the code exchanged
//! with the PKCE verifier, the ID token checked, and the grant stored.

use broker_oauth::id_token::{self, Expected, FoundKey, IdTokenError, KeyNeeded};
use broker_oauth::token::{self as oauth, IssuedToken, TokenError};
use broker_store::{AuthorizationRecord, TakenAuthorization, TokenClientRecord, TokenKey};
use chrono::{DateTime, Utc};

use super::{CallbackError, ConnectFlow, Connected, random_token, state_hash};

impl ConnectFlow {
    /// The browser came back from the provider.
    pub async fn complete(
        &self,
        state: Option<&str>,
        code: Option<&str>,
        error: Option<&str>,
        error_description: Option<&str>,
    ) -> Result<Connected, CallbackError> {
        let result = self.callback(state, code, error, error_description).await;
        match &result {
            Ok(c) => {
                self.metrics.authorization("completed");
                tracing::info!(provet_id = c.provet_id, subject = %c.subject, "clinic connected");
            }
            Err(e) => {
                self.metrics.authorization("failed");
                tracing::warn!(error = %e, "authorization callback failed");
            }
        }
        result
    }

    async fn callback(
        &self,
        state: Option<&str>,
        code: Option<&str>,
        error: Option<&str>,
        error_description: Option<&str>,
    ) -> Result<Connected, CallbackError> {
        let state = state
            .filter(|s| !s.is_empty() && s.len() <= 256)
            .ok_or(CallbackError::MissingState)?;
        let now = self.now();
        let auth = self.take_authorization(state, now).await?;
        if let Some(error) = error {
            return Err(CallbackError::ProviderError {
                error: error.chars().take(64).collect(),
                description: error_description.map(|d| d.chars().take(200).collect()),
            });
        }
        let code = code
            .filter(|c| !c.is_empty())
            .ok_or(CallbackError::MissingCode)?;
        let client = self.client_of(&auth).await?;
        let issued = self.exchange_code(&client, &auth, code).await?;
        let openid = auth.scope.split(' ').any(|s| s == "openid");
        let subject = match (&issued.id_token, openid) {
            (Some(token), _) => {
                self.check_id_token(&client, token, auth.nonce.as_deref(), now)
                    .await?
            }
            (None, true) => return Err(CallbackError::IdToken("the provider sent none".into())),
            // Without OpenID Connect there is no user identity: each connection is its own.
            (None, false) => format!("grant-{}", random_token(9)),
        };
        let key = TokenKey {
            provet_id: client.provet_id,
            client_id: client.client_id.clone(),
            scope: auth.scope.clone(),
            subject: subject.clone(),
        };
        let access = self.tokens.stored_token(&issued, now);
        self.store
            .grants()
            .save_grant(
                (&client.provet_id, &client.client_id, &subject),
                issued.refresh_token.as_ref(),
                &auth.scope,
                &key,
                &access,
                now,
            )
            .await?;
        self.tokens.forget(client.provet_id);
        Ok(Connected {
            provet_id: client.provet_id,
            subject,
            return_to: auth.return_to,
        })
    }

    /// Takes the one-time authorization that `state` names, if it is known, live and unused.
    async fn take_authorization(
        &self,
        state: &str,
        now: DateTime<Utc>,
    ) -> Result<AuthorizationRecord, CallbackError> {
        match self
            .store
            .grants()
            .take_authorization(&state_hash(state), now)
            .await?
        {
            TakenAuthorization::Taken(a) => Ok(a),
            TakenAuthorization::Unknown => Err(CallbackError::UnknownState),
            TakenAuthorization::Expired => Err(CallbackError::ExpiredState),
            TakenAuthorization::AlreadyUsed => Err(CallbackError::ReplayedState),
        }
    }

    /// The tenant's client, unless the tenant was removed or its client replaced since the
    /// authorization started.
    async fn client_of(
        &self,
        auth: &AuthorizationRecord,
    ) -> Result<TokenClientRecord, CallbackError> {
        match self.store.tokens().token_client(auth.provet_id).await? {
            Some(c)
                if c.tenant_status == broker_domain::TenantStatus::Active
                    && c.client_id == auth.client_id =>
            {
                Ok(c)
            }
            _ => Err(CallbackError::ClientChanged),
        }
    }

    /// Exchanges the code with the authorization's PKCE verifier and redirect URI.
    async fn exchange_code(
        &self,
        client: &TokenClientRecord,
        auth: &AuthorizationRecord,
        code: &str,
    ) -> Result<IssuedToken, CallbackError> {
        oauth::exchange_code(
            &self.tokens.upstream,
            &crate::tokens::token_client(client),
            code,
            &auth.pkce_verifier,
            &auth.redirect_uri,
        )
        .await
        .map_err(|e| match e {
            TokenError::Unavailable { reason, .. } => CallbackError::ExchangeUnavailable(reason),
            other => CallbackError::ExchangeRejected(other.to_string()),
        })
    }

    /// Verifies an ID token; answers its subject.
    async fn check_id_token(
        &self,
        client: &TokenClientRecord,
        token: &str,
        nonce: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<String, CallbackError> {
        let bad = |e: IdTokenError| CallbackError::IdToken(e.to_string());
        // The issuer is the discovered one; discover now if that has not happened yet.
        let issuer = match &client.issuer {
            Some(i) => i.clone(),
            None => self
                .discovery
                .discover_now(client.provet_id)
                .await?
                .and_then(|d| d.issuer)
                .ok_or_else(|| {
                    CallbackError::IdToken(
                        "the tenant's OpenID Connect discovery has not succeeded".into(),
                    )
                })?,
        };
        let expected = Expected {
            issuer: &issuer,
            client_id: &client.client_id,
            nonce,
            leeway: self.settings.leeway.as_secs(),
            now: now.timestamp(),
        };
        let key = match id_token::key_needed(client.algorithm, token).map_err(bad)? {
            KeyNeeded::ClientSecret => FoundKey::ClientSecret(client.client_secret.as_ref()),
            KeyNeeded::Jwk(kid) => FoundKey::Jwk(
                self.discovery
                    .jwk(client.provet_id, &kid)
                    .await?
                    .ok_or_else(|| bad(IdTokenError::UnknownKey(kid.clone())))?,
            ),
        };
        let claims = id_token::verify_with(token, key, &expected).map_err(bad)?;
        claims
            .sub
            .filter(|s| !s.is_empty() && s.len() <= 255)
            .ok_or_else(|| CallbackError::IdToken("it has no usable `sub`".into()))
    }
}
