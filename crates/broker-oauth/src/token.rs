//! Token requests through the oauth2 crate, over `Upstream` (allowlist, timeouts, body cap):
//! form-encoded bodies, HTTP Basic client authentication with id and secret form-urlencoded
//! first (the oauth2 crate does that), or `client_secret_post`; public clients send only
//! their `client_id`.

use std::time::Duration;

use oauth2::basic::{BasicErrorResponseType, BasicTokenType};
use oauth2::{
    AuthType, AuthorizationCode, ClientId, ClientSecret, ExtraTokenFields, HttpRequest,
    HttpResponse, PkceCodeVerifier, RedirectUrl, RequestTokenError, Scope, StandardTokenResponse,
    TokenResponse, TokenUrl,
};
use secrecy::{ExposeSecret, SecretString};

use crate::{Upstream, UpstreamError};

/// How the client authenticates at the token endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// `client_secret_basic` (preferred).
    Basic,
    /// `client_secret_post`.
    Post,
}

impl ClientAuth {
    /// Basic unless the provider advertises only `client_secret_post`.
    pub fn from_advertised(methods: &[String]) -> Self {
        if methods.iter().any(|m| m == "client_secret_post")
            && !methods.iter().any(|m| m == "client_secret_basic")
        {
            Self::Post
        } else {
            Self::Basic
        }
    }
}

/// The client that asks.
pub struct TokenClient<'a> {
    pub token_url: &'a str,
    pub client_id: &'a str,
    pub client_secret: Option<&'a SecretString>,
    pub auth: ClientAuth,
}

/// The `id_token` an OpenID Connect provider adds to a token response.
#[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize)]
pub struct IdTokenField {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
}

impl ExtraTokenFields for IdTokenField {}

type OidcTokenResponse = StandardTokenResponse<IdTokenField, BasicTokenType>;

/// The longest lifetime a provider's `expires_in` (or a JWT's `exp`) may claim. Provet's
/// tokens live 10 hours; a larger number is believed only up to here, so that an absurd one
/// (`10^13` seconds) cannot overflow expiry arithmetic, and the token is simply refreshed
/// earlier than the provider would require.
pub const MAX_EXPIRES_IN: Duration = Duration::from_secs(10 * 24 * 3600);

/// The latest `exp` a JWT may claim (9999-12-31T23:59:59Z): later ones are read as this.
const MAX_JWT_EXP: u64 = 253_402_300_799;

/// A token the provider issued.
pub struct IssuedToken {
    /// The ID token, unverified, when the scope had `openid`.
    pub id_token: Option<String>,
    pub access_token: SecretString,
    pub token_type: String,
    /// `expires_in` as sent, if it was, at most `MAX_EXPIRES_IN`.
    pub expires_in: Option<Duration>,
    pub refresh_token: Option<SecretString>,
    /// The granted scope, space separated, if the provider said.
    pub scope: Option<String>,
}

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedToken")
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// Why no token came.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The provider answered with an OAuth error (`invalid_client`, `invalid_grant`, ...).
    #[error("the provider refused: {code}{}", description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Rejected {
        code: String,
        description: Option<String>,
    },
    /// Not reachable, too slow, 5xx, 429, or an answer that is not a token response.
    #[error("{reason}")]
    Unavailable {
        reason: String,
        retry_after: Option<Duration>,
        /// The HTTP status of the answer (5xx, 429), when one came.
        status: Option<u16>,
    },
    /// The token URL is not allowed by configuration.
    #[error("{0}")]
    Misconfigured(String),
}

impl TokenError {
    /// Whether the provider says the client's credentials are bad.
    pub fn is_bad_client(&self) -> bool {
        matches!(self, Self::Rejected { code, .. } if code == "invalid_client" || code == "unauthorized_client")
    }

    pub fn is_invalid_grant(&self) -> bool {
        matches!(self, Self::Rejected { code, .. } if code == "invalid_grant")
    }

    /// The provider's answer by HTTP status class, for the metrics: `4xx` for a refusal
    /// (OAuth errors come as 400 or 401), `429` and `5xx` for an overloaded or failing
    /// provider, `none` when no usable answer came (timeout, connection refused, a body
    /// that is not a token response, a URL the configuration does not allow).
    pub fn answer_class(&self) -> &'static str {
        match self {
            Self::Rejected { .. } => "4xx",
            Self::Unavailable {
                status: Some(429), ..
            } => "429",
            Self::Unavailable {
                status: Some(500..=599),
                ..
            } => "5xx",
            Self::Unavailable { .. } | Self::Misconfigured(_) => "none",
        }
    }
}

/// `grant_type=client_credentials`.
pub async fn client_credentials(
    upstream: &Upstream,
    client: &TokenClient<'_>,
    scope: &str,
) -> Result<IssuedToken, TokenError> {
    let oauth = oauth_client(upstream, client)?;
    let http = Http(upstream.clone());
    let result = oauth
        .exchange_client_credentials()
        .add_scopes(scope.split_whitespace().map(|s| Scope::new(s.to_owned())))
        .request_async(&http)
        .await;
    issued(result)
}

/// `grant_type=authorization_code`, with the PKCE verifier.
pub async fn exchange_code(
    upstream: &Upstream,
    client: &TokenClient<'_>,
    code: &str,
    verifier: &SecretString,
    redirect_uri: &str,
) -> Result<IssuedToken, TokenError> {
    let oauth = oauth_client(upstream, client)?.set_redirect_uri(
        RedirectUrl::new(redirect_uri.to_owned())
            .map_err(|e| TokenError::Misconfigured(format!("redirect_uri: {e}")))?,
    );
    let http = Http(upstream.clone());
    let result = oauth
        .exchange_code(AuthorizationCode::new(code.to_owned()))
        .set_pkce_verifier(PkceCodeVerifier::new(verifier.expose_secret().to_owned()))
        .request_async(&http)
        .await;
    issued(result)
}

/// `grant_type=refresh_token`.
pub async fn refresh(
    upstream: &Upstream,
    client: &TokenClient<'_>,
    refresh_token: &SecretString,
    scope: &str,
) -> Result<IssuedToken, TokenError> {
    let oauth = oauth_client(upstream, client)?;
    let http = Http(upstream.clone());
    let token = oauth2::RefreshToken::new(refresh_token.expose_secret().to_owned());
    let result = oauth
        .exchange_refresh_token(&token)
        .add_scopes(scope.split_whitespace().map(|s| Scope::new(s.to_owned())))
        .request_async(&http)
        .await;
    issued(result)
}

type Client = oauth2::Client<
    oauth2::basic::BasicErrorResponse,
    OidcTokenResponse,
    oauth2::basic::BasicTokenIntrospectionResponse,
    oauth2::StandardRevocableToken,
    oauth2::basic::BasicRevocationErrorResponse,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointSet,
>;

fn oauth_client(upstream: &Upstream, client: &TokenClient<'_>) -> Result<Client, TokenError> {
    upstream
        .check(client.token_url)
        .map_err(|e| TokenError::Misconfigured(format!("token_url: {e}")))?;
    let token_url = TokenUrl::new(client.token_url.to_owned())
        .map_err(|e| TokenError::Misconfigured(format!("token_url: {e}")))?;
    let mut oauth = oauth2::Client::<
        oauth2::basic::BasicErrorResponse,
        OidcTokenResponse,
        oauth2::basic::BasicTokenIntrospectionResponse,
        oauth2::StandardRevocableToken,
        oauth2::basic::BasicRevocationErrorResponse,
    >::new(ClientId::new(client.client_id.to_owned()))
    .set_token_uri(token_url)
    .set_auth_type(match client.auth {
        ClientAuth::Basic => AuthType::BasicAuth,
        ClientAuth::Post => AuthType::RequestBody,
    });
    if let Some(secret) = client.client_secret {
        oauth = oauth.set_client_secret(ClientSecret::new(secret.expose_secret().to_owned()));
    }
    Ok(oauth)
}

/// The oauth2 crate's HTTP client: `exchange` with a `Send` future (a closure's future
/// is not provably `Send` for every lifetime, which spawned tasks need).
struct Http(Upstream);

impl<'c> oauth2::AsyncHttpClient<'c> for Http {
    type Error = UpstreamError;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<HttpResponse, UpstreamError>> + Send + 'static>,
    >;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        // The future owns its client (cheap: reqwest's client is shared inside).
        let upstream = self.0.clone();
        Box::pin(async move { exchange(&upstream, request).await })
    }
}

/// The oauth2 crate's HTTP hook: the allowlist again (the URL may be any), our timeouts and
/// body cap. 429 and 5xx become errors here, so that `Retry-After` survives; 4xx answers go
/// back to the crate, which reads the OAuth error in them.
async fn exchange(
    upstream: &Upstream,
    request: HttpRequest,
) -> Result<HttpResponse, UpstreamError> {
    let url = upstream.check(&request.uri().to_string())?;
    let (parts, body) = request.into_parts();
    let mut builder = upstream
        .http()
        .request(parts.method, url.clone())
        .body(body);
    for (name, value) in &parts.headers {
        builder = builder.header(name, value);
    }
    let response = upstream.send_raw(&url, builder).await?;
    let status = response.status.as_u16();
    if status == 429 || status >= 500 {
        return Err(UpstreamError::Status {
            host: url.host_str().unwrap_or_default().to_owned(),
            status,
            retry_after: crate::retry_after(&response.headers),
            body: Vec::new(),
        });
    }
    let mut http = HttpResponse::new(response.body);
    *http.status_mut() = response.status;
    *http.headers_mut() = response.headers;
    Ok(http)
}

fn issued(
    result: Result<
        OidcTokenResponse,
        RequestTokenError<UpstreamError, oauth2::basic::BasicErrorResponse>,
    >,
) -> Result<IssuedToken, TokenError> {
    match result {
        Ok(token) => Ok(IssuedToken {
            id_token: token.extra_fields().id_token.clone(),
            access_token: SecretString::from(token.access_token().secret().to_owned()),
            // The crate reports `bearer`; callers put it in an Authorization header as `Bearer`.
            token_type: match token.token_type().as_ref() {
                t if t.eq_ignore_ascii_case("bearer") => "Bearer".to_owned(),
                t => t.to_owned(),
            },
            expires_in: token.expires_in().map(|d| d.min(MAX_EXPIRES_IN)),
            refresh_token: token
                .refresh_token()
                .map(|r| SecretString::from(r.secret().to_owned())),
            scope: token.scopes().map(|scopes| {
                scopes
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            }),
        }),
        Err(RequestTokenError::ServerResponse(err)) => Err(TokenError::Rejected {
            code: error_code(err.error()),
            description: err.error_description().cloned(),
        }),
        Err(RequestTokenError::Request(UpstreamError::Disallowed(message))) => {
            Err(TokenError::Misconfigured(message))
        }
        Err(RequestTokenError::Request(UpstreamError::Status {
            host,
            status,
            retry_after,
            ..
        })) => Err(TokenError::Unavailable {
            reason: format!("{host} answered HTTP {status}"),
            retry_after,
            status: Some(status),
        }),
        Err(RequestTokenError::Request(e)) => Err(TokenError::Unavailable {
            reason: e.to_string(),
            retry_after: None,
            status: None,
        }),
        Err(RequestTokenError::Parse(e, _)) => Err(TokenError::Unavailable {
            reason: format!(
                "the token endpoint's answer is not a token response: {}",
                e.inner()
            ),
            retry_after: None,
            status: None,
        }),
        Err(RequestTokenError::Other(e)) => Err(TokenError::Unavailable {
            reason: format!("the token endpoint's answer could not be used: {e}"),
            retry_after: None,
            status: None,
        }),
    }
}

fn error_code(kind: &BasicErrorResponseType) -> String {
    kind.as_ref().to_owned()
}

/// The `exp` of a JWT access token, read without verifying it (only to schedule a refresh);
/// at most the year 9999, so that adding it to a date cannot overflow.
pub fn jwt_expiry(token: &str) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Claims {
        exp: u64,
    }
    jsonwebtoken::dangerous::insecure_decode_claims::<Claims>(token)
        .ok()
        .map(|c| c.exp.min(MAX_JWT_EXP))
}

/// How long a JWT access token has left at `now` (Unix seconds), at most `MAX_EXPIRES_IN`;
/// `None` when it has no readable `exp` or has expired.
pub fn jwt_lifetime(token: &str, now: i64) -> Option<Duration> {
    let now = u64::try_from(now).ok()?;
    jwt_expiry(token)?
        .checked_sub(now)
        .filter(|left| *left > 0)
        .map(|left| Duration::from_secs(left).min(MAX_EXPIRES_IN))
}

/// Revokes a refresh token at the provider's revocation endpoint (RFC 7009), with the same
/// client authentication as token requests.
pub async fn revoke(
    upstream: &Upstream,
    revocation_url: &str,
    client: &TokenClient<'_>,
    refresh_token: &SecretString,
) -> Result<(), TokenError> {
    let url = upstream
        .check(revocation_url)
        .map_err(|e| TokenError::Misconfigured(format!("revocation_endpoint: {e}")))?;
    let mut form = vec![
        ("token", refresh_token.expose_secret().to_owned()),
        ("token_type_hint", "refresh_token".to_owned()),
    ];
    let mut request = upstream.http().post(url.clone());
    match (client.auth, client.client_secret) {
        (ClientAuth::Basic, Some(secret)) => {
            let id: String =
                url::form_urlencoded::byte_serialize(client.client_id.as_bytes()).collect();
            let secret: String =
                url::form_urlencoded::byte_serialize(secret.expose_secret().as_bytes()).collect();
            request = request.basic_auth(id, Some(secret));
        }
        (_, secret) => {
            form.push(("client_id", client.client_id.to_owned()));
            if let Some(secret) = secret {
                form.push(("client_secret", secret.expose_secret().to_owned()));
            }
        }
    }
    let body: String = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form.iter().map(|(k, v)| (*k, v.as_str())))
        .finish();
    let response = upstream
        .send_raw(
            &url,
            request
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body),
        )
        .await
        .map_err(|e| TokenError::Unavailable {
            reason: e.to_string(),
            retry_after: None,
            status: None,
        })?;
    if response.status.is_success() {
        Ok(())
    } else {
        Err(TokenError::Rejected {
            code: format!("HTTP {}", response.status.as_u16()),
            description: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_classed_by_http_status() {
        let unavailable = |status| TokenError::Unavailable {
            reason: String::new(),
            retry_after: None,
            status,
        };
        let rejected = TokenError::Rejected {
            code: "invalid_client".into(),
            description: None,
        };
        assert_eq!(rejected.answer_class(), "4xx");
        assert_eq!(unavailable(Some(429)).answer_class(), "429");
        assert_eq!(unavailable(Some(500)).answer_class(), "5xx");
        assert_eq!(unavailable(Some(503)).answer_class(), "5xx");
        assert_eq!(unavailable(None).answer_class(), "none");
        assert_eq!(TokenError::Misconfigured("x".into()).answer_class(), "none");
    }

    fn jwt(exp: u64) -> String {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &serde_json::json!({"exp": exp}),
            &jsonwebtoken::EncodingKey::from_secret(b"test-only").unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn absurd_jwt_expiries_are_clamped() {
        assert_eq!(jwt_expiry(&jwt(u64::MAX)), Some(MAX_JWT_EXP));
        assert_eq!(jwt_expiry(&jwt(1_000)), Some(1_000));
        assert_eq!(
            jwt_lifetime(&jwt(10_000_000_000_000), 1_700_000_000),
            Some(MAX_EXPIRES_IN)
        );
        assert_eq!(
            jwt_lifetime(&jwt(1_700_000_600), 1_700_000_000),
            Some(Duration::from_secs(600))
        );
        assert_eq!(jwt_lifetime(&jwt(1_000), 1_700_000_000), None);
    }

    #[test]
    fn a_huge_expires_in_is_clamped() {
        let body =
            br#"{"access_token": "a", "token_type": "Bearer", "expires_in": 10000000000000}"#;
        let token: OidcTokenResponse = serde_json::from_slice(body).unwrap();
        let issued = issued(Ok(token)).unwrap();
        assert_eq!(issued.expires_in, Some(MAX_EXPIRES_IN));
    }
}
