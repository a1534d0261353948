//! `token-load`: the cached-token endpoint of a release build under wrk, against a bare
//! actix-web handler writing a body of the same size, measured in the same run, alternating;
//! then the daemon's memory with 10,000 tenants' tokens cached.
//!
//! Phase 1: an in-process stub token endpoint (client_credentials), the daemon on a fresh
//! SQLite database with a token API key, one tenant registered and its token fetched once;
//! `bare-handler` started with the daemon's worker count and answer size. wrk then runs
//! daemon, bare, daemon, bare … (`--rounds` each, `--duration-secs` each), every request a
//! `POST {}` with the API key. Medians of req/s and p99 per target, and their ratio.
//!
//! Phase 2: `--tenants` tenants in all (hookups from concurrent senders), each tenant's token
//! fetched once (from the stub), a second pass to check they are all served from memory,
//! then the daemon's VmRSS and VmHWM. Only 127.0.0.1 is ever contacted.

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use actix_web::{App, HttpResponse, HttpServer, web};
use anyhow::{Context, anyhow, bail};
use broker_bench::daemon::{Daemon, DaemonEnv, terminate};
use broker_bench::{Memory, http_client, median, random_string};
use clap::Parser;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::{JoinHandle, JoinSet};

/// The wrk script (bench/token.lua), written next to the database when `--script` is not
/// given, so the benchmark runs from any folder.
const TOKEN_LUA: &str = include_str!("../../token.lua");
/// The tenant measured in phase 1.
const HOT_TENANT: i64 = 1;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Linux's USER_HZ: the unit of the CPU times in /proc/<pid>/stat and /proc/stat.
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

/// The cached-token endpoint against a bare handler, and memory at 10,000 tenants (a
/// benchmark, not a test).
#[derive(Debug, Parser)]
#[command(name = "token-load", version)]
struct Args {
    /// The provet-broker binary; build it with `cargo build --release -p provet-broker`.
    #[arg(long, default_value = "target/release/provet-broker")]
    binary: PathBuf,
    /// The baseline; built with `cargo build --release -p broker-bench`.
    #[arg(long, default_value = "target/release/bare-handler")]
    bare_binary: PathBuf,
    /// The wrk binary.
    #[arg(long, default_value = "wrk")]
    wrk: PathBuf,
    /// A wrk Lua script (default: bench/token.lua, built in).
    #[arg(long)]
    script: Option<PathBuf>,
    /// wrk connections.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// wrk threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Length of each measured wrk run, in seconds.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Measured runs per target, alternating daemon / bare.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// An unmeasured wrk run per target first, in seconds (0: none).
    #[arg(long, default_value_t = 2)]
    warmup_secs: u64,
    /// HTTP workers of both servers; 0 = one per CPU core (the daemon's default).
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// The daemon's log filter (BROKER_LOG__LEVEL).
    #[arg(long, default_value = broker_bench::daemon::QUIET_LOG)]
    log_level: String,
    /// More daemon settings, `BROKER_…=value` (repeatable), e.g.
    /// `--daemon-env BROKER_SERVER__API_KEY_CACHE_TTL=1h`.
    #[arg(long = "daemon-env", value_name = "NAME=VALUE", value_parser = broker_bench::daemon::parse_var)]
    daemon_env: Vec<(String, String)>,
    /// Tenants whose tokens are cached for the memory figure (0: skip phase 2).
    #[arg(long, default_value_t = 10_000)]
    tenants: usize,
    /// Concurrent senders in phase 2 (hookups, then token fetches).
    #[arg(long, default_value_t = 32)]
    senders: usize,
    /// Skip phase 1 (wrk).
    #[arg(long)]
    memory_only: bool,
}

/// The stub provider's token endpoint: every tenant's client_credentials request answered
/// at once with a fresh 30-character token (django-oauth-toolkit's length), valid 10 hours.
struct Stub {
    base: String,
    requests: AtomicUsize,
}

async fn token_endpoint(stub: web::Data<Stub>, _form: web::Bytes) -> HttpResponse {
    stub.requests.fetch_add(1, Ordering::SeqCst);
    HttpResponse::Ok()
        .content_type("application/json")
        .insert_header(("cache-control", "no-store"))
        .body(
            json!({
                "access_token": random_string(30),
                "token_type": "Bearer",
                "expires_in": 36000,
                "scope": "restapi",
            })
            .to_string(),
        )
}

struct StubServer {
    stub: web::Data<Stub>,
    handle: actix_web::dev::ServerHandle,
    task: JoinHandle<std::io::Result<()>>,
}

impl StubServer {
    fn start() -> anyhow::Result<Self> {
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").context("cannot bind 127.0.0.1:0")?;
        let stub = web::Data::new(Stub {
            base: format!("http://{}", listener.local_addr()?),
            requests: AtomicUsize::new(0),
        });
        let data = stub.clone();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .route("/{tenant}/oauth2/token/", web::post().to(token_endpoint))
        })
        .workers(1)
        .disable_signals()
        .shutdown_timeout(1)
        .listen(listener)?
        .run();
        let handle = server.handle();
        Ok(Self {
            stub,
            handle,
            task: tokio::spawn(server),
        })
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.handle.stop(true).await;
        self.task.await.context("the stub server panicked")??;
        Ok(())
    }
}

/// What wrk reported for one run.
#[derive(Clone, Debug)]
struct WrkRun {
    target: &'static str,
    requests_per_sec: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    requests: u64,
    non_2xx: u64,
    socket_errors: Option<String>,
    /// CPU used by the server process over the run, in cores.
    server_cpu: f64,
    /// CPU used by wrk over the run, in cores.
    wrk_cpu: f64,
    /// CPU used by the whole machine over the run, in cores.
    machine_cpu: f64,
    /// Interrupts (mostly the loopback network's softirq; the kernel mostly charges them to
    /// the process they interrupted too), and time stolen by the hypervisor.
    irq_cpu: f64,
    steal_cpu: f64,
}

impl WrkRun {
    fn line(&self) -> String {
        format!(
            "{:<6} {:>9.0} req/s  p50 {:>6.3} ms  p90 {:>6.3} ms  p99 {:>6.3} ms  max {:>7.2} ms  \
             requests {}  non-2xx {}{}  cpu: server {:.2} wrk {:.2} other {:.2} steal {:.2} \
             = machine {:.2} cores (irq {:.2}, charged to the above)",
            self.target,
            self.requests_per_sec,
            self.p50_ms,
            self.p90_ms,
            self.p99_ms,
            self.max_ms,
            self.requests,
            self.non_2xx,
            self.socket_errors
                .as_ref()
                .map_or_else(String::new, |e| format!("  socket errors: {e}")),
            self.server_cpu,
            self.wrk_cpu,
            (self.machine_cpu - self.server_cpu - self.wrk_cpu - self.steal_cpu).max(0.0),
            self.steal_cpu,
            self.machine_cpu,
            self.irq_cpu,
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
            eprintln!("token-load: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `Ok(false)` when a request failed or a target was missed.
async fn run(args: &Args) -> anyhow::Result<bool> {
    if args.connections == 0 || args.threads == 0 || args.rounds == 0 || args.senders == 0 {
        bail!("--connections, --threads, --rounds and --senders must be at least 1");
    }
    let workers = if args.workers == 0 {
        std::thread::available_parallelism().map_or(1, usize::from)
    } else {
        args.workers
    };
    let stub = StubServer::start()?;
    let mut env = DaemonEnv::sqlite(&args.binary)?;
    env.set("BROKER_SERVER__WORKERS", workers.to_string());
    env.set("BROKER_LOG__LEVEL", args.log_level.clone());
    for (name, value) in &args.daemon_env {
        env.set(name, value.clone());
    }
    let daemon = Daemon::start(&env).await?;
    let result = measure(args, &env, &daemon, &stub.stub, workers).await;
    let (exit, log) = daemon.stop().await?;
    stub.stop().await?;
    for s in &log.samples {
        eprintln!("daemon log: {s}");
    }
    println!(
        "daemon log: {} lines, {} warnings, {} errors; exit {exit}",
        log.lines, log.warnings, log.errors
    );
    let ok = result?;
    Ok(ok && log.errors == 0)
}

async fn measure(
    args: &Args,
    env: &DaemonEnv,
    daemon: &Daemon,
    stub: &Stub,
    workers: usize,
) -> anyhow::Result<bool> {
    let key = env.api_key("bench", "token").await?;
    let client = http_client(REQUEST_TIMEOUT, args.senders)?;
    let hookup_url = format!("{}/hookup/{}", daemon.base, env.hookup_secret);
    hookup(&client, &hookup_url, &hookup_body(HOT_TENANT, &stub.base)).await?;
    let token_url = format!("{}/v1/tenants/{HOT_TENANT}/token", daemon.base);
    // The first fetch goes to the stub; the second must come from memory.
    let first = fetch_token(&client, &token_url, &key).await?;
    let answer = fetch_token(&client, &token_url, &key).await?;
    if stub.requests.load(Ordering::SeqCst) != 1 {
        bail!("the second token request reached the stub: the token is not cached");
    }
    if first.body_json["access_token"] != answer.body_json["access_token"] {
        bail!("the cached token differs from the one fetched");
    }
    println!(
        "daemon {} (pid {}, {workers} workers, log filter `{}`); token answer {} bytes: {}",
        daemon.base,
        daemon.pid,
        args.log_level,
        answer.body.len(),
        answer.body
    );
    let memory_start = Memory::of(daemon.pid)?;
    println!("daemon memory with one tenant: {memory_start}");

    let mut ok = true;
    if !args.memory_only {
        ok &= compare(
            args,
            &key,
            &token_url,
            answer.body.len(),
            daemon.pid,
            workers,
        )
        .await?;
    }
    if args.tenants > 0 {
        ok &= memory_at_scale(args, &client, daemon, stub, &key, &hookup_url).await?;
    }
    Ok(ok)
}

/// Phase 1: wrk against the daemon and bare-handler, alternating.
async fn compare(
    args: &Args,
    key: &str,
    daemon_url: &str,
    body_bytes: usize,
    daemon_pid: u32,
    workers: usize,
) -> anyhow::Result<bool> {
    let script_dir = tempfile::Builder::new().prefix("token-load-").tempdir()?;
    let script = match &args.script {
        Some(path) => std::path::absolute(path)?,
        None => {
            let path = script_dir.path().join("token.lua");
            std::fs::write(&path, TOKEN_LUA)?;
            path
        }
    };
    let mut bare = Bare::start(&args.bare_binary, workers, body_bytes).await?;
    let result = async {
        let bare_url = format!("{}/v1/tenants/{HOT_TENANT}/token", bare.base);
        let check = http_client(REQUEST_TIMEOUT, 1)?
            .post(&bare_url)
            .bearer_auth(key)
            .json(&json!({}))
            .send()
            .await?;
        let bare_bytes = check.bytes().await?.len();
        if bare_bytes != body_bytes {
            bail!("bare-handler answered {bare_bytes} bytes, not {body_bytes}");
        }
        println!(
            "bare-handler {} (pid {}, {workers} workers), answer {body_bytes} bytes",
            bare.base, bare.pid
        );
        let targets = [
            ("daemon", daemon_url, daemon_pid),
            ("bare", &bare_url, bare.pid),
        ];
        if args.warmup_secs > 0 {
            for (name, url, pid) in targets {
                let warm = wrk(args, &script, key, url, args.warmup_secs, name, pid).await?;
                println!("warm-up {}", warm.line());
            }
        }
        let mut runs = Vec::new();
        for round in 1..=args.rounds {
            for (name, url, pid) in targets {
                let run = wrk(args, &script, key, url, args.duration_secs, name, pid).await?;
                println!("round {round} {}", run.line());
                runs.push(run);
            }
        }
        Ok(runs)
    }
    .await;
    let bare_exit = bare.stop().await;
    let runs = result?;
    bare_exit?;

    let of = |target: &str, f: fn(&WrkRun) -> f64| -> Vec<f64> {
        runs.iter().filter(|r| r.target == target).map(f).collect()
    };
    let daemon_rps = median(&of("daemon", |r| r.requests_per_sec));
    let bare_rps = median(&of("bare", |r| r.requests_per_sec));
    let daemon_p99 = median(&of("daemon", |r| r.p99_ms));
    let daemon_p99_worst = of("daemon", |r| r.p99_ms).into_iter().fold(0.0, f64::max);
    let bare_p99 = median(&of("bare", |r| r.p99_ms));
    let ratio = daemon_rps / bare_rps;
    let failures: u64 = runs.iter().map(|r| r.non_2xx).sum();
    let errors = runs.iter().filter(|r| r.socket_errors.is_some()).count();
    println!(
        "token-load: wrk -t{} -c{} -d{}s, {} rounds each, alternating; medians: \
         daemon {daemon_rps:.0} req/s p50 {:.3} ms p99 {daemon_p99:.3} ms (worst round {daemon_p99_worst:.3} ms); \
         bare {bare_rps:.0} req/s p50 {:.3} ms p99 {bare_p99:.3} ms; \
         ratio daemon/bare {ratio:.3} (target >= 0.8: {}); daemon p99 < 5 ms: {}; \
         non-2xx {failures}, runs with socket errors {errors}",
        args.threads,
        args.connections,
        args.duration_secs,
        args.rounds,
        median(&of("daemon", |r| r.p50_ms)),
        median(&of("bare", |r| r.p50_ms)),
        if ratio >= 0.8 { "met" } else { "MISSED" },
        if daemon_p99 < 5.0 { "met" } else { "MISSED" },
    );
    Ok(failures == 0 && errors == 0)
}

/// One wrk run against one target, with the server's and the machine's CPU over it.
async fn wrk(
    args: &Args,
    script: &Path,
    key: &str,
    url: &str,
    secs: u64,
    target: &'static str,
    server_pid: u32,
) -> anyhow::Result<WrkRun> {
    let server_before = process_ticks(server_pid).unwrap_or_default();
    let children_before = children_ticks().unwrap_or_default();
    let machine_before = machine_busy_ticks().unwrap_or_default();
    let started = Instant::now();
    let output = tokio::time::timeout(
        Duration::from_secs(secs + 30),
        Command::new(&args.wrk)
            .arg(format!("-t{}", args.threads))
            .arg(format!("-c{}", args.connections))
            .arg(format!("-d{secs}s"))
            .arg("--latency")
            .arg("-s")
            .arg(script)
            .arg(url)
            .env("BENCH_API_KEY", key)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("wrk did not finish in time")?
    .with_context(|| format!("cannot run {} (apt-get install wrk)", args.wrk.display()))?;
    let elapsed = started.elapsed().as_secs_f64();
    let server_after = process_ticks(server_pid).unwrap_or_default();
    let children_after = children_ticks().unwrap_or_default();
    let machine_after = machine_busy_ticks().unwrap_or_default();
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "wrk failed ({}): {text}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let cores = |ticks: u64| ticks as f64 / CLOCK_TICKS_PER_SECOND / elapsed;
    parse_wrk(&text, target)
        .map(|mut run| {
            run.server_cpu = cores(server_after.saturating_sub(server_before));
            run.wrk_cpu = cores(children_after.saturating_sub(children_before));
            run.machine_cpu = cores(machine_after.busy.saturating_sub(machine_before.busy));
            run.irq_cpu = cores(machine_after.irq.saturating_sub(machine_before.irq));
            run.steal_cpu = cores(machine_after.steal.saturating_sub(machine_before.steal));
            run
        })
        .with_context(|| format!("cannot read wrk's output:\n{text}"))
}

/// Reads `Requests/sec`, the latency distribution, `requests in`, non-2xx and socket errors.
fn parse_wrk(text: &str, target: &'static str) -> anyhow::Result<WrkRun> {
    let mut run = WrkRun {
        target,
        requests_per_sec: f64::NAN,
        p50_ms: f64::NAN,
        p90_ms: f64::NAN,
        p99_ms: f64::NAN,
        max_ms: f64::NAN,
        requests: 0,
        non_2xx: 0,
        socket_errors: None,
        server_cpu: 0.0,
        wrk_cpu: 0.0,
        machine_cpu: 0.0,
        irq_cpu: 0.0,
        steal_cpu: 0.0,
    };
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", n] => run.requests_per_sec = n.parse()?,
            ["50%", t] => run.p50_ms = duration_ms(t)?,
            ["90%", t] => run.p90_ms = duration_ms(t)?,
            ["99%", t] => run.p99_ms = duration_ms(t)?,
            ["Latency", _avg, _stdev, max, _] => run.max_ms = duration_ms(max)?,
            [n, "requests", "in", ..] => run.requests = n.parse()?,
            ["Non-2xx", "or", "3xx", "responses:", n] => run.non_2xx = n.parse()?,
            _ if line.starts_with("Socket errors:") => {
                run.socket_errors = Some(line.trim_start_matches("Socket errors:").trim().into());
            }
            _ => {}
        }
    }
    if run.requests_per_sec.is_nan() || run.p99_ms.is_nan() {
        bail!("no Requests/sec or 99% line");
    }
    Ok(run)
}

/// wrk's `291.00us`, `1.41ms`, `2.00s`, `1.00m` in milliseconds.
fn duration_ms(text: &str) -> anyhow::Result<f64> {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .ok_or_else(|| anyhow!("no unit in `{text}`"))?;
    let (number, unit) = text.split_at(split);
    let n: f64 = number.parse()?;
    Ok(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        "h" => n * 3_600_000.0,
        _ => bail!("unknown unit in `{text}`"),
    })
}

/// User + system CPU time of a process so far, in clock ticks.
fn process_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces: fields are counted after its closing parenthesis.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// CPU time of this process's children that have been waited for (cutime + cstime): wrk,
/// once its run is over (the servers are waited for only at the end).
fn children_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let cutime: u64 = fields.get(13)?.parse().ok()?;
    let cstime: u64 = fields.get(14)?.parse().ok()?;
    Some(cutime + cstime)
}

/// The whole machine's CPU time so far, from /proc/stat, in ticks.
#[derive(Clone, Copy, Default)]
struct MachineTicks {
    /// Everything but idle and iowait.
    busy: u64,
    /// irq + softirq.
    irq: u64,
    steal: u64,
}

fn machine_busy_ticks() -> Option<MachineTicks> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu = stat.lines().next()?.strip_prefix("cpu ")?;
    let fields: Vec<u64> = cpu
        .split_whitespace()
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal (guest time is counted in user already).
    let sum = |indexes: &[usize]| indexes.iter().filter_map(|&i| fields.get(i)).sum();
    Some(MachineTicks {
        busy: sum(&[0, 1, 2, 5, 6, 7]),
        irq: sum(&[5, 6]),
        steal: sum(&[7]),
    })
}

/// The bare-handler child process.
struct Bare {
    child: Child,
    pid: u32,
    base: String,
}

impl Bare {
    async fn start(binary: &Path, workers: usize, body_bytes: usize) -> anyhow::Result<Self> {
        let binary = std::path::absolute(binary)?;
        let mut child = Command::new(&binary)
            .arg("--workers")
            .arg(workers.to_string())
            .arg("--body-bytes")
            .arg(body_bytes.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start {} (cargo build --release -p broker-bench)",
                    binary.display()
                )
            })?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("bare-handler's stdout is not piped"))?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .context("bare-handler did not print its address in time")??
            .ok_or_else(|| anyhow!("bare-handler exited before listening"))?;
        let address = line
            .strip_prefix("listening ")
            .filter(|a| a.starts_with("127.0.0.1:"))
            .ok_or_else(|| anyhow!("bare-handler printed `{line}`"))?;
        let pid = child
            .id()
            .ok_or_else(|| anyhow!("bare-handler exited right after listening"))?;
        Ok(Self {
            base: format!("http://{address}"),
            pid,
            child,
        })
    }

    async fn stop(&mut self) -> anyhow::Result<()> {
        terminate(self.pid).await?;
        match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(status) => {
                status?;
            }
            Err(_) => self.child.kill().await?,
        }
        Ok(())
    }
}

/// A client_credentials tenant whose token endpoint is the stub.
fn hookup_body(n: i64, base: &str) -> String {
    json!({
        "provet_id": n,
        "client_id": format!("c-{n}"),
        "client_secret": format!("s-{n}"),
        "algorithm": null,
        "authorization_grant_type": "client_credentials",
        "client_type": "confidential",
        "redirect_uris": "",
        "token_url": format!("{base}/{n}/oauth2/token/"),
        "authorize_url": format!("{base}/{n}/oauth2/authorize/"),
        "openid_autodiscovery_url": null,
    })
    .to_string()
}

async fn hookup(client: &reqwest::Client, url: &str, body: &str) -> anyhow::Result<()> {
    let response = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_owned())
        .send()
        .await?;
    let status = response.status();
    if !status.is_success() {
        bail!("hookup answered {status}: {}", response.text().await?);
    }
    Ok(())
}

struct TokenAnswer {
    body: String,
    body_json: Value,
}

async fn fetch_token(
    client: &reqwest::Client,
    url: &str,
    key: &str,
) -> anyhow::Result<TokenAnswer> {
    let response = client
        .post(url)
        .bearer_auth(key)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body("{}")
        .send()
        .await?;
    let status = response.status();
    let body = response.text().await?;
    if status != reqwest::StatusCode::OK {
        bail!("POST {url} answered {status}: {body}");
    }
    let body_json: Value = serde_json::from_str(&body)?;
    if body_json["access_token"].as_str().is_none() {
        bail!("POST {url} answered no access_token: {body}");
    }
    Ok(TokenAnswer { body, body_json })
}

/// Phase 2: `--tenants` tenants' tokens cached, then the daemon's memory.
async fn memory_at_scale(
    args: &Args,
    client: &reqwest::Client,
    daemon: &Daemon,
    stub: &Stub,
    key: &str,
    hookup_url: &str,
) -> anyhow::Result<bool> {
    let n = args.tenants as i64;
    let before = Memory::of(daemon.pid)?;
    println!("memory phase: {n} tenants; daemon memory before: {before}");
    let started = Instant::now();
    let bodies: Vec<String> = (1..=n)
        .filter(|&id| id != HOT_TENANT)
        .map(|id| hookup_body(id, &stub.base))
        .collect();
    let hookup_url = hookup_url.to_owned();
    let registered = for_all(args.senders, client, bodies, move |client, body| {
        let url = hookup_url.clone();
        async move { hookup(&client, &url, &body).await }
    })
    .await?;
    println!(
        "registered {} tenants in {:.1} s; daemon memory: {}",
        registered + 1,
        started.elapsed().as_secs_f64(),
        Memory::of(daemon.pid)?
    );

    let stub_before = stub.requests.load(Ordering::SeqCst);
    let started = Instant::now();
    let ids: Vec<i64> = (1..=n).collect();
    let fetch = |ids: Vec<i64>| {
        let base = daemon.base.clone();
        let key = key.to_owned();
        for_all(args.senders, client, ids, move |client, id| {
            let url = format!("{base}/v1/tenants/{id}/token");
            let key = key.clone();
            async move { fetch_token(&client, &url, &key).await.map(|_| ()) }
        })
    };
    let fetched = fetch(ids.clone()).await?;
    let from_stub = stub.requests.load(Ordering::SeqCst) - stub_before;
    println!(
        "fetched {fetched} tokens in {:.1} s ({from_stub} from the stub; the hot tenant's was cached)",
        started.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    let again = fetch(ids).await?;
    let second_from_stub = stub.requests.load(Ordering::SeqCst) - stub_before - from_stub;
    println!(
        "second pass: {again} tokens in {:.1} s, {second_from_stub} from the stub (0 = all served from memory)",
        started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = Memory::of(daemon.pid)?;
    println!(
        "token-load memory: {fetched} tenants' tokens cached: daemon {after} (target RSS < 100 MB: {}); \
         before this phase (one tenant, after the wrk runs) VmRSS {:.1} MiB",
        if after.rss_kib * 1024 < 100_000_000 {
            "met"
        } else {
            "MISSED"
        },
        before.rss_kib as f64 / 1024.0,
    );
    Ok(fetched == args.tenants && again == args.tenants && second_from_stub == 0)
}

/// Runs `job` for every item from `senders` concurrent tasks, each with the shared client;
/// answers how many succeeded, after printing the first few failures.
async fn for_all<T, F, Fut>(
    senders: usize,
    client: &reqwest::Client,
    items: Vec<T>,
    job: F,
) -> anyhow::Result<usize>
where
    T: Send + Sync + Clone + 'static,
    F: Fn(reqwest::Client, T) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let items = Arc::new(items);
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    for _ in 0..senders {
        let (items, next, client, job) = (
            Arc::clone(&items),
            Arc::clone(&next),
            client.clone(),
            job.clone(),
        );
        tasks.spawn(async move {
            let mut ok = 0;
            let mut problems = Vec::new();
            while let Some(item) = items.get(next.fetch_add(1, Ordering::Relaxed)) {
                match job(client.clone(), item.clone()).await {
                    Ok(()) => ok += 1,
                    Err(e) if problems.len() < 3 => problems.push(format!("{e:#}")),
                    Err(_) => {}
                }
            }
            (ok, problems)
        });
    }
    let mut ok = 0;
    let mut shown = 0;
    while let Some(joined) = tasks.join_next().await {
        let (n, problems) = joined.context("a sender panicked")?;
        ok += n;
        for p in problems {
            if shown < 5 {
                eprintln!("request failed: {p}");
                shown += 1;
            }
        }
    }
    Ok(ok)
}
