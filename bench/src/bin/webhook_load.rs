//! `webhook-load`: 5,000 distinct hookups from 64 senders against a release build at its
//! default configuration, once without a webhook and once with one registered (all events),
//! on SQLite and PostgreSQL. With the webhook: every `tenant.registered` event must reach the
//! receiver (served by the benchmark on 127.0.0.1, answering 204 at once), and the latency
//! from the event's `occurred_at` (stamped in the committing transaction) to its receipt is
//! reported (p50, p99, max). The hookup rate with the webhook is compared with the rate
//! without, measured in the same run. Only 127.0.0.1 is ever contacted.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use anyhow::Context;
use broker_bench::daemon::{Backend, Daemon, DaemonEnv};
use broker_bench::load::{self, Hookup, LoadResult};
use broker_bench::stub::TokenStub;
use broker_bench::{http_client, met, quantile, wait_for};
use clap::Parser;
use serde_json::{Value, json};

const WARMUP_FIRST_ID: i64 = 1_000_001;
const BURST_LIMIT: Duration = Duration::from_secs(120);
/// The bound: the rate with a webhook within 10% of the rate without.
const MAX_SLOWDOWN: f64 = 0.10;

/// Load test of webhook fan-out beside the hookup intake (a benchmark, not a test).
#[derive(Debug, Parser)]
#[command(name = "webhook-load", version)]
struct Args {
    #[arg(long, default_value = "target/release/provet-broker")]
    binary: PathBuf,
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "sqlite,postgres"
    )]
    backend: Vec<Backend>,
    #[arg(long, default_value_t = 5000)]
    messages: usize,
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    #[arg(long, default_value_t = 200)]
    warmup: usize,
    /// How long after the burst every event may take to arrive.
    #[arg(long, default_value_t = 120)]
    delivery_timeout_secs: u64,
}

type Time = chrono::DateTime<chrono::Utc>;

/// By `webhook-id`: the event's `occurred_at` and when it arrived.
#[derive(Default)]
struct Receipts {
    seen: Mutex<HashMap<String, (Time, Time)>>,
    duplicates: Mutex<u64>,
}

async fn receive(
    request: HttpRequest,
    body: web::Bytes,
    receipts: web::Data<Receipts>,
) -> HttpResponse {
    let now = chrono::Utc::now();
    let id = request
        .headers()
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let occurred = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["occurred_at"].as_str().map(str::to_owned))
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
        .map_or(now, |t| t.with_timezone(&chrono::Utc));
    let mut seen = receipts.seen.lock().unwrap_or_else(PoisonError::into_inner);
    if seen.insert(id, (occurred, now)).is_some() {
        *receipts
            .duplicates
            .lock()
            .unwrap_or_else(PoisonError::into_inner) += 1;
    }
    HttpResponse::NoContent().finish()
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let mut lines = Vec::new();
    let mut all_ok = true;
    for &backend in &args.backend {
        let mut baseline = None;
        for with_webhook in [false, true] {
            match run(&args, backend, with_webhook, baseline).await {
                Ok((line, ok, rate)) => {
                    println!("{line}");
                    lines.push(line);
                    all_ok &= ok;
                    baseline.get_or_insert(rate);
                }
                Err(e) => {
                    eprintln!("webhook-load: {backend} run failed: {e:#}");
                    all_ok = false;
                }
            }
        }
    }
    println!("summary:");
    for line in &lines {
        println!("  {line}");
    }
    if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn run(
    args: &Args,
    backend: Backend,
    with_webhook: bool,
    baseline: Option<f64>,
) -> anyhow::Result<(String, bool, f64)> {
    let stub = TokenStub::start(1)?;
    let receipts = web::Data::new(Receipts::default());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("bind")?;
    let receiver_url = format!("http://{}/hook", listener.local_addr()?);
    let data = receipts.clone();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(web::PayloadConfig::new(1 << 20))
            .route("/hook", web::post().to(receive))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(1)
    .listen(listener)?
    .run();
    let server_handle = server.handle();
    let server_task = tokio::spawn(server);

    let env = DaemonEnv::with_local_provider(&args.binary, backend).await?;
    let daemon = Daemon::start(&env).await?;
    let tag = format!(
        "{backend} webhook={}",
        if with_webhook { "yes" } else { "no" }
    );
    eprintln!(
        "[{tag}] daemon {}; settings beside the defaults: {}",
        daemon.base,
        env.overrides()
    );
    let key = env.api_key("bench", "admin").await?;
    let client = http_client(Duration::from_secs(30), 1)?;
    if with_webhook {
        let response = client
            .post(format!("{}/admin/webhooks", daemon.base))
            .bearer_auth(&key)
            .json(&json!({"url": receiver_url, "events": ["*"], "description": "bench"}))
            .send()
            .await?;
        anyhow::ensure!(
            response.status().as_u16() == 201,
            "webhook registration: {}",
            response.status()
        );
    }

    let url: Arc<str> = Arc::from(format!("{}/hookup/{}", daemon.base, env.hookup_secret));
    let warmup: Vec<Hookup> = (0..args.warmup as i64)
        .map(|i| Hookup::new(WARMUP_FIRST_ID + i, &stub.token_url(WARMUP_FIRST_ID + i)))
        .collect();
    let measured: Vec<Hookup> = (1..=args.messages as i64)
        .map(|id| Hookup::new(id, &stub.token_url(id)))
        .collect();
    let warm = send(args, &url, &warmup).await?;
    let result = send(args, &url, &measured).await?;
    let accepted = (warm.ok() + result.ok()) as usize;
    let rate = result.ok() as f64 / result.elapsed.as_secs_f64();

    let mut delivery = String::from("no webhook");
    let mut ok = result.errors() == 0;
    if with_webhook {
        // Each accepted hookup is one tenant.registered event (credential checks may add
        // credentials.ok events: they are delivered too, and counted separately).
        let expected = accepted;
        let reached = wait_for(
            || {
                let seen = receipts.seen.lock().unwrap_or_else(PoisonError::into_inner);
                seen.len() >= expected
            },
            Duration::from_secs(args.delivery_timeout_secs),
        )
        .await;
        // Let the credential-check events arrive as well, then stop counting.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let seen = receipts
            .seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let duplicates = *receipts
            .duplicates
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut latency: Vec<f64> = seen
            .values()
            .map(|(occurred, got)| {
                (*got - *occurred).num_microseconds().unwrap_or(0) as f64 / 1000.0
            })
            .collect();
        latency.sort_by(f64::total_cmp);
        let slowdown = baseline.map_or(0.0, |b| 1.0 - rate / b);
        let within = slowdown <= MAX_SLOWDOWN;
        ok &= reached.is_ok() && duplicates == 0 && within;
        delivery = format!(
            "events received={} (>= {expected} tenant.registered: {}) duplicates={duplicates} \
             commit->receipt p50={:.1}ms p99={:.1}ms max={:.1}ms; rate vs without webhook {:+.1}% (within 10%: {})",
            seen.len(),
            met(reached.is_ok()),
            quantile(&latency, 0.5),
            quantile(&latency, 0.99),
            latency.last().copied().unwrap_or(0.0),
            -slowdown * 100.0,
            met(within),
        );
    }
    let (exit, log) = daemon.stop().await?;
    stub.stop().await?;
    server_handle.stop(true).await;
    let _ = server_task.await;
    log.print(&tag);
    Ok((
        format!(
            "webhook-load RESULT {tag:<20} messages={} senders={} {} msgs/s={rate:.0}; {delivery}; daemon-log warn={} error={} exit={exit}",
            args.messages,
            args.concurrency,
            result.line(),
            log.warnings,
            log.errors
        ),
        ok && log.errors == 0,
        rate,
    ))
}

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
