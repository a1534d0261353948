//! Secrets at rest: AES-256-GCM with the owning row's identity as associated data, so a
//! ciphertext copied into another row does not decrypt. Every ciphertext names the key that
//! sealed it, so keys can be rotated (`provet-broker rekey`) while old rows stay readable.
//!
//! Stored form: `v1:<key id>:<base64 nonce || ciphertext || tag>`.

pub(crate) mod aad;

use std::fmt;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretBox, SecretString};
use sha2::{Digest, Sha256};

const FORMAT: &str = "v1";
const NONCE_LEN: usize = 12;
/// A key id: 8 bytes, hex.
pub const KEY_ID_LEN: usize = 16;
/// The characters of a stored value that name its key: `v1:<key id>:`.
pub const KEY_PREFIX_LEN: usize = FORMAT.len() + 1 + KEY_ID_LEN + 1;

/// Why a secret could not be sealed or opened. Never carries plaintext.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("a master key must be base64 of exactly 32 bytes")]
    BadKey,
    #[error("stored secret is not in the `v1:<key id>:<data>` form")]
    Malformed,
    #[error(
        "stored secret was sealed with key `{0}`, which is not configured (add it to secrets.previous_keys)"
    )]
    UnknownKey(String),
    #[error("stored secret does not authenticate: wrong key, or it was moved to another row")]
    Forged,
}

/// One AES-256 key and its id (the first 8 bytes of its SHA-256, hex).
pub struct MasterKey {
    id: String,
    cipher: Aes256Gcm,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl MasterKey {
    /// Parses base64 of 32 bytes.
    pub fn from_base64(encoded: &SecretString) -> Result<Self, CryptoError> {
        let bytes = SecretBox::new(Box::new(
            STANDARD
                .decode(encoded.expose_secret().trim())
                .map_err(|_| CryptoError::BadKey)?,
        ));
        Self::from_bytes(bytes.expose_secret())
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        if bytes.len() != 32 {
            return Err(CryptoError::BadKey);
        }
        let id = hex::encode(
            &Sha256::digest([b"provet-broker key id:".as_slice(), bytes].concat())[..8],
        );
        Ok(Self {
            id,
            cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(bytes)),
        })
    }

    /// A fresh random key, base64-encoded, for first runs and `rekey`.
    pub fn generate_base64() -> SecretString {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let encoded = STANDARD.encode(bytes);
        bytes.fill(0);
        SecretString::from(encoded)
    }

    pub fn id(&self) -> &str {
        &self.id
    }
}

/// The current key (used to seal) and any previous ones (still accepted when opening).
#[derive(Debug)]
pub struct Keyring {
    current: MasterKey,
    previous: Vec<MasterKey>,
}

impl Keyring {
    pub fn new(current: MasterKey, previous: Vec<MasterKey>) -> Self {
        let previous = previous
            .into_iter()
            .filter(|k| k.id != current.id)
            .collect();
        Self { current, previous }
    }

    pub fn current_id(&self) -> &str {
        &self.current.id
    }

    /// Encrypts `plaintext` for the row named by `aad` (e.g. `clients.client_secret:7:abc`).
    pub fn seal(&self, aad: &str, plaintext: &str) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        // Encryption with a valid key and in-memory buffers cannot fail.
        let sealed = self
            .current
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: aad.as_bytes(),
                },
            )
            .unwrap_or_default();
        let mut data = nonce.to_vec();
        data.extend_from_slice(&sealed);
        format!("{FORMAT}:{}:{}", self.current.id, STANDARD.encode(data))
    }

    /// Decrypts a stored value sealed for the row named by `aad`.
    pub fn open(&self, aad: &str, stored: &str) -> Result<SecretString, CryptoError> {
        let (key_id, data) = parse(stored)?;
        let key = std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.id == key_id)
            .ok_or_else(|| CryptoError::UnknownKey(key_id.to_owned()))?;
        let data = STANDARD.decode(data).map_err(|_| CryptoError::Malformed)?;
        if data.len() < NONCE_LEN + 16 {
            return Err(CryptoError::Malformed);
        }
        let (nonce, sealed) = data.split_at(NONCE_LEN);
        let plain = key
            .cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| CryptoError::Forged)?;
        String::from_utf8(plain)
            .map(SecretString::from)
            .map_err(|_| CryptoError::Forged)
    }

    /// Whether `id` is the current key's or a previous key's.
    pub fn has_key(&self, id: &str) -> bool {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .any(|k| k.id == id)
    }

    /// Whether a stored value was sealed with the current key.
    pub fn is_current(&self, stored: &str) -> bool {
        matches!(parse(stored), Ok((id, _)) if id == self.current.id)
    }
}

/// The id of the key that sealed `stored` (or its `KEY_PREFIX_LEN` first characters).
pub fn key_id_of(stored: &str) -> Option<&str> {
    parse(stored).ok().map(|(id, _)| id)
}

fn parse(stored: &str) -> Result<(&str, &str), CryptoError> {
    let mut parts = stored.splitn(3, ':');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(FORMAT), Some(id), Some(data)) if !id.is_empty() => Ok((id, data)),
        _ => Err(CryptoError::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> MasterKey {
        MasterKey::from_base64(&MasterKey::generate_base64()).unwrap()
    }

    #[test]
    fn round_trip() {
        let ring = Keyring::new(key(), vec![]);
        let sealed = ring.seal("clients.client_secret:7:abc", "hunter2");
        assert!(!sealed.contains("hunter2"));
        assert!(sealed.starts_with(&format!("v1:{}:", ring.current_id())));
        let opened = ring.open("clients.client_secret:7:abc", &sealed).unwrap();
        assert_eq!(opened.expose_secret(), "hunter2");
    }

    #[test]
    fn ciphertext_is_bound_to_its_row() {
        let ring = Keyring::new(key(), vec![]);
        let sealed = ring.seal("clients.client_secret:7:abc", "hunter2");
        assert_eq!(
            ring.open("clients.client_secret:8:abc", &sealed)
                .unwrap_err(),
            CryptoError::Forged
        );
    }

    #[test]
    fn previous_keys_still_open_and_unknown_keys_are_named() {
        let old = Keyring::new(key(), vec![]);
        let sealed = old.seal("a", "x");
        let old_id = old.current_id().to_owned();
        let old_again = MasterKey::from_bytes(&[0u8; 32]).unwrap();
        let rotated = Keyring::new(key(), vec![old.current, old_again]);
        assert_eq!(rotated.open("a", &sealed).unwrap().expose_secret(), "x");
        assert!(!rotated.is_current(&sealed));
        let stranger = Keyring::new(key(), vec![]);
        assert_eq!(
            stranger.open("a", &sealed).unwrap_err(),
            CryptoError::UnknownKey(old_id)
        );
    }

    #[test]
    fn the_key_prefix_names_the_key() {
        let ring = Keyring::new(key(), vec![]);
        let sealed = ring.seal("a", "x");
        assert_eq!(ring.current_id().len(), KEY_ID_LEN);
        let prefix = &sealed[..KEY_PREFIX_LEN];
        assert_eq!(key_id_of(prefix), Some(ring.current_id()));
        assert_eq!(key_id_of(&sealed), Some(ring.current_id()));
        assert!(ring.has_key(ring.current_id()));
        assert!(!ring.has_key("0000000000000000"));
        assert_eq!(key_id_of("plain"), None);
    }

    #[test]
    fn bad_keys_are_refused() {
        assert!(MasterKey::from_base64(&SecretString::from("c2hvcnQ=")).is_err());
        assert!(MasterKey::from_base64(&SecretString::from("not base64!")).is_err());
    }

    #[test]
    fn debug_shows_no_key_material() {
        let k = key();
        let text = format!("{k:?}");
        assert!(text.contains(k.id()));
        assert!(!text.contains("cipher"));
    }
}
