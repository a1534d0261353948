//! Security review fixes at the HTTP edge: API-key roles, slow bodies, body limits, the Authorization scheme, return_to.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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
