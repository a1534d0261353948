//! OpenID Connect Discovery 1.0: the provider's metadata document, checked, and its JWKS.

use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, PublicKeyUse};
use openidconnect::core::CoreProviderMetadata;
use serde_json::Value;

use crate::{Upstream, UpstreamError, max_age};

const WELL_KNOWN: &str = "/.well-known/openid-configuration";

/// What a successful discovery found.
#[derive(Clone, Debug)]
pub struct Discovered {
    pub issuer: String,
    /// The whole document as served.
    pub document: Value,
    pub token_endpoint: Option<String>,
    pub authorization_endpoint: String,
    pub jwks_uri: String,
    pub userinfo_endpoint: Option<String>,
    pub revocation_endpoint: Option<String>,
    pub token_endpoint_auth_methods: Vec<String>,
    pub jwks: Jwks,
    /// Things an operator should know that did not make discovery fail.
    pub warnings: Vec<String>,
}

/// A fetched key set.
#[derive(Clone, Debug)]
pub struct Jwks {
    pub keys: Value,
    /// The key ids of the usable signing keys.
    pub kids: Vec<String>,
    /// From `Cache-Control: max-age`.
    pub max_age: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("discovery document: {0}")]
    Document(UpstreamError),
    #[error("discovery document is not valid OpenID Connect metadata: {0}")]
    Invalid(String),
    #[error(
        "issuer mismatch: the document says `{found}`, the discovery URL requires `{expected}`"
    )]
    IssuerMismatch { expected: String, found: String },
    #[error("{field}: {reason}")]
    Endpoint { field: &'static str, reason: String },
    #[error("JWKS: {0}")]
    Jwks(UpstreamError),
    #[error("JWKS is not a valid key set: {0}")]
    JwksInvalid(String),
    #[error("JWKS has no usable signing keys (RSA or EC keys for signatures)")]
    NoUsableKeys,
}

/// The issuer a discovery URL implies: the URL without `/.well-known/openid-configuration`.
pub fn expected_issuer(discovery_url: &str) -> String {
    let trimmed = discovery_url.trim_end_matches('/');
    trimmed
        .strip_suffix(WELL_KNOWN)
        .unwrap_or(trimmed)
        .to_owned()
}

/// Fetches and checks the document, then the JWKS. `strict_issuer` makes an issuer that is
/// not exactly the URL's prefix an error (OpenID Connect Discovery 1.0, section 4.3);
/// otherwise a warning.
pub async fn discover(
    upstream: &Upstream,
    discovery_url: &str,
    strict_issuer: bool,
) -> Result<Discovered, DiscoveryError> {
    let response = upstream
        .get(discovery_url)
        .await
        .map_err(DiscoveryError::Document)?;
    let document: Value = serde_json::from_slice(&response.body)
        .map_err(|e| DiscoveryError::Invalid(format!("not JSON ({e})")))?;
    let metadata: CoreProviderMetadata = serde_json::from_value(document.clone())
        .map_err(|e| DiscoveryError::Invalid(e.to_string()))?;
    let mut warnings = Vec::new();

    let issuer = metadata.issuer().as_str().to_owned();
    let expected = expected_issuer(discovery_url);
    if issuer != expected {
        if strict_issuer {
            return Err(DiscoveryError::IssuerMismatch {
                expected,
                found: issuer,
            });
        }
        warnings.push(format!(
            "issuer `{issuer}` is not the discovery URL's prefix `{expected}` (accepted: discovery.strict_issuer is off)"
        ));
    }

    let authorization_endpoint = metadata.authorization_endpoint().as_str().to_owned();
    let token_endpoint = metadata.token_endpoint().map(|u| u.as_str().to_owned());
    let jwks_uri = metadata.jwks_uri().as_str().to_owned();
    let userinfo_endpoint = metadata.userinfo_endpoint().map(|u| u.as_str().to_owned());
    let revocation_endpoint = document
        .get("revocation_endpoint")
        .and_then(Value::as_str)
        .map(str::to_owned);
    // Every URL the broker may later call must pass the same allowlist as the hookup's.
    let endpoints: [(&'static str, Option<&String>); 5] = [
        ("authorization_endpoint", Some(&authorization_endpoint)),
        ("token_endpoint", token_endpoint.as_ref()),
        ("jwks_uri", Some(&jwks_uri)),
        ("userinfo_endpoint", userinfo_endpoint.as_ref()),
        ("revocation_endpoint", revocation_endpoint.as_ref()),
    ];
    for (field, url) in endpoints {
        if let Some(url) = url {
            upstream.check(url).map_err(|e| DiscoveryError::Endpoint {
                field,
                reason: e.to_string(),
            })?;
        }
    }
    let token_endpoint_auth_methods = metadata
        .token_endpoint_auth_methods_supported()
        .map(|methods| {
            methods
                .iter()
                .filter_map(|m| serde_json::to_value(m).ok())
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();

    let jwks = fetch_jwks(upstream, &jwks_uri).await?;
    Ok(Discovered {
        issuer,
        document,
        token_endpoint,
        authorization_endpoint,
        jwks_uri,
        userinfo_endpoint,
        revocation_endpoint,
        token_endpoint_auth_methods,
        jwks,
        warnings,
    })
}

/// Fetches a JWKS and keeps it only if it has at least one usable signing key.
pub async fn fetch_jwks(upstream: &Upstream, jwks_uri: &str) -> Result<Jwks, DiscoveryError> {
    let response = upstream.get(jwks_uri).await.map_err(DiscoveryError::Jwks)?;
    let keys: Value = serde_json::from_slice(&response.body)
        .map_err(|e| DiscoveryError::JwksInvalid(format!("not JSON ({e})")))?;
    let set: JwkSet = serde_json::from_value(keys.clone())
        .map_err(|e| DiscoveryError::JwksInvalid(e.to_string()))?;
    let usable: Vec<_> = set
        .keys
        .iter()
        .filter(|k| {
            matches!(
                k.algorithm,
                AlgorithmParameters::RSA(_) | AlgorithmParameters::EllipticCurve(_)
            ) && !matches!(k.common.public_key_use, Some(PublicKeyUse::Encryption))
        })
        .collect();
    if usable.is_empty() {
        return Err(DiscoveryError::NoUsableKeys);
    }
    Ok(Jwks {
        kids: usable
            .iter()
            .filter_map(|k| k.common.key_id.clone())
            .collect(),
        keys,
        max_age: max_age(&response.headers),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_issuer_is_the_mount() {
        assert_eq!(
            expected_issuer("https://us.provetcloud.com/7/oauth2/.well-known/openid-configuration"),
            "https://us.provetcloud.com/7/oauth2"
        );
        assert_eq!(
            expected_issuer(
                "https://us.provetcloud.com/7/oauth2/.well-known/openid-configuration/"
            ),
            "https://us.provetcloud.com/7/oauth2"
        );
    }
}
