//! API keys, the admin endpoints and the service view of a tenant.

use reqwest::Method;
use serde_json::{Value, json};

use crate::backend_tests;
use crate::helpers::*;

async fn api_keys_guard_every_key_route(backend: Backend) {
    let db = TestDb::new(backend).await;
    let daemon = Daemon::start(&db, DaemonConfig::new()).await;
    assert_eq!(
        daemon
            .hookup(&client_credentials(60, "a", "a-secret"))
            .await
            .0,
        200
    );
    assert_eq!(
        daemon
            .hookup(&client_credentials(61, "b", "b-secret"))
            .await
            .0,
        200
    );
    let admin = daemon.api_key("admin", &[]);
    let token_60 = daemon.api_key("token", &[60]);

    // No key, an unknown key, a malformed header.
    let (status, problem) = daemon.get("/admin/tenants", None).await;
    assert_eq!(status, 401);
    assert_eq!(problem["code"], "unauthorized");
    assert_eq!(
        daemon
            .get("/admin/tenants", Some("pbk_not-a-real-key"))
            .await
            .0,
        401
    );
    assert_eq!(daemon.get("/v1/tenants/60", Some("garbage")).await.0, 401);
    // A token key is not an admin key.
    let (status, problem) = daemon.get("/admin/tenants", Some(&token_60)).await;
    assert_eq!(status, 403);
    assert_eq!(problem["code"], "forbidden");
    for (method, path) in [
        (Method::GET, "/admin/tenants/60"),
        (Method::GET, "/admin/tenants/60/events"),
        (Method::DELETE, "/admin/tenants/60"),
        (Method::GET, "/admin/api-keys"),
        (Method::POST, "/admin/api-keys"),
        (Method::DELETE, "/admin/api-keys/1"),
    ] {
        let body = (method == Method::POST).then(|| json!({"name": "x", "role": "admin"}));
        assert_eq!(
            daemon
                .send(method.clone(), path, Some(&token_60), body.clone())
                .await
                .0,
            403,
            "{method} {path}"
        );
        assert_eq!(
            daemon.send(method.clone(), path, None, body).await.0,
            401,
            "{method} {path}"
        );
    }
    // A token key limited to tenant 60 serves 60 only.
    let (status, tenant) = daemon.get("/v1/tenants/60", Some(&token_60)).await;
    assert_eq!(status, 200, "{tenant}");
    assert_eq!(tenant["provet_id"], 60);
    assert_eq!(tenant["grant_type"], "client_credentials");
    assert_eq!(tenant["usable_grant"], true);
    assert!(!tenant.to_string().contains("a-secret"));
    let (status, problem) = daemon.get("/v1/tenants/61", Some(&token_60)).await;
    assert_eq!(status, 403);
    assert_eq!(problem["code"], "forbidden");
    // Admin keys serve every tenant; unknown tenants are 404.
    assert_eq!(daemon.get("/v1/tenants/61", Some(&admin)).await.0, 200);
    let (status, problem) = daemon.get("/v1/tenants/999", Some(&admin)).await;
    assert_eq!(status, 404);
    assert_eq!(problem["code"], "tenant_not_found");

    // Keys through the admin API: create, list, revoke.
    let (status, created) = daemon
        .send(
            Method::POST,
            "/admin/api-keys",
            Some(&admin),
            Some(json!({"name": "svc", "role": "token", "tenants": [61]})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let key = created["key"].as_str().expect("key").to_owned();
    assert_eq!(daemon.get("/v1/tenants/61", Some(&key)).await.0, 200);
    let (_, list) = daemon.get("/admin/api-keys", Some(&admin)).await;
    let listed = list["api_keys"].as_array().expect("keys");
    assert_eq!(listed.len(), 3);
    assert!(
        !list.to_string().contains(&key),
        "the list must never show a key"
    );
    let id = created["id"].as_i64().expect("id");
    assert_eq!(
        daemon
            .send(
                Method::DELETE,
                &format!("/admin/api-keys/{id}"),
                Some(&admin),
                None
            )
            .await
            .0,
        204
    );
    assert_eq!(daemon.get("/v1/tenants/61", Some(&key)).await.0, 401);
    assert_eq!(
        daemon
            .send(
                Method::DELETE,
                &format!("/admin/api-keys/{id}"),
                Some(&admin),
                None
            )
            .await
            .0,
        404
    );
    // Bad bodies are problems, not crashes.
    let (status, problem) = daemon
        .send(
            Method::POST,
            "/admin/api-keys",
            Some(&admin),
            Some(json!({"name": "x", "role": "root"})),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(problem["code"], "invalid_request");
    // Only hashes are stored.
    assert!(!contains(&db.raw_bytes().await, &key));
    assert!(!contains(&db.raw_bytes().await, &admin));
}

async fn admin_lists_filters_and_pages_tenants(backend: Backend) {
    let db = TestDb::new(backend).await;
    let daemon = Daemon::start(&db, DaemonConfig::new()).await;
    let admin = daemon.api_key("admin", &[]);
    for id in 1..=5 {
        assert_eq!(
            daemon
                .hookup(&client_credentials(id, &format!("c{id}"), "s-secret"))
                .await
                .0,
            200
        );
    }
    for id in 6..=7 {
        assert_eq!(
            daemon
                .hookup(&authorization_code(id, &format!("c{id}"), "s-secret"))
                .await
                .0,
            200
        );
    }
    let ids = |page: &Value| -> Vec<i64> {
        page["tenants"]
            .as_array()
            .expect("tenants")
            .iter()
            .map(|t| t["provet_id"].as_i64().expect("id"))
            .collect()
    };
    let (_, page1) = daemon.get("/admin/tenants?limit=3", Some(&admin)).await;
    assert_eq!(ids(&page1), [1, 2, 3]);
    assert_eq!(page1["next_after"], 3);
    let (_, page3) = daemon
        .get("/admin/tenants?limit=3&after=6", Some(&admin))
        .await;
    assert_eq!(ids(&page3), [7]);
    assert_eq!(page3["next_after"], Value::Null);
    let (_, ac) = daemon
        .get("/admin/tenants?grant_type=authorization-code", Some(&admin))
        .await;
    assert_eq!(ids(&ac), [6, 7]);
    let (_, pending) = daemon
        .get("/admin/tenants?discovery=pending", Some(&admin))
        .await;
    assert_eq!(ids(&pending), [6, 7]);
    let (_, na) = daemon
        .get(
            "/admin/tenants?discovery=not_applicable&limit=2",
            Some(&admin),
        )
        .await;
    assert_eq!(ids(&na), [1, 2]);
    for bad in [
        "status=gone",
        "limit=0",
        "limit=501",
        "grant_type=password",
        "after=x",
        "unknown=1",
    ] {
        let (status, problem) = daemon
            .get(&format!("/admin/tenants?{bad}"), Some(&admin))
            .await;
        assert_eq!(status, 400, "{bad}: {problem}");
        assert_eq!(problem["code"], "invalid_request");
    }

    // Removing a tenant disables it and wipes its secret.
    let (status, removed) = daemon
        .send(Method::DELETE, "/admin/tenants/2", Some(&admin), None)
        .await;
    assert_eq!(status, 200, "{removed}");
    assert_eq!(removed["status"], "removed");
    assert_eq!(removed["client"]["has_secret"], false);
    assert_eq!(
        db.column("SELECT client_secret FROM clients WHERE provet_id = 2")
            .await,
        [Value::Null]
    );
    let (_, active) = daemon
        .get("/admin/tenants?status=active", Some(&admin))
        .await;
    assert_eq!(ids(&active), [1, 3, 4, 5, 6, 7]);
    let (_, gone) = daemon
        .get("/admin/tenants?status=removed", Some(&admin))
        .await;
    assert_eq!(ids(&gone), [2]);
    assert_eq!(daemon.get("/v1/tenants/2", Some(&admin)).await.0, 404);
    assert_eq!(
        daemon
            .send(Method::DELETE, "/admin/tenants/99", Some(&admin), None)
            .await
            .0,
        404
    );
    assert_eq!(daemon.get("/admin/tenants/99", Some(&admin)).await.0, 404);
    assert_eq!(daemon.get("/admin/tenants/abc", Some(&admin)).await.0, 400);
    // Provet installing it again brings the tenant back.
    let (status, again) = daemon
        .hookup(&client_credentials(2, "c2", "s-secret"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(again["status"], "registered");
    assert_eq!(
        daemon.get("/admin/tenants/2", Some(&admin)).await.1["status"],
        "active"
    );
}

async fn events_record_every_delivery_redacted(backend: Backend) {
    let db = TestDb::new(backend).await;
    let daemon = Daemon::start(&db, DaemonConfig::new()).await;
    let admin = daemon.api_key("admin", &[]);
    let secret = distinctive_secret();
    let m = client_credentials(70, "ev", &secret);
    daemon.hookup(&m).await;
    daemon.hookup(&m).await;
    let mut bad = m.clone();
    bad["token_url"] = "https://evil.example/".into();
    assert_eq!(daemon.hookup(&bad).await.0, 400);
    let (status, events) = daemon
        .get("/admin/tenants/70/events?limit=2", Some(&admin))
        .await;
    assert_eq!(status, 200);
    let list = events["events"].as_array().expect("events");
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["outcome"], "rejected");
    assert_eq!(list[0]["errors"][0]["field"], "token_url");
    assert_eq!(list[1]["outcome"], "unchanged");
    assert_eq!(list[1]["payload"]["client_secret"], "[redacted]");
    assert_eq!(list[1]["digest"].as_str().map(str::len), Some(64));
    let before = events["next_before"].as_i64().expect("next page");
    let (_, older) = daemon
        .get(
            &format!("/admin/tenants/70/events?before={before}"),
            Some(&admin),
        )
        .await;
    assert_eq!(older["events"].as_array().map(Vec::len), Some(1));
    assert_eq!(older["events"][0]["outcome"], "registered");
    assert!(!events.to_string().contains(&secret));
    assert!(!older.to_string().contains(&secret));
    assert_eq!(
        daemon.get("/admin/tenants/71/events", Some(&admin)).await.0,
        404
    );
}

backend_tests!(
    api_keys_guard_every_key_route,
    admin_lists_filters_and_pages_tenants,
    events_record_every_delivery_redacted,
);
