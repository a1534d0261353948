//! The hookup URL as a credential (logged once, then fingerprinted; `hookup-url`; which
//! secret matched) and the operator commands: `tenants list` filters and output,
//! `healthcheck`, `completions`.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::backend_tests;
use crate::connect::{connect, start_daemon, tenant};
use crate::helpers::*;
use crate::provider::*;
use crate::tokens::token;

/// The JSON log lines whose message starts with `message`.
fn log_lines(logs: &str, message: &str) -> Vec<Value> {
    logs.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| {
            v["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(message))
        })
        .collect()
}

async fn the_generated_hookup_url_is_logged_once_then_only_its_fingerprint(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut config = DaemonConfig::new();
    config.hookup_secret = None;

    // Before the first start there is no secret, and asking for it does not make one: on a
    // database not made yet it says to migrate (it only reads), then that none is stored.
    let (ok, _, stderr) = run_cli(&config.env(&db), db.dir.path(), &["hookup-url"]);
    assert!(!ok);
    assert!(stderr.contains("provet-broker migrate"), "{stderr}");
    let (ok, _, stderr) = run_cli(&config.env(&db), db.dir.path(), &["migrate"]);
    assert!(ok, "{stderr}");
    let (ok, stdout, stderr) = run_cli(&config.env(&db), db.dir.path(), &["hookup-url"]);
    assert!(!ok, "hookup-url must fail without a secret: {stdout}");
    assert!(
        stderr.contains("no hookup secret is stored yet"),
        "{stderr}"
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM settings WHERE name = 'hookup_secret'")
            .await,
        0,
        "hookup-url must not generate a secret"
    );

    let daemon = Daemon::start(&db, config.clone()).await;
    let (_, first_logs) = daemon.stop();
    let generated = log_lines(&first_logs, "give Provet this hookup URL");
    assert_eq!(generated.len(), 1, "{first_logs}");
    let logged_url = generated[0]["fields"]["hookup_url"]
        .as_str()
        .expect("hookup_url field")
        .to_owned();
    let fingerprint = generated[0]["fields"]["fingerprint"]
        .as_str()
        .expect("fingerprint field")
        .to_owned();
    assert!(fingerprint.starts_with("sha256:"), "{fingerprint}");
    let secret = logged_url
        .strip_prefix("http://broker.test/hookup/")
        .expect("public_url, /hookup/, the secret")
        .to_owned();
    assert_eq!(secret.len(), 43);
    assert_eq!(
        first_logs.matches(&secret).count(),
        1,
        "the secret is logged exactly once"
    );

    let daemon = Daemon::start(&db, config.clone()).await;
    // A real hookup through the URL `hookup-url` printed (the harness asks it).
    assert_eq!(
        daemon.hookup_url,
        logged_url.replacen("http://broker.test", &daemon.base, 1)
    );
    let message = client_credentials(301, "fp", &distinctive_secret());
    assert_eq!(daemon.hookup(&message).await.1["status"], "registered");
    let (ok, stdout, stderr) = daemon.cli(&["hookup-url"]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim(), logged_url);
    assert!(stderr.contains(&fingerprint), "{stderr}");
    let (_, second_logs) = daemon.stop();
    assert!(
        !second_logs.contains(&secret),
        "a later start must not log the secret:\n{second_logs}"
    );
    assert!(log_lines(&second_logs, "give Provet this hookup URL").is_empty());
    let ready = log_lines(&second_logs, "hookup URL ready");
    assert_eq!(ready.len(), 1, "{second_logs}");
    assert_eq!(ready[0]["fields"]["fingerprint"], fingerprint.as_str());
    assert_eq!(ready[0]["fields"]["source"], "database");
}

async fn hookup_url_prints_the_configured_secret_which_is_never_logged(backend: Backend) {
    let db = TestDb::new(backend).await;
    let config = DaemonConfig::new();
    let secret = config.hookup_secret.clone().expect("configured");
    let daemon = Daemon::start(&db, config).await;
    let (ok, stdout, stderr) = daemon.cli(&["hookup-url"]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim(), format!("http://broker.test/hookup/{secret}"));
    let (_, logs) = daemon.stop();
    assert!(!logs.contains(&secret), "{logs}");
    let ready = log_lines(&logs, "hookup URL ready");
    assert_eq!(ready.len(), 1, "{logs}");
    assert_eq!(ready[0]["fields"]["source"], "hookup.secret");
    let fingerprint = ready[0]["fields"]["fingerprint"].as_str().expect("fp");
    assert!(stderr.contains(fingerprint), "{stderr}");
}

fn secret_matches(metrics: &str, which: &str) -> u64 {
    let prefix = format!("broker_hookup_secret_matches_total{{secret=\"{which}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in\n{metrics}"))
        .trim()
        .parse()
        .expect("a count")
}

async fn the_secret_match_metric_counts_current_and_extra(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut config = DaemonConfig::new();
    let old = distinctive_secret();
    config.extra_env.push((
        "BROKER_HOOKUP__EXTRA_SECRETS".into(),
        serde_json::to_string(&[&old]).expect("json"),
    ));
    let daemon = Daemon::start(&db, config).await;
    let metrics = daemon.metrics().await;
    assert_eq!(secret_matches(&metrics, "current"), 0);
    assert_eq!(secret_matches(&metrics, "extra"), 0);

    let old_url = format!("{}/hookup/{old}", daemon.base);
    let post = |url: String, body: Value| {
        let daemon = &daemon;
        async move {
            daemon
                .post_raw(&url, body.to_string().into_bytes(), "application/json")
                .await
        }
    };
    let first = client_credentials(311, "cur", &distinctive_secret());
    assert_eq!(daemon.hookup(&first).await.1["status"], "registered");
    let second = client_credentials(312, "old", &distinctive_secret());
    assert_eq!(
        post(old_url.clone(), second.clone()).await.1["status"],
        "registered"
    );
    assert_eq!(post(old_url, second).await.1["status"], "unchanged");
    let wrong = format!("{}/hookup/{}", daemon.base, distinctive_secret());
    assert_eq!(post(wrong, first).await.0, 404);

    let metrics = daemon.metrics().await;
    assert_eq!(secret_matches(&metrics, "current"), 1, "{metrics}");
    assert_eq!(secret_matches(&metrics, "extra"), 2, "{metrics}");
    assert!(!metrics.contains(&old));
}

/// `tenants list --output json` with `filter`: the provet_ids listed, after checking that
/// each line is a full tenant view.
fn listed(daemon: &Daemon, filter: &[&str]) -> BTreeSet<i64> {
    let mut args = vec!["tenants", "list", "--output", "json", "--limit", "1000"];
    args.extend_from_slice(filter);
    let (ok, stdout, stderr) = daemon.cli(&args);
    assert!(ok, "tenants list {filter:?}: {stderr}");
    stdout
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("a JSON line");
            assert!(v["credentials"]["state"].is_string(), "{v}");
            v["provet_id"].as_i64().expect("provet_id")
        })
        .collect()
}

async fn tenants_list_filters_by_status_credentials_and_grant_state(backend: Backend) {
    let p = provider();
    let db = TestDb::new(backend).await;
    let daemon = start_daemon(&db, &[("BROKER_TOKENS__VERIFY_ON_HOOKUP", "false")]).await;
    let admin = daemon.api_key("admin", &[]);

    // Credentials: checked against the real provider, right and wrong; one never checked.
    let verified = |id: i64| {
        let daemon = &daemon;
        let admin = &admin;
        async move {
            let (status, credentials) = daemon
                .send(
                    reqwest::Method::POST,
                    &format!("/admin/tenants/{id}/verify"),
                    Some(admin),
                    None,
                )
                .await;
            assert_eq!(status, 200, "{credentials}");
            credentials["state"].as_str().expect("state").to_owned()
        }
    };
    let ok_id = unique_tenant();
    let message = p
        .application(ok_id, "client_credentials", "confidential", None)
        .await;
    assert_eq!(daemon.hookup(&message).await.0, 200);
    assert_eq!(verified(ok_id).await, "ok");
    let rejected_id = unique_tenant();
    let mut message = p
        .application(rejected_id, "client_credentials", "confidential", None)
        .await;
    message["client_secret"] = json!("not-the-secret-the-provider-holds");
    assert_eq!(daemon.hookup(&message).await.0, 200);
    assert_eq!(verified(rejected_id).await, "rejected");
    let unchecked_id = unique_tenant();
    let message = p
        .application(unchecked_id, "client_credentials", "confidential", None)
        .await;
    assert_eq!(daemon.hookup(&message).await.0, 200);
    let removed_id = unique_tenant();
    let message = p
        .application(removed_id, "client_credentials", "confidential", None)
        .await;
    assert_eq!(daemon.hookup(&message).await.0, 200);
    let status = daemon
        .send(
            reqwest::Method::DELETE,
            &format!("/admin/tenants/{removed_id}"),
            Some(&admin),
            None,
        )
        .await
        .0;
    assert!((200..300).contains(&status), "{status}");

    // Grants: a clinic user connected; connected then revoked; connected then refused by
    // the provider.
    let (active_id, _) = tenant(&daemon, &admin, "confidential", Some("HS256")).await;
    assert_eq!(connect(&daemon, &admin, active_id).await.0, 200);
    let (revoked_id, _) = tenant(&daemon, &admin, "confidential", Some("HS256")).await;
    assert_eq!(connect(&daemon, &admin, revoked_id).await.0, 200);
    let status = daemon
        .send(
            reqwest::Method::DELETE,
            &format!("/admin/tenants/{revoked_id}/grants/1"),
            Some(&admin),
            None,
        )
        .await
        .0;
    assert_eq!(status, 204);
    let (dead_id, message) = tenant(&daemon, &admin, "confidential", Some("HS256")).await;
    assert_eq!(connect(&daemon, &admin, dead_id).await.0, 200);
    let client_id = message["client_id"].as_str().expect("client_id");
    let revoked = reqwest::Client::new()
        .post(format!("{}/_test/revoke-grants/{client_id}", p.base))
        .send()
        .await
        .expect("revoke at the provider");
    assert!(revoked.status().is_success());
    let (status, problem) = token(
        &daemon,
        &admin,
        dead_id,
        Some(json!({"force_refresh": true})),
    )
    .await;
    assert_eq!(status, 409, "{problem}");

    let all: BTreeSet<i64> = [
        ok_id,
        rejected_id,
        unchecked_id,
        removed_id,
        active_id,
        revoked_id,
        dead_id,
    ]
    .into();
    assert_eq!(listed(&daemon, &[]), all);
    assert_eq!(
        listed(&daemon, &["--status", "removed"]),
        [removed_id].into()
    );
    let active = listed(&daemon, &["--status", "active"]);
    assert_eq!(active, &all - &BTreeSet::from([removed_id]));

    let ok = listed(&daemon, &["--credentials", "ok"]);
    assert!(ok.contains(&ok_id), "{ok:?}");
    assert!(
        !ok.contains(&rejected_id) && !ok.contains(&unchecked_id),
        "{ok:?}"
    );
    assert_eq!(
        listed(&daemon, &["--credentials", "rejected"]),
        [rejected_id].into()
    );
    let unchecked = listed(&daemon, &["--credentials", "unchecked"]);
    assert!(unchecked.contains(&unchecked_id), "{unchecked:?}");
    assert!(!unchecked.contains(&ok_id) && !unchecked.contains(&rejected_id));

    assert_eq!(
        listed(&daemon, &["--grant-state", "active"]),
        [active_id].into()
    );
    assert_eq!(
        listed(&daemon, &["--grant-state", "revoked"]),
        [revoked_id].into()
    );
    assert_eq!(
        listed(&daemon, &["--grant-state", "reauthorization_required"]),
        [dead_id].into()
    );
    // Filters combine.
    assert!(listed(&daemon, &["--status", "removed", "--grant-state", "active"]).is_empty());
    assert_eq!(
        listed(
            &daemon,
            &[
                "--grant-type",
                "client_credentials",
                "--credentials",
                "rejected"
            ]
        ),
        [rejected_id].into()
    );

    // Not a terminal: JSON lines unless asked otherwise.
    let (ok, stdout, stderr) = daemon.cli(&["tenants", "list", "--status", "removed"]);
    assert!(ok, "{stderr}");
    let line: Value = serde_json::from_str(stdout.trim()).expect("JSON by default in a pipe");
    assert_eq!(line["provet_id"], removed_id);

    // The table: a header row, then one line per tenant, in columns.
    let (ok, stdout, stderr) = daemon.cli(&["tenants", "list", "--output", "table"]);
    assert!(ok, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1 + all.len(), "{stdout}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        [
            "PROVET_ID",
            "STATUS",
            "GRANT_TYPE",
            "CLIENT_ID",
            "CREDENTIALS",
            "DISCOVERY",
            "GRANTS",
            "DEPARTMENTS",
            "UPDATED_AT"
        ]
    );
    let status_column = lines[0].find("STATUS").expect("STATUS");
    let mut ids = BTreeSet::new();
    for line in &lines[1..] {
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cells.len(), header.len(), "{line}");
        let id: i64 = cells[0].parse().expect("provet_id first");
        ids.insert(id);
        assert!(
            line[status_column..].starts_with("active")
                || line[status_column..].starts_with("removed"),
            "columns line up:\n{stdout}"
        );
        let expected_grants = match id {
            i if i == active_id => "active:1",
            i if i == revoked_id => "revoked:1",
            i if i == dead_id => "reauthorization_required:1",
            _ => "-",
        };
        assert_eq!(cells[6], expected_grants, "{line}");
        if id == rejected_id {
            assert_eq!(cells[4], "rejected", "{line}");
            assert_eq!(cells[2], "client_credentials", "{line}");
        }
        if id == removed_id {
            assert_eq!(cells[1], "removed", "{line}");
        }
    }
    assert_eq!(ids, all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_state_values_fail_naming_the_valid_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (flag, valid) in [
        ("--status", vec!["active", "removed"]),
        ("--credentials", vec!["unchecked", "ok", "rejected"]),
        (
            "--grant-state",
            vec!["active", "reauthorization_required", "revoked"],
        ),
        ("--output", vec!["table", "json"]),
    ] {
        let (ok, stdout, stderr) = run_cli(&[], dir.path(), &["tenants", "list", flag, "bogus"]);
        assert!(!ok, "{flag} bogus must fail, printed: {stdout}");
        assert!(stdout.is_empty(), "{stdout}");
        assert!(stderr.contains("bogus"), "{stderr}");
        for value in valid {
            assert!(
                stderr.contains(value),
                "{flag}: {value} missing in {stderr}"
            );
        }
    }
    // Nothing was created: the arguments were refused before any database was opened.
    assert!(!dir.path().join("data").exists());
}

async fn healthcheck_exits_zero_when_ready_and_non_zero_otherwise(backend: Backend) {
    let db = TestDb::new(backend).await;
    let config = DaemonConfig::new();
    let daemon = Daemon::start(&db, config.clone()).await;
    let readyz = daemon.url("/readyz");
    let (ok, stdout, stderr) = daemon.cli(&["healthcheck", "--url", &readyz]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("ready"), "{stdout}");
    // Without --url: server.bind names where to ask.
    let mut env = config.env(&db);
    env.push((
        "BROKER_SERVER__BIND".into(),
        daemon.base.trim_start_matches("http://").to_owned(),
    ));
    let (ok, _, stderr) = run_cli(&env, db.dir.path(), &["healthcheck"]);
    assert!(ok, "{stderr}");
    // A 404 is not ready.
    let (ok, _, stderr) = daemon.cli(&["healthcheck", "--url", &daemon.url("/nowhere")]);
    assert!(!ok);
    assert!(stderr.contains("404"), "{stderr}");

    // A closed port: fails at once, saying so.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let url = format!("http://127.0.0.1:{port}/readyz");
    let started = std::time::Instant::now();
    let (ok, _, stderr) = daemon.cli(&["healthcheck", "--url", &url, "--timeout", "2s"]);
    assert!(!ok, "a closed port is not healthy");
    assert!(
        stderr.contains("not ready") && stderr.contains(&url),
        "{stderr}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    // Port 0 in server.bind cannot be asked: the message says to pass --url.
    let (ok, _, stderr) = daemon.cli(&["healthcheck"]);
    assert!(!ok);
    assert!(stderr.contains("--url"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_bash_prints_a_script_naming_the_commands() {
    let dir = tempfile::tempdir().expect("tempdir");
    // No configuration needed, not even a readable one.
    let (ok, stdout, stderr) = run_cli(
        &[],
        dir.path(),
        &["--config", "missing.toml", "completions", "bash"],
    );
    assert!(ok, "{stderr}");
    assert!(stdout.contains("complete -F"), "{stdout}");
    assert!(stdout.contains("provet-broker"));
    for command in ["tenants", "hookup-url", "healthcheck", "--grant-state"] {
        assert!(stdout.contains(command), "{command} missing");
    }
    assert!(!dir.path().join("data").exists());
}

backend_tests!(
    the_generated_hookup_url_is_logged_once_then_only_its_fingerprint,
    hookup_url_prints_the_configured_secret_which_is_never_logged,
    the_secret_match_metric_counts_current_and_extra,
    tenants_list_filters_by_status_credentials_and_grant_state,
    healthcheck_exits_zero_when_ready_and_non_zero_otherwise,
);
