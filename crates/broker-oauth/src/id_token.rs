//! ID-token checks: the signature per the client's `algorithm` (RS256 against the tenant's
//! JWKS, HS256 with the client secret as the key), then `iss`, `aud`, `exp`, `iat` (with a
//! small leeway), `nonce`, and `azp` (OpenID Connect Core 3.1.3.7: with several audiences
//! the authorized party must be us; a present `azp` must always be us).

use broker_domain::SigningAlgorithm;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// What the token must say.
pub struct Expected<'a> {
    pub issuer: &'a str,
    pub client_id: &'a str,
    pub nonce: Option<&'a str>,
    /// Seconds of clock skew tolerated on `exp` and `iat`.
    pub leeway: u64,
    pub now: i64,
}

/// The claims the broker uses.
#[derive(Clone, Debug, Deserialize)]
pub struct Claims {
    pub sub: Option<String>,
    pub nonce: Option<String>,
    pub iat: Option<i64>,
    /// A string or an array of strings (checked by the decoder to contain the client id).
    #[serde(default)]
    pub aud: Audience,
    /// The authorized party: the client the token was issued to.
    pub azp: Option<String>,
}

/// `aud`: one audience or several.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Several(Vec<String>),
    #[default]
    None,
}

impl Audience {
    fn len(&self) -> usize {
        match self {
            Self::One(_) => 1,
            Self::Several(v) => v.len(),
            Self::None => 0,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdTokenError {
    #[error("the ID token is malformed: {0}")]
    Malformed(String),
    #[error("the ID token is signed with {found}, the client's algorithm is {expected}")]
    WrongAlgorithm { expected: String, found: String },
    #[error("no key in the tenant's JWKS has the ID token's key id `{0}`")]
    UnknownKey(String),
    #[error("the ID token is invalid: {0}")]
    Invalid(String),
    #[error("the ID token's nonce does not match the authorization's")]
    NonceMismatch,
    #[error("the ID token was issued in the future")]
    IssuedInTheFuture,
    #[error(
        "the ID token names several audiences, and its authorized party (azp) is not this client"
    )]
    AuthorizedPartyMissing,
    #[error("the ID token's authorized party (azp) is another client")]
    AuthorizedPartyMismatch,
    #[error("the client has no ID-token algorithm")]
    NoAlgorithm,
    #[error("HS256 needs the client secret, which is not stored")]
    NoSecret,
    #[error("the ID token names no key (kid)")]
    NoKeyId,
}

/// The key to check a signature with.
pub enum VerificationKey<'a> {
    /// HS256: the client secret's bytes.
    Secret(&'a [u8]),
    /// RS256: the JWK named by the token's `kid`.
    Jwk(&'a Jwk),
}

/// The key a client's `algorithm` checks its ID tokens with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyNeeded {
    /// HS256: the client secret.
    ClientSecret,
    /// RS256: the key with this `kid` from the tenant's JWKS.
    Jwk(String),
}

/// Which key `token` needs under the client's `algorithm` (none: the client does not do
/// OpenID Connect).
pub fn key_needed(
    algorithm: Option<SigningAlgorithm>,
    token: &str,
) -> Result<KeyNeeded, IdTokenError> {
    match algorithm {
        Some(SigningAlgorithm::Hs256) => Ok(KeyNeeded::ClientSecret),
        Some(SigningAlgorithm::Rs256) => match key_id(token)?.1 {
            Some(kid) => Ok(KeyNeeded::Jwk(kid)),
            None => Err(IdTokenError::NoKeyId),
        },
        None => Err(IdTokenError::NoAlgorithm),
    }
}

/// The key found for a [`KeyNeeded`].
pub enum FoundKey<'a> {
    ClientSecret(Option<&'a secrecy::SecretString>),
    /// The JWK as the JWKS document holds it.
    Jwk(serde_json::Value),
}

/// Verifies `token` with the key its client's algorithm asked for.
pub fn verify_with(
    token: &str,
    key: FoundKey<'_>,
    expected: &Expected<'_>,
) -> Result<Claims, IdTokenError> {
    use secrecy::ExposeSecret;
    match key {
        FoundKey::ClientSecret(secret) => {
            let secret = secret.ok_or(IdTokenError::NoSecret)?;
            verify(
                token,
                Algorithm::HS256,
                VerificationKey::Secret(secret.expose_secret().as_bytes()),
                expected,
            )
        }
        FoundKey::Jwk(value) => {
            let jwk: Jwk = serde_json::from_value(value)
                .map_err(|e| IdTokenError::Invalid(format!("unusable JWK: {e}")))?;
            verify(
                token,
                Algorithm::RS256,
                VerificationKey::Jwk(&jwk),
                expected,
            )
        }
    }
}

/// The header's `kid` and algorithm, read before verification to pick the key.
pub fn key_id(token: &str) -> Result<(Algorithm, Option<String>), IdTokenError> {
    let header =
        jsonwebtoken::decode_header(token).map_err(|e| IdTokenError::Malformed(e.to_string()))?;
    Ok((header.alg, header.kid))
}

/// Verifies `token` against `key` and `expected`.
pub fn verify(
    token: &str,
    algorithm: Algorithm,
    key: VerificationKey<'_>,
    expected: &Expected<'_>,
) -> Result<Claims, IdTokenError> {
    let (found, _) = key_id(token)?;
    if found != algorithm {
        return Err(IdTokenError::WrongAlgorithm {
            expected: format!("{algorithm:?}"),
            found: format!("{found:?}"),
        });
    }
    let key = match key {
        VerificationKey::Secret(secret) => DecodingKey::from_secret(secret)
            .map_err(|e| IdTokenError::Invalid(format!("unusable secret: {e}")))?,
        VerificationKey::Jwk(jwk) => DecodingKey::from_jwk(jwk)
            .map_err(|e| IdTokenError::Invalid(format!("unusable JWK: {e}")))?,
    };
    let mut validation = Validation::new(algorithm);
    validation.set_issuer(&[expected.issuer]);
    validation.set_audience(&[expected.client_id]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    validation.leeway = expected.leeway;
    let data = jsonwebtoken::decode::<Claims>(token, &key, &validation)
        .map_err(|e| IdTokenError::Invalid(e.to_string()))?;
    let claims = data.claims;
    if claims
        .iat
        .is_some_and(|iat| iat > expected.now + i64::try_from(expected.leeway).unwrap_or(0))
    {
        return Err(IdTokenError::IssuedInTheFuture);
    }
    if let Some(nonce) = expected.nonce
        && claims.nonce.as_deref() != Some(nonce)
    {
        return Err(IdTokenError::NonceMismatch);
    }
    check_authorized_party(&claims, expected.client_id)?;
    Ok(claims)
}

/// OpenID Connect Core 3.1.3.7, items 4 and 5: a token for several audiences must name us as
/// its authorized party; an `azp` that is present must be us.
fn check_authorized_party(claims: &Claims, client_id: &str) -> Result<(), IdTokenError> {
    match claims.azp.as_deref() {
        Some(azp) if azp != client_id => Err(IdTokenError::AuthorizedPartyMismatch),
        None if claims.aud.len() > 1 => Err(IdTokenError::AuthorizedPartyMissing),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::{Value, json};

    const KEY: &[u8] = b"a test-only HS256 key of enough length";

    fn token(aud: Value, azp: Option<&str>) -> String {
        let mut claims = json!({
            "iss": "https://provider.test/7/oauth2", "aud": aud, "sub": "user",
            "exp": 4_000_000_000i64, "iat": 1_700_000_000i64,
        });
        if let Some(azp) = azp {
            claims["azp"] = json!(azp);
        }
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(KEY).unwrap(),
        )
        .unwrap()
    }

    fn check(aud: Value, azp: Option<&str>) -> Result<Claims, IdTokenError> {
        verify(
            &token(aud, azp),
            Algorithm::HS256,
            VerificationKey::Secret(KEY),
            &Expected {
                issuer: "https://provider.test/7/oauth2",
                client_id: "us",
                nonce: None,
                leeway: 60,
                now: 1_700_000_000,
            },
        )
    }

    #[test]
    fn the_algorithm_picks_the_key() {
        let t = token(json!("us"), None);
        assert_eq!(
            key_needed(Some(SigningAlgorithm::Hs256), &t),
            Ok(KeyNeeded::ClientSecret)
        );
        // This token's header has no kid.
        assert_eq!(
            key_needed(Some(SigningAlgorithm::Rs256), &t),
            Err(IdTokenError::NoKeyId)
        );
        assert_eq!(key_needed(None, &t), Err(IdTokenError::NoAlgorithm));
        let expected = Expected {
            issuer: "https://provider.test/7/oauth2",
            client_id: "us",
            nonce: None,
            leeway: 60,
            now: 1_700_000_000,
        };
        assert_eq!(
            verify_with(&t, FoundKey::ClientSecret(None), &expected).unwrap_err(),
            IdTokenError::NoSecret
        );
        let secret = secrecy::SecretString::from(String::from_utf8(KEY.to_vec()).unwrap());
        assert!(verify_with(&t, FoundKey::ClientSecret(Some(&secret)), &expected).is_ok());
        // An HS256 token is never checked against a JWKS key (algorithm confusion).
        let e = verify_with(
            &t,
            FoundKey::Jwk(json!({"kty": "oct", "k": "a2V5"})),
            &expected,
        )
        .unwrap_err();
        assert!(matches!(e, IdTokenError::WrongAlgorithm { .. }), "{e:?}");
    }

    #[test]
    fn one_audience_needs_no_azp() {
        assert!(check(json!("us"), None).is_ok());
        assert!(check(json!(["us"]), None).is_ok());
        assert!(check(json!("us"), Some("us")).is_ok());
    }

    #[test]
    fn several_audiences_need_our_azp() {
        assert_eq!(
            check(json!(["us", "them"]), None).unwrap_err(),
            IdTokenError::AuthorizedPartyMissing
        );
        assert_eq!(
            check(json!(["us", "them"]), Some("them")).unwrap_err(),
            IdTokenError::AuthorizedPartyMismatch
        );
        assert!(check(json!(["us", "them"]), Some("us")).is_ok());
    }

    #[test]
    fn a_present_azp_must_be_us() {
        assert_eq!(
            check(json!("us"), Some("them")).unwrap_err(),
            IdTokenError::AuthorizedPartyMismatch
        );
    }

    #[test]
    fn a_token_for_others_only_is_refused() {
        assert!(matches!(
            check(json!(["them", "others"]), Some("us")).unwrap_err(),
            IdTokenError::Invalid(_)
        ));
    }
}
