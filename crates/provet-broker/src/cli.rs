//! The command line: `serve` (the default), `migrate`, `api-key`, `tenants`, `discovery`,
//! `rekey`, `hookup-url`, `healthcheck`, `completions`, `export`, `import`.
//!
//! Here the arguments (clap), `migrate`, `rekey` and `hookup-url`; one file per larger
//! command: `api_keys.rs`, `tenants.rs` (`list`, `show`) with `tenants_add.rs` and
//! `tenants_remove.rs`, `discovery.rs`, `healthcheck.rs` (the readiness probe); `audit.rs`
//! the audit entries commands leave. `export` and `import` are `crate::export`.

use std::path::PathBuf;

use anyhow::Context;
use broker_api::UseCases;
use broker_domain::{
    ApiKeyRole, AuditAction, CredentialsState, DiscoveryState, GrantState, GrantType, ProvetId,
    TenantStatus,
};
use broker_service::hookup::HookupSecrets;
use clap::builder::TypedValueParser;
use clap::{CommandFactory, Parser, Subcommand};
use secrecy::ExposeSecret;

use crate::config::Settings;
use crate::startup::{Application, open_existing_store, open_store};

mod api_keys;
pub(crate) mod audit;
mod discovery;
mod healthcheck;
mod tenants;
mod tenants_add;
mod tenants_remove;

#[derive(Debug, Parser)]
#[command(
    name = "provet-broker",
    version,
    about = "OAuth client store and token broker for Provet Cloud integrations"
)]
pub struct Cli {
    /// A TOML configuration file, layered over config/default.toml and under BROKER_* variables.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Migrate, then serve HTTP until SIGTERM/SIGINT (the default).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Manage API keys.
    #[command(subcommand)]
    ApiKey(ApiKeyCommand),
    /// Inspect tenants.
    #[command(subcommand)]
    Tenants(TenantsCommand),
    /// OpenID Connect discovery.
    #[command(subcommand)]
    Discovery(DiscoveryCommand),
    /// Re-seal every stored secret with the current master key (run after adding a new
    /// `secrets.master_key` and moving the old one to `secrets.previous_keys`).
    Rekey,
    /// Print the hookup URL to give Provet (a credential: it is logged only when generated).
    /// Never generates a secret: fails when none is configured or stored yet.
    HookupUrl,
    /// Ask the daemon's `/readyz`: exit 0 when it answers 2xx, 1 otherwise (with the reason
    /// on stderr). For container health checks in images without a shell.
    Healthcheck {
        /// The URL to ask; default `http://{server.bind}/readyz` (an unspecified bind address
        /// such as 0.0.0.0 is asked on loopback).
        #[arg(long, value_name = "URL")]
        url: Option<String>,
        /// How long to wait for the answer, connecting included (at most 60s).
        #[arg(long, default_value = "3s", value_parser = humantime_serde::re::humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Print a shell completion script, e.g. `provet-broker completions bash > /etc/bash_completion.d/provet-broker`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write every tenant, client, grant, token, API key, webhook and setting (with the
    /// hookup secret) to one file, secrets sealed under a passphrase or --key-file.
    Export(crate::export::ExportArgs),
    /// Load an export into a new, empty database (migrated first), its secrets sealed
    /// again under this database's master key.
    Import(crate::export::ImportArgs),
}

#[derive(Debug, Subcommand)]
pub enum ApiKeyCommand {
    /// Create a key; the key alone is printed on the last line of stdout.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long, value_parser = role_parser())]
        role: ApiKeyRole,
        /// Limit a token key to a tenant (repeatable); without it the key serves every
        /// tenant. Admin keys are never tenant-scoped.
        #[arg(long = "tenant", value_name = "PROVET_ID")]
        tenants: Vec<ProvetId>,
    },
    /// List keys (never the keys themselves).
    List,
    /// Revoke a key by id.
    Revoke { id: i64 },
}

#[derive(Debug, Subcommand)]
pub enum DiscoveryCommand {
    /// Run discovery now: for one tenant, or for every failed / stale / all tenants (with
    /// progress on stderr). Beside running daemons this shares the work with them safely.
    Rerun {
        #[arg(long, conflicts_with_all = ["failed", "all"])]
        provet_id: Option<ProvetId>,
        /// Tenants whose last discovery failed.
        #[arg(long, conflicts_with = "all")]
        failed: bool,
        /// Every tenant with a discovery URL.
        #[arg(long)]
        all: bool,
    },
}

/// How `tenants list` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns under a header row.
    Table,
    /// One JSON object per line.
    Json,
}

impl Output {
    /// `table` for a person at a terminal, `json` for a program reading a pipe or file.
    pub fn for_stdout() -> Self {
        use std::io::IsTerminal;
        if std::io::stdout().is_terminal() {
            Self::Table
        } else {
            Self::Json
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum TenantsCommand {
    /// List tenants, ordered by provet_id; each filter narrows the list.
    List {
        /// Installed (`active`) or uninstalled (`removed`); without it, both.
        #[arg(long, value_parser = state_parser(TenantStatus::ALL, TenantStatus::as_str))]
        status: Option<TenantStatus>,
        /// The current client's credentials state, as the last check left it.
        #[arg(long, value_parser = state_parser(CredentialsState::ALL, CredentialsState::as_str))]
        credentials: Option<CredentialsState>,
        /// Tenants with at least one grant (a connected clinic user) in this state.
        #[arg(long, value_parser = state_parser(GrantState::ALL, GrantState::as_str))]
        grant_state: Option<GrantState>,
        /// The OAuth flow of the current client.
        #[arg(long, value_parser = state_parser(GrantType::ALL, GrantType::as_str))]
        grant_type: Option<GrantType>,
        /// The OpenID Connect discovery state (`not_applicable`: no discovery URL).
        #[arg(long, value_parser = state_parser(DiscoveryState::ALL, DiscoveryState::as_str))]
        discovery: Option<DiscoveryState>,
        /// The most tenants listed.
        #[arg(long, default_value_t = 100)]
        limit: u64,
        /// `table`: aligned columns with a header row, for people (the default when stdout is
        /// a terminal); `json`: one tenant per line, the full view `tenants show` prints (the
        /// default otherwise, e.g. in a pipe).
        #[arg(long, value_enum)]
        output: Option<Output>,
    },
    /// Show one tenant as JSON.
    Show { provet_id: ProvetId },
    /// Register a tenant from a hookup message (credentials Provet delivered by email):
    /// validated and stored exactly as a hookup. Prints the receipt as JSON.
    Add {
        /// The message; without it, read from stdin.
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
    },
    /// The tenant removed the integration: disable it and wipe its secret, grants and tokens.
    /// Asks for the provet_id to be typed again.
    Remove {
        provet_id: ProvetId,
        /// Do not ask (for scripts).
        #[arg(long)]
        yes: bool,
    },
}

impl Cli {
    pub async fn run(self, settings: Settings) -> anyhow::Result<()> {
        match self.command.unwrap_or(Command::Serve) {
            Command::Serve => {
                Application::build(settings)
                    .await?
                    .run_until_stopped()
                    .await
            }
            Command::Migrate => migrate(&settings).await,
            Command::Rekey => rekey(&settings).await,
            Command::ApiKey(cmd) => api_keys::run(&settings, cmd).await,
            Command::Discovery(DiscoveryCommand::Rerun {
                provet_id,
                failed,
                all,
            }) => discovery::rerun(&settings, provet_id, failed, all).await,
            Command::Tenants(cmd) => tenants::run(&settings, cmd).await,
            Command::HookupUrl => print_hookup_url(&settings).await,
            Command::Healthcheck { url, timeout } => {
                healthcheck::run(&settings, url.as_deref(), timeout).await
            }
            Command::Completions { shell } => {
                print_completions(shell);
                Ok(())
            }
            Command::Export(args) => crate::export::export(&settings, args).await,
            Command::Import(args) => crate::export::import(&settings, args).await,
        }
    }
}

/// Writes the completion script for `shell` to stdout (needs no configuration).
pub fn print_completions(shell: clap_complete::Shell) {
    clap_complete::generate(
        shell,
        &mut Cli::command(),
        "provet-broker",
        &mut std::io::stdout(),
    );
}

/// `hookup-url`: the URL on stdout, its fingerprint (as the daemon logs it) on stderr.
async fn print_hookup_url(settings: &Settings) -> anyhow::Result<()> {
    let public_url = url::Url::parse(&settings.server.public_url)
        .context("server.public_url must be an absolute URL")?;
    // Read-only: never creates the database, migrates or generates a master key.
    let store = if settings.hookup.secret.expose_secret().is_empty() {
        Some(open_existing_store(settings).await?)
    } else {
        None
    };
    let secret = crate::startup::current_hookup_secret(settings, store.as_ref())
        .await?
        .context(
            "no hookup secret is stored yet: the daemon generates one on its first start (`provet-broker serve`), or set hookup.secret",
        )?;
    eprintln!(
        "hookup secret fingerprint {}",
        broker_service::hookup::fingerprint(&secret)
    );
    println!("{}", crate::startup::hookup_url(&public_url, &secret));
    Ok(())
}

/// A state enum's argument: one of its spellings (listed in `--help`, and in the error for
/// any other value), parsed into the enum.
fn state_parser<T>(
    all: &'static [T],
    as_str: fn(T) -> &'static str,
) -> impl TypedValueParser<Value = T>
where
    T: std::str::FromStr + Copy + Send + Sync + 'static,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    clap::builder::PossibleValuesParser::new(all.iter().map(|v| as_str(*v)))
        .try_map(|s| s.parse::<T>())
}

async fn migrate(settings: &Settings) -> anyhow::Result<()> {
    let store = open_store(settings).await?;
    store.migrate().await.context("migrating")?;
    eprintln!("migrations applied");
    Ok(())
}

async fn rekey(settings: &Settings) -> anyhow::Result<()> {
    let store = open_store(settings).await?;
    store.migrate().await?;
    let report = store.settings().rekey().await.context("re-sealing secrets");
    let audit = broker_service::AuditLog::new(
        store.clone(),
        std::sync::Arc::new(broker_service::SystemClock),
    );
    let outcome = audit::outcome(&report);
    audit::record(
        &audit,
        AuditAction::Rekey,
        None,
        Some(format!("key {}", store.keyring().current_id())),
        outcome,
    )
    .await;
    let report = report?;
    println!(
        "re-sealed {} secret(s) with key {}; {} already used it. The old key can now be removed from secrets.previous_keys.",
        report.resealed,
        store.keyring().current_id(),
        report.already_current
    );
    Ok(())
}

/// `--role`: one of the roles' spellings (listed in `--help`), parsed into the enum.
fn role_parser() -> impl TypedValueParser<Value = ApiKeyRole> {
    clap::builder::PossibleValuesParser::new(ApiKeyRole::ALL.iter().map(|r| r.as_str()))
        .try_map(|s| s.parse::<ApiKeyRole>())
}

/// The use cases without the HTTP server, for commands run beside (or instead of) the daemon.
pub(super) async fn offline_use_cases(settings: &Settings) -> anyhow::Result<UseCases> {
    let store = open_store(settings).await?;
    store.migrate().await?;
    // Commands never answer hookups: a throwaway secret keeps the URL closed.
    crate::startup::use_cases(
        settings,
        store,
        HookupSecrets::new(HookupSecrets::generate(), &[]),
    )
}

/// The use cases over an existing, migrated database, for commands that only read: nothing
/// is created or migrated (see `open_existing_store`).
pub(super) async fn read_only_use_cases(settings: &Settings) -> anyhow::Result<UseCases> {
    let store = open_existing_store(settings).await?;
    crate::startup::use_cases(
        settings,
        store,
        HookupSecrets::new(HookupSecrets::generate(), &[]),
    )
}
