//! `hookup-load`: a burst of distinct hookups from concurrent senders against a release build
//! at its default configuration, credential check on, on SQLite and PostgreSQL; beside it in
//! the same run, the same burst with the check off (`BROKER_TOKENS__VERIFY_ON_HOOKUP=false`).
//!
//! Every message names a token URL on an instant endpoint served by the benchmark on
//! 127.0.0.1 (so the daemon needs `hookup.allowed_hosts = ["127.0.0.1"]` and
//! `hookup.allow_http = true`, the only settings changed). Afterwards: every message answered
//! 200 must be listed by `GET /admin/tenants` with the client_id sent, and, with the check
//! on, every tenant's credentials must turn `ok` within `--check-timeout-secs`, the endpoint
//! having seen exactly one request per client. Only 127.0.0.1 is ever contacted.
#![allow(clippy::disallowed_methods)] // benchmarks measure real time

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use broker_bench::daemon::{Backend, Daemon, DaemonEnv};
use broker_bench::load::{self, Hookup, LoadResult};
use broker_bench::stub::TokenStub;
use broker_bench::{BinaryArg, exit_code, http_client, met, wait_for};
use clap::Parser;

/// Warm-up messages use provet_id from here (excluded from the figures); measured ones 1..=N.
const WARMUP_FIRST_ID: i64 = 1_000_001;
/// The target, on both backends.
const TARGET_PER_SEC: f64 = 3000.0;
/// Bound on the measured burst.
const BURST_LIMIT: Duration = Duration::from_secs(120);

/// Load test of the hookup intake (a benchmark, not a test).
#[derive(Debug, Parser)]
#[command(name = "hookup-load", version)]
struct Args {
    #[command(flatten)]
    binary: BinaryArg,
    /// Backends, in order (comma-separated).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "sqlite,postgres"
    )]
    backend: Vec<Backend>,
    /// Measured messages per run, each a distinct hookup.
    #[arg(long, default_value_t = 5000)]
    messages: usize,
    /// Concurrent senders, each with its own keep-alive connection.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    #[arg(long, default_value_t = 200)]
    warmup: usize,
    /// How long, after the burst started, every credential may take to be checked.
    #[arg(long, default_value_t = 60)]
    check_timeout_secs: u64,
    /// Skip the baseline with the check off.
    #[arg(long)]
    no_baseline: bool,
    /// Any daemon setting other than the defaults, `BROKER_…=value` (repeatable). None by
    /// default.
    #[arg(long = "daemon-env", value_name = "NAME=VALUE", value_parser = broker_bench::daemon::parse_var)]
    daemon_env: Vec<(String, String)>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let mut lines = Vec::new();
    let mut all_ok = true;
    for &backend in &args.backend {
        let checks: &[bool] = if args.no_baseline {
            &[true]
        } else {
            &[false, true]
        };
        for &check in checks {
            match run(&args, backend, check).await {
                Ok((line, ok)) => {
                    println!("{line}");
                    lines.push(line);
                    all_ok &= ok;
                }
                Err(e) => {
                    eprintln!("hookup-load: {backend} run failed: {e:#}");
                    all_ok = false;
                }
            }
        }
    }
    println!("summary:");
    for line in &lines {
        println!("  {line}");
    }
    exit_code("hookup-load", Ok(all_ok))
}

/// One burst on a fresh database; the result line, and whether every check passed.
async fn run(args: &Args, backend: Backend, check: bool) -> anyhow::Result<(String, bool)> {
    let stub = TokenStub::start(1)?;
    let mut env = DaemonEnv::with_local_provider(&args.binary, backend).await?;
    for (name, value) in &args.daemon_env {
        env.set(name, value.clone());
    }
    if !check {
        env.set("BROKER_TOKENS__VERIFY_ON_HOOKUP", "false");
    }
    let daemon = Daemon::start(&env).await?;
    let tag = format!("{backend} checks={}", if check { "on" } else { "off" });
    eprintln!(
        "[{tag}] daemon {}; settings beside the defaults: {}",
        daemon.base,
        env.overrides()
    );
    let result = burst(args, &env, &daemon, &stub, check).await;
    let (exit, log) = daemon.stop().await?;
    stub.stop().await?;
    log.print(&tag);
    let (line, ok) = result?;
    let ok = ok && log.errors == 0;
    Ok((
        format!(
            "hookup-load RESULT {tag:<21} {line} daemon-log warn={} error={} exit={exit}",
            log.warnings, log.errors
        ),
        ok,
    ))
}

async fn burst(
    args: &Args,
    env: &DaemonEnv,
    daemon: &Daemon,
    stub: &TokenStub,
    check: bool,
) -> anyhow::Result<(String, bool)> {
    let url: Arc<str> = Arc::from(format!("{}/hookup/{}", daemon.base, env.hookup_secret));
    let warmup: Vec<Hookup> = (0..args.warmup as i64)
        .map(|i| Hookup::new(WARMUP_FIRST_ID + i, &stub.token_url(WARMUP_FIRST_ID + i)))
        .collect();
    let measured: Vec<Hookup> = (1..=args.messages as i64)
        .map(|id| Hookup::new(id, &stub.token_url(id)))
        .collect();
    let warm = send(args, &url, &warmup).await?;
    let started = Instant::now();
    let result = send(args, &url, &measured).await?;
    let accepted: Vec<&Hookup> = [(&warm, &warmup), (&result, &measured)]
        .into_iter()
        .flat_map(|(r, all)| r.ok_requests.iter().map(|&i| &all[i]))
        .collect();

    let key = env.api_key("bench", "admin").await?;
    let client = http_client(Duration::from_secs(30), 1)?;
    // With the check on: every client's check at the endpoint, then `ok` in the admin API.
    let (mut states, mut checked_after) = (BTreeMap::new(), None);
    if check {
        let limit = Duration::from_secs(args.check_timeout_secs);
        let reached = wait_for(
            || stub.counts.total() >= accepted.len() as u64,
            limit.saturating_sub(started.elapsed()),
        )
        .await;
        let (seen, all_ok) = load::wait_credentials_ok(
            &client,
            &daemon.base,
            &key,
            accepted.len(),
            limit.saturating_sub(started.elapsed()),
        )
        .await?;
        if reached.is_ok() && all_ok {
            checked_after = Some(started.elapsed());
        }
        states = seen;
    }
    let tenants = load::tenants(&client, &daemon.base, &key).await?;
    let stored = load::client_ids(&tenants)?;
    let verified = accepted
        .iter()
        .filter(|h| stored.get(&h.provet_id) == Some(&h.client_id))
        .count();
    let per_client = stub.counts.per_client();
    let mut requests_per_client = BTreeMap::<u64, usize>::new();
    for h in &accepted {
        *requests_per_client
            .entry(per_client.get(&h.client_id).copied().unwrap_or(0))
            .or_default() += 1;
    }
    let expected_per_client = u64::from(check);
    let upstream_ok = requests_per_client
        .keys()
        .all(|&n| n == expected_per_client)
        && stub.counts.total() == expected_per_client * accepted.len() as u64;
    for s in warm.samples.iter().chain(&result.samples) {
        eprintln!("request problem: {s}");
    }
    // Messages stored per second: answered 200, over the time from the first send to the last answer.
    let rate = result.ok() as f64 / result.elapsed.as_secs_f64();
    let ok = verified == accepted.len() && upstream_ok && (!check || checked_after.is_some());
    let line = format!(
        "messages={} senders={} {} elapsed={:.2}s msgs/s={rate:.0} (target >= {TARGET_PER_SEC}: {}) \
         verified={verified}/{} stored; credentials {} {states:?}; upstream requests per client {requests_per_client:?} (expected {expected_per_client} each: {})",
        args.messages,
        args.concurrency,
        result.line(),
        result.elapsed.as_secs_f64(),
        met(rate >= TARGET_PER_SEC),
        accepted.len(),
        match (check, checked_after) {
            (false, _) => "not checked".to_owned(),
            (true, Some(t)) => format!("all ok {:.2}s after the burst started", t.as_secs_f64()),
            (true, None) => format!("NOT ALL ok within {} s", args.check_timeout_secs),
        },
        if upstream_ok { "yes" } else { "NO" },
    );
    Ok((line, ok))
}

/// Sends every message once from `--concurrency` senders.
async fn send(args: &Args, url: &Arc<str>, hookups: &[Hookup]) -> anyhow::Result<LoadResult> {
    let bodies: Arc<Vec<String>> = Arc::new(hookups.iter().map(|h| h.body.clone()).collect());
    let url = Arc::clone(url);
    load::timed_load(
        args.concurrency,
        BURST_LIMIT,
        hookups.len(),
        move |client, n| {
            client
                .post(&*url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(bodies[n].clone())
        },
    )
    .await
}
