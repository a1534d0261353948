//! A release build of provet-broker run as a child process: configured by environment
//! variables only, in a temporary folder (so no `config/default.toml` is read), on a fresh
//! SQLite database; its port read from the JSON `listening` log line; stopped with SIGTERM.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStderr, Command};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::random_string;

/// How long the daemon may take to log `listening`, and to stop after SIGTERM.
const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the broker's CLI may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Only warnings and errors, except the startup module's `listening` line, which carries
/// the port.
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

/// What the daemon and its CLI are configured with.
pub struct DaemonEnv {
    pub binary: PathBuf,
    /// The working folder, holding the SQLite file; removed on drop.
    pub dir: tempfile::TempDir,
    pub database_url: String,
    pub hookup_secret: String,
    /// Base64 of 32 random bytes, so the daemon does not generate a key.
    pub master_key: String,
    /// `BROKER_SERVER__BIND`.
    pub bind: String,
    /// More `BROKER_…` variables (worker count, public URL, log level …).
    pub vars: Vec<(String, String)>,
}

impl DaemonEnv {
    /// A fresh SQLite database in a new temporary folder; loopback providers allowed over
    /// plain HTTP; no credential check on hookup, no discovery worker; quiet JSON logs.
    pub fn sqlite(binary: &Path) -> anyhow::Result<Self> {
        let binary = std::path::absolute(binary)?;
        if !binary.is_file() {
            bail!(
                "{} does not exist; build it with `cargo build --release -p provet-broker` \
                 (or pass --binary)",
                binary.display()
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("broker-bench-")
            .tempdir()
            .context("cannot create a temporary folder")?;
        let database_url = format!("sqlite://{}/broker.db?mode=rwc", dir.path().display());
        Ok(Self {
            binary,
            dir,
            database_url,
            hookup_secret: random_string(32),
            master_key: BASE64.encode(rand::random::<[u8; 32]>()),
            bind: "127.0.0.1:0".into(),
            vars: vec![
                ("BROKER_LOG__LEVEL".into(), QUIET_LOG.into()),
                (
                    "BROKER_HOOKUP__ALLOWED_HOSTS".into(),
                    r#"["127.0.0.1"]"#.into(),
                ),
                ("BROKER_HOOKUP__ALLOW_HTTP".into(), "true".into()),
                ("BROKER_TOKENS__VERIFY_ON_HOOKUP".into(), "false".into()),
                ("BROKER_DISCOVERY__ENABLED".into(), "false".into()),
            ],
        })
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
            .env("BROKER_DATABASE__URL", &self.database_url)
            .env("BROKER_SECRETS__MASTER_KEY", &self.master_key)
            .env("BROKER_HOOKUP__SECRET", &self.hookup_secret)
            .env("BROKER_LOG__FORMAT", "json")
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
}

pub struct Daemon {
    child: Child,
    pub pid: u32,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
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
        let address = match tokio::time::timeout(START_TIMEOUT, listening_rx).await {
            Ok(Ok(address)) => address,
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
            log,
        })
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

/// Reads the daemon's JSON log: hands over the `listening` address, counts warnings and
/// errors, keeps a few. Draining stderr also keeps the daemon from blocking on it.
pub async fn read_log(stderr: ChildStderr, listening: oneshot::Sender<String>) -> DaemonLog {
    let mut listening = Some(listening);
    let mut log = DaemonLog::default();
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        log.lines += 1;
        if log.tail.len() == 20 {
            log.tail.remove(0);
        }
        log.tail.push(line.clone());
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
        if field("message").as_deref() == Some("listening")
            && let (Some(address), Some(tx)) = (field("address"), listening.take())
        {
            let _ = tx.send(address);
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

pub fn keep_sample(samples: &mut Vec<String>, line: &str) {
    if samples.len() < 10 {
        samples.push(line.to_owned());
    }
}
