//! `refresh-replicas`: three replicas of a release build (default configuration) on one
//! PostgreSQL database, `force_refresh` over many client_credentials tenants against the
//! instant token endpoint served by the benchmark on 127.0.0.1.
//!
//! 1. spread: from 64 keep-alive connections, request n for tenant n mod tenants + 1 on
//!    replica n mod 3, in rounds bounded in time; every forced answer must cost exactly one
//!    upstream request.
//! 2. coalescing: per round, every tenant once, 64 at a time: the same tenant's
//!    `force_refresh` sent to all three replicas at once. Requests that arrive before a
//!    fetch starts may share it (a token obtained after a request arrived serves it);
//!    one that arrives after the fetch finished must fetch again. The distribution of
//!    upstream requests per tenant per round is printed (1 = fully coalesced).
//!
//! Only 127.0.0.1 is ever contacted.
#![allow(clippy::disallowed_methods)] // benchmarks measure real time

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use broker_bench::daemon::{Backend, Daemon, DaemonEnv};
use broker_bench::load::{self, Hookup};
use broker_bench::stub::TokenStub;
use broker_bench::{BinaryArg, exit_code, http_client, met};
use clap::Parser;

/// force_refresh over three replicas sharing PostgreSQL (a benchmark, not a test).
#[derive(Debug, Parser)]
#[command(name = "refresh-replicas", version)]
struct Args {
    #[command(flatten)]
    binary: BinaryArg,
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    #[arg(long, default_value_t = 1000)]
    tenants: usize,
    /// Connections of the spread phase; tenants in flight at once in the coalescing phase.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Length of each spread round, in seconds.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Rounds of each phase (a coalescing round is one pass over every tenant).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

#[tokio::main]
async fn main() -> ExitCode {
    exit_code("refresh-replicas", run(&Args::parse()).await)
}

async fn run(args: &Args) -> anyhow::Result<bool> {
    let stub = TokenStub::start(1)?;
    let env = DaemonEnv::with_local_provider(&args.binary, Backend::Postgres).await?;
    let mut daemons = Vec::new();
    for _ in 0..args.replicas.max(1) {
        daemons.push(Daemon::start(&env).await?);
    }
    let bases: Vec<String> = daemons.iter().map(|d| d.base.clone()).collect();
    eprintln!(
        "replicas {bases:?}; settings beside the defaults: {}",
        env.overrides()
    );
    let result = measure(args, &env, &bases, &stub).await;
    let mut errors = 0;
    for (i, daemon) in daemons.into_iter().enumerate() {
        let (exit, log) = daemon.stop().await?;
        log.print(&format!("replica {i}"));
        println!("[replica {i}] exit {exit}");
        errors += log.errors;
    }
    stub.stop().await?;
    Ok(result? && errors == 0)
}

async fn measure(
    args: &Args,
    env: &DaemonEnv,
    bases: &[String],
    stub: &TokenStub,
) -> anyhow::Result<bool> {
    let hookups = load::register_checked(
        &format!("{}/hookup/{}", bases[0], env.hookup_secret),
        stub,
        args.tenants,
        32,
    )
    .await?;
    let key: Arc<str> = Arc::from(env.api_key("bench", "token").await?);
    let bases: Arc<Vec<String>> = Arc::new(bases.to_vec());
    let mut ok = true;
    for round in 1..=args.rounds {
        let before = stub.counts.total();
        let (b, k, tenants) = (Arc::clone(&bases), Arc::clone(&key), args.tenants);
        let result = load::timed_load(
            args.connections,
            Duration::from_secs(args.duration_secs),
            usize::MAX,
            move |client, n| {
                load::token_request(client, &b[n % b.len()], &k, (n % tenants) as i64 + 1, true)
            },
        )
        .await?;
        let upstream = stub.counts.total() - before;
        ok &= result.errors() == 0 && upstream == result.ok();
        println!(
            "refresh-replicas RESULT spread round {round}: {} replicas {} upstream={upstream} (one per answer: {})",
            bases.len(),
            result.line(),
            met(upstream == result.ok())
        );
    }
    for round in 1..=args.rounds {
        let (distribution, requests, errors, elapsed) =
            coalescing_round(args, &bases, &key, &hookups, stub).await?;
        let worst = distribution.keys().next_back().copied().unwrap_or(0);
        ok &= errors == 0 && !distribution.contains_key(&0);
        println!(
            "refresh-replicas RESULT coalescing round {round}: {} tenants x {} replicas at once, {requests} requests in {:.2}s = {:.0} req/s, \
             errors {errors}; upstream requests per tenant {distribution:?} (max {worst}; all 1: {})",
            args.tenants,
            bases.len(),
            elapsed.as_secs_f64(),
            requests as f64 / elapsed.as_secs_f64(),
            met(distribution.keys().all(|&n| n == 1))
        );
    }
    Ok(ok)
}

/// One pass over every tenant, each tenant's force_refresh sent to every replica at once;
/// the upstream requests per tenant: count of tenants by number of requests.
async fn coalescing_round(
    args: &Args,
    bases: &Arc<Vec<String>>,
    key: &Arc<str>,
    hookups: &[Hookup],
    stub: &TokenStub,
) -> anyhow::Result<(BTreeMap<u64, usize>, u64, u64, Duration)> {
    let before = stub.counts.per_client();
    let client = http_client(Duration::from_secs(30), args.connections)?;
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let (b, k, e) = (Arc::clone(bases), Arc::clone(key), Arc::clone(&errors));
    load::for_all(
        args.connections,
        (1..=args.tenants as i64).collect(),
        move |id: Arc<i64>| {
            let (client, b, k, e) = (
                client.clone(),
                Arc::clone(&b),
                Arc::clone(&k),
                Arc::clone(&e),
            );
            async move {
                // All replicas at once: one task per request, each with its whole answer.
                let mut sends = tokio::task::JoinSet::new();
                for base in b.iter() {
                    let request = load::token_request(&client, base, &k, *id, true);
                    sends.spawn(async move {
                        match request.send().await {
                            Ok(r) if r.status() == 200 => r.bytes().await.is_ok(),
                            _ => false,
                        }
                    });
                }
                while let Some(answered) = sends.join_next().await {
                    if !answered.unwrap_or(false) {
                        e.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(())
            }
        },
    )
    .await?;
    let elapsed = started.elapsed();
    let after = stub.counts.per_client();
    let mut distribution = BTreeMap::new();
    for h in hookups {
        let n = after.get(&h.client_id).copied().unwrap_or(0)
            - before.get(&h.client_id).copied().unwrap_or(0);
        *distribution.entry(n).or_default() += 1;
    }
    Ok((
        distribution,
        (args.tenants * bases.len()) as u64,
        errors.load(Ordering::Relaxed),
        elapsed,
    ))
}
