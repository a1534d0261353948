//! The authorization request a clinic user's browser is sent with: PKCE (S256) and the
//! authorize URL's parameters (RFC 6749 4.1.1, RFC 7636, OpenID Connect `nonce`).

use secrecy::SecretString;
use url::Url;

/// A fresh PKCE pair: the verifier stays with the broker, the challenge goes in the URL.
pub struct Pkce {
    pub verifier: SecretString,
    pub challenge: String,
}

impl Pkce {
    /// A random verifier and its S256 challenge.
    pub fn new_s256() -> Self {
        let (challenge, verifier) = oauth2::PkceCodeChallenge::new_random_sha256();
        Self {
            verifier: SecretString::from(verifier.secret().to_owned()),
            challenge: challenge.as_str().to_owned(),
        }
    }
}

/// What the authorize URL carries.
pub struct AuthorizeRequest<'a> {
    /// The tenant's authorize endpoint (from the hookup).
    pub authorize_url: &'a str,
    pub client_id: &'a str,
    pub redirect_uri: &'a str,
    pub scope: &'a str,
    pub state: &'a str,
    pub code_challenge: &'a str,
    pub nonce: Option<&'a str>,
}

impl AuthorizeRequest<'_> {
    /// The URL to send the browser to; fails only on an authorize endpoint that is not a URL.
    pub fn url(&self) -> Result<Url, url::ParseError> {
        let mut url = Url::parse(self.authorize_url)?;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("response_type", "code")
                .append_pair("client_id", self.client_id)
                .append_pair("redirect_uri", self.redirect_uri)
                .append_pair("scope", self.scope)
                .append_pair("state", self.state)
                .append_pair("code_challenge", self.code_challenge)
                .append_pair("code_challenge_method", "S256");
            if let Some(n) = self.nonce {
                q.append_pair("nonce", n);
            }
        }
        Ok(url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn the_url_carries_every_parameter_and_keeps_the_endpoints_query() {
        let url = AuthorizeRequest {
            authorize_url: "https://p.test/7/oauth2/authorize/?x=1",
            client_id: "c",
            redirect_uri: "https://b.test/oauth/callback",
            scope: "openid restapi",
            state: "s",
            code_challenge: "ch",
            nonce: Some("n"),
        }
        .url()
        .unwrap();
        let q: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("x"), Some("1"));
        assert_eq!(get("response_type"), Some("code"));
        assert_eq!(get("scope"), Some("openid restapi"));
        assert_eq!(get("code_challenge_method"), Some("S256"));
        assert_eq!(get("nonce"), Some("n"));
    }

    #[test]
    fn pkce_pairs_are_fresh_and_s256_sized() {
        let (a, b) = (Pkce::new_s256(), Pkce::new_s256());
        assert_ne!(a.verifier.expose_secret(), b.verifier.expose_secret());
        // base64url of a SHA-256 digest, unpadded.
        assert_eq!(a.challenge.len(), 43);
    }
}
