//! The master keys that seal secrets at rest: configured, read from a file, or generated on
//! first run (and written only once the database is known to hold nothing sealed).

use std::fs;
use std::io::Write;
use std::path::Path;

use anyhow::Context;
use broker_store::{Keyring, MasterKey};
use secrecy::{ExposeSecret, SecretString};

use crate::config::Settings;

/// The keys that seal secrets at rest: configured, read from a file, or generated on first
/// run. A generated key is only a candidate: `open_store` writes it once it knows that the
/// database holds nothing sealed under another key.
pub fn keyring(settings: &Settings) -> anyhow::Result<(Keyring, Option<GeneratedKey>)> {
    let s = &settings.secrets;
    let (current, generated) = if !s.master_key.expose_secret().trim().is_empty() {
        (
            MasterKey::from_base64(&s.master_key).context("secrets.master_key")?,
            None,
        )
    } else if !s.master_key_file.is_empty() {
        let text = fs::read_to_string(&s.master_key_file).with_context(|| {
            format!("cannot read secrets.master_key_file {}", s.master_key_file)
        })?;
        (
            MasterKey::from_base64(&SecretString::from(text)).context("secrets.master_key_file")?,
            None,
        )
    } else {
        generated_key(&s.generated_key_file)?
    };
    let previous = s
        .previous_keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            MasterKey::from_base64(k).with_context(|| format!("secrets.previous_keys[{i}]"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok((Keyring::new(current, previous), generated))
}

/// A master key generated in memory, not yet written to its file.
pub struct GeneratedKey {
    pub(super) path: std::path::PathBuf,
    encoded: SecretString,
}

impl GeneratedKey {
    /// Writes the key (mode 0600, never over an existing file).
    pub(super) fn persist(&self) -> anyhow::Result<()> {
        let path = &self.path;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options
            .open(path)
            .with_context(|| format!("cannot create the master key file {}", path.display()))?;
        file.write_all(self.encoded.expose_secret().as_bytes())?;
        file.sync_all()?;
        tracing::warn!(
            path = %path.display(),
            "NO MASTER KEY CONFIGURED: generated one into this file. Every stored secret depends on it: \
             back it up, and in production set secrets.master_key (or secrets.master_key_file) instead"
        );
        Ok(())
    }
}

/// The key in `path`, or a new one to be written there (see `GeneratedKey`).
fn generated_key(path: &Path) -> anyhow::Result<(MasterKey, Option<GeneratedKey>)> {
    if path.exists() {
        let text = fs::read_to_string(path)
            .with_context(|| format!("cannot read the generated master key {}", path.display()))?;
        let key = MasterKey::from_base64(&SecretString::from(text))
            .with_context(|| format!("the master key in {}", path.display()))?;
        return Ok((key, None));
    }
    let encoded = MasterKey::generate_base64();
    let key = MasterKey::from_base64(&encoded).context("generated master key")?;
    Ok((
        key,
        Some(GeneratedKey {
            path: path.to_path_buf(),
            encoded,
        }),
    ))
}
