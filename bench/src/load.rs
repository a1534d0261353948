//! The client side the benchmarks share: hookup messages, many senders over keep-alive
//! connections, a load bounded in time, and the admin API's view of the tenants.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::{http_client, random_string};

/// A client_credentials hookup message sized like a real one (~520 bytes): a distinct
/// 40-character client_id and a 128-character client_secret (django-oauth-toolkit's sizes),
/// two departments, the token URL given.
#[derive(Clone)]
pub struct Hookup {
    pub provet_id: i64,
    pub client_id: String,
    pub body: String,
}

impl Hookup {
    pub fn new(provet_id: i64, token_url: &str) -> Self {
        let client_id = random_string(40);
        let authorize_url = token_url.replace("/token/", "/authorize/");
        let body = json!({
            "provet_id": provet_id,
            "client_id": client_id,
            "client_secret": random_string(128),
            "algorithm": null,
            "authorization_grant_type": "client_credentials",
            "client_type": "confidential",
            "redirect_uris": "",
            "token_url": token_url,
            "authorize_url": authorize_url,
            "openid_autodiscovery_url": null,
            "departments": [provet_id * 10 + 1, provet_id * 10 + 2],
        })
        .to_string();
        Self {
            provet_id,
            client_id,
            body,
        }
    }

    /// Sends it; answers the status and body.
    pub async fn send(
        &self,
        client: &reqwest::Client,
        url: &str,
    ) -> reqwest::Result<(u16, String)> {
        let response = client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(self.body.clone())
            .send()
            .await?;
        let status = response.status().as_u16();
        Ok((status, response.text().await?))
    }
}

/// Registers every hookup from `senders` concurrent senders (a 503 retried); fails unless
/// all end with 200.
pub async fn register(senders: usize, url: &str, hookups: Vec<Hookup>) -> anyhow::Result<()> {
    let client = http_client(Duration::from_secs(30), senders)?;
    let url: Arc<str> = Arc::from(url);
    let total = hookups.len();
    let ok = for_all(senders, hookups, move |h: Arc<Hookup>| {
        let (client, url) = (client.clone(), Arc::clone(&url));
        async move {
            // Setup, not a measurement: a 503 (the daemon's "retry shortly") is retried, as
            // Provet would, at most 10 times.
            for _ in 0..10 {
                match h.send(&client, &url).await? {
                    (200, _) => return Ok(()),
                    (503, _) => tokio::time::sleep(Duration::from_millis(500)).await,
                    (status, body) => bail!("hookup {} answered {status}: {body}", h.provet_id),
                }
            }
            bail!("hookup {} answered 503 ten times", h.provet_id)
        }
    })
    .await?;
    if ok != total {
        bail!("only {ok} of {total} hookups answered 200");
    }
    Ok(())
}

/// Runs `job` for every item from `senders` concurrent tasks, each taking the next item as
/// it finishes the last; answers how many succeeded, after printing the first few failures.
pub async fn for_all<T, F, Fut>(senders: usize, items: Vec<T>, job: F) -> anyhow::Result<usize>
where
    T: Send + Sync + 'static,
    F: Fn(Arc<T>) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let items: Arc<Vec<Arc<T>>> = Arc::new(items.into_iter().map(Arc::new).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    for _ in 0..senders.max(1) {
        let (items, next, job) = (Arc::clone(&items), Arc::clone(&next), job.clone());
        tasks.spawn(async move {
            let (mut ok, mut problems) = (0, Vec::new());
            while let Some(item) = items.get(next.fetch_add(1, Ordering::Relaxed)) {
                match job(Arc::clone(item)).await {
                    Ok(()) => ok += 1,
                    Err(e) if problems.len() < 3 => problems.push(format!("{e:#}")),
                    Err(_) => {}
                }
            }
            (ok, problems)
        });
    }
    let (mut ok, mut shown) = (0, 0);
    while let Some(joined) = tasks.join_next().await {
        let (n, problems) = joined.context("a sender panicked")?;
        ok += n;
        for p in problems.into_iter().take(5 - shown.min(5)) {
            eprintln!("request failed: {p}");
            shown += 1;
        }
    }
    Ok(ok)
}

/// What a load produced.
pub struct LoadResult {
    pub elapsed: Duration,
    /// Answers by status.
    pub statuses: BTreeMap<u16, u64>,
    /// Requests without an answer (timeout, connection error).
    pub failed: u64,
    /// Latency of every answered request, in microseconds.
    pub latency_us: Histogram<u64>,
    /// The first few problems.
    pub samples: Vec<String>,
    /// The numbers `n` of the requests answered 200.
    pub ok_requests: Vec<usize>,
}

impl LoadResult {
    pub fn ok(&self) -> u64 {
        self.statuses.get(&200).copied().unwrap_or(0)
    }

    pub fn answered(&self) -> u64 {
        self.statuses.values().sum()
    }

    /// Non-200 answers plus requests without an answer.
    pub fn errors(&self) -> u64 {
        self.answered() - self.ok() + self.failed
    }

    pub fn rate(&self) -> f64 {
        (self.answered() + self.failed) as f64 / self.elapsed.as_secs_f64()
    }

    pub fn ms(&self, q: f64) -> f64 {
        self.latency_us.value_at_quantile(q) as f64 / 1000.0
    }

    /// `rate=… req/s ok=… errors=… p50=… p99=… max=…`.
    pub fn line(&self) -> String {
        format!(
            "rate={:.0} req/s requests={} ok={} errors={}{} p50={:.2}ms p99={:.2}ms max={:.2}ms",
            self.rate(),
            self.answered() + self.failed,
            self.ok(),
            self.errors(),
            if self.errors() > 0 {
                format!(" (statuses {:?}, no answer {})", self.statuses, self.failed)
            } else {
                String::new()
            },
            self.ms(0.5),
            self.ms(0.99),
            self.latency_us.max() as f64 / 1000.0,
        )
    }
}

/// `connections` keep-alive connections, each sending the next request as soon as it has the
/// last answer, until `duration` has passed (requests in flight then are waited for) or
/// `max_requests` were sent. `request(client, n)` builds the n-th request.
pub async fn timed_load<F>(
    connections: usize,
    duration: Duration,
    max_requests: usize,
    request: F,
) -> anyhow::Result<LoadResult>
where
    F: Fn(&reqwest::Client, usize) -> reqwest::RequestBuilder + Send + Sync + 'static,
{
    let request = Arc::new(request);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = JoinSet::new();
    for _ in 0..connections {
        let client = http_client(Duration::from_secs(30), 1)?;
        let (request, next) = (Arc::clone(&request), Arc::clone(&next));
        tasks.spawn(async move {
            let mut part = LoadResult::empty()?;
            while Instant::now() < deadline {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= max_requests {
                    break;
                }
                let sent = Instant::now();
                let answer = async {
                    let response = request(&client, n).send().await?;
                    let status = response.status().as_u16();
                    let body = response.bytes().await?;
                    Ok::<_, reqwest::Error>((status, body))
                }
                .await;
                match answer {
                    Ok((status, body)) => {
                        let us = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                        part.latency_us.saturating_record(us.max(1));
                        *part.statuses.entry(status).or_default() += 1;
                        if status == 200 {
                            part.ok_requests.push(n);
                        }
                        if status != 200 && part.samples.len() < 3 {
                            part.samples
                                .push(format!("{status}: {}", String::from_utf8_lossy(&body)));
                        }
                    }
                    Err(e) => {
                        part.failed += 1;
                        if part.samples.len() < 3 {
                            part.samples.push(format!("no answer: {e}"));
                        }
                    }
                }
            }
            anyhow::Ok(part)
        });
    }
    let mut all = LoadResult::empty()?;
    while let Some(joined) = tasks.join_next().await {
        let part = joined.context("a connection task panicked")??;
        all.latency_us.add(&part.latency_us)?;
        for (status, n) in part.statuses {
            *all.statuses.entry(status).or_default() += n;
        }
        all.failed += part.failed;
        all.samples.extend(part.samples);
        all.ok_requests.extend(part.ok_requests);
    }
    all.samples.truncate(5);
    all.elapsed = started.elapsed();
    Ok(all)
}

impl LoadResult {
    fn empty() -> anyhow::Result<Self> {
        Ok(Self {
            elapsed: Duration::ZERO,
            statuses: BTreeMap::new(),
            failed: 0,
            latency_us: Histogram::new_with_bounds(1, 120_000_000, 3)?,
            samples: Vec::new(),
            ok_requests: Vec::new(),
        })
    }
}

/// `POST {base}/v1/tenants/{id}/token` with the API key; `{"force_refresh": true}` or `{}`.
pub fn token_request(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    provet_id: i64,
    force_refresh: bool,
) -> reqwest::RequestBuilder {
    let body = if force_refresh {
        r#"{"force_refresh":true}"#
    } else {
        "{}"
    };
    client
        .post(format!("{base}/v1/tenants/{provet_id}/token"))
        .bearer_auth(key)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
}

/// Every tenant the daemon lists, paging through `GET /admin/tenants?limit=500&after=…`.
pub async fn tenants(
    client: &reqwest::Client,
    base: &str,
    key: &str,
) -> anyhow::Result<Vec<Value>> {
    let mut all = Vec::new();
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
        let mut page: Value = serde_json::from_str(&body).context("the tenant page is not JSON")?;
        let next = page["next_after"].as_i64();
        match page["tenants"].take() {
            Value::Array(tenants) => all.extend(tenants),
            _ => bail!("the tenant page has no `tenants` array: {body}"),
        }
        match next {
            Some(next) if after.is_none_or(|a| next > a) => after = Some(next),
            Some(next) => bail!("next_after did not advance ({next} after {after:?})"),
            None => return Ok(all),
        }
    }
}

/// provet_id -> client_id of every listed tenant.
pub fn client_ids(tenants: &[Value]) -> anyhow::Result<HashMap<i64, String>> {
    tenants
        .iter()
        .map(|t| {
            let id = t["provet_id"]
                .as_i64()
                .ok_or_else(|| anyhow!("a tenant without provet_id: {t}"))?;
            Ok((
                id,
                t["client"]["client_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            ))
        })
        .collect()
}

/// Tenants by `credentials.state`.
pub fn credential_states(tenants: &[Value]) -> BTreeMap<String, usize> {
    let mut states = BTreeMap::new();
    for t in tenants {
        let state = t["credentials"]["state"].as_str().unwrap_or("?").to_owned();
        *states.entry(state).or_default() += 1;
    }
    states
}

/// Polls the admin API until `expected` tenants show credentials `ok`, at most `limit`;
/// answers the states seen last and whether all were ok.
pub async fn wait_credentials_ok(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    expected: usize,
    limit: Duration,
) -> anyhow::Result<(BTreeMap<String, usize>, bool)> {
    let deadline = Instant::now() + limit;
    loop {
        let states = credential_states(&tenants(client, base, key).await?);
        let ok = states.get("ok").copied().unwrap_or(0) >= expected;
        if ok || Instant::now() >= deadline {
            return Ok((states, ok));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Registers tenants 1..=n, token URLs on `stub`, from `senders` senders, then waits (at most
/// 60 s, and says so when they did not all arrive) until the endpoint has seen each hookup's
/// credential check, which also caches each tenant's first token. Answers the hookups.
pub async fn register_checked(
    hookup_url: &str,
    stub: &crate::stub::TokenStub,
    n: usize,
    senders: usize,
) -> anyhow::Result<Vec<Hookup>> {
    let started = Instant::now();
    let before = stub.counts.total();
    let hookups: Vec<Hookup> = (1..=n as i64)
        .map(|id| Hookup::new(id, &stub.token_url(id)))
        .collect();
    register(senders, hookup_url, hookups.clone()).await?;
    let checked = crate::wait_for(
        || stub.counts.total() >= before + n as u64,
        Duration::from_secs(60),
    )
    .await;
    eprintln!(
        "registered {n} tenants in {:.1} s; credential checks at the endpoint: {}{}",
        started.elapsed().as_secs_f64(),
        stub.counts.total() - before,
        if checked.is_ok() {
            ""
        } else {
            " (NOT ALL within 60 s)"
        }
    );
    Ok(hookups)
}
