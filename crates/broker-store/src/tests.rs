//! Store tests on a real SQLite file (PostgreSQL is covered by the black-box suite).
#![allow(clippy::disallowed_methods)] // test fixtures stamp rows with the real time

use std::sync::Arc;

use broker_domain::{HookupMessage, HostAllowlist, UrlPolicy};
use chrono::Utc;
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
    assert_eq!(
        s.apply_hookup(&m, now).await.unwrap(),
        HookupOutcome::Registered
    );
    assert_eq!(
        s.apply_hookup(&m, now).await.unwrap(),
        HookupOutcome::Unchanged
    );
    let m2 = message("a", "secret-one", json!({"added_department": 3}));
    assert_eq!(
        s.apply_hookup(&m2, now).await.unwrap(),
        HookupOutcome::Updated
    );
    assert_eq!(s.tenant(7).await.unwrap().unwrap().departments, [1, 2, 3]);
    let m3 = message("b", "secret-two", json!({}));
    assert_eq!(
        s.apply_hookup(&m3, now).await.unwrap(),
        HookupOutcome::Updated
    );
    let t = s.tenant(7).await.unwrap().unwrap();
    assert_eq!(t.client.unwrap().client_id, "b");
    assert_eq!(
        s.client_secret(7).await.unwrap().unwrap().expose_secret(),
        "secret-two"
    );
    assert_eq!(s.deliveries(7, None, 10).await.unwrap().len(), 4);
}

#[tokio::test]
async fn rekey_reseals_under_the_new_key() {
    let dir = tempfile::tempdir().unwrap();
    let old_b64 = MasterKey::generate_base64();
    let old = || MasterKey::from_base64(&old_b64).unwrap();
    let s = store(&dir, Keyring::new(old(), vec![])).await;
    s.apply_hookup(&message("a", "secret-one", json!({})), Utc::now())
        .await
        .unwrap();
    s.secret_setting_or_insert("hookup_secret", || "hs".to_owned().into(), Utc::now())
        .await
        .unwrap();
    s.close().await;

    let s = store(&dir, Keyring::new(key(), vec![old()])).await;
    let report = s.rekey().await.unwrap();
    assert_eq!(
        report,
        RekeyReport {
            resealed: 2,
            already_current: 0
        }
    );
    assert_eq!(
        s.rekey().await.unwrap(),
        RekeyReport {
            resealed: 0,
            already_current: 2
        }
    );
    assert_eq!(
        s.client_secret(7).await.unwrap().unwrap().expose_secret(),
        "secret-one"
    );
}
