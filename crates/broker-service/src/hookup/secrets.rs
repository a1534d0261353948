//! The hookup URL's secret: generated, rotated (extra secrets still accepted), compared in
//! constant time.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Which accepted secret a hookup URL carried: the current one, or one of the extra secrets
/// still accepted while Provet moves to the current one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretMatch {
    Current,
    Extra,
}

impl SecretMatch {
    pub const ALL: &'static [Self] = &[Self::Current, Self::Extra];

    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Current => "current",
            Self::Extra => "extra",
        }
    }
}

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

    /// A short, stable name for the current secret, safe to log: `sha256:` and the first 16
    /// hex digits of its SHA-256 (64 bits of a digest of 256 random bits reveal nothing usable).
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.current)
    }

    /// Compares digests in constant time, always against every accepted secret, so neither
    /// the length nor the content of a guess changes the time taken.
    pub fn accepts(&self, candidate: &str) -> bool {
        self.matches(candidate).is_some()
    }

    /// Which accepted secret `candidate` is, if any. Every digest is compared (in constant
    /// time) before the answer is known; only a caller holding a valid secret learns which.
    pub fn matches(&self, candidate: &str) -> Option<SecretMatch> {
        let candidate: [u8; 32] = Sha256::digest(candidate.as_bytes()).into();
        let hits: Vec<subtle::Choice> = self.digests.iter().map(|d| d.ct_eq(&candidate)).collect();
        let any: bool = hits
            .iter()
            .fold(subtle::Choice::from(0), |acc, hit| acc | *hit)
            .into();
        let current = hits.first().is_some_and(|hit| bool::from(*hit));
        match (any, current) {
            (false, _) => None,
            (true, true) => Some(SecretMatch::Current),
            (true, false) => Some(SecretMatch::Extra),
        }
    }
}

/// `sha256:` and the first 16 hex digits of the secret's SHA-256: what logs and the
/// `hookup-url` command show to tell secrets apart without showing one.
pub fn fingerprint(secret: &SecretString) -> String {
    let digest = Sha256::digest(secret.expose_secret().as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
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
    fn matches_names_which_secret_opened() {
        let s = HookupSecrets::new(
            "one".to_owned().into(),
            &["two".to_owned().into(), "three".to_owned().into()],
        );
        assert_eq!(s.matches("one"), Some(SecretMatch::Current));
        assert_eq!(s.matches("two"), Some(SecretMatch::Extra));
        assert_eq!(s.matches("three"), Some(SecretMatch::Extra));
        assert_eq!(s.matches("four"), None);
    }

    #[test]
    fn fingerprints_are_short_stable_and_not_the_secret() {
        let s = HookupSecrets::new("a-long-hookup-secret".to_owned().into(), &[]);
        let f = s.fingerprint();
        assert_eq!(f, fingerprint(&"a-long-hookup-secret".to_owned().into()));
        assert!(f.starts_with("sha256:"));
        assert_eq!(f.len(), "sha256:".len() + 16);
        assert!(!f.contains("hookup"));
        assert_ne!(f, fingerprint(&"another-hookup-secret".to_owned().into()));
    }

    #[test]
    fn generated_secrets_are_long_and_distinct() {
        let a = HookupSecrets::generate();
        let b = HookupSecrets::generate();
        assert_eq!(a.expose_secret().len(), 43);
        assert_ne!(a.expose_secret(), b.expose_secret());
    }
}
