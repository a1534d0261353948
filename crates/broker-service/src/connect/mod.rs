//! The connect flow for authorization-code tenants: a clinic user's browser is sent to the
//! provider with a one-time `state`, a PKCE challenge and (for OpenID Connect) a `nonce`;
//! the callback exchanges the code, checks the ID token, and stores the grant. State lives
//! in the database, so the callback may land on any replica.
//!
//! `mod.rs` is the use case (`ConnectFlow`), its settings and starting a connection;
//! `callback.rs` the browser's return (code exchange, ID-token check, the grant stored);
//! `grants.rs` revoking a grant; `return_to.rs` where the browser may be sent afterwards.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use std::sync::Arc;

use broker_oauth::authorize::{AuthorizeRequest, Pkce};
use broker_store::{NewAuthorization, Store, TokenClientRecord};
use chrono::{DateTime, Utc};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::discovery::Discovery;
use crate::tokens::TokenBroker;
use crate::{Clock, Metrics, StoreError};

mod callback;
mod grants;
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
    /// Clock skew tolerated on ID tokens.
    pub leeway: Duration,
}

impl Default for OAuthSettings {
    fn default() -> Self {
        Self {
            callback_url: "http://127.0.0.1:8080/oauth/callback".into(),
            allowed_return_to: ReturnToPolicy::default(),
            authorization_ttl: Duration::from_secs(600),
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

/// Connects a clinic user's Provet account: `start` sends the browser to the provider,
/// `complete` takes it back and stores the grant.
pub struct ConnectFlow {
    settings: OAuthSettings,
    store: Store,
    /// The provider client, token lifetimes, the allowed scopes, and the cache to clear.
    tokens: Arc<TokenBroker>,
    /// The issuer and keys ID tokens are checked against.
    discovery: Arc<Discovery>,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
}

impl ConnectFlow {
    pub fn new(
        settings: OAuthSettings,
        store: Store,
        tokens: Arc<TokenBroker>,
        discovery: Arc<Discovery>,
        metrics: Arc<Metrics>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            settings,
            store,
            tokens,
            discovery,
            metrics,
            clock,
        }
    }

    pub fn settings(&self) -> &OAuthSettings {
        &self.settings
    }

    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }
    /// Starts an authorization for the tenant: the URL to send the clinic user's browser to.
    pub async fn start(
        &self,
        provet_id: i64,
        return_to: Option<String>,
        scope: Option<String>,
    ) -> Result<AuthorizationStart, AuthorizationError> {
        // The normalised URL is stored: the browser never goes to the raw string.
        let return_to = return_to
            .map(|r| self.settings.allowed_return_to.check(&r))
            .transpose()?;
        let client = self.connectable_client(provet_id).await?;
        let (scope, openid) = self.authorization_scope(&client, scope)?;
        let callback = &self.settings.callback_url;
        let state = random_token(32);
        let pkce = Pkce::new_s256();
        let nonce = openid.then(|| random_token(16));
        let now = self.now();
        let expires_at = now
            + chrono::Duration::from_std(self.settings.authorization_ttl)
                .unwrap_or(chrono::Duration::minutes(10));
        let url = AuthorizeRequest {
            authorize_url: &client.authorize_url,
            client_id: &client.client_id,
            redirect_uri: callback,
            scope: &scope,
            state: &state,
            code_challenge: &pkce.challenge,
            nonce: nonce.as_deref(),
        }
        .url()
        .map_err(|e| {
            AuthorizationError::Misconfigured(format!("the tenant's authorize_url: {e}"))
        })?;
        self.store
            .grants()
            .create_authorization(
                NewAuthorization {
                    state_hash: &state_hash(&state),
                    provet_id,
                    client_id: &client.client_id,
                    pkce_verifier: &pkce.verifier,
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

    /// The tenant's client, if a clinic user can connect it: an active authorization-code
    /// tenant whose redirect URIs include the broker's callback.
    async fn connectable_client(
        &self,
        provet_id: i64,
    ) -> Result<TokenClientRecord, AuthorizationError> {
        let client = match self.store.tokens().token_client(provet_id).await? {
            Some(c) if c.tenant_status == broker_domain::TenantStatus::Active => c,
            _ => return Err(AuthorizationError::TenantNotFound(provet_id)),
        };
        if client.grant_type != broker_domain::GrantType::AuthorizationCode {
            return Err(AuthorizationError::Misconfigured(format!(
                "tenant {provet_id} uses the {} grant: it needs no clinic user to connect",
                client.grant_type
            )));
        }
        let callback = &self.settings.callback_url;
        if !client.redirect_uris.iter().any(|u| u == callback) {
            return Err(AuthorizationError::Misconfigured(format!(
                "the broker's callback {callback} is not among the tenant's redirect URIs; add it to the integration's redirect URIs at Provet (or set server.public_url)"
            )));
        }
        Ok(client)
    }

    /// The scope to ask for (the caller's, else `openid restapi` for an OpenID Connect client
    /// and `restapi` otherwise), checked against the allowed scopes; and whether it asks for
    /// an ID token, which only a client with an ID-token algorithm can verify.
    fn authorization_scope(
        &self,
        client: &TokenClientRecord,
        scope: Option<String>,
    ) -> Result<(String, bool), AuthorizationError> {
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
        Ok((scope, openid))
    }
}
