//! The two surfaces: with `server.internal_bind` set, the internal routes (`/v1`, `/admin`,
//! `/console`, `/metrics`, `/openapi.json`) answer only there and the public listener answers them `404`
//! like any unknown path, while the hookup, the callback and health stay public; unset, one
//! listener serves all. And undeclared methods on a known path: `405` with `Allow`.

use reqwest::Method;
use serde_json::Value;

use crate::backend_tests;
use crate::helpers::*;

backend_tests!(internal_routes_answer_only_on_the_internal_listener);

fn two_surfaces() -> DaemonConfig {
    let mut config = DaemonConfig::new();
    config.extra_env.push((
        "BROKER_SERVER__INTERNAL_BIND".to_owned(),
        "127.0.0.1:0".to_owned(),
    ));
    config
}

/// Sends `method path` to `base` with `key`; answers the status and the body.
async fn call(daemon: &Daemon, base: &str, method: Method, path: &str, key: &str) -> (u16, Value) {
    let response = daemon
        .http
        .request(method, format!("{base}{path}"))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// The internal routes a service or an operator calls (each with a method it answers).
/// Served means any answer but the unknown path's (`code` `not_found`) and no 5xx.
const INTERNAL: [(Method, &str); 13] = [
    (Method::GET, "/v1/tenants"),
    (Method::GET, "/v1/tenants/60"),
    // Unregistered: a token for it would call no provider.
    (Method::POST, "/v1/tenants/999/token"),
    (Method::GET, "/v1/events"),
    (Method::GET, "/admin/tenants"),
    (Method::GET, "/admin/tenants/60"),
    (Method::GET, "/admin/tenants/60/events"),
    (Method::GET, "/admin/api-keys"),
    (Method::GET, "/admin/webhooks"),
    (Method::GET, "/metrics"),
    (Method::GET, "/openapi.json"),
    // The operators' console: its sign-in page, or a redirect to it.
    (Method::GET, "/console"),
    (Method::GET, "/console/assets/console.css"),
];

async fn internal_routes_answer_only_on_the_internal_listener(backend: Backend) {
    let db = TestDb::new(backend).await;
    let daemon = Daemon::start(&db, two_surfaces()).await;
    assert_ne!(daemon.internal_base, daemon.base, "two listeners");
    let (public, internal) = (daemon.base.clone(), daemon.internal_base.clone());

    // The hookup is public, and only public.
    let (status, _) = daemon
        .hookup(&client_credentials(60, "a", "a-secret"))
        .await;
    assert_eq!(status, 200);
    let secret_path = daemon
        .hookup_url
        .strip_prefix(&public)
        .expect("public hookup URL");
    let (status, body) = call(&daemon, &internal, Method::POST, secret_path, "x").await;
    assert_eq!(status, 404, "hookup on the internal listener: {body}");
    let admin = daemon.api_key("admin", &[]);

    // What an unknown path answers on the public listener: internal paths look the same.
    let (status, unknown) = call(&daemon, &public, Method::GET, "/no/such/path", &admin).await;
    assert_eq!(status, 404);
    for (method, path) in INTERNAL {
        let (status, body) = call(&daemon, &public, method.clone(), path, &admin).await;
        assert_eq!(status, 404, "public {method} {path}: {body}");
        assert_eq!(body["code"], unknown["code"], "public {method} {path}");
        assert_eq!(body["detail"], unknown["detail"], "public {method} {path}");
        let (status, body) = call(&daemon, &internal, method.clone(), path, &admin).await;
        assert!(
            body["code"] != "not_found" && status < 500,
            "internal {method} {path}: {status} {body}"
        );
    }
    // Not even a 405 on the public side: the path does not exist there.
    let (status, _) = call(&daemon, &public, Method::TRACE, "/v1/tenants", &admin).await;
    assert_eq!(status, 404);
    let (status, tenant) = call(&daemon, &internal, Method::GET, "/admin/tenants/60", &admin).await;
    assert_eq!(status, 200);
    assert_eq!(tenant["client"]["client_id"], "a");

    // Health and the connect flow's callback are public; the internal listener has neither.
    for path in ["/healthz", "/readyz"] {
        assert_eq!(
            call(&daemon, &public, Method::GET, path, "x").await.0,
            200,
            "{path}"
        );
        assert_eq!(
            call(&daemon, &internal, Method::GET, path, "x").await.0,
            404,
            "{path}"
        );
    }
    let callback = "/oauth/callback?code=c&state=unknown";
    let (status, _) = call(&daemon, &public, Method::GET, callback, "x").await;
    assert!(status != 404 && status < 500, "public callback: {status}");
    assert_eq!(
        call(&daemon, &internal, Method::GET, callback, "x").await.0,
        404
    );

    let (exit, logs) = daemon.stop();
    assert!(exit.success(), "both servers drained and stopped: {logs}");
    let listening: Vec<Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["fields"]["message"] == "listening")
        .map(|v| v["fields"]["surface"].clone())
        .collect();
    assert_eq!(listening, ["public", "internal"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_internal_bind_one_listener_serves_everything() {
    let db = TestDb::new(Backend::Sqlite).await;
    let daemon = Daemon::start(&db, DaemonConfig::new()).await;
    assert_eq!(daemon.internal_base, daemon.base);
    let base = daemon.base.clone();
    assert_eq!(
        daemon
            .hookup(&client_credentials(60, "a", "a-secret"))
            .await
            .0,
        200
    );
    let admin = daemon.api_key("admin", &[]);
    for (method, path) in INTERNAL {
        let (status, body) = call(&daemon, &base, method.clone(), path, &admin).await;
        assert!(
            body["code"] != "not_found" && status < 500,
            "{method} {path}: {status} {body}"
        );
    }
    for path in ["/healthz", "/readyz"] {
        assert_eq!(
            call(&daemon, &base, Method::GET, path, "x").await.0,
            200,
            "{path}"
        );
    }
    let (status, _) = call(
        &daemon,
        &base,
        Method::GET,
        "/oauth/callback?code=c&state=x",
        "x",
    )
    .await;
    assert!(status != 404 && status < 500, "callback: {status}");
    let logs = daemon.log_text();
    assert!(
        logs.lines()
            .any(|l| l.contains(r#""message":"listening""#) && l.contains(r#""surface":"all""#)),
        "one listener for all: {logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undeclared_methods_answer_405_with_allow() {
    let db = TestDb::new(Backend::Sqlite).await;
    let daemon = Daemon::start(&db, DaemonConfig::new()).await;
    assert_eq!(
        daemon
            .hookup(&client_credentials(60, "a", "a-secret"))
            .await
            .0,
        200
    );
    let admin = daemon.api_key("admin", &[]);
    for (method, path, allow) in [
        (Method::TRACE, "/v1/tenants", "GET"),
        (Method::PUT, "/admin/tenants", "GET, POST"),
        (Method::DELETE, "/v1/tenants/60/token", "POST"),
        (Method::PATCH, "/admin/tenants/60", "GET, DELETE"),
        (Method::OPTIONS, "/admin/api-keys", "POST, GET"),
        (Method::POST, "/metrics", "GET"),
        (Method::POST, "/healthz", "GET"),
        (Method::PUT, "/oauth/callback", "GET"),
    ] {
        let response = daemon
            .http
            .request(method.clone(), daemon.url(path))
            .bearer_auth(&admin)
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 405, "{method} {path}");
        let headers = response.headers().clone();
        assert_eq!(headers["allow"], allow, "{method} {path}");
        assert_eq!(
            headers["content-type"], "application/problem+json",
            "{method} {path}"
        );
        let problem: Value = response.json().await.expect("problem+json");
        assert_eq!(problem["status"], 405);
        assert_eq!(problem["code"], "method_not_allowed");
        assert!(
            problem["detail"].as_str().unwrap().contains(allow),
            "{problem}"
        );
        assert_eq!(
            problem["request_id"],
            headers["x-request-id"].to_str().unwrap()
        );
    }
    // An unknown path stays 404 whatever the method.
    let response = daemon
        .http
        .request(Method::PUT, daemon.url("/v2/nothing"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);

    // The hookup URL: any other method is as unknown as a wrong secret.
    let wrong = format!("{}/hookup/not-the-secret-at-all", daemon.base);
    let (status, wrong_body) = daemon
        .post_raw(&wrong, b"{}".to_vec(), "application/json")
        .await;
    assert_eq!(status, 404);
    for method in [Method::GET, Method::PUT, Method::DELETE, Method::TRACE] {
        for url in [&daemon.hookup_url, &wrong] {
            let response = daemon
                .http
                .request(method.clone(), url)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 404, "{method} hookup");
            assert!(response.headers().get("allow").is_none());
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["code"], wrong_body["code"]);
            assert_eq!(body["detail"], wrong_body["detail"]);
        }
    }
}
