//! ID-token checks: the signature per the client's `algorithm` (RS256 against the tenant's
//! JWKS, HS256 with the client secret as the key), then `iss`, `aud`, `exp`, `iat` (with a
//! small leeway) and `nonce`.

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
}

/// The key to check a signature with.
pub enum VerificationKey<'a> {
    /// HS256: the client secret's bytes.
    Secret(&'a [u8]),
    /// RS256: the JWK named by the token's `kid`.
    Jwk(&'a Jwk),
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
    Ok(claims)
}
