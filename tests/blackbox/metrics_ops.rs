//! The metrics operators alert on: build info, the fleet gauges (tenants, credentials,
//! discovery, grants by state), pool usage, every series present from the first scrape, and
//! the shipped alert rules and dashboard naming only metrics the daemon exports.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use promql_parser::parser::Expr;
use promql_parser::util::{ExprVisitor, walk_expr};
use serde_json::{Value, json};

use crate::backend_tests;
use crate::helpers::*;
use crate::provider::{provider, provider_env, unique_tenant};

/// One scrape: every sample as `name{labels}` -> value, and the text.
async fn scrape(daemon: &Daemon) -> (BTreeMap<String, f64>, String) {
    let response = daemon
        .http
        .get(daemon.url("/metrics"))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("body");
    (metric_samples(&text), text)
}

fn value(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    *samples
        .get(series)
        .unwrap_or_else(|| panic!("no series {series} in /metrics:\n{samples:#?}"))
}

async fn fresh_daemon_exports_every_family_at_zero(backend: Backend) {
    let db = TestDb::new(backend).await;
    let daemon = Daemon::start(&db, DaemonConfig::new()).await;
    let (samples, text) = scrape(&daemon).await;

    let build = samples
        .iter()
        .find(|(series, _)| series.starts_with("broker_build_info{"))
        .unwrap_or_else(|| panic!("no broker_build_info:\n{text}"));
    assert!(
        build
            .0
            .contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))),
        "{build:?}"
    );
    assert!(build.0.contains("commit=\""), "{build:?}");
    assert_eq!(*build.1, 1.0);

    for series in [
        r#"broker_hookups_total{outcome="failed"}"#,
        r#"broker_hookups_total{outcome="registered"}"#,
        r#"broker_upstream_token_requests_total{outcome="unavailable"}"#,
        r#"broker_upstream_token_requests_total{outcome="rejected"}"#,
        r#"broker_upstream_token_answers_total{class="5xx"}"#,
        r#"broker_upstream_token_answers_total{class="429"}"#,
        r#"broker_refreshes_total{outcome="invalid_grant"}"#,
        r#"broker_authorizations_total{outcome="completed"}"#,
        r#"broker_discovery_runs_total{outcome="failed"}"#,
        r#"broker_webhook_deliveries_total{outcome="failed"}"#,
        r#"broker_webhook_deliveries_total{outcome="gone"}"#,
        r#"broker_events_written_total{type="tenant.registered"}"#,
        r#"broker_events_written_total{type="grant.reauthorization_required"}"#,
        r#"broker_tenants{status="active"}"#,
        r#"broker_tenants{status="removed"}"#,
        r#"broker_tenant_credentials{state="unchecked"}"#,
        r#"broker_tenant_credentials{state="ok"}"#,
        r#"broker_tenant_credentials{state="rejected"}"#,
        r#"broker_discovery_tenants{state="pending"}"#,
        r#"broker_discovery_tenants{state="ok"}"#,
        r#"broker_discovery_tenants{state="failed"}"#,
        r#"broker_grants{state="active"}"#,
        r#"broker_grants{state="reauthorization_required"}"#,
        r#"broker_grants{state="revoked"}"#,
        r#"broker_queue_depth{queue="credential_checks"}"#,
        "broker_webhook_pending_deliveries",
        "broker_cached_tokens",
    ] {
        assert_eq!(value(&samples, series), 0.0, "{series}");
    }

    // Pool usage of both pools: the main pool's size is the configured 4.
    assert_eq!(
        value(
            &samples,
            r#"broker_db_pool_connections{pool="main",state="max"}"#
        ),
        4.0
    );
    for pool in ["main", "cache"] {
        for state in ["in_use", "idle", "max"] {
            value(
                &samples,
                &format!(r#"broker_db_pool_connections{{pool="{pool}",state="{state}"}}"#),
            );
        }
    }
    let cache_max = value(
        &samples,
        r#"broker_db_pool_connections{pool="cache",state="max"}"#,
    );
    assert!(cache_max >= 1.0, "{cache_max}");
    let idle = value(
        &samples,
        r#"broker_db_pool_connections{pool="main",state="idle"}"#,
    );
    let in_use = value(
        &samples,
        r#"broker_db_pool_connections{pool="main",state="in_use"}"#,
    );
    assert!(idle + in_use <= 4.0, "{idle} + {in_use}");
}

/// A hookup message whose discovery URL nobody answers (port 1 refuses connections).
fn unreachable_discovery(provet_id: i64) -> Value {
    let base = "http://127.0.0.1:1";
    json!({
        "provet_id": provet_id,
        "client_id": format!("client-{provet_id}"),
        "client_secret": format!("secret-{provet_id}"),
        "algorithm": "RS256",
        "authorization_grant_type": "authorization-code",
        "client_type": "confidential",
        "redirect_uris": "http://broker.test/oauth/callback",
        "token_url": format!("{base}/{provet_id}/oauth2/token/"),
        "authorize_url": format!("{base}/{provet_id}/oauth2/authorize/"),
        "openid_autodiscovery_url": format!("{base}/{provet_id}/oauth2/.well-known/openid-configuration"),
    })
}

async fn gauges_count_tenants_by_state(backend: Backend) {
    let p = provider();
    let db = TestDb::new(backend).await;
    let mut config = DaemonConfig::new();
    config.extra_env.extend(provider_env());
    config.extra_env.extend([
        ("BROKER_TOKENS__VERIFY_ON_HOOKUP".into(), "false".into()),
        ("BROKER_DISCOVERY__ENABLED".into(), "false".into()),
    ]);
    let daemon = Daemon::start(&db, config).await;
    let admin = daemon.api_key("admin", &[]);
    let post = |path: String| {
        let daemon = &daemon;
        let admin = &admin;
        async move {
            daemon
                .send(reqwest::Method::POST, &path, Some(admin), None)
                .await
        }
    };

    // Rejected: a wrong secret, checked against the real provider.
    let rejected = unique_tenant();
    let mut wrong = p
        .application(rejected, "client_credentials", "confidential", None)
        .await;
    wrong["client_secret"] = json!(distinctive_secret());
    assert_eq!(daemon.hookup(&wrong).await.0, 200);
    let (status, credentials) = post(format!("/admin/tenants/{rejected}/verify")).await;
    assert_eq!(
        (status, credentials["state"].clone()),
        (200, json!("rejected"))
    );

    // Ok: the right secret.
    let good = unique_tenant();
    let message = p
        .application(good, "client_credentials", "confidential", None)
        .await;
    assert_eq!(daemon.hookup(&message).await.0, 200);
    let (status, credentials) = post(format!("/admin/tenants/{good}/verify")).await;
    assert_eq!((status, credentials["state"].clone()), (200, json!("ok")));

    // Failed discovery: nobody answers the discovery URL. Its credentials stay unchecked.
    let failed = unique_tenant();
    assert_eq!(daemon.hookup(&unreachable_discovery(failed)).await.0, 200);
    let (status, discovery) = post(format!("/admin/tenants/{failed}/discovery")).await;
    assert_eq!((status, discovery["state"].clone()), (200, json!("failed")));

    // Grants: one needing reauthorization and one active, written as the refresh path
    // leaves them (a full connect flow and a refused refresh are tested in connect.rs).
    let conn = db.connect().await;
    for (subject, state) in [("user-a", "reauthorization_required"), ("user-b", "active")] {
        sea_orm::ConnectionTrait::execute_unprepared(
            &conn,
            &format!(
                "INSERT INTO grants (provet_id, client_id, subject, refresh_token, scope, state, \
                 created_at, updated_at) VALUES ({failed}, 'client-{failed}', '{subject}', NULL, \
                 'restapi', '{state}', '2026-12-01T00:00:00Z', '2026-12-01T00:00:00Z')"
            ),
        )
        .await
        .expect("insert grant");
    }

    // Removed: a fourth tenant, then the integration removed.
    let removed = unique_tenant();
    let gone = p
        .application(removed, "client_credentials", "confidential", None)
        .await;
    assert_eq!(daemon.hookup(&gone).await.0, 200);
    let (status, _) = daemon
        .send(
            reqwest::Method::DELETE,
            &format!("/admin/tenants/{removed}"),
            Some(&admin),
            None,
        )
        .await;
    assert!(status == 200 || status == 204, "{status}");

    let (samples, _) = scrape(&daemon).await;
    for (series, expected) in [
        (r#"broker_tenants{status="active"}"#, 3.0),
        (r#"broker_tenants{status="removed"}"#, 1.0),
        (r#"broker_tenant_credentials{state="rejected"}"#, 1.0),
        (r#"broker_tenant_credentials{state="ok"}"#, 1.0),
        (r#"broker_tenant_credentials{state="unchecked"}"#, 1.0),
        (r#"broker_discovery_tenants{state="failed"}"#, 1.0),
        (r#"broker_discovery_tenants{state="pending"}"#, 0.0),
        (r#"broker_grants{state="reauthorization_required"}"#, 1.0),
        (r#"broker_grants{state="active"}"#, 1.0),
        (r#"broker_grants{state="revoked"}"#, 0.0),
        (
            r#"broker_upstream_token_requests_total{outcome="rejected"}"#,
            1.0,
        ),
        (r#"broker_discovery_runs_total{outcome="failed"}"#, 1.0),
    ] {
        assert_eq!(value(&samples, series), expected, "{series}");
    }
}

backend_tests!(
    fresh_daemon_exports_every_family_at_zero,
    gauges_count_tenants_by_state
);

/// Metric names in a PromQL expression: every selector's name, in plain and range
/// selectors alike.
fn metric_names(expr: &str) -> Vec<String> {
    struct Names(Vec<String>);
    impl ExprVisitor for Names {
        type Error = ();
        fn pre_visit(&mut self, expr: &Expr) -> Result<bool, ()> {
            let selector = match expr {
                Expr::VectorSelector(vs) => Some(vs),
                Expr::MatrixSelector(ms) => Some(&ms.vs),
                _ => None,
            };
            if let Some(name) = selector.and_then(|vs| vs.name.clone()) {
                self.0.push(name);
            }
            Ok(true)
        }
    }
    let parsed = promql_parser::parser::parse(expr)
        .unwrap_or_else(|e| panic!("`{expr}` is not PromQL: {e}"));
    let mut names = Names(Vec::new());
    walk_expr(&mut names, &parsed).expect("walk");
    assert!(!names.0.is_empty(), "`{expr}` names no metric");
    names.0
}

/// Every `expr` string anywhere in a JSON document (Grafana's panel targets).
fn exprs_in(value: &Value, found: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr", Value::String(e)) => found.push(e.clone()),
                    _ => exprs_in(v, found),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| exprs_in(v, found)),
        _ => {}
    }
}

fn repo_file(path: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_and_dashboard_name_only_exported_metrics() {
    let db = TestDb::new(Backend::Sqlite).await;
    let mut config = DaemonConfig::new();
    config.extra_env.extend(provider_env());
    let daemon = Daemon::start(&db, config).await;
    // One token first: the series labelled by route and by API key name exist from their
    // first use (every other series from the start).
    let id = unique_tenant();
    let message = provider()
        .application(id, "client_credentials", "confidential", None)
        .await;
    assert_eq!(daemon.hookup(&message).await.0, 200);
    let key = daemon.api_key("token", &[]);
    let (status, body) = daemon
        .send(
            reqwest::Method::POST,
            &format!("/v1/tenants/{id}/token"),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (samples, text) = scrape(&daemon).await;
    let mut exported: BTreeSet<String> = samples
        .keys()
        .map(|s| s.split('{').next().unwrap_or(s).to_owned())
        .collect();
    // Families, with the sample suffixes their type gives them (a histogram's `_bucket`
    // exists once it has a series; the family is registered from the start).
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                _ => &[""],
            };
            for suffix in suffixes {
                exported.insert(format!("{name}{suffix}"));
            }
        }
    }

    let rules: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&repo_file("deploy/prometheus/alerts.yml")).expect("alerts.yml");
    let rules: Value = serde_json::to_value(rules).expect("as JSON");
    let mut alert_exprs = Vec::new();
    for group in rules["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            assert!(rule["alert"].is_string(), "{rule}");
            alert_exprs.push(rule["expr"].as_str().expect("expr").to_owned());
        }
    }
    let dashboard: Value =
        serde_json::from_str(&repo_file("deploy/grafana/provet-broker.json")).expect("dashboard");
    let mut panel_exprs = Vec::new();
    exprs_in(&dashboard, &mut panel_exprs);

    // The alerts the operators asked for are there.
    let all_alerts = alert_exprs.join("\n");
    for needed in [
        "reauthorization_required",
        r#"broker_tenant_credentials{state="rejected"}"#,
        r#"broker_discovery_tenants{state="failed"}"#,
        r#"outcome="unavailable""#,
        r#"broker_hookups_total{outcome="failed"}"#,
        "broker_webhook_deliveries_total",
    ] {
        assert!(all_alerts.contains(needed), "no alert on {needed}");
    }
    assert!(panel_exprs.len() >= 10, "{panel_exprs:?}");

    let mut unknown = Vec::new();
    for expr in alert_exprs.iter().chain(&panel_exprs) {
        for name in metric_names(expr) {
            if !exported.contains(&name) {
                unknown.push(format!("{name} (in `{expr}`)"));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "not exported by the daemon: {unknown:#?}\nexported: {exported:#?}"
    );
}

#[test]
fn metric_names_come_from_every_selector() {
    let names = metric_names(
        r#"sum(rate(a_total{x="y"}[5m])) / ignoring(state) b{state="max"} > 0 or absent(c)"#,
    );
    assert_eq!(names, ["a_total", "b", "c"]);
}
