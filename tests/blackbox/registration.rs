//! Registering a tenant by hand (`POST /admin/tenants`, `tenants add`) and the service's
//! tenant list (`GET /v1/tenants`).

use serde_json::{Value, json};

use crate::backend_tests;
use crate::helpers::*;

backend_tests!(
    an_admin_registers_a_tenant_like_a_hookup,
    the_cli_registers_a_tenant_from_a_file_or_stdin,
    services_list_the_tenants_their_key_may_serve,
);

async fn an_admin_registers_a_tenant_like_a_hookup(backend: Backend) {
    let db = TestDb::new(backend).await;
    let daemon = Daemon::start(&db, DaemonConfig::new()).await;
    let admin = daemon.api_key("admin", &[]);
    let token = daemon.api_key("token", &[]);
    let msg = client_credentials(1101, "c-1101", &distinctive_secret());
    let post = |key: String, body: Value| {
        let daemon = &daemon;
        async move {
            daemon
                .send(
                    reqwest::Method::POST,
                    "/admin/tenants",
                    Some(&key),
                    Some(body),
                )
                .await
        }
    };
    assert_eq!(post(token.clone(), msg.clone()).await.0, 403);
    let (status, body) = post(admin.clone(), msg.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"provet_id": 1101, "client_id": "c-1101", "status": "registered"})
    );
    assert_eq!(
        post(admin.clone(), msg.clone()).await.1["status"],
        "unchanged"
    );

    // Invalid: every bad field named, nothing stored.
    let mut bad = client_credentials(1102, "c", "s");
    bad["client_type"] = json!("secretive");
    bad["token_url"] = json!("https://evil.example/token");
    bad.as_object_mut().unwrap().remove("authorize_url");
    let (status, body) = post(admin.clone(), bad).await;
    assert_eq!(status, 400, "{body}");
    let fields: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    for f in ["client_type", "token_url", "authorize_url"] {
        assert!(fields.contains(&f), "{f} not named: {body}");
    }
    assert_eq!(
        db.count("SELECT COUNT(*) FROM tenants WHERE provet_id = 1102")
            .await,
        0
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM hookup_deliveries WHERE provet_id = 1102")
            .await,
        0
    );

    // The deliveries show their source; the admin view links them.
    let (_, deliveries) = daemon.get("/admin/tenants/1101/events", Some(&admin)).await;
    let sources: Vec<&str> = deliveries["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["source"].as_str().unwrap())
        .collect();
    assert_eq!(sources, ["admin", "admin"]);
    let (_, view) = daemon.get("/admin/tenants/1101", Some(&admin)).await;
    assert_eq!(view["events_url"], "/admin/tenants/1101/events");
    assert_eq!(daemon.hookup(&msg).await.1["status"], "unchanged");
    let (_, deliveries) = daemon.get("/admin/tenants/1101/events", Some(&admin)).await;
    assert_eq!(deliveries["events"][0]["source"], "hookup");
    // Its event is in the feed, as a hookup's would be.
    let (_, page) = daemon.get("/v1/events?wait=5s", Some(&token)).await;
    assert_eq!(page["events"][0]["type"], "tenant.registered");
    assert_eq!(page["events"][0]["provet_id"], 1101);
}

async fn the_cli_registers_a_tenant_from_a_file_or_stdin(backend: Backend) {
    let db = TestDb::new(backend).await;
    let daemon = Daemon::start(&db, DaemonConfig::new()).await;
    let admin = daemon.api_key("admin", &[]);
    let file = db.dir.path().join("message.json");
    std::fs::write(&file, client_credentials(1201, "c-1201", "s").to_string()).unwrap();
    let (ok, stdout, stderr) = daemon.cli(&["tenants", "add", "--file", file.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    let receipt: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(
        receipt,
        json!({"provet_id": 1201, "client_id": "c-1201", "status": "registered"})
    );
    let stdin = client_credentials(1202, "c-1202", "s").to_string();
    let (ok, stdout, stderr) = daemon.cli_with_stdin(&["tenants", "add"], stdin.as_bytes());
    assert!(ok, "{stderr}");
    assert!(stdout.contains("\"registered\""), "{stdout}");

    let mut bad = client_credentials(1203, "c", "s");
    bad["provet_id"] = json!(1.5);
    bad["redirect_uris"] = json!(7);
    let (ok, _, stderr) = daemon.cli_with_stdin(&["tenants", "add"], bad.to_string().as_bytes());
    assert!(!ok);
    assert!(
        stderr.contains("provet_id") && stderr.contains("redirect_uris"),
        "{stderr}"
    );
    assert!(stderr.contains("nothing was stored"), "{stderr}");
    let (ok, _, _) = daemon.cli_with_stdin(&["tenants", "add"], b"{not json");
    assert!(!ok);
    assert_eq!(db.count("SELECT COUNT(*) FROM tenants").await, 2);

    let (_, deliveries) = daemon.get("/admin/tenants/1201/events", Some(&admin)).await;
    assert_eq!(deliveries["events"][0]["source"], "cli");
    // The daemon serves what the command stored, with its events.
    let (status, tenant) = daemon.get("/v1/tenants/1202", Some(&admin)).await;
    assert_eq!(status, 200);
    assert_eq!(
        tenant["api_base_url"],
        "https://us.provetcloud.com/1202/api/0.1/"
    );
    let (_, page) = daemon.get("/v1/events?wait=5s", Some(&admin)).await;
    assert_eq!(page["events"].as_array().unwrap().len(), 2, "{page}");
}

async fn services_list_the_tenants_their_key_may_serve(backend: Backend) {
    let db = TestDb::new(backend).await;
    let daemon = Daemon::start(&db, DaemonConfig::new()).await;
    let admin = daemon.api_key("admin", &[]);
    for id in 1301..=1305 {
        assert_eq!(
            daemon.hookup(&client_credentials(id, "c", "s")).await.0,
            200
        );
    }
    let mut ac = authorization_code(1306, "c", "s");
    ac["token_url"] = json!("https://enterprise.provetcloud.com/1306/oauth2/token/");
    assert_eq!(daemon.hookup(&ac).await.0, 200);
    daemon
        .send(
            reqwest::Method::DELETE,
            "/admin/tenants/1305",
            Some(&admin),
            None,
        )
        .await;
    let scoped = daemon.api_key("token", &[1302, 1305, 1306]);
    let unscoped = daemon.api_key("token", &[]);

    let ids = |page: &Value| -> Vec<i64> {
        page["tenants"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["provet_id"].as_i64().unwrap())
            .collect()
    };
    // Pages of two, active by default.
    let (status, page) = daemon.get("/v1/tenants?limit=2", Some(&unscoped)).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(ids(&page), [1301, 1302]);
    assert_eq!(page["next_after"], 1302);
    let (_, page) = daemon
        .get("/v1/tenants?limit=2&after=1302", Some(&unscoped))
        .await;
    assert_eq!(ids(&page), [1303, 1304]);
    let (_, page) = daemon
        .get("/v1/tenants?limit=2&after=1304", Some(&unscoped))
        .await;
    assert_eq!(ids(&page), [1306]);
    assert_eq!(page["next_after"], Value::Null);
    let t = &page["tenants"][0];
    assert_eq!(
        t["api_base_url"],
        "https://enterprise.provetcloud.com/1306/api/0.1/"
    );
    assert_eq!(t["status"], "active");
    assert_eq!(t["grant_type"], "authorization_code");
    assert!(t["updated_at"].is_string());
    assert!(t.get("client_secret").is_none());

    // Scoped keys see only their tenants; status filters.
    let (_, page) = daemon.get("/v1/tenants", Some(&scoped)).await;
    assert_eq!(ids(&page), [1302, 1306]);
    let (_, page) = daemon.get("/v1/tenants?status=all", Some(&scoped)).await;
    assert_eq!(ids(&page), [1302, 1305, 1306]);
    let (_, page) = daemon.get("/v1/tenants?status=removed", Some(&admin)).await;
    assert_eq!(ids(&page), [1305]);
    assert_eq!(page["tenants"][0]["status"], "removed");
    // updated_since: in the future nothing, in the past everything.
    let (_, page) = daemon
        .get(
            "/v1/tenants?updated_since=2999-01-01T00:00:00Z",
            Some(&admin),
        )
        .await;
    assert_eq!(ids(&page), Vec::<i64>::new());
    let (_, page) = daemon
        .get(
            "/v1/tenants?updated_since=2000-01-01T00:00:00%2B00:00",
            Some(&admin),
        )
        .await;
    assert_eq!(ids(&page).len(), 5);
    for query in ["status=gone", "updated_since=yesterday"] {
        let (status, _) = daemon
            .get(&format!("/v1/tenants?{query}"), Some(&admin))
            .await;
        assert_eq!(status, 400, "{query}");
    }
    assert_eq!(daemon.get("/v1/tenants", None).await.0, 401);
    let (_, one) = daemon.get("/v1/tenants/1301", Some(&scoped)).await;
    assert_eq!(one["code"], "forbidden");
    let (_, one) = daemon.get("/v1/tenants/1301", Some(&unscoped)).await;
    assert_eq!(
        one["api_base_url"],
        "https://us.provetcloud.com/1301/api/0.1/"
    );
}
