//! The hookup URL, driven as Provet drives it.

use serde_json::{Value, json};

use crate::backend_tests;
use crate::helpers::*;

/// The fields the hookup schema requires, in its order.
const REQUIRED_FIELDS: [&str; 10] = [
    "provet_id",
    "client_id",
    "client_secret",
    "algorithm",
    "authorization_grant_type",
    "client_type",
    "redirect_uris",
    "token_url",
    "authorize_url",
    "openid_autodiscovery_url",
];

async fn started(backend: Backend) -> (TestDb, Daemon, String) {
    let db = TestDb::new(backend).await;
    let daemon = Daemon::start(&db, DaemonConfig::new()).await;
    let admin = daemon.api_key("admin", &[]);
    (db, daemon, admin)
}

async fn registers_a_client_credentials_tenant(backend: Backend) {
    let (db, daemon, admin) = started(backend).await;
    let (status, body) = daemon
        .hookup(&client_credentials(41, "cc-client", "cc-secret-41"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"provet_id": 41, "client_id": "cc-client", "status": "registered"})
    );

    let (status, tenant) = daemon.get("/admin/tenants/41", Some(&admin)).await;
    assert_eq!(status, 200, "{tenant}");
    assert_eq!(tenant["status"], "active");
    assert_eq!(tenant["client"]["client_id"], "cc-client");
    assert_eq!(tenant["client"]["grant_type"], "client_credentials");
    assert_eq!(tenant["client"]["client_type"], "confidential");
    assert_eq!(
        tenant["client"]["token_url"],
        "https://us.provetcloud.com/41/oauth2/token/"
    );
    assert_eq!(tenant["credentials"]["state"], "unchecked");
    assert_eq!(tenant["discovery"]["state"], "not_applicable");
    assert_eq!(tenant["grants"], json!([]));
    assert!(!tenant.to_string().contains("cc-secret-41"));

    // Stored encrypted: the column holds a sealed value, never the secret.
    let stored = db
        .column("SELECT client_secret FROM clients WHERE provet_id = 41")
        .await;
    let sealed = stored[0].as_str().expect("a sealed secret");
    assert!(sealed.starts_with("v1:"), "{sealed}");
    assert!(!sealed.contains("cc-secret-41"));
    assert_eq!(
        db.count("SELECT COUNT(*) FROM hookup_deliveries WHERE provet_id = 41")
            .await,
        1
    );
}

async fn registers_an_authorization_code_tenant_in_either_spelling(backend: Backend) {
    let (_db, daemon, admin) = started(backend).await;
    let (status, body) = daemon
        .hookup(&authorization_code(42, "ac-client", "ac-secret"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "registered");
    let mut rfc = authorization_code(43, "ac-client-2", "ac-secret-2");
    rfc["authorization_grant_type"] = "authorization_code".into();
    rfc["client_type"] = "public".into();
    rfc["client_secret"] = Value::Null;
    rfc["algorithm"] = "".into();
    let (status, body) = daemon.hookup(&rfc).await;
    assert_eq!(status, 200, "{body}");

    let (_, tenant) = daemon.get("/admin/tenants/42", Some(&admin)).await;
    assert_eq!(tenant["client"]["grant_type"], "authorization_code");
    assert_eq!(tenant["client"]["algorithm"], "RS256");
    assert_eq!(
        tenant["client"]["redirect_uris"],
        json!([
            "http://broker.test/oauth/callback",
            "https://other.example/cb"
        ])
    );
    assert_eq!(tenant["discovery"]["state"], "pending");
    assert_eq!(tenant["departments"], json!([1, 2]));
    let (_, public) = daemon.get("/admin/tenants/43", Some(&admin)).await;
    assert_eq!(public["client"]["client_type"], "public");
    assert_eq!(public["client"]["has_secret"], false);
    assert_eq!(public["client"]["algorithm"], Value::Null);
}

async fn a_duplicate_delivery_is_unchanged_and_changes_nothing(backend: Backend) {
    let (db, daemon, admin) = started(backend).await;
    let message = authorization_code(44, "dup", "dup-secret");
    assert_eq!(daemon.hookup(&message).await.1["status"], "registered");
    let (_, before) = daemon.get("/admin/tenants/44", Some(&admin)).await;
    let sealed_before = db.column("SELECT client_secret FROM clients").await;

    let (status, body) = daemon.hookup(&message).await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "unchanged");
    let (_, after) = daemon.get("/admin/tenants/44", Some(&admin)).await;
    assert_eq!(before, after);
    assert_eq!(
        sealed_before,
        db.column("SELECT client_secret FROM clients").await
    );
    assert_eq!(db.count("SELECT COUNT(*) FROM clients").await, 1);
    // Only the delivery record is new.
    let (_, events) = daemon.get("/admin/tenants/44/events", Some(&admin)).await;
    let outcomes: Vec<&str> = events["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["outcome"].as_str().expect("outcome"))
        .collect();
    assert_eq!(outcomes, ["unchanged", "registered"]);
    assert_eq!(
        events["events"][0]["payload"]["client_secret"],
        "[redacted]"
    );

    // A changed secret for the same client is an update.
    let mut rotated = message.clone();
    rotated["client_secret"] = "dup-secret-2".into();
    assert_eq!(daemon.hookup(&rotated).await.1["status"], "updated");
}

async fn a_new_client_supersedes_the_old_one(backend: Backend) {
    let (db, daemon, admin) = started(backend).await;
    assert_eq!(
        daemon
            .hookup(&client_credentials(45, "old-client", "old-secret"))
            .await
            .0,
        200
    );
    let (status, body) = daemon
        .hookup(&client_credentials(45, "new-client", "new-secret"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"provet_id": 45, "client_id": "new-client", "status": "updated"})
    );

    let (_, tenant) = daemon.get("/admin/tenants/45", Some(&admin)).await;
    assert_eq!(tenant["client"]["client_id"], "new-client");
    // The old client is kept for audit, its secret wiped.
    assert_eq!(
        db.column("SELECT client_secret FROM clients WHERE client_id = 'old-client'")
            .await,
        [Value::Null]
    );
    assert_eq!(
        db.column("SELECT superseded_at IS NOT NULL FROM clients WHERE client_id = 'old-client'")
            .await
            .len(),
        1
    );
    assert!(
        db.column("SELECT client_secret FROM clients WHERE client_id = 'new-client'")
            .await[0]
            .is_string()
    );
}

async fn department_changes_apply(backend: Backend) {
    let (_db, daemon, admin) = started(backend).await;
    let mut m = client_credentials(46, "deps", "deps-secret");
    m["departments"] = json!([3, 1]);
    assert_eq!(daemon.hookup(&m).await.1["status"], "registered");
    let departments = |v: &Value| v["departments"].clone();
    assert_eq!(
        departments(&daemon.get("/admin/tenants/46", Some(&admin)).await.1),
        json!([1, 3])
    );

    let mut added = client_credentials(46, "deps", "deps-secret");
    added["added_department"] = json!(7);
    assert_eq!(daemon.hookup(&added).await.1["status"], "updated");
    assert_eq!(
        departments(&daemon.get("/admin/tenants/46", Some(&admin)).await.1),
        json!([1, 3, 7])
    );
    // Adding again changes nothing.
    assert_eq!(daemon.hookup(&added).await.1["status"], "unchanged");

    let mut removed = client_credentials(46, "deps", "deps-secret");
    removed["removed_department"] = json!(1);
    removed["added_department"] = Value::Null;
    assert_eq!(daemon.hookup(&removed).await.1["status"], "updated");
    assert_eq!(
        departments(&daemon.get("/admin/tenants/46", Some(&admin)).await.1),
        json!([3, 7])
    );

    // A full set replaces whatever was there.
    let mut full = client_credentials(46, "deps", "deps-secret");
    full["departments"] = json!([9]);
    full["added_department"] = json!(3);
    assert_eq!(daemon.hookup(&full).await.1["status"], "updated");
    assert_eq!(
        departments(&daemon.get("/admin/tenants/46", Some(&admin)).await.1),
        json!([9])
    );
}

async fn a_wrong_secret_looks_like_an_unknown_path(backend: Backend) {
    let (db, daemon, _admin) = started(backend).await;
    let body = client_credentials(47, "x", "wrong-secret-body")
        .to_string()
        .into_bytes();
    let wrong = daemon.url("/hookup/not-the-secret");
    let (status, mut wrong_body) = daemon
        .post_raw(&wrong, body.clone(), "application/json")
        .await;
    assert_eq!(status, 404);
    let (status, mut unknown_body) = daemon
        .post_raw(
            &daemon.url("/no/such/path"),
            body.clone(),
            "application/json",
        )
        .await;
    assert_eq!(status, 404);
    // Each answer has its own request id; all else is the same.
    for body in [&mut wrong_body, &mut unknown_body] {
        assert!(body["request_id"].is_string());
        body.as_object_mut().unwrap().remove("request_id");
    }
    assert_eq!(wrong_body, unknown_body);
    // Neither the content type nor the size nor the method tells a guesser anything.
    assert_eq!(
        daemon.post_raw(&wrong, body.clone(), "text/plain").await.0,
        404
    );
    assert_eq!(
        daemon
            .post_raw(&wrong, vec![b' '; 70 * 1024], "application/json")
            .await
            .0,
        404
    );
    assert_eq!(
        daemon.get(&wrong.replace(&daemon.base, ""), None).await.0,
        404
    );
    assert_eq!(
        daemon
            .get(&daemon.hookup_url.replace(&daemon.base, ""), None)
            .await
            .0,
        404
    );
    assert_eq!(db.count("SELECT COUNT(*) FROM tenants").await, 0);
    assert_eq!(db.count("SELECT COUNT(*) FROM hookup_deliveries").await, 0);
}

async fn oversized_and_non_json_bodies_are_refused(backend: Backend) {
    let (db, daemon, _admin) = started(backend).await;
    // A valid message padded to 64 KiB + 1 byte with whitespace.
    let mut body = client_credentials(48, "big", "big-secret")
        .to_string()
        .into_bytes();
    body.resize(64 * 1024 + 1, b' ');
    let (status, problem) = daemon
        .post_raw(&daemon.hookup_url, body.clone(), "application/json")
        .await;
    assert_eq!(status, 413, "{problem}");
    assert_eq!(problem["code"], "payload_too_large");
    // Exactly 64 KiB is fine.
    body.truncate(64 * 1024);
    assert_eq!(
        daemon
            .post_raw(&daemon.hookup_url, body, "application/json")
            .await
            .0,
        200
    );

    let other = client_credentials(49, "ct", "ct-secret")
        .to_string()
        .into_bytes();
    for content_type in ["text/plain", "application/x-www-form-urlencoded", ""] {
        let (status, problem) = daemon
            .post_raw(&daemon.hookup_url, other.clone(), content_type)
            .await;
        assert_eq!(status, 415, "{content_type}: {problem}");
        assert_eq!(problem["code"], "unsupported_media_type");
    }
    assert_eq!(
        daemon
            .post_raw(&daemon.hookup_url, other, "application/json; charset=utf-8")
            .await
            .0,
        200
    );
    assert_eq!(db.count("SELECT COUNT(*) FROM tenants").await, 2);
}

/// Each case: (what to change, the field the 400 must name).
fn violations() -> Vec<(Value, &'static str)> {
    let mut cases = Vec::new();
    let base = client_credentials(50, "v", "v-secret");
    let with = |field: &str, value: Value| {
        let mut m = base.clone();
        m[field] = value;
        m
    };
    let without = |field: &str| {
        let mut m = base.clone();
        m.as_object_mut().expect("object").remove(field);
        m
    };
    for field in REQUIRED_FIELDS {
        cases.push((without(field), field));
    }
    // Wrong types.
    cases.push((with("provet_id", json!("50")), "provet_id"));
    cases.push((with("client_id", json!(5)), "client_id"));
    cases.push((with("client_secret", json!(5)), "client_secret"));
    cases.push((with("algorithm", json!(true)), "algorithm"));
    cases.push((
        with("authorization_grant_type", json!(null)),
        "authorization_grant_type",
    ));
    cases.push((with("client_type", json!(["public"])), "client_type"));
    cases.push((
        with("redirect_uris", json!(["https://a.example/cb"])),
        "redirect_uris",
    ));
    cases.push((with("token_url", json!(null)), "token_url"));
    cases.push((with("authorize_url", json!({})), "authorize_url"));
    cases.push((
        with("openid_autodiscovery_url", json!(1)),
        "openid_autodiscovery_url",
    ));
    cases.push((with("departments", json!("1,2")), "departments"));
    cases.push((with("departments", json!([1, "2"])), "departments[1]"));
    cases.push((with("added_department", json!("3")), "added_department"));
    cases.push((with("removed_department", json!(1.5)), "removed_department"));
    // provet_id must be integral and in range.
    cases.push((with("provet_id", json!(1.5)), "provet_id"));
    cases.push((with("provet_id", json!(-1)), "provet_id"));
    cases.push((with("provet_id", json!(1u64 << 60)), "provet_id"));
    // Enumerations.
    cases.push((with("algorithm", json!("ES256")), "algorithm"));
    cases.push((
        with("authorization_grant_type", json!("password")),
        "authorization_grant_type",
    ));
    cases.push((with("client_type", json!("secret")), "client_type"));
    // URLs: malformed, relative, disallowed host, http, private address, userinfo.
    cases.push((with("token_url", json!("not a url")), "token_url"));
    cases.push((with("token_url", json!("/50/oauth2/token/")), "token_url"));
    cases.push((
        with("token_url", json!("https://evil.example/token")),
        "token_url",
    ));
    cases.push((
        with(
            "token_url",
            json!("https://provetcloud.com.evil.example/token"),
        ),
        "token_url",
    ));
    cases.push((
        with(
            "authorize_url",
            json!("http://us.provetcloud.com/authorize"),
        ),
        "authorize_url",
    ));
    cases.push((
        with("token_url", json!("https://10.0.0.5/token")),
        "token_url",
    ));
    cases.push((
        with("token_url", json!("https://127.0.0.1/token")),
        "token_url",
    ));
    cases.push((with("token_url", json!("https://[::1]/token")), "token_url"));
    cases.push((
        with(
            "token_url",
            json!("https://169.254.169.254/latest/meta-data"),
        ),
        "token_url",
    ));
    cases.push((
        with(
            "token_url",
            json!("https://user:pw@us.provetcloud.com/token"),
        ),
        "token_url",
    ));
    cases.push((
        with("token_url", json!("ftp://us.provetcloud.com/token")),
        "token_url",
    ));
    cases.push((
        with(
            "openid_autodiscovery_url",
            json!("https://evil.example/.well-known/openid-configuration"),
        ),
        "openid_autodiscovery_url",
    ));
    cases.push((
        with("redirect_uris", json!("https://ok.example/cb not-a-url")),
        "redirect_uris[1]",
    ));
    // Cross-field rules.
    cases.push((with("client_secret", json!(null)), "client_secret"));
    cases.push((with("client_type", json!("public")), "client_type"));
    cases
}

async fn every_schema_violation_is_named_and_nothing_is_stored(backend: Backend) {
    let (db, daemon, _admin) = started(backend).await;
    for (message, field) in violations() {
        let (status, problem) = daemon.hookup(&message).await;
        assert_eq!(status, 400, "{field}: {problem}");
        assert_eq!(problem["code"], "invalid_request", "{problem}");
        assert_eq!(problem["status"], 400);
        let named: Vec<&str> = problem["errors"]
            .as_array()
            .unwrap_or_else(|| panic!("no errors list for {field}: {problem}"))
            .iter()
            .map(|e| e["field"].as_str().expect("field"))
            .collect();
        assert!(named.contains(&field), "{field} not named in {problem}");
        assert!(!problem.to_string().contains("v-secret"), "{problem}");
    }
    // One 400 names every bad field at once.
    let (status, problem) = daemon
        .hookup(&json!({"provet_id": 1.5, "token_url": "http://x"}))
        .await;
    assert_eq!(status, 400);
    let named: Vec<&str> = problem["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| e["field"].as_str().expect("field"))
        .collect();
    for field in REQUIRED_FIELDS {
        assert!(named.contains(&field), "{field} missing from {named:?}");
    }
    // Not JSON, not an object.
    for body in [&b"{not json"[..], b"[]", b"null", b"", &[0xff, 0xfe, 0x00]] {
        let (status, problem) = daemon
            .post_raw(&daemon.hookup_url, body.to_vec(), "application/json")
            .await;
        assert_eq!(status, 400, "{body:?}: {problem}");
        assert_eq!(problem["code"], "invalid_request");
    }
    assert_eq!(db.count("SELECT COUNT(*) FROM tenants").await, 0);
    assert_eq!(db.count("SELECT COUNT(*) FROM clients").await, 0);
    assert_eq!(
        db.count("SELECT COUNT(*) FROM hookup_deliveries WHERE outcome <> 'rejected'")
            .await,
        0
    );
}

async fn optional_fields_may_be_null_or_absent(backend: Backend) {
    let (_db, daemon, admin) = started(backend).await;
    let mut m = client_credentials(51, "opt", "opt-secret");
    m["departments"] = Value::Null;
    m["added_department"] = Value::Null;
    m["removed_department"] = Value::Null;
    m["something_new"] = json!({"from": "a later schema"});
    let (status, body) = daemon.hookup(&m).await;
    assert_eq!(status, 200, "{body}");
    let (_, tenant) = daemon.get("/admin/tenants/51", Some(&admin)).await;
    assert_eq!(tenant["departments"], json!([]));
    let mut integral_float = client_credentials(52, "f", "f-secret");
    integral_float["provet_id"] = json!(52.0);
    assert_eq!(daemon.hookup(&integral_float).await.1["provet_id"], 52);
}

async fn concurrent_deliveries_for_one_tenant_all_land(backend: Backend) {
    let (db, daemon, _admin) = started(backend).await;
    let daemon = std::sync::Arc::new(daemon);
    let mut tasks = Vec::new();
    for i in 0..20 {
        let daemon = daemon.clone();
        tasks.push(tokio::spawn(async move {
            let mut m = client_credentials(53, "race", "race-secret");
            m["added_department"] = json!(i);
            daemon.hookup(&m).await.0
        }));
    }
    for task in tasks {
        assert_eq!(task.await.expect("task"), 200);
    }
    assert_eq!(
        db.count("SELECT COUNT(*) FROM departments WHERE provet_id = 53")
            .await,
        20
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM clients WHERE provet_id = 53")
            .await,
        1
    );
    assert_eq!(
        db.count(
            "SELECT COUNT(*) FROM hookup_deliveries WHERE provet_id = 53 AND outcome = 'registered'"
        )
        .await,
        1
    );
}

backend_tests!(
    registers_a_client_credentials_tenant,
    registers_an_authorization_code_tenant_in_either_spelling,
    a_duplicate_delivery_is_unchanged_and_changes_nothing,
    a_new_client_supersedes_the_old_one,
    department_changes_apply,
    a_wrong_secret_looks_like_an_unknown_path,
    oversized_and_non_json_bodies_are_refused,
    every_schema_violation_is_named_and_nothing_is_stored,
    optional_fields_may_be_null_or_absent,
    concurrent_deliveries_for_one_tenant_all_land,
);
