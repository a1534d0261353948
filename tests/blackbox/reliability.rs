//! Faults and abuse: a kill -9 mid-burst, garbage bodies, slow and oversized clients,
//! names that resolve to internal addresses, every route's access control.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::json;
use tokio::sync::Mutex;
use wiremock::matchers::path;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::backend_tests;
use crate::discovery_faults::{document, jwks};
use crate::helpers::*;

/// Thousands of hookups, the daemon killed with SIGKILL mid-burst: every message that was
/// answered 200 is stored, readable and decryptable after a restart.
async fn a_kill_during_a_hookup_burst_loses_nothing_acknowledged(backend: Backend) {
    let db = TestDb::new(backend).await;
    let config = DaemonConfig::new();
    let daemon = Daemon::start(&db, config.clone()).await;
    let url = Arc::new(daemon.hookup_url.clone());
    let acknowledged = Arc::new(Mutex::new(Vec::<i64>::new()));
    let next = Arc::new(std::sync::atomic::AtomicI64::new(1));
    let mut senders = Vec::new();
    for _ in 0..32 {
        let (url, acknowledged, next) = (url.clone(), acknowledged.clone(), next.clone());
        senders.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("client");
            loop {
                let id = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if id > 3000 {
                    return;
                }
                let body =
                    client_credentials(id, &format!("burst-{id}"), &format!("burst-secret-{id}"));
                match client.post(url.as_str()).json(&body).send().await {
                    Ok(r) if r.status() == 200 => acknowledged.lock().await.push(id),
                    Ok(_) => {}
                    // The daemon is gone: this sender is done.
                    Err(_) => return,
                }
            }
        }));
    }
    // Kill once a good part of the burst is acknowledged.
    let started = Instant::now();
    while acknowledged.lock().await.len() < 600 && started.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    daemon.kill();
    for s in senders {
        let _ = s.await;
    }
    let acknowledged = acknowledged.lock().await.clone();
    assert!(
        acknowledged.len() >= 600,
        "only {} acknowledged",
        acknowledged.len()
    );
    assert!(
        acknowledged.len() < 3000,
        "the kill came too late to mean anything"
    );

    let daemon = Daemon::start(&db, config).await;
    let admin = daemon.api_key("admin", &[]);
    let stored: std::collections::HashSet<i64> = {
        let mut ids = std::collections::HashSet::new();
        let mut after = 0;
        loop {
            let (_, page) = daemon
                .get(
                    &format!("/admin/tenants?limit=500&after={after}"),
                    Some(&admin),
                )
                .await;
            for t in page["tenants"].as_array().expect("tenants") {
                ids.insert(t["provet_id"].as_i64().expect("id"));
            }
            match page["next_after"].as_i64() {
                Some(n) => after = n,
                None => break,
            }
        }
        ids
    };
    let missing: Vec<&i64> = acknowledged
        .iter()
        .filter(|id| !stored.contains(id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged messages are missing: {missing:?}",
        missing.len()
    );
    // Decryptable: the same message is recognised as unchanged, which opens the stored secret.
    for id in acknowledged.iter().step_by(25) {
        let body = client_credentials(*id, &format!("burst-{id}"), &format!("burst-secret-{id}"));
        let (status, answer) = daemon.hookup(&body).await;
        assert_eq!(
            (status, answer["status"].clone()),
            (200, json!("unchanged")),
            "tenant {id}"
        );
    }
}

/// Hundreds of malformed bodies: never a 5xx, and the daemon stays healthy.
async fn malformed_bodies_never_cause_a_5xx(backend: Backend) {
    let db = TestDb::new(backend).await;
    let daemon = Daemon::start(&db, DaemonConfig::new()).await;
    let mut bodies: Vec<Vec<u8>> = Vec::new();
    let mut rng = rand::rng();
    for n in 0..200 {
        let len = rng.random_range(0..(64 * n + 1));
        bodies.push((0..len).map(|_| rng.random::<u8>()).collect());
    }
    bodies.push(format!("{}{}", "[".repeat(100_000 / 2), "]".repeat(100_000 / 2)).into_bytes());
    bodies.push(format!("{}1{}", r#"{"a":"#.repeat(5000), "}".repeat(5000)).into_bytes());
    for number in [
        "1e999999",
        "-1e999999",
        "123456789012345678901234567890",
        "0.0000000000000000001",
        "NaN",
        "Infinity",
        "-0",
    ] {
        bodies.push(format!(r#"{{"provet_id": {number}}}"#).into_bytes());
        let mut m = client_credentials(1, "n", "n-secret");
        m["departments"] = json!(null);
        let text = m.to_string().replace(
            "\"departments\":null",
            &format!("\"departments\":[{number}]"),
        );
        bodies.push(text.into_bytes());
    }
    for value in [
        json!(true),
        json!([]),
        json!({}),
        json!(1),
        json!("x"),
        json!([[1]]),
        json!({"a": null}),
    ] {
        for field in [
            "provet_id",
            "client_id",
            "client_secret",
            "token_url",
            "redirect_uris",
            "departments",
        ] {
            let mut m = client_credentials(2, "w", "w-secret");
            m[field] = value.clone();
            bodies.push(m.to_string().into_bytes());
        }
    }
    for nasty in [
        "\u{0}",
        "a\u{0}b",
        "\u{feff}",
        "\u{202e}",
        "\u{10ffff}",
        "𝕏",
    ] {
        let mut m = client_credentials(3, nasty, nasty);
        m["token_url"] = json!(format!("https://us.provetcloud.com/{nasty}"));
        bodies.push(m.to_string().into_bytes());
    }
    bodies.push(br#"{"provet_id": 4, "client_id": "\ud800"}"#.to_vec());
    bodies.push(br#"{"provet_id": 4, "client_id": "\udc00\ud800"}"#.to_vec());
    bodies.push(b"\xff\xfe{\"provet_id\": 1}".to_vec());
    bodies.push(br#"{"provet_id": 5, "provet_id": 6}"#.to_vec());
    assert!(bodies.len() >= 250, "{}", bodies.len());
    for (n, body) in bodies.into_iter().enumerate() {
        let (status, answer) = daemon
            .post_raw(&daemon.hookup_url, body, "application/json")
            .await;
        assert!(status < 500, "body {n}: {status} {answer}");
    }
    assert_eq!(daemon.get("/healthz", None).await.0, 200);
    assert_eq!(daemon.get("/readyz", None).await.0, 200);
}

backend_tests!(
    a_kill_during_a_hookup_burst_loses_nothing_acknowledged,
    malformed_bodies_never_cause_a_5xx,
);

/// Slow clients are cut off by the server's timeouts; oversized headers are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_oversized_clients_are_bounded() {
    let db = TestDb::new(Backend::Sqlite).await;
    let mut config = DaemonConfig::new();
    config
        .extra_env
        .push(("BROKER_SERVER__REQUEST_HEADER_TIMEOUT".into(), "1s".into()));
    config
        .extra_env
        .push(("BROKER_SERVER__REQUEST_BODY_TIMEOUT".into(), "1s".into()));
    let daemon = Daemon::start(&db, config).await;
    let address = daemon.base.trim_start_matches("http://").to_owned();
    let secret_path = daemon.hookup_url.replace(&daemon.base, "");

    // Slowloris: half a request head, then nothing. The server answers 408 or closes.
    let addr = address.clone();
    let cut_off = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(&addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        stream
            .write_all(b"POST /healthz HTTP/1.1\r\nHost: x\r\n")
            .expect("write");
        let started = Instant::now();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        (
            started.elapsed(),
            String::from_utf8_lossy(&answer).into_owned(),
        )
    })
    .await
    .expect("slowloris");
    assert!(
        cut_off.0 < Duration::from_secs(5),
        "held for {:?}",
        cut_off.0
    );
    assert!(
        cut_off.1.is_empty() || cut_off.1.contains("408"),
        "{}",
        cut_off.1
    );

    // A hookup body that trickles: cut off after the body timeout.
    let addr = address.clone();
    let trickle = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(&addr).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let head = format!(
            "POST {secret_path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{"
        );
        stream.write_all(head.as_bytes()).expect("write");
        let started = Instant::now();
        let mut answer = [0u8; 512];
        let n = stream.read(&mut answer).unwrap_or(0);
        (started.elapsed(), String::from_utf8_lossy(&answer[..n]).into_owned())
    })
    .await
    .expect("trickle");
    assert!(
        trickle.0 < Duration::from_secs(5),
        "held for {:?}",
        trickle.0
    );
    assert!(
        trickle.1.is_empty() || trickle.1.contains("408"),
        "{}",
        trickle.1
    );

    // Request heads are bounded (actix-http: 128 KiB, 96 headers): 256 KiB is refused.
    let response = daemon
        .http
        .get(daemon.url("/healthz"))
        .header("x-padding", "a".repeat(256 * 1024))
        .send()
        .await;
    match response {
        Ok(r) => assert_eq!(r.status().as_u16(), 431),
        Err(e) => assert!(e.is_request() || e.is_connect(), "{e}"),
    }
    let mut many = daemon.http.get(daemon.url("/healthz"));
    for n in 0..120 {
        many = many.header(format!("x-h{n}"), "v");
    }
    match many.send().await {
        Ok(r) => assert_eq!(r.status().as_u16(), 431),
        Err(e) => assert!(e.is_request() || e.is_connect(), "{e}"),
    }
    assert_eq!(daemon.get("/healthz", None).await.0, 200);
}

/// A name on the allowlist that resolves to a loopback address is refused at connection
/// time; listing the address itself allows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_resolving_to_internal_addresses_are_refused() {
    let server = MockServer::start().await;
    let port = server.address().port();
    let issuer = format!("http://localhost:{port}/7/oauth2");
    Mock::given(path("/7/oauth2/.well-known/openid-configuration"))
        .respond_with(ResponseTemplate::new(200).set_body_json(document(&issuer)))
        .mount(&server)
        .await;
    Mock::given(path("/7/oauth2/.well-known/jwks.json"))
        .respond_with(ResponseTemplate::new(200).set_body_json(jwks()))
        .mount(&server)
        .await;
    let message = json!({
        "provet_id": 7, "client_id": "ssrf", "client_secret": "ssrf-secret", "algorithm": "RS256",
        "authorization_grant_type": "client_credentials", "client_type": "confidential", "redirect_uris": "",
        "token_url": format!("{issuer}/token/"), "authorize_url": format!("{issuer}/authorize/"),
        "openid_autodiscovery_url": format!("{issuer}/.well-known/openid-configuration"),
    });
    for (allowed, works) in [
        (r#"["localhost"]"#, false),
        (r#"["localhost", "127.0.0.1", "::1"]"#, true),
    ] {
        let db = TestDb::new(Backend::Sqlite).await;
        let mut config = DaemonConfig::new();
        config
            .extra_env
            .push(("BROKER_HOOKUP__ALLOWED_HOSTS".into(), allowed.into()));
        config
            .extra_env
            .push(("BROKER_HOOKUP__ALLOW_HTTP".into(), "true".into()));
        let daemon = Daemon::start(&db, config).await;
        let admin = daemon.api_key("admin", &[]);
        assert_eq!(
            daemon.hookup(&message).await.0,
            200,
            "the name itself is allowed"
        );
        let (_, d) = daemon
            .send(
                reqwest::Method::POST,
                "/admin/tenants/7/discovery",
                Some(&admin),
                None,
            )
            .await;
        if works {
            assert_eq!(d["state"], "ok", "{d}");
        } else {
            assert_eq!(d["state"], "failed", "{d}");
            let error = d["last_error"].as_str().unwrap_or_default();
            assert!(error.contains("resolves only to"), "{error}");
        }
    }
}

/// Every route answers 401 without a key, 403 to the wrong role, and repeated failures from
/// one address get 429 while valid keys keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_checks_its_role_and_guessing_is_throttled() {
    let db = TestDb::new(Backend::Sqlite).await;
    // The tenant's token URL is a closed port on 127.0.0.1: routes that call the provider
    // must reach nothing outside this machine.
    // The failure limit is above the failures the route walk itself makes (two per protected
    // route at most), so that only the guessing below reaches it.
    let daemon = Daemon::start(
        &db,
        mock_provider_config(&[("BROKER_SERVER__AUTH_FAILURE_LIMIT", "50")]),
    )
    .await;
    let mut message = client_credentials(9, "acl", "acl-secret");
    message["token_url"] = json!("http://127.0.0.1:1/9/oauth2/token/");
    message["authorize_url"] = json!("http://127.0.0.1:1/9/oauth2/authorize/");
    assert_eq!(daemon.hookup(&message).await.0, 200);
    let admin = daemon.api_key("admin", &[]);
    let token = daemon.api_key("token", &[9]);
    let (_, doc) = daemon.get("/openapi.json", None).await;
    let public = [
        "/hookup/{hookup_secret}",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
        "/oauth/callback",
    ];
    let mut checked = 0;
    for (route, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("item").keys() {
            let path = route
                .replace("{provet_id}", "9")
                .replace("{id}", "999")
                .replace("{subject}", "nobody")
                .replace("{hookup_secret}", "x");
            let method =
                reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
            let body = (method == reqwest::Method::POST).then(|| json!({}));
            let (without, _) = daemon.send(method.clone(), &path, None, body.clone()).await;
            if public.contains(&route.as_str()) {
                assert_ne!(without, 401, "{method} {route} is public");
                continue;
            }
            assert_eq!(without, 401, "{method} {route} without a key");
            let (with_token, _) = daemon
                .send(method.clone(), &path, Some(&token), body.clone())
                .await;
            let (with_admin, _) = daemon.send(method.clone(), &path, Some(&admin), body).await;
            assert!(
                with_admin != 401 && with_admin != 403,
                "{method} {route} with an admin key: {with_admin}"
            );
            if route.starts_with("/admin/") {
                assert_eq!(with_token, 403, "{method} {route} with a token key");
            } else {
                assert!(
                    with_token != 401 && with_token != 403,
                    "{method} {route} with a token key: {with_token}"
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 14, "{checked} routes checked");

    // (The loop removed tenant 9 with DELETE; Provet installs it again.)
    assert_eq!(daemon.hookup(&message).await.0, 200);
    // Guessing: after the limit, 429 with Retry-After; a valid key still works.
    let mut statuses = HashMap::new();
    for n in 0..80 {
        let (status, _) = daemon
            .get("/v1/tenants/9", Some(&format!("pbk_guess{n}")))
            .await;
        *statuses.entry(status).or_insert(0) += 1;
    }
    assert!(
        statuses.get(&429).copied().unwrap_or(0) >= 15,
        "{statuses:?}"
    );
    let response = daemon
        .http
        .get(daemon.url("/v1/tenants/9"))
        .bearer_auth("pbk_guess")
        .send()
        .await
        .expect("r");
    assert_eq!(response.status(), 429);
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(daemon.get("/v1/tenants/9", Some(&token)).await.0, 200);
}

/// A replica killed while it holds a grant's refresh lock (waiting on a slow provider):
/// another replica gets the lock within its bound, and the grant still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_holding_the_refresh_lock_is_taken_over() {
    let db = TestDb::new(Backend::Postgres).await;
    let server = MockServer::start().await;
    let base = server.uri();
    Mock::given(wiremock::matchers::method("POST"))
        .and(path("/5/token/"))
        .and(wiremock::matchers::body_string_contains("grant_type=authorization_code"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": "at-0", "token_type": "Bearer", "expires_in": 3600, "refresh_token": "rt-0", "scope": "restapi"
        })))
        .mount(&server)
        .await;
    // Refreshes are slow (the provider thinks for 3 s) and always rotate.
    Mock::given(wiremock::matchers::method("POST"))
        .and(path("/5/token/"))
        .and(wiremock::matchers::body_string_contains("grant_type=refresh_token"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({
                    "access_token": "at-n", "token_type": "Bearer", "expires_in": 3600, "refresh_token": "rt-n", "scope": "restapi"
                }))
                .set_delay(Duration::from_secs(3)),
        )
        .mount(&server)
        .await;
    let config = mock_provider_config(&[("BROKER_TOKENS__TIMEOUT", "5s")]);
    let a = Daemon::start(&db, config.clone()).await;
    let b = Daemon::start(&db, config).await;
    let key = a.api_key("admin", &[]);
    let message = json!({
        "provet_id": 5, "client_id": "lock", "client_secret": "lock-secret", "algorithm": null,
        "authorization_grant_type": "authorization-code", "client_type": "confidential",
        "redirect_uris": "http://broker.test/oauth/callback",
        "token_url": format!("{base}/5/token/"), "authorize_url": format!("{base}/5/authorize/"),
        "openid_autodiscovery_url": null,
    });
    assert_eq!(a.hookup(&message).await.0, 200);
    let (_, started) = a
        .send(
            reqwest::Method::POST,
            "/v1/tenants/5/authorizations",
            Some(&key),
            None,
        )
        .await;
    let state = query_param(&started["authorize_url"], "state");
    let (status, page, _) = crate::connect::deliver(
        &a,
        &format!("http://broker.test/oauth/callback?code=c&state={state}"),
    )
    .await;
    assert_eq!(status, 200, "{page}");

    // A starts a refresh and holds the lock while the provider thinks; then A dies.
    let a = Arc::new(a);
    let holder = {
        let (a, key) = (a.clone(), key.clone());
        tokio::spawn(async move {
            crate::tokens::token(&a, &key, 5, Some(json!({"force_refresh": true}))).await
        })
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    let killed = std::process::Command::new("kill")
        .args(["-9", &a.pid().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let _ = holder.await;
    let started = Instant::now();
    let (status, answer) =
        crate::tokens::token(&b, &key, 5, Some(json!({"force_refresh": true}))).await;
    assert_eq!(status, 200, "{answer}");
    // The dead replica's lease runs out after 2 x the upstream timeout + 2 s (12 s here).
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
    let (status, again) =
        crate::tokens::token(&b, &key, 5, Some(json!({"force_refresh": true}))).await;
    assert_eq!(status, 200, "the grant still works: {again}");
}
