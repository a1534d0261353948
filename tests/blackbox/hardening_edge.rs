//! Security review fixes at the HTTP edge: API-key roles, slow bodies, body limits, the Authorization scheme, return_to.

use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::backend_tests;
use crate::helpers::*;

// ---- request bodies ----

/// A raw HTTP/1.1 exchange: sends `request`, reads until the server closes (bounded).
async fn raw_exchange(daemon: &Daemon, request: &[u8]) -> String {
    let address = daemon.base.trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&address).await.expect("connect");
    // The server may answer (and close) before all of the body is written.
    let _ = stream.write_all(request).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_over_64_kib_answer_413_problem_json() {
    let db = TestDb::new(Backend::Sqlite).await;
    let daemon = Daemon::start(&db, DaemonConfig::new()).await;
    assert_eq!(
        daemon
            .hookup(&client_credentials(7, "client-7", "a-secret"))
            .await
            .0,
        200
    );
    let admin = daemon.api_key("admin", &[]);
    let token = daemon.api_key("token", &[7]);

    // Just under the limit: accepted (JSON padded with whitespace).
    let padded = |size: usize| {
        let body = json!({"name": "padded", "role": "token"}).to_string();
        format!("{}{}", " ".repeat(size - body.len()), body).into_bytes()
    };
    let response = daemon
        .http
        .post(daemon.url("/admin/api-keys"))
        .bearer_auth(&admin)
        .header("content-type", "application/json")
        .body(padded(64 * 1024))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 201);

    // Over it, declared or not, on /v1 and /admin: 413 problem+json.
    for (path, key, size) in [
        ("/v1/tenants/7/token", &token, 64 * 1024 + 1),
        ("/v1/tenants/7/token", &token, 100 * 1024),
        ("/v1/tenants/7/authorizations", &token, 100 * 1024),
        ("/admin/api-keys", &admin, 100 * 1024),
        ("/admin/api-keys", &admin, 300 * 1024),
    ] {
        let response = daemon
            .http
            .post(daemon.url(path))
            .bearer_auth(key)
            .header("content-type", "application/json")
            .body(padded(size))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status().as_u16(), 413, "{path} {size}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{path} {size}"
        );
        let problem: Value = response.json().await.expect("problem");
        assert_eq!(problem["code"], "payload_too_large", "{path} {size}");
        assert_eq!(problem["status"], 413);
    }
    // A chunked body (no Content-Length) is counted as it arrives.
    let chunk = " ".repeat(16 * 1024);
    let mut request = format!(
        "POST /admin/api-keys HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    for _ in 0..6 {
        request.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    request.push_str("0\r\n\r\n");
    let answer = raw_exchange(&daemon, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("content-type: application/problem+json"),
        "{answer}"
    );
    assert!(answer.contains("\"payload_too_large\""), "{answer}");
    assert_eq!(daemon.get("/healthz", None).await.0, 200);
}

/// One slow client: the head, then one byte of chunked body every 300 ms. Answers how long
/// the server kept the connection open (`None`: still open after `limit`) and what it sent.
async fn trickle(address: String, head: String, limit: Duration) -> (Option<Duration>, String) {
    let started = Instant::now();
    let Ok(stream) = TcpStream::connect(&address).await else {
        return (Some(Duration::ZERO), "connect failed".into());
    };
    let (mut reader, mut writer) = stream.into_split();
    let writing = tokio::spawn(async move {
        if writer.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        loop {
            if writer.write_all(b"1\r\n \r\n").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    let mut answer = Vec::new();
    let read = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 4096];
        loop {
            match reader.read(&mut buf).await {
                // EOF, or a reset after the server closed with our bytes unread.
                Ok(0) | Err(_) => return,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    writing.abort();
    (
        read.ok().map(|()| started.elapsed()),
        String::from_utf8_lossy(&answer).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickling_bodies_are_cut_off_on_every_route() {
    const BODY_TIMEOUT: Duration = Duration::from_secs(2);
    const CONNECTIONS: usize = 240;
    let db = TestDb::new(Backend::Sqlite).await;
    let mut config = DaemonConfig::new();
    config.extra_env.extend([
        ("BROKER_SERVER__REQUEST_BODY_TIMEOUT".into(), "2s".into()),
        ("BROKER_SERVER__KEEP_ALIVE".into(), "2s".into()),
    ]);
    let daemon = Daemon::start(&db, config).await;
    assert_eq!(
        daemon
            .hookup(&client_credentials(7, "client-7", "a-secret"))
            .await
            .0,
        200
    );
    let admin = daemon.api_key("admin", &[]);
    let token = daemon.api_key("token", &[7]);
    let address = daemon.base.trim_start_matches("http://").to_owned();
    let routes = [
        // Routes that read a body...
        ("POST", "/v1/tenants/7/token", &token),
        ("POST", "/v1/tenants/7/authorizations", &token),
        ("POST", "/admin/api-keys", &admin),
        ("POST", "/admin/discovery/rerun", &admin),
        // ...and routes that answer without reading it.
        ("GET", "/v1/tenants/7", &token),
        ("GET", "/admin/tenants", &admin),
        ("DELETE", "/admin/api-keys/999999", &admin),
        ("GET", "/healthz", &admin),
    ];
    let limit = Duration::from_secs(15);
    let clients: Vec<_> = (0..CONNECTIONS)
        .map(|n| {
            let (method, path, key) = routes[n % routes.len()];
            let head = format!(
                "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
                 Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            );
            (
                format!("{method} {path}"),
                tokio::spawn(trickle(address.clone(), head, limit)),
            )
        })
        .collect();

    // While they trickle, the daemon answers others at once.
    tokio::time::sleep(Duration::from_millis(800)).await;
    for _ in 0..3 {
        let asked = Instant::now();
        let health = tokio::time::timeout(
            Duration::from_secs(3),
            reqwest::Client::new().get(daemon.url("/healthz")).send(),
        )
        .await;
        assert!(
            matches!(&health, Ok(Ok(r)) if r.status() == 200),
            "/healthz did not answer within 3 s: {health:?}"
        );
        assert!(
            asked.elapsed() < Duration::from_secs(2),
            "{:?}",
            asked.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Every slow connection was answered and closed within the bound: the body timeout, the
    // linger after the answer, and slack for a loaded machine.
    let bound = BODY_TIMEOUT + Duration::from_secs(5);
    let mut open = Vec::new();
    for (route, client) in clients {
        let (closed_after, answer) = client.await.expect("client task");
        match closed_after {
            Some(d) if d <= bound => {}
            other => open.push(format!("{route}: {other:?} {:.60}", answer)),
        }
    }
    assert!(
        open.is_empty(),
        "{} of {CONNECTIONS} connections were held open:\n{}",
        open.len(),
        open.join("\n")
    );
    assert_eq!(daemon.get("/healthz", None).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_close_after_server_keep_alive() {
    let db = TestDb::new(Backend::Sqlite).await;
    let mut config = DaemonConfig::new();
    config
        .extra_env
        .push(("BROKER_SERVER__KEEP_ALIVE".into(), "1s".into()));
    let daemon = Daemon::start(&db, config).await;
    let address = daemon.base.trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&address).await.expect("connect");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let started = Instant::now();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(8), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(read.is_ok(), "the idle connection was kept open: {answer}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}

// ---- admin keys are never tenant-scoped ----

async fn admin_keys_with_tenants_are_refused_and_stored_ones_are_invalid(backend: Backend) {
    let db = TestDb::new(backend).await;
    let daemon = Daemon::start(&db, DaemonConfig::new()).await;
    for id in [7, 8] {
        let message = client_credentials(id, &format!("client-{id}"), "a-secret");
        assert_eq!(daemon.hookup(&message).await.0, 200);
    }
    let admin = daemon.api_key("admin", &[]);

    // The command line refuses the combination.
    let (ok, stdout, stderr) = daemon.cli(&[
        "api-key", "create", "--name", "scoped", "--role", "admin", "--tenant", "7",
    ]);
    assert!(!ok, "created a scoped admin key: {stdout}");
    assert!(
        stderr.contains("--tenant") && stderr.contains("admin"),
        "{stderr}"
    );
    assert!(!stdout.contains("pbk_"), "{stdout}");

    // So does the API, naming the field.
    for tenants in [json!([7]), json!([])] {
        let (status, problem) = daemon
            .send(
                Method::POST,
                "/admin/api-keys",
                Some(&admin),
                Some(json!({"name": "scoped", "role": "admin", "tenants": tenants})),
            )
            .await;
        assert_eq!(status, 400, "{problem}");
        assert_eq!(problem["code"], "invalid_request");
        assert_eq!(problem["errors"][0]["field"], "tenants", "{problem}");
    }
    // Token keys still carry tenant lists; admin keys without one are fine.
    let (status, created) = daemon
        .send(
            Method::POST,
            "/admin/api-keys",
            Some(&admin),
            Some(json!({"name": "svc", "role": "token", "tenants": [7]})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["state"], "active", "{created}");
    let (status, created) = daemon
        .send(
            Method::POST,
            "/admin/api-keys",
            Some(&admin),
            Some(json!({"name": "ops", "role": "admin", "tenants": null})),
        )
        .await;
    assert_eq!(status, 201, "{created}");

    // A scoped admin key already stored (from before the fix) is refused everywhere.
    let legacy = daemon.api_key("admin", &[]);
    let db_conn = db.connect().await;
    sea_orm::ConnectionTrait::execute_unprepared(
        &db_conn,
        &format!(
            "UPDATE api_keys SET tenants = '[7]' WHERE key_prefix = '{}'",
            &legacy[..12]
        ),
    )
    .await
    .expect("scope the key in the database");
    db_conn.close().await.ok();
    for (method, path, body) in [
        (Method::GET, "/admin/tenants", None),
        (Method::GET, "/admin/tenants/7", None),
        (Method::DELETE, "/admin/tenants/8", None),
        (
            Method::POST,
            "/admin/api-keys",
            Some(json!({"name": "escalated", "role": "admin"})),
        ),
        (Method::GET, "/admin/api-keys", None),
        (Method::GET, "/v1/tenants/7", None),
        (Method::POST, "/v1/tenants/7/token", None),
        (Method::POST, "/v1/tenants/7/authorizations", None),
    ] {
        let (status, problem) = daemon.send(method.clone(), path, Some(&legacy), body).await;
        assert_eq!(status, 403, "{method} {path}: {problem}");
        assert_eq!(problem["code"], "forbidden", "{method} {path}");
    }
    let (status, tenant) = daemon.get("/admin/tenants/8", Some(&admin)).await;
    assert_eq!((status, tenant["status"].clone()), (200, json!("active")));
    let (_, list) = daemon.get("/admin/api-keys", Some(&admin)).await;
    assert!(
        !list.to_string().contains("escalated"),
        "the invalid key created a key: {list}"
    );

    // Listed as invalid, with the reason, in the API and on the command line.
    let listed = list["api_keys"].as_array().expect("keys");
    let entry = listed
        .iter()
        .find(|k| k["prefix"] == legacy[..12])
        .expect("the legacy key is listed");
    assert_eq!(entry["state"], "invalid", "{entry}");
    assert!(
        entry["invalid_reason"]
            .as_str()
            .unwrap_or_default()
            .contains("tenant"),
        "{entry}"
    );
    let fine = listed
        .iter()
        .find(|k| k["prefix"] == admin[..12])
        .expect("the admin key is listed");
    assert_eq!(fine["state"], "active", "{fine}");
    assert_eq!(fine["invalid_reason"], Value::Null, "{fine}");
    let (ok, stdout, stderr) = daemon.cli(&["api-key", "list"]);
    assert!(ok, "{stderr}");
    let line: Value = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|k| k["prefix"] == legacy[..12])
        .expect("the legacy key on the command line");
    assert_eq!(line["state"], "invalid", "{line}");
}

// ---- the Authorization scheme ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_scheme_is_case_insensitive() {
    let db = TestDb::new(Backend::Sqlite).await;
    let daemon = Daemon::start(&db, DaemonConfig::new()).await;
    let admin = daemon.api_key("admin", &[]);
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let response = daemon
            .http
            .get(daemon.url("/admin/tenants"))
            .header("authorization", format!("{scheme} {admin}"))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status().as_u16(), 200, "{scheme}");
    }
    for value in [
        format!("Basic {admin}"),
        format!("Bearer{admin}"),
        admin.clone(),
    ] {
        let response = daemon
            .http
            .get(daemon.url("/admin/tenants"))
            .header("authorization", value.clone())
            .send()
            .await
            .expect("request");
        assert_eq!(response.status().as_u16(), 401, "{}", &value[..8]);
    }
}

/// Starts `provet-broker serve` with `extra` on top of a minimal working environment and
/// waits (bounded) for it to exit: `None` when it was still running after `limit` (then it
/// is killed). Answers the exit status and stderr.
fn serve_until_exit(
    db: &TestDb,
    extra: &[(&str, &str)],
    limit: Duration,
) -> (Option<ExitStatus>, String) {
    let stderr_path = db.dir.path().join("serve.stderr");
    let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
    let mut child = Command::new(binary())
        .arg("serve")
        .env("BROKER_SERVER__BIND", "127.0.0.1:0")
        .env("BROKER_DATABASE__URL", &db.url)
        .env("BROKER_SECRETS__MASTER_KEY", random_key())
        .env("BROKER_HOOKUP__SECRET", "a-long-enough-hookup-secret")
        .env("BROKER_DISCOVERY__ENABLED", "false")
        .envs(extra.iter().map(|(k, v)| (*k, *v)))
        .env_remove("RUST_LOG")
        .current_dir(db.dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn provet-broker");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (
        status,
        std::fs::read_to_string(&stderr_path).unwrap_or_default(),
    )
}

// ---- return_to ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn return_to_must_match_an_allowed_origin_and_path() {
    let db = TestDb::new(Backend::Sqlite).await;
    let mut config = DaemonConfig::new();
    config.extra_env.push((
        "BROKER_OAUTH__ALLOWED_RETURN_TO".into(),
        r#"["https://app.example.com/app", "https://other.example.com"]"#.into(),
    ));
    let daemon = Daemon::start(&db, config).await;
    let admin = daemon.api_key("admin", &[]);
    assert_eq!(
        daemon
            .hookup(&authorization_code(7, "client-7", "a-secret"))
            .await
            .0,
        200
    );
    let start = |return_to: &str| {
        daemon.send(
            Method::POST,
            "/v1/tenants/7/authorizations",
            Some(&admin),
            Some(json!({"return_to": return_to})),
        )
    };
    for refused in [
        "https://app.example.com.evil.example/app",
        "https://app.example.com@evil.example/app",
        "https://user:pw@app.example.com/app",
        "https://app.example.com/apps",
        "https://app.example.com/",
        "https://app.example.com/other/app",
        "http://app.example.com/app",
        "https://app.example.com:8443/app",
        "https://app.example.com/app/../admin",
        "https://app.example.com\\@evil.example/app",
        "https://app.example.com/app\r\nSet-Cookie: a=b",
        "https://app.example.com/app\n",
        "https://app.example.com/app\u{0}",
        " https://app.example.com/app",
        "/app",
        "//evil.example/app",
        "app.example.com/app",
        "javascript:alert(1)",
        "https://other.example.com.evil.example/",
        "",
    ] {
        let (status, problem) = start(refused).await;
        assert_eq!(status, 400, "{refused:?}: {problem}");
        assert_eq!(problem["code"], "invalid_request", "{refused:?}");
        assert_eq!(
            problem["errors"][0]["field"], "return_to",
            "{refused:?}: {problem}"
        );
    }
    for allowed in [
        "https://app.example.com/app",
        "https://app.example.com/app/",
        "https://app.example.com/app/done?x=1#top",
        "https://APP.example.com/app/x",
        "https://app.example.com:443/app",
        "https://other.example.com/",
        "https://other.example.com/anything",
    ] {
        let (status, started) = start(allowed).await;
        assert_eq!(status, 200, "{allowed:?}: {started}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_allowed_return_to_entries_stop_the_daemon() {
    for entry in [
        r#"["app.example.com"]"#,
        r#"["/app"]"#,
        r#"["https://user@app.example.com/"]"#,
        r#"["https://app.example.com/?x=1"]"#,
        r#"["ftp://app.example.com/"]"#,
    ] {
        let db = TestDb::new(Backend::Sqlite).await;
        let (status, stderr) = serve_until_exit(
            &db,
            &[("BROKER_OAUTH__ALLOWED_RETURN_TO", entry)],
            Duration::from_secs(20),
        );
        let status = status.unwrap_or_else(|| panic!("{entry}: the daemon started"));
        assert!(!status.success(), "{entry}");
        assert!(
            stderr.contains("oauth.allowed_return_to"),
            "{entry}: {stderr}"
        );
    }
}

// ---- hookup.extra_secrets ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_extra_hookup_secrets_stop_the_daemon() {
    for secrets in [r#"["x"]"#, r#"["a-long-enough-secret", "fifteen-chars-x"]"#] {
        let db = TestDb::new(Backend::Sqlite).await;
        let (status, stderr) = serve_until_exit(
            &db,
            &[("BROKER_HOOKUP__EXTRA_SECRETS", secrets)],
            Duration::from_secs(20),
        );
        let status = status.unwrap_or_else(|| panic!("{secrets}: the daemon started"));
        assert!(!status.success(), "{secrets}");
        assert!(
            stderr.contains("hookup.extra_secrets"),
            "{secrets}: {stderr}"
        );
        assert!(stderr.contains("16"), "{stderr}");
        assert!(
            !stderr.contains("fifteen-chars-x"),
            "a secret in the log: {stderr}"
        );
    }
    // Long enough extra secrets open the hookup URL too.
    let db = TestDb::new(Backend::Sqlite).await;
    let mut config = DaemonConfig::new();
    config.extra_env.push((
        "BROKER_HOOKUP__EXTRA_SECRETS".into(),
        r#"["the-old-hookup-secret"]"#.into(),
    ));
    let daemon = Daemon::start(&db, config).await;
    let (status, _) = daemon
        .post_raw(
            &daemon.url("/hookup/the-old-hookup-secret"),
            client_credentials(7, "client-7", "a-secret")
                .to_string()
                .into_bytes(),
            "application/json",
        )
        .await;
    assert_eq!(status, 200);
}

backend_tests!(admin_keys_with_tenants_are_refused_and_stored_ones_are_invalid);
