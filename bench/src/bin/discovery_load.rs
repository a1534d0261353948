//! `discovery-load`: OpenID Connect discovery for many tenants at once, against a local
//! discovery server that answers every request after a fixed latency.
//!
//! Phase 1 (not measured) registers the tenants through the hookup URL with the discovery
//! worker off. Phase 2 restarts the daemon on the same database with the worker on and
//! `discovery.concurrency = C`, and measures from its `listening` log line until the local
//! server has answered every tenant's JWKS request. The total is compared with the ideal
//! `tenants x 2 x latency / C`: each tenant costs two upstream requests (the discovery
//! document, then the JWKS). Afterwards the database must hold every tenant in state `ok`.
//! Only 127.0.0.1 is ever contacted.
#![allow(clippy::disallowed_methods)] // benchmarks measure real time

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use actix_web::{App, HttpResponse, HttpServer, web};
use anyhow::{Context, anyhow, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, Utc};
use clap::{Parser, ValueEnum};
use rand::Rng;
use rand::distr::Alphanumeric;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStderr, Command};
use tokio::sync::{Notify, oneshot};
use tokio::task::{JoinHandle, JoinSet};

use broker_bench::daemon::{describe_exit, keep_sample, terminate};

/// The PostgreSQL server the benchmark databases are created on (trust auth, loopback only).
const PG_HOST: &str = "127.0.0.1";
const PG_PORT: u16 = 5432;
const PG_USER: &str = "postgres";
/// An existing database to connect to while creating and dropping the benchmark's own.
const PG_MAINTENANCE_DB: &str = "test";

/// How long the daemon may take to log `listening`, and to stop after SIGTERM.
const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a helper command (psql, sqlite3) may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the waiting phase prints progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Linux's USER_HZ: the unit of the CPU times in /proc/<pid>/stat and /proc/stat.
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

/// A JWKS with one RSA signing key (the daemon needs at least one).
const JWKS: &str = r#"{"keys":[{"kty":"RSA","use":"sig","alg":"RS256","kid":"k1","n":"sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw","e":"AQAB"}]}"#;

/// Discovery of many tenants against a slow provider (a benchmark, not a test).
#[derive(Debug, Parser)]
#[command(name = "discovery-load", version)]
struct Args {
    /// The provet-broker binary; build it with `cargo build --release -p provet-broker`.
    #[arg(long, default_value = "target/release/provet-broker")]
    binary: PathBuf,
    /// Which database(s) to run against.
    #[arg(long, value_enum, default_value_t = BackendChoice::Sqlite)]
    backend: BackendChoice,
    /// Tenants, each with its own discovery URL.
    #[arg(long, default_value_t = 10_000)]
    tenants: usize,
    /// How long the local discovery server takes to answer each request, in milliseconds.
    #[arg(long, default_value_t = 20)]
    latency_ms: u64,
    /// The daemon's `discovery.concurrency`; a comma-separated list runs each in turn,
    /// every run on a fresh database.
    #[arg(long, value_delimiter = ',', default_value = "16")]
    concurrency: Vec<usize>,
    /// Concurrent hookup senders in the (unmeasured) registration phase.
    #[arg(long, default_value_t = 32)]
    senders: usize,
    /// Give up on a phase after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
    /// Timeout of each hookup request, in seconds.
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

/// Where the benchmark's database lives, for the daemon and for direct queries.
enum Database {
    Sqlite { file: PathBuf },
    Postgres { name: String },
}

impl Database {
    fn url(&self) -> String {
        match self {
            Self::Sqlite { file } => format!("sqlite://{}?mode=rwc", file.display()),
            Self::Postgres { name } => format!("postgres://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"),
        }
    }

    /// Runs one query with the database's own command-line client; rows as `a|b` lines.
    async fn query(&self, sql: &str) -> anyhow::Result<Vec<String>> {
        let mut command = match self {
            Self::Sqlite { file } => {
                let mut c = Command::new("sqlite3");
                c.arg("-batch").arg(file).arg(sql);
                c
            }
            Self::Postgres { name } => psql_command(name, sql),
        };
        let output = run_command(&mut command, sql).await?;
        Ok(String::from_utf8(output)?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect())
    }

    /// PostgreSQL only: transactions committed in the database so far (the server's
    /// statistics; a backend reports its own when it ends).
    async fn committed_transactions(&self) -> anyhow::Result<Option<u64>> {
        if matches!(self, Self::Sqlite { .. }) {
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

    /// Discovery rows per state.
    async fn discovery_states(&self) -> anyhow::Result<BTreeMap<String, usize>> {
        let mut states = BTreeMap::new();
        for row in self
            .query("SELECT state, COUNT(*) FROM discovery GROUP BY state")
            .await?
        {
            let (state, n) = row
                .split_once('|')
                .ok_or_else(|| anyhow!("unexpected row `{row}`"))?;
            states.insert(state.to_owned(), n.parse()?);
        }
        Ok(states)
    }
}

/// What the local discovery server answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Document,
    Jwks,
}

/// One answered request.
#[derive(Clone, Copy, Debug)]
struct Served {
    tenant: i64,
    kind: Kind,
    arrived: Instant,
    answered: Instant,
    /// Wall clock of `answered`, to line up with the daemon's log timestamps.
    answered_wall: SystemTime,
}

/// The local discovery server's state: what it answered, and a signal once every tenant's
/// JWKS has been answered.
struct Provider {
    base: String,
    latency: Duration,
    tenants: usize,
    served: Mutex<Vec<Served>>,
    jwks_answered: AtomicUsize,
    other: AtomicUsize,
    all_jwks_answered: Notify,
}

impl Provider {
    fn record(&self, tenant: i64, kind: Kind, arrived: Instant) {
        let served = Served {
            tenant,
            kind,
            arrived,
            answered: Instant::now(),
            answered_wall: SystemTime::now(),
        };
        self.served
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(served);
        if kind == Kind::Jwks
            && self.jwks_answered.fetch_add(1, Ordering::SeqCst) + 1 == self.tenants
        {
            self.all_jwks_answered.notify_one();
        }
    }

    fn served(&self) -> Vec<Served> {
        self.served
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

async fn document(tenant: web::Path<i64>, provider: web::Data<Provider>) -> HttpResponse {
    let tenant = tenant.into_inner();
    let arrived = Instant::now();
    tokio::time::sleep(provider.latency).await;
    let issuer = format!("{}/{tenant}/oauth2", provider.base);
    let body = json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/authorize/"),
        "token_endpoint": format!("{issuer}/token/"),
        "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
    })
    .to_string();
    provider.record(tenant, Kind::Document, arrived);
    HttpResponse::Ok()
        .content_type("application/json")
        .body(body)
}

async fn jwks(tenant: web::Path<i64>, provider: web::Data<Provider>) -> HttpResponse {
    let tenant = tenant.into_inner();
    let arrived = Instant::now();
    tokio::time::sleep(provider.latency).await;
    provider.record(tenant, Kind::Jwks, arrived);
    HttpResponse::Ok()
        .content_type("application/json")
        .body(JWKS)
}

async fn other(provider: web::Data<Provider>) -> HttpResponse {
    provider.other.fetch_add(1, Ordering::SeqCst);
    HttpResponse::NotFound().finish()
}

/// The local discovery server, on 127.0.0.1 and a free port.
struct DiscoveryServer {
    provider: web::Data<Provider>,
    handle: actix_web::dev::ServerHandle,
    task: JoinHandle<std::io::Result<()>>,
}

impl DiscoveryServer {
    fn start(latency: Duration, tenants: usize) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").context("cannot bind 127.0.0.1:0")?;
        let provider = web::Data::new(Provider {
            base: format!("http://{}", listener.local_addr()?),
            latency,
            tenants,
            served: Mutex::new(Vec::with_capacity(tenants * 2)),
            jwks_answered: AtomicUsize::new(0),
            other: AtomicUsize::new(0),
            all_jwks_answered: Notify::new(),
        });
        let data = provider.clone();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .route(
                    "/{tenant}/oauth2/.well-known/openid-configuration",
                    web::get().to(document),
                )
                .route(
                    "/{tenant}/oauth2/.well-known/jwks.json",
                    web::get().to(jwks),
                )
                .default_service(web::to(other))
        })
        .workers(2)
        .disable_signals()
        .shutdown_timeout(1)
        .listen(listener)?
        .run();
        let handle = server.handle();
        Ok(Self {
            provider,
            handle,
            task: tokio::spawn(server),
        })
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.handle.stop(true).await;
        self.task.await.context("the discovery server panicked")??;
        Ok(())
    }
}

/// The daemon's log, as far as the benchmark cares.
#[derive(Default)]
struct DaemonLog {
    lines: usize,
    warnings: usize,
    errors: usize,
    samples: Vec<String>,
    /// The last lines, shown when the daemon fails to start.
    tail: Vec<String>,
    /// provet_id -> timestamp of its `discovery ok` line (logged once the result is stored).
    stored_at: HashMap<i64, DateTime<Utc>>,
}

/// CPU time used, in clock ticks.
#[derive(Clone, Copy, Default)]
struct CpuTicks {
    process: u64,
    machine_busy: u64,
}

/// One measured run (phase 2).
struct Run {
    backend: Backend,
    concurrency: usize,
    /// From the `listening` line to the last JWKS answer.
    total: Option<Duration>,
    jwks_answered: usize,
    documents: usize,
    other: usize,
    states: BTreeMap<String, usize>,
    peak_rss_kib: Option<u64>,
    daemon_cpu: f64,
    bench_cpu: f64,
    machine_cpu: f64,
    wall: Duration,
    log: DaemonLog,
    exit: String,
    /// Why the run ended early, if it did.
    gave_up: Option<String>,
    analysis: Vec<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("discovery-load: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Every chosen backend and concurrency; `Ok(false)` when a run did not finish or left a
/// tenant short of `ok`.
async fn run(args: &Args) -> anyhow::Result<bool> {
    if args.tenants == 0 || args.senders == 0 || args.concurrency.contains(&0) {
        bail!("--tenants, --senders and --concurrency must be at least 1");
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
        "discovery-load: {} tenants, {} ms per upstream request, concurrency {:?}, binary {}",
        args.tenants,
        args.latency_ms,
        args.concurrency,
        binary.display()
    );

    let mut summaries = Vec::new();
    let mut all_ok = true;
    for backend in backends {
        for &concurrency in &args.concurrency {
            eprintln!("[{backend} C={concurrency}] starting");
            let run = run_backend(args, &binary, backend, concurrency)
                .await
                .with_context(|| format!("{backend} run with concurrency {concurrency} failed"))?;
            print_details(&run);
            let line = summary(args, &run);
            println!("{line}");
            summaries.push(line);
            all_ok &= run.gave_up.is_none() && run.states.get("ok") == Some(&args.tenants);
        }
    }
    if summaries.len() > 1 {
        println!("summary:");
        for line in &summaries {
            println!("  {line}");
        }
    }
    if !all_ok {
        eprintln!("discovery-load: FAILED: a run did not finish, or left tenants short of `ok`");
    }
    Ok(all_ok)
}

fn summary(args: &Args, run: &Run) -> String {
    let n = args.tenants as f64;
    let latency = args.latency_ms as f64 / 1000.0;
    let c = run.concurrency as f64;
    let ideal = n * 2.0 * latency / c;
    let literal = n * latency / c;
    let (total, ratio, ratio_literal) = match run.total {
        Some(t) => {
            let t = t.as_secs_f64();
            (
                format!("{t:.2}s"),
                format!("{:.2}x", t / ideal),
                format!("{:.2}x", t / literal),
            )
        }
        None => ("none".to_owned(), "-".to_owned(), "-".to_owned()),
    };
    let not_ok: usize = run
        .states
        .iter()
        .filter(|(s, _)| s.as_str() != "ok")
        .map(|(_, n)| n)
        .sum();
    format!(
        "{backend:<8} C={c} tenants={tenants} latency={lat}ms total={total} \
         ideal(N*2*latency/C, 2 requests per tenant)={ideal:.2}s ratio={ratio} \
         literal(N*latency/C)={literal:.2}s ratio-literal={ratio_literal} \
         requests={requests} (documents {docs}, jwks {jwks}, other {other}) \
         ok={ok}/{tenants} not-ok={not_ok}{states} peak-rss={rss} \
         cpu(daemon {dcpu:.2}, bench {bcpu:.2}, machine {mcpu:.2} of 2 cores) \
         daemon-log warn={warn} error={error} exit={exit}{gave_up}",
        backend = run.backend,
        c = run.concurrency,
        tenants = args.tenants,
        lat = args.latency_ms,
        requests = run.documents + run.jwks_answered + run.other,
        docs = run.documents,
        jwks = run.jwks_answered,
        other = run.other,
        ok = run.states.get("ok").copied().unwrap_or(0),
        states = if not_ok == 0 {
            String::new()
        } else {
            format!(" {:?}", run.states)
        },
        rss = run.peak_rss_kib.map_or_else(
            || "unknown".to_owned(),
            |k| format!("{:.1}MiB", k as f64 / 1024.0)
        ),
        dcpu = run.daemon_cpu,
        bcpu = run.bench_cpu,
        mcpu = run.machine_cpu,
        warn = run.log.warnings,
        error = run.log.errors,
        exit = run.exit,
        gave_up = run
            .gave_up
            .as_ref()
            .map_or_else(String::new, |why| format!(" GAVE-UP: {why}")),
    )
}

fn print_details(run: &Run) {
    let tag = format!("{} C={}", run.backend, run.concurrency);
    for line in &run.analysis {
        eprintln!("[{tag}] {line}");
    }
    for s in &run.log.samples {
        eprintln!("[{tag}] daemon log: {s}");
    }
    eprintln!(
        "[{tag}] daemon log lines: {}; `discovery ok` lines: {}; measured phase wall time {:.2}s",
        run.log.lines,
        run.log.stored_at.len(),
        run.wall.as_secs_f64()
    );
}

/// A fresh database, both phases, and the PostgreSQL database dropped whatever happened.
async fn run_backend(
    args: &Args,
    binary: &Path,
    backend: Backend,
    concurrency: usize,
) -> anyhow::Result<Run> {
    let dir = tempfile::Builder::new()
        .prefix("discovery-load-")
        .tempdir()
        .context("cannot create a temporary folder")?;
    match backend {
        Backend::Sqlite => {
            let db = Database::Sqlite {
                file: dir.path().join("broker.db"),
            };
            run_with_database(args, binary, backend, concurrency, dir.path(), &db).await
        }
        Backend::Postgres => {
            let name = format!("broker_bench_{}", random_string(10).to_lowercase());
            psql(&format!("CREATE DATABASE {name}")).await?;
            let db = Database::Postgres { name: name.clone() };
            let result =
                run_with_database(args, binary, backend, concurrency, dir.path(), &db).await;
            let dropped = psql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
            let run = result?;
            dropped.with_context(|| format!("cannot drop database {name}"))?;
            Ok(run)
        }
    }
}

async fn run_with_database(
    args: &Args,
    binary: &Path,
    backend: Backend,
    concurrency: usize,
    dir: &Path,
    db: &Database,
) -> anyhow::Result<Run> {
    let tag = format!("{backend} C={concurrency}");
    let latency = Duration::from_millis(args.latency_ms);
    let server = DiscoveryServer::start(latency, args.tenants)?;
    let env = DaemonEnv {
        dir: dir.to_path_buf(),
        database_url: db.url(),
        hookup_secret: random_string(32),
        master_key: BASE64.encode(rand::random::<[u8; 32]>()),
    };
    let result = async {
        register(args, binary, &env, &server.provider.base, &tag).await?;
        let states = db.discovery_states().await?;
        if states.get("pending") != Some(&args.tenants) {
            bail!(
                "after registration the database should hold {} pending discovery rows, not {states:?}",
                args.tenants
            );
        }
        let phase = Phase {
            backend,
            concurrency,
            tag: &tag,
        };
        measure(args, binary, &env, &server.provider, db, phase).await
    }
    .await;
    let stopped = server.stop().await;
    let run = result?;
    stopped?;
    Ok(run)
}

/// Phase 1, not measured: every tenant registered through the hookup URL, the worker off.
async fn register(
    args: &Args,
    binary: &Path,
    env: &DaemonEnv,
    provider_base: &str,
    tag: &str,
) -> anyhow::Result<()> {
    let vars = [("BROKER_DISCOVERY__ENABLED", "false".to_owned())];
    let mut daemon = Daemon::start(binary, env, &vars).await?;
    eprintln!(
        "[{tag}] phase 1 (not measured): registering {} tenants from {} senders",
        args.tenants, args.senders
    );
    let started = Instant::now();
    let url = format!("{}/hookup/{}", daemon.base, env.hookup_secret);
    let bodies = (1..=args.tenants as i64)
        .map(|n| hookup_body(n, provider_base))
        .collect();
    let sent = tokio::time::timeout(
        Duration::from_secs(args.timeout_secs),
        send_all(args, &url, bodies),
    )
    .await;
    let (exit, log) = daemon.stop().await?;
    let (accepted, problems) = match sent {
        Ok(sent) => sent?,
        Err(_) => bail!(
            "registration gave up after {} s (--timeout-secs)",
            args.timeout_secs
        ),
    };
    if accepted != args.tenants {
        bail!(
            "only {accepted} of {} hookups were answered 200; first problems: {problems:?}; daemon log: {:?}",
            args.tenants,
            log.samples
        );
    }
    eprintln!(
        "[{tag}] phase 1: {accepted} tenants registered in {:.1}s; daemon exit {exit}",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A valid hookup for tenant `n` whose provider is the local discovery server.
fn hookup_body(n: i64, base: &str) -> String {
    json!({
        "provet_id": n,
        "client_id": format!("client-{n}"),
        "client_secret": format!("secret-{n}"),
        "algorithm": "RS256",
        "authorization_grant_type": "authorization-code",
        "client_type": "confidential",
        "redirect_uris": "http://broker.test/oauth/callback",
        "token_url": format!("{base}/{n}/oauth2/token/"),
        "authorize_url": format!("{base}/{n}/oauth2/authorize/"),
        "openid_autodiscovery_url": format!("{base}/{n}/oauth2/.well-known/openid-configuration"),
    })
    .to_string()
}

/// Sends every body from `--senders` concurrent senders; answers how many were 200 and the
/// first few problems.
async fn send_all(
    args: &Args,
    url: &str,
    bodies: Vec<String>,
) -> anyhow::Result<(usize, Vec<String>)> {
    let bodies = Arc::new(bodies);
    let next = Arc::new(AtomicUsize::new(0));
    let url: Arc<str> = Arc::from(url);
    let timeout = Duration::from_secs(args.request_timeout);
    let mut senders = JoinSet::new();
    for _ in 0..args.senders {
        let client = http_client(timeout)?;
        let (bodies, next, url) = (Arc::clone(&bodies), Arc::clone(&next), Arc::clone(&url));
        senders.spawn(async move {
            let mut accepted = 0;
            let mut problems = Vec::new();
            while let Some(body) = bodies.get(next.fetch_add(1, Ordering::Relaxed)) {
                let answer = async {
                    let response = client
                        .post(&*url)
                        .header(reqwest::header::CONTENT_TYPE, "application/json")
                        .body(body.clone())
                        .send()
                        .await?;
                    let status = response.status();
                    Ok::<_, reqwest::Error>((status, response.text().await?))
                }
                .await;
                match answer {
                    Ok((status, _)) if status.is_success() => accepted += 1,
                    Ok((status, text)) => problems.push(format!("{status}: {text}")),
                    Err(e) => problems.push(format!("no answer: {e}")),
                }
                problems.truncate(5);
            }
            (accepted, problems)
        });
    }
    let mut accepted = 0;
    let mut problems = Vec::new();
    while let Some(joined) = senders.join_next().await {
        let (n, p) = joined.context("a sender panicked")?;
        accepted += n;
        problems.extend(p);
    }
    problems.truncate(5);
    Ok((accepted, problems))
}

fn http_client(timeout: Duration) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(timeout)
        .timeout(timeout)
        .pool_max_idle_per_host(1)
        .build()?)
}

/// Which measured run this is.
#[derive(Clone, Copy)]
struct Phase<'a> {
    backend: Backend,
    concurrency: usize,
    tag: &'a str,
}

/// Phase 2, measured: the worker on, from `listening` to the last JWKS answer.
async fn measure(
    args: &Args,
    binary: &Path,
    env: &DaemonEnv,
    provider: &Provider,
    db: &Database,
    phase: Phase<'_>,
) -> anyhow::Result<Run> {
    let Phase {
        backend,
        concurrency,
        tag,
    } = phase;
    let vars = [
        ("BROKER_DISCOVERY__ENABLED", "true".to_owned()),
        ("BROKER_DISCOVERY__CONCURRENCY", concurrency.to_string()),
    ];
    eprintln!(
        "[{tag}] phase 2 (measured): discovery of {} tenants",
        args.tenants
    );
    let commits_before = db.committed_transactions().await?;
    let machine_before = machine_busy_ticks().unwrap_or_default();
    let bench_before = process_ticks("self").unwrap_or_default();
    let mut daemon = Daemon::start(binary, env, &vars).await?;
    let listening = daemon.listening_at;
    let deadline = listening + Duration::from_secs(args.timeout_secs);
    let mut gave_up = None;
    let mut last_progress = Instant::now();
    while provider.jwks_answered.load(Ordering::SeqCst) < args.tenants {
        tokio::select! {
            _ = provider.all_jwks_answered.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        if let Ok(Some(status)) = daemon.child.try_wait() {
            gave_up = Some(format!("the daemon exited during the run ({status})"));
            break;
        }
        if Instant::now() >= deadline {
            gave_up = Some(format!(
                "not every JWKS was requested within {} s (--timeout-secs); {} of {} answered",
                args.timeout_secs,
                provider.jwks_answered.load(Ordering::SeqCst),
                args.tenants
            ));
            break;
        }
        if last_progress.elapsed() >= PROGRESS_EVERY {
            last_progress = Instant::now();
            eprintln!(
                "[{tag}] {:.0}s: {} of {} JWKS answered",
                listening.elapsed().as_secs_f64(),
                provider.jwks_answered.load(Ordering::SeqCst),
                args.tenants
            );
        }
    }
    let wall = listening.elapsed();
    let peak_rss_kib = daemon.pid.and_then(peak_rss_kib);
    let daemon_ticks = daemon.pid.and_then(|pid| process_ticks(&pid.to_string()));
    let bench_ticks = process_ticks("self").unwrap_or_default();
    let machine_ticks = machine_busy_ticks().unwrap_or_default();
    let (exit, log) = daemon.stop().await?;
    if let Some(why) = &gave_up {
        eprintln!("[{tag}] GIVING UP: {why}");
    }

    let states = db.discovery_states().await?;
    let served = provider.served();
    let jwks_answered = served.iter().filter(|s| s.kind == Kind::Jwks).count();
    let documents = served.len() - jwks_answered;
    let total = (gave_up.is_none())
        .then(|| {
            served
                .iter()
                .filter(|s| s.kind == Kind::Jwks)
                .map(|s| s.answered)
                .max()
        })
        .flatten()
        .map(|last| last.saturating_duration_since(listening));
    let secs = wall.as_secs_f64().max(1e-9);
    let cores = |ticks: u64| ticks as f64 / CLOCK_TICKS_PER_SECOND / secs;
    let mut run = Run {
        backend,
        concurrency,
        total,
        jwks_answered,
        documents,
        other: provider.other.load(Ordering::SeqCst),
        states,
        peak_rss_kib,
        daemon_cpu: cores(daemon_ticks.map_or(0, |t| t.process)),
        bench_cpu: cores(bench_ticks.process.saturating_sub(bench_before.process)),
        machine_cpu: cores(
            machine_ticks
                .machine_busy
                .saturating_sub(machine_before.machine_busy),
        ),
        wall,
        log,
        exit,
        gave_up,
        analysis: Vec::new(),
    };
    run.analysis = analyse(args, &run, &served, listening);
    if let Some(before) = commits_before {
        // Let the daemon's ended backends publish their statistics.
        tokio::time::sleep(Duration::from_secs(2)).await;
        if let Some(after) = db.committed_transactions().await? {
            run.analysis
                .push(claims_estimate(args.tenants, after.saturating_sub(before)));
        }
    }
    if let Some(sample) = not_ok_sample(db, &run.states).await? {
        run.analysis.push(sample);
    }
    Ok(run)
}

/// The first few tenants that did not reach `ok`, with their last error.
async fn not_ok_sample(
    db: &Database,
    states: &BTreeMap<String, usize>,
) -> anyhow::Result<Option<String>> {
    if states.keys().all(|s| s == "ok") {
        return Ok(None);
    }
    let rows = db
        .query(
            "SELECT provet_id, state, attempts, COALESCE(last_error, '') FROM discovery \
             WHERE state <> 'ok' ORDER BY provet_id LIMIT 5",
        )
        .await?;
    Ok(Some(format!("not ok (first 5): {rows:?}")))
}

/// Where the time went: how busy the C slots kept the upstream, and what each tenant cost
/// besides its two upstream requests.
fn analyse(args: &Args, run: &Run, served: &[Served], listening: Instant) -> Vec<String> {
    let mut out = Vec::new();
    let Some(total) = run.total else {
        return out;
    };
    let secs = total.as_secs_f64().max(1e-9);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let c = run.concurrency as f64;
    let n = args.tenants as f64;

    let upstream: Vec<f64> = served
        .iter()
        .map(|s| ms(s.answered.saturating_duration_since(s.arrived)))
        .collect();
    let busy_ms: f64 = upstream.iter().sum();
    let first = served.iter().map(|s| s.arrived).min();
    out.push(format!(
        "upstream: {} requests, time per request at the server mean {:.2} ms (sleep {} ms); \
         first request {:.0} ms after `listening`",
        served.len(),
        busy_ms / served.len().max(1) as f64,
        args.latency_ms,
        first.map_or(0.0, |f| ms(f.saturating_duration_since(listening)))
    ));

    // Requests in flight at the server over time: C when the worker keeps every slot busy.
    let mut edges: Vec<(Instant, i32)> = served
        .iter()
        .flat_map(|s| [(s.arrived, 1), (s.answered, -1)])
        .collect();
    edges.sort_by_key(|&(t, d)| (t, d));
    let mut in_flight = 0;
    let mut max_in_flight = 0;
    for (_, d) in &edges {
        in_flight += d;
        max_in_flight = max_in_flight.max(in_flight);
    }
    out.push(format!(
        "requests in flight at the server: mean {:.1} (= busy time / total), max {max_in_flight}, \
         of C = {}",
        busy_ms / 1000.0 / secs,
        run.concurrency
    ));

    // Per tenant: document, then JWKS.
    let mut by_tenant: HashMap<i64, (Option<Served>, Option<Served>)> = HashMap::new();
    for s in served {
        let entry = by_tenant.entry(s.tenant).or_default();
        let slot = match s.kind {
            Kind::Document => &mut entry.0,
            Kind::Jwks => &mut entry.1,
        };
        slot.get_or_insert(*s);
    }
    let refetched = served.len()
        - by_tenant
            .values()
            .map(|(d, j)| usize::from(d.is_some()) + usize::from(j.is_some()))
            .sum::<usize>();
    let mut between: Vec<f64> = Vec::new();
    let mut store: Vec<f64> = Vec::new();
    for (tenant, pair) in &by_tenant {
        let (Some(doc), Some(jwks)) = pair else {
            continue;
        };
        between.push(ms(jwks.arrived.saturating_duration_since(doc.answered)));
        if let Some(logged) = run.log.stored_at.get(tenant) {
            let answered: DateTime<Utc> = jwks.answered_wall.into();
            store.push((*logged - answered).as_seconds_f64() * 1000.0);
        }
    }
    let between_mean = mean(&between);
    out.push(format!(
        "daemon between a tenant's document answer and its JWKS request: {}",
        describe(&mut between)
    ));
    out.push(format!(
        "daemon from a tenant's JWKS answer to its `discovery ok` log line (checks + storing \
         the result): {}",
        describe(&mut store)
    ));
    // C slots for `total`: each tenant held one for its two requests, the gap between them,
    // and its share of the rest (storing, claiming the next tenant, waiting for work).
    let slot_ms = c * secs * 1000.0 / n;
    let upstream_per_tenant = busy_ms / n;
    out.push(format!(
        "slot time per tenant (C x total / N): {slot_ms:.2} ms = upstream {upstream_per_tenant:.2} ms \
         + gap between the two requests {between_mean:.2} ms + everything else {:.2} ms \
         (storing, claiming, waiting); ideal {} ms",
        slot_ms - upstream_per_tenant - between_mean,
        2 * args.latency_ms
    ));
    if refetched > 0 {
        out.push(format!(
            "{refetched} requests were repeats for the same tenant"
        ));
    }

    // JWKS answers per second of the run.
    let mut per_second: BTreeMap<u64, usize> = BTreeMap::new();
    for s in served.iter().filter(|s| s.kind == Kind::Jwks) {
        *per_second
            .entry(s.answered.saturating_duration_since(listening).as_secs())
            .or_default() += 1;
    }
    let last = per_second.keys().next_back().copied().unwrap_or(0);
    let timeline: Vec<String> = (0..=last)
        .map(|s| per_second.get(&s).copied().unwrap_or(0).to_string())
        .collect();
    out.push(format!(
        "tenants done per second (ideal {:.0}): {}",
        c * 1000.0 / (2.0 * args.latency_ms as f64),
        timeline.join(" ")
    ));
    out
}

/// Each tenant's result costs two autocommit statements (read the leased row, update it);
/// the rest of the commits are claims (plus a few gauge reads and this benchmark's queries).
fn claims_estimate(tenants: usize, commits: u64) -> String {
    let claims = commits.saturating_sub(2 * tenants as u64);
    format!(
        "PostgreSQL commits during phase 2: {commits}; minus 2 per tenant (storing the result) \
         leaves about {claims} claim transactions, i.e. about {:.2} tenants per claim",
        tenants as f64 / claims.max(1) as f64
    )
}

fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        0.0
    } else {
        values.iter().sum::<f64>() / values.len() as f64
    }
}

/// `mean / p50 / p99 / max` in milliseconds.
fn describe(values: &mut [f64]) -> String {
    if values.is_empty() {
        return "no data".to_owned();
    }
    values.sort_by(f64::total_cmp);
    let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
    format!(
        "mean {:.2} ms, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (n = {})",
        mean(values),
        at(0.5),
        at(0.99),
        at(1.0),
        values.len()
    )
}

/// VmHWM (peak resident set) of a process, in KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// User + system CPU time of a process (`self` or a pid) so far.
fn process_ticks(pid: &str) -> Option<CpuTicks> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces: fields are counted after its closing parenthesis.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(CpuTicks {
        process: utime + stime,
        machine_busy: 0,
    })
}

/// Busy CPU time of the whole machine so far (everything but idle and iowait).
fn machine_busy_ticks() -> Option<CpuTicks> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu = stat.lines().next()?.strip_prefix("cpu ")?;
    let fields: Vec<u64> = cpu
        .split_whitespace()
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal (guest time is counted in user already).
    let busy = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| fields.get(i))
        .sum();
    Some(CpuTicks {
        process: 0,
        machine_busy: busy,
    })
}

/// What the daemon is configured with: environment variables only.
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
    fn command(&self, binary: &Path, vars: &[(&str, String)]) -> Command {
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
            .env("BROKER_HOOKUP__ALLOWED_HOSTS", r#"["127.0.0.1"]"#)
            .env("BROKER_HOOKUP__ALLOW_HTTP", "true")
            .env("BROKER_LOG__FORMAT", "json")
            .env("BROKER_LOG__LEVEL", "info")
            .envs(vars.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        command
    }
}

struct Daemon {
    child: Child,
    pid: Option<u32>,
    base: String,
    /// When the benchmark read the `listening` line.
    listening_at: Instant,
    log: JoinHandle<DaemonLog>,
}

impl Daemon {
    async fn start(
        binary: &Path,
        env: &DaemonEnv,
        vars: &[(&str, String)],
    ) -> anyhow::Result<Self> {
        let mut child = env
            .command(binary, vars)
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
        if !address.starts_with("127.0.0.1:") {
            let _ = child.start_kill();
            bail!("the daemon listens on {address}, not on 127.0.0.1");
        }
        Ok(Self {
            pid: child.id(),
            child,
            base: format!("http://{address}"),
            listening_at,
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

/// Reads the daemon's JSON log: hands over the `listening` address (and when it was read),
/// counts warnings and errors, and notes when each tenant's discovery result was stored.
/// Draining stderr also keeps the daemon from blocking on it.
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
                    log.stored_at.insert(tenant, at.with_timezone(&Utc));
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

fn psql_command(database: &str, sql: &str) -> Command {
    let mut command = Command::new("psql");
    command.args([
        "-h",
        PG_HOST,
        "-p",
        &PG_PORT.to_string(),
        "-U",
        PG_USER,
        "-d",
        database,
        "-v",
        "ON_ERROR_STOP=1",
        "-q",
        "-A",
        "-t",
        "-c",
        sql,
    ]);
    command
}

/// One statement through psql on the local server's maintenance database.
async fn psql(sql: &str) -> anyhow::Result<()> {
    run_command(&mut psql_command(PG_MAINTENANCE_DB, sql), sql).await?;
    Ok(())
}

/// Runs a helper command with a timeout; its stdout, or an error with its stderr.
async fn run_command(command: &mut Command, what: &str) -> anyhow::Result<Vec<u8>> {
    let output = tokio::time::timeout(
        COMMAND_TIMEOUT,
        command.stdin(Stdio::null()).kill_on_drop(true).output(),
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

fn random_string(len: usize) -> String {
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}
