//! The token broker for client_credentials tenants, against the real provider.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::backend_tests;
use crate::helpers::*;
use crate::provider::*;

/// A daemon that talks to the provider; `verify` turns the credential check on hookup on.
async fn start(db: &TestDb, verify: bool) -> Daemon {
    let mut config = DaemonConfig::new();
    config.extra_env.extend(provider_env());
    config
        .extra_env
        .push(("BROKER_TOKENS__VERIFY_ON_HOOKUP".into(), verify.to_string()));
    Daemon::start(db, config).await
}

/// A client_credentials tenant registered at the provider and with the daemon.
async fn tenant(daemon: &Daemon) -> (i64, Value) {
    let id = unique_tenant();
    let message = provider()
        .application(id, "client_credentials", "confidential", None)
        .await;
    assert_eq!(daemon.hookup(&message).await.0, 200);
    (id, message)
}

pub async fn token(daemon: &Daemon, key: &str, id: i64, body: Option<Value>) -> (u16, Value) {
    daemon
        .send(
            reqwest::Method::POST,
            &format!("/v1/tenants/{id}/token"),
            Some(key),
            body,
        )
        .await
}

async fn a_brokered_token_is_accepted_by_the_provider(backend: Backend) {
    let p = provider();
    let db = TestDb::new(backend).await;
    let daemon = start(&db, false).await;
    let (id, message) = tenant(&daemon).await;
    let key = daemon.api_key("token", &[id]);

    let (status, answer) = token(&daemon, &key, id, None).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["token_type"], "Bearer");
    assert_eq!(answer["scope"], "restapi");
    assert_eq!(answer["provet_id"], id);
    let expires_in = answer["expires_in"].as_i64().expect("expires_in");
    assert!((35_990..=36_000).contains(&expires_in), "{answer}");
    assert!(answer["expires_at"].as_str().is_some());
    let access = answer["access_token"].as_str().expect("token");
    let (status, me) = p.api_me(id, access).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["client_id"], message["client_id"]);
    // HTTP Basic, form-encoded, one request.
    let requests = p.token_requests(id).await;
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0]["auth_method"], "client_secret_basic");
    assert_eq!(requests[0]["grant_type"], "client_credentials");
    // A second call is served from the cache.
    let (_, again) = token(&daemon, &key, id, None).await;
    assert_eq!(again["access_token"], answer["access_token"]);
    assert_eq!(p.token_requests(id).await.len(), 1);
    // The token is stored sealed, never in plain.
    assert!(!contains(&db.raw_bytes().await, access));
}

async fn two_hundred_concurrent_callers_cause_one_token_request(backend: Backend) {
    let p = provider();
    let db = TestDb::new(backend).await;
    let daemon = Arc::new(start(&db, false).await);
    let (id, _) = tenant(&daemon).await;
    let key = Arc::new(daemon.api_key("token", &[]));
    let mut calls = Vec::new();
    for _ in 0..200 {
        let (daemon, key) = (daemon.clone(), key.clone());
        calls.push(tokio::spawn(
            async move { token(&daemon, &key, id, None).await },
        ));
    }
    let mut tokens = std::collections::HashSet::new();
    for call in calls {
        let (status, answer) = call.await.expect("task");
        assert_eq!(status, 200, "{answer}");
        tokens.insert(answer["access_token"].as_str().expect("token").to_owned());
    }
    assert_eq!(tokens.len(), 1, "every caller gets the same token");
    assert_eq!(
        p.token_requests(id).await.len(),
        1,
        "the provider saw exactly one request"
    );
}

async fn a_restart_reuses_the_stored_token(backend: Backend) {
    let p = provider();
    let db = TestDb::new(backend).await;
    let config = {
        let mut c = DaemonConfig::new();
        c.extra_env.extend(provider_env());
        c.extra_env
            .push(("BROKER_TOKENS__VERIFY_ON_HOOKUP".into(), "false".into()));
        c
    };
    let daemon = Daemon::start(&db, config.clone()).await;
    let (id, _) = tenant(&daemon).await;
    let key = daemon.api_key("token", &[]);
    let (_, first) = token(&daemon, &key, id, None).await;
    daemon.stop();
    let daemon = Daemon::start(&db, config).await;
    let (status, second) = token(&daemon, &key, id, None).await;
    assert_eq!(status, 200);
    assert_eq!(first["access_token"], second["access_token"]);
    assert_eq!(
        p.token_requests(id).await.len(),
        1,
        "the restart sent no request"
    );
}

async fn force_refresh_gives_a_new_token_once_for_concurrent_callers(backend: Backend) {
    let p = provider();
    let db = TestDb::new(backend).await;
    let daemon = Arc::new(start(&db, false).await);
    let (id, _) = tenant(&daemon).await;
    let key = Arc::new(daemon.api_key("token", &[]));
    let (_, first) = token(&daemon, &key, id, None).await;
    let (status, forced) = token(&daemon, &key, id, Some(json!({"force_refresh": true}))).await;
    assert_eq!(status, 200);
    assert_ne!(forced["access_token"], first["access_token"]);
    assert_eq!(p.token_requests(id).await.len(), 2);
    // 20 concurrent force_refresh calls coalesce into one refresh. Each caller holds a
    // connection opened beforehand and all send at once: a call that arrives after the
    // refresh finished rightly gets a refresh of its own, so arrival must be concurrent.
    let barrier = Arc::new(tokio::sync::Barrier::new(20));
    let mut calls = Vec::new();
    for _ in 0..20 {
        let (url, key, barrier) = (
            daemon.url(&format!("/v1/tenants/{id}/token")),
            key.clone(),
            barrier.clone(),
        );
        let health = daemon.url("/healthz");
        calls.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("client");
            client.get(&health).send().await.expect("warm-up");
            barrier.wait().await;
            let answer = client
                .post(&url)
                .bearer_auth(key.as_str())
                .json(&json!({"force_refresh": true}))
                .send()
                .await
                .expect("request");
            let status = answer.status().as_u16();
            (status, answer.json::<Value>().await.expect("json"))
        }));
    }
    let mut seen = std::collections::HashSet::new();
    for call in calls {
        let (status, answer) = call.await.expect("task");
        assert_eq!(status, 200);
        seen.insert(answer["access_token"].to_string());
    }
    assert!(!seen.contains(&forced["access_token"].to_string()));
    assert_eq!(seen.len(), 1, "one new token for all");
    assert_eq!(p.token_requests(id).await.len(), 3, "one refresh for all");
}

async fn a_client_deleted_at_the_provider_is_rejected(backend: Backend) {
    let p = provider();
    let db = TestDb::new(backend).await;
    let daemon = start(&db, false).await;
    let (id, message) = tenant(&daemon).await;
    let key = daemon.api_key("token", &[]);
    let admin = daemon.api_key("admin", &[]);
    assert_eq!(token(&daemon, &key, id, None).await.0, 200);
    p.delete_application(message["client_id"].as_str().expect("client_id"))
        .await;

    let (status, problem) = token(&daemon, &key, id, Some(json!({"force_refresh": true}))).await;
    assert_eq!(status, 502, "{problem}");
    assert_eq!(problem["code"], "upstream_rejected");
    assert_eq!(problem["upstream_error"], "invalid_client");
    let (_, view) = daemon
        .get(&format!("/admin/tenants/{id}"), Some(&admin))
        .await;
    assert_eq!(view["credentials"]["state"], "rejected");
    assert!(
        view["credentials"]["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("invalid_client")
    );
    assert!(view["credentials"]["checked_at"].is_string());
    let sent = p.token_requests(id).await.len();
    // During the cool-down no request reaches the provider.
    let (status, _) = token(&daemon, &key, id, None).await;
    assert_eq!(status, 502);
    assert_eq!(p.token_requests(id).await.len(), sent);
    // An operator's verify tries again at once.
    let (status, credentials) = daemon
        .send(
            reqwest::Method::POST,
            &format!("/admin/tenants/{id}/verify"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, 200, "{credentials}");
    assert_eq!(credentials["state"], "rejected");
    assert_eq!(p.token_requests(id).await.len(), sent + 1);
    // A new hookup with working credentials clears the state.
    let replacement = p
        .application(id, "client_credentials", "confidential", None)
        .await;
    assert_eq!(daemon.hookup(&replacement).await.1["status"], "updated");
    assert_eq!(token(&daemon, &key, id, None).await.0, 200);
    let (_, view) = daemon
        .get(&format!("/admin/tenants/{id}"), Some(&admin))
        .await;
    assert_eq!(view["credentials"]["state"], "ok");
}

async fn the_credential_check_runs_after_a_hookup(backend: Backend) {
    let p = provider();
    let db = TestDb::new(backend).await;
    let daemon = start(&db, true).await;
    let admin = daemon.api_key("admin", &[]);
    let (id, _) = tenant(&daemon).await;
    let mut state = Value::Null;
    for _ in 0..100 {
        state = daemon
            .get(&format!("/admin/tenants/{id}"), Some(&admin))
            .await
            .1["credentials"]
            .clone();
        if state["state"] != "unchecked" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(state["state"], "ok", "{state}");
    assert_eq!(p.token_requests(id).await.len(), 1);
    // The checked token went into the cache: the first caller needs no request.
    let key = daemon.api_key("token", &[]);
    assert_eq!(token(&daemon, &key, id, None).await.0, 200);
    assert_eq!(p.token_requests(id).await.len(), 1);

    // A hookup whose secret the provider does not know ends `rejected`.
    let id2 = unique_tenant();
    let mut wrong = p
        .application(id2, "client_credentials", "confidential", None)
        .await;
    wrong["client_secret"] = json!("not-the-secret");
    assert_eq!(daemon.hookup(&wrong).await.0, 200);
    for _ in 0..100 {
        state = daemon
            .get(&format!("/admin/tenants/{id2}"), Some(&admin))
            .await
            .1["credentials"]
            .clone();
        if state["state"] != "unchecked" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(state["state"], "rejected", "{state}");
}

async fn callers_get_clear_errors(backend: Backend) {
    let p = provider();
    let db = TestDb::new(backend).await;
    let daemon = start(&db, false).await;
    let (id, _) = tenant(&daemon).await;
    let other = daemon.api_key("token", &[id + 1]);
    let key = daemon.api_key("token", &[id]);
    let admin = daemon.api_key("admin", &[]);
    let path = format!("/v1/tenants/{id}/token");
    assert_eq!(
        daemon
            .send(reqwest::Method::POST, &path, None, None)
            .await
            .0,
        401
    );
    assert_eq!(
        daemon
            .send(reqwest::Method::POST, &path, Some("pbk_nope"), None)
            .await
            .0,
        401
    );
    let (status, problem) = token(&daemon, &other, id, None).await;
    assert_eq!((status, problem["code"].clone()), (403, json!("forbidden")));
    let (status, problem) = token(&daemon, &admin, 999_999_999_999, None).await;
    assert_eq!(
        (status, problem["code"].clone()),
        (404, json!("tenant_not_found"))
    );
    for bad in [
        json!({"min_ttl": 100000}),
        json!({"scope": ""}),
        json!({"surprise": 1}),
        json!({"min_ttl": -1}),
    ] {
        let (status, problem) = token(&daemon, &key, id, Some(bad.clone())).await;
        assert_eq!(
            (status, problem["code"].clone()),
            (400, json!("invalid_request")),
            "{bad}"
        );
    }
    // An authorization-code tenant nobody has connected yet.
    let ac = unique_tenant();
    let message = p
        .application(ac, "authorization_code", "confidential", Some("RS256"))
        .await;
    assert_eq!(daemon.hookup(&message).await.0, 200);
    let (status, problem) = token(&daemon, &admin, ac, None).await;
    assert_eq!(
        (status, problem["code"].clone()),
        (409, json!("reauthorization_required"))
    );
    // A removed tenant is gone for services, and its cached token with it.
    assert_eq!(token(&daemon, &key, id, None).await.0, 200);
    daemon
        .send(
            reqwest::Method::DELETE,
            &format!("/admin/tenants/{id}"),
            Some(&admin),
            None,
        )
        .await;
    let (status, problem) = token(&daemon, &key, id, None).await;
    assert_eq!(
        (status, problem["code"].clone()),
        (404, json!("tenant_not_found"))
    );
    assert_eq!(
        db.count(&format!(
            "SELECT COUNT(*) FROM tokens WHERE provet_id = {id}"
        ))
        .await,
        0
    );
    // Every answer was counted by key, tenant and source.
    let metrics = daemon.metrics().await;
    assert!(metrics.contains("broker_tokens_served_total{"), "{metrics}");
    assert!(metrics.contains(r#"cache="miss""#));
    assert!(metrics.contains(r#"broker_upstream_token_requests_total{outcome="ok"}"#));
}

backend_tests!(
    a_brokered_token_is_accepted_by_the_provider,
    two_hundred_concurrent_callers_cause_one_token_request,
    a_restart_reuses_the_stored_token,
    force_refresh_gives_a_new_token_once_for_concurrent_callers,
    a_client_deleted_at_the_provider_is_rejected,
    the_credential_check_runs_after_a_hookup,
    callers_get_clear_errors,
);

/// Three replicas on one PostgreSQL, 300 callers spread over them, a cold tenant: one
/// request reaches the provider and everyone gets the same token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_one_token_request() {
    let p = provider();
    let db = TestDb::new(Backend::Postgres).await;
    let mut config = DaemonConfig::new();
    config.extra_env.extend(provider_env());
    config
        .extra_env
        .push(("BROKER_TOKENS__VERIFY_ON_HOOKUP".into(), "false".into()));
    config
        .extra_env
        .push(("BROKER_DATABASE__MAX_CONNECTIONS".into(), "8".into()));
    let mut daemons = Vec::new();
    for _ in 0..3 {
        daemons.push(Arc::new(Daemon::start(&db, config.clone()).await));
    }
    let (id, _) = tenant(&daemons[0]).await;
    let key = Arc::new(daemons[0].api_key("token", &[]));
    let mut calls = Vec::new();
    for n in 0..300 {
        let (daemon, key) = (daemons[n % 3].clone(), key.clone());
        calls.push(tokio::spawn(
            async move { token(&daemon, &key, id, None).await },
        ));
    }
    let mut tokens = std::collections::HashSet::new();
    for call in calls {
        let (status, answer) = call.await.expect("task");
        assert_eq!(status, 200, "{answer}");
        tokens.insert(answer["access_token"].as_str().expect("token").to_owned());
    }
    assert_eq!(tokens.len(), 1);
    assert_eq!(p.token_requests(id).await.len(), 1);
}
