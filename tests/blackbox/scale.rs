//! Many tenants at once: concurrent token requests and hookup bursts with the default configuration.
//!
//! Both scenarios run against the real provider: registering an application there takes
//! about 15 ms one at a time and about 4 ms with 16 at once (measured), so the 200 and 500
//! applications cost a few seconds, and "the provider saw one request per tenant" is
//! counted by the provider itself rather than by a stand-in.
//!
//! The daemon runs with its built-in pool (16 connections) and worker count: the defects
//! these tests guard against only appear once callers outnumber the pool, so the harness's
//! small test pool must not stand in for the default.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::backend_tests;
use crate::helpers::*;
use crate::provider::*;

/// Concurrent callers (services asking for tokens, or Provet delivering hookups).
const CALLERS: usize = 64;
/// Bound on one request to the daemon: longer than the pool's acquire timeout (5 s) and a
/// token request's (10 s), so a timed-out answer shows up as the daemon's, not ours.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// No new token request starts after this; a fixed daemon answers the whole burst in a
/// few seconds. This is the stall's failure criterion, not a performance bound.
const TOKEN_BURST_DEADLINE: Duration = Duration::from_secs(25);
/// The same for the hookup burst, which writes to the database for every message (SQLite
/// in a debug build on two busy cores needs about 25 s for it).
const HOOKUP_BURST_DEADLINE: Duration = Duration::from_secs(45);
/// How long every tenant's credential check may take after the hookup burst.
const CHECK_DEADLINE: Duration = Duration::from_secs(60);

/// The built-in defaults (config/default.toml) of the settings the harness changes for
/// speed, plus what the provider on 127.0.0.1 needs.
fn default_config() -> DaemonConfig {
    let mut config = DaemonConfig::new();
    config.extra_env.extend(provider_env());
    for (key, value) in [
        ("BROKER_DATABASE__MAX_CONNECTIONS", "16"),
        ("BROKER_SERVER__WORKERS", "0"),
        ("BROKER_SERVER__API_KEY_CACHE_TTL", "10s"),
    ] {
        config.extra_env.push((key.into(), value.into()));
    }
    config
}

/// Runs `job` over `items` with `workers` tasks at once; the results in item order.
async fn in_parallel<T, R, F, Fut>(items: Vec<T>, workers: usize, job: F) -> Vec<R>
where
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(T) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R> + Send,
{
    let total = items.len();
    let queue = Arc::new(Mutex::new(
        items.into_iter().enumerate().collect::<VecDeque<_>>(),
    ));
    let job = Arc::new(job);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let (queue, job) = (queue.clone(), job.clone());
        tasks.spawn(async move {
            let mut done = Vec::new();
            loop {
                let next = queue.lock().expect("queue").pop_front();
                let Some((n, item)) = next else {
                    return done;
                };
                done.push((n, job(item).await));
            }
        });
    }
    let mut results = Vec::with_capacity(total);
    while let Some(done) = tasks.join_next().await {
        results.extend(done.expect("worker"));
    }
    results.sort_by_key(|(n, _)| *n);
    results.into_iter().map(|(_, r)| r).collect()
}

/// `count` client_credentials applications at the provider: their hookup messages.
async fn applications(count: usize) -> Vec<Value> {
    let mut ids = HashSet::new();
    while ids.len() < count {
        ids.insert(unique_tenant());
    }
    in_parallel(ids.into_iter().collect(), 16, |id| async move {
        provider()
            .application(id, "client_credentials", "confidential", None)
            .await
    })
    .await
}

/// One answer of the daemon, or why there was none.
#[derive(Debug)]
struct Reply {
    status: Option<u16>,
    body: Value,
}

impl Reply {
    /// Status and problem code, or the transport error: what a summary groups by.
    fn kind(&self) -> String {
        match self.status {
            Some(status) => format!("{status} {}", self.body["code"].as_str().unwrap_or("")),
            None => format!("no answer: {}", self.body.as_str().unwrap_or("")),
        }
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("client")
}

/// Sends `request` unless `deadline` has passed since `started`.
async fn send_before(
    request: reqwest::RequestBuilder,
    started: Instant,
    deadline: Duration,
) -> Reply {
    if started.elapsed() > deadline {
        return Reply {
            status: None,
            body: json!("not sent: the burst deadline had passed"),
        };
    }
    send(request).await
}

async fn send(request: reqwest::RequestBuilder) -> Reply {
    match request.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            let text = response.text().await.unwrap_or_default();
            Reply {
                status: Some(status),
                body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
            }
        }
        Err(e) => Reply {
            status: None,
            body: Value::String(if e.is_timeout() {
                format!("timed out after {REQUEST_TIMEOUT:?}")
            } else {
                e.without_url().to_string()
            }),
        },
    }
}

/// "N x 200, M x 500 internal, ..." and one body of a reply that was not a 200.
fn summary(replies: &[Reply]) -> String {
    let mut kinds = BTreeMap::<String, usize>::new();
    for reply in replies {
        *kinds.entry(reply.kind()).or_default() += 1;
    }
    let counts: Vec<String> = kinds.iter().map(|(k, n)| format!("{n} x {k}")).collect();
    let sample = replies
        .iter()
        .find(|r| r.status != Some(200))
        .map(|r| r.body.to_string())
        .unwrap_or_default();
    format!("{}; e.g. {sample}", counts.join(", "))
}

/// Token-endpoint requests the provider received, per tenant of `ids`.
async fn token_requests_per_tenant(ids: &[i64]) -> HashMap<i64, Vec<Value>> {
    let mut seen: HashMap<i64, Vec<Value>> = ids.iter().map(|id| (*id, Vec::new())).collect();
    for request in provider().all_token_requests().await {
        if let Some(list) = request["provet_id"]
            .as_i64()
            .and_then(|id| seen.get_mut(&id))
        {
            list.push(request);
        }
    }
    seen
}

/// Tenants of `ids` whose provider saw other than one successful token request, with what it saw.
fn not_exactly_one_success(seen: &HashMap<i64, Vec<Value>>) -> Vec<(i64, Vec<Value>)> {
    let mut wrong: Vec<(i64, Vec<Value>)> = seen
        .iter()
        .filter(|(_, requests)| requests.len() != 1 || requests[0]["status"] != 200)
        .map(|(id, requests)| (*id, requests.clone()))
        .collect();
    wrong.sort_by_key(|(id, _)| *id);
    wrong
}

/// The log lines that say a request gave up waiting for a pooled connection.
fn pool_timeouts(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|line| {
            let line = line.to_lowercase();
            line.contains("pool timed out") || line.contains("failed to acquire connection")
        })
        .collect()
}

/// What the log says about the pool and the credential checks, for failure messages.
fn log_diagnosis(daemon: &Daemon) -> String {
    let log = daemon.log_text();
    let timeouts = pool_timeouts(&log);
    let failed_checks = log
        .lines()
        .filter(|l| l.contains("credential check failed"))
        .count();
    format!(
        "log: {} pool timeouts, {failed_checks} failed credential checks; first timeout: {}",
        timeouts.len(),
        timeouts
            .first()
            .map_or("none".to_owned(), |line| line.chars().take(400).collect())
    )
}

fn assert_no_pool_timeouts(daemon: &Daemon) {
    let log = daemon.log_text();
    let timeouts = pool_timeouts(&log);
    assert!(
        timeouts.is_empty(),
        "{} log lines report a pool timeout, the first: {}",
        timeouts.len(),
        timeouts[0]
    );
}

/// 200 fresh client_credentials tenants, 64 callers at once, each tenant asked for by two
/// callers at the same moment: every caller gets a token within seconds, and each tenant
/// costs the provider exactly one request. Every request is a cache miss (the credential
/// check on hookup, which would cache a token, is off), so each one needs a real upstream
/// request while holding the tenant's turn; a broker that keeps a pooled connection across
/// that request and then needs a second one deadlocks its pool once callers outnumber it.
async fn concurrent_token_requests_for_many_tenants_each_reach_the_provider_once(backend: Backend) {
    const TENANTS: usize = 200;
    let db = TestDb::new(backend).await;
    let mut config = default_config();
    config
        .extra_env
        .push(("BROKER_TOKENS__VERIFY_ON_HOOKUP".into(), "false".into()));
    let daemon = Daemon::start(&db, config).await;

    let messages = applications(TENANTS).await;
    let ids: Vec<i64> = messages
        .iter()
        .map(|m| m["provet_id"].as_i64().expect("provet_id"))
        .collect();
    let hookup_url = Arc::new(daemon.hookup_url.clone());
    // Fewer senders than pool connections: the setup must not be what fails.
    let registered = in_parallel(messages, 8, move |message| {
        let url = hookup_url.clone();
        async move {
            let request = client().post(url.as_str()).json(&message);
            send(request).await
        }
    })
    .await;
    assert!(
        registered.iter().all(|r| r.status == Some(200)),
        "hookups: {}",
        summary(&registered)
    );
    let before = token_requests_per_tenant(&ids).await;
    assert!(
        before.values().all(Vec::is_empty),
        "no token may be requested before the burst: every request must be a cache miss"
    );

    let key = Arc::new(daemon.api_key("token", &[]));
    let base = Arc::new(daemon.base.clone());
    // Each tenant twice in a row: with 64 workers taking turns, both calls are in flight
    // together, so "one upstream request" also covers callers that meet at one tenant.
    let calls: Vec<i64> = ids.iter().flat_map(|id| [*id, *id]).collect();
    let started = Instant::now();
    let replies = in_parallel(calls.clone(), CALLERS, move |id| {
        let (key, base) = (key.clone(), base.clone());
        async move {
            let request = client()
                .post(format!("{base}/v1/tenants/{id}/token"))
                .bearer_auth(key.as_str());
            send_before(request, started, TOKEN_BURST_DEADLINE).await
        }
    })
    .await;
    let elapsed = started.elapsed();
    eprintln!(
        "{backend:?}: {} token requests for {TENANTS} tenants in {elapsed:?}: {}",
        calls.len(),
        summary(&replies)
    );

    assert!(
        replies.iter().all(|r| r.status == Some(200)),
        "every caller gets a token ({elapsed:?}): {}; {}",
        summary(&replies),
        log_diagnosis(&daemon)
    );
    assert!(
        elapsed < TOKEN_BURST_DEADLINE,
        "the burst took {elapsed:?}: the broker stalled"
    );
    let mut tokens = HashMap::<i64, HashSet<String>>::new();
    for (id, reply) in calls.iter().zip(&replies) {
        assert_eq!(reply.body["provet_id"], *id, "{}", reply.body);
        assert_eq!(reply.body["token_type"], "Bearer", "{}", reply.body);
        let token = reply.body["access_token"].as_str().expect("access_token");
        tokens.entry(*id).or_default().insert(token.to_owned());
    }
    assert!(
        tokens.values().all(|t| t.len() == 1),
        "both callers of a tenant get the same token"
    );
    let distinct: HashSet<&String> = tokens.values().flatten().collect();
    assert_eq!(
        distinct.len(),
        TENANTS,
        "every tenant has a token of its own"
    );
    let wrong = not_exactly_one_success(&token_requests_per_tenant(&ids).await);
    assert!(
        wrong.is_empty(),
        "{} tenants did not cost the provider exactly one successful request, e.g. {:?}",
        wrong.len(),
        wrong.first()
    );
    assert_no_pool_timeouts(&daemon);
}

/// 500 hookups of distinct client_credentials tenants from 64 senders, the credential
/// check on (the default): every delivery is acknowledged, every tenant's credentials end
/// `ok` after one token request each, and no check gives up waiting for a connection.
async fn a_hookup_burst_checks_every_tenants_credentials_once(backend: Backend) {
    hookup_burst(backend, 500, &[]).await;
}

/// A burst larger than the check queue: the checks it could not queue are picked up as soon
/// as the queue drains, not at the next sweep (an hour away here).
async fn checks_left_out_of_a_full_queue_run_once_it_drains(backend: Backend) {
    hookup_burst(
        backend,
        200,
        &[
            ("BROKER_TOKENS__VERIFY_QUEUE", "20"),
            ("BROKER_TOKENS__VERIFY_SWEEP_INTERVAL", "1h"),
        ],
    )
    .await;
}

/// `tenants` hookups from 64 senders, then every tenant's credentials checked once.
async fn hookup_burst(backend: Backend, tenants: usize, env: &[(&str, &str)]) {
    let db = TestDb::new(backend).await;
    let mut config = default_config();
    for (key, value) in env {
        config.extra_env.push(((*key).into(), (*value).into()));
    }
    let daemon = Daemon::start(&db, config).await;
    let admin = Arc::new(daemon.api_key("admin", &[]));

    let messages = applications(tenants).await;
    let ids: Vec<i64> = messages
        .iter()
        .map(|m| m["provet_id"].as_i64().expect("provet_id"))
        .collect();
    let hookup_url = Arc::new(daemon.hookup_url.clone());
    let started = Instant::now();
    let replies = in_parallel(messages, CALLERS, move |message| {
        let url = hookup_url.clone();
        async move {
            let request = client().post(url.as_str()).json(&message);
            send_before(request, started, HOOKUP_BURST_DEADLINE).await
        }
    })
    .await;
    let elapsed = started.elapsed();
    eprintln!(
        "{backend:?}: {tenants} hookups in {elapsed:?}: {}",
        summary(&replies)
    );
    assert!(
        replies.iter().all(|r| r.status == Some(200)),
        "every hookup is acknowledged ({elapsed:?}): {}; {}",
        summary(&replies),
        log_diagnosis(&daemon)
    );
    for (id, reply) in ids.iter().zip(&replies) {
        assert_eq!(reply.body["provet_id"], *id, "{}", reply.body);
        assert_eq!(reply.body["status"], "registered", "{}", reply.body);
    }

    // Poll the tenants whose check has not yet ended `ok`, until none is left or time is up.
    let burst_done = Instant::now();
    let base = Arc::new(daemon.base.clone());
    let mut pending: Vec<i64> = ids.clone();
    let mut states = Vec::new();
    while !pending.is_empty() && burst_done.elapsed() < CHECK_DEADLINE {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (base, admin) = (base.clone(), admin.clone());
        let views = in_parallel(pending.clone(), 8, move |id| {
            let (base, admin) = (base.clone(), admin.clone());
            async move {
                let request = client()
                    .get(format!("{base}/admin/tenants/{id}"))
                    .bearer_auth(admin.as_str());
                (id, send(request).await)
            }
        })
        .await;
        states = views
            .into_iter()
            .filter(|(_, view)| view.body["credentials"]["state"] != "ok")
            .collect();
        pending = states.iter().map(|(id, _)| *id).collect();
    }
    let checked = burst_done.elapsed();
    eprintln!(
        "{backend:?}: {} of {tenants} credentials `ok` {checked:?} after the burst",
        tenants - pending.len()
    );
    if let Some((id, view)) = states.first() {
        let mut by_state = BTreeMap::<String, usize>::new();
        for (_, view) in &states {
            *by_state
                .entry(view.body["credentials"]["state"].to_string())
                .or_default() += 1;
        }
        let log = daemon.log_text();
        let failure = log
            .lines()
            .find(|l| l.contains("credential check") && l.contains(&id.to_string()))
            .unwrap_or("(nothing in the log)");
        panic!(
            "{} of {tenants} tenants' credentials are not `ok` {checked:?} after the burst ({by_state:?}); \
             tenant {id}: {} ; its log: {failure}; {}",
            pending.len(),
            view.body["credentials"],
            log_diagnosis(&daemon)
        );
    }
    let wrong = not_exactly_one_success(&token_requests_per_tenant(&ids).await);
    assert!(
        wrong.is_empty(),
        "{} tenants did not cost the provider exactly one successful request, e.g. {:?}",
        wrong.len(),
        wrong.first()
    );
    assert_no_pool_timeouts(&daemon);
}

backend_tests!(
    concurrent_token_requests_for_many_tenants_each_reach_the_provider_once,
    a_hookup_burst_checks_every_tenants_credentials_once,
    checks_left_out_of_a_full_queue_run_once_it_drains,
);
