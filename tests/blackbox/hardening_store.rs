//! Security review fixes for provider-controlled numbers, proxies, configuration and storage
//! (the ID-token ones are in `id_tokens.rs`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::backend_tests;
use crate::discovery_faults::{document, hookup_for, jwks};
use crate::helpers::*;
use crate::tokens::token;

const TOKEN: &str = "/7/oauth2/token/";

/// A daemon that may call a mock provider on 127.0.0.1 over http.
async fn mock_daemon(db: &TestDb, extra: &[(&str, &str)]) -> Daemon {
    let config = mock_provider_config(&[("BROKER_TOKENS__TIMEOUT", "2s")]).with_env(extra);
    Daemon::start(db, config).await
}

/// A client_credentials hookup for tenant 7 whose token URL is on `base`.
fn mock_hookup(base: &str) -> Value {
    mock_client_credentials(base, 7, "mock-client", "mock-secret", TOKEN)
}

fn assert_no_panic(daemon: &Daemon) {
    let log = daemon.log_text();
    assert!(!log.contains("panicked"), "the daemon panicked:\n{log}");
}

// ---- 7: provider-controlled numbers ----

/// `Retry-After: 2^64-1` on a 503: the caller gets a 503 whose Retry-After is at most an hour,
/// and the daemon keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_retry_after_is_bounded_and_panics_nothing() {
    let db = TestDb::new(Backend::Sqlite).await;
    let d = mock_daemon(&db, &[]).await;
    let key = d.api_key("token", &[]);
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(TOKEN))
        .respond_with(
            ResponseTemplate::new(503).insert_header("retry-after", "18446744073709551615"),
        )
        .mount(&server)
        .await;
    assert_eq!(d.hookup(&mock_hookup(&server.uri())).await.0, 200);
    for _ in 0..3 {
        let response = d
            .http
            .post(d.url("/v1/tenants/7/token"))
            .bearer_auth(&key)
            .send()
            .await
            .expect("the daemon answers");
        assert_eq!(response.status(), 503);
        let retry_after: u64 = response.headers()["retry-after"]
            .to_str()
            .expect("ascii")
            .parse()
            .expect("seconds");
        assert!(
            (1..=3600).contains(&retry_after),
            "Retry-After {retry_after}"
        );
    }
    assert_eq!(d.get("/healthz", None).await.0, 200);
    assert_no_panic(&d);
}

/// `expires_in: 10^13`: the token is served, with a lifetime clamped to something sane.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_expires_in_is_clamped() {
    let db = TestDb::new(Backend::Sqlite).await;
    let d = mock_daemon(&db, &[]).await;
    let key = d.api_key("token", &[]);
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(TOKEN))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": "long-lived", "token_type": "Bearer",
            "expires_in": 10_000_000_000_000u64, "scope": "restapi"
        })))
        .mount(&server)
        .await;
    assert_eq!(d.hookup(&mock_hookup(&server.uri())).await.0, 200);
    let (status, answer) = token(&d, &key, 7, None).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["access_token"], "long-lived");
    let expires_in = answer["expires_in"].as_i64().expect("expires_in");
    assert!(
        (1..=365 * 24 * 3600).contains(&expires_in),
        "expires_in {expires_in}"
    );
    // And again, from the cache.
    let (status, again) = token(&d, &key, 7, None).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(d.get("/healthz", None).await.0, 200);
    assert_no_panic(&d);
}

/// A JWKS with `Cache-Control: max-age=10^14`: discovery succeeds, the JWKS expiry stored is
/// at most about a day away, nothing panics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_jwks_max_age_is_clamped() {
    let db = TestDb::new(Backend::Sqlite).await;
    let d = mock_daemon(&db, &[("BROKER_DISCOVERY__ENABLED", "true")]).await;
    let admin = d.api_key("admin", &[]);
    let server = MockServer::start().await;
    let issuer = format!("{}/7/oauth2", server.uri());
    Mock::given(path("/7/oauth2/.well-known/openid-configuration"))
        .respond_with(ResponseTemplate::new(200).set_body_json(document(&issuer)))
        .mount(&server)
        .await;
    Mock::given(path("/7/oauth2/.well-known/jwks.json"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(jwks())
                .insert_header("cache-control", "public, max-age=100000000000000"),
        )
        .mount(&server)
        .await;
    assert_eq!(d.hookup(&hookup_for(&server.uri(), 7)).await.0, 200);
    let mut state = Value::Null;
    for _ in 0..100 {
        state = d.get("/admin/tenants/7", Some(&admin)).await.1["discovery"]["state"].clone();
        if state != "pending" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(state, "ok", "{}", d.log_text());
    let expires = db
        .column("SELECT CAST(jwks_expires_at AS TEXT) FROM discovery WHERE provet_id = 7")
        .await;
    let expires = expires[0].as_str().expect("a JWKS expiry");
    let day: chrono::NaiveDate = expires[..10].parse().expect("a date");
    let latest = (chrono::Utc::now() + chrono::Duration::days(2)).date_naive();
    assert!(day <= latest, "JWKS expires {expires}");
    assert_eq!(d.get("/healthz", None).await.0, 200);
    assert_no_panic(&d);
}

// ---- 12: proxies only when configured ----

/// A listener that counts connections and answers each request with `answer`.
struct FakeProxy {
    port: u16,
    connections: Arc<AtomicUsize>,
    request_lines: Arc<std::sync::Mutex<Vec<String>>>,
}

fn fake_proxy(answer: &'static str) -> FakeProxy {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let connections = Arc::new(AtomicUsize::new(0));
    let request_lines = Arc::new(std::sync::Mutex::new(Vec::new()));
    {
        let connections = connections.clone();
        let request_lines = request_lines.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                connections.fetch_add(1, Ordering::SeqCst);
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut line = String::new();
                let _ = reader.read_line(&mut line);
                request_lines
                    .lock()
                    .expect("lines")
                    .push(line.trim().to_owned());
                // Drain the head (and a small body), then answer.
                let mut length = 0usize;
                loop {
                    let mut header = String::new();
                    if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
                        break;
                    }
                    if let Some(v) = header.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0u8; length];
                let _ = reader.read_exact(&mut body);
                let _ = stream.write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                        answer.len()
                    )
                    .as_bytes(),
                );
            }
        });
    }
    FakeProxy {
        port,
        connections,
        request_lines,
    }
}

const PROXY_TOKEN: &str =
    r#"{"access_token": "via-proxy", "token_type": "Bearer", "expires_in": 3600}"#;

/// `HTTPS_PROXY`, `HTTP_PROXY` and `ALL_PROXY` in the environment are not used: the token
/// request goes to the provider, and the "proxy" never hears from the daemon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_environment_variables_are_ignored() {
    let proxy = fake_proxy(PROXY_TOKEN);
    let url = format!("http://127.0.0.1:{}", proxy.port);
    let db = TestDb::new(Backend::Sqlite).await;
    let mut extra: Vec<(&str, &str)> = Vec::new();
    for name in [
        "HTTPS_PROXY",
        "HTTP_PROXY",
        "ALL_PROXY",
        "https_proxy",
        "http_proxy",
        "all_proxy",
    ] {
        extra.push((name, &url));
    }
    extra.push(("NO_PROXY", "example.invalid"));
    extra.push(("no_proxy", "example.invalid"));
    let d = mock_daemon(&db, &extra).await;
    let key = d.api_key("token", &[]);
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(TOKEN))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": "direct", "token_type": "Bearer", "expires_in": 3600
        })))
        .mount(&server)
        .await;
    assert_eq!(d.hookup(&mock_hookup(&server.uri())).await.0, 200);
    let (status, answer) = token(&d, &key, 7, None).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["access_token"], "direct");
    assert_eq!(
        proxy.connections.load(Ordering::SeqCst),
        0,
        "the daemon used a proxy from the environment: {:?}",
        proxy.request_lines.lock().expect("lines")
    );
}

/// `upstream.proxy` set: token requests go through that proxy (whose address the guard
/// checks), and the environment's proxy is still ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_proxy_is_used() {
    let configured = fake_proxy(PROXY_TOKEN);
    let environment = fake_proxy(PROXY_TOKEN);
    let configured_url = format!("http://127.0.0.1:{}", configured.port);
    let environment_url = format!("http://127.0.0.1:{}", environment.port);
    let db = TestDb::new(Backend::Sqlite).await;
    let d = mock_daemon(
        &db,
        &[
            ("BROKER_UPSTREAM__PROXY", &configured_url),
            ("HTTP_PROXY", &environment_url),
            ("ALL_PROXY", &environment_url),
        ],
    )
    .await;
    let key = d.api_key("token", &[]);
    // Nothing listens here: only the proxy can answer.
    let target = "http://127.0.0.1:9";
    assert_eq!(d.hookup(&mock_hookup(target)).await.0, 200);
    let (status, answer) = token(&d, &key, 7, None).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["access_token"], "via-proxy");
    let lines = configured.request_lines.lock().expect("lines").clone();
    assert_eq!(
        lines,
        [format!("POST {target}{TOKEN} HTTP/1.1")],
        "the request went through the configured proxy"
    );
    assert_eq!(environment.connections.load(Ordering::SeqCst), 0);
}

// ---- 9 and 14: removal ----

async fn removal_racing_a_hookup_leaves_no_removed_tenant_with_a_secret(backend: Backend) {
    let db = TestDb::new(backend).await;
    let d = Daemon::start(&db, DaemonConfig::new()).await;
    let admin = d.api_key("admin", &[]);
    assert_eq!(
        d.hookup(&client_credentials(7, "race-0", "race-secret-0"))
            .await
            .0,
        200
    );
    let mut outcomes = (0, 0);
    for round in 1..=40 {
        // A new client id each round: the hookup inserts a row the removal must also see.
        let message = client_credentials(7, &format!("race-{round}"), &format!("s-{round}"));
        let (removed, hooked) = tokio::join!(
            d.send(
                reqwest::Method::DELETE,
                "/admin/tenants/7",
                Some(&admin),
                None
            ),
            d.hookup(&message)
        );
        assert_eq!(removed.0, 200, "round {round}: removal {}", removed.1);
        assert_eq!(hooked.0, 200, "round {round}: hookup {}", hooked.1);
        let status = db
            .column("SELECT status FROM tenants WHERE provet_id = 7")
            .await;
        let secrets = db
            .count("SELECT COUNT(*) FROM clients WHERE provet_id = 7 AND client_secret IS NOT NULL")
            .await;
        match status[0].as_str() {
            Some("removed") => {
                assert_eq!(secrets, 0, "round {round}: removed, yet a secret is stored");
                outcomes.0 += 1;
            }
            Some("active") => {
                assert_eq!(secrets, 1, "round {round}: active without its secret");
                outcomes.1 += 1;
            }
            other => panic!("round {round}: tenant status {other:?}"),
        }
    }
    eprintln!("removed last: {}, hookup last: {}", outcomes.0, outcomes.1);
    assert_no_panic(&d);
}

async fn removal_clears_departments(backend: Backend) {
    let db = TestDb::new(backend).await;
    let d = Daemon::start(&db, DaemonConfig::new()).await;
    let admin = d.api_key("admin", &[]);
    let mut message = client_credentials(7, "dept", "dept-secret");
    message["departments"] = json!([1, 2, 3]);
    assert_eq!(d.hookup(&message).await.0, 200);
    let (_, view) = d.get("/admin/tenants/7", Some(&admin)).await;
    assert_eq!(view["departments"], json!([1, 2, 3]));
    let (status, removed) = d
        .send(
            reqwest::Method::DELETE,
            "/admin/tenants/7",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, 200, "{removed}");
    assert_eq!(removed["departments"], json!([]), "{removed}");
    // Re-installed without departments: none.
    let again = client_credentials(7, "dept", "dept-secret-2");
    let (status, body) = d.hookup(&again).await;
    assert_eq!((status, body["status"].clone()), (200, json!("registered")));
    let (_, view) = d.get("/admin/tenants/7", Some(&admin)).await;
    assert_eq!(view["status"], "active");
    assert_eq!(view["departments"], json!([]), "{view}");
}

// ---- 16: a lost or wrong master key ----

/// The environment of a test daemon, as `DaemonConfig` builds it, with `master_key`.
fn daemon_env(db: &TestDb, master_key: &str) -> Vec<(String, String)> {
    vec![
        ("BROKER_SERVER__BIND".into(), "127.0.0.1:0".into()),
        (
            "BROKER_SERVER__PUBLIC_URL".into(),
            "http://broker.test".into(),
        ),
        ("BROKER_SERVER__WORKERS".into(), "2".into()),
        ("BROKER_DATABASE__URL".into(), db.url.clone()),
        ("BROKER_DATABASE__MAX_CONNECTIONS".into(), "4".into()),
        ("BROKER_SECRETS__MASTER_KEY".into(), master_key.into()),
        ("BROKER_LOG__FORMAT".into(), "json".into()),
        ("BROKER_DISCOVERY__ENABLED".into(), "false".into()),
        ("BROKER_TOKENS__VERIFY_ON_HOOKUP".into(), "false".into()),
    ]
}

/// Starts `serve`; `Err(output)` when it exits within 30 s without listening, `Ok(output so
/// far)` (the process killed) when it listened.
fn start_or_refusal(env: &[(String, String)], cwd: &Path) -> Result<String, String> {
    let mut child = Command::new(binary())
        .arg("serve")
        .envs(env.iter().cloned())
        .env_remove("RUST_LOG")
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let started = Instant::now();
    let mut output = Vec::new();
    loop {
        while let Ok(line) = rx.try_recv() {
            let listening = line.contains(r#""message":"listening""#);
            output.push(line);
            if listening {
                let _ = child.kill();
                let _ = child.wait();
                return Ok(output.join("\n"));
            }
        }
        if let Ok(Some(_)) = child.try_wait() {
            std::thread::sleep(Duration::from_millis(100));
            output.extend(rx.try_iter());
            let mut stdout = String::new();
            if let Some(mut out) = child.stdout.take() {
                let _ = out.read_to_string(&mut stdout);
            }
            output.push(stdout);
            return Err(output.join("\n"));
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("serve neither listened nor exited:\n{}", output.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The key id a stored secret names (`v1:<key id>:...`).
async fn stored_key_id(db: &TestDb) -> String {
    let sealed = db
        .column("SELECT client_secret FROM clients WHERE client_secret IS NOT NULL")
        .await;
    let sealed = sealed[0].as_str().expect("a sealed secret");
    sealed.split(':').nth(1).expect("a key id").to_owned()
}

async fn a_wrong_master_key_stops_the_start(backend: Backend) {
    let db = TestDb::new(backend).await;
    let config = DaemonConfig::new();
    let d = Daemon::start(&db, config.clone()).await;
    assert_eq!(
        d.hookup(&client_credentials(7, "keyed", "keyed-secret"))
            .await
            .0,
        200
    );
    d.stop();
    let key_a = stored_key_id(&db).await;
    let env = daemon_env(&db, &random_key());
    let refusal = start_or_refusal(&env, db.dir.path())
        .expect_err("the daemon started with a key that opens nothing stored");
    assert!(
        refusal.contains(&key_a),
        "the refusal does not name key {key_a}:\n{refusal}"
    );
    // With the old key as a previous key it starts.
    let mut env = env;
    env.push((
        "BROKER_SECRETS__PREVIOUS_KEYS".into(),
        json!([config.master_key]).to_string(),
    ));
    start_or_refusal(&env, db.dir.path()).expect("starts with the old key as a previous key");
}

/// The generated key file is gone: no new key is generated over sealed rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_generated_key_is_not_replaced() {
    let db = TestDb::new(Backend::Sqlite).await;
    let mut config = DaemonConfig::new();
    config
        .extra_env
        .push(("BROKER_SECRETS__MASTER_KEY".into(), String::new()));
    let d = Daemon::start(&db, config).await;
    assert_eq!(
        d.hookup(&client_credentials(7, "gen", "gen-secret"))
            .await
            .0,
        200
    );
    d.stop();
    let key_file = db.dir.path().join("data/master.key");
    assert!(key_file.exists());
    std::fs::remove_file(&key_file).expect("remove the key");
    let key_a = stored_key_id(&db).await;
    let env = daemon_env(&db, "");
    let refusal = start_or_refusal(&env, db.dir.path())
        .expect_err("the daemon generated a new key over sealed secrets");
    assert!(
        refusal.contains(&key_a),
        "the refusal does not name key {key_a}:\n{refusal}"
    );
    assert!(!key_file.exists(), "a new key was generated");
}

/// Another replica seals with a key this one lacks: `/readyz` answers 503 naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_names_a_key_id_it_lacks() {
    let db = TestDb::new(Backend::Sqlite).await;
    let first = Daemon::start(&db, DaemonConfig::new()).await;
    let second = Daemon::start(&db, DaemonConfig::new()).await;
    assert_eq!(first.get("/readyz", None).await.0, 200);
    assert_eq!(
        second
            .hookup(&client_credentials(7, "other", "other-secret"))
            .await
            .0,
        200
    );
    let key_b = stored_key_id(&db).await;
    let mut last = (0, Value::Null);
    for _ in 0..100 {
        last = first.get("/readyz", None).await;
        if last.0 == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(last.0, 503, "{}", last.1);
    assert!(last.1.to_string().contains(&key_b), "{}", last.1);
}

// ---- 18: file modes ----

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let mut db = TestDb::new(Backend::Sqlite).await;
    let folder = db.dir.path().join("state");
    db.url = format!("sqlite://{}/broker.db?mode=rwc", folder.display());
    let d = Daemon::start(&db, DaemonConfig::new()).await;
    assert_eq!(
        d.hookup(&client_credentials(7, "modes", "modes-secret"))
            .await
            .0,
        200
    );
    let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&folder), 0o700, "{}", folder.display());
    for name in ["broker.db", "broker.db-wal", "broker.db-shm"] {
        let file = folder.join(name);
        assert!(file.exists(), "{name} missing");
        assert_eq!(mode(&file), 0o600, "{name}");
    }
}

// ---- 19: invisible characters in identifiers ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invisible_characters_in_client_id_are_refused() {
    let db = TestDb::new(Backend::Sqlite).await;
    let d = Daemon::start(&db, DaemonConfig::new()).await;
    for bad in [
        "abc\u{200B}",
        "\u{202E}cba",
        "a\u{2066}b",
        "ab\u{FEFF}",
        "a\u{2028}b",
    ] {
        let message = client_credentials(7, bad, "invisible-secret");
        let (status, problem) = d.hookup(&message).await;
        assert_eq!(status, 400, "{bad:?}: {problem}");
        let errors = problem["errors"].as_array().expect("errors");
        assert!(
            errors.iter().any(|e| e["field"] == "client_id"),
            "{problem}"
        );
    }
    assert_eq!(
        d.hookup(&client_credentials(7, "plain-client", "s"))
            .await
            .0,
        200
    );
}

// ---- 10: configuration errors keep secrets ----

#[test]
fn configuration_errors_do_not_echo_secret_values() {
    let dir = tempfile::tempdir().expect("dir");
    let key = random_key();
    let cases = [
        (
            "BROKER_SECRETS__PREVIOUS_KEYS",
            key.clone(),
            "previous_keys",
        ),
        (
            "BROKER_HOOKUP__EXTRA_SECRETS",
            format!("extra-{key}"),
            "extra_secrets",
        ),
        (
            "BROKER_SECRETS__MASTER_KEY",
            format!("[\"{key}\"]"),
            "master_key",
        ),
        (
            "BROKER_HOOKUP__SECRET",
            format!("{{value=\"{key}\"}}"),
            "secret",
        ),
    ];
    for (name, value, field) in cases {
        let env = vec![
            (name.to_owned(), value.clone()),
            ("BROKER_SERVER__BIND".to_owned(), "127.0.0.1:0".to_owned()),
        ];
        let (ok, stdout, stderr) = run_cli(&env, dir.path(), &["serve"]);
        assert!(!ok, "{name}: the daemon accepted {value}");
        let output = format!("{stdout}{stderr}");
        assert!(
            !output.contains(&key),
            "{name}: the value leaked:\n{output}"
        );
        // Environment keys are shown as spelt there (upper case).
        assert!(
            output.to_ascii_lowercase().contains(field),
            "{name}: the key is not named:\n{output}"
        );
    }
    // A file whose secret line does not parse.
    let file = dir.path().join("broken.toml");
    std::fs::write(&file, format!("[secrets]\nmaster_key = \"{key}\n")).expect("write");
    let env = vec![("BROKER_SERVER__BIND".to_owned(), "127.0.0.1:0".to_owned())];
    let (ok, stdout, stderr) = run_cli(
        &env,
        dir.path(),
        &["--config", file.to_str().expect("path"), "serve"],
    );
    assert!(!ok);
    let output = format!("{stdout}{stderr}");
    assert!(!output.contains(&key), "the file's value leaked:\n{output}");
}

backend_tests!(
    removal_racing_a_hookup_leaves_no_removed_tenant_with_a_secret,
    removal_clears_departments,
    a_wrong_master_key_stops_the_start,
);
