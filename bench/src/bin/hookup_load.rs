//! `hookup-load`: distinct hookup messages from concurrent senders against a running
//! release build of provet-broker, on SQLite and on PostgreSQL.
//!
//! For each backend it starts the daemon on a free loopback port with a fresh database,
//! sends warm-up messages (excluded from the figures), then the measured messages from
//! exactly `--concurrency` senders, each over its own keep-alive connection. Every latency
//! goes into an HDR histogram. Afterwards every message answered 200 is looked up through
//! `GET /admin/tenants`; the process exits non-zero when one is missing. Only 127.0.0.1 is
//! ever contacted.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use rand::Rng;
use rand::distr::Alphanumeric;
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

use broker_bench::daemon::{DaemonLog, describe_exit, read_log, terminate};

/// The PostgreSQL server the benchmark databases are created on (trust auth, loopback only).
const PG_HOST: &str = "127.0.0.1";
const PG_PORT: u16 = 5432;
const PG_USER: &str = "postgres";
/// An existing database to connect to while creating and dropping the benchmark's own.
const PG_MAINTENANCE_DB: &str = "test";

/// Measured messages use provet_id 1..=messages; warm-up ids start here, so both sets are
/// distinct and the measured ids read as in the issue.
const WARMUP_FIRST_ID: i64 = 1_000_001;

/// How long the daemon may take to log `listening`, and to stop after SIGTERM.
const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a helper command (psql, the broker's CLI) may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Load test of the hookup intake (a benchmark, not a test).
#[derive(Debug, Parser)]
#[command(name = "hookup-load", version)]
struct Args {
    /// The provet-broker binary; build it with `cargo build --release -p provet-broker`.
    #[arg(long, default_value = "target/release/provet-broker")]
    binary: PathBuf,
    /// Which database(s) to run against.
    #[arg(long, value_enum, default_value_t = BackendChoice::Both)]
    backend: BackendChoice,
    /// Measured messages per backend, each a distinct hookup.
    #[arg(long, default_value_t = 5000)]
    messages: usize,
    /// Concurrent senders, each with its own keep-alive connection.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Warm-up messages per backend (distinct ids, excluded from the figures).
    #[arg(long, default_value_t = 200)]
    warmup: usize,
    /// Timeout of each HTTP request, in seconds.
    #[arg(long, default_value_t = 10)]
    request_timeout: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BackendChoice {
    Sqlite,
    Postgres,
    Both,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        })
    }
}

/// One hookup message, built before the clock starts.
struct Message {
    provet_id: i64,
    client_id: String,
    body: String,
}

/// What one batch of messages (warm-up or measured) produced.
struct Batch {
    sent: usize,
    elapsed: Duration,
    /// Latency of every answered request, in microseconds.
    latency_us: Histogram<u64>,
    /// provet_id -> client_id of every message answered 200.
    accepted: HashMap<i64, String>,
    /// Answers other than 200, by status.
    non_200: BTreeMap<u16, usize>,
    /// 200 answers whose body was not the expected receipt.
    odd_receipts: usize,
    /// Requests without an answer (timeout, connection error).
    failed: usize,
    /// The first few problems, to print.
    samples: Vec<String>,
}

impl Batch {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            sent: 0,
            elapsed: Duration::ZERO,
            latency_us: Histogram::new_with_bounds(1, 120_000_000, 3)?,
            accepted: HashMap::new(),
            non_200: BTreeMap::new(),
            odd_receipts: 0,
            failed: 0,
            samples: Vec::new(),
        })
    }

    fn merge(&mut self, other: Self) -> anyhow::Result<()> {
        self.sent += other.sent;
        self.latency_us.add(&other.latency_us)?;
        self.accepted.extend(other.accepted);
        for (status, n) in other.non_200 {
            *self.non_200.entry(status).or_default() += n;
        }
        self.odd_receipts += other.odd_receipts;
        self.failed += other.failed;
        for s in other.samples {
            self.note(s);
        }
        Ok(())
    }

    fn note(&mut self, sample: String) {
        if self.samples.len() < 5 {
            self.samples.push(sample);
        }
    }

    fn non_200_total(&self) -> usize {
        self.non_200.values().sum()
    }
}

/// The storage check: every message answered 200 looked up in the daemon.
struct Verification {
    tenants_listed: usize,
    measured_verified: usize,
    warmup_verified: usize,
    /// Answered 200 but absent, or stored with another client_id.
    missing: Vec<String>,
}

struct Report {
    backend: Backend,
    senders: usize,
    measured: Batch,
    warmup: Batch,
    verification: Verification,
    log: DaemonLog,
    exit: String,
}

impl Report {
    fn summary(&self) -> String {
        let m = &self.measured;
        let secs = m.elapsed.as_secs_f64();
        let rate = if secs > 0.0 {
            m.sent as f64 / secs
        } else {
            0.0
        };
        let ms = |us: u64| us as f64 / 1000.0;
        let h = &m.latency_us;
        format!(
            "{backend:<8} messages={sent} senders={senders} non200={non200}{by_status} failed={failed} \
             elapsed={secs:.2}s rate={rate:.0} msg/s p50={p50:.1}ms p99={p99:.1}ms max={max:.1}ms \
             verified={verified}/{accepted} (warm-up {wv}/{wa}) missing={missing} \
             daemon-log warn={warn} error={error} exit={exit}",
            backend = self.backend,
            sent = m.sent,
            senders = self.senders,
            non200 = m.non_200_total(),
            by_status = if m.non_200.is_empty() {
                String::new()
            } else {
                format!("{:?}", m.non_200)
            },
            failed = m.failed,
            p50 = ms(h.value_at_quantile(0.50)),
            p99 = ms(h.value_at_quantile(0.99)),
            max = ms(h.max()),
            verified = self.verification.measured_verified,
            accepted = m.accepted.len(),
            wv = self.verification.warmup_verified,
            wa = self.warmup.accepted.len(),
            missing = self.verification.missing.len(),
            warn = self.log.warnings,
            error = self.log.errors,
            exit = self.exit,
        )
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("hookup-load: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs every chosen backend; `Ok(false)` when a message answered 200 is not stored.
async fn run(args: &Args) -> anyhow::Result<bool> {
    if args.concurrency == 0 || args.messages == 0 {
        bail!("--messages and --concurrency must be at least 1");
    }
    let binary = std::path::absolute(&args.binary)?;
    if !binary.is_file() {
        bail!(
            "{} does not exist; build it with `cargo build --release -p provet-broker` \
             (or pass --binary)",
            binary.display()
        );
    }
    let backends = match args.backend {
        BackendChoice::Sqlite => vec![Backend::Sqlite],
        BackendChoice::Postgres => vec![Backend::Postgres],
        BackendChoice::Both => vec![Backend::Sqlite, Backend::Postgres],
    };
    eprintln!(
        "hookup-load: {} measured + {} warm-up messages, {} senders, binary {}",
        args.messages,
        args.warmup,
        args.concurrency,
        binary.display()
    );

    let mut summaries = Vec::new();
    let mut all_stored = true;
    for backend in backends {
        eprintln!("[{backend}] starting");
        let report = run_backend(args, &binary, backend)
            .await
            .with_context(|| format!("{backend} run failed"))?;
        print_details(&report);
        let line = report.summary();
        println!("{line}");
        summaries.push(line);
        all_stored &= report.verification.missing.is_empty();
    }
    if summaries.len() > 1 {
        println!("summary:");
        for line in &summaries {
            println!("  {line}");
        }
    }
    if !all_stored {
        eprintln!("hookup-load: FAILED: some messages answered 200 are not in the database");
    }
    Ok(all_stored)
}

fn print_details(report: &Report) {
    let tag = report.backend;
    for s in report.warmup.samples.iter().chain(&report.measured.samples) {
        eprintln!("[{tag}] request problem: {s}");
    }
    for s in &report.verification.missing {
        eprintln!("[{tag}] NOT STORED: {s}");
    }
    for s in &report.log.samples {
        eprintln!("[{tag}] daemon log: {s}");
    }
    eprintln!(
        "[{tag}] tenants listed by the daemon: {}; daemon log lines: {}",
        report.verification.tenants_listed, report.log.lines
    );
    if report.measured.odd_receipts > 0 {
        eprintln!(
            "[{tag}] {} answers were 200 with an unexpected body",
            report.measured.odd_receipts
        );
    }
}

/// One backend from a fresh database to a stopped daemon; the PostgreSQL database is
/// dropped whatever happened.
async fn run_backend(args: &Args, binary: &Path, backend: Backend) -> anyhow::Result<Report> {
    let dir = tempfile::Builder::new()
        .prefix("hookup-load-")
        .tempdir()
        .context("cannot create a temporary folder")?;
    match backend {
        Backend::Sqlite => {
            let url = format!("sqlite://{}/broker.db?mode=rwc", dir.path().display());
            run_with_database(args, binary, backend, dir.path(), &url).await
        }
        Backend::Postgres => {
            let name = format!("broker_bench_{}", random_string(10).to_lowercase());
            psql(&format!("CREATE DATABASE {name}")).await?;
            let url = format!("postgres://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}");
            let result = run_with_database(args, binary, backend, dir.path(), &url).await;
            let dropped = psql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
            let report = result?;
            dropped.with_context(|| format!("cannot drop database {name}"))?;
            Ok(report)
        }
    }
}

async fn run_with_database(
    args: &Args,
    binary: &Path,
    backend: Backend,
    dir: &Path,
    database_url: &str,
) -> anyhow::Result<Report> {
    let env = DaemonEnv {
        dir: dir.to_path_buf(),
        database_url: database_url.to_owned(),
        hookup_secret: random_string(32),
        master_key: BASE64.encode(rand::random::<[u8; 32]>()),
    };
    let mut daemon = Daemon::start(binary, &env).await?;
    let result = load_and_verify(args, binary, backend, &env, &daemon.base).await;
    let (exit, log) = daemon.stop().await?;
    let (measured, warmup, verification) = result?;
    Ok(Report {
        backend,
        senders: args.concurrency,
        measured,
        warmup,
        verification,
        log,
        exit,
    })
}

async fn load_and_verify(
    args: &Args,
    binary: &Path,
    backend: Backend,
    env: &DaemonEnv,
    base: &str,
) -> anyhow::Result<(Batch, Batch, Verification)> {
    let timeout = Duration::from_secs(args.request_timeout);
    let url = format!("{base}/hookup/{}", env.hookup_secret);
    // One client per sender, at most one idle connection each: 64 senders = 64 keep-alive
    // connections, as 64 Provet workers would hold.
    let clients = (0..args.concurrency)
        .map(|_| http_client(timeout, 1))
        .collect::<anyhow::Result<Vec<_>>>()?;

    let warmup_messages = build_messages(WARMUP_FIRST_ID, args.warmup);
    let measured_messages = build_messages(1, args.messages);
    let body_bytes: usize = measured_messages.iter().map(|m| m.body.len()).sum();
    eprintln!(
        "[{backend}] daemon at {base}; mean body {} bytes",
        body_bytes / measured_messages.len().max(1)
    );

    eprintln!("[{backend}] warm-up: {} messages", args.warmup);
    let warmup = send_all(&clients, &url, warmup_messages).await?;
    eprintln!(
        "[{backend}] measured: {} messages from {} senders",
        args.messages, args.concurrency
    );
    let measured = send_all(&clients, &url, measured_messages).await?;
    drop(clients);

    eprintln!("[{backend}] verifying storage");
    let key = admin_key(binary, env).await?;
    let stored = stored_tenants(&http_client(timeout, 1)?, base, &key).await?;
    let verification = verify(&stored, &measured, &warmup);
    Ok((measured, warmup, verification))
}

fn http_client(timeout: Duration, idle_per_host: usize) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(timeout)
        .timeout(timeout)
        .pool_max_idle_per_host(idle_per_host)
        .pool_idle_timeout(Duration::from_secs(60))
        .build()?)
}

/// Distinct hookups, sized like real ones (~510 bytes): a 40-character client_id and a
/// 128-character client_secret, as django-oauth-toolkit generates them.
fn build_messages(first_id: i64, count: usize) -> Vec<Message> {
    (0..count)
        .map(|i| {
            let provet_id = first_id + i as i64;
            let client_id = random_string(40);
            let body = json!({
                "provet_id": provet_id,
                "client_id": client_id,
                "client_secret": random_string(128),
                "algorithm": null,
                "authorization_grant_type": "client_credentials",
                "client_type": "confidential",
                "redirect_uris": "",
                "token_url": format!("https://us.provetcloud.com/{provet_id}/oauth2/token/"),
                "authorize_url": format!("https://us.provetcloud.com/{provet_id}/oauth2/authorize/"),
                "openid_autodiscovery_url": null,
                "departments": [provet_id * 10 + 1, provet_id * 10 + 2],
            })
            .to_string();
            Message {
                provet_id,
                client_id,
                body,
            }
        })
        .collect()
}

/// Sends every message from `clients.len()` concurrent senders that take the next message
/// as they finish the last one.
async fn send_all(
    clients: &[reqwest::Client],
    url: &str,
    messages: Vec<Message>,
) -> anyhow::Result<Batch> {
    let messages = Arc::new(messages);
    let next = Arc::new(AtomicUsize::new(0));
    let url: Arc<str> = Arc::from(url);
    let started = Instant::now();
    let mut senders = JoinSet::new();
    for client in clients {
        senders.spawn(sender(
            client.clone(),
            Arc::clone(&url),
            Arc::clone(&messages),
            Arc::clone(&next),
        ));
    }
    let mut batch = Batch::new()?;
    while let Some(joined) = senders.join_next().await {
        batch.merge(joined.context("a sender panicked")??)?;
    }
    batch.elapsed = started.elapsed();
    Ok(batch)
}

async fn sender(
    client: reqwest::Client,
    url: Arc<str>,
    messages: Arc<Vec<Message>>,
    next: Arc<AtomicUsize>,
) -> anyhow::Result<Batch> {
    let mut batch = Batch::new()?;
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some(message) = messages.get(i) else {
            return Ok(batch);
        };
        batch.sent += 1;
        let started = Instant::now();
        let answer = async {
            let response = client
                .post(&*url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(message.body.clone())
                .send()
                .await?;
            let status = response.status().as_u16();
            let body = response.bytes().await?;
            Ok::<_, reqwest::Error>((status, body))
        }
        .await;
        let latency = started.elapsed();
        match answer {
            Ok((status, body)) => {
                let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
                batch.latency_us.saturating_record(us.max(1));
                if status == 200 {
                    if !is_receipt(&body, message) {
                        batch.odd_receipts += 1;
                        batch.note(format!(
                            "provet_id {}: 200 with {}",
                            message.provet_id,
                            String::from_utf8_lossy(&body)
                        ));
                    }
                    // Stored by contract, whatever the body says: the check will tell.
                    batch
                        .accepted
                        .insert(message.provet_id, message.client_id.clone());
                } else {
                    *batch.non_200.entry(status).or_default() += 1;
                    batch.note(format!(
                        "provet_id {}: {status} after {:.1} ms: {}",
                        message.provet_id,
                        latency.as_secs_f64() * 1000.0,
                        String::from_utf8_lossy(&body)
                    ));
                }
            }
            Err(e) => {
                batch.failed += 1;
                batch.note(format!(
                    "provet_id {}: no answer after {:.1} ms: {e}",
                    message.provet_id,
                    latency.as_secs_f64() * 1000.0
                ));
            }
        }
    }
}

/// `{"provet_id", "client_id", "status": "registered"}` for this message.
fn is_receipt(body: &[u8], message: &Message) -> bool {
    serde_json::from_slice::<Value>(body).is_ok_and(|v| {
        v["provet_id"].as_i64() == Some(message.provet_id)
            && v["client_id"].as_str() == Some(message.client_id.as_str())
            && v["status"].as_str() == Some("registered")
    })
}

/// Every stored tenant's provet_id and client_id, paging through `GET /admin/tenants`.
async fn stored_tenants(
    client: &reqwest::Client,
    base: &str,
    key: &str,
) -> anyhow::Result<HashMap<i64, String>> {
    let mut stored = HashMap::new();
    let mut after: Option<i64> = None;
    loop {
        let mut url = format!("{base}/admin/tenants?limit=500");
        if let Some(after) = after {
            url.push_str(&format!("&after={after}"));
        }
        let response = client.get(&url).bearer_auth(key).send().await?;
        let status = response.status();
        let body = response.text().await?;
        if !status.is_success() {
            bail!("GET {url} answered {status}: {body}");
        }
        let page: Value = serde_json::from_str(&body).context("the tenant page is not JSON")?;
        let tenants = page["tenants"]
            .as_array()
            .ok_or_else(|| anyhow!("the tenant page has no `tenants` array: {body}"))?;
        for tenant in tenants {
            let provet_id = tenant["provet_id"]
                .as_i64()
                .ok_or_else(|| anyhow!("a tenant without provet_id: {tenant}"))?;
            let client_id = tenant["client"]["client_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            stored.insert(provet_id, client_id);
        }
        match page["next_after"].as_i64() {
            Some(next) if after.is_none_or(|a| next > a) => after = Some(next),
            Some(next) => bail!("next_after did not advance ({next} after {after:?})"),
            None => return Ok(stored),
        }
    }
}

fn verify(stored: &HashMap<i64, String>, measured: &Batch, warmup: &Batch) -> Verification {
    let mut missing = Vec::new();
    let mut count = |accepted: &HashMap<i64, String>| {
        let mut verified = 0;
        for (provet_id, client_id) in accepted {
            match stored.get(provet_id) {
                Some(found) if found == client_id => verified += 1,
                Some(found) => missing.push(format!(
                    "provet_id {provet_id} stored with client_id {found}, sent {client_id}"
                )),
                None => missing.push(format!("provet_id {provet_id} answered 200, not listed")),
            }
        }
        verified
    };
    let measured_verified = count(&measured.accepted);
    let warmup_verified = count(&warmup.accepted);
    missing.sort();
    Verification {
        tenants_listed: stored.len(),
        measured_verified,
        warmup_verified,
        missing,
    }
}

/// What the daemon and its CLI are configured with: environment variables only.
struct DaemonEnv {
    dir: PathBuf,
    database_url: String,
    hookup_secret: String,
    /// Base64 of 32 random bytes: a configured key, so the daemon does not warn about
    /// generating one.
    master_key: String,
}

impl DaemonEnv {
    /// A command for the broker binary, run in the temporary folder (so no
    /// `config/default.toml` is read) with only the benchmark's `BROKER_` variables.
    fn command(&self, binary: &Path) -> Command {
        let mut command = Command::new(binary);
        for (name, _) in std::env::vars_os() {
            let inherited = name.to_string_lossy();
            if inherited.starts_with("BROKER_") || inherited == "RUST_LOG" {
                command.env_remove(&name);
            }
        }
        command
            .current_dir(&self.dir)
            .env("BROKER_SERVER__BIND", "127.0.0.1:0")
            .env("BROKER_DATABASE__URL", &self.database_url)
            .env("BROKER_SECRETS__MASTER_KEY", &self.master_key)
            .env("BROKER_HOOKUP__SECRET", &self.hookup_secret)
            .env("BROKER_LOG__FORMAT", "json")
            .env("BROKER_LOG__LEVEL", "info")
            // The messages name provetcloud.com hosts: the daemon must never call them from
            // a benchmark (no credential check, no discovery).
            .env("BROKER_TOKENS__VERIFY_ON_HOOKUP", "false")
            .env("BROKER_DISCOVERY__ENABLED", "false")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        command
    }
}

struct Daemon {
    child: Child,
    base: String,
    log: JoinHandle<DaemonLog>,
}

impl Daemon {
    async fn start(binary: &Path, env: &DaemonEnv) -> anyhow::Result<Self> {
        let mut child = env
            .command(binary)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
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
        if !address.starts_with("127.0.0.1:") {
            let _ = child.start_kill();
            bail!("the daemon listens on {address}, not on 127.0.0.1");
        }
        Ok(Self {
            child,
            base: format!("http://{address}"),
            log,
        })
    }

    /// SIGTERM, then wait; killed if it does not stop in time.
    async fn stop(&mut self) -> anyhow::Result<(String, DaemonLog)> {
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
        let log = (&mut self.log).await.context("the log reader panicked")?;
        Ok((exit, log))
    }
}

/// `provet-broker api-key create --name bench --role admin`: the key is the last line.
async fn admin_key(binary: &Path, env: &DaemonEnv) -> anyhow::Result<String> {
    let output = tokio::time::timeout(
        COMMAND_TIMEOUT,
        env.command(binary)
            .args(["api-key", "create", "--name", "bench", "--role", "admin"])
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

/// One statement through psql on the local server's maintenance database.
async fn psql(sql: &str) -> anyhow::Result<()> {
    let output = tokio::time::timeout(
        COMMAND_TIMEOUT,
        Command::new("psql")
            .args([
                "-h",
                PG_HOST,
                "-p",
                &PG_PORT.to_string(),
                "-U",
                PG_USER,
                "-d",
                PG_MAINTENANCE_DB,
                "-v",
                "ON_ERROR_STOP=1",
                "-q",
                "-c",
                sql,
            ])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .with_context(|| format!("psql timed out: {sql}"))?
    .context("cannot run psql")?;
    if !output.status.success() {
        bail!(
            "psql `{sql}` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

fn random_string(len: usize) -> String {
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}
