//! Discovery against the real django-oauth-toolkit provider.

use std::time::Duration;

use serde_json::{Value, json};

use crate::backend_tests;
use crate::helpers::*;
use crate::provider::*;

async fn start(db: &TestDb, extra: &[(&str, &str)]) -> Daemon {
    let mut config = DaemonConfig::new();
    config.extra_env.extend(provider_env());
    config.extra_env.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    Daemon::start(db, config).await
}

async fn discovery_of(daemon: &Daemon, admin: &str, id: i64) -> Value {
    daemon
        .get(&format!("/admin/tenants/{id}"), Some(admin))
        .await
        .1["discovery"]
        .clone()
}

/// Polls until `done` holds for the tenant's discovery object.
async fn wait_for(
    daemon: &Daemon,
    admin: &str,
    id: i64,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    for _ in 0..200 {
        let d = discovery_of(daemon, admin, id).await;
        if done(&d) {
            return d;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "tenant {id}: {what} did not happen: {}",
        discovery_of(daemon, admin, id).await
    );
}

async fn a_registered_tenant_reaches_ok_with_its_issuer(backend: Backend) {
    let p = provider();
    let db = TestDb::new(backend).await;
    let daemon = start(&db, &[]).await;
    let admin = daemon.api_key("admin", &[]);
    let id = unique_tenant();
    let message = p
        .application(id, "authorization_code", "confidential", Some("RS256"))
        .await;
    assert_eq!(daemon.hookup(&message).await.0, 200);

    let d = wait_for(&daemon, &admin, id, "discovery ok", |d| d["state"] == "ok").await;
    assert_eq!(d["issuer"], p.issuer(id));
    assert_eq!(
        d["jwks_uri"],
        format!("{}/.well-known/jwks.json", p.issuer(id))
    );
    assert_eq!(d["attempts"], 0);
    assert_eq!(d["last_error"], Value::Null);
    assert_eq!(
        d["warnings"],
        json!([]),
        "the hookup's endpoints are the discovered ones"
    );
    assert_eq!(p.requests(&Provider::discovery_path(id)).await, 1);
    assert_eq!(
        p.requests(&format!("/{id}/oauth2/.well-known/jwks.json"))
            .await,
        1
    );

    // An operator's rerun fetches again, at once, and answers the new state.
    let (status, rerun) = daemon
        .send(
            reqwest::Method::POST,
            &format!("/admin/tenants/{id}/discovery"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, 200, "{rerun}");
    assert_eq!(rerun["state"], "ok");
    assert_eq!(p.requests(&Provider::discovery_path(id)).await, 2);

    // And a scheduled rerun of everything reaches the worker.
    let (status, scheduled) = daemon
        .send(
            reqwest::Method::POST,
            "/admin/discovery/rerun",
            Some(&admin),
            Some(json!({"filter": "all"})),
        )
        .await;
    assert_eq!(status, 202);
    assert_eq!(scheduled, json!({"scheduled": 1}));
    for _ in 0..100 {
        if p.requests(&Provider::discovery_path(id)).await == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(p.requests(&Provider::discovery_path(id)).await, 3);
    let (status, problem) = daemon
        .send(
            reqwest::Method::POST,
            "/admin/discovery/rerun",
            Some(&admin),
            Some(json!({"filter": "some"})),
        )
        .await;
    assert_eq!(
        (status, problem["code"].clone()),
        (400, json!("invalid_request"))
    );
}

async fn a_stale_tenant_is_refreshed_by_the_worker(backend: Backend) {
    let p = provider();
    let db = TestDb::new(backend).await;
    let daemon = start(&db, &[("BROKER_DISCOVERY__REFRESH_INTERVAL", "2s")]).await;
    let admin = daemon.api_key("admin", &[]);
    let id = unique_tenant();
    let message = p
        .application(id, "authorization_code", "confidential", Some("HS256"))
        .await;
    assert_eq!(daemon.hookup(&message).await.0, 200);
    let first = wait_for(&daemon, &admin, id, "discovery ok", |d| d["state"] == "ok").await;
    let refreshed = wait_for(&daemon, &admin, id, "a refresh", |d| {
        d["fetched_at"] != first["fetched_at"]
    })
    .await;
    assert_eq!(refreshed["state"], "ok");
    assert!(p.requests(&Provider::discovery_path(id)).await >= 2);
}

async fn the_cli_reruns_discovery(backend: Backend) {
    let p = provider();
    let db = TestDb::new(backend).await;
    let daemon = start(&db, &[("BROKER_DISCOVERY__ENABLED", "false")]).await;
    let ids: Vec<i64> = (0..3).map(|_| unique_tenant()).collect();
    for id in &ids {
        let message = p
            .application(*id, "authorization_code", "public", Some("RS256"))
            .await;
        assert_eq!(daemon.hookup(&message).await.0, 200);
    }
    // With the worker off, the CLI does the work itself and shows progress.
    let (ok, stdout, stderr) = daemon.cli(&["discovery", "rerun", "--all"]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("3 tenant(s) scheduled"), "{stderr}");
    assert!(stderr.contains("3/3"), "{stderr}");
    assert!(stdout.contains("ok=3"), "{stdout}");
    for id in &ids {
        assert_eq!(p.requests(&Provider::discovery_path(*id)).await, 1);
    }
    let (ok, stdout, stderr) =
        daemon.cli(&["discovery", "rerun", "--provet-id", &ids[0].to_string()]);
    assert!(ok, "{stderr}");
    let view: Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(view["state"], "ok");
    assert_eq!(view["issuer"], p.issuer(ids[0]));
    let (ok, _, _) = daemon.cli(&["discovery", "rerun", "--failed"]);
    assert!(ok);
    assert_eq!(
        p.requests(&Provider::discovery_path(ids[1])).await,
        1,
        "nothing had failed"
    );
}

backend_tests!(
    a_registered_tenant_reaches_ok_with_its_issuer,
    a_stale_tenant_is_refreshed_by_the_worker,
    the_cli_reruns_discovery,
);

/// Two replicas on one PostgreSQL never work on the same tenant: each discovery URL is
/// fetched once per cycle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_fetch_each_tenant_once_per_cycle() {
    let p = provider();
    let db = TestDb::new(Backend::Postgres).await;
    let mut config = DaemonConfig::new();
    config.extra_env.extend(provider_env());
    config
        .extra_env
        .push(("BROKER_DISCOVERY__CONCURRENCY".into(), "4".into()));
    let a = Daemon::start(&db, config.clone()).await;
    let b = Daemon::start(&db, config).await;
    let admin = a.api_key("admin", &[]);
    let ids: Vec<i64> = (0..50).map(|_| unique_tenant()).collect();
    for (n, id) in ids.iter().enumerate() {
        let message = p
            .application(*id, "authorization_code", "confidential", Some("RS256"))
            .await;
        let daemon = if n % 2 == 0 { &a } else { &b };
        assert_eq!(daemon.hookup(&message).await.0, 200);
    }
    let all_fetched = |want: u64| {
        let ids = ids.clone();
        async move {
            for _ in 0..200 {
                let mut done = true;
                for id in &ids {
                    if p.requests(&Provider::discovery_path(*id)).await < want {
                        done = false;
                        break;
                    }
                }
                if done {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("not every tenant was fetched {want} time(s)");
        }
    };
    all_fetched(1).await;
    // Let any duplicate show up before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for id in &ids {
        assert_eq!(
            p.requests(&Provider::discovery_path(*id)).await,
            1,
            "tenant {id}"
        );
        assert_eq!(discovery_of(&a, &admin, *id).await["state"], "ok");
    }
    // A second cycle: every tenant due again, both replicas polling.
    let (status, scheduled) = b
        .send(
            reqwest::Method::POST,
            "/admin/discovery/rerun",
            Some(&admin),
            Some(json!({"filter": "all"})),
        )
        .await;
    assert_eq!((status, scheduled["scheduled"].clone()), (202, json!(50)));
    all_fetched(2).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for id in &ids {
        assert_eq!(
            p.requests(&Provider::discovery_path(*id)).await,
            2,
            "tenant {id}"
        );
    }
    // Every run is accounted for, and both replicas took part.
    let runs = |d: &Daemon| d.log_text().matches("\"discovery ok\"").count();
    assert_eq!(runs(&a) + runs(&b), 100);
    assert!(
        runs(&a) > 0 && runs(&b) > 0,
        "a: {}, b: {}",
        runs(&a),
        runs(&b)
    );
}
