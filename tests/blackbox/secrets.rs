//! No client secret ever appears in the daemon's logs, answers or database bytes.

use serde_json::json;

use crate::backend_tests;
use crate::helpers::*;

async fn client_secrets_appear_in_no_log_and_no_database_byte(backend: Backend) {
    let db = TestDb::new(backend).await;
    let daemon = Daemon::start(&db, DaemonConfig::new()).await;
    let admin = daemon.api_key("admin", &[]);
    let mut secrets = Vec::new();
    let mut answers = String::new();
    for id in 1..=10 {
        let secret = distinctive_secret();
        let message = if id % 2 == 0 {
            client_credentials(id, &format!("leak-{id}"), &secret)
        } else {
            authorization_code(id, &format!("leak-{id}"), &secret)
        };
        let (status, body) = daemon.hookup(&message).await;
        assert_eq!(status, 200);
        answers.push_str(&body.to_string());
        // Again (unchanged), and once rotated (updated): every path that touches the secret.
        answers.push_str(&daemon.hookup(&message).await.1.to_string());
        secrets.push(secret);
    }
    // Rejected messages carry secrets too.
    for id in 11..=13 {
        let secret = distinctive_secret();
        let mut bad = client_credentials(id, "bad", &secret);
        bad["token_url"] = json!(format!("https://{secret}@evil.example/"));
        bad["client_id"] = json!(42);
        let (status, body) = daemon.hookup(&bad).await;
        assert_eq!(status, 400);
        answers.push_str(&body.to_string());
        secrets.push(secret);
    }
    // Superseded and removed clients.
    let replaced = distinctive_secret();
    daemon
        .hookup(&client_credentials(2, "leak-2b", &replaced))
        .await;
    secrets.push(replaced);
    daemon
        .send(
            reqwest::Method::DELETE,
            "/admin/tenants/3",
            Some(&admin),
            None,
        )
        .await;
    for path in [
        "/admin/tenants?limit=500",
        "/admin/tenants/1",
        "/admin/tenants/1/events",
        "/admin/tenants/11/events",
        "/metrics",
    ] {
        answers.push_str(&daemon.get(path, Some(&admin)).await.1.to_string());
    }

    let master_key = daemon.config.master_key.clone();
    let (status, logs) = daemon.stop();
    assert!(status.success());
    assert!(
        logs.contains("hookup stored"),
        "the logs must have been captured"
    );
    let bytes = db.raw_bytes().await;
    assert!(
        contains(&bytes, "leak-1"),
        "the database bytes must have been captured"
    );
    for secret in &secrets {
        assert!(
            !logs.contains(secret.as_str()),
            "a client secret is in the log"
        );
        assert!(
            !answers.contains(secret.as_str()),
            "a client secret is in an answer"
        );
        assert!(
            !contains(&bytes, secret),
            "a client secret is in the database bytes"
        );
    }
    // Nor is the master key.
    assert!(!contains(&bytes, &master_key));
    assert!(!logs.contains(&master_key));
}

backend_tests!(client_secrets_appear_in_no_log_and_no_database_byte);
