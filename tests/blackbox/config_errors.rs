//! Configuration mistakes stop the daemon before it creates anything, with a message that
//! names the key (and the environment variable, when one set it); the master key can come
//! from a file (compose secrets, systemd credentials).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::backend_tests;
use crate::helpers::*;

/// Runs `provet-broker serve` in an empty folder with only `env` (and `--config`, when
/// given); it must exit with an error within 20 s. Answers its stderr and asserts the
/// folder holds nothing new.
fn refused(env: &[(&str, &str)], config: Option<&str>) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut command = Command::new(binary());
    command
        .env_clear()
        .envs(env.iter().copied())
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(text) = config {
        std::fs::write(dir.path().join("broker.toml"), text).expect("config file");
        command.args(["--config", "broker.toml"]);
    }
    let mut child = command.arg("serve").spawn().expect("spawn provet-broker");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("provet-broker accepted {env:?} {config:?} and kept running");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("stderr");
    assert!(!status.success(), "exit {status} for {env:?}: {stderr}");
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|name| name != "broker.toml")
        .collect();
    assert!(left.is_empty(), "created {left:?} for {env:?}: {stderr}");
    stderr
}

fn assert_names(stderr: &str, needles: &[&str]) {
    for needle in needles {
        assert!(stderr.contains(needle), "`{needle}` not in: {stderr}");
    }
}

/// Each mistake as an environment variable: (variable, value, what the message must name).
const MISTAKES: [(&str, &str, &str); 11] = [
    ("BROKER_LOG__LEVEL", "provet_broker=loud[", "log.level"),
    (
        "BROKER_DATABASE__URL",
        "mysql://u:db-pw-secret@h/d",
        "database.url",
    ),
    (
        "BROKER_HOOKUP__ALLOWED_HOSTS",
        r#"["provetcloud.com", "https://eu.provetcloud.com"]"#,
        "hookup.allowed_hosts[1]",
    ),
    ("BROKER_TOKENS__TIMEOUT", "0s", "tokens.timeout"),
    (
        "BROKER_DISCOVERY__REFRESH_INTERVAL",
        "daily",
        "DISCOVERY.REFRESH_INTERVAL",
    ),
    ("BROKER_SERVER__BIND", "localhost", "server.bind"),
    (
        "BROKER_SERVER__PUBLIC_URL",
        "broker.example.com",
        "server.public_url",
    ),
    (
        "BROKER_UPSTREAM__PROXY",
        "ftp://u:proxy-pw-secret@p:21",
        "upstream.proxy",
    ),
    (
        "BROKER_SECRETS__MASTER_KEY_FILE",
        "/nonexistent/master.key",
        "secrets.master_key_file",
    ),
    (
        "BROKER_DATABASE__MAX_CONNECTIONS",
        "0",
        "database.max_connections",
    ),
    (
        "BROKER_SECRETS__MASTER_KEY",
        "not-base64-key-secret",
        "secrets.master_key",
    ),
];

#[test]
fn each_mistake_in_the_environment_is_named_with_its_variable() {
    for (variable, value, key) in MISTAKES {
        let stderr = refused(&[(variable, value)], None);
        assert_names(&stderr, &[key, variable]);
        for secret in ["db-pw-secret", "proxy-pw-secret", "not-base64-key-secret"] {
            assert!(!stderr.contains(secret), "{variable}: {stderr}");
        }
    }
}

#[test]
fn each_mistake_in_a_file_is_named_with_its_key_and_file() {
    for (file, key) in [
        ("[log]\nlevel = \"provet_broker=loud[\"\n", "log.level"),
        (
            "[database]\nurl = \"mysql://u:db-pw-secret@h/d\"\n",
            "database.url",
        ),
        (
            "[hookup]\nallowed_hosts = [\"provetcloud.com:443\"]\n",
            "hookup.allowed_hosts[0]",
        ),
        ("[tokens]\ntimeout = \"0s\"\n", "tokens.timeout"),
        (
            "[discovery]\nrefresh_interval = \"daily\"\n",
            "discovery.refresh_interval",
        ),
        ("[events]\nretention = \"0s\"\n", "events.retention"),
        ("[hookup]\nmax_batch = 0\n", "hookup.max_batch"),
        ("[server]\nbind = \"http://0.0.0.0:8080\"\n", "server.bind"),
    ] {
        let stderr = refused(&[], Some(file));
        assert_names(&stderr, &[key, "broker.toml"]);
        assert!(!stderr.contains("BROKER_"), "{stderr}");
        assert!(!stderr.contains("db-pw-secret"), "{stderr}");
    }
}

#[test]
fn every_mistake_is_reported_at_once() {
    let stderr = refused(
        &[
            ("BROKER_LOG__LEVEL", "=bad["),
            ("BROKER_DATABASE__URL", "redis://h/0"),
            ("BROKER_HOOKUP__ALLOWED_HOSTS", r#"["*"]"#),
        ],
        None,
    );
    assert_names(
        &stderr,
        &[
            "BROKER_LOG__LEVEL",
            "BROKER_DATABASE__URL",
            "unsupported scheme `redis`",
            "hookup.allowed_hosts[0] (environment variable BROKER_HOOKUP__ALLOWED_HOSTS)",
        ],
    );
}

/// The key from a file (a trailing newline, as `openssl rand -base64 32 >` writes it): it
/// seals the stored secrets, no key is generated, and the same key given directly opens them.
async fn master_key_from_a_file_seals_and_reopens(backend: Backend) {
    let db = TestDb::new(backend).await;
    let key = random_key();
    let key_file = db.dir.path().join("master.key");
    std::fs::write(&key_file, format!("{key}\n")).expect("key file");
    let mut config = DaemonConfig::new();
    config.master_key = String::new();
    config.extra_env.push((
        "BROKER_SECRETS__MASTER_KEY_FILE".into(),
        key_file.display().to_string(),
    ));
    let daemon = Daemon::start(&db, config).await;
    let (status, body) = daemon
        .hookup(&client_credentials(
            4242,
            "client-4242",
            &distinctive_secret(),
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(daemon.get("/readyz", None).await.0, 200);
    let (status, _) = daemon.stop();
    assert!(status.success(), "{status}");
    assert!(
        !Path::new(&db.dir.path().join("data/master.key")).exists(),
        "a key was generated although one was configured"
    );

    // The same key, given directly: the stored secret opens (readiness checks every key id).
    let mut config = DaemonConfig::new();
    config.master_key = key;
    let daemon = Daemon::start(&db, config).await;
    let (status, body) = daemon.get("/readyz", None).await;
    assert_eq!(status, 200, "{body}");

    // Another key refuses to start, naming the key id the secrets were sealed with.
    drop(daemon);
    let mut env: Vec<(String, String)> = vec![
        ("BROKER_DATABASE__URL".into(), db.url.clone()),
        ("BROKER_SECRETS__MASTER_KEY".into(), random_key()),
        ("BROKER_SERVER__BIND".into(), "127.0.0.1:0".into()),
    ];
    env.push(("BROKER_LOG__FORMAT".into(), "json".into()));
    let (ok, _, stderr) = run_cli(&env, db.dir.path(), &["migrate"]);
    assert!(!ok && stderr.contains("not configured"), "{stderr}");
}

backend_tests!(master_key_from_a_file_seals_and_reopens);
