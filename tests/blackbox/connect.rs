//! The authorization-code connect flow, with a clinic user logging in at the real provider.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::backend_tests;
use crate::helpers::*;
use crate::provider::*;
use crate::tokens::token;

/// A browser's cookie jar, by name.
#[derive(Default)]
struct Jar(HashMap<String, String>);

impl Jar {
    fn take(&mut self, response: &reqwest::Response) {
        for value in response.headers().get_all("set-cookie") {
            if let Some((pair, _)) = value.to_str().unwrap_or_default().split_once(';')
                && let Some((name, value)) = pair.split_once('=')
            {
                self.0
                    .insert(name.trim().to_owned(), value.trim().to_owned());
            }
        }
    }

    fn header(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

fn location(response: &reqwest::Response, base: &str) -> String {
    let to = response.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    if to.starts_with('/') {
        format!("{base}{to}")
    } else {
        to
    }
}

/// Plays the clinic user: follows the authorize URL, logs in at the provider, and returns
/// the URL the provider redirects the browser to (the broker's callback with code and state).
pub async fn log_in_and_approve(authorize_url: &str) -> String {
    log_in_as(authorize_url, "clinic-user", "clinic-password").await
}

/// As `log_in_and_approve`, for another user of the provider.
pub async fn log_in_as(authorize_url: &str, username: &str, password: &str) -> String {
    let base = provider().base.clone();
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("browser");
    let mut jar = Jar::default();
    let response = browser.get(authorize_url).send().await.expect("authorize");
    assert_eq!(response.status(), 302, "authorize should ask for a login");
    let login_url = location(&response, &base);
    let response = browser
        .get(&login_url)
        .header("cookie", jar.header())
        .send()
        .await
        .expect("login form");
    jar.take(&response);
    let html = response.text().await.expect("html");
    let csrf = html
        .split("name=\"csrfmiddlewaretoken\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("csrf token in the login form")
        .to_owned();
    let next = url::Url::parse(&login_url)
        .expect("login url")
        .query_pairs()
        .find(|(k, _)| k == "next")
        .map(|(_, v)| v.into_owned())
        .expect("next");
    let response = browser
        .post(format!("{base}/accounts/login/"))
        .header("cookie", jar.header())
        .form(&[
            ("csrfmiddlewaretoken", csrf.as_str()),
            ("username", username),
            ("password", password),
            ("next", next.as_str()),
        ])
        .send()
        .await
        .expect("log in");
    assert_eq!(response.status(), 302, "the login should succeed");
    jar.take(&response);
    let approve = location(&response, &base);
    let response = browser
        .get(&approve)
        .header("cookie", jar.header())
        .send()
        .await
        .expect("approve");
    assert_eq!(response.status(), 302);
    location(&response, &base)
}

/// Sends the provider's redirect to the daemon's callback (the test's public URL is
/// http://broker.test; the daemon listens elsewhere).
pub async fn deliver(daemon: &Daemon, redirect: &str) -> (u16, String, Option<String>) {
    let url = redirect.replacen("http://broker.test", &daemon.base, 1);
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("browser");
    let response = browser.get(url).send().await.expect("callback");
    let status = response.status().as_u16();
    let to = response
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap_or_default().to_owned());
    (status, response.text().await.unwrap_or_default(), to)
}

pub async fn start_daemon(db: &TestDb, extra: &[(&str, &str)]) -> Daemon {
    let mut config = DaemonConfig::new();
    config.extra_env.extend(provider_env());
    config.extra_env.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    Daemon::start(db, config).await
}

/// Registers an authorization-code tenant and waits for its discovery (when it has one).
pub async fn tenant(
    daemon: &Daemon,
    admin: &str,
    client_type: &str,
    algorithm: Option<&str>,
) -> (i64, Value) {
    let id = unique_tenant();
    let message = provider()
        .application(id, "authorization_code", client_type, algorithm)
        .await;
    assert_eq!(daemon.hookup(&message).await.0, 200);
    if algorithm.is_some() {
        wait_for_discovery(daemon, admin, id, "ok").await;
    }
    (id, message)
}

pub async fn connect(daemon: &Daemon, key: &str, id: i64) -> (u16, String) {
    let (status, started) = daemon.start_authorization(key, id, None).await;
    assert_eq!(status, 200, "{started}");
    let redirect = log_in_and_approve(started["authorize_url"].as_str().expect("url")).await;
    let (status, page, _) = deliver(daemon, &redirect).await;
    (status, page)
}

async fn rs256_hs256_and_public_clients_connect(backend: Backend) {
    let p = provider();
    let db = TestDb::new(backend).await;
    let daemon = start_daemon(&db, &[]).await;
    let admin = daemon.api_key("admin", &[]);
    for (client_type, algorithm) in [
        ("confidential", "RS256"),
        ("confidential", "HS256"),
        ("public", "RS256"),
    ] {
        let (id, message) = tenant(&daemon, &admin, client_type, Some(algorithm)).await;
        let (status, started) = daemon.start_authorization(&admin, id, None).await;
        assert_eq!(status, 200, "{started}");
        let authorize =
            url::Url::parse(started["authorize_url"].as_str().expect("url")).expect("url");
        let query: HashMap<String, String> = authorize.query_pairs().into_owned().collect();
        assert_eq!(query["response_type"], "code");
        assert_eq!(
            query["client_id"],
            message["client_id"].as_str().expect("id")
        );
        assert_eq!(query["redirect_uri"], "http://broker.test/oauth/callback");
        assert_eq!(query["code_challenge_method"], "S256");
        assert_eq!(query["scope"], "openid restapi");
        assert!(query.contains_key("nonce") && query.contains_key("state"));

        let redirect = log_in_and_approve(authorize.as_str()).await;
        let (status, page, _) = deliver(&daemon, &redirect).await;
        assert_eq!(status, 200, "{client_type} {algorithm}: {page}");
        assert!(page.contains("connected"), "{page}");

        let (_, view) = daemon
            .get(&format!("/admin/tenants/{id}"), Some(&admin))
            .await;
        assert_eq!(view["grants"].as_array().map(Vec::len), Some(1), "{view}");
        assert_eq!(view["grants"][0]["subject"], "1", "the ID token's sub");
        assert_eq!(view["grants"][0]["state"], "active");
        // The exchange sent the PKCE verifier, and the secret only for confidential clients.
        let exchange = p.token_requests(id).await;
        assert_eq!(exchange.len(), 1);
        assert_eq!(exchange[0]["has_code_verifier"], true, "{}", exchange[0]);
        // The access token from the exchange is served at once...
        let (status, first) = token(&daemon, &admin, id, None).await;
        assert_eq!(status, 200, "{first}");
        let (status, me) = p
            .api_me(id, first["access_token"].as_str().expect("t"))
            .await;
        assert_eq!(
            (status, me["user"].clone()),
            (200, json!("clinic-user")),
            "{me}"
        );
        assert_eq!(p.token_requests(id).await.len(), 1);
        // ...and a refresh gives a new one that works too.
        let (status, second) =
            token(&daemon, &admin, id, Some(json!({"force_refresh": true}))).await;
        assert_eq!(status, 200, "{second}");
        assert_ne!(first["access_token"], second["access_token"]);
        assert_eq!(
            p.api_me(id, second["access_token"].as_str().expect("t"))
                .await
                .0,
            200
        );
        let requests = p.token_requests(id).await;
        assert_eq!(
            requests.last().map(|r| r["grant_type"].clone()),
            Some(json!("refresh_token"))
        );
        let (_, service_view) = daemon.get(&format!("/v1/tenants/{id}"), Some(&admin)).await;
        assert_eq!(service_view["usable_grant"], true);
    }
}

/// Sorted by start, each refresh of the grant must start after the previous one finished.
fn assert_never_overlapped(requests: &[Value]) {
    let mut refreshes: Vec<(f64, f64)> = requests
        .iter()
        .filter(|r| r["grant_type"] == "refresh_token")
        .map(|r| {
            (
                r["started_at"].as_f64().expect("start"),
                r["finished_at"].as_f64().expect("end"),
            )
        })
        .collect();
    refreshes.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(!refreshes.is_empty());
    for pair in refreshes.windows(2) {
        assert!(
            pair[1].0 >= pair[0].1,
            "two refreshes of one grant overlapped: {pair:?}"
        );
    }
    for r in requests {
        assert_ne!(
            r["error"], "invalid_grant",
            "the provider answered invalid_grant: {r}"
        );
    }
}

async fn fifty_concurrent_force_refreshes_keep_the_grant(backend: Backend) {
    let p = provider();
    let db = TestDb::new(backend).await;
    let daemon = Arc::new(start_daemon(&db, &[]).await);
    let admin = Arc::new(daemon.api_key("admin", &[]));
    let (id, _) = tenant(&daemon, &admin, "confidential", Some("RS256")).await;
    assert_eq!(connect(&daemon, &admin, id).await.0, 200);
    let mut calls = Vec::new();
    for _ in 0..50 {
        let (daemon, admin) = (daemon.clone(), admin.clone());
        calls.push(tokio::spawn(async move {
            token(&daemon, &admin, id, Some(json!({"force_refresh": true}))).await
        }));
    }
    for call in calls {
        let (status, answer) = call.await.expect("task");
        assert_eq!(status, 200, "{answer}");
    }
    assert_never_overlapped(&p.token_requests(id).await);
    // The grant still works.
    let (status, after) = token(&daemon, &admin, id, Some(json!({"force_refresh": true}))).await;
    assert_eq!(status, 200, "{after}");
    assert_eq!(
        p.api_me(id, after["access_token"].as_str().expect("t"))
            .await
            .0,
        200
    );
}

async fn states_are_one_time_and_provider_errors_are_shown(backend: Backend) {
    let db = TestDb::new(backend).await;
    let daemon = start_daemon(&db, &[]).await;
    let admin = daemon.api_key("admin", &[]);
    let (id, _) = tenant(&daemon, &admin, "confidential", Some("RS256")).await;
    let (_, started) = daemon.start_authorization(&admin, id, None).await;
    let redirect = log_in_and_approve(started["authorize_url"].as_str().expect("url")).await;
    assert_eq!(deliver(&daemon, &redirect).await.0, 200);
    // Replayed.
    let (status, page, _) = deliver(&daemon, &redirect).await;
    assert_eq!(status, 400);
    assert!(page.contains("already used"), "{page}");
    // Forged, missing.
    let (status, page, _) = deliver(
        &daemon,
        "http://broker.test/oauth/callback?code=x&state=forged-state",
    )
    .await;
    assert_eq!(status, 400);
    assert!(page.contains("unknown"), "{page}");
    let (status, _, _) = deliver(&daemon, "http://broker.test/oauth/callback?code=x").await;
    assert_eq!(status, 400);
    // The clinic user (or the provider) said no; the text is escaped.
    let (_, started) = daemon.start_authorization(&admin, id, None).await;
    let state = query_param(&started["authorize_url"], "state");
    let (status, page, _) = deliver(
        &daemon,
        &format!("http://broker.test/oauth/callback?error=access_denied&error_description=%3Cscript%3E&state={state}"),
    )
    .await;
    assert_eq!(status, 400);
    assert!(page.contains("access_denied"), "{page}");
    assert!(!page.contains("<script>"), "{page}");
    let metrics = daemon.metrics().await;
    assert!(
        metrics.contains(r#"broker_authorizations_total{outcome="completed"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"broker_authorizations_total{outcome="failed"} 4"#),
        "{metrics}"
    );
}

async fn a_grant_revoked_at_the_provider_needs_reauthorization(backend: Backend) {
    let p = provider();
    let db = TestDb::new(backend).await;
    let daemon = start_daemon(&db, &[]).await;
    let admin = daemon.api_key("admin", &[]);
    let (id, message) = tenant(&daemon, &admin, "confidential", Some("HS256")).await;
    assert_eq!(connect(&daemon, &admin, id).await.0, 200);
    let client_id = message["client_id"].as_str().expect("id");
    let revoked = reqwest::Client::new()
        .post(format!("{}/_test/revoke-grants/{client_id}", p.base))
        .send()
        .await
        .expect("revoke");
    assert!(revoked.status().is_success());
    let (status, problem) = token(&daemon, &admin, id, Some(json!({"force_refresh": true}))).await;
    assert_eq!(status, 409, "{problem}");
    assert_eq!(problem["code"], "reauthorization_required");
    let (_, view) = daemon
        .get(&format!("/admin/tenants/{id}"), Some(&admin))
        .await;
    assert_eq!(
        view["grants"][0]["state"], "reauthorization_required",
        "{view}"
    );
    assert!(
        view["grants"][0]["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("invalid_grant")
    );
    let (_, service_view) = daemon.get(&format!("/v1/tenants/{id}"), Some(&admin)).await;
    assert_eq!(service_view["usable_grant"], false);
    // Connecting again brings it back.
    assert_eq!(connect(&daemon, &admin, id).await.0, 200);
    assert_eq!(token(&daemon, &admin, id, None).await.0, 200);
    // An operator revokes it. django-oauth-toolkit's discovery document names no
    // revocation endpoint, so nothing is sent there (the broker calls only what discovery
    // gave it).
    let revocations = p.requests(&format!("/{id}/oauth2/revoke_token/")).await;
    let status = daemon
        .send(
            reqwest::Method::DELETE,
            &format!("/admin/tenants/{id}/grants/1"),
            Some(&admin),
            None,
        )
        .await
        .0;
    assert_eq!(status, 204);
    assert_eq!(
        p.requests(&format!("/{id}/oauth2/revoke_token/")).await,
        revocations
    );
    let (_, view) = daemon
        .get(&format!("/admin/tenants/{id}"), Some(&admin))
        .await;
    assert_eq!(view["grants"][0]["state"], "revoked");
    assert_eq!(token(&daemon, &admin, id, None).await.0, 409);
    assert_eq!(
        daemon
            .send(
                reqwest::Method::DELETE,
                &format!("/admin/tenants/{id}/grants/nobody"),
                Some(&admin),
                None
            )
            .await
            .0,
        404
    );
}

async fn misconfigured_tenants_are_explained(backend: Backend) {
    let p = provider();
    let db = TestDb::new(backend).await;
    let daemon = start_daemon(
        &db,
        &[(
            "BROKER_OAUTH__ALLOWED_RETURN_TO",
            r#"["https://app.example/"]"#,
        )],
    )
    .await;
    let admin = daemon.api_key("admin", &[]);
    let (id, _) = tenant(&daemon, &admin, "confidential", Some("RS256")).await;
    // return_to: allowed prefix or refused.
    let start = |body: Value| {
        let daemon = &daemon;
        let admin = admin.clone();
        async move { daemon.start_authorization(&admin, id, Some(body)).await }
    };
    assert_eq!(
        start(json!({"return_to": "https://evil.example/"})).await.0,
        400
    );
    let (status, started) = start(json!({"return_to": "https://app.example/done"})).await;
    assert_eq!(status, 200);
    let redirect = log_in_and_approve(started["authorize_url"].as_str().expect("url")).await;
    let (status, _, to) = deliver(&daemon, &redirect).await;
    assert_eq!(
        (status, to.as_deref()),
        (303, Some("https://app.example/done"))
    );
    // A tenant whose redirect URIs lack the broker's callback.
    let other = unique_tenant();
    let mut message = p
        .application(other, "authorization_code", "confidential", None)
        .await;
    message["redirect_uris"] = json!("https://somewhere.example/cb");
    assert_eq!(daemon.hookup(&message).await.0, 200);
    let (status, problem) = daemon.start_authorization(&admin, other, None).await;
    assert_eq!(
        (status, problem["code"].clone()),
        (409, json!("misconfigured"))
    );
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("http://broker.test/oauth/callback")
    );
    // A client_credentials tenant needs no connecting.
    let cc = unique_tenant();
    let message = p
        .application(cc, "client_credentials", "confidential", None)
        .await;
    assert_eq!(daemon.hookup(&message).await.0, 200);
    let (status, problem) = daemon.start_authorization(&admin, cc, None).await;
    assert_eq!(
        (status, problem["code"].clone()),
        (409, json!("misconfigured"))
    );
}

async fn idle_grants_are_kept_alive(backend: Backend) {
    let p = provider();
    let db = TestDb::new(backend).await;
    let daemon = start_daemon(
        &db,
        &[
            ("BROKER_OAUTH__KEEPALIVE_AFTER", "1s"),
            ("BROKER_OAUTH__KEEPALIVE_INTERVAL", "500ms"),
        ],
    )
    .await;
    let admin = daemon.api_key("admin", &[]);
    let (id, _) = tenant(&daemon, &admin, "confidential", Some("RS256")).await;
    assert_eq!(connect(&daemon, &admin, id).await.0, 200);
    let mut refreshed = 0;
    for _ in 0..60 {
        refreshed = p
            .token_requests(id)
            .await
            .iter()
            .filter(|r| r["grant_type"] == "refresh_token")
            .count();
        if refreshed >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        refreshed >= 2,
        "no caller asked, yet the grant must be refreshed"
    );
    assert_never_overlapped(&p.token_requests(id).await);
    assert_eq!(
        token(&daemon, &admin, id, Some(json!({"force_refresh": true})))
            .await
            .0,
        200
    );
}

/// Two clinic users connect the same tenant: two grants; `subject` picks one, the default is
/// the most recent.
async fn several_grants_per_tenant(backend: Backend) {
    let p = provider();
    let db = TestDb::new(backend).await;
    let daemon = start_daemon(&db, &[]).await;
    let admin = daemon.api_key("admin", &[]);
    let (id, _) = tenant(&daemon, &admin, "confidential", Some("RS256")).await;
    assert_eq!(connect(&daemon, &admin, id).await.0, 200);
    let username = format!("vet-{}", unique_tenant());
    let created: Value = reqwest::Client::new()
        .post(format!("{}/_test/users", p.base))
        .json(&json!({"username": username, "password": "vet-password"}))
        .send()
        .await
        .expect("user")
        .json()
        .await
        .expect("json");
    let vet_sub = created["sub"].as_str().expect("sub").to_owned();
    let (_, started) = daemon.start_authorization(&admin, id, None).await;
    let redirect = log_in_as(
        started["authorize_url"].as_str().expect("url"),
        &username,
        "vet-password",
    )
    .await;
    assert_eq!(deliver(&daemon, &redirect).await.0, 200);

    let (_, view) = daemon
        .get(&format!("/admin/tenants/{id}"), Some(&admin))
        .await;
    let subjects: Vec<&str> = view["grants"]
        .as_array()
        .expect("grants")
        .iter()
        .map(|g| g["subject"].as_str().expect("s"))
        .collect();
    assert_eq!(subjects, [vet_sub.as_str(), "1"], "newest first");
    let user_of = |answer: Value| async move {
        p.api_me(id, answer["access_token"].as_str().expect("token"))
            .await
            .1["user"]
            .clone()
    };
    let (_, default) = token(&daemon, &admin, id, None).await;
    assert_eq!(
        user_of(default).await,
        json!(username),
        "the default is the most recent grant"
    );
    let (_, first) = token(&daemon, &admin, id, Some(json!({"subject": "1"}))).await;
    assert_eq!(user_of(first).await, json!("clinic-user"));
    let (status, problem) = token(&daemon, &admin, id, Some(json!({"subject": "nobody"}))).await;
    assert_eq!(
        (status, problem["code"].clone()),
        (409, json!("reauthorization_required"))
    );
}

backend_tests!(
    several_grants_per_tenant,
    rs256_hs256_and_public_clients_connect,
    fifty_concurrent_force_refreshes_keep_the_grant,
    states_are_one_time_and_provider_errors_are_shown,
    a_grant_revoked_at_the_provider_needs_reauthorization,
    misconfigured_tenants_are_explained,
    idle_grants_are_kept_alive,
);

/// The same 50 force_refresh calls spread over three replicas on one PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_refreshes_over_three_replicas_keep_the_grant() {
    let p = provider();
    let db = TestDb::new(Backend::Postgres).await;
    // Replicas share one configuration (above all, one master key).
    let mut config = DaemonConfig::new();
    config.extra_env.extend(provider_env());
    config
        .extra_env
        .push(("BROKER_DATABASE__MAX_CONNECTIONS".into(), "8".into()));
    let mut daemons = Vec::new();
    for _ in 0..3 {
        daemons.push(Arc::new(Daemon::start(&db, config.clone()).await));
    }
    let admin = Arc::new(daemons[0].api_key("admin", &[]));
    let (id, _) = tenant(&daemons[0], &admin, "confidential", Some("RS256")).await;
    assert_eq!(connect(&daemons[1], &admin, id).await.0, 200);
    let mut calls = Vec::new();
    for n in 0..50 {
        let (daemon, admin) = (daemons[n % 3].clone(), admin.clone());
        calls.push(tokio::spawn(async move {
            token(&daemon, &admin, id, Some(json!({"force_refresh": true}))).await
        }));
    }
    for call in calls {
        let (status, answer) = call.await.expect("task");
        assert_eq!(status, 200, "{answer}");
    }
    assert_never_overlapped(&p.token_requests(id).await);
    let (status, after) = token(
        &daemons[2],
        &admin,
        id,
        Some(json!({"force_refresh": true})),
    )
    .await;
    assert_eq!(status, 200, "{after}");
    assert_eq!(
        p.api_me(id, after["access_token"].as_str().expect("t"))
            .await
            .0,
        200
    );
}
