//! `refresh-storm`: `force_refresh` over many client_credentials tenants from 64 keep-alive
//! connections against a release build at its default configuration, on SQLite and
//! PostgreSQL; every forced request must cause exactly one request at the instant token
//! endpoint served by the benchmark on 127.0.0.1. Beside it, alternating in the same run, the
//! same load on the cached (not forced) path, which must cause none. Only 127.0.0.1 is ever
//! contacted.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use broker_bench::daemon::{Backend, Daemon, DaemonEnv};
use broker_bench::load::{self, LoadResult};
use broker_bench::stub::TokenStub;
use broker_bench::{BinaryArg, exit_code, median, met};
use clap::Parser;

/// The target for forced refreshes, on both backends.
const TARGET_PER_SEC: f64 = 2000.0;

/// Forced token refreshes over many tenants (a benchmark, not a test).
#[derive(Debug, Parser)]
#[command(name = "refresh-storm", version)]
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
    /// client_credentials tenants; request n asks for tenant n mod tenants + 1.
    #[arg(long, default_value_t = 1000)]
    tenants: usize,
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Length of each round, in seconds.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Rounds of each kind, alternating cached / forced.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let mut ok = true;
    for &backend in &args.backend {
        match run(&args, backend).await {
            Ok(passed) => ok &= passed,
            Err(e) => {
                eprintln!("refresh-storm: {backend} run failed: {e:#}");
                ok = false;
            }
        }
    }
    exit_code("refresh-storm", Ok(ok))
}

async fn run(args: &Args, backend: Backend) -> anyhow::Result<bool> {
    let stub = TokenStub::start(1)?;
    let env = DaemonEnv::with_local_provider(&args.binary, backend).await?;
    let daemon = Daemon::start(&env).await?;
    eprintln!(
        "[{backend}] daemon {}; settings beside the defaults: {}",
        daemon.base,
        env.overrides()
    );
    let result = storm(args, backend, &env, &daemon, &stub).await;
    let (exit, log) = daemon.stop().await?;
    stub.stop().await?;
    log.print(&backend.to_string());
    println!("[{backend}] daemon exit {exit}");
    Ok(result? && log.errors == 0)
}

async fn storm(
    args: &Args,
    backend: Backend,
    env: &DaemonEnv,
    daemon: &Daemon,
    stub: &TokenStub,
) -> anyhow::Result<bool> {
    let hookup_url = format!("{}/hookup/{}", daemon.base, env.hookup_secret);
    load::register_checked(&hookup_url, stub, args.tenants, 32).await?;
    let key: Arc<str> = Arc::from(env.api_key("bench", "token").await?);
    let base: Arc<str> = Arc::from(daemon.base.as_str());
    // Every tenant's token once, so the cached rounds find all of them cached even where a
    // credential check failed.
    let (b, k) = (Arc::clone(&base), Arc::clone(&key));
    let warm = load::timed_load(
        args.connections,
        Duration::from_secs(60),
        args.tenants,
        move |client, n| load::token_request(client, &b, &k, n as i64 + 1, false),
    )
    .await?;
    eprintln!("[{backend}] warm pass over every tenant: {}", warm.line());
    let (mut cached, mut forced) = (Vec::new(), Vec::new());
    let mut ok = true;
    for round in 1..=args.rounds {
        for force in [false, true] {
            let before = stub.counts.total();
            let (base, key, tenants) = (Arc::clone(&base), Arc::clone(&key), args.tenants);
            let result = load::timed_load(
                args.connections,
                Duration::from_secs(args.duration_secs),
                usize::MAX,
                move |client, n| {
                    load::token_request(client, &base, &key, (n % tenants) as i64 + 1, force)
                },
            )
            .await?;
            let upstream = stub.counts.total() - before;
            let expected = if force { result.ok() } else { 0 };
            ok &= result.errors() == 0 && upstream == expected;
            println!(
                "[{backend}] round {round} {:<6} {} upstream={upstream} (expected {expected}: {})",
                if force { "forced" } else { "cached" },
                result.line(),
                met(upstream == expected)
            );
            for s in &result.samples {
                eprintln!("[{backend}] problem: {s}");
            }
            if force {
                forced.push(result)
            } else {
                cached.push(result)
            }
        }
    }
    let rates = |rs: &[LoadResult]| median(&rs.iter().map(LoadResult::rate).collect::<Vec<_>>());
    let p99 = |rs: &[LoadResult]| median(&rs.iter().map(|r| r.ms(0.99)).collect::<Vec<_>>());
    let errors: u64 = forced.iter().chain(&cached).map(LoadResult::errors).sum();
    println!(
        "refresh-storm RESULT {backend:<8} tenants={} connections={} {}x{}s, medians: forced {:.0} req/s p99 {:.2} ms \
         (target >= {TARGET_PER_SEC}: {}); cached baseline {:.0} req/s p99 {:.2} ms; forced/cached {:.3}; errors {errors}; \
         one upstream request per forced answer, none per cached: {}",
        args.tenants,
        args.connections,
        args.rounds,
        args.duration_secs,
        rates(&forced),
        p99(&forced),
        met(rates(&forced) >= TARGET_PER_SEC),
        rates(&cached),
        p99(&cached),
        rates(&forced) / rates(&cached),
        if ok { "yes" } else { "NO" },
    );
    Ok(ok)
}
