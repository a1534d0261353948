//! Requests you can trace: `X-Request-Id` on every answer (the caller's when sane), the same
//! id as `request_id` in problem bodies, one access line per request (text and JSON) that
//! never names the hookup secret, refused requests warned at a bounded rate, and the
//! daemon's own lines: a version at start, no colours into a pipe, quiet dependencies, a
//! failed start's cause printed once.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::backend_tests;
use crate::helpers::*;

backend_tests!(access_lines_carry_method_route_status_latency_key_and_tenant);

/// Waits until `done` holds over the daemon's log (lines reach it a moment after the
/// answer); panics with the log after 10 s.
async fn wait_for_log(daemon: &Daemon, what: &str, done: impl Fn(&str) -> bool) -> String {
    let started = Instant::now();
    loop {
        let logs = daemon.log_text();
        if done(&logs) {
            return logs;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{what} not logged within 10 s:\n{logs}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The JSON access lines (target `broker_api::access`).
fn access_lines(logs: &str) -> Vec<Value> {
    logs.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "broker_api::access")
        .collect()
}

async fn get_with_id(daemon: &Daemon, path: &str, id: Option<&str>) -> (u16, String, Value) {
    let mut request = daemon.http.get(daemon.url(path));
    if let Some(id) = id {
        request = request.header("x-request-id", id);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let header = response
        .headers()
        .get("x-request-id")
        .expect("X-Request-Id on every answer")
        .to_str()
        .expect("ASCII")
        .to_owned();
    let text = response.text().await.expect("body");
    (
        status,
        header,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn is_generated(id: &str) -> bool {
    id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_echoed_when_sane_and_generated_otherwise() {
    let db = TestDb::new(Backend::Sqlite).await;
    let daemon = Daemon::start(&db, DaemonConfig::new()).await;

    for sane in [
        "abc-123",
        "3f1c2a8e-9b0d-4e55-a1f2-6c7d8e9f0a1b",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    ] {
        let (status, header, _) = get_with_id(&daemon, "/healthz", Some(sane)).await;
        assert_eq!(status, 200);
        assert_eq!(header, sane);
    }
    let (_, first, _) = get_with_id(&daemon, "/healthz", None).await;
    let (_, second, _) = get_with_id(&daemon, "/healthz", None).await;
    assert!(
        is_generated(&first) && is_generated(&second),
        "{first} {second}"
    );
    assert_ne!(first, second);
    let too_long = "a".repeat(129);
    for insane in [too_long.as_str(), "a\tb", "a b", "a\"b", "a,b"] {
        let (status, header, _) = get_with_id(&daemon, "/healthz", Some(insane)).await;
        assert_eq!(status, 200);
        assert!(is_generated(&header), "{insane:?} replaced, got {header:?}");
    }
    let (_, header, _) = get_with_id(&daemon, "/healthz", Some(&"a".repeat(128))).await;
    assert_eq!(header, "a".repeat(128), "128 characters are kept");

    // Problem bodies carry the id of their answer: the caller's, or the generated one.
    for (path, status) in [
        ("/admin/tenants", 401),
        ("/no/such/path", 404),
        ("/admin/api-keys", 401),
    ] {
        let (got, header, body) = get_with_id(&daemon, path, Some("trace-me.1")).await;
        assert_eq!(got, status, "{path}");
        assert_eq!(header, "trace-me.1");
        assert_eq!(body["request_id"], "trace-me.1", "{path}: {body}");
        let (got, header, body) = get_with_id(&daemon, path, None).await;
        assert_eq!(got, status, "{path}");
        assert!(is_generated(&header));
        assert_eq!(body["request_id"], header.as_str(), "{path}: {body}");
    }
    // Also on a hookup answer (its own error path) and a successful JSON answer.
    let response = daemon
        .http
        .post(&daemon.hookup_url)
        .header("content-type", "application/json")
        .header("x-request-id", "hookup-1")
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(response.headers()["x-request-id"], "hookup-1");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["request_id"], "hookup-1");
    let admin = daemon.api_key("admin", &[]);
    let response = daemon
        .http
        .get(daemon.url("/admin/tenants"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(is_generated(
        response.headers()["x-request-id"].to_str().unwrap()
    ));

    // The access line's span carries the same id.
    let logs = wait_for_log(&daemon, "the access line of trace-me.1", |logs| {
        access_lines(logs)
            .iter()
            .any(|l| l["span"]["request_id"] == "trace-me.1")
    })
    .await;
    assert!(!logs.contains("a\tb"), "an insane id never reaches the log");
}

async fn access_lines_carry_method_route_status_latency_key_and_tenant(backend: Backend) {
    let db = TestDb::new(backend).await;
    let daemon = Daemon::start(&db, DaemonConfig::new()).await;
    let secret = daemon.config.hookup_secret.clone().expect("secret");
    let (status, _) = daemon
        .hookup(&client_credentials(60, "a", "a-secret"))
        .await;
    assert_eq!(status, 200);
    let (ok, stdout, stderr) = daemon.cli(&[
        "api-key",
        "create",
        "--name",
        "billing-svc",
        "--role",
        "token",
        "--tenant",
        "60",
    ]);
    assert!(ok, "{stderr}");
    let key = stdout.lines().last().unwrap().trim().to_owned();

    let response = daemon
        .http
        .get(daemon.url("/v1/tenants/60"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();

    let logs = wait_for_log(&daemon, "the tenant read's access line", |logs| {
        access_lines(logs)
            .iter()
            .any(|l| l["span"]["request_id"] == id.as_str())
    })
    .await;
    let lines = access_lines(&logs);
    let mine: Vec<&Value> = lines
        .iter()
        .filter(|l| l["span"]["request_id"] == id.as_str())
        .collect();
    assert_eq!(mine.len(), 1, "one access line per request: {mine:?}");
    let line = mine[0];
    assert_eq!(line["level"], "INFO");
    let f = &line["fields"];
    assert_eq!(f["method"], "GET");
    assert_eq!(f["route"], "/v1/tenants/{provet_id}");
    assert_eq!(f["status"], 200);
    assert!(
        f["latency_ms"].as_f64().is_some_and(|ms| ms >= 0.0),
        "{line}"
    );
    assert_eq!(f["api_key"], "billing-svc");
    assert_eq!(f["provet_id"], 60);

    // The hookup's line names its route pattern, never the secret.
    let hookup = lines
        .iter()
        .find(|l| l["fields"]["method"] == "POST" && l["fields"]["status"] == 200)
        .expect("the hookup's access line");
    assert_eq!(hookup["fields"]["route"], "/hookup/{hookup_secret}");
    assert!(hookup["fields"].get("api_key").is_none());
    assert!(
        !logs
            .lines()
            .any(|l| l.contains(&secret) && !l.contains("give Provet this hookup URL")),
        "the hookup secret is logged only in the hookup URL at start"
    );
    // A wrong secret: the route pattern all the same.
    let wrong = format!("{}/hookup/{}", daemon.base, "w".repeat(40));
    assert_eq!(
        daemon
            .post_raw(&wrong, b"{}".to_vec(), "application/json")
            .await
            .0,
        404
    );
    let logs = wait_for_log(&daemon, "the wrong secret's access line", |logs| {
        access_lines(logs)
            .iter()
            .any(|l| l["fields"]["status"] == 404)
    })
    .await;
    assert!(!logs.contains(&"w".repeat(40)));
    let unmatched = access_lines(&logs);
    let line = unmatched
        .iter()
        .find(|l| l["fields"]["status"] == 404)
        .unwrap();
    assert_eq!(line["fields"]["route"], "/hookup/{hookup_secret}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_lines_in_text_format_carry_the_same_fields_without_colours() {
    let db = TestDb::new(Backend::Sqlite).await;
    let mut config = DaemonConfig::new();
    config
        .extra_env
        .push(("BROKER_LOG__FORMAT".to_owned(), "text".to_owned()));
    let daemon = Daemon::start(&db, config).await;
    assert_eq!(
        daemon
            .hookup(&client_credentials(61, "b", "b-secret"))
            .await
            .0,
        200
    );
    let (ok, stdout, stderr) = daemon.cli(&[
        "api-key", "create", "--name", "sync-svc", "--role", "token", "--tenant", "61",
    ]);
    assert!(ok, "{stderr}");
    let key = stdout.lines().last().unwrap().trim().to_owned();
    let response = daemon
        .http
        .get(daemon.url("/v1/tenants/61"))
        .bearer_auth(&key)
        .header("x-request-id", "text-line-1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let logs = wait_for_log(&daemon, "the text access line", |logs| {
        logs.lines()
            .any(|l| l.contains("broker_api::access") && l.contains("text-line-1"))
    })
    .await;
    let whole = logs
        .lines()
        .find(|l| l.contains("broker_api::access") && l.contains("text-line-1"))
        .unwrap();
    // The span (`request{request_id=.. api_key=..}`), then the line's own fields.
    let (span, line) = whole.split_once("broker_api::access: ").unwrap();
    assert!(span.contains("request_id=text-line-1"), "{whole}");
    assert!(span.contains(" INFO "), "{whole}");
    assert_eq!(text_field(line, "method"), Some("GET"), "{line}");
    assert_eq!(
        text_field(line, "route"),
        Some("/v1/tenants/{provet_id}"),
        "{line}"
    );
    assert_eq!(text_field(line, "status"), Some("200"), "{line}");
    assert!(
        text_field(line, "latency_ms").is_some_and(|ms| ms.parse::<f64>().is_ok()),
        "{line}"
    );
    assert_eq!(text_field(line, "api_key"), Some("sync-svc"), "{line}");
    assert_eq!(text_field(line, "provet_id"), Some("61"), "{line}");

    // Into a pipe: no ANSI escapes anywhere. A version line at start. Dependencies quiet.
    assert!(!logs.contains('\u{1b}'), "no ANSI escapes:\n{logs}");
    let version = logs
        .lines()
        .find(|l| l.contains("provet-broker starting"))
        .expect("a version line at start");
    assert_eq!(
        text_field(version, "version"),
        Some(env!("CARGO_PKG_VERSION"))
    );
    assert!(
        !logs
            .lines()
            .any(|l| l.contains(" INFO actix_server") || l.contains(" INFO sea_orm_migration")),
        "actix_server and sea_orm_migration only from warn:\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_are_warned_at_a_limited_rate() {
    let db = TestDb::new(Backend::Sqlite).await;
    let daemon = Daemon::start(&db, DaemonConfig::new()).await;
    let sent = 200;
    for i in 0..sent {
        let (status, _) = daemon
            .get("/v1/tenants", Some(&format!("pbk_guess-{i}")))
            .await;
        assert!(status == 401 || status == 429, "{status}");
    }
    // After a pause, one more: its line counts those left out.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        daemon.get("/v1/tenants", Some("pbk_guess-last")).await.0,
        429
    );
    let refused = |logs: &str| -> Vec<Value> {
        access_lines(logs)
            .into_iter()
            .filter(|l| l["fields"]["message"] == "request refused")
            .collect()
    };
    let logs = wait_for_log(
        &daemon,
        "every refused request, logged or counted",
        |logs| {
            let lines = refused(logs);
            let suppressed: u64 = lines
                .iter()
                .map(|l| l["fields"]["suppressed"].as_u64().unwrap())
                .sum();
            suppressed + lines.len() as u64 == sent + 1
        },
    )
    .await;
    let lines = refused(&logs);
    assert!(
        lines.len() < 40,
        "far fewer warn lines than refusals: {}",
        lines.len()
    );
    assert!(lines.iter().all(|l| l["level"] == "WARN"));
    assert!(lines.iter().any(|l| l["fields"]["status"] == 401));
    assert!(lines.iter().any(|l| l["fields"]["status"] == 429));
    let last = lines.last().unwrap();
    assert!(
        last["fields"]["suppressed"].as_u64().unwrap() > 100,
        "{last}"
    );
    assert!(!logs.contains("pbk_guess"), "keys never logged");
    // No info line either for the refused ones: each is warned or counted, once.
    assert_eq!(
        access_lines(&logs)
            .iter()
            .filter(|l| l["fields"]["route"] == "/v1/tenants")
            .count(),
        lines.len()
    );
}

/// Starts `serve` against a database that refuses connections; answers (exit ok, stderr).
fn failed_start(format: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(binary())
        .arg("serve")
        .env_remove("RUST_LOG")
        .env("BROKER_SERVER__BIND", "127.0.0.1:0")
        .env(
            "BROKER_DATABASE__URL",
            "postgres://postgres@127.0.0.1:1/nothing",
        )
        .env("BROKER_DATABASE__CONNECT_TIMEOUT", "2s")
        .env("BROKER_DATABASE__ACQUIRE_TIMEOUT", "2s")
        .env("BROKER_SECRETS__MASTER_KEY", random_key())
        .env("BROKER_LOG__FORMAT", format)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("run provet-broker");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_failed_start_prints_its_cause_once() {
    for format in ["text", "json"] {
        let (ok, stderr) = failed_start(format);
        assert!(!ok, "{format}: must fail");
        // The pool's error is the deepest cause the database driver reports.
        assert_eq!(
            stderr.matches("pool timed out").count(),
            1,
            "{format}: the cause once:\n{stderr}"
        );
        assert_eq!(
            stderr.matches("cannot open the database").count(),
            1,
            "{format}: the context once:\n{stderr}"
        );
        assert!(
            stderr.contains("provet-broker starting"),
            "{format}:\n{stderr}"
        );
        assert!(
            !stderr.contains('\u{1b}'),
            "{format}: no colours into a pipe"
        );
    }
}
