//! `refresh-burst`: latency of many concurrent callers at the moment an authorization-code
//! tenant's access token has just expired: one refresh at the provider, everyone waits on it.
//!
//! An in-process stub provider answers the code exchange with a short-lived access token
//! (`--lifetime-secs`) and refresh token `r1`, and each refresh, after `--refresh-delay-ms`,
//! with a new access token and a rotated refresh token (an old one is refused with
//! `invalid_grant`, as django-oauth-toolkit does). The daemon (SQLite) is started on a port
//! chosen beforehand so that its public URL, and so its callback, is known; the tenant is
//! registered with that callback as redirect URI, an authorization is started, and the
//! callback is called directly with a code. Then, `--rounds` times: wait until the token has
//! expired, fire `--callers` concurrent `POST /v1/tenants/N/token {"min_ttl": 0}` (each
//! caller on its own keep-alive connection), record every latency, and check that the round
//! caused exactly one refresh and that every caller got its token. Right after each burst, a
//! control burst of the same callers is served from memory, for comparison. Only 127.0.0.1
//! is ever contacted.
#![allow(clippy::disallowed_methods)] // benchmarks measure real time

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use actix_web::{HttpResponse, web};
use anyhow::{Context, anyhow, bail};
use broker_bench::daemon::{Daemon, DaemonEnv};
use broker_bench::server::{Bound, LocalServer};
use broker_bench::{BinaryArg, exit_code, free_port, http_client, quantile, random_string};
use clap::Parser;
use serde_json::{Value, json};
use tokio::sync::Barrier;
use tokio::task::JoinSet;

const TENANT: i64 = 1;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Concurrent callers on an expired token (a benchmark, not a test).
#[derive(Debug, Parser)]
#[command(name = "refresh-burst", version)]
struct Args {
    #[command(flatten)]
    binary: BinaryArg,
    /// Concurrent callers per round, each with its own keep-alive connection.
    #[arg(long, default_value_t = 100)]
    callers: usize,
    /// Rounds, each on a freshly expired token.
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// Lifetime of the stub's access tokens (`expires_in`), in seconds.
    #[arg(long, default_value_t = 2)]
    lifetime_secs: u64,
    /// How long the stub takes to answer a refresh, in milliseconds.
    #[arg(long, default_value_t = 50)]
    refresh_delay_ms: u64,
    /// How long after the token's expiry a round starts, in milliseconds.
    #[arg(long, default_value_t = 200)]
    margin_ms: u64,
    /// HTTP workers of the daemon; 0 = one per CPU core (its default).
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// The daemon's log filter (BROKER_LOG__LEVEL); default: the daemon's own (`info`).
    #[arg(long)]
    log_level: Option<String>,
    /// More daemon settings, `BROKER_…=value` (repeatable), e.g.
    /// `--daemon-env BROKER_SERVER__API_KEY_CACHE_TTL=1h`.
    #[arg(long = "daemon-env", value_name = "NAME=VALUE", value_parser = broker_bench::daemon::parse_var)]
    daemon_env: Vec<(String, String)>,
}

/// The stub provider's token endpoint and what it did.
struct Provider {
    lifetime: u64,
    delay: Duration,
    exchanges: AtomicUsize,
    refreshes: AtomicUsize,
    /// Refresh requests refused for an outdated refresh token.
    refused: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    state: Mutex<Issued>,
}

/// The provider's current grant.
struct Issued {
    refresh_token: String,
    access_token: String,
    /// When the current access token was issued.
    at: Instant,
    generation: usize,
}

impl Provider {
    fn state(&self) -> std::sync::MutexGuard<'_, Issued> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new access token and refresh token; answers the token body.
    fn issue(&self) -> Value {
        let mut state = self.state();
        state.generation += 1;
        state.access_token = format!("at-{}-{}", state.generation, random_string(24));
        state.refresh_token = format!("r{}", state.generation);
        state.at = Instant::now();
        json!({
            "access_token": state.access_token,
            "token_type": "Bearer",
            "expires_in": self.lifetime,
            "refresh_token": state.refresh_token,
            "scope": "restapi",
        })
    }
}

async fn token_endpoint(
    provider: web::Data<Provider>,
    form: web::Form<HashMap<String, String>>,
) -> HttpResponse {
    let refused = |error: &str| {
        HttpResponse::BadRequest()
            .content_type("application/json")
            .body(json!({ "error": error }).to_string())
    };
    let answer = |body: Value| {
        HttpResponse::Ok()
            .content_type("application/json")
            .insert_header(("cache-control", "no-store"))
            .body(body.to_string())
    };
    match form.get("grant_type").map(String::as_str) {
        Some("authorization_code") => {
            provider.exchanges.fetch_add(1, Ordering::SeqCst);
            answer(provider.issue())
        }
        Some("refresh_token") => {
            let now = provider.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            provider.max_in_flight.fetch_max(now, Ordering::SeqCst);
            provider.refreshes.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(provider.delay).await;
            let current = provider.state().refresh_token
                == *form.get("refresh_token").map_or("", |t| t.as_str());
            let response = if current {
                answer(provider.issue())
            } else {
                provider.refused.fetch_add(1, Ordering::SeqCst);
                refused("invalid_grant")
            };
            provider.in_flight.fetch_sub(1, Ordering::SeqCst);
            response
        }
        _ => refused("unsupported_grant_type"),
    }
}

struct ProviderServer {
    base: String,
    provider: web::Data<Provider>,
    server: LocalServer,
}

impl ProviderServer {
    fn start(lifetime: u64, delay: Duration) -> anyhow::Result<Self> {
        let provider = web::Data::new(Provider {
            lifetime,
            delay,
            exchanges: AtomicUsize::new(0),
            refreshes: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            state: Mutex::new(Issued {
                refresh_token: String::new(),
                access_token: String::new(),
                at: Instant::now(),
                generation: 0,
            }),
        });
        let data = provider.clone();
        let server = Bound::new()?.serve("the stub provider", 1, move |cfg| {
            cfg.app_data(data.clone())
                .route("/{tenant}/oauth2/token/", web::post().to(token_endpoint));
        })?;
        Ok(Self {
            base: server.base.clone(),
            provider,
            server,
        })
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.server.stop().await
    }
}

/// One caller's answer.
struct Answer {
    latency: Duration,
    status: u16,
    access_token: Option<String>,
    problem: Option<String>,
}

/// One burst of concurrent callers.
struct Burst {
    latencies_ms: Vec<f64>,
    non_200: usize,
    /// Distinct access tokens handed out.
    tokens: Vec<String>,
    problems: Vec<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    exit_code("refresh-burst", run(&Args::parse()).await)
}

async fn run(args: &Args) -> anyhow::Result<bool> {
    if args.callers == 0 || args.rounds == 0 || args.lifetime_secs == 0 {
        bail!("--callers, --rounds and --lifetime-secs must be at least 1");
    }
    let provider = ProviderServer::start(
        args.lifetime_secs,
        Duration::from_millis(args.refresh_delay_ms),
    )?;
    let port = free_port()?;
    let public_url = format!("http://127.0.0.1:{port}");
    let mut env = DaemonEnv::sqlite(&args.binary).await?;
    env.bind = format!("127.0.0.1:{port}");
    env.set("BROKER_SERVER__PUBLIC_URL", public_url.clone());
    if let Some(level) = &args.log_level {
        env.set("BROKER_LOG__LEVEL", level.clone());
    }
    for (name, value) in &args.daemon_env {
        env.set(name, value.clone());
    }
    if args.workers > 0 {
        env.set("BROKER_SERVER__WORKERS", args.workers.to_string());
    }
    let daemon = Daemon::start(&env).await?;
    let result = bursts(args, &env, &daemon, &provider, &public_url).await;
    let (exit, log) = daemon.stop().await?;
    let (exchanges, refused, max_in_flight) = {
        let p = &provider.provider;
        (
            p.exchanges.load(Ordering::SeqCst),
            p.refused.load(Ordering::SeqCst),
            p.max_in_flight.load(Ordering::SeqCst),
        )
    };
    provider.stop().await?;
    for s in &log.samples {
        eprintln!("daemon log: {s}");
    }
    println!(
        "stub provider: {exchanges} code exchange(s), {refused} refresh(es) refused, at most \
         {max_in_flight} refresh(es) in flight at once; daemon log: {} warnings, {} errors; exit {exit}",
        log.warnings, log.errors
    );
    let ok = result?;
    Ok(ok && refused == 0 && max_in_flight <= 1 && log.errors == 0)
}

async fn bursts(
    args: &Args,
    env: &DaemonEnv,
    daemon: &Daemon,
    provider: &ProviderServer,
    public_url: &str,
) -> anyhow::Result<bool> {
    let key = env.api_key("bench", "token").await?;
    let admin = http_client(REQUEST_TIMEOUT, 1)?;
    connect(&admin, env, daemon, &provider.base, public_url, &key).await?;
    let p = &provider.provider;
    println!(
        "daemon {} (pid {}); tenant {TENANT} connected; access tokens live {} s, refreshes take {} ms",
        daemon.base, daemon.pid, args.lifetime_secs, args.refresh_delay_ms
    );

    let url = format!("{}/v1/tenants/{TENANT}/token", daemon.base);
    // One client per caller, one keep-alive connection each, opened before the first round
    // while the token from the exchange is still valid.
    let callers = (0..args.callers)
        .map(|_| http_client(REQUEST_TIMEOUT, 1))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let warm = burst(&callers, &url, &key).await?;
    if warm.non_200 > 0 || p.refreshes.load(Ordering::SeqCst) != 0 {
        bail!(
            "the warm-up burst should be served without a refresh: {} non-200, {} refreshes; {:?}",
            warm.non_200,
            p.refreshes.load(Ordering::SeqCst),
            warm.problems
        );
    }

    let lifetime = Duration::from_secs(args.lifetime_secs);
    let margin = Duration::from_millis(args.margin_ms);
    let mut all = Vec::new();
    let mut control_all = Vec::new();
    let mut ok = true;
    for round in 1..=args.rounds {
        let issued_at = p.state().at;
        tokio::time::sleep_until((issued_at + lifetime + margin).into()).await;
        let before = p.refreshes.load(Ordering::SeqCst);
        let expired_for = issued_at.elapsed().saturating_sub(lifetime);
        let b = burst(&callers, &url, &key).await?;
        let refreshes = p.refreshes.load(Ordering::SeqCst) - before;
        let current = p.state().access_token.clone();
        // Still valid: served from memory, no refresh.
        let control = burst(&callers, &url, &key).await?;
        let control_refreshes = p.refreshes.load(Ordering::SeqCst) - before - refreshes;
        let good = refreshes == 1
            && b.non_200 == 0
            && b.tokens == [current.clone()]
            && control.non_200 == 0
            && control.tokens == [current]
            && control_refreshes == 0;
        ok &= good;
        let mut sorted = b.latencies_ms.clone();
        sorted.sort_by(f64::total_cmp);
        let mut control_sorted = control.latencies_ms.clone();
        control_sorted.sort_by(f64::total_cmp);
        println!(
            "round {round:>2}: expired {:>4.0} ms before; refreshes {refreshes}; non-200 {}; \
             distinct tokens {}; p50 {:>6.2} ms p99 {:>6.2} ms max {:>6.2} ms | cached control: \
             p50 {:>5.2} ms p99 {:>5.2} ms max {:>5.2} ms, refreshes {control_refreshes}{}",
            expired_for.as_secs_f64() * 1000.0,
            b.non_200,
            b.tokens.len(),
            quantile(&sorted, 0.5),
            quantile(&sorted, 0.99),
            quantile(&sorted, 1.0),
            quantile(&control_sorted, 0.5),
            quantile(&control_sorted, 0.99),
            quantile(&control_sorted, 1.0),
            if good { "" } else { "  UNEXPECTED" },
        );
        for problem in b.problems.iter().chain(&control.problems).take(3) {
            eprintln!("round {round}: {problem}");
        }
        all.extend(b.latencies_ms);
        control_all.extend(control.latencies_ms);
    }
    all.sort_by(f64::total_cmp);
    control_all.sort_by(f64::total_cmp);
    let refreshes = p.refreshes.load(Ordering::SeqCst);
    println!(
        "refresh-burst: {} callers x {} rounds, token expired, refresh takes {} ms at the provider: \
         p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (n = {}); refreshes at the provider {refreshes} \
         for {} rounds ({}); same callers on the cached token: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        args.callers,
        args.rounds,
        args.refresh_delay_ms,
        quantile(&all, 0.5),
        quantile(&all, 0.99),
        quantile(&all, 1.0),
        all.len(),
        args.rounds,
        if ok && refreshes == args.rounds {
            "exactly one per round"
        } else {
            "NOT one per round"
        },
        quantile(&control_all, 0.5),
        quantile(&control_all, 0.99),
        quantile(&control_all, 1.0),
    );
    Ok(ok && refreshes == args.rounds)
}

/// Registers the authorization-code tenant, starts an authorization and completes it by
/// calling the daemon's callback with a code, as the clinic user's browser would.
async fn connect(
    client: &reqwest::Client,
    env: &DaemonEnv,
    daemon: &Daemon,
    provider_base: &str,
    public_url: &str,
    key: &str,
) -> anyhow::Result<()> {
    let hookup = json!({
        "provet_id": TENANT,
        "client_id": format!("c-{TENANT}"),
        "client_secret": format!("s-{TENANT}"),
        "algorithm": null,
        "authorization_grant_type": "authorization-code",
        "client_type": "confidential",
        "redirect_uris": format!("{public_url}/oauth/callback"),
        "token_url": format!("{provider_base}/{TENANT}/oauth2/token/"),
        "authorize_url": format!("{provider_base}/{TENANT}/oauth2/authorize/"),
        "openid_autodiscovery_url": null,
    });
    let response = client
        .post(format!("{}/hookup/{}", daemon.base, env.hookup_secret))
        .json(&hookup)
        .send()
        .await?;
    let status = response.status();
    if !status.is_success() {
        bail!("hookup answered {status}: {}", response.text().await?);
    }

    let response = client
        .post(format!(
            "{}/v1/tenants/{TENANT}/authorizations",
            daemon.base
        ))
        .bearer_auth(key)
        .json(&json!({}))
        .send()
        .await?;
    let status = response.status();
    let body = response.text().await?;
    if !status.is_success() {
        bail!("starting the authorization answered {status}: {body}");
    }
    let started: Value = serde_json::from_str(&body)?;
    let authorize_url = started["authorize_url"]
        .as_str()
        .ok_or_else(|| anyhow!("no authorize_url in {body}"))?;
    let authorize_url = reqwest::Url::parse(authorize_url)?;
    let state = authorize_url
        .query_pairs()
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v.into_owned())
        .ok_or_else(|| anyhow!("no state in {authorize_url}"))?;

    let response = client
        .get(format!("{}/oauth/callback", daemon.base))
        .query(&[("code", "anything"), ("state", state.as_str())])
        .send()
        .await?;
    let status = response.status();
    if status != reqwest::StatusCode::OK {
        bail!("the callback answered {status}: {}", response.text().await?);
    }
    Ok(())
}

/// Every caller at once (released together by a barrier), each on its own client.
async fn burst(callers: &[reqwest::Client], url: &str, key: &str) -> anyhow::Result<Burst> {
    let barrier = Arc::new(Barrier::new(callers.len()));
    let mut tasks = JoinSet::new();
    for client in callers {
        let (client, barrier, url, key) = (
            client.clone(),
            Arc::clone(&barrier),
            url.to_owned(),
            key.to_owned(),
        );
        tasks.spawn(async move {
            barrier.wait().await;
            let started = Instant::now();
            let answer = async {
                let response = client
                    .post(&url)
                    .bearer_auth(&key)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(r#"{"min_ttl": 0}"#)
                    .send()
                    .await?;
                let status = response.status().as_u16();
                let body = response.text().await?;
                Ok::<_, reqwest::Error>((status, body))
            }
            .await;
            let latency = started.elapsed();
            match answer {
                Ok((status, body)) => {
                    let token = serde_json::from_str::<Value>(&body)
                        .ok()
                        .and_then(|v| v["access_token"].as_str().map(str::to_owned));
                    Answer {
                        latency,
                        status,
                        problem: (status != 200 || token.is_none())
                            .then(|| format!("{status}: {body}")),
                        access_token: token,
                    }
                }
                Err(e) => Answer {
                    latency,
                    status: 0,
                    access_token: None,
                    problem: Some(format!("no answer: {e}")),
                },
            }
        });
    }
    let mut b = Burst {
        latencies_ms: Vec::with_capacity(callers.len()),
        non_200: 0,
        tokens: Vec::new(),
        problems: Vec::new(),
    };
    while let Some(joined) = tasks.join_next().await {
        let answer = joined.context("a caller panicked")?;
        b.latencies_ms.push(answer.latency.as_secs_f64() * 1000.0);
        if answer.status != 200 {
            b.non_200 += 1;
        }
        if let Some(token) = answer.access_token
            && !b.tokens.contains(&token)
        {
            b.tokens.push(token);
        }
        if let Some(problem) = answer.problem {
            b.problems.push(problem);
        }
    }
    Ok(b)
}
