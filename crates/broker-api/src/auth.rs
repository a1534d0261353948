//! The bearer-key extractor: `401` without a key or with an unknown one, `403` for the
//! wrong role or tenant.

use std::future::Future;
use std::pin::Pin;

use actix_web::http::header;
use actix_web::{FromRequest, HttpMessage, HttpRequest, dev::Payload, web};
use broker_domain::ApiKeyRole;
use broker_service::api_keys::{Authenticated, Principal};

use crate::AppState;
use crate::problem::ApiError;
use crate::request::KeyName;

/// A caller whose API key checked out.
#[derive(Clone, Debug)]
pub struct Caller(pub Principal);

impl Caller {
    /// Admin keys only (which are never tenant-scoped; a scoped one never gets this far).
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.0.role == ApiKeyRole::Admin && self.0.tenants.is_none() {
            Ok(())
        } else {
            Err(ApiError::Forbidden(
                "this endpoint needs an admin key".into(),
            ))
        }
    }

    /// Token or admin keys that may serve this tenant.
    pub fn require_tenant(&self, provet_id: i64) -> Result<(), ApiError> {
        if self.0.may_serve(provet_id) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "API key `{}` may not serve tenant {provet_id}",
                self.0.name
            )))
        }
    }
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let state = req.app_data::<web::Data<AppState>>().cloned();
        // An owned handle, to note the key's name for the access line.
        let req = req.clone();
        let peer = req.peer_addr().map(|a| a.ip());
        let key = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token)
            .map(str::to_owned);
        Box::pin(async move {
            let state = state.ok_or_else(|| ApiError::internal("application state missing"))?;
            // An address that failed too often gets 429 for anything but a valid key, so
            // that guessing costs time while services behind the same address keep working.
            let failed = |reason| {
                if let Some(ip) = peer {
                    if let Some(wait) = state.auth_failures().blocked(ip) {
                        return Err(ApiError::TooManyRequests(wait));
                    }
                    state.auth_failures().failed(ip);
                }
                Err(ApiError::Unauthorized(reason))
            };
            let Some(key) = key else {
                return failed("send an API key as `Authorization: Bearer <key>`");
            };
            match state.api_keys().authenticate(&key).await? {
                Some(Authenticated::Valid(principal)) => {
                    req.extensions_mut().insert(KeyName(principal.name.clone()));
                    Ok(Caller(principal))
                }
                Some(Authenticated::Unusable { name, defect }) => {
                    req.extensions_mut().insert(KeyName(name.as_str().into()));
                    Err(ApiError::Forbidden(format!(
                        "API key `{name}` cannot be used: {}",
                        defect.reason()
                    )))
                }
                None => failed("the API key is unknown or revoked"),
            }
        })
    }
}

/// The credentials of `Bearer <token>`; the scheme is case-insensitive (RFC 9110, 11.1).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once([' ', '\t'])?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for value in [
            "Bearer k",
            "bearer k",
            "BEARER k",
            "bEaReR   k ",
            "Bearer\tk",
        ] {
            assert_eq!(bearer_token(value), Some("k"), "{value:?}");
        }
        for value in ["Basic k", "Bearerk", "k", "Bearer ", "Bearer", ""] {
            assert_eq!(bearer_token(value), None, "{value:?}");
        }
    }
}
