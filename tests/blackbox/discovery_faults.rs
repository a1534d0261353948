//! Discovery against a provider that misbehaves. An HTTP mock is right here: a real
//! provider does not refuse, stall, or send garbage on demand.

use std::time::Duration;

use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::*;

const WELL_KNOWN: &str = "/7/oauth2/.well-known/openid-configuration";
const JWKS: &str = "/7/oauth2/.well-known/jwks.json";

/// A daemon that may call 127.0.0.1 and localhost over http, with a 1 s discovery timeout and
/// a 60 s first retry (so a backoff is visible).
async fn daemon(db: &TestDb) -> Daemon {
    let mut config = DaemonConfig::new();
    config.extra_env.extend([
        (
            "BROKER_HOOKUP__ALLOWED_HOSTS".to_owned(),
            r#"["127.0.0.1", "localhost"]"#.to_owned(),
        ),
        ("BROKER_HOOKUP__ALLOW_HTTP".to_owned(), "true".to_owned()),
        ("BROKER_DISCOVERY__TIMEOUT".to_owned(), "1s".to_owned()),
        ("BROKER_DISCOVERY__RETRY_BASE".to_owned(), "60s".to_owned()),
        ("BROKER_DISCOVERY__ENABLED".to_owned(), "true".to_owned()),
    ]);
    Daemon::start(db, config).await
}

/// A hookup whose URLs all point at `base` (tenant 7).
pub fn hookup_for(base: &str, provet_id: i64) -> Value {
    json!({
        "provet_id": provet_id,
        "client_id": format!("client-{provet_id}"),
        "client_secret": format!("secret-{provet_id}"),
        "algorithm": "RS256",
        "authorization_grant_type": "authorization-code",
        "client_type": "confidential",
        "redirect_uris": "http://broker.test/oauth/callback",
        "token_url": format!("{base}/{provet_id}/oauth2/token/"),
        "authorize_url": format!("{base}/{provet_id}/oauth2/authorize/"),
        "openid_autodiscovery_url": format!("{base}/{provet_id}/oauth2/.well-known/openid-configuration"),
    })
}

pub fn document(issuer: &str) -> Value {
    json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/authorize/"),
        "token_endpoint": format!("{issuer}/token/"),
        "userinfo_endpoint": format!("{issuer}/userinfo/"),
        "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256", "HS256"],
        "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
    })
}

pub fn jwks() -> Value {
    json!({"keys": [{
        "kty": "RSA", "use": "sig", "alg": "RS256", "kid": "test-key",
        "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw",
        "e": "AQAB"
    }]})
}

async fn admin_view(daemon: &Daemon, admin: &str, id: i64) -> Value {
    daemon
        .get(&format!("/admin/tenants/{id}"), Some(admin))
        .await
        .1["discovery"]
        .clone()
}

/// Waits until the worker has made its first attempt.
async fn settled(daemon: &Daemon, admin: &str, id: i64) -> Value {
    for _ in 0..100 {
        let d = admin_view(daemon, admin, id).await;
        if d["state"] != "pending" {
            return d;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("discovery for {id} stayed pending");
}

/// Registers the tenant, lets the worker fail, checks the error and the backoff, then checks
/// that the admin rerun runs again at once.
async fn fails_with(
    daemon: &Daemon,
    admin: &str,
    base: &str,
    expected: &[&str],
    requests: impl Fn() -> usize,
) {
    assert_eq!(daemon.hookup(&hookup_for(base, 7)).await.0, 200);
    let d = settled(daemon, admin, 7).await;
    assert_eq!(d["state"], "failed", "{d}");
    let error = d["last_error"].as_str().unwrap_or_default().to_owned();
    for phrase in expected {
        assert!(error.contains(phrase), "`{error}` does not say `{phrase}`");
    }
    assert_eq!(d["attempts"], 1);
    // Backed off: the next try is about retry_base (60 s ± 20%) away, and the worker does not
    // hammer the provider meanwhile.
    let next: chrono::DateTime<chrono::Utc> = d["next_refresh_at"]
        .as_str()
        .expect("next")
        .parse()
        .expect("time");
    let wait = next - chrono::Utc::now();
    assert!(wait > chrono::Duration::seconds(40), "next try in {wait}");
    let seen = requests();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(requests(), seen, "the worker retried before its backoff");

    let (status, rerun) = daemon
        .send(
            reqwest::Method::POST,
            "/admin/tenants/7/discovery",
            Some(admin),
            None,
        )
        .await;
    assert_eq!(status, 200, "{rerun}");
    assert_eq!(rerun["state"], "failed");
    assert_eq!(rerun["attempts"], 2);
    assert!(requests() > seen, "the rerun must fetch again");
    // Every admin view agrees, and nothing secret is in the error.
    assert!(!rerun.to_string().contains("secret-7"));
}

/// A fresh SQLite database, the daemon above on it, an admin key and a mock provider (the
/// database first, so that a caller's bindings drop it after the daemon).
async fn setup() -> (TestDb, Daemon, String, MockServer) {
    let db = TestDb::new(Backend::Sqlite).await;
    let d = daemon(&db).await;
    let admin = d.api_key("admin", &[]);
    (db, d, admin, MockServer::start().await)
}

/// The mock answers `route` with `answer`.
async fn serve(server: &MockServer, route: &str, answer: ResponseTemplate) {
    Mock::given(path(route))
        .respond_with(answer)
        .mount(server)
        .await;
}

fn count(server: &MockServer) -> impl Fn() -> usize + '_ {
    move || futures_executor(server.received_requests()).map_or(0, |r| r.len())
}

/// `received_requests` is async; the assertions above are simpler with a blocking read.
fn futures_executor<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_500_fails_and_backs_off() {
    let (_db, d, admin, server) = setup().await;
    serve(&server, WELL_KNOWN, ResponseTemplate::new(500)).await;
    fails_with(
        &d,
        &admin,
        &server.uri(),
        &["HTTP 500", "discovery document"],
        count(&server),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_fails() {
    let (_db, d, admin, server) = setup().await;
    serve(
        &server,
        WELL_KNOWN,
        ResponseTemplate::new(200).set_body_string("<html>hello</html>"),
    )
    .await;
    fails_with(&d, &admin, &server.uri(), &["not JSON"], count(&server)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_document_fails() {
    let (_db, d, admin, server) = setup().await;
    serve(
        &server,
        WELL_KNOWN,
        ResponseTemplate::new(200).set_body_string(" ".repeat(1024 * 1024 + 1)),
    )
    .await;
    fails_with(
        &d,
        &admin,
        &server.uri(),
        &["over 1048576 bytes"],
        count(&server),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_provider_times_out() {
    let (_db, d, admin, server) = setup().await;
    let issuer = format!("{}/7/oauth2", server.uri());
    serve(
        &server,
        WELL_KNOWN,
        ResponseTemplate::new(200)
            .set_body_json(document(&issuer))
            .set_delay(Duration::from_secs(5)),
    )
    .await;
    fails_with(
        &d,
        &admin,
        &server.uri(),
        &["no answer", "within 1s"],
        count(&server),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_mismatch_fails() {
    let (_db, d, admin, server) = setup().await;
    let wrong = format!("{}/8/oauth2", server.uri());
    serve(
        &server,
        WELL_KNOWN,
        ResponseTemplate::new(200).set_body_json(document(&wrong)),
    )
    .await;
    fails_with(
        &d,
        &admin,
        &server.uri(),
        &["issuer mismatch", "/8/oauth2", "/7/oauth2"],
        count(&server),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_to_another_host_is_not_followed() {
    let (_db, d, admin, server) = setup().await;
    let elsewhere = server.uri().replace("127.0.0.1", "localhost");
    serve(
        &server,
        WELL_KNOWN,
        ResponseTemplate::new(302).insert_header("location", format!("{elsewhere}{WELL_KNOWN}")),
    )
    .await;
    fails_with(
        &d,
        &admin,
        &server.uri(),
        &["redirect to localhost", "never followed"],
        count(&server),
    )
    .await;
    // Two attempts, one request each: the redirect was never followed (the mock would have
    // seen the followed request too, as localhost is the same server).
    assert_eq!(
        server.received_requests().await.unwrap_or_default().len(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwks_without_usable_keys_fails() {
    let (_db, d, admin, server) = setup().await;
    let issuer = format!("{}/7/oauth2", server.uri());
    serve(
        &server,
        WELL_KNOWN,
        ResponseTemplate::new(200).set_body_json(document(&issuer)),
    )
    .await;
    serve(
        &server,
        JWKS,
        ResponseTemplate::new(200)
            .set_body_json(json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]})),
    )
    .await;
    fails_with(
        &d,
        &admin,
        &server.uri(),
        &["no usable signing keys"],
        count(&server),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_fails() {
    let db = TestDb::new(Backend::Sqlite).await;
    let d = daemon(&db).await;
    let admin = d.api_key("admin", &[]);
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let base = format!("http://127.0.0.1:{port}");
    assert_eq!(d.hookup(&hookup_for(&base, 7)).await.0, 200);
    let view = settled(&d, &admin, 7).await;
    assert_eq!(view["state"], "failed");
    let error = view["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("could not connect to 127.0.0.1"), "{error}");
    assert!(error.to_lowercase().contains("refused"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_document_is_stored_and_differences_are_warned() {
    let (_db, d, admin, server) = setup().await;
    let issuer = format!("{}/7/oauth2", server.uri());
    let mut doc = document(&issuer);
    // The provider moved its token endpoint: the hookup's stays in use, with a warning.
    doc["token_endpoint"] = json!(format!("{issuer}/v2/token/"));
    Mock::given(method("GET"))
        .and(path(WELL_KNOWN))
        .respond_with(ResponseTemplate::new(200).set_body_json(doc))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(JWKS))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(jwks())
                .insert_header("cache-control", "max-age=3600"),
        )
        .mount(&server)
        .await;
    assert_eq!(d.hookup(&hookup_for(&server.uri(), 7)).await.0, 200);
    let view = settled(&d, &admin, 7).await;
    assert_eq!(view["state"], "ok", "{view}");
    assert_eq!(view["issuer"], issuer);
    assert_eq!(view["attempts"], 0);
    assert_eq!(view["last_error"], Value::Null);
    let warnings = view["warnings"].as_array().expect("warnings");
    assert_eq!(warnings.len(), 1, "{view}");
    assert!(
        warnings[0]
            .as_str()
            .unwrap_or_default()
            .contains("token_endpoint")
    );
    // Refreshed about a day later (24 h ± 10%).
    let next: chrono::DateTime<chrono::Utc> = view["next_refresh_at"]
        .as_str()
        .expect("next")
        .parse()
        .expect("time");
    assert!(next - chrono::Utc::now() > chrono::Duration::hours(21));
    // Exactly one document and one JWKS fetch.
    assert_eq!(
        server.received_requests().await.unwrap_or_default().len(),
        2
    );
    let metrics = d.metrics().await;
    assert!(
        metrics.contains(r#"broker_discovery_runs_total{outcome="ok"} 1"#),
        "{metrics}"
    );
}
