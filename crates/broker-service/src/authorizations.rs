//! The connect flow for authorization-code tenants: a clinic user's browser is sent to the
//! provider with a one-time `state`, a PKCE challenge and (for OpenID Connect) a `nonce`;
//! the callback exchanges the code, checks the ID token, and stores the grant. State lives
//! in the database, so the callback may land on any replica.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use broker_domain::{GrantState, GrantType, SigningAlgorithm, TenantStatus};
use broker_oauth::id_token::{self, Expected, IdTokenError, VerificationKey};
use broker_oauth::token::{self as oauth, ClientAuth, TokenClient, TokenError};
use broker_store::{
    NewAuthorization, StoredToken, TakenAuthorization, TokenClientRecord, TokenKey,
};
use chrono::{DateTime, Utc};
use jsonwebtoken::Algorithm;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use crate::{Broker, StoreError};

pub mod return_to;

pub use return_to::{ReturnToConfigError, ReturnToError, ReturnToPolicy};

/// How the connect flow behaves.
#[derive(Clone, Debug)]
pub struct OAuthSettings {
    /// `{public_url}/oauth/callback`: must be one of each tenant's redirect URIs.
    pub callback_url: String,
    /// Where a `return_to` may point (`oauth.allowed_return_to`, parsed).
    pub allowed_return_to: ReturnToPolicy,
    /// How long a started authorization may wait for its callback.
    pub authorization_ttl: Duration,
    /// Grants not refreshed for this long are refreshed in the background.
    pub keepalive_after: Duration,
    /// How often the keep-alive looks for such grants.
    pub keepalive_interval: Duration,
    /// Clock skew tolerated on ID tokens.
    pub leeway: Duration,
}

impl Default for OAuthSettings {
    fn default() -> Self {
        Self {
            callback_url: "http://127.0.0.1:8080/oauth/callback".into(),
            allowed_return_to: ReturnToPolicy::default(),
            authorization_ttl: Duration::from_secs(600),
            keepalive_after: Duration::from_secs(20 * 24 * 3600),
            keepalive_interval: Duration::from_secs(3600),
            leeway: Duration::from_secs(60),
        }
    }
}

/// Where to send the clinic user's browser.
pub struct AuthorizationStart {
    pub authorize_url: String,
    pub expires_at: DateTime<Utc>,
}

/// What the callback did.
pub struct Connected {
    pub provet_id: i64,
    pub subject: String,
    pub return_to: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthorizationError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("return_to {0}")]
    ReturnTo(#[from] ReturnToError),
    #[error("tenant {0} is not registered")]
    TenantNotFound(i64),
    #[error("{0}")]
    Misconfigured(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a callback failed; shown to the clinic user on a 400 page.
#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    #[error("The link is missing its `state`. Start the connection again from your integration.")]
    MissingState,
    #[error("This connection link is unknown. Start the connection again from your integration.")]
    UnknownState,
    #[error(
        "This connection link has expired (links last 10 minutes). Start the connection again."
    )]
    ExpiredState,
    #[error("This connection link was already used. Start the connection again if you need to.")]
    ReplayedState,
    #[error("Provet did not grant access: {error}{}", description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    ProviderError {
        error: String,
        description: Option<String>,
    },
    #[error("The provider's answer had no authorization code.")]
    MissingCode,
    #[error("The clinic's integration changed while connecting. Start the connection again.")]
    ClientChanged,
    #[error("Provet refused the authorization code: {0}")]
    ExchangeRejected(String),
    #[error("Provet could not be reached to finish connecting: {0}. Try again in a minute.")]
    ExchangeUnavailable(String),
    #[error("The identity token from Provet failed verification: {0}")]
    IdToken(String),
    #[error("The connection could not be stored. Try again in a minute.")]
    Store(#[from] StoreError),
}

fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    URL_SAFE_NO_PAD.encode(buf)
}

fn state_hash(state: &str) -> String {
    hex::encode(Sha256::digest(state.as_bytes()))
}

impl Broker {
    /// Starts an authorization for the tenant: the URL to send the clinic user's browser to.
    pub async fn start_authorization(
        &self,
        provet_id: i64,
        return_to: Option<String>,
        scope: Option<String>,
    ) -> Result<AuthorizationStart, AuthorizationError> {
        // The normalised URL is stored: the browser never goes to the raw string.
        let return_to = return_to
            .map(|r| self.oauth.allowed_return_to.check(&r))
            .transpose()?;
        let client = match self.store.tokens().token_client(provet_id).await? {
            Some(c) if c.tenant_status == TenantStatus::Active => c,
            _ => return Err(AuthorizationError::TenantNotFound(provet_id)),
        };
        if client.grant_type != GrantType::AuthorizationCode {
            return Err(AuthorizationError::Misconfigured(format!(
                "tenant {provet_id} uses the {} grant: it needs no clinic user to connect",
                client.grant_type
            )));
        }
        let callback = &self.oauth.callback_url;
        if !client.redirect_uris.iter().any(|u| u == callback) {
            return Err(AuthorizationError::Misconfigured(format!(
                "the broker's callback {callback} is not among the tenant's redirect URIs; add it to the integration's redirect URIs at Provet (or set server.public_url)"
            )));
        }
        let default_scope = if client.algorithm.is_some() {
            "openid restapi"
        } else {
            "restapi"
        };
        let scope = crate::tokens::policy::scope(
            Some(scope.as_deref().unwrap_or(default_scope)),
            &self.tokens.settings.allowed_scopes,
        )
        .map_err(|e| AuthorizationError::InvalidRequest(e.to_string()))?;
        let openid = scope.split(' ').any(|s| s == "openid");
        if openid && client.algorithm.is_none() {
            return Err(AuthorizationError::InvalidRequest(
                "scope `openid` needs a client with an ID-token algorithm; this tenant's has none"
                    .into(),
            ));
        }
        let state = random_token(32);
        let (challenge, verifier) = oauth2::PkceCodeChallenge::new_random_sha256();
        let verifier = SecretString::from(verifier.secret().to_owned());
        let nonce = openid.then(|| random_token(16));
        let now = self.now();
        let expires_at = now
            + chrono::Duration::from_std(self.oauth.authorization_ttl)
                .unwrap_or(chrono::Duration::minutes(10));
        let mut url = url::Url::parse(&client.authorize_url).map_err(|e| {
            AuthorizationError::Misconfigured(format!("the tenant's authorize_url: {e}"))
        })?;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("response_type", "code")
                .append_pair("client_id", &client.client_id)
                .append_pair("redirect_uri", callback)
                .append_pair("scope", &scope)
                .append_pair("state", &state)
                .append_pair("code_challenge", challenge.as_str())
                .append_pair("code_challenge_method", "S256");
            if let Some(n) = &nonce {
                q.append_pair("nonce", n);
            }
        }
        self.store
            .grants()
            .create_authorization(
                NewAuthorization {
                    state_hash: &state_hash(&state),
                    provet_id,
                    client_id: &client.client_id,
                    pkce_verifier: &verifier,
                    nonce: nonce.as_deref(),
                    scope: &scope,
                    redirect_uri: callback,
                    return_to: return_to.as_deref(),
                    expires_at,
                },
                now,
            )
            .await?;
        self.metrics.authorization("started");
        tracing::info!(provet_id, "authorization started");
        Ok(AuthorizationStart {
            authorize_url: url.to_string(),
            expires_at,
        })
    }

    /// The browser came back from the provider.
    pub async fn complete_authorization(
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
        let auth = match self
            .store
            .grants()
            .take_authorization(&state_hash(state), now)
            .await?
        {
            TakenAuthorization::Taken(a) => a,
            TakenAuthorization::Unknown => return Err(CallbackError::UnknownState),
            TakenAuthorization::Expired => return Err(CallbackError::ExpiredState),
            TakenAuthorization::AlreadyUsed => return Err(CallbackError::ReplayedState),
        };
        if let Some(error) = error {
            return Err(CallbackError::ProviderError {
                error: error.chars().take(64).collect(),
                description: error_description.map(|d| d.chars().take(200).collect()),
            });
        }
        let code = code
            .filter(|c| !c.is_empty())
            .ok_or(CallbackError::MissingCode)?;
        let client = match self.store.tokens().token_client(auth.provet_id).await? {
            Some(c) if c.tenant_status == TenantStatus::Active && c.client_id == auth.client_id => {
                c
            }
            _ => return Err(CallbackError::ClientChanged),
        };
        let issued = oauth::exchange_code(
            &self.tokens.upstream,
            &token_client(&client),
            code,
            &auth.pkce_verifier,
            &auth.redirect_uri,
        )
        .await
        .map_err(|e| match e {
            TokenError::Unavailable { reason, .. } => CallbackError::ExchangeUnavailable(reason),
            other => CallbackError::ExchangeRejected(other.to_string()),
        })?;

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
        let access = StoredToken {
            expires_at: now
                .checked_add_signed(self.lifetime_of(&issued))
                .unwrap_or(DateTime::<Utc>::MAX_UTC),
            obtained_at: now,
            token_type: issued.token_type.clone(),
            access_token: issued.access_token.clone(),
            granted_scope: issued.scope.clone(),
        };
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
            leeway: self.oauth.leeway.as_secs(),
            now: now.timestamp(),
        };
        let claims = match client.algorithm {
            Some(SigningAlgorithm::Hs256) => {
                let secret = client.client_secret.as_ref().ok_or_else(|| {
                    CallbackError::IdToken(
                        "HS256 needs the client secret, which is not stored".into(),
                    )
                })?;
                id_token::verify(
                    token,
                    Algorithm::HS256,
                    VerificationKey::Secret(secret.expose_secret().as_bytes()),
                    &expected,
                )
                .map_err(bad)?
            }
            Some(SigningAlgorithm::Rs256) => {
                let (_, kid) = id_token::key_id(token).map_err(bad)?;
                let kid = kid.ok_or_else(|| {
                    CallbackError::IdToken("the ID token names no key (kid)".into())
                })?;
                let jwk = self
                    .jwk(client.provet_id, &kid)
                    .await?
                    .ok_or_else(|| bad(IdTokenError::UnknownKey(kid.clone())))?;
                let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk)
                    .map_err(|e| CallbackError::IdToken(format!("unusable JWK: {e}")))?;
                id_token::verify(
                    token,
                    Algorithm::RS256,
                    VerificationKey::Jwk(&jwk),
                    &expected,
                )
                .map_err(bad)?
            }
            _ => {
                return Err(CallbackError::IdToken(
                    "the client has no ID-token algorithm".into(),
                ));
            }
        };
        claims
            .sub
            .filter(|s| !s.is_empty() && s.len() <= 255)
            .ok_or_else(|| CallbackError::IdToken("it has no usable `sub`".into()))
    }
}

/// The token client for a tenant's current client.
pub(crate) fn token_client(client: &TokenClientRecord) -> TokenClient<'_> {
    TokenClient {
        token_url: &client.token_url,
        client_id: &client.client_id,
        client_secret: client.client_secret.as_ref(),
        auth: ClientAuth::from_advertised(&client.auth_methods),
    }
}

impl Broker {
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
                &token_client(&client),
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
                GrantState::Revoked,
                Some("revoked by an operator"),
                now,
            )
            .await?;
        self.tokens.forget(provet_id);
        Ok(true)
    }
}
