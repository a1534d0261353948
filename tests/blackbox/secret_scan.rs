//! One daemon through every path that touches a secret (hookups, client_credentials tokens,
//! the connect flow, refreshes, a lost grant, revocation, removal, errors), then a scan of
//! every log line, the metrics, every answer but the token endpoint's own, and the raw
//! database bytes, for every client secret, refresh token, access token and API key used.

use serde_json::json;
use wiremock::matchers::{body_string_contains, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::backend_tests;
use crate::connect::deliver;
use crate::helpers::*;
use crate::tokens::token;

fn canary(kind: &str) -> String {
    format!("{kind}-{}", distinctive_secret())
}

async fn no_secret_leaves_the_daemon(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = MockServer::start().await;
    let base = server.uri();
    let config = mock_provider_config(&[("BROKER_TOKENS__VERIFY_ON_HOOKUP", "true")]);
    let daemon = Daemon::start(&db, config).await;
    let mut secrets: Vec<String> = Vec::new();
    let mut access_tokens: Vec<String> = Vec::new();
    let mut answers = String::new();

    // A client_credentials tenant (checked on hookup, then served).
    let cc_secret = canary("client-secret");
    let cc_access = canary("access-cc");
    Mock::given(method("POST"))
        .and(path("/1/token/"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"access_token": cc_access, "token_type": "Bearer", "expires_in": 3600}),
        ))
        .mount(&server)
        .await;
    let cc = json!({
        "provet_id": 1, "client_id": "cc", "client_secret": cc_secret, "algorithm": null,
        "authorization_grant_type": "client_credentials", "client_type": "confidential", "redirect_uris": "",
        "token_url": format!("{base}/1/token/"), "authorize_url": format!("{base}/1/authorize/"),
        "openid_autodiscovery_url": null,
    });
    answers.push_str(&daemon.hookup(&cc).await.1.to_string());
    let admin = daemon.api_key("admin", &[]);
    let service = daemon.api_key("token", &[1, 2]);
    secrets.extend([cc_secret.clone(), admin.clone(), service.clone()]);
    access_tokens.push(cc_access);
    assert_eq!(token(&daemon, &service, 1, None).await.0, 200);

    // An authorization-code tenant: connect, refresh three times (rotating), lose the grant.
    let ac_secret = canary("client-secret");
    secrets.push(ac_secret.clone());
    let ac = json!({
        "provet_id": 2, "client_id": "ac", "client_secret": ac_secret, "algorithm": null,
        "authorization_grant_type": "authorization-code", "client_type": "confidential",
        "redirect_uris": "http://broker.test/oauth/callback",
        "token_url": format!("{base}/2/token/"), "authorize_url": format!("{base}/2/authorize/"),
        "openid_autodiscovery_url": null,
    });
    answers.push_str(&daemon.hookup(&ac).await.1.to_string());
    let refresh_tokens: Vec<String> = (0..4).map(|_| canary("refresh")).collect();
    let access: Vec<String> = (0..4).map(|_| canary("access-ac")).collect();
    secrets.extend(refresh_tokens.iter().cloned());
    access_tokens.extend(access.iter().cloned());
    Mock::given(method("POST"))
        .and(path("/2/token/"))
        .and(body_string_contains("grant_type=authorization_code"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": access[0], "token_type": "Bearer", "expires_in": 3600, "refresh_token": refresh_tokens[0], "scope": "restapi"
        })))
        .mount(&server)
        .await;
    for n in 1..4 {
        Mock::given(method("POST"))
            .and(path("/2/token/"))
            .and(body_string_contains(format!("refresh_token={}", refresh_tokens[n - 1])))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "access_token": access[n], "token_type": "Bearer", "expires_in": 3600, "refresh_token": refresh_tokens[n], "scope": "restapi"
            })))
            .mount(&server)
            .await;
    }
    Mock::given(method("POST"))
        .and(path("/2/token/"))
        .and(body_string_contains(format!(
            "refresh_token={}",
            refresh_tokens[3]
        )))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({"error": "invalid_grant"})))
        .mount(&server)
        .await;
    let (_, started) = daemon
        .send(
            reqwest::Method::POST,
            "/v1/tenants/2/authorizations",
            Some(&service),
            None,
        )
        .await;
    let state = query_param(&started["authorize_url"], "state");
    secrets.push(state.clone());
    let (status, page, _) = deliver(
        &daemon,
        &format!("http://broker.test/oauth/callback?code=the-code&state={state}"),
    )
    .await;
    assert_eq!(status, 200, "{page}");
    answers.push_str(&page);
    for _ in 0..3 {
        let (status, answer) =
            token(&daemon, &service, 2, Some(json!({"force_refresh": true}))).await;
        assert_eq!(status, 200, "{answer}");
    }
    let (status, lost) = token(&daemon, &service, 2, Some(json!({"force_refresh": true}))).await;
    assert_eq!(status, 409, "{lost}");
    answers.push_str(&lost.to_string());

    // Errors, admin views, events, metrics, removal.
    for (m, p, key, body) in [
        (
            reqwest::Method::GET,
            "/admin/tenants?limit=500",
            Some(admin.as_str()),
            None,
        ),
        (
            reqwest::Method::GET,
            "/admin/tenants/1",
            Some(admin.as_str()),
            None,
        ),
        (
            reqwest::Method::GET,
            "/admin/tenants/2",
            Some(admin.as_str()),
            None,
        ),
        (
            reqwest::Method::GET,
            "/admin/tenants/1/events",
            Some(admin.as_str()),
            None,
        ),
        (
            reqwest::Method::GET,
            "/admin/tenants/2/events",
            Some(admin.as_str()),
            None,
        ),
        (
            reqwest::Method::GET,
            "/admin/api-keys",
            Some(admin.as_str()),
            None,
        ),
        (
            reqwest::Method::GET,
            "/v1/tenants/1",
            Some(service.as_str()),
            None,
        ),
        (
            reqwest::Method::POST,
            "/v1/tenants/1/token",
            Some("pbk_wrong"),
            None,
        ),
        (
            reqwest::Method::POST,
            "/v1/tenants/1/token",
            Some(service.as_str()),
            Some(json!({"scope": 1})),
        ),
        (
            reqwest::Method::POST,
            "/admin/tenants/1/verify",
            Some(admin.as_str()),
            None,
        ),
        (
            reqwest::Method::DELETE,
            "/admin/tenants/1",
            Some(admin.as_str()),
            None,
        ),
        (reqwest::Method::GET, "/metrics", None, None),
    ] {
        answers.push_str(&daemon.send(m, p, key, body).await.1.to_string());
    }
    let mut bad = cc.clone();
    bad["client_secret"] = json!(42);
    bad["token_url"] = json!(format!("https://{}@evil.example/", cc_secret));
    answers.push_str(&daemon.hookup(&bad).await.1.to_string());

    let (status, logs) = daemon.stop();
    assert!(status.success());
    let bytes = db.raw_bytes().await;
    assert!(logs.contains("refreshed a grant"), "the logs were captured");
    assert!(contains(&bytes, "cc"), "the database bytes were captured");
    for secret in secrets.iter().chain(&access_tokens) {
        assert!(
            !logs.contains(secret.as_str()),
            "a secret is in the log: {}",
            &secret[..12]
        );
        assert!(
            !contains(&bytes, secret),
            "a secret is in the database bytes: {}",
            &secret[..12]
        );
    }
    // Access tokens may only appear in the token endpoint's own answers, not collected here.
    for secret in secrets.iter().chain(&access_tokens) {
        assert!(
            !answers.contains(secret.as_str()),
            "a secret is in an answer: {}",
            &secret[..12]
        );
    }
}

backend_tests!(no_secret_leaves_the_daemon);
