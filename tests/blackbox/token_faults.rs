//! Token requests against a provider that fails: an HTTP mock, for the faults a real
//! provider does not produce on demand.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wiremock::matchers::{body_string_contains, header_exists, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::discovery_faults::{document, jwks};
use crate::helpers::*;
use crate::tokens::token;

const TOKEN: &str = "/7/oauth2/token/";

async fn daemon(db: &TestDb) -> Daemon {
    let config = mock_provider_config(&[
        ("BROKER_TOKENS__TIMEOUT", "1s"),
        ("BROKER_DISCOVERY__ENABLED", "true"),
    ]);
    Daemon::start(db, config).await
}

/// Each test's start: a daemon on SQLite with a token key, and a mock provider whose answers
/// the test mounts before it sends the hookup. The database outlives the daemon.
async fn set_up() -> (TestDb, Daemon, String, MockServer) {
    let db = TestDb::new(Backend::Sqlite).await;
    let d = daemon(&db).await;
    let key = d.api_key("token", &[]);
    (db, d, key, MockServer::start().await)
}

fn hookup(base: &str, openid: bool) -> Value {
    let mut message = mock_client_credentials(base, 7, "mock-client", "mock-secret", TOKEN);
    if openid {
        message["algorithm"] = json!("RS256");
        message["openid_autodiscovery_url"] =
            json!(format!("{base}/7/oauth2/.well-known/openid-configuration"));
    }
    message
}

fn issued(access: &str, expires_in: u64) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "access_token": access, "token_type": "Bearer", "expires_in": expires_in, "scope": "restapi"
    }))
}

async fn token_requests(server: &MockServer) -> usize {
    server
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|r| r.url.path() == TOKEN)
        .count()
}

/// 5xx and 429: 503 with Retry-After (the provider's when it sent one), then a backoff
/// during which the provider hears nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_provider_gives_503_with_retry_after_and_backs_off() {
    let (_db, d, key, server) = set_up().await;
    Mock::given(method("POST"))
        .and(path(TOKEN))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "7"))
        .mount(&server)
        .await;
    assert_eq!(d.hookup(&hookup(&server.uri(), false)).await.0, 200);
    let response = d
        .http
        .post(d.url("/v1/tenants/7/token"))
        .bearer_auth(&key)
        .send()
        .await
        .expect("token");
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "7");
    let problem: Value = response.json().await.expect("json");
    assert_eq!(problem["code"], "upstream_unavailable");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("429"),
        "{problem}"
    );
    // Backing off: more callers, no more requests upstream.
    for _ in 0..5 {
        assert_eq!(token(&d, &key, 7, None).await.0, 503);
    }
    assert_eq!(token_requests(&server).await, 1);
    assert_eq!(answers(&d, "429").await, 1);
    assert_eq!(answers(&d, "5xx").await, 0);
    // The daemon itself is healthy.
    assert_eq!(d.get("/healthz", None).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_provider_gives_503_within_the_timeout() {
    let (_db, d, key, server) = set_up().await;
    Mock::given(method("POST"))
        .and(path(TOKEN))
        .respond_with(issued("late", 3600).set_delay(Duration::from_secs(30)))
        .mount(&server)
        .await;
    assert_eq!(d.hookup(&hookup(&server.uri(), false)).await.0, 200);
    let started = Instant::now();
    let (status, problem) = token(&d, &key, 7, None).await;
    assert_eq!(status, 503, "{problem}");
    assert_eq!(problem["code"], "upstream_unavailable");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_500_give_503_and_a_valid_cached_token_is_still_served() {
    let (_db, d, key, server) = set_up().await;
    Mock::given(method("POST"))
        .and(path(TOKEN))
        .respond_with(issued("first-token", 600))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(TOKEN))
        .respond_with(ResponseTemplate::new(200).set_body_string("<html>oops</html>"))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(TOKEN))
        .respond_with(ResponseTemplate::new(500))
        .mount(&server)
        .await;
    assert_eq!(d.hookup(&hookup(&server.uri(), false)).await.0, 200);
    let (status, first) = token(&d, &key, 7, None).await;
    assert_eq!(
        (status, first["access_token"].clone()),
        (200, json!("first-token"))
    );
    // The provider now sends garbage, then 500s. A caller forcing a refresh wanted a new
    // token (its old one failed): it hears 503 with Retry-After, not the old token.
    let (status, problem) = token(&d, &key, 7, Some(json!({"force_refresh": true}))).await;
    assert_eq!(status, 503, "{problem}");
    assert_eq!(problem["code"], "upstream_unavailable");
    // The cached token still has ~600 s, which meets min_ttl 60: other callers keep it.
    let (status, served) = token(&d, &key, 7, None).await;
    assert_eq!(status, 200, "{served}");
    assert_eq!(served["access_token"], "first-token");
    // A caller who needs more life than it has gets the failure.
    let (status, problem) = token(&d, &key, 7, Some(json!({"min_ttl": 3000}))).await;
    assert_eq!(status, 503, "{problem}");
    assert_eq!(problem["code"], "upstream_unavailable");
    let garbage_seen = token_requests(&server).await;
    assert!(garbage_seen >= 2);
    // Each answer counted by its status class: the token, the garbage (no usable answer),
    // and the 500s.
    assert_eq!(answers(&d, "2xx").await, 1);
    assert_eq!(answers(&d, "none").await, 1);
    assert_eq!(answers(&d, "5xx").await, garbage_seen - 2);
    assert_eq!(answers(&d, "4xx").await, 0);
}

/// `broker_upstream_token_answers_total{class=...}` from `/metrics`.
async fn answers(d: &Daemon, class: &str) -> usize {
    let series = format!("broker_upstream_token_answers_total{{class=\"{class}\"}}");
    d.metric_value(&series).await as usize
}

/// When discovery says the token endpoint takes only client_secret_post, the secret goes in
/// the form body instead of HTTP Basic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_secret_post_when_that_is_all_the_provider_advertises() {
    let (_db, d, key, server) = set_up().await;
    let admin = d.api_key("admin", &[]);
    let issuer = format!("{}/7/oauth2", server.uri());
    let mut doc = document(&issuer);
    doc["token_endpoint_auth_methods_supported"] = json!(["client_secret_post"]);
    Mock::given(path("/7/oauth2/.well-known/openid-configuration"))
        .respond_with(ResponseTemplate::new(200).set_body_json(doc))
        .mount(&server)
        .await;
    Mock::given(path("/7/oauth2/.well-known/jwks.json"))
        .respond_with(ResponseTemplate::new(200).set_body_json(jwks()))
        .mount(&server)
        .await;
    // Only a form body with the secret in it gets a token; Basic gets 401.
    Mock::given(method("POST"))
        .and(path(TOKEN))
        .and(header_exists("authorization"))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({"error": "invalid_client"})))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(TOKEN))
        .and(body_string_contains("client_secret=mock-secret"))
        .and(body_string_contains("client_id=mock-client"))
        .and(body_string_contains("grant_type=client_credentials"))
        .respond_with(issued("posted", 3600))
        .mount(&server)
        .await;
    assert_eq!(d.hookup(&hookup(&server.uri(), true)).await.0, 200);
    for _ in 0..100 {
        let (_, t) = d.get("/admin/tenants/7", Some(&admin)).await;
        if t["discovery"]["state"] == "ok" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, answer) = token(&d, &key, 7, None).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["access_token"], "posted");
    let request = server
        .received_requests()
        .await
        .unwrap_or_default()
        .into_iter()
        .find(|r| r.url.path() == TOKEN)
        .expect("a token request");
    assert_eq!(
        request.headers["content-type"],
        "application/x-www-form-urlencoded"
    );
}

/// No `expires_in`: the JWT's `exp` sets the lifetime; a token without either gets the
/// configured default, never zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lifetime_comes_from_the_jwt_when_expires_in_is_missing() {
    let (_db, d, key, server) = set_up().await;
    let exp = chrono::Utc::now().timestamp() + 1234;
    let b64 = |v: Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let jwt = format!(
        "{}.{}.c2ln",
        b64(json!({"alg": "RS256", "typ": "JWT"})),
        b64(json!({"exp": exp, "sub": "x"}))
    );
    Mock::given(method("POST"))
        .and(path(TOKEN))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"access_token": jwt, "token_type": "Bearer"})),
        )
        .mount(&server)
        .await;
    assert_eq!(d.hookup(&hookup(&server.uri(), false)).await.0, 200);
    let (status, answer) = token(&d, &key, 7, None).await;
    assert_eq!(status, 200, "{answer}");
    let expires_in = answer["expires_in"].as_i64().expect("expires_in");
    assert!((1225..=1234).contains(&expires_in), "{answer}");
}

/// A huge answer and a refused connection: 503, and another tenant is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_answers_and_refused_connections_stay_with_their_tenant() {
    let (_db, d, key, server) = set_up().await;
    Mock::given(method("POST"))
        .and(path(TOKEN))
        .respond_with(ResponseTemplate::new(200).set_body_string(format!(
            r#"{{"access_token": "{}", "token_type": "Bearer"}}"#,
            "x".repeat(4 * 1024 * 1024)
        )))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/8/oauth2/token/"))
        .respond_with(issued("healthy", 3600))
        .mount(&server)
        .await;
    assert_eq!(d.hookup(&hookup(&server.uri(), false)).await.0, 200);
    let (status, problem) = token(&d, &key, 7, None).await;
    assert_eq!(status, 503, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("over"),
        "{problem}"
    );
    // Tenant 8 on the same provider is fine.
    let mut other = hookup(&server.uri(), false);
    other["provet_id"] = json!(8);
    other["token_url"] = json!(format!("{}/8/oauth2/token/", server.uri()));
    assert_eq!(d.hookup(&other).await.0, 200);
    assert_eq!(token(&d, &key, 8, None).await.1["access_token"], "healthy");
    // Tenant 9's provider refuses connections.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let mut refused = hookup(&format!("http://127.0.0.1:{port}"), false);
    refused["provet_id"] = json!(9);
    refused["token_url"] = json!(format!("http://127.0.0.1:{port}/9/oauth2/token/"));
    assert_eq!(d.hookup(&refused).await.0, 200);
    let (status, problem) = token(&d, &key, 9, None).await;
    assert_eq!(status, 503, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("could not connect"),
        "{problem}"
    );
    assert_eq!(d.get("/healthz", None).await.0, 200);
}
