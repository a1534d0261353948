//! `export` and `import`: the whole broker moved between backends under a different master
//! key (tenants, tokens, API keys, webhooks, the hookup URL), no plaintext secret in the file,
//! wrong passphrases and non-empty targets refused with nothing written, and the commands
//! that only read creating nothing and refusing a database behind on migrations.

use std::path::Path;

use reqwest::Method;
use sea_orm::ConnectionTrait;
use serde_json::{Value, json};

use crate::backend_tests;
use crate::helpers::*;
use crate::provider::*;
use crate::tokens::token;

const PASSPHRASE: &str = "correct horse battery staple";

/// The settings a command needs on a database no daemon runs on.
fn cli_env(db: &TestDb, master_key: &str) -> Vec<(String, String)> {
    vec![
        ("BROKER_DATABASE__URL".into(), db.url.clone()),
        ("BROKER_SECRETS__MASTER_KEY".into(), master_key.into()),
        ("BROKER_LOG__FORMAT".into(), "json".into()),
    ]
}

fn with_passphrase(mut env: Vec<(String, String)>, passphrase: &str) -> Vec<(String, String)> {
    env.push(("PROVET_BROKER_PASSPHRASE".into(), passphrase.into()));
    env
}

/// How many tables the database holds, without creating a SQLite file that is not there.
async fn table_count(db: &TestDb, backend: Backend) -> i64 {
    match backend {
        Backend::Sqlite => {
            if !db.dir.path().join("broker.db").exists() {
                return 0;
            }
            db.count("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'")
                .await
        }
        Backend::Postgres => {
            db.count(
                "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = current_schema()",
            )
            .await
        }
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// A daemon against the real provider that generates (and stores) its hookup secret.
async fn start(db: &TestDb, master_key: &str) -> Daemon {
    let mut config = DaemonConfig::new();
    config.master_key = master_key.to_owned();
    config.hookup_secret = None;
    config.extra_env.extend(provider_env());
    Daemon::start(db, config).await
}

fn hookup_secret_of(daemon: &Daemon) -> String {
    daemon
        .hookup_url
        .rsplit('/')
        .next()
        .expect("secret segment")
        .to_owned()
}

async fn export_then_import_keeps_tenants_tokens_keys_webhooks_and_the_hookup_url(
    from: Backend,
    to: Backend,
) {
    let p = provider();
    let source = TestDb::new(from).await;
    let source_key = random_key();
    let daemon = start(&source, &source_key).await;
    let id = unique_tenant();
    let message = p
        .application(id, "client_credentials", "confidential", None)
        .await;
    assert_eq!(daemon.hookup(&message).await.0, 200);
    let admin = daemon.api_key("admin", &[]);
    let service = daemon.api_key("token", &[id]);
    let (status, first) = token(&daemon, &service, id, None).await;
    assert_eq!(status, 200, "{first}");
    let access = first["access_token"].as_str().expect("token").to_owned();
    let (status, webhook) = daemon
        .send(
            Method::POST,
            "/admin/webhooks",
            Some(&admin),
            Some(json!({"url": "http://127.0.0.1:9/hook", "events": ["*"], "description": "sync"})),
        )
        .await;
    assert_eq!(status, 201, "{webhook}");
    let webhook_secret = webhook["secret"].as_str().expect("secret").to_owned();
    let hookup_secret = hookup_secret_of(&daemon);
    daemon.stop();

    let file = source.dir.path().join("broker.export.json");
    let (ok, stdout, stderr) = run_cli(
        &with_passphrase(cli_env(&source, &source_key), PASSPHRASE),
        source.dir.path(),
        &["export", "--file", path_str(&file)],
    );
    assert!(ok, "export failed: {stderr}");
    assert!(stdout.is_empty(), "the export went to the file: {stdout}");
    assert!(stderr.contains("1 tenant(s)"), "{stderr}");
    let bytes = std::fs::read(&file).expect("export file");
    let parsed: Value = serde_json::from_slice(&bytes).expect("JSON");
    assert_eq!(parsed["format"], "provet-broker-export");
    assert_eq!(parsed["version"], 1);
    assert_eq!(parsed["seal"]["kdf"], "argon2id");
    let client_secret = message["client_secret"].as_str().expect("client secret");
    for (what, secret) in [
        ("client secret", client_secret),
        ("access token", access.as_str()),
        ("admin key", admin.as_str()),
        ("token key", service.as_str()),
        ("webhook secret", webhook_secret.as_str()),
        ("hookup secret", hookup_secret.as_str()),
    ] {
        assert!(!contains(&bytes, secret), "the export holds the {what}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // Another backend, another master key.
    let target = TestDb::new(to).await;
    let target_key = random_key();
    let (ok, _, stderr) = run_cli(
        &with_passphrase(cli_env(&target, &target_key), PASSPHRASE),
        target.dir.path(),
        &["import", "--file", path_str(&file)],
    );
    assert!(ok, "import failed: {stderr}");
    assert!(!contains(&target.raw_bytes().await, client_secret));
    assert!(!contains(&target.raw_bytes().await, &webhook_secret));
    let requests_before = p.token_requests(id).await.len();

    let daemon = start(&target, &target_key).await;
    assert_eq!(
        hookup_secret_of(&daemon),
        hookup_secret,
        "the hookup URL moved"
    );
    let (status, list) = daemon.get("/admin/tenants", Some(&admin)).await;
    assert_eq!(status, 200, "the admin key still works: {list}");
    let ids: Vec<i64> = list["tenants"]
        .as_array()
        .expect("tenants")
        .iter()
        .filter_map(|t| t["provet_id"].as_i64())
        .collect();
    assert_eq!(ids, [id]);
    // The cached token came along and opens under the new key.
    let (status, again) = token(&daemon, &service, id, None).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["access_token"], access.as_str());
    // The client secret too: a fresh token from the provider.
    let (status, fresh) = token(&daemon, &service, id, Some(json!({"force_refresh": true}))).await;
    assert_eq!(status, 200, "{fresh}");
    assert_ne!(fresh["access_token"], access.as_str());
    assert!(p.token_requests(id).await.len() > requests_before);
    let (status, me) = p
        .api_me(id, fresh["access_token"].as_str().expect("token"))
        .await;
    assert_eq!(status, 200, "{me}");
    let (status, hooks) = daemon.get("/admin/webhooks", Some(&admin)).await;
    assert_eq!(status, 200);
    assert_eq!(hooks["webhooks"][0]["id"], webhook["id"], "{hooks}");
    assert_eq!(hooks["webhooks"][0]["url"], "http://127.0.0.1:9/hook");
    // The hookup still registers tenants at the kept URL.
    let other = unique_tenant();
    let message = p
        .application(other, "client_credentials", "confidential", None)
        .await;
    assert_eq!(daemon.hookup(&message).await.0, 200);
}

async fn sqlite_to_postgres() {
    export_then_import_keeps_tenants_tokens_keys_webhooks_and_the_hookup_url(
        Backend::Sqlite,
        Backend::Postgres,
    )
    .await;
}

async fn postgres_to_sqlite() {
    export_then_import_keeps_tenants_tokens_keys_webhooks_and_the_hookup_url(
        Backend::Postgres,
        Backend::Sqlite,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_on_sqlite_imports_on_postgres_with_another_key() {
    sqlite_to_postgres().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_on_postgres_imports_on_sqlite_with_another_key() {
    postgres_to_sqlite().await;
}

/// A source with one tenant (and its hookup secret), exported to a file.
async fn exported(backend: Backend, extra: &[&str]) -> (TestDb, String, std::path::PathBuf) {
    let db = TestDb::new(backend).await;
    let key = random_key();
    let mut config = DaemonConfig::new();
    config.master_key = key.clone();
    config.hookup_secret = None;
    let daemon = Daemon::start(&db, config).await;
    let message = client_credentials(41, "c41", &distinctive_secret());
    assert_eq!(daemon.hookup(&message).await.0, 200);
    daemon.stop();
    let file = db.dir.path().join("export.json");
    let mut args = vec!["export", "--file", path_str(&file)];
    args.extend_from_slice(extra);
    let (ok, _, stderr) = run_cli(
        &with_passphrase(cli_env(&db, &key), PASSPHRASE),
        db.dir.path(),
        &args,
    );
    assert!(ok, "export failed: {stderr}");
    (db, key, file)
}

async fn import_with_a_wrong_passphrase_fails_and_writes_nothing(backend: Backend) {
    let (_source, _, file) = exported(backend, &[]).await;
    let target = TestDb::new(backend).await;
    let (ok, _, stderr) = run_cli(
        &with_passphrase(cli_env(&target, &random_key()), "not the passphrase"),
        target.dir.path(),
        &["import", "--file", path_str(&file)],
    );
    assert!(!ok);
    assert!(stderr.contains("wrong passphrase or key"), "{stderr}");
    assert!(stderr.contains("nothing was imported"), "{stderr}");
    assert_eq!(
        table_count(&target, backend).await,
        0,
        "something was written"
    );
}

async fn import_into_a_non_empty_database_is_refused_and_changes_nothing(backend: Backend) {
    let (_source, _, file) = exported(backend, &[]).await;
    let target = TestDb::new(backend).await;
    let key = random_key();
    let mut config = DaemonConfig::new();
    config.master_key = key.clone();
    let daemon = Daemon::start(&target, config).await;
    let message = client_credentials(7, "c7", &distinctive_secret());
    assert_eq!(daemon.hookup(&message).await.0, 200);
    daemon.stop();
    let (ok, _, stderr) = run_cli(
        &with_passphrase(cli_env(&target, &key), PASSPHRASE),
        target.dir.path(),
        &["import", "--file", path_str(&file)],
    );
    assert!(!ok);
    assert!(stderr.contains("not empty"), "{stderr}");
    assert!(stderr.contains("1 tenant(s)"), "{stderr}");
    assert_eq!(
        target
            .column("SELECT provet_id FROM tenants ORDER BY provet_id")
            .await,
        [json!(7)]
    );
    assert_eq!(target.count("SELECT COUNT(*) FROM clients").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passphrase_comes_from_a_file_or_the_environment_never_an_argument() {
    let db = TestDb::new(Backend::Sqlite).await;
    let key = random_key();
    let (ok, _, stderr) = run_cli(&cli_env(&db, &key), db.dir.path(), &["migrate"]);
    assert!(ok, "{stderr}");
    let file = db.dir.path().join("export.json");
    // No option takes the passphrase itself.
    let (ok, _, stderr) = run_cli(
        &cli_env(&db, &key),
        db.dir.path(),
        &["export", "--passphrase", PASSPHRASE],
    );
    assert!(!ok);
    assert!(stderr.contains("unexpected argument"), "{stderr}");
    // Without one (and no terminal to prompt on), a clear refusal and no file.
    let (ok, _, stderr) = run_cli(
        &cli_env(&db, &key),
        db.dir.path(),
        &["export", "--file", path_str(&file)],
    );
    assert!(!ok);
    assert!(stderr.contains("PROVET_BROKER_PASSPHRASE"), "{stderr}");
    assert!(stderr.contains("--passphrase-file"), "{stderr}");
    assert!(!file.exists());
    // A short passphrase is refused for a new export.
    let (ok, _, stderr) = run_cli(
        &with_passphrase(cli_env(&db, &key), "short"),
        db.dir.path(),
        &["export", "--file", path_str(&file)],
    );
    assert!(!ok);
    assert!(stderr.contains("at least 12 characters"), "{stderr}");
    // From a file, both ways.
    let passphrase_file = db.dir.path().join("passphrase");
    std::fs::write(&passphrase_file, format!("{PASSPHRASE}\n")).unwrap();
    let (ok, _, stderr) = run_cli(
        &cli_env(&db, &key),
        db.dir.path(),
        &[
            "export",
            "--file",
            path_str(&file),
            "--passphrase-file",
            path_str(&passphrase_file),
        ],
    );
    assert!(ok, "{stderr}");
    let target = TestDb::new(Backend::Sqlite).await;
    let (ok, _, stderr) = run_cli(
        &cli_env(&target, &random_key()),
        target.dir.path(),
        &[
            "import",
            "--file",
            path_str(&file),
            "--passphrase-file",
            path_str(&passphrase_file),
        ],
    );
    assert!(ok, "{stderr}");
    // The same passphrase from the environment opens it too (checked before any write).
    let again = TestDb::new(Backend::Sqlite).await;
    let (ok, _, stderr) = run_cli(
        &with_passphrase(cli_env(&again, &random_key()), PASSPHRASE),
        again.dir.path(),
        &["import", "--file", path_str(&file)],
    );
    assert!(ok, "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_with_a_key_file_needs_that_key_file_to_import() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("export.key");
    std::fs::write(&key_file, random_key()).unwrap();
    let (_source, _, file) = exported(Backend::Sqlite, &["--key-file", path_str(&key_file)]).await;
    let parsed: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(parsed["seal"]["kdf"], "key");
    let target = TestDb::new(Backend::Postgres).await;
    let key = random_key();
    let (ok, _, stderr) = run_cli(
        &with_passphrase(cli_env(&target, &key), PASSPHRASE),
        target.dir.path(),
        &["import", "--file", path_str(&file)],
    );
    assert!(!ok);
    assert!(stderr.contains("--key-file"), "{stderr}");
    let wrong = dir.path().join("wrong.key");
    std::fs::write(&wrong, random_key()).unwrap();
    let (ok, _, stderr) = run_cli(
        &cli_env(&target, &key),
        target.dir.path(),
        &[
            "import",
            "--file",
            path_str(&file),
            "--key-file",
            path_str(&wrong),
        ],
    );
    assert!(!ok);
    assert!(stderr.contains("wrong passphrase or key"), "{stderr}");
    assert_eq!(table_count(&target, Backend::Postgres).await, 0);
    let (ok, _, stderr) = run_cli(
        &cli_env(&target, &key),
        target.dir.path(),
        &[
            "import",
            "--file",
            path_str(&file),
            "--key-file",
            path_str(&key_file),
        ],
    );
    assert!(ok, "{stderr}");
    assert_eq!(target.count("SELECT COUNT(*) FROM tenants").await, 1);
}

const READ_ONLY: [&[&str]; 5] = [
    &["hookup-url"],
    &["tenants", "list"],
    &["tenants", "show", "1"],
    &["api-key", "list"],
    &["export", "--file", "out.json"],
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_commands_in_an_empty_folder_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // The defaults: SQLite in ./data, a master key generated into ./data on first run.
    let env = vec![("PROVET_BROKER_PASSPHRASE".to_owned(), PASSPHRASE.to_owned())];
    for args in READ_ONLY {
        let (ok, _, stderr) = run_cli(&env, dir.path(), args);
        assert!(!ok, "{args:?} succeeded on no database");
        assert!(
            stderr.contains("there is no database at sqlite://data/broker.db"),
            "{args:?}: {stderr}"
        );
        assert!(
            stderr.contains("provet-broker migrate"),
            "{args:?}: {stderr}"
        );
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(left.is_empty(), "{args:?} created {left:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_commands_on_an_empty_postgres_database_migrate_nothing() {
    let db = TestDb::new(Backend::Postgres).await;
    let dir = tempfile::tempdir().unwrap();
    let env = with_passphrase(
        vec![("BROKER_DATABASE__URL".to_owned(), db.url.clone())],
        PASSPHRASE,
    );
    for args in READ_ONLY {
        let (ok, _, stderr) = run_cli(&env, dir.path(), args);
        assert!(!ok, "{args:?} succeeded on an empty database");
        assert!(
            stderr.contains("migration(s) pending"),
            "{args:?}: {stderr}"
        );
        assert!(
            stderr.contains("provet-broker migrate"),
            "{args:?}: {stderr}"
        );
    }
    assert_eq!(table_count(&db, Backend::Postgres).await, 0);
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(
        left.is_empty(),
        "created {left:?} (no master key, no export file)"
    );
}

async fn read_only_commands_refuse_a_database_behind_on_migrations(backend: Backend) {
    let db = TestDb::new(backend).await;
    let key = random_key();
    let env = with_passphrase(cli_env(&db, &key), PASSPHRASE);
    let (ok, _, stderr) = run_cli(&env, db.dir.path(), &["migrate"]);
    assert!(ok, "{stderr}");
    for args in READ_ONLY {
        let (ok, _, stderr) = run_cli(&env, db.dir.path(), args);
        // Migrated: list and export work, `show 1` names the missing tenant, and no hookup
        // secret is stored before the daemon's first start.
        assert!(
            ok || args.get(1) == Some(&"show") || args[0] == "hookup-url",
            "{args:?}: {stderr}"
        );
    }
    let latest = db
        .column("SELECT version FROM seaql_migrations ORDER BY version DESC LIMIT 1")
        .await;
    let latest = latest[0].as_str().unwrap().to_owned();
    let conn = db.connect().await;
    conn.execute_unprepared(&format!(
        "DELETE FROM seaql_migrations WHERE version = '{latest}'"
    ))
    .await
    .unwrap();
    conn.close().await.unwrap();
    for args in READ_ONLY {
        let (ok, _, stderr) = run_cli(&env, db.dir.path(), args);
        assert!(!ok, "{args:?} ran on a database behind");
        assert!(
            stderr.contains("1 migration(s) pending"),
            "{args:?}: {stderr}"
        );
        assert!(
            stderr.contains("provet-broker migrate"),
            "{args:?}: {stderr}"
        );
    }
    assert!(
        db.column(&format!(
            "SELECT version FROM seaql_migrations WHERE version = '{latest}'"
        ))
        .await
        .is_empty(),
        "a read-only command ran the migration"
    );
}

backend_tests!(
    import_with_a_wrong_passphrase_fails_and_writes_nothing,
    import_into_a_non_empty_database_is_refused_and_changes_nothing,
    read_only_commands_refuse_a_database_behind_on_migrations,
);
