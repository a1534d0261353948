//! Standard Webhooks signatures (standardwebhooks.com): `v1,<base64 HMAC-SHA256 of
//! "{id}.{timestamp}.{body}">`, keyed with the base64-decoded part of `whsec_...`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

const PREFIX: &str = "whsec_";

/// A fresh signing secret: `whsec_` and base64 of 32 random bytes.
pub fn generate_secret() -> SecretString {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let secret = SecretString::from(format!("{PREFIX}{}", STANDARD.encode(bytes)));
    bytes.fill(0);
    secret
}

/// The `webhook-signature` header for one attempt; `None` for a secret that is not
/// `whsec_` and base64 (this broker never makes one).
pub fn sign(secret: &SecretString, id: &str, timestamp: i64, body: &[u8]) -> Option<String> {
    let encoded = secret.expose_secret();
    let key = STANDARD
        .decode(encoded.strip_prefix(PREFIX).unwrap_or(encoded))
        .ok()?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).ok()?;
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Some(format!(
        "v1,{}",
        STANDARD.encode(mac.finalize().into_bytes())
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test vector published with the Standard Webhooks reference libraries.
    #[test]
    fn signs_the_published_test_vector() {
        let secret = SecretString::from("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        assert_eq!(
            sign(
                &secret,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            )
            .as_deref(),
            Some("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
        );
    }

    #[test]
    fn generated_secrets_have_the_prefix_and_32_bytes() {
        let secret = generate_secret();
        let encoded = secret.expose_secret().strip_prefix(PREFIX).unwrap();
        assert_eq!(STANDARD.decode(encoded).unwrap().len(), 32);
        assert_ne!(generate_secret().expose_secret(), secret.expose_secret());
        assert!(sign(&secret, "evt_1", 1, b"{}").unwrap().starts_with("v1,"));
        assert_eq!(
            sign(&SecretString::from("whsec_!!"), "evt_1", 1, b"{}"),
            None
        );
    }
}
