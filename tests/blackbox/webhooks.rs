//! Signed webhooks: registration and its checks, every event delivered with a signature
//! verified here independently (HMAC-SHA256 per Standard Webhooks, checked against the
//! published test vector), retries after 500 and after a refused connection, a kill -9 with
//! the receiver down, 410 disabling the endpoint, manual retry, one endpoint failing while
//! another is served, and two replicas sending each event once.

use std::collections::HashMap;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use reqwest::Method;
use serde_json::{Value, json};
use sha2::Sha256;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::backend_tests;
use crate::helpers::*;

backend_tests!(
    webhooks_are_checked_registered_listed_and_deleted,
    every_event_is_delivered_signed_after_retries,
    a_hookup_answered_200_is_delivered_after_a_kill_with_the_receiver_down,
    gone_disables_the_endpoint_and_a_manual_retry_delivers,
    a_failing_slow_endpoint_does_not_delay_another,
);

/// Short retries and polls, so that tests need not wait minutes.
fn fast_config() -> DaemonConfig {
    let mut config = DaemonConfig::new();
    config.extra_env.extend([
        (
            "BROKER_EVENTS__WEBHOOK_RETRY_SCHEDULE".to_owned(),
            r#"["300ms", "300ms", "300ms", "300ms"]"#.to_owned(),
        ),
        (
            "BROKER_EVENTS__POLL_INTERVAL".to_owned(),
            "100ms".to_owned(),
        ),
        ("BROKER_EVENTS__TIMEOUT".to_owned(), "2s".to_owned()),
    ]);
    config
}

/// The signature check a receiver makes, written here from the specification alone.
fn expected_signature(secret: &str, id: &str, timestamp: &str, body: &[u8]) -> String {
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").expect("whsec_ prefix"))
        .expect("base64 secret");
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

#[test]
fn the_tests_verifier_matches_the_published_test_vector() {
    assert_eq!(
        expected_signature(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            "1614265330",
            br#"{"test": 2432232314}"#
        ),
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    );
}

/// One request the receiver got, its signature verified.
#[derive(Debug)]
struct Received {
    id: String,
    body: Value,
}

/// Every request the server received, each one's signature and timestamp checked.
async fn received(server: &MockServer, secret: &str) -> Vec<Received> {
    let now = chrono::Utc::now().timestamp();
    server
        .received_requests()
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|r| {
            let header = |name: &str| {
                r.headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_else(|| panic!("no {name} header"))
                    .to_owned()
            };
            let (id, ts, sig) = (
                header("webhook-id"),
                header("webhook-timestamp"),
                header("webhook-signature"),
            );
            assert_eq!(
                sig,
                expected_signature(secret, &id, &ts, &r.body),
                "signature of {id}"
            );
            let ts: i64 = ts.parse().unwrap();
            assert!((now - ts).abs() < 120, "a fresh timestamp");
            assert_eq!(header("content-type"), "application/json");
            let body: Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(body["id"], id.as_str());
            Received { id, body }
        })
        .collect()
}

async fn register(daemon: &Daemon, admin: &str, url: &str, events: Value) -> (i64, String) {
    let (status, created) = daemon
        .send(
            Method::POST,
            "/admin/webhooks",
            Some(admin),
            Some(json!({"url": url, "events": events, "description": "test"})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    (
        created["id"].as_i64().unwrap(),
        created["secret"].as_str().unwrap().to_owned(),
    )
}

async fn deliveries(daemon: &Daemon, admin: &str, id: i64) -> Vec<Value> {
    let (status, page) = daemon
        .get(&format!("/admin/webhooks/{id}/deliveries"), Some(admin))
        .await;
    assert_eq!(status, 200, "{page}");
    page["deliveries"].as_array().unwrap().clone()
}

/// Waits until `done` holds, up to `limit`.
async fn eventually<F, Fut>(limit: Duration, what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !done().await {
        assert!(started.elapsed() < limit, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A free port on 127.0.0.1 with nothing listening on it (yet).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn webhooks_are_checked_registered_listed_and_deleted(backend: Backend) {
    let db = TestDb::new(backend).await;
    let daemon = Daemon::start(&db, fast_config()).await;
    let admin = daemon.api_key("admin", &[]);
    let token = daemon.api_key("token", &[]);

    for (body, field) in [
        (
            json!({"url": "http://169.254.169.254/latest", "events": ["*"]}),
            "url",
        ),
        (
            json!({"url": "http://[fe80::1]:8080/", "events": ["*"]}),
            "url",
        ),
        (json!({"url": "/relative", "events": ["*"]}), "url"),
        (json!({"url": "ftp://example.com/", "events": ["*"]}), "url"),
        (
            json!({"url": "http://127.0.0.1:9/", "events": ["tenant.exploded"]}),
            "events",
        ),
        (
            json!({"url": "http://127.0.0.1:9/", "events": []}),
            "events",
        ),
    ] {
        let (status, problem) = daemon
            .send(
                Method::POST,
                "/admin/webhooks",
                Some(&admin),
                Some(body.clone()),
            )
            .await;
        assert_eq!(status, 400, "{body} -> {problem}");
        assert_eq!(problem["errors"][0]["field"], field, "{problem}");
    }
    let (status, _) = daemon
        .send(
            Method::POST,
            "/admin/webhooks",
            Some(&token),
            Some(json!({"url": "http://127.0.0.1:9/", "events": ["*"]})),
        )
        .await;
    assert_eq!(status, 403, "token keys cannot register webhooks");

    let (id, secret) = register(
        &daemon,
        &admin,
        "http://127.0.0.1:9/hook",
        json!(["tenant.registered", "tenant.removed"]),
    )
    .await;
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    assert!(key.len() >= 24);

    let (status, list) = daemon.get("/admin/webhooks", Some(&admin)).await;
    assert_eq!(status, 200);
    assert_eq!(list["webhooks"][0]["id"], id);
    assert_eq!(
        list["webhooks"][0]["events"],
        json!(["tenant.registered", "tenant.removed"])
    );
    assert_eq!(list["webhooks"][0]["state"], "active");
    let raw_secret = secret.strip_prefix("whsec_").unwrap();
    assert!(!list.to_string().contains(raw_secret), "never the secret");
    assert!(!daemon.log_text().contains(raw_secret), "never logged");
    assert!(
        !contains(&db.raw_bytes().await, raw_secret),
        "sealed at rest"
    );

    let path = format!("/admin/webhooks/{id}");
    assert_eq!(
        daemon
            .send(Method::DELETE, &path, Some(&admin), None)
            .await
            .0,
        204
    );
    assert_eq!(
        daemon
            .send(Method::DELETE, &path, Some(&admin), None)
            .await
            .0,
        404
    );
    let (_, list) = daemon.get("/admin/webhooks", Some(&admin)).await;
    assert_eq!(list["webhooks"], json!([]));
}

async fn every_event_is_delivered_signed_after_retries(backend: Backend) {
    let server = MockServer::start().await;
    // The first two attempts fail, every later one succeeds.
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500).set_body_string("receiver body, never stored"))
        .up_to_n_times(2)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(204))
        .with_priority(2)
        .mount(&server)
        .await;
    let db = TestDb::new(backend).await;
    let daemon = Daemon::start(&db, fast_config()).await;
    let admin = daemon.api_key("admin", &[]);
    let reader = daemon.api_key("token", &[]);
    let (id, secret) = register(
        &daemon,
        &admin,
        &format!("{}/hook", server.uri()),
        json!(["*"]),
    )
    .await;

    for provet_id in [2101, 2102, 2103] {
        let msg = client_credentials(provet_id, &format!("c-{provet_id}"), "s");
        assert_eq!(daemon.hookup(&msg).await.0, 200);
    }
    assert_eq!(
        daemon
            .send(Method::DELETE, "/admin/tenants/2103", Some(&admin), None)
            .await
            .0,
        200
    );
    eventually(Duration::from_secs(20), "four events delivered", || async {
        let d = deliveries(&daemon, &admin, id).await;
        d.len() == 4 && d.iter().all(|d| d["state"] == "delivered")
    })
    .await;

    let got = received(&server, &secret).await;
    assert_eq!(got.len(), 6, "two failed attempts, then four deliveries");
    // The webhook carries exactly the feed's envelopes.
    let (_, feed) = daemon.get("/v1/events?limit=100", Some(&reader)).await;
    let feed = feed["events"].as_array().unwrap().clone();
    assert_eq!(feed.len(), 4);
    for event in &feed {
        let copies: Vec<&Received> = got.iter().filter(|r| r.id == event["id"]).collect();
        assert!(!copies.is_empty(), "{event} delivered");
        for copy in copies {
            assert_eq!(&copy.body, event);
        }
    }
    let list = deliveries(&daemon, &admin, id).await;
    let retried: Vec<&Value> = list.iter().filter(|d| d["attempts"] != 1).collect();
    assert!(!retried.is_empty(), "{list:?}");
    for d in &list {
        assert_eq!(d["status"], 204);
        assert!(d["next_retry_at"].is_null());
        assert!(d["event_id"].as_str().unwrap().starts_with("evt_"));
    }
    assert!(!list.iter().any(|d| d.to_string().contains("never stored")));

    let (_, metrics) = daemon.get("/metrics", None).await;
    let text = metrics.as_str().unwrap_or_default().to_owned();
    assert!(
        text.contains("broker_webhook_deliveries_total{outcome=\"delivered\"} 4"),
        "{text}"
    );
    assert!(text.contains("broker_webhook_deliveries_total{outcome=\"retry\"} 2"));
    assert!(text.contains("broker_webhook_pending_deliveries"));
    assert!(text.contains("broker_webhook_oldest_pending_seconds"));
    assert!(
        !daemon
            .log_text()
            .contains(secret.strip_prefix("whsec_").unwrap())
    );
}

async fn a_hookup_answered_200_is_delivered_after_a_kill_with_the_receiver_down(backend: Backend) {
    let port = free_port();
    let db = TestDb::new(backend).await;
    let config = fast_config();
    let daemon = Daemon::start(&db, config.clone()).await;
    let admin = daemon.api_key("admin", &[]);
    let url = format!("http://127.0.0.1:{port}/hook");
    let (id, secret) = register(&daemon, &admin, &url, json!(["tenant.registered"])).await;
    assert_eq!(
        daemon.hookup(&client_credentials(2201, "c", "s")).await.0,
        200
    );
    // The receiver is down: the first attempt finds the connection refused.
    eventually(Duration::from_secs(10), "a refused attempt", || async {
        deliveries(&daemon, &admin, id)
            .await
            .first()
            .is_some_and(|d| d["state"] == "pending" && d["attempts"].as_i64() >= Some(1))
    })
    .await;
    let first = deliveries(&daemon, &admin, id).await.remove(0);
    assert!(first["status"].is_null(), "{first}");
    assert!(
        first["error"].as_str().unwrap().contains("connect"),
        "{first}"
    );
    assert!(first["next_retry_at"].is_string());
    daemon.kill();

    let daemon = Daemon::start(&db, config).await;
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let server = MockServer::builder().listener(listener).start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    eventually(
        Duration::from_secs(20),
        "delivered after the restart",
        || async {
            deliveries(&daemon, &admin, id)
                .await
                .first()
                .is_some_and(|d| d["state"] == "delivered")
        },
    )
    .await;
    let got = received(&server, &secret).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body["type"], "tenant.registered");
    assert_eq!(got[0].body["provet_id"], 2201);
}

async fn gone_disables_the_endpoint_and_a_manual_retry_delivers(backend: Backend) {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(410))
        .mount(&server)
        .await;
    let db = TestDb::new(backend).await;
    let daemon = Daemon::start(&db, fast_config()).await;
    let admin = daemon.api_key("admin", &[]);
    let (id, secret) = register(&daemon, &admin, &server.uri(), json!(["*"])).await;
    assert_eq!(
        daemon.hookup(&client_credentials(2301, "c", "s")).await.0,
        200
    );
    eventually(Duration::from_secs(10), "the delivery failed", || async {
        deliveries(&daemon, &admin, id)
            .await
            .first()
            .is_some_and(|d| d["state"] == "failed")
    })
    .await;
    let (_, list) = daemon.get("/admin/webhooks", Some(&admin)).await;
    assert_eq!(list["webhooks"][0]["state"], "disabled");
    assert!(list["webhooks"][0]["disabled_at"].is_string());
    let failed = deliveries(&daemon, &admin, id).await.remove(0);
    assert_eq!(failed["status"], 410);
    assert_eq!(failed["attempts"], 1);

    // A disabled endpoint gets no new deliveries...
    assert_eq!(
        daemon.hookup(&client_credentials(2302, "c", "s")).await.0,
        200
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(deliveries(&daemon, &admin, id).await.len(), 1);
    assert_eq!(received(&server, &secret).await.len(), 1);

    // ...but an operator can retry one by hand, whatever its state.
    server.reset().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    let event_id = failed["event_id"].as_str().unwrap();
    let (status, retried) = daemon
        .send(
            Method::POST,
            &format!("/admin/webhooks/{id}/deliveries/{event_id}/retry"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, 200, "{retried}");
    assert_eq!(retried["state"], "delivered");
    assert_eq!(retried["attempts"], 2);
    assert_eq!(retried["status"], 200);
    let got = received(&server, &secret).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].id, event_id);
    let unknown = format!("/admin/webhooks/{id}/deliveries/evt_00000000000fffff/retry");
    assert_eq!(
        daemon
            .send(Method::POST, &unknown, Some(&admin), None)
            .await
            .0,
        404
    );
    let bad = format!("/admin/webhooks/{id}/deliveries/nope/retry");
    assert_eq!(
        daemon.send(Method::POST, &bad, Some(&admin), None).await.0,
        400
    );
}

async fn a_failing_slow_endpoint_does_not_delay_another(backend: Backend) {
    let slow = MockServer::start().await;
    // Longer than events.timeout (2s): every attempt times out.
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500).set_delay(Duration::from_secs(5)))
        .mount(&slow)
        .await;
    let good = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&good)
        .await;
    let db = TestDb::new(backend).await;
    let daemon = Daemon::start(&db, fast_config()).await;
    let admin = daemon.api_key("admin", &[]);
    let (slow_id, _) = register(&daemon, &admin, &slow.uri(), json!(["*"])).await;
    let (good_id, good_secret) = register(&daemon, &admin, &good.uri(), json!(["*"])).await;

    let started = Instant::now();
    for provet_id in 2401..2421 {
        assert_eq!(
            daemon
                .hookup(&client_credentials(provet_id, "c", "s"))
                .await
                .0,
            200
        );
    }
    eventually(
        Duration::from_secs(6),
        "the good endpoint got every event",
        || async { received(&good, &good_secret).await.len() >= 20 },
    )
    .await;
    let took = started.elapsed();
    // Twenty events behind a slow endpoint at four attempts at a time would take 10 s.
    assert!(took < Duration::from_secs(6), "{took:?}");
    let got = received(&good, &good_secret).await;
    assert_eq!(got.len(), 20);
    let slow_list = deliveries(&daemon, &admin, slow_id).await;
    assert!(slow_list.iter().all(|d| d["state"] == "pending"));
    let good_list = deliveries(&daemon, &admin, good_id).await;
    assert!(good_list.iter().all(|d| d["state"] == "delivered"));
}

/// Two replicas on one PostgreSQL, one webhook, 50 hookups spread over both: each event
/// reaches the receiver exactly once (the receiver is slow enough for attempts to overlap).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_replicas_deliver_each_event_once() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_millis(50)))
        .mount(&server)
        .await;
    let db = TestDb::new(Backend::Postgres).await;
    let config = fast_config();
    let a = Daemon::start(&db, config.clone()).await;
    let b = Daemon::start(&db, config).await;
    let admin = a.api_key("admin", &[]);
    let (id, secret) = register(&a, &admin, &server.uri(), json!(["tenant.registered"])).await;
    for i in 0..50 {
        let replica = if i % 2 == 0 { &a } else { &b };
        let (status, body) = replica
            .hookup(&client_credentials(2500 + i, "c", "s"))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    eventually(Duration::from_secs(30), "fifty deliveries", || async {
        received(&server, &secret).await.len() >= 50
    })
    .await;
    // Give a duplicate the time to show up, if there were one.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = received(&server, &secret).await;
    let mut per_event: HashMap<String, usize> = HashMap::new();
    for r in &got {
        *per_event.entry(r.id.clone()).or_default() += 1;
    }
    assert_eq!(per_event.len(), 50);
    assert!(per_event.values().all(|&n| n == 1), "{per_event:?}");
    let (_, page) = b
        .get(
            &format!("/admin/webhooks/{id}/deliveries?limit=100"),
            Some(&admin),
        )
        .await;
    let list = page["deliveries"].as_array().unwrap();
    assert_eq!(list.len(), 50);
    assert!(
        list.iter()
            .all(|d| d["state"] == "delivered" && d["attempts"] == 1)
    );
}
