//! The hookup URL's secret: generated, rotated (extra secrets still accepted), compared in
//! constant time.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The hookup URL's secret path segments: the current one and any still accepted while Provet
/// is being moved to a new one.
pub struct HookupSecrets {
    digests: Vec<[u8; 32]>,
    current: SecretString,
}

impl HookupSecrets {
    pub fn new(current: SecretString, extra: &[SecretString]) -> Self {
        let digests = std::iter::once(&current)
            .chain(extra)
            .map(|s| Sha256::digest(s.expose_secret().as_bytes()).into())
            .collect();
        Self { digests, current }
    }

    /// 32 random bytes, URL-safe base64: 43 characters no one guesses.
    pub fn generate() -> SecretString {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        SecretString::from(URL_SAFE_NO_PAD.encode(bytes))
    }

    /// The secret to put in the URL given to Provet.
    pub fn current(&self) -> &SecretString {
        &self.current
    }

    /// Compares digests in constant time, always against every accepted secret, so neither
    /// the length nor the content of a guess changes the time taken.
    pub fn accepts(&self, candidate: &str) -> bool {
        let candidate: [u8; 32] = Sha256::digest(candidate.as_bytes()).into();
        self.digests
            .iter()
            .fold(subtle::Choice::from(0), |acc, d| acc | d.ct_eq(&candidate))
            .into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_current_and_extra_secrets_only() {
        let s = HookupSecrets::new("one".to_owned().into(), &["two".to_owned().into()]);
        assert!(s.accepts("one"));
        assert!(s.accepts("two"));
        assert!(!s.accepts("on"));
        assert!(!s.accepts(""));
    }

    #[test]
    fn generated_secrets_are_long_and_distinct() {
        let a = HookupSecrets::generate();
        let b = HookupSecrets::generate();
        assert_eq!(a.expose_secret().len(), 43);
        assert_ne!(a.expose_secret(), b.expose_secret());
    }
}
