//! `provet-broker export [--file F]` and `import [--file F]`: the whole broker in one JSON
//! file, the way from SQLite to PostgreSQL (and back) and the base of a backup.
//!
//! The file: `{"format": "provet-broker-export", "version": 1, "created_at", "source",
//! "seal", "check", "counts", "data"}`. Every secret in `data` is sealed (AES-256-GCM, as at
//! rest) under a key that is either derived from a passphrase with argon2id (`seal.kdf` =
//! `"argon2id"`, with its random salt and cost parameters) or given as a key file
//! (`"key"`); `check` is a known value sealed under the same key, so that a wrong passphrase
//! is named as such before anything is written. The passphrase comes from
//! `PROVET_BROKER_PASSPHRASE`, `--passphrase-file` or a prompt, never from an argument (it
//! would show in `ps`).

use std::fs;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use broker_service::{Clock, SystemClock};
use broker_store::{CryptoError, Dump, DumpCounts, Keyring, MasterKey, StoreError};
use chrono::{DateTime, Utc};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::config::Settings;
use crate::startup::{open_existing_store, open_store, redact_url};

/// The environment variable a passphrase may come from.
pub const PASSPHRASE_ENV: &str = "PROVET_BROKER_PASSPHRASE";
const FORMAT: &str = "provet-broker-export";
const VERSION: u32 = 1;
/// What `check` holds, sealed.
const CHECK_VALUE: &str = "provet-broker-export";
const CHECK_AAD: &str = "export.check";
/// A new export's passphrase must be at least this long: the file's secrets are only as
/// safe as it is.
const MIN_PASSPHRASE: usize = 12;
/// argon2id costs of new exports (memory in KiB): about a quarter of a second here.
const M_COST: u32 = 64 * 1024;
const T_COST: u32 = 3;
const P_COST: u32 = 1;
/// Bounds on the costs a file may ask for, so that a crafted file cannot exhaust memory.
const MAX_M_COST: u32 = 1024 * 1024;
const MAX_T_COST: u32 = 16;
const MAX_P_COST: u32 = 8;

/// Where the export's key comes from (the passphrase itself never from an argument).
#[derive(Debug, clap::Args)]
pub struct SealArgs {
    /// Read the passphrase from this file (its first line); else from
    /// PROVET_BROKER_PASSPHRASE, else a prompt.
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
    /// Seal with an explicit key instead of a passphrase: a file holding base64 of 32 bytes
    /// (`openssl rand -base64 32`).
    #[arg(long, value_name = "FILE", conflicts_with = "passphrase_file")]
    pub key_file: Option<PathBuf>,
}

/// `provet-broker export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// Write the export here (created mode 0600); without it, to stdout.
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    #[command(flatten)]
    pub seal: SealArgs,
}

/// `provet-broker import`.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// Read the export from here; without it, from stdin.
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    #[command(flatten)]
    pub seal: SealArgs,
}

#[derive(Serialize, Deserialize)]
struct ExportFile {
    format: String,
    version: u32,
    created_at: DateTime<Utc>,
    source: Source,
    seal: Seal,
    check: String,
    counts: Option<DumpCounts>,
    data: Dump,
}

#[derive(Serialize, Deserialize)]
struct Source {
    backend: String,
}

/// How the export's key was made.
#[derive(Clone, Serialize, Deserialize)]
#[serde(tag = "kdf", rename_all = "snake_case")]
enum Seal {
    Argon2id {
        /// Base64 of 16 random bytes.
        salt: String,
        m_cost: u32,
        t_cost: u32,
        p_cost: u32,
    },
    /// An explicit key file.
    Key,
}

/// Only the header, read before the data is parsed.
#[derive(Deserialize)]
struct Header {
    format: Option<String>,
    version: Option<u32>,
}

pub async fn export(settings: &Settings, args: ExportArgs) -> anyhow::Result<()> {
    let store = open_existing_store(settings).await?;
    let (seal, keyring) = match &args.seal.key_file {
        Some(path) => (Seal::Key, Keyring::new(read_key_file(path)?, vec![])),
        None => {
            let passphrase = passphrase(&args.seal, true)?;
            let mut salt = [0u8; 16];
            rand::rng().fill_bytes(&mut salt);
            let seal = Seal::Argon2id {
                salt: STANDARD.encode(salt),
                m_cost: M_COST,
                t_cost: T_COST,
                p_cost: P_COST,
            };
            let key = derive_key(&passphrase, &seal)?;
            (seal, Keyring::new(key, vec![]))
        }
    };
    let dump = store
        .export(&keyring)
        .await
        .context("reading the database")?;
    let counts = dump.counts();
    let file = ExportFile {
        format: FORMAT.to_owned(),
        version: VERSION,
        created_at: SystemClock.now(),
        source: Source {
            backend: store.backend_name().to_owned(),
        },
        seal,
        check: keyring.seal(CHECK_AAD, CHECK_VALUE),
        counts: Some(counts.clone()),
        data: dump,
    };
    let json = serde_json::to_vec_pretty(&file)?;
    store.close().await;
    match &args.file {
        Some(path) => write_private(path, &json)?,
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(&json)?;
            out.write_all(b"\n")?;
            out.flush()?;
        }
    }
    eprintln!(
        "exported {} to {}",
        describe(&counts),
        args.file
            .as_deref()
            .map_or_else(|| "stdout".to_owned(), |p| p.display().to_string())
    );
    Ok(())
}

pub async fn import(settings: &Settings, args: ImportArgs) -> anyhow::Result<()> {
    let bytes = read_input(args.file.as_deref())?;
    let header: Header = serde_json::from_slice(&bytes)
        .context("the input is not a provet-broker export (not JSON)")?;
    if header.format.as_deref() != Some(FORMAT) {
        bail!("the input is not a provet-broker export (no \"format\": \"{FORMAT}\")");
    }
    match header.version {
        Some(VERSION) => {}
        other => bail!(
            "this export is version {}; this build reads version {VERSION}",
            other.map_or_else(|| "(none)".to_owned(), |v| v.to_string())
        ),
    }
    let file: ExportFile = serde_json::from_slice(&bytes).context("the export file is damaged")?;
    let key = match (&file.seal, &args.seal.key_file) {
        (Seal::Key, Some(path)) => read_key_file(path)?,
        (Seal::Key, None) => {
            bail!("this export was sealed with a key file: give it with --key-file")
        }
        (Seal::Argon2id { .. }, Some(_)) => bail!(
            "this export was sealed with a passphrase, not a key file: give the passphrase ({PASSPHRASE_ENV}, --passphrase-file or the prompt)"
        ),
        (seal @ Seal::Argon2id { .. }, None) => derive_key(&passphrase(&args.seal, false)?, seal)?,
    };
    let keyring = Keyring::new(key, vec![]);
    match keyring.open(CHECK_AAD, &file.check) {
        Ok(value) if value.expose_secret() == CHECK_VALUE => {}
        _ => bail!("wrong passphrase or key for this export; nothing was imported"),
    }
    let store = open_store(settings).await?;
    store
        .migrate()
        .await
        .context("migrating the target database")?;
    let url = redact_url(&settings.database.url);
    let counts = match store.import(file.data, &keyring).await {
        Ok(counts) => counts,
        Err(StoreError::NotEmpty(what)) => bail!(
            "refusing to import into {url}: the database is not empty (it holds {what}); import only into a new, empty database. Nothing was imported"
        ),
        Err(StoreError::Crypto(CryptoError::Forged | CryptoError::Malformed)) => bail!(
            "a secret in the export does not open (the file was altered, or a record moved); nothing was imported"
        ),
        Err(e) => {
            return Err(anyhow::Error::new(e)
                .context(format!("importing into {url}; nothing was imported")));
        }
    };
    let key_id = store.keyring().current_id().to_owned();
    // The import is audited in the database it filled; an export only reads (it may run as a
    // read-only database user), so it leaves no entry.
    let audit = broker_service::AuditLog::new(store.clone(), std::sync::Arc::new(SystemClock));
    crate::cli::audit::record(
        &audit,
        broker_domain::AuditAction::Import,
        None,
        Some(format!(
            "{} export of {}",
            file.source.backend,
            file.created_at.to_rfc3339()
        )),
        broker_domain::AuditOutcome::Ok,
    )
    .await;
    store.close().await;
    eprintln!(
        "imported {} into {url} (a {} export of {}); secrets sealed with key {key_id}",
        describe(&counts),
        file.source.backend,
        file.created_at.to_rfc3339(),
    );
    Ok(())
}

fn describe(c: &DumpCounts) -> String {
    format!(
        "{} tenant(s), {} client(s), {} grant(s), {} token(s), {} API key(s), {} webhook(s), {} setting(s), {} hookup delivery(ies)",
        c.tenants,
        c.clients,
        c.grants,
        c.tokens,
        c.api_keys,
        c.webhooks,
        c.settings,
        c.hookup_deliveries
    )
}

/// The passphrase: from `--passphrase-file`, the environment, or a prompt on the terminal
/// (twice for a new export).
fn passphrase(args: &SealArgs, new: bool) -> anyhow::Result<SecretString> {
    let passphrase = if let Some(path) = &args.passphrase_file {
        let text = SecretString::from(
            fs::read_to_string(path)
                .with_context(|| format!("cannot read the passphrase file {}", path.display()))?,
        );
        SecretString::from(
            text.expose_secret()
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned(),
        )
    } else if let Ok(value) = std::env::var(PASSPHRASE_ENV) {
        SecretString::from(value)
    } else if std::io::stdin().is_terminal() || std::io::stderr().is_terminal() {
        let first = SecretString::from(
            rpassword::prompt_password("export passphrase: ").context("reading the passphrase")?,
        );
        if new {
            let again = SecretString::from(
                rpassword::prompt_password("the same again: ").context("reading the passphrase")?,
            );
            if again.expose_secret() != first.expose_secret() {
                bail!("the two passphrases differ");
            }
        }
        first
    } else {
        bail!(
            "no passphrase: set {PASSPHRASE_ENV}, or give --passphrase-file FILE (or --key-file FILE for an explicit key)"
        );
    };
    if passphrase.expose_secret().is_empty() {
        bail!("the passphrase is empty");
    }
    if new && passphrase.expose_secret().chars().count() < MIN_PASSPHRASE {
        bail!(
            "the passphrase must be at least {MIN_PASSPHRASE} characters: it alone protects every secret in the export"
        );
    }
    Ok(passphrase)
}

/// The export's key from the passphrase, with the file's salt and (bounded) costs.
fn derive_key(passphrase: &SecretString, seal: &Seal) -> anyhow::Result<MasterKey> {
    let Seal::Argon2id {
        salt,
        m_cost,
        t_cost,
        p_cost,
    } = seal
    else {
        bail!("this export was not sealed with a passphrase");
    };
    let salt = STANDARD
        .decode(salt)
        .ok()
        .filter(|s| (8..=64).contains(&s.len()))
        .context("the export's salt is damaged")?;
    if *m_cost > MAX_M_COST || *t_cost > MAX_T_COST || *p_cost > MAX_P_COST {
        bail!("the export asks for more argon2 work than this build allows");
    }
    let params = Params::new(*m_cost, *t_cost, *p_cost, Some(32))
        .map_err(|e| anyhow::anyhow!("the export's argon2 parameters: {e}"))?;
    let mut key = [0u8; 32];
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(passphrase.expose_secret().as_bytes(), &salt, &mut key)
        .map_err(|e| anyhow::anyhow!("deriving the export's key: {e}"))?;
    let master = MasterKey::from_bytes(&key);
    key.fill(0);
    Ok(master?)
}

fn read_key_file(path: &Path) -> anyhow::Result<MasterKey> {
    let text = SecretString::from(
        fs::read_to_string(path)
            .with_context(|| format!("cannot read the key file {}", path.display()))?,
    );
    MasterKey::from_base64(&text)
        .with_context(|| format!("the key file {} (base64 of 32 bytes)", path.display()))
}

/// The export from a file or stdin.
fn read_input(file: Option<&Path>) -> anyhow::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    match file {
        Some(path) => {
            bytes = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?
        }
        None => {
            std::io::stdin()
                .read_to_end(&mut bytes)
                .context("reading the export from stdin")?;
        }
    }
    Ok(bytes)
}

/// Writes next to `path`, then renames: a failed export leaves no half file behind.
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let written = options
        .open(&partial)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            f.write_all(b"\n")?;
            f.sync_all()
        })
        .and_then(|()| fs::rename(&partial, path));
    if let Err(e) = written {
        let _ = fs::remove_file(&partial);
        return Err(e).with_context(|| format!("cannot write {}", path.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seal() -> Seal {
        Seal::Argon2id {
            salt: STANDARD.encode([7u8; 16]),
            m_cost: 1024,
            t_cost: 1,
            p_cost: 1,
        }
    }

    #[test]
    fn derive_key_is_stable_and_depends_on_the_passphrase() {
        let a = derive_key(&SecretString::from("correct horse battery"), &seal()).unwrap();
        let b = derive_key(&SecretString::from("correct horse battery"), &seal()).unwrap();
        let c = derive_key(&SecretString::from("correct horse battery!"), &seal()).unwrap();
        assert_eq!(a.id(), b.id());
        assert_ne!(a.id(), c.id());
    }

    #[test]
    fn derive_key_refuses_costs_beyond_the_bounds() {
        let greedy = Seal::Argon2id {
            salt: STANDARD.encode([7u8; 16]),
            m_cost: MAX_M_COST + 1,
            t_cost: 1,
            p_cost: 1,
        };
        assert!(derive_key(&SecretString::from("x"), &greedy).is_err());
    }

    #[test]
    fn seal_header_spells_its_kdf() {
        let json = serde_json::to_value(seal()).unwrap();
        assert_eq!(json["kdf"], "argon2id");
        let key = serde_json::to_value(Seal::Key).unwrap();
        assert_eq!(key["kdf"], "key");
    }
}
