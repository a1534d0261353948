//! PostgreSQL restarting under load. The test runs a PostgreSQL server of its own (the
//! machine's binaries, a temporary data folder, a free port), so that stopping it disturbs
//! no other test.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::Mutex;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::*;
use crate::tokens::token;

struct PrivatePostgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
}

impl PrivatePostgres {
    /// `None` where there are no PostgreSQL binaries or no `runuser` (not root).
    fn create() -> Option<Self> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(Result::ok)
            .map(|e| e.path().join("bin"))
            .find(|p| p.join("initdb").exists())?;
        let dir = tempfile::tempdir().ok()?;
        let owned = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path())
            .status()
            .ok()?;
        if !owned.success() {
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let pg = Self { bin, dir, port };
        let data = pg.data();
        let init = pg
            .as_postgres("initdb")
            .args(["-D", &data, "-A", "trust", "-U", "postgres", "--no-sync"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .ok()?;
        init.success().then_some(pg)
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn as_postgres(&self, tool: &str) -> Command {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(self.bin.join(tool));
        c
    }

    fn start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log").display().to_string();
        let status = self
            .as_postgres("pg_ctl")
            .args([
                "-D",
                &self.data(),
                "-o",
                &options,
                "-l",
                &log,
                "-w",
                "start",
            ])
            .stdout(Stdio::null())
            .status()
            .expect("pg_ctl start");
        assert!(status.success(), "the private PostgreSQL did not start");
    }

    fn stop(&self) {
        let status = self
            .as_postgres("pg_ctl")
            .args(["-D", &self.data(), "-m", "fast", "-w", "stop"])
            .stdout(Stdio::null())
            .status()
            .expect("pg_ctl stop");
        assert!(status.success());
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self
            .as_postgres("pg_ctl")
            .args(["-D", &self.data(), "-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

async fn until(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while started.elapsed() < limit {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what} did not happen within {limit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_resumes_after_a_postgres_restart_and_nothing_acknowledged_is_lost() {
    let Some(pg) = PrivatePostgres::create() else {
        eprintln!("skipped: no PostgreSQL binaries or not root (CI has both)");
        return;
    };
    pg.start();
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/1/token/"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"access_token": "pg-at", "token_type": "Bearer", "expires_in": 3600}),
        ))
        .mount(&server)
        .await;
    // The daemon's own folder; the database is the private server.
    let db = TestDb::new(Backend::Sqlite).await;
    let mut config = DaemonConfig::new();
    config.extra_env.extend([
        ("BROKER_DATABASE__URL".to_owned(), pg.url()),
        (
            "BROKER_DATABASE__CONNECT_TIMEOUT".to_owned(),
            "2s".to_owned(),
        ),
        (
            "BROKER_HOOKUP__ALLOWED_HOSTS".to_owned(),
            r#"["127.0.0.1"]"#.to_owned(),
        ),
        ("BROKER_HOOKUP__ALLOW_HTTP".to_owned(), "true".to_owned()),
        // Keys checked before the outage stay trusted through it (10 s by default).
        (
            "BROKER_SERVER__API_KEY_CACHE_TTL".to_owned(),
            "60s".to_owned(),
        ),
    ]);
    let daemon = Arc::new(Daemon::start(&db, config).await);
    let base = server.uri();
    let local = move |id: i64, client: &str| {
        let mut m = client_credentials(id, client, "s-secret");
        m["token_url"] = json!(format!("{base}/{id}/token/"));
        m["authorize_url"] = json!(format!("{base}/{id}/authorize/"));
        m
    };
    assert_eq!(daemon.hookup(&local(1, "pg")).await.0, 200);
    let key = daemon.api_key("token", &[]);
    assert_eq!(token(&daemon, &key, 1, None).await.0, 200);

    // Hookups keep coming throughout.
    let acknowledged = Arc::new(Mutex::new(Vec::<i64>::new()));
    let refused = Arc::new(AtomicI64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicI64::new(100));
    let mut senders = Vec::new();
    for _ in 0..4 {
        let (daemon, acknowledged, refused, stop, next, local) = (
            daemon.clone(),
            acknowledged.clone(),
            refused.clone(),
            stop.clone(),
            next.clone(),
            local.clone(),
        );
        senders.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let id = next.fetch_add(1, Ordering::SeqCst);
                let (status, _) = daemon.hookup(&local(id, &format!("c{id}"))).await;
                match status {
                    200 => acknowledged.lock().await.push(id),
                    503 => {
                        refused.fetch_add(1, Ordering::SeqCst);
                    }
                    other => panic!("hookup {id} answered {other}"),
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    pg.stop();
    until(
        "/readyz reporting the outage",
        Duration::from_secs(20),
        async || daemon.get("/readyz", None).await.0 == 503,
    )
    .await;
    // Tokens still cached in memory are served through the outage.
    assert_eq!(token(&daemon, &key, 1, None).await.0, 200);
    tokio::time::sleep(Duration::from_secs(1)).await;
    pg.start();
    until("/readyz recovering", Duration::from_secs(30), async || {
        daemon.get("/readyz", None).await.0 == 200
    })
    .await;
    let before = acknowledged.lock().await.len();
    until(
        "hookups succeeding again",
        Duration::from_secs(30),
        async || acknowledged.lock().await.len() > before + 20,
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    for s in senders {
        s.await.expect("sender");
    }
    assert!(
        refused.load(Ordering::SeqCst) > 0,
        "the outage should have refused some hookups"
    );
    let (status, _) = token(&daemon, &key, 1, Some(json!({"force_refresh": true}))).await;
    assert_eq!(
        status, 200,
        "token traffic that needs the database works again"
    );

    // Every acknowledged hookup is stored.
    let admin = daemon.api_key("admin", &[]);
    for id in acknowledged.lock().await.iter() {
        let (status, t) = daemon
            .get(&format!("/admin/tenants/{id}"), Some(&admin))
            .await;
        assert_eq!(
            status, 200,
            "tenant {id} was acknowledged but is missing: {t}"
        );
    }
}
