//! Security review fixes in the token broker and metrics: single flight per grant, bounded subjects and scopes, bounded labels.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::backend_tests;
use crate::helpers::*;
use crate::tokens::token;

/// The client_credentials tenant's token endpoint.
const CC_TOKEN: &str = "/7/oauth2/token/";
const CC_ID: i64 = 7;
/// The authorization-code tenant's token endpoint.
const AC_TOKEN: &str = "/8/oauth2/token/";
const AC_ID: i64 = 8;

// ---- set-up ----

/// A daemon that may talk to a mock provider on 127.0.0.1; `extra` adds settings.
fn mock_config(extra: &[(&str, &str)]) -> DaemonConfig {
    mock_provider_config(&[
        ("BROKER_TOKENS__TIMEOUT", "5s"),
        // `extra` lets a grant have a scope that `restapi` is a strict subset of.
        (
            "BROKER_TOKENS__ALLOWED_SCOPES",
            r#"["restapi","openid","extra"]"#,
        ),
    ])
    .with_env(extra)
}

fn cc_hookup(base: &str, provet_id: i64, token_path: &str) -> Value {
    let client_id = format!("cc-{provet_id}");
    mock_client_credentials(base, provet_id, &client_id, "cc-secret-value", token_path)
}

fn ac_hookup(base: &str) -> Value {
    json!({
        "provet_id": AC_ID, "client_id": "ac-client", "client_secret": "ac-secret-value",
        "algorithm": null, "authorization_grant_type": "authorization-code",
        "client_type": "confidential", "redirect_uris": "http://broker.test/oauth/callback",
        "token_url": format!("{base}{AC_TOKEN}"),
        "authorize_url": format!("{base}/8/oauth2/authorize/"),
        "openid_autodiscovery_url": null,
    })
}

fn issued(access: &str, scope: Option<&str>) -> ResponseTemplate {
    let mut body = json!({"access_token": access, "token_type": "Bearer", "expires_in": 3600});
    if let Some(scope) = scope {
        body["scope"] = json!(scope);
    }
    ResponseTemplate::new(200).set_body_json(body)
}

async fn requests_to(server: &MockServer, token_path: &str) -> usize {
    server
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|r| r.url.path() == token_path)
        .count()
}

/// A mock provider that detects refresh-token reuse, the authorization-code tenant hooked up
/// on `d` against it, and a clinic user connected: the provider (kept running by the
/// server) and the grant's subject.
async fn reuse_detecting_grant(d: &Daemon, admin: &str) -> (MockServer, ReuseDetecting, String) {
    let server = MockServer::start().await;
    let provider = ReuseDetecting::new(Duration::from_millis(300));
    Mock::given(method("POST"))
        .and(path(AC_TOKEN))
        .respond_with(provider.clone())
        .mount(&server)
        .await;
    assert_eq!(d.hookup(&ac_hookup(&server.uri())).await.0, 200);
    let subject = connect_grant(d, admin).await;
    (server, provider, subject)
}

/// Connects a clinic user to the authorization-code tenant (scope `restapi extra`) through
/// the mock provider's code exchange; answers the grant's subject.
async fn connect_grant(d: &Daemon, admin: &str) -> String {
    let (status, started) = d
        .start_authorization(admin, AC_ID, Some(json!({"scope": "restapi extra"})))
        .await;
    assert!(status == 200 || status == 201, "{status} {started}");
    let state = query_param(&started["authorize_url"], "state");
    let (status, page, _) = crate::connect::deliver(
        d,
        &format!("http://broker.test/oauth/callback?code=the-code&state={state}"),
    )
    .await;
    assert_eq!(status, 200, "{page}");
    let (status, tenant) = d.get(&format!("/admin/tenants/{AC_ID}"), Some(admin)).await;
    assert_eq!(status, 200, "{tenant}");
    assert_eq!(tenant["grants"][0]["state"], "active", "{tenant}");
    tenant["grants"][0]["subject"]
        .as_str()
        .expect("a grant subject")
        .to_owned()
}

// ---- the metrics text ----

async fn metrics(d: &Daemon) -> String {
    let response = d.http.get(d.url("/metrics")).send().await.expect("metrics");
    assert_eq!(response.status(), 200);
    response.text().await.expect("metrics text")
}

fn series(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

/// A sample's name, labels (unescaped) and value.
type Sample = (String, Vec<(String, String)>, f64);

/// One sample line of the text format: `name{label="value",...} value` (or `name value`).
/// Answers the name, the labels (unescaped) and the value.
fn parse_sample(line: &str) -> Result<Sample, String> {
    let mut chars = line.char_indices().peekable();
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(format!("bad metric name in {line:?}"));
    }
    while chars.peek().is_some_and(|(i, _)| *i < name_end) {
        chars.next();
    }
    let mut labels = Vec::new();
    if chars.peek().map(|(_, c)| *c) == Some('{') {
        chars.next();
        loop {
            match chars.peek().map(|(_, c)| *c) {
                Some('}') => {
                    chars.next();
                    break;
                }
                Some(c) if c.is_ascii_alphabetic() || c == '_' => {}
                other => return Err(format!("expected a label name, got {other:?} in {line:?}")),
            }
            let mut label = String::new();
            while let Some((_, c)) = chars.peek().copied() {
                if c.is_ascii_alphanumeric() || c == '_' {
                    label.push(c);
                    chars.next();
                } else {
                    break;
                }
            }
            if chars.next().map(|(_, c)| c) != Some('=')
                || chars.next().map(|(_, c)| c) != Some('"')
            {
                return Err(format!("expected =\" after {label} in {line:?}"));
            }
            let mut value = String::new();
            loop {
                match chars.next().map(|(_, c)| c) {
                    Some('"') => break,
                    Some('\\') => match chars.next().map(|(_, c)| c) {
                        Some('\\') => value.push('\\'),
                        Some('"') => value.push('"'),
                        Some('n') => value.push('\n'),
                        other => return Err(format!("bad escape {other:?} in {line:?}")),
                    },
                    Some('\n') | None => return Err(format!("unterminated label in {line:?}")),
                    Some(c) => value.push(c),
                }
            }
            labels.push((label, value));
            match chars.next().map(|(_, c)| c) {
                Some(',') => {}
                Some('}') => break,
                other => return Err(format!("expected , or }} got {other:?} in {line:?}")),
            }
        }
    }
    if chars.next().map(|(_, c)| c) != Some(' ') {
        return Err(format!("expected a space before the value in {line:?}"));
    }
    let rest: String = chars.map(|(_, c)| c).collect();
    let value = match rest.as_str() {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v
            .parse::<f64>()
            .map_err(|e| format!("bad value {v:?} in {line:?}: {e}"))?,
    };
    Ok((name.to_owned(), labels, value))
}

/// Every line is a comment or a well-formed sample, and nothing is labelled by tenant.
fn assert_well_formed(text: &str) {
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (_, labels, _) = parse_sample(line).unwrap_or_else(|e| panic!("{e}"));
        for (label, value) in labels {
            assert!(
                label != "provet_id" && label != "tenant",
                "a tenant label in /metrics: {line}"
            );
            // Routes are patterns (`/v1/tenants/{provet_id}`), never concrete paths.
            if label == "route" {
                assert!(
                    value == "unmatched" || value.starts_with('/'),
                    "route {value:?}"
                );
                assert!(
                    !value.split('/').any(|s| s.parse::<i64>().is_ok()),
                    "a concrete path as a route: {line}"
                );
            }
        }
    }
}

fn gauge(text: &str, name: &str) -> f64 {
    series(text)
        .iter()
        .filter_map(|l| parse_sample(l).ok())
        .find(|(n, labels, _)| n == name && labels.is_empty())
        .map(|(_, _, v)| v)
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
}

#[test]
fn the_sample_checker_refuses_broken_lines() {
    assert!(parse_sample(r#"a_total{k="v \"q\" \\",b="x"} 1"#).is_ok());
    assert_eq!(
        parse_sample(r#"a{k="v \"q\" \\"} 2.5"#).expect("ok").1[0].1,
        r#"v "q" \"#
    );
    assert!(parse_sample("a 3").is_ok());
    assert!(parse_sample(r#"a{k="v"q"} 1"#).is_err());
    assert!(parse_sample(r#"a{k="v\q"} 1"#).is_err());
    assert!(parse_sample(r#"a{k="v"} x"#).is_err());
    assert!(parse_sample(r#"a{k="v} 1"#).is_err());
}

// ---- item 2: labels bounded, key names escaped ----

/// Token characters (RFC 9110) the server's request parser takes in a method: it answers
/// `#$%&'` itself with 400 before any route or metric sees the request.
const TCHAR: &[u8] = b"!*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

fn random_of(set: &[u8], len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| set[rng.random_range(0..set.len())] as char)
        .collect()
}

/// A made-up method: a token (RFC 9110) that is no standard method; some are long.
fn random_method() -> String {
    let mut rng = rand::rng();
    let len = match rng.random_range(0..10) {
        0..=5 => rng.random_range(1..20),
        6..=7 => rng.random_range(100..1_000),
        _ => rng.random_range(1_000..30_000),
    };
    loop {
        let m = random_of(TCHAR, len);
        if !["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"].contains(&m.as_str()) {
            return m;
        }
    }
}

/// A made-up path of one of a few shapes: unmatched, or under a route pattern.
fn random_path(shape: usize) -> String {
    let mut rng = rand::rng();
    let seg = |n: std::ops::Range<usize>| random_of(ALNUM, rand::rng().random_range(n));
    let query = if rng.random_bool(0.5) {
        format!("?{}={}", seg(1..10), seg(1..200))
    } else {
        String::new()
    };
    match shape {
        0 => format!("/x{}/{}{query}", seg(1..40), seg(1..400)),
        1 => format!("/v1/tenants/{}{query}", seg(1..40)),
        2 => format!("/hookup/{}{query}", seg(1..60)),
        _ => format!("/admin/tenants/{}{query}", seg(1..40)),
    }
}

const SHAPES: usize = 4;

/// Sends one request over a raw connection; answers the status line (empty when the
/// connection closed without one).
async fn raw_request(address: &str, method: &str, target: &str) -> String {
    let mut stream = TcpStream::connect(address).await.expect("connect");
    let request =
        format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    let _ = stream.write_all(request.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// 300 unauthenticated requests with made-up methods (up to 30,000 characters) and paths
/// add no series to /metrics: methods are `other`, paths are route patterns or `unmatched`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_methods_and_paths_add_no_metric_series() {
    let db = TestDb::new(Backend::Sqlite).await;
    let d = Daemon::start(&db, DaemonConfig::new()).await;
    let address = d.base.trim_start_matches("http://").to_owned();
    // Warm-up: one made-up request of each path shape; /metrics twice (its own series
    // appears after the first fetch).
    for shape in 0..SHAPES {
        let status = raw_request(&address, &random_of(TCHAR, 8), &random_path(shape)).await;
        assert!(status.starts_with("HTTP/1.1 40"), "{status}");
    }
    metrics(&d).await;
    let before = metrics(&d).await;
    assert_well_formed(&before);

    let mut methods = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    let mut statuses = std::collections::BTreeMap::<String, usize>::new();
    for i in 0..300 {
        let method = random_method();
        methods.push(method.clone());
        let (address, target) = (address.clone(), random_path(i % SHAPES));
        tasks.spawn(async move {
            let status = raw_request(&address, &method, &target).await;
            (method.len(), status)
        });
        if tasks.len() >= 8 {
            let (len, status) = tasks.join_next().await.expect("task").expect("join");
            let code = status.split(' ').nth(1).unwrap_or("none").to_owned();
            *statuses
                .entry(format!(
                    "{code} ({})",
                    if len > 1000 { "long" } else { "short" }
                ))
                .or_default() += 1;
        }
    }
    while let Some(done) = tasks.join_next().await {
        let (len, status) = done.expect("join");
        let code = status.split(' ').nth(1).unwrap_or("none").to_owned();
        *statuses
            .entry(format!(
                "{code} ({})",
                if len > 1000 { "long" } else { "short" }
            ))
            .or_default() += 1;
    }
    // Every request reached the routes (and so the metrics middleware), long methods too.
    for (status, n) in &statuses {
        assert!(
            status.starts_with("404") || status.starts_with("405"),
            "{n} requests answered {status}: {statuses:?}"
        );
    }
    assert!(
        statuses.keys().any(|s| s.ends_with("(long)")),
        "{statuses:?}"
    );

    let after = metrics(&d).await;
    assert_well_formed(&after);
    let (b, a) = (series(&before), series(&after));
    let names = |lines: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = lines
            .iter()
            .map(|l| l.rsplit_once(' ').map_or(*l, |(k, _)| k).to_owned())
            .collect();
        v.sort();
        v
    };
    let (b, a) = (names(&b), names(&a));
    let added: Vec<_> = a.iter().filter(|s| !b.contains(s)).collect();
    let gone: Vec<_> = b.iter().filter(|s| !a.contains(s)).collect();
    assert!(
        added.is_empty() && gone.is_empty(),
        "series changed after 300 made-up requests ({statuses:?}): added {added:?}, gone {gone:?}"
    );
    assert!(after.len() < 64 * 1024, "/metrics is {} bytes", after.len());
    for m in &methods {
        let probe: String = m.chars().take(24).collect();
        if probe.len() >= 6 {
            assert!(
                !after.contains(&format!("\"{probe}")),
                "method {probe}... is a label"
            );
        }
    }
    assert!(after.contains(r#"method="other""#), "{after}");
    assert!(after.contains(r#"route="unmatched""#), "{after}");
}

/// An API key named with `"` and `\` is escaped in the `api_key` label; every line of
/// /metrics still parses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_names_are_escaped_in_metrics() {
    let db = TestDb::new(Backend::Sqlite).await;
    let d = Daemon::start(&db, mock_config(&[])).await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(CC_TOKEN))
        .respond_with(issued("cc-at", Some("restapi")))
        .mount(&server)
        .await;
    assert_eq!(
        d.hookup(&cc_hookup(&server.uri(), CC_ID, CC_TOKEN)).await.0,
        200
    );
    let name = r#"svc "quoted" back\slash"#;
    let (ok, stdout, stderr) = d.cli(&["api-key", "create", "--name", name, "--role", "token"]);
    assert!(ok, "{stderr}");
    let key = stdout.lines().last().expect("key line").trim().to_owned();
    let (status, answer) = token(&d, &key, CC_ID, None).await;
    assert_eq!(status, 200, "{answer}");
    let (status, _) = token(&d, &key, CC_ID, None).await;
    assert_eq!(status, 200);

    let text = metrics(&d).await;
    assert_well_formed(&text);
    let escaped = r#"api_key="svc \"quoted\" back\\slash""#;
    let served: Vec<_> = series(&text)
        .into_iter()
        .filter(|l| l.starts_with("broker_tokens_served"))
        .collect();
    assert!(
        served
            .iter()
            .any(|l| l.contains(escaped) && l.contains(r#"cache="miss""#)),
        "{served:?}"
    );
    assert!(
        served
            .iter()
            .any(|l| l.contains(escaped) && l.contains(r#"cache="hit""#)),
        "{served:?}"
    );
    // The parsed label is the name exactly.
    let parsed = parse_sample(served[0]).expect("parses");
    assert!(
        parsed.1.iter().any(|(k, v)| k == "api_key" && v == name),
        "{parsed:?}"
    );
}

// ---- item 6: made-up subjects and scopes leave nothing behind ----

fn content_type(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

async fn made_up_subjects_and_scopes_leave_nothing_behind(backend: Backend) {
    let db = TestDb::new(backend).await;
    let d = Daemon::start(&db, mock_config(&[])).await;
    let admin = d.api_key("admin", &[]);
    let key = d.api_key("token", &[]);
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(CC_TOKEN))
        .respond_with(issued("cc-at", Some("restapi")))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(AC_TOKEN))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": "ac-at", "token_type": "Bearer", "expires_in": 3600,
            "refresh_token": "ac-rt", "scope": "restapi extra"
        })))
        .mount(&server)
        .await;
    assert_eq!(
        d.hookup(&cc_hookup(&server.uri(), CC_ID, CC_TOKEN)).await.0,
        200
    );
    assert_eq!(d.hookup(&ac_hookup(&server.uri())).await.0, 200);
    let subject = connect_grant(&d, &admin).await;
    // One real token each.
    let (status, answer) = token(&d, &key, CC_ID, None).await;
    assert_eq!(
        (status, answer["access_token"].clone()),
        (200, json!("cc-at"))
    );
    let (status, answer) = token(&d, &key, AC_ID, Some(json!({"subject": subject}))).await;
    assert_eq!(
        (status, answer["access_token"].clone()),
        (200, json!("ac-at")),
        "{answer}"
    );

    let rows = db.count("SELECT COUNT(*) FROM tokens").await;
    let cached = gauge(&metrics(&d).await, "broker_cached_tokens");
    let cc_seen = requests_to(&server, CC_TOKEN).await;
    let ac_seen = requests_to(&server, AC_TOKEN).await;
    assert_eq!((cc_seen, ac_seen), (1, 1));

    // A subject for a client_credentials tenant is refused.
    let (status, problem) = token(&d, &key, CC_ID, Some(json!({"subject": "someone"}))).await;
    assert_eq!(
        (status, problem["code"].clone()),
        (400, json!("invalid_request")),
        "{problem}"
    );
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("subject"),
        "{problem}"
    );
    // A scope not in tokens.allowed_scopes is refused, naming it.
    let (status, problem) = token(&d, &key, CC_ID, Some(json!({"scope": "made-up"}))).await;
    assert_eq!(
        (status, problem["code"].clone()),
        (400, json!("invalid_request")),
        "{problem}"
    );
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("made-up"),
        "{problem}"
    );
    // Too long, not visible ASCII.
    for (id, bad) in [
        (AC_ID, "s".repeat(256)),
        (AC_ID, "with space".to_owned()),
        (AC_ID, "é".to_owned()),
        (AC_ID, String::new()),
    ] {
        let (status, problem) = token(&d, &key, id, Some(json!({"subject": bad}))).await;
        assert_eq!(
            (status, problem["code"].clone()),
            (400, json!("invalid_request")),
            "{problem}"
        );
    }
    // A 250 KB subject: refused by the body limit, as problem+json.
    for id in [CC_ID, AC_ID] {
        let response = d
            .http
            .post(d.url(&format!("/v1/tenants/{id}/token")))
            .bearer_auth(&key)
            .json(&json!({"subject": "s".repeat(250_000)}))
            .send()
            .await
            .expect("token");
        let status = response.status().as_u16();
        let ct = content_type(&response);
        let problem: Value = response.json().await.expect("json");
        assert_eq!(status, 413, "{problem}");
        assert!(ct.starts_with("application/problem+json"), "{ct}");
        assert_eq!(problem["code"], "payload_too_large", "{problem}");
    }

    // 200 made-up spellings: distinct subjects (unknown ones for the grant tenant) and
    // scopes.
    let mut answers = std::collections::BTreeMap::<String, usize>::new();
    for i in 0..200 {
        let made_up = format!("made-up-{i}-{}", random_of(ALNUM, 40));
        let (id, body) = match i % 4 {
            0 => (CC_ID, json!({"subject": made_up})),
            1 => (CC_ID, json!({"scope": format!("restapi {made_up}")})),
            2 => (AC_ID, json!({"subject": made_up})),
            _ => (AC_ID, json!({"scope": made_up, "subject": subject})),
        };
        let (status, problem) = token(&d, &key, id, Some(body)).await;
        let code = problem["code"].as_str().unwrap_or("none").to_owned();
        match i % 4 {
            2 => assert_eq!(
                (status, code.as_str()),
                (409, "reauthorization_required"),
                "{problem}"
            ),
            _ => assert_eq!(
                (status, code.as_str()),
                (400, "invalid_request"),
                "{problem}"
            ),
        }
        *answers.entry(format!("{status} {code}")).or_default() += 1;
    }
    assert_eq!(
        db.count("SELECT COUNT(*) FROM tokens").await,
        rows,
        "{answers:?}"
    );
    assert_eq!(
        gauge(&metrics(&d).await, "broker_cached_tokens"),
        cached,
        "{answers:?}"
    );
    assert_eq!(requests_to(&server, CC_TOKEN).await, cc_seen);
    assert_eq!(requests_to(&server, AC_TOKEN).await, ac_seen);
    // The real tokens are still served from memory.
    let (status, answer) = token(&d, &key, CC_ID, None).await;
    assert_eq!(
        (status, answer["access_token"].clone()),
        (200, json!("cc-at"))
    );
    let (status, answer) = token(&d, &key, AC_ID, None).await;
    assert_eq!(
        (status, answer["access_token"].clone()),
        (200, json!("ac-at"))
    );
    assert_eq!(requests_to(&server, CC_TOKEN).await, cc_seen);
    assert_eq!(requests_to(&server, AC_TOKEN).await, ac_seen);
}

// ---- item 13: the answer's scope is what the provider granted ----

async fn the_answer_scope_is_what_the_provider_granted(backend: Backend) {
    let db = TestDb::new(backend).await;
    let config = mock_config(&[]);
    let d = Daemon::start(&db, config.clone()).await;
    let key = d.api_key("token", &[]);
    let server = MockServer::start().await;
    let silent = "/9/oauth2/token/";
    Mock::given(method("POST"))
        .and(path(CC_TOKEN))
        .respond_with(issued("wide", Some("restapi extra")))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(silent))
        .respond_with(issued("as-asked", None))
        .mount(&server)
        .await;
    assert_eq!(
        d.hookup(&cc_hookup(&server.uri(), CC_ID, CC_TOKEN)).await.0,
        200
    );
    assert_eq!(d.hookup(&cc_hookup(&server.uri(), 9, silent)).await.0, 200);
    for round in ["provider", "memory"] {
        let (status, answer) = token(&d, &key, CC_ID, Some(json!({"scope": "restapi"}))).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["access_token"], "wide");
        assert_eq!(answer["scope"], "restapi extra", "{round}: {answer}");
        let (status, answer) = token(&d, &key, 9, Some(json!({"scope": "openid restapi"}))).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["access_token"], "as-asked");
        assert_eq!(answer["scope"], "openid restapi", "{round}: {answer}");
    }
    assert_eq!(requests_to(&server, CC_TOKEN).await, 1);
    assert_eq!(requests_to(&server, silent).await, 1);
    // From the database, after a restart.
    let _ = d.stop();
    let d = Daemon::start(&db, config).await;
    let (status, answer) = token(&d, &key, CC_ID, Some(json!({"scope": "restapi"}))).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        (answer["access_token"].clone(), answer["scope"].clone()),
        (json!("wide"), json!("restapi extra"))
    );
    assert_eq!(requests_to(&server, CC_TOKEN).await, 1);
}

// ---- item 4: one refresh per grant, whatever the spelling ----

/// A provider whose refresh tokens rotate on every use and which revokes the whole family
/// when an old one is used again (as OAuth 2.0 Security BCP reuse detection does).
#[derive(Default)]
struct Family {
    /// The current generation: refresh token `rt-{n}`, access token `at-{n}`.
    generation: u32,
    revoked: bool,
    refreshes: u32,
    reuses: Vec<String>,
}

#[derive(Clone)]
struct ReuseDetecting {
    family: Arc<Mutex<Family>>,
    delay: Duration,
}

impl ReuseDetecting {
    fn new(delay: Duration) -> Self {
        Self {
            family: Arc::default(),
            delay,
        }
    }

    fn snapshot(&self) -> (u32, bool, u32, Vec<String>) {
        let f = self.family.lock().expect("family");
        (f.generation, f.revoked, f.refreshes, f.reuses.clone())
    }
}

fn rotated(n: u32) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "access_token": format!("at-{n}"), "token_type": "Bearer", "expires_in": 3600,
        "refresh_token": format!("rt-{n}"), "scope": "restapi extra"
    }))
}

fn invalid_grant() -> ResponseTemplate {
    ResponseTemplate::new(400).set_body_json(json!({"error": "invalid_grant"}))
}

impl Respond for ReuseDetecting {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let form: std::collections::HashMap<String, String> =
            url::form_urlencoded::parse(&request.body)
                .into_owned()
                .collect();
        let mut f = self.family.lock().expect("family");
        match form.get("grant_type").map(String::as_str) {
            Some("authorization_code") => {
                *f = Family::default();
                rotated(0)
            }
            Some("refresh_token") => {
                f.refreshes += 1;
                if f.revoked {
                    return invalid_grant();
                }
                let used = form.get("refresh_token").cloned().unwrap_or_default();
                if used == format!("rt-{}", f.generation) {
                    f.generation += 1;
                    rotated(f.generation).set_delay(self.delay)
                } else {
                    f.revoked = true;
                    f.reuses.push(used);
                    invalid_grant()
                }
            }
            _ => {
                ResponseTemplate::new(400).set_body_json(json!({"error": "unsupported_grant_type"}))
            }
        }
    }
}

/// The spellings of one grant's request: default, by subject, by scope subsets.
fn spellings(subject: &str) -> Vec<Value> {
    vec![
        json!({}),
        json!({"subject": subject}),
        json!({"scope": "restapi"}),
        json!({"scope": "extra"}),
        json!({"scope": "extra restapi", "subject": subject}),
    ]
}

fn forced(spelling: &Value) -> Value {
    let mut body = spelling.clone();
    body["force_refresh"] = json!(true);
    body
}

fn generation_of(answer: &Value) -> u32 {
    answer["access_token"]
        .as_str()
        .and_then(|t| t.strip_prefix("at-"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a rotated token: {answer}"))
}

/// Fires 10 forced refreshes of every spelling at once, spread over `daemons`; answers the
/// generations served.
async fn forced_storm(daemons: &[Arc<Daemon>], key: &str, subject: &str) -> Vec<u32> {
    let mut tasks = tokio::task::JoinSet::new();
    for round in 0..10 {
        for (i, spelling) in spellings(subject).iter().enumerate() {
            let d = daemons[(round + i) % daemons.len()].clone();
            let (key, body) = (key.to_owned(), forced(spelling));
            tasks.spawn(async move {
                let (status, answer) = token(&d, &key, AC_ID, Some(body.clone())).await;
                (status, answer, body)
            });
        }
    }
    let mut generations = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let (status, answer, body) = done.expect("join");
        assert_eq!(status, 200, "{body}: {answer}");
        assert_eq!(answer["scope"], "restapi extra", "{answer}");
        generations.push(generation_of(&answer));
    }
    generations
}

async fn every_spelling_of_a_grant_shares_one_refresh(backend: Backend) {
    let db = TestDb::new(backend).await;
    let d = Arc::new(Daemon::start(&db, mock_config(&[])).await);
    let admin = d.api_key("admin", &[]);
    let key = d.api_key("token", &[]);
    let (_server, provider, subject) = reuse_detecting_grant(&d, &admin).await;

    // 50 forced refreshes in five spellings at once: all served, no refresh token reused.
    let generations = forced_storm(std::slice::from_ref(&d), &key, &subject).await;
    let (generation, revoked, refreshes, reuses) = provider.snapshot();
    eprintln!(
        "storm: {} answers, {refreshes} refreshes upstream",
        generations.len()
    );
    assert!(
        !revoked,
        "the provider saw a reused refresh token: {reuses:?}"
    );
    assert!(reuses.is_empty(), "{reuses:?}");
    assert!(
        // 50 callers overlapping one 300 ms refresh: one refresh (a few if some came late).
        (1..=3).contains(&generation) && refreshes == generation,
        "{generation} {refreshes}"
    );
    assert!(
        generations.iter().all(|g| (1..=generation).contains(g)),
        "{generations:?}"
    );

    // A later refresh still works.
    let (status, answer) = token(&d, &key, AC_ID, Some(json!({"force_refresh": true}))).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(generation_of(&answer), generation + 1);

    // Every spelling is served from memory, the same token.
    for spelling in spellings(&subject) {
        let (status, answer) = token(&d, &key, AC_ID, Some(spelling.clone())).await;
        assert_eq!(
            (status, generation_of(&answer)),
            (200, generation + 1),
            "{spelling}"
        );
    }
    // A refresh under one spelling: every other spelling gets the new token at once, not
    // the pre-rotation one.
    for (i, spelling) in spellings(&subject).iter().enumerate() {
        let (status, answer) = token(&d, &key, AC_ID, Some(forced(spelling))).await;
        let now = generation + 2 + u32::try_from(i).expect("small");
        assert_eq!(
            (status, generation_of(&answer)),
            (200, now),
            "{spelling}: {answer}"
        );
        for other in spellings(&subject) {
            let (status, answer) = token(&d, &key, AC_ID, Some(other.clone())).await;
            assert_eq!(
                (status, generation_of(&answer)),
                (200, now),
                "after a refresh as {spelling}, {other} got {answer}"
            );
        }
    }
    let (_, revoked, _, reuses) = provider.snapshot();
    assert!(!revoked, "{reuses:?}");
    let (_, tenant) = d
        .get(&format!("/admin/tenants/{AC_ID}"), Some(&admin))
        .await;
    assert_eq!(tenant["grants"][0]["state"], "active", "{tenant}");
    assert_eq!(
        tenant["grants"].as_array().map(Vec::len),
        Some(1),
        "{tenant}"
    );
}

/// Two replicas on one PostgreSQL database, each hearing every spelling at once: one
/// refresh at a time per grant across both, no refresh token reused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_refresh_per_grant_whatever_the_spelling() {
    let db = TestDb::new(Backend::Postgres).await;
    let config = mock_config(&[]);
    let a = Arc::new(Daemon::start(&db, config.clone()).await);
    let b = Arc::new(Daemon::start(&db, config).await);
    let admin = a.api_key("admin", &[]);
    let key = a.api_key("token", &[]);
    let (_server, provider, subject) = reuse_detecting_grant(&a, &admin).await;

    let generations = forced_storm(&[a.clone(), b.clone()], &key, &subject).await;
    let (generation, revoked, refreshes, reuses) = provider.snapshot();
    eprintln!(
        "storm: {} answers, {refreshes} refreshes upstream",
        generations.len()
    );
    assert!(
        !revoked,
        "the provider saw a reused refresh token: {reuses:?}"
    );
    assert!(
        // 50 callers overlapping one 300 ms refresh: one refresh (a few if some came late).
        (1..=3).contains(&generation) && refreshes == generation,
        "{generation} {refreshes}"
    );
    assert!(
        generations.iter().all(|g| (1..=generation).contains(g)),
        "{generations:?}"
    );
    // Each replica can still refresh, in turn.
    for (i, d) in [&a, &b, &a].iter().enumerate() {
        let (status, answer) =
            token(d, &key, AC_ID, Some(forced(&json!({"subject": subject})))).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(
            generation_of(&answer),
            generation + 1 + u32::try_from(i).expect("small")
        );
    }
    let (_, revoked, _, reuses) = provider.snapshot();
    assert!(!revoked, "{reuses:?}");
    let (_, tenant) = b
        .get(&format!("/admin/tenants/{AC_ID}"), Some(&admin))
        .await;
    assert_eq!(tenant["grants"][0]["state"], "active", "{tenant}");
}

backend_tests!(
    made_up_subjects_and_scopes_leave_nothing_behind,
    the_answer_scope_is_what_the_provider_granted,
    every_spelling_of_a_grant_shares_one_refresh,
);
