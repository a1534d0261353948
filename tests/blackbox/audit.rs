//! The audit log (`GET /admin/audit`): every admin action through the API and the CLI, with
//! who did it, to what, and how it ended; never a secret.

use reqwest::Method;
use serde_json::{Value, json};

use crate::backend_tests;
use crate::helpers::*;

backend_tests!(
    admin_actions_through_the_api_are_audited,
    cli_commands_are_audited_and_removal_asks_first,
);

/// Creates an admin key with a known name through the CLI.
fn named_admin(daemon: &Daemon, name: &str) -> String {
    let (ok, stdout, stderr) =
        daemon.cli(&["api-key", "create", "--name", name, "--role", "admin"]);
    assert!(ok, "{stderr}");
    stdout.lines().last().expect("key line").trim().to_owned()
}

async fn audit(daemon: &Daemon, key: &str, query: &str) -> Vec<Value> {
    let (status, page) = daemon.get(&format!("/admin/audit{query}"), Some(key)).await;
    assert_eq!(status, 200, "{page}");
    page["entries"].as_array().expect("entries").clone()
}

fn find<'a>(entries: &'a [Value], action: &str) -> Vec<&'a Value> {
    entries.iter().filter(|e| e["action"] == action).collect()
}

async fn admin_actions_through_the_api_are_audited(backend: Backend) {
    let db = TestDb::new(backend).await;
    let daemon = Daemon::start(&db, DaemonConfig::new()).await;
    let admin = named_admin(&daemon, "ops-alice");
    let secret = distinctive_secret();
    let send = |method: Method, path: &'static str, body: Option<Value>| {
        let (daemon, admin) = (&daemon, admin.clone());
        async move { daemon.send(method, path, Some(&admin), body).await }
    };

    // Register a tenant by hand (ok), and a bad message (refused).
    let (status, body) = send(
        Method::POST,
        "/admin/tenants",
        Some(client_credentials(7301, "c-7301", &secret)),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let mut bad = client_credentials(7302, "c", "s");
    bad["client_type"] = json!("secretive");
    assert_eq!(send(Method::POST, "/admin/tenants", Some(bad)).await.0, 400);
    // An API key created and revoked; one refused (bad role).
    let (status, created) = send(
        Method::POST,
        "/admin/api-keys",
        Some(json!({"name": "sync-service", "role": "token"})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let new_key = created["key"].as_str().expect("key").to_owned();
    let key_id = created["id"].as_i64().expect("id");
    assert_eq!(
        send(
            Method::POST,
            "/admin/api-keys",
            Some(json!({"name": "x", "role": "root"})),
        )
        .await
        .0,
        400
    );
    let revoke = format!("/admin/api-keys/{key_id}");
    assert_eq!(
        daemon
            .send(Method::DELETE, &revoke, Some(&admin), None)
            .await
            .0,
        204
    );
    // Discovery for many; a grant that does not exist (refused); a webhook created, deleted.
    assert_eq!(
        send(
            Method::POST,
            "/admin/discovery/rerun",
            Some(json!({"filter": "all"})),
        )
        .await
        .0,
        202
    );
    assert_eq!(
        send(Method::DELETE, "/admin/tenants/7301/grants/nobody", None)
            .await
            .0,
        404
    );
    let (status, hook) = send(
        Method::POST,
        "/admin/webhooks",
        Some(json!({"url": "http://127.0.0.1:9/hook?token=receiver-token", "events": ["*"]})),
    )
    .await;
    assert_eq!(status, 201, "{hook}");
    let hook_secret = hook["secret"].as_str().expect("secret").to_owned();
    let hook_path = format!("/admin/webhooks/{}", hook["id"]);
    assert_eq!(
        daemon
            .send(Method::DELETE, &hook_path, Some(&admin), None)
            .await
            .0,
        204
    );
    // And the tenant removed.
    assert_eq!(
        send(Method::DELETE, "/admin/tenants/7301", None).await.0,
        200
    );
    // Reads are not actions.
    assert_eq!(daemon.get("/admin/tenants", Some(&admin)).await.0, 200);

    let entries = audit(&daemon, &admin, "").await;
    let expect = [
        ("tenant.register", "ok", Some(7301)),
        ("tenant.register", "refused", None),
        ("api_key.create", "ok", None),
        ("api_key.create", "refused", None),
        ("api_key.revoke", "ok", None),
        ("discovery.rerun", "ok", None),
        ("grant.revoke", "refused", Some(7301)),
        ("webhook.create", "ok", None),
        ("webhook.delete", "ok", None),
        ("tenant.remove", "ok", Some(7301)),
    ];
    // Newest first: the API entries, in reverse order of the actions, after the CLI's key.
    let api: Vec<&Value> = entries
        .iter()
        .filter(|e| e["actor"]["kind"] == "api_key")
        .collect();
    assert_eq!(api.len(), expect.len(), "{entries:#?}");
    for (entry, (action, outcome, provet_id)) in api.iter().rev().zip(expect) {
        assert_eq!(entry["action"], action, "{entry}");
        assert_eq!(entry["outcome"], outcome, "{entry}");
        assert_eq!(entry["actor"]["name"], "ops-alice", "{entry}");
        if let Some(p) = provet_id {
            assert_eq!(entry["provet_id"], p, "{entry}");
        }
        assert!(entry["at"].as_str().is_some_and(|t| t.contains('T')));
    }
    assert_eq!(
        find(&entries, "api_key.revoke")[0]["target"],
        format!("api key {key_id}")
    );
    assert_eq!(find(&entries, "grant.revoke")[0]["target"], "grant nobody");
    // The CLI's key creation is there too, as the CLI.
    let cli = find(&entries, "api_key.create")
        .into_iter()
        .find(|e| e["actor"]["kind"] == "cli")
        .expect("the CLI's key creation");
    assert!(
        cli["target"].as_str().unwrap().contains("ops-alice"),
        "{cli}"
    );

    // Never a secret: not the client secret, the new key, the webhook's secret or its URL's token.
    let text = serde_json::to_string(&entries).unwrap();
    for s in [
        secret.as_str(),
        &new_key,
        &hook_secret,
        "receiver-token",
        &admin,
    ] {
        assert!(!text.contains(s), "a secret in the audit log");
    }
    let rows = db
        .column("SELECT actor_name || ' ' || COALESCE(target, '') FROM audit_log")
        .await;
    let stored = format!("{rows:?}");
    for s in [secret.as_str(), &new_key, &hook_secret, "receiver-token"] {
        assert!(!stored.contains(s), "a secret in audit_log");
    }

    // Filter by action, page with limit and before.
    let removes = audit(&daemon, &admin, "?action=tenant.remove").await;
    assert_eq!(removes.len(), 1);
    assert_eq!(removes[0]["provet_id"], 7301);
    let (_, first) = daemon.get("/admin/audit?limit=3", Some(&admin)).await;
    assert_eq!(first["entries"].as_array().unwrap().len(), 3);
    let before = first["next_before"].as_i64().expect("next_before");
    let second = audit(&daemon, &admin, &format!("?limit=3&before={before}")).await;
    assert_eq!(second.len(), 3);
    assert!(second.iter().all(|e| e["id"].as_i64().unwrap() < before));
    let tenant_only = audit(&daemon, &admin, "?provet_id=7301").await;
    assert_eq!(tenant_only.len(), 3, "{tenant_only:#?}");
    // Bad queries name the problem; token keys cannot read the log.
    let (status, problem) = daemon
        .get("/admin/audit?action=tenant.explode", Some(&admin))
        .await;
    assert_eq!(status, 400);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("tenant.remove")
    );
    assert_eq!(
        daemon.get("/admin/audit?limit=0", Some(&admin)).await.0,
        400
    );
    let token = daemon.api_key("token", &[]);
    assert_eq!(daemon.get("/admin/audit", Some(&token)).await.0, 403);
    assert_eq!(daemon.get("/admin/audit", None).await.0, 401);
}

async fn cli_commands_are_audited_and_removal_asks_first(backend: Backend) {
    let db = TestDb::new(backend).await;
    let daemon = Daemon::start(&db, DaemonConfig::new()).await;
    let admin = named_admin(&daemon, "ops-bob");
    let msg =
        serde_json::to_vec(&client_credentials(7311, "c-7311", &distinctive_secret())).unwrap();
    let (ok, _, stderr) = daemon.cli_with_stdin(&["tenants", "add"], &msg);
    assert!(ok, "{stderr}");

    // A wrong confirmation removes nothing.
    let (ok, _, stderr) = daemon.cli_with_stdin(&["tenants", "remove", "7311"], b"7312\n");
    assert!(!ok);
    assert!(stderr.contains("nothing was removed"), "{stderr}");
    let (_, tenant) = daemon.get("/admin/tenants/7311", Some(&admin)).await;
    assert_eq!(tenant["status"], "active");
    // The typed provet_id confirms.
    let (ok, _, stderr) = daemon.cli_with_stdin(&["tenants", "remove", "7311"], b"7311\n");
    assert!(ok, "{stderr}");
    let (_, tenant) = daemon.get("/admin/tenants/7311", Some(&admin)).await;
    assert_eq!(tenant["status"], "removed");
    // `--yes` for scripts; an unknown tenant is refused.
    let (ok, _, _) = daemon.cli(&["tenants", "remove", "7399", "--yes"]);
    assert!(!ok);
    let (ok, _, stderr) = daemon.cli(&["api-key", "revoke", "999"]);
    assert!(!ok, "{stderr}");

    let entries = audit(&daemon, &admin, "").await;
    let cli: Vec<(&str, &str, Value)> = entries
        .iter()
        .filter(|e| e["actor"]["kind"] == "cli")
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["outcome"].as_str().unwrap(),
                e["provet_id"].clone(),
            )
        })
        .rev()
        .collect();
    assert_eq!(
        cli,
        vec![
            ("api_key.create", "ok", Value::Null),
            ("tenant.register", "ok", json!(7311)),
            ("tenant.remove", "ok", json!(7311)),
            ("tenant.remove", "refused", json!(7399)),
            ("api_key.revoke", "refused", Value::Null),
        ],
        "{entries:#?}"
    );
    assert!(
        entries
            .iter()
            .all(|e| e["actor"]["name"].as_str().is_some_and(|n| !n.is_empty()))
    );
}
