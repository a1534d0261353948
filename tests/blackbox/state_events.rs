//! State-transition events (credentials, grants, discovery): each produced by the action that
//! causes it, with its data, once per transition and not on every request. Credentials and
//! grants against the real provider; discovery against a mock, because the real provider
//! cannot fail and then work again at the same discovery URL.

use std::time::Duration;

use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::backend_tests;
use crate::connect::{connect, start_daemon, tenant as code_tenant};
use crate::discovery_faults::{document, hookup_for, jwks};
use crate::helpers::*;
use crate::provider::*;
use crate::tokens::token;

backend_tests!(
    credentials_events_fire_on_transitions_only,
    grant_events_follow_connect_loss_and_revocation,
    discovery_events_fire_on_failure_and_recovery_only,
);

/// Every event the key sees, read from the start of the feed. Waits (up to 20 s) until at
/// least `expected` are visible: on PostgreSQL the feed holds events back while any older
/// write transaction of the cluster is still open.
async fn feed(daemon: &Daemon, key: &str, expected: usize) -> (Vec<Value>, String) {
    for _ in 0..100 {
        let mut events = Vec::new();
        let mut text = String::new();
        let mut after = String::new();
        loop {
            let query = if after.is_empty() {
                "/v1/events?limit=100".to_owned()
            } else {
                format!("/v1/events?limit=100&after={after}")
            };
            let response = daemon
                .http
                .get(daemon.url(&query))
                .bearer_auth(key)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            let body = response.text().await.unwrap();
            let page: Value = serde_json::from_str(&body).unwrap();
            text.push_str(&body);
            let batch = page["events"].as_array().unwrap().clone();
            if batch.is_empty() {
                break;
            }
            events.extend(batch);
            after = page["next_after"].as_str().unwrap().to_owned();
        }
        if events.len() >= expected {
            return (events, text);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("fewer than {expected} events in the feed");
}

fn types(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

/// The envelope of every event: an `evt_` id, the tenant, a per-tenant sequence counting up
/// from 1 without gaps (the feed holds all of the tenant's events), RFC 3339 time.
fn check_envelopes(events: &[Value], provet_id: i64) {
    for (i, e) in events.iter().enumerate() {
        assert!(e["id"].as_str().unwrap().starts_with("evt_"), "{e}");
        assert_eq!(e["provet_id"], provet_id, "{e}");
        assert_eq!(e["sequence"], i as i64 + 1, "per-tenant sequence: {e}");
        let at = e["occurred_at"].as_str().unwrap();
        assert!(chrono::DateTime::parse_from_rfc3339(at).is_ok(), "{e}");
    }
    let ids: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "ids sort in the order written");
}

fn assert_absent(body: &str, what: &str, secret: &str) {
    assert!(!secret.is_empty());
    assert!(!body.contains(secret), "the feed holds the {what}");
}

async fn credentials_state(daemon: &Daemon, admin: &str, id: i64) -> Value {
    daemon
        .get(&format!("/admin/tenants/{id}"), Some(admin))
        .await
        .1["credentials"]["state"]
        .clone()
}

async fn credentials_events_fire_on_transitions_only(backend: Backend) {
    let p = provider();
    let db = TestDb::new(backend).await;
    let mut config = DaemonConfig::new();
    config.extra_env.extend(provider_env());
    config
        .extra_env
        .push(("BROKER_TOKENS__VERIFY_ON_HOOKUP".into(), "false".into()));
    let daemon = Daemon::start(&db, config).await;
    let admin = daemon.api_key("admin", &[]);
    let key = daemon.api_key("token", &[]);
    let id = unique_tenant();
    let message = p
        .application(id, "client_credentials", "confidential", None)
        .await;
    let mut wrong = message.clone();
    let wrong_secret = distinctive_secret();
    wrong["client_secret"] = json!(wrong_secret);
    assert_eq!(daemon.hookup(&wrong).await.0, 200);

    // The provider refuses the secret: the transition to rejected has its event.
    let (status, problem) = token(&daemon, &key, id, None).await;
    assert_eq!(status, 502, "{problem}");
    assert_eq!(problem["upstream_error"], "invalid_client");
    assert_eq!(credentials_state(&daemon, &admin, id).await, "rejected");
    let (events, _) = feed(&daemon, &admin, 2).await;
    assert_eq!(
        types(&events),
        ["tenant.registered", "credentials.rejected"]
    );
    assert_eq!(
        events[1]["data"],
        json!({"upstream_error": "invalid_client"})
    );

    // Refused again, by the provider itself (a verify skips the cool-down) and during the
    // cool-down: still rejected, no second event.
    let sent = p.token_requests(id).await.len();
    let (status, credentials) = daemon
        .send(
            reqwest::Method::POST,
            &format!("/admin/tenants/{id}/verify"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(
        (status, credentials["state"].clone()),
        (200, json!("rejected"))
    );
    assert_eq!(
        p.token_requests(id).await.len(),
        sent + 1,
        "a real second refusal"
    );
    assert_eq!(token(&daemon, &key, id, None).await.0, 502);

    // The right secret, then a token: ok, once.
    assert_eq!(daemon.hookup(&message).await.1["status"], "updated");
    let (status, first) = token(&daemon, &key, id, None).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(credentials_state(&daemon, &admin, id).await, "ok");
    let (status, forced) = token(&daemon, &key, id, Some(json!({"force_refresh": true}))).await;
    assert_eq!(status, 200, "{forced}");
    let (status, _) = daemon
        .send(
            reqwest::Method::POST,
            &format!("/admin/tenants/{id}/verify"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, 200);

    let (events, body) = feed(&daemon, &admin, 4).await;
    assert_eq!(
        types(&events),
        [
            "tenant.registered",
            "credentials.rejected",
            "tenant.updated",
            "credentials.ok",
        ],
        "one event per transition"
    );
    assert_eq!(events[3]["data"], json!({"upstream_error": null}));
    check_envelopes(&events, id);
    assert_absent(&body, "wrong client secret", &wrong_secret);
    assert_absent(
        &body,
        "client secret",
        message["client_secret"].as_str().unwrap(),
    );
    assert_absent(
        &body,
        "access token",
        first["access_token"].as_str().unwrap(),
    );
    assert_absent(
        &body,
        "access token",
        forced["access_token"].as_str().unwrap(),
    );
    assert_eq!(
        db.count(&format!(
            "SELECT COUNT(*) FROM events WHERE provet_id = {id} AND event_type LIKE 'credentials.%'"
        ))
        .await,
        2
    );
}

async fn grant_events_follow_connect_loss_and_revocation(backend: Backend) {
    let p = provider();
    let db = TestDb::new(backend).await;
    let daemon = start_daemon(&db, &[]).await;
    let admin = daemon.api_key("admin", &[]);
    let (id, message) = code_tenant(&daemon, &admin, "confidential", Some("HS256")).await;
    let client_id = message["client_id"].as_str().unwrap();

    // A clinic user connects.
    assert_eq!(connect(&daemon, &admin, id).await.0, 200);
    let (status, first) = token(&daemon, &admin, id, None).await;
    assert_eq!(status, 200, "{first}");
    let (events, _) = feed(&daemon, &admin, 2).await;
    assert_eq!(types(&events), ["tenant.registered", "grant.connected"]);
    assert_eq!(events[1]["data"], json!({"subject": "1"}));

    // The refresh token dies at the provider: reauthorization required, once.
    let revoked = reqwest::Client::new()
        .post(format!("{}/_test/revoke-grants/{client_id}", p.base))
        .send()
        .await
        .unwrap();
    assert!(revoked.status().is_success());
    let (status, problem) = token(&daemon, &admin, id, Some(json!({"force_refresh": true}))).await;
    assert_eq!(status, 409, "{problem}");
    assert_eq!(
        token(&daemon, &admin, id, Some(json!({"force_refresh": true})))
            .await
            .0,
        409
    );
    let (events, _) = feed(&daemon, &admin, 3).await;
    assert_eq!(
        types(&events),
        [
            "tenant.registered",
            "grant.connected",
            "grant.reauthorization_required",
        ]
    );
    let data = &events[2]["data"];
    assert_eq!(data["subject"], "1", "{data}");
    // A stable code, not the provider's words.
    assert_eq!(data["reason"], "invalid_grant", "{data}");
    assert_eq!(data.as_object().unwrap().len(), 2, "{data}");

    // Connected again, then an operator revokes it; revoking twice is one transition.
    assert_eq!(connect(&daemon, &admin, id).await.0, 200);
    let (status, second) = token(&daemon, &admin, id, None).await;
    assert_eq!(status, 200, "{second}");
    for _ in 0..2 {
        let (status, body) = daemon
            .send(
                reqwest::Method::DELETE,
                &format!("/admin/tenants/{id}/grants/1"),
                Some(&admin),
                None,
            )
            .await;
        assert_eq!(status, 204, "{body}");
    }
    let (events, body) = feed(&daemon, &admin, 5).await;
    assert_eq!(
        types(&events),
        [
            "tenant.registered",
            "grant.connected",
            "grant.reauthorization_required",
            "grant.connected",
            "grant.revoked",
        ]
    );
    assert_eq!(events[3]["data"], json!({"subject": "1"}));
    assert_eq!(events[4]["data"], json!({"subject": "1"}));
    check_envelopes(&events, id);
    assert_absent(
        &body,
        "client secret",
        message["client_secret"].as_str().unwrap(),
    );
    assert_absent(
        &body,
        "access token",
        first["access_token"].as_str().unwrap(),
    );
    assert_absent(
        &body,
        "access token",
        second["access_token"].as_str().unwrap(),
    );
}

async fn discovery_of(daemon: &Daemon, admin: &str, id: i64) -> Value {
    daemon
        .get(&format!("/admin/tenants/{id}"), Some(admin))
        .await
        .1["discovery"]
        .clone()
}

async fn rerun(daemon: &Daemon, admin: &str, id: i64) -> Value {
    let (status, body) = daemon
        .send(
            reqwest::Method::POST,
            &format!("/admin/tenants/{id}/discovery"),
            Some(admin),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn serve_discovery(server: &MockServer, id: i64) {
    let issuer = format!("{}/{id}/oauth2", server.uri());
    Mock::given(method("GET"))
        .and(path(format!(
            "/{id}/oauth2/.well-known/openid-configuration"
        )))
        .respond_with(ResponseTemplate::new(200).set_body_json(document(&issuer)))
        .mount(server)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("/{id}/oauth2/.well-known/jwks.json")))
        .respond_with(ResponseTemplate::new(200).set_body_json(jwks()))
        .mount(server)
        .await;
}

async fn fail_discovery(server: &MockServer) {
    server.reset().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(503))
        .mount(server)
        .await;
}

async fn discovery_events_fire_on_failure_and_recovery_only(backend: Backend) {
    let server = MockServer::start().await;
    fail_discovery(&server).await;
    let db = TestDb::new(backend).await;
    let mut config = DaemonConfig::new();
    config.extra_env.extend([
        (
            "BROKER_HOOKUP__ALLOWED_HOSTS".to_owned(),
            r#"["127.0.0.1"]"#.to_owned(),
        ),
        ("BROKER_HOOKUP__ALLOW_HTTP".to_owned(), "true".to_owned()),
        ("BROKER_DISCOVERY__TIMEOUT".to_owned(), "1s".to_owned()),
        ("BROKER_DISCOVERY__RETRY_BASE".to_owned(), "60s".to_owned()),
        ("BROKER_DISCOVERY__ENABLED".to_owned(), "true".to_owned()),
    ]);
    let daemon = Daemon::start(&db, config).await;
    let admin = daemon.api_key("admin", &[]);
    let id = 7;
    let message = hookup_for(&server.uri(), id);
    assert_eq!(daemon.hookup(&message).await.0, 200);

    // The worker's first attempt fails: failed, with its error.
    let mut d = Value::Null;
    for _ in 0..100 {
        d = discovery_of(&daemon, &admin, id).await;
        if d["state"] != "pending" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(d["state"], "failed", "{d}");
    let first_error = d["last_error"].as_str().unwrap().to_owned();
    assert!(first_error.contains("503"), "{first_error}");
    // A second failure in a row is no transition.
    let again = rerun(&daemon, &admin, id).await;
    assert_eq!(
        (again["state"].clone(), again["attempts"].clone()),
        (json!("failed"), json!(2))
    );
    let second_error = again["last_error"].as_str().unwrap().to_owned();
    let (events, _) = feed(&daemon, &admin, 2).await;
    assert_eq!(types(&events), ["tenant.registered", "discovery.failed"]);
    assert_eq!(events[1]["data"], json!({"last_error": first_error}));

    // The provider works again: the rerun recovers, naming the error it recovered from; a
    // further success is no transition.
    server.reset().await;
    serve_discovery(&server, id).await;
    assert_eq!(rerun(&daemon, &admin, id).await["state"], "ok");
    assert_eq!(rerun(&daemon, &admin, id).await["state"], "ok");
    // It fails again after working: a new transition.
    fail_discovery(&server).await;
    assert_eq!(rerun(&daemon, &admin, id).await["state"], "failed");
    assert_eq!(rerun(&daemon, &admin, id).await["state"], "failed");

    let (events, body) = feed(&daemon, &admin, 4).await;
    assert_eq!(
        types(&events),
        [
            "tenant.registered",
            "discovery.failed",
            "discovery.recovered",
            "discovery.failed",
        ]
    );
    assert_eq!(events[2]["data"], json!({"last_error": second_error}));
    let last = events[3]["data"]["last_error"].as_str().unwrap();
    assert!(last.contains("503"), "{last}");
    check_envelopes(&events, id);
    assert_absent(
        &body,
        "client secret",
        message["client_secret"].as_str().unwrap(),
    );
}
