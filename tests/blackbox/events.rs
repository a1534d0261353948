//! The events outbox and its pull feed: each event produced by the action that causes it,
//! paging, scoping by key, long polls (also released by another replica), no event lost to
//! a kill or to a transaction that commits out of id order.

use std::time::{Duration, Instant};

use sea_orm::{ConnectionTrait, TransactionTrait};
use serde_json::{Value, json};

use crate::backend_tests;
use crate::helpers::*;

backend_tests!(
    hookups_and_removals_yield_their_events_in_a_paged_feed,
    the_feed_is_scoped_by_key_and_checks_its_parameters,
    a_long_poll_is_released_by_a_hookup,
    a_hookup_answered_200_has_its_event_after_a_kill,
);

/// Every event of the feed for `key`, walked page by page from the start.
async fn all_events(daemon: &Daemon, key: &str, extra: &str) -> Vec<Value> {
    let mut events = Vec::new();
    let mut after = String::new();
    loop {
        let path = if after.is_empty() {
            format!("/v1/events?limit=2&wait=2s{extra}")
        } else {
            format!("/v1/events?limit=2&wait=2s&after={after}{extra}")
        };
        let (status, page) = daemon.get(&path, Some(key)).await;
        assert_eq!(status, 200, "{page}");
        let next = page["next_after"]
            .as_str()
            .expect("next_after is always a cursor");
        let batch = page["events"].as_array().unwrap().clone();
        if batch.is_empty() {
            assert_eq!(next, after.as_str(), "an empty page keeps the cursor");
            return events;
        }
        events.extend(batch);
        after = next.to_owned();
    }
}

fn of_tenant(events: &[Value], provet_id: i64) -> Vec<&Value> {
    events
        .iter()
        .filter(|e| e["provet_id"] == provet_id)
        .collect()
}

async fn hookups_and_removals_yield_their_events_in_a_paged_feed(backend: Backend) {
    let db = TestDb::new(backend).await;
    let daemon = Daemon::start(&db, DaemonConfig::new()).await;
    let admin = daemon.api_key("admin", &[]);
    let secret = distinctive_secret();

    let mut msg = client_credentials(501, "c-501", &secret);
    msg["departments"] = json!([1, 2]);
    assert_eq!(daemon.hookup(&msg).await.0, 200);
    // The same message again changes nothing and has no event.
    assert_eq!(daemon.hookup(&msg).await.1["status"], "unchanged");
    msg["departments"] = json!([2, 3]);
    assert_eq!(daemon.hookup(&msg).await.1["status"], "updated");
    let mut replaced = client_credentials(501, "c-501-new", &distinctive_secret());
    replaced["departments"] = json!([2, 3]);
    assert_eq!(daemon.hookup(&replaced).await.1["status"], "updated");
    let (status, _) = daemon
        .send(
            reqwest::Method::DELETE,
            "/admin/tenants/501",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, 200);
    // Re-installed after removal: registered again.
    assert_eq!(daemon.hookup(&replaced).await.1["status"], "registered");

    let events = all_events(&daemon, &admin, "").await;
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "tenant.registered",
            "tenant.departments_changed",
            "tenant.updated",
            "tenant.removed",
            "tenant.registered",
        ]
    );
    for (i, e) in events.iter().enumerate() {
        assert!(e["id"].as_str().unwrap().starts_with("evt_"), "{e}");
        assert_eq!(e["provet_id"], 501);
        assert_eq!(e["sequence"], i as i64 + 1, "per-tenant sequence: {e}");
        assert!(chrono::DateTime::parse_from_rfc3339(e["occurred_at"].as_str().unwrap()).is_ok());
    }
    assert_eq!(
        events[0]["data"],
        json!({
            "grant_type": "client_credentials",
            "client_type": "confidential",
            "departments": [1, 2],
            "api_base_url": "https://us.provetcloud.com/501/api/0.1/",
        })
    );
    assert_eq!(
        events[1]["data"],
        json!({"departments": [2, 3], "added": [3], "removed": [1]})
    );
    let changed = events[2]["data"]["changed"].as_array().unwrap();
    assert!(changed.contains(&json!("client_id")), "{changed:?}");
    assert!(changed.contains(&json!("client_secret")), "{changed:?}");
    assert!(!changed.contains(&json!("token_url")), "{changed:?}");
    assert_eq!(events[3]["data"], json!({}));
    assert_eq!(events[4]["data"]["departments"], json!([2, 3]));
    // Ids sort in the order written, and no value of a secret is in any event.
    let ids: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted);
    let text = serde_json::to_string(&events).unwrap();
    assert!(!text.contains(&secret));
    assert!(!text.contains("SECRET-canary"));

    // A type filter.
    let removed = all_events(&daemon, &admin, "&types=tenant.removed,tenant.updated").await;
    let types: Vec<&str> = removed
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["tenant.updated", "tenant.removed"]);

    // The counter of events written, by type.
    let metrics = daemon
        .http
        .get(daemon.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("broker_events_written_total{type=\"tenant.registered\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("broker_events_written_total{type=\"tenant.removed\"} 1"));
    assert!(metrics.contains("broker_events_written_total{type=\"grant.revoked\"} 0"));
    // The stored rows hold what the feed served.
    assert_eq!(db.count("SELECT COUNT(*) FROM events").await, 5);
}

async fn the_feed_is_scoped_by_key_and_checks_its_parameters(backend: Backend) {
    let db = TestDb::new(backend).await;
    let daemon = Daemon::start(&db, DaemonConfig::new()).await;
    for id in [601, 602, 603] {
        assert_eq!(
            daemon.hookup(&client_credentials(id, "c", "s")).await.0,
            200
        );
    }
    let scoped = daemon.api_key("token", &[602]);
    let unscoped = daemon.api_key("token", &[]);
    let admin = daemon.api_key("admin", &[]);
    let seen = all_events(&daemon, &scoped, "").await;
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0]["provet_id"], 602);
    assert_eq!(all_events(&daemon, &unscoped, "").await.len(), 3);
    let all = all_events(&daemon, &admin, "").await;
    assert_eq!(of_tenant(&all, 601).len(), 1);
    assert_eq!(all.len(), 3);

    assert_eq!(daemon.get("/v1/events", None).await.0, 401);
    for (query, field) in [
        ("types=tenant.exploded", "types"),
        ("wait=31s", "wait"),
        ("wait=forever", "wait"),
        ("after=not-a-cursor", "after"),
    ] {
        let (status, body) = daemon
            .get(&format!("/v1/events?{query}"), Some(&admin))
            .await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["errors"][0]["field"], field, "{query}: {body}");
    }
    // A limit beyond the largest page is clamped, not refused.
    let (status, page) = daemon.get("/v1/events?limit=100000", Some(&admin)).await;
    assert_eq!(status, 200);
    assert_eq!(page["events"].as_array().unwrap().len(), 3);
    // An empty feed still answers a cursor to loop on.
    let (_, page) = daemon
        .get("/v1/events?types=grant.revoked", Some(&admin))
        .await;
    assert!(page["next_after"].is_string(), "{page}");
}

async fn a_long_poll_is_released_by_a_hookup(backend: Backend) {
    let db = TestDb::new(backend).await;
    let daemon = Daemon::start(&db, DaemonConfig::new()).await;
    let key = daemon.api_key("token", &[]);
    let (_, page) = daemon.get("/v1/events", Some(&key)).await;
    let cursor = page["next_after"].as_str().unwrap().to_owned();

    // Nothing arrives: the wait runs out and answers an empty page with the same cursor.
    let started = Instant::now();
    let (status, page) = daemon
        .get(&format!("/v1/events?after={cursor}&wait=700ms"), Some(&key))
        .await;
    assert_eq!(status, 200);
    assert!(started.elapsed() >= Duration::from_millis(650));
    assert_eq!(page["events"], json!([]));
    assert_eq!(page["next_after"], cursor.as_str());

    let started = Instant::now();
    let poll = {
        let (http, url, key) = (
            daemon.http.clone(),
            daemon.url(&format!("/v1/events?after={cursor}&wait=20s")),
            key.clone(),
        );
        tokio::spawn(async move {
            let response = http.get(url).bearer_auth(key).send().await.unwrap();
            (Instant::now(), response.json::<Value>().await.unwrap())
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent = Instant::now();
    assert_eq!(
        daemon.hookup(&client_credentials(701, "c", "s")).await.0,
        200
    );
    let (answered, page) = poll.await.unwrap();
    assert!(answered >= sent, "answered before the hookup");
    assert!(
        answered.duration_since(started) < Duration::from_secs(5),
        "the long poll was not released by the hookup"
    );
    assert_eq!(page["events"][0]["type"], "tenant.registered");
    assert_eq!(page["events"][0]["provet_id"], 701);
}

async fn a_hookup_answered_200_has_its_event_after_a_kill(backend: Backend) {
    let db = TestDb::new(backend).await;
    let config = DaemonConfig::new();
    let daemon = Daemon::start(&db, config.clone()).await;
    assert_eq!(
        daemon.hookup(&client_credentials(801, "c", "s")).await.0,
        200
    );
    daemon.kill();
    let daemon = Daemon::start(&db, config).await;
    let key = daemon.api_key("token", &[]);
    let events = all_events(&daemon, &key, "").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["type"], "tenant.registered");
    assert_eq!(events[0]["provet_id"], 801);
}

/// On PostgreSQL an event id drawn by a transaction that commits late is lower than ids
/// committed meanwhile: a follower whose cursor passed those must still get it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_an_event_committed_out_of_id_order_is_not_skipped() {
    let db = TestDb::new(Backend::Postgres).await;
    let daemon = Daemon::start(&db, DaemonConfig::new()).await;
    let key = daemon.api_key("token", &[]);
    assert_eq!(
        daemon.hookup(&client_credentials(901, "c", "s")).await.0,
        200
    );
    // Waits: any write transaction of the cluster still running (other tests' databases
    // included) holds the feed back until it ends.
    let (_, page) = daemon.get("/v1/events?wait=5s", Some(&key)).await;
    assert_eq!(page["events"].as_array().unwrap().len(), 1);
    let cursor = page["next_after"].as_str().unwrap().to_owned();

    // A transaction that draws an event id now and commits later.
    let conn = db.connect().await;
    let late = conn.begin().await.unwrap();
    late.execute_unprepared(
        "UPDATE tenants SET event_sequence = event_sequence + 1 WHERE provet_id = 901",
    )
    .await
    .unwrap();
    late.execute_unprepared(
        "INSERT INTO events (xid, provet_id, sequence, event_type, occurred_at, data) \
         VALUES (pg_current_xact_id()::text::bigint, 901, 2, 'tenant.updated', now(), '{\"changed\": [\"token_url\"]}')",
    )
    .await
    .unwrap();
    // Meanwhile a hookup commits an event with a higher id.
    assert_eq!(
        daemon.hookup(&client_credentials(902, "c", "s")).await.0,
        200
    );
    let (_, page) = daemon
        .get(&format!("/v1/events?after={cursor}&wait=1s"), Some(&key))
        .await;
    // It is held back while a lower one may still commit.
    assert_eq!(page["events"], json!([]), "{page}");
    let cursor = page["next_after"].as_str().unwrap().to_owned();
    late.commit().await.unwrap();

    let (_, page) = daemon
        .get(&format!("/v1/events?after={cursor}&wait=5s"), Some(&key))
        .await;
    let got: Vec<(i64, &str)> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["provet_id"].as_i64().unwrap(),
                e["type"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [(901, "tenant.updated"), (902, "tenant.registered")],
        "{page}"
    );
    let ids: Vec<u64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| u64::from_str_radix(&e["id"].as_str().unwrap()[4..], 16).unwrap())
        .collect();
    assert!(ids[0] < ids[1], "the late event has the lower id: {ids:?}");
    conn.close().await.ok();
}

/// Two replicas on one database: a long poll on one is released by a hookup on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_long_poll_is_released_by_a_hookup_on_another_replica() {
    let db = TestDb::new(Backend::Postgres).await;
    let config = DaemonConfig::new();
    let a = Daemon::start(&db, config.clone()).await;
    let b = Daemon::start(&db, config).await;
    let key = a.api_key("token", &[]);
    let (_, page) = a.get("/v1/events", Some(&key)).await;
    let cursor = page["next_after"].as_str().unwrap().to_owned();
    let started = Instant::now();
    let poll = {
        let (http, url, key) = (
            a.http.clone(),
            a.url(&format!("/v1/events?after={cursor}&wait=20s")),
            key.clone(),
        );
        tokio::spawn(async move {
            let response = http.get(url).bearer_auth(key).send().await.unwrap();
            response.json::<Value>().await.unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(b.hookup(&client_credentials(1001, "c", "s")).await.0, 200);
    let page = poll.await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(page["events"][0]["provet_id"], 1001);
}
