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
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use actix_web::{HttpResponse, web};
use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use clap::Parser;
use serde_json::json;
use tokio::sync::Notify;

use broker_bench::cpu::{self, machine_ticks, process_ticks, self_ticks};
use broker_bench::daemon::{Backend, Daemon, DaemonEnv, Database};
use broker_bench::load::{self, Hookup};
use broker_bench::server::{Bound, LocalServer};
use broker_bench::{BinaryArg, Memory, exit_code};

/// How often the waiting phase prints progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// A JWKS with one RSA signing key (the daemon needs at least one).
const JWKS: &str = r#"{"keys":[{"kty":"RSA","use":"sig","alg":"RS256","kid":"k1","n":"sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw","e":"AQAB"}]}"#;

/// Discovery of many tenants against a slow provider (a benchmark, not a test).
#[derive(Debug, Parser)]
#[command(name = "discovery-load", version)]
struct Args {
    #[command(flatten)]
    binary: BinaryArg,
    /// Backends, in order (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "sqlite")]
    backend: Vec<Backend>,
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
}

/// Discovery rows per state.
async fn discovery_states(db: &Database) -> anyhow::Result<BTreeMap<String, usize>> {
    let mut states = BTreeMap::new();
    for row in db
        .query("SELECT state, COUNT(*) FROM discovery GROUP BY state")
        .await?
    {
        let (state, n) = row
            .split_once('|')
            .with_context(|| format!("unexpected row `{row}`"))?;
        states.insert(state.to_owned(), n.parse()?);
    }
    Ok(states)
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
    server: LocalServer,
}

impl DiscoveryServer {
    fn start(latency: Duration, tenants: usize) -> anyhow::Result<Self> {
        let bound = Bound::new()?;
        let provider = web::Data::new(Provider {
            base: bound.base.clone(),
            latency,
            tenants,
            served: Mutex::new(Vec::with_capacity(tenants * 2)),
            jwks_answered: AtomicUsize::new(0),
            other: AtomicUsize::new(0),
            all_jwks_answered: Notify::new(),
        });
        let data = provider.clone();
        let server = bound.serve("the discovery server", 2, move |cfg| {
            cfg.app_data(data.clone())
                .route(
                    "/{tenant}/oauth2/.well-known/openid-configuration",
                    web::get().to(document),
                )
                .route(
                    "/{tenant}/oauth2/.well-known/jwks.json",
                    web::get().to(jwks),
                )
                .default_service(web::to(other));
        })?;
        Ok(Self { provider, server })
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.server.stop().await
    }
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
    log: broker_bench::daemon::DaemonLog,
    exit: String,
    /// Why the run ended early, if it did.
    gave_up: Option<String>,
    analysis: Vec<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    exit_code("discovery-load", run(&Args::parse()).await)
}

/// Every chosen backend and concurrency; `Ok(false)` when a run did not finish or left a
/// tenant short of `ok`.
async fn run(args: &Args) -> anyhow::Result<bool> {
    if args.tenants == 0 || args.senders == 0 || args.concurrency.contains(&0) {
        bail!("--tenants, --senders and --concurrency must be at least 1");
    }
    let binary = args.binary.path()?;
    eprintln!(
        "discovery-load: {} tenants, {} ms per upstream request, concurrency {:?}, binary {}",
        args.tenants,
        args.latency_ms,
        args.concurrency,
        binary.display()
    );

    let mut summaries = Vec::new();
    let mut all_ok = true;
    for &backend in &args.backend {
        for &concurrency in &args.concurrency {
            eprintln!("[{backend} C={concurrency}] starting");
            let run = run_with_database(args, &binary, backend, concurrency)
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
        run.log.discovery_ok_at.len(),
        run.wall.as_secs_f64()
    );
}

/// A fresh database (a PostgreSQL one dropped whatever happened) and both phases.
async fn run_with_database(
    args: &Args,
    binary: &std::path::Path,
    backend: Backend,
    concurrency: usize,
) -> anyhow::Result<Run> {
    let tag = format!("{backend} C={concurrency}");
    let latency = Duration::from_millis(args.latency_ms);
    let server = DiscoveryServer::start(latency, args.tenants)?;
    let result = async {
        let mut env = DaemonEnv::with_local_provider(binary, backend).await?;
        // The harness reads each tenant's `discovery ok` time from the JSON log.
        env.set("BROKER_LOG__FORMAT", "json");
        register(args, &mut env, &server.provider.base, &tag).await?;
        let states = discovery_states(&env.database).await?;
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
        measure(args, &mut env, &server.provider, phase).await
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
    env: &mut DaemonEnv,
    provider_base: &str,
    tag: &str,
) -> anyhow::Result<()> {
    env.set("BROKER_DISCOVERY__ENABLED", "false");
    let daemon = Daemon::start(env).await?;
    eprintln!(
        "[{tag}] phase 1 (not measured): registering {} tenants from {} senders",
        args.tenants, args.senders
    );
    let started = Instant::now();
    let url = format!("{}/hookup/{}", daemon.base, env.hookup_secret);
    let hookups = (1..=args.tenants as i64)
        .map(|n| hookup(n, provider_base))
        .collect();
    let sent = tokio::time::timeout(
        Duration::from_secs(args.timeout_secs),
        load::register(args.senders, &url, hookups),
    )
    .await;
    let (exit, log) = daemon.stop().await?;
    match sent {
        Ok(Ok(())) => {}
        Ok(Err(e)) => bail!("{e:#}; daemon log: {:?}", log.samples),
        Err(_) => bail!(
            "registration gave up after {} s (--timeout-secs)",
            args.timeout_secs
        ),
    }
    eprintln!(
        "[{tag}] phase 1: {} tenants registered in {:.1}s; daemon exit {exit}",
        args.tenants,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A valid hookup for tenant `n` whose provider is the local discovery server.
fn hookup(n: i64, base: &str) -> Hookup {
    let client_id = format!("client-{n}");
    let body = json!({
        "provet_id": n,
        "client_id": client_id,
        "client_secret": format!("secret-{n}"),
        "algorithm": "RS256",
        "authorization_grant_type": "authorization-code",
        "client_type": "confidential",
        "redirect_uris": "http://broker.test/oauth/callback",
        "token_url": format!("{base}/{n}/oauth2/token/"),
        "authorize_url": format!("{base}/{n}/oauth2/authorize/"),
        "openid_autodiscovery_url": format!("{base}/{n}/oauth2/.well-known/openid-configuration"),
    })
    .to_string();
    Hookup {
        provet_id: n,
        client_id,
        body,
    }
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
    env: &mut DaemonEnv,
    provider: &Provider,
    phase: Phase<'_>,
) -> anyhow::Result<Run> {
    let Phase {
        backend,
        concurrency,
        tag,
    } = phase;
    env.set("BROKER_DISCOVERY__ENABLED", "true");
    env.set("BROKER_DISCOVERY__CONCURRENCY", concurrency.to_string());
    eprintln!(
        "[{tag}] phase 2 (measured): discovery of {} tenants",
        args.tenants
    );
    let db = &env.database;
    let commits_before = db.committed_transactions().await?;
    let machine_before = machine_ticks().unwrap_or_default();
    let bench_before = self_ticks().unwrap_or_default();
    let mut daemon = Daemon::start(env).await?;
    let listening = daemon.listening_at;
    let deadline = listening + Duration::from_secs(args.timeout_secs);
    let mut gave_up = None;
    let mut last_progress = Instant::now();
    while provider.jwks_answered.load(Ordering::SeqCst) < args.tenants {
        tokio::select! {
            _ = provider.all_jwks_answered.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        if let Some(status) = daemon.exited() {
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
    let peak_rss_kib = Memory::of(daemon.pid).ok().map(|m| m.hwm_kib);
    let daemon_ticks = process_ticks(daemon.pid);
    let bench_ticks = self_ticks().unwrap_or_default();
    let machine_after = machine_ticks().unwrap_or_default();
    let (exit, log) = daemon.stop().await?;
    if let Some(why) = &gave_up {
        eprintln!("[{tag}] GIVING UP: {why}");
    }

    let states = discovery_states(db).await?;
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
    let cores = |ticks: u64| cpu::cores(ticks, wall.as_secs_f64());
    let mut run = Run {
        backend,
        concurrency,
        total,
        jwks_answered,
        documents,
        other: provider.other.load(Ordering::SeqCst),
        states,
        peak_rss_kib,
        daemon_cpu: cores(daemon_ticks.unwrap_or(0)),
        bench_cpu: cores(bench_ticks.saturating_sub(bench_before)),
        machine_cpu: cores(machine_after.busy.saturating_sub(machine_before.busy)),
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
        if let Some(logged) = run.log.discovery_ok_at.get(tenant) {
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
