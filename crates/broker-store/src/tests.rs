//! Store tests on a real SQLite file (PostgreSQL is covered by the black-box suite).
#![allow(clippy::disallowed_methods)] // test fixtures stamp rows with the real time

use std::sync::Arc;

use broker_domain::{HookupMessage, HostAllowlist, UrlPolicy};
use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use serde_json::json;

use super::*;

async fn store(dir: &tempfile::TempDir, keyring: Keyring) -> Store {
    let url = format!("sqlite://{}/t.db?mode=rwc", dir.path().display());
    let store = Store::connect(
        &StoreOptions {
            url,
            max_connections: 4,
            cache_connections: 2,
            connect_timeout: Duration::from_secs(5),
            acquire_timeout: Duration::from_secs(5),
            busy_timeout: Duration::from_secs(5),
        },
        Arc::new(keyring),
    )
    .await
    .unwrap();
    store.migrate().await.unwrap();
    store
}

/// Applies a hookup as Provet delivers it; answers its outcome.
async fn hookup(s: &Store, m: &HookupMessage, now: DateTime<Utc>) -> HookupOutcome {
    s.tenants()
        .apply_hookup(m, broker_domain::DeliverySource::Hookup, now)
        .await
        .unwrap()
        .outcome
}

/// Tenant 7's client secret as the token broker opens it.
async fn stored_secret(s: &Store) -> String {
    s.tokens()
        .token_client(7)
        .await
        .unwrap()
        .unwrap()
        .client_secret
        .unwrap()
        .expose_secret()
        .to_owned()
}

fn key() -> MasterKey {
    MasterKey::from_base64(&MasterKey::generate_base64()).unwrap()
}

fn message(client_id: &str, secret: &str, extra: serde_json::Value) -> HookupMessage {
    let mut v = json!({
        "provet_id": 7, "client_id": client_id, "client_secret": secret, "algorithm": null,
        "authorization_grant_type": "client_credentials", "client_type": "confidential",
        "redirect_uris": "", "token_url": "https://provetcloud.com/7/oauth2/token/",
        "authorize_url": "https://provetcloud.com/7/oauth2/authorize/",
        "openid_autodiscovery_url": null
    });
    if let (Some(obj), Some(extra)) = (v.as_object_mut(), extra.as_object()) {
        obj.extend(extra.clone());
    }
    let policy = UrlPolicy {
        allowlist: HostAllowlist::new(["provetcloud.com"]).unwrap(),
        allow_http: false,
    };
    HookupMessage::parse(v.to_string().as_bytes(), &policy).unwrap()
}

#[tokio::test]
async fn hookup_outcomes_follow_what_changed() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir, Keyring::new(key(), vec![])).await;
    let now = Utc::now();
    let m = message("a", "secret-one", json!({"departments": [1, 2]}));
    assert_eq!(hookup(&s, &m, now).await, HookupOutcome::Registered);
    assert_eq!(hookup(&s, &m, now).await, HookupOutcome::Unchanged);
    let m2 = message("a", "secret-one", json!({"added_department": 3}));
    assert_eq!(hookup(&s, &m2, now).await, HookupOutcome::Updated);
    assert_eq!(
        s.tenants().tenant(7).await.unwrap().unwrap().departments,
        [1, 2, 3]
    );
    let m3 = message("b", "secret-two", json!({}));
    assert_eq!(hookup(&s, &m3, now).await, HookupOutcome::Updated);
    let t = s.tenants().tenant(7).await.unwrap().unwrap();
    assert_eq!(t.client.unwrap().client_id, "b");
    assert_eq!(stored_secret(&s).await, "secret-two");
    assert_eq!(s.tenants().deliveries(7, None, 10).await.unwrap().len(), 4);
}

#[tokio::test]
async fn rekey_reseals_under_the_new_key() {
    let dir = tempfile::tempdir().unwrap();
    let old_b64 = MasterKey::generate_base64();
    let old = || MasterKey::from_base64(&old_b64).unwrap();
    let s = store(&dir, Keyring::new(old(), vec![])).await;
    hookup(&s, &message("a", "secret-one", json!({})), Utc::now()).await;
    s.settings()
        .secret_setting_or_insert("hookup_secret", || "hs".to_owned().into(), Utc::now())
        .await
        .unwrap();
    s.close().await;

    let s = store(&dir, Keyring::new(key(), vec![old()])).await;
    let report = s.settings().rekey().await.unwrap();
    assert_eq!(
        report,
        RekeyReport {
            resealed: 2,
            already_current: 0
        }
    );
    assert_eq!(
        s.settings().rekey().await.unwrap(),
        RekeyReport {
            resealed: 0,
            already_current: 2
        }
    );
    assert_eq!(stored_secret(&s).await, "secret-one");
}

/// Statements that put a value outside its state's set: each must fail.
const BOGUS: [&str; 10] = [
    "UPDATE tenants SET status = 'gone'",
    "UPDATE clients SET client_type = 'secret'",
    "UPDATE clients SET grant_type = 'authorization-code'",
    "UPDATE clients SET algorithm = 'none'",
    "UPDATE clients SET credentials_state = 'maybe'",
    "UPDATE hookup_deliveries SET outcome = 'lost'",
    "UPDATE hookup_deliveries SET source = 'email'",
    "INSERT INTO grants (provet_id, client_id, subject, scope, state, created_at, updated_at) \
     VALUES (7, 'a', 'u', 's', 'paused', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)",
    "INSERT INTO discovery (provet_id, discovery_url, state, next_due_at, attempts) \
     VALUES (7, 'https://provetcloud.com/d', 'done', CURRENT_TIMESTAMP, 0)",
    "INSERT INTO api_keys (name, role, key_hash, key_prefix, created_at) \
     VALUES ('k', 'root', 'h', 'p', CURRENT_TIMESTAMP)",
];

/// The same statements with valid values: each must succeed.
const VALID: [&str; 5] = [
    "UPDATE clients SET algorithm = NULL",
    "UPDATE clients SET credentials_state = 'rejected'",
    "INSERT INTO grants (provet_id, client_id, subject, scope, state, created_at, updated_at) \
     VALUES (7, 'a', 'u', 's', 'reauthorization_required', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)",
    "INSERT INTO api_keys (name, role, key_hash, key_prefix, created_at) \
     VALUES ('k', 'admin', 'h', 'p', CURRENT_TIMESTAMP)",
    "UPDATE tenants SET status = 'removed'",
];

async fn bogus_states_are_refused(s: &Store) {
    use sea_orm::ConnectionTrait;
    hookup(
        s,
        &message("a", "secret-one", json!({"departments": [4]})),
        Utc::now(),
    )
    .await;
    for sql in BOGUS {
        assert!(s.db.main.execute_unprepared(sql).await.is_err(), "{sql}");
    }
    for sql in VALID {
        s.db.main.execute_unprepared(sql).await.unwrap();
    }
    let t = s.tenants().tenant(7).await.unwrap().unwrap();
    assert_eq!(t.status, broker_domain::TenantStatus::Removed);
    assert_eq!(t.departments, [4]);
    assert_eq!(
        t.client.unwrap().credentials_state,
        broker_domain::CredentialsState::Rejected
    );
}

#[tokio::test]
async fn sqlite_refuses_unknown_states_and_the_rebuild_keeps_rows() {
    use migration::{Migrator, MigratorTrait};
    use sea_orm::ConnectionTrait;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/c.db?mode=rwc", dir.path().display());
    let options = StoreOptions {
        url,
        max_connections: 4,
        cache_connections: 2,
        connect_timeout: Duration::from_secs(5),
        acquire_timeout: Duration::from_secs(5),
        busy_timeout: Duration::from_secs(5),
    };
    let s = Store::connect(&options, Arc::new(Keyring::new(key(), vec![])))
        .await
        .unwrap();
    // Rows stored before the CHECK migration survive its table rebuilds, with their indexes
    // and foreign keys.
    let before = Migrator::migrations().len() - 1;
    Migrator::up(&s.db.main, Some(u32::try_from(before).unwrap()))
        .await
        .unwrap();
    let m = message("b", "secret-two", json!({"departments": [1, 2]}));
    hookup(&s, &m, Utc::now()).await;
    s.migrate().await.unwrap();
    let t = s.tenants().tenant(7).await.unwrap().unwrap();
    assert_eq!(t.departments, [1, 2]);
    assert_eq!(t.client.unwrap().client_id, "b");
    assert_eq!(hookup(&s, &m, Utc::now()).await, HookupOutcome::Unchanged);
    // The indexes are back.
    let indexes =
        s.db.main
            .query_one_raw(sea_orm::Statement::from_string(
                sea_orm::DbBackend::Sqlite,
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' \
             AND name IN ('clients_tenant_client_unique', 'hookup_deliveries_tenant')",
            ))
            .await
            .unwrap()
            .unwrap();
    assert_eq!(indexes.try_get_by_index::<i64>(0).unwrap(), 2);
    s.tenants().remove_tenant(7, Utc::now()).await.unwrap();
    s.db.main
        .execute_unprepared("DELETE FROM hookup_deliveries")
        .await
        .unwrap();
    bogus_states_are_refused(&s).await;
}

#[tokio::test]
async fn postgres_refuses_unknown_states() {
    use sea_orm::ConnectionTrait;
    let server = "postgres://postgres@127.0.0.1:5432";
    let admin = sea_orm::Database::connect(format!("{server}/postgres"))
        .await
        .unwrap();
    let name = format!(
        "store_states_{}_{}",
        std::process::id(),
        Utc::now().timestamp_nanos_opt().unwrap_or_default()
    );
    admin
        .execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let options = StoreOptions {
        url: format!("{server}/{name}"),
        max_connections: 4,
        cache_connections: 2,
        connect_timeout: Duration::from_secs(5),
        acquire_timeout: Duration::from_secs(5),
        busy_timeout: Duration::from_secs(5),
    };
    let s = Store::connect(&options, Arc::new(Keyring::new(key(), vec![])))
        .await
        .unwrap();
    s.migrate().await.unwrap();
    bogus_states_are_refused(&s).await;
    s.close().await;
    admin
        .execute_unprepared(&format!("DROP DATABASE {name}"))
        .await
        .unwrap();
}
