//! A release build of provet-broker run as a child process: configured by environment
//! variables only, in a temporary folder (so no `config/default.toml` is read), on a fresh
//! SQLite or PostgreSQL database; its port read from the `listening` log line; stopped
//! with SIGTERM.
//!
//! The daemon runs at its default configuration, as a user runs it (`info` logs, metrics,
//! API keys, the credential check on hookup, the discovery worker), except for what a
//! benchmark cannot do without: a loopback port, its own database, a master key and hookup
//! secret given (so none is generated). Logs stay in the default text format (a benchmark
//! that needs JSON fields asks for `BROKER_LOG__FORMAT=json` itself).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStderr, Command};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::random_string;

/// How long the daemon may take to log `listening`, and to stop after SIGTERM.
const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the broker's CLI (and psql) may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// The PostgreSQL server the benchmark databases are created on (trust auth, loopback only),
/// and an existing database to connect to while creating and dropping them.
pub const PG_HOST: &str = "127.0.0.1";
pub const PG_PORT: u16 = 5432;
pub const PG_USER: &str = "postgres";
pub const PG_MAINTENANCE_DB: &str = "test";

/// Only warnings and errors, except the startup module's `listening` line, which carries
/// the port. Not the default: only for benchmarks that ask for it (`--log-level`).
pub const QUIET_LOG: &str = "warn,provet_broker::startup=info";

/// `NAME=VALUE` for a `BROKER_…` variable, as a command-line argument.
pub fn parse_var(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if name.starts_with("BROKER_") => {
            Ok((name.to_owned(), value.to_owned()))
        }
        _ => Err(format!("`{text}` is not BROKER_NAME=VALUE")),
    }
}

/// Which database a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        })
    }
}

/// A fresh database: a SQLite file in the run's folder, or a new PostgreSQL database
/// `broker_bench_<random>`, dropped (`WITH (FORCE)`) when this is dropped, whatever happened.
pub struct Database {
    pub url: String,
    sqlite_file: Option<PathBuf>,
    postgres_name: Option<String>,
}

impl Database {
    pub async fn create(backend: Backend, dir: &Path) -> anyhow::Result<Self> {
        match backend {
            Backend::Sqlite => {
                let file = dir.join("broker.db");
                Ok(Self {
                    url: format!("sqlite://{}?mode=rwc", file.display()),
                    sqlite_file: Some(file),
                    postgres_name: None,
                })
            }
            Backend::Postgres => {
                let name = format!("broker_bench_{}", random_string(10).to_lowercase());
                psql(&format!("CREATE DATABASE {name}")).await?;
                Ok(Self {
                    // The server is on this machine: TLS over loopback would only spend the
                    // two cores on encryption at both ends (a daemon beside its database
                    // would use a local connection without it).
                    url: format!("postgres://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}?sslmode=disable"),
                    sqlite_file: None,
                    postgres_name: Some(name),
                })
            }
        }
    }

    /// Runs one query with the database's own command-line client (sqlite3 or psql); the
    /// rows as `a|b` lines.
    pub async fn query(&self, sql: &str) -> anyhow::Result<Vec<String>> {
        let command = match (&self.sqlite_file, &self.postgres_name) {
            (Some(file), _) => {
                let mut c = std::process::Command::new("sqlite3");
                c.arg("-batch").arg(file).arg(sql).stdin(Stdio::null());
                c
            }
            (None, Some(name)) => psql_command(name, sql),
            (None, None) => bail!("the database has neither a file nor a name"),
        };
        let output = run_command(command, sql).await?;
        Ok(String::from_utf8(output)?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect())
    }

    /// PostgreSQL only: transactions committed in the database so far (the server's
    /// statistics; a backend reports its own when it ends).
    pub async fn committed_transactions(&self) -> anyhow::Result<Option<u64>> {
        if self.postgres_name.is_none() {
            return Ok(None);
        }
        let rows = self
            .query("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
            .await?;
        let first = rows
            .first()
            .ok_or_else(|| anyhow!("pg_stat_database has no row for the database"))?;
        Ok(Some(first.parse()?))
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        if let Some(name) = &self.postgres_name {
            // Blocking, but brief and only once per run; it must happen even on an error path.
            let dropped = psql_command(
                PG_MAINTENANCE_DB,
                &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            )
            .output();
            match dropped {
                Ok(out) if out.status.success() => {}
                Ok(out) => eprintln!(
                    "cannot drop database {name}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
                Err(e) => eprintln!("cannot drop database {name}: {e}"),
            }
        }
    }
}

/// psql on `database` of the local server: one statement, unaligned rows without headers.
fn psql_command(database: &str, sql: &str) -> std::process::Command {
    let mut command = std::process::Command::new("psql");
    command
        .args(["-h", PG_HOST, "-p", &PG_PORT.to_string(), "-U", PG_USER])
        .args(["-d", database, "-v", "ON_ERROR_STOP=1", "-q", "-A", "-t"])
        .args(["-c", sql])
        .stdin(Stdio::null());
    command
}

/// One statement through psql on the local server's maintenance database.
pub async fn psql(sql: &str) -> anyhow::Result<()> {
    run_command(psql_command(PG_MAINTENANCE_DB, sql), sql).await?;
    Ok(())
}

/// Runs a helper command (psql, sqlite3) with a timeout; its stdout, or an error with its
/// stderr.
async fn run_command(command: std::process::Command, what: &str) -> anyhow::Result<Vec<u8>> {
    let output = tokio::time::timeout(
        COMMAND_TIMEOUT,
        Command::from(command).kill_on_drop(true).output(),
    )
    .await
    .with_context(|| format!("timed out: {what}"))?
    .with_context(|| format!("cannot run the command for `{what}`"))?;
    if !output.status.success() {
        bail!(
            "`{what}` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(output.stdout)
}

/// What the daemon and its CLI are configured with.
pub struct DaemonEnv {
    pub binary: PathBuf,
    pub backend: Backend,
    /// The database; declared before `dir` so that it is dropped first.
    pub database: Database,
    /// The working folder, holding the SQLite file; removed on drop.
    pub dir: tempfile::TempDir,
    pub hookup_secret: String,
    /// Base64 of 32 random bytes, so the daemon does not generate a key.
    pub master_key: String,
    /// `BROKER_SERVER__BIND`.
    pub bind: String,
    /// More `BROKER_…` variables: empty at the default configuration.
    pub vars: Vec<(String, String)>,
}

impl DaemonEnv {
    /// The daemon's default configuration on a fresh database of `backend`.
    pub async fn new(binary: &Path, backend: Backend) -> anyhow::Result<Self> {
        let binary = crate::BinaryArg {
            binary: binary.to_path_buf(),
        }
        .path()?;
        let dir = tempfile::Builder::new()
            .prefix("broker-bench-")
            .tempdir()
            .context("cannot create a temporary folder")?;
        let database = Database::create(backend, dir.path()).await?;
        Ok(Self {
            binary,
            backend,
            database,
            dir,
            hookup_secret: random_string(32),
            master_key: BASE64.encode(rand::random::<[u8; 32]>()),
            bind: "127.0.0.1:0".into(),
            vars: Vec::new(),
        })
    }

    /// The default configuration plus the one change a provider served by the benchmark
    /// on 127.0.0.1 needs: hookup URLs may name `127.0.0.1`, over plain HTTP.
    pub async fn with_local_provider(binary: &Path, backend: Backend) -> anyhow::Result<Self> {
        let mut env = Self::new(binary, backend).await?;
        env.allow_local_provider();
        Ok(env)
    }

    /// `BROKER_HOOKUP__ALLOWED_HOSTS=["127.0.0.1"]`, `BROKER_HOOKUP__ALLOW_HTTP=true`.
    pub fn allow_local_provider(&mut self) {
        self.set("BROKER_HOOKUP__ALLOWED_HOSTS", r#"["127.0.0.1"]"#);
        self.set("BROKER_HOOKUP__ALLOW_HTTP", "true");
    }

    /// A fresh SQLite database, a local provider allowed (for the older benchmarks).
    pub async fn sqlite(binary: &Path) -> anyhow::Result<Self> {
        Self::with_local_provider(binary, Backend::Sqlite).await
    }

    /// The non-default settings, for the result lines.
    pub fn overrides(&self) -> String {
        if self.vars.is_empty() {
            return "none".into();
        }
        let vars: Vec<String> = self.vars.iter().map(|(k, v)| format!("{k}={v}")).collect();
        vars.join(" ")
    }

    /// Sets (or replaces) one `BROKER_…` variable.
    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        self.vars.retain(|(n, _)| n != name);
        self.vars.push((name.to_owned(), value.into()));
    }

    /// A command for the broker binary with only the benchmark's `BROKER_` variables.
    fn command(&self) -> Command {
        let mut command = Command::new(&self.binary);
        for (name, _) in std::env::vars_os() {
            let inherited = name.to_string_lossy();
            if inherited.starts_with("BROKER_") || inherited == "RUST_LOG" {
                command.env_remove(&name);
            }
        }
        command
            .current_dir(self.dir.path())
            .env("BROKER_SERVER__BIND", &self.bind)
            .env("BROKER_DATABASE__URL", &self.database.url)
            .env("BROKER_SECRETS__MASTER_KEY", &self.master_key)
            .env("BROKER_HOOKUP__SECRET", &self.hookup_secret)
            .envs(self.vars.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        command
    }

    /// `provet-broker api-key create --name NAME --role ROLE`: the key is the last line.
    pub async fn api_key(&self, name: &str, role: &str) -> anyhow::Result<String> {
        let output = tokio::time::timeout(
            COMMAND_TIMEOUT,
            self.command()
                .args(["api-key", "create", "--name", name, "--role", role])
                .output(),
        )
        .await
        .context("`api-key create` timed out")??;
        if !output.status.success() {
            bail!(
                "`api-key create` failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        String::from_utf8(output.stdout)?
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("`api-key create` printed no key"))
    }
}

/// Warnings and errors the daemon logged.
#[derive(Default, Debug)]
pub struct DaemonLog {
    pub lines: usize,
    pub warnings: usize,
    pub errors: usize,
    pub samples: Vec<String>,
    /// The last lines, shown when the daemon fails to start.
    pub tail: Vec<String>,
    /// provet_id -> timestamp of its `discovery ok` line (logged once the result is stored).
    pub discovery_ok_at: HashMap<i64, DateTime<Utc>>,
}

impl DaemonLog {
    /// The kept warnings and errors on stderr, the counts on stdout.
    pub fn print(&self, tag: &str) {
        for s in &self.samples {
            eprintln!("[{tag}] log: {s}");
        }
        println!(
            "[{tag}] log: {} lines, {} warnings, {} errors",
            self.lines, self.warnings, self.errors
        );
    }
}

pub struct Daemon {
    child: Child,
    pub pid: u32,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// When the harness read the `listening` line.
    pub listening_at: Instant,
    log: JoinHandle<DaemonLog>,
}

impl Daemon {
    pub async fn start(env: &DaemonEnv) -> anyhow::Result<Self> {
        let mut child = env
            .command()
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", env.binary.display()))?;
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| anyhow!("the daemon's stderr is not piped"))?;
        let (listening_tx, listening_rx) = oneshot::channel();
        let log = tokio::spawn(read_log(stderr, listening_tx));
        let (address, listening_at) = match tokio::time::timeout(START_TIMEOUT, listening_rx).await
        {
            Ok(Ok(listening)) => listening,
            outcome => {
                let _ = child.start_kill();
                let status = child.wait().await;
                let tail = log.await.map(|l| l.tail.join("\n")).unwrap_or_default();
                let why = if outcome.is_err() {
                    "did not log `listening` in time"
                } else {
                    "exited before listening"
                };
                bail!("the daemon {why} ({status:?}); its last log lines:\n{tail}");
            }
        };
        let Some(pid) = child.id() else {
            bail!("the daemon exited right after listening");
        };
        if !address.starts_with("127.0.0.1:") {
            let _ = child.start_kill();
            bail!("the daemon listens on {address}, not on 127.0.0.1");
        }
        Ok(Self {
            child,
            pid,
            base: format!("http://{address}"),
            listening_at,
            log,
        })
    }

    /// How the daemon exited, if it already has.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(describe_exit(status)),
            Ok(None) | Err(_) => None,
        }
    }

    /// SIGTERM, then wait; killed if it does not stop in time. Answers how it exited.
    pub async fn stop(mut self) -> anyhow::Result<(String, DaemonLog)> {
        let exit = match self.child.id() {
            Some(pid) => {
                terminate(pid).await?;
                match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
                    Ok(status) => describe_exit(status?),
                    Err(_) => {
                        self.child.kill().await?;
                        "killed: did not stop within 60 s of SIGTERM".to_owned()
                    }
                }
            }
            None => format!("exited early ({})", describe_exit(self.child.wait().await?)),
        };
        let log = self.log.await.context("the log reader panicked")?;
        Ok((exit, log))
    }
}

/// `kill -TERM pid`.
pub async fn terminate(pid: u32) -> anyhow::Result<()> {
    let term = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await
        .context("cannot run kill")?;
    if !term.success() {
        bail!("kill -TERM {pid} failed: {term}");
    }
    Ok(())
}

pub fn describe_exit(status: std::process::ExitStatus) -> String {
    match status.code() {
        Some(code) => code.to_string(),
        None => status.to_string().replace(' ', "-"),
    }
}

/// A line of the default text format: `TIME LEVEL [spans:]target: message key=value ...`.
fn read_text_line(
    line: &str,
    read_at: Instant,
    listening: &mut Option<oneshot::Sender<(String, Instant)>>,
    log: &mut DaemonLog,
) {
    let level = line.split_whitespace().nth(1).unwrap_or_default();
    if line.contains(": listening ") {
        let address = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("address="));
        if let (Some(address), Some(tx)) = (address, listening.take()) {
            let _ = tx.send((address.to_owned(), read_at));
        }
    }
    match level {
        "WARN" => log.warnings += 1,
        "ERROR" => log.errors += 1,
        "INFO" | "DEBUG" | "TRACE" => return,
        // Not a log line (a panic message, say): worth a look.
        _ => log.warnings += 1,
    }
    keep_sample(&mut log.samples, line);
}

/// Reads the daemon's log (text, or JSON when asked for): hands over the `listening` address (and when it was read),
/// counts warnings and errors, keeps a few, and notes when each tenant's discovery result
/// was stored. Draining stderr also keeps the daemon from blocking on it.
async fn read_log(stderr: ChildStderr, listening: oneshot::Sender<(String, Instant)>) -> DaemonLog {
    let mut listening = Some(listening);
    let mut log = DaemonLog::default();
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let read_at = Instant::now();
        log.lines += 1;
        if log.tail.len() == 20 {
            log.tail.remove(0);
        }
        log.tail.push(line.clone());
        if !line.starts_with('{') {
            read_text_line(&line, read_at, &mut listening, &mut log);
            continue;
        }
        let Ok(event) = serde_json::from_str::<Value>(&line) else {
            log.warnings += 1;
            keep_sample(&mut log.samples, &line);
            continue;
        };
        let field = |name: &str| {
            event
                .get("fields")
                .and_then(|f| f.get(name))
                .or_else(|| event.get(name))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        match field("message").as_deref() {
            Some("listening") => {
                if let (Some(address), Some(tx)) = (field("address"), listening.take()) {
                    let _ = tx.send((address, read_at));
                }
            }
            Some("discovery ok") => {
                let tenant = event
                    .get("span")
                    .and_then(|s| s.get("provet_id"))
                    .and_then(Value::as_i64);
                let at = event
                    .get("timestamp")
                    .and_then(Value::as_str)
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok());
                if let (Some(tenant), Some(at)) = (tenant, at) {
                    log.discovery_ok_at.insert(tenant, at.with_timezone(&Utc));
                }
            }
            _ => {}
        }
        match event.get("level").and_then(Value::as_str) {
            Some("WARN") => log.warnings += 1,
            Some("ERROR") => log.errors += 1,
            _ => continue,
        }
        keep_sample(&mut log.samples, &line);
    }
    log
}

fn keep_sample(samples: &mut Vec<String>, line: &str) {
    if samples.len() < 10 {
        samples.push(line.to_owned());
    }
}
