//! The test harness: a fresh database per test (a SQLite file, or a new PostgreSQL database
//! on 127.0.0.1:5432), the built `provet-broker` binary started on port 0, its logs captured.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use rand::Rng;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Statement};
use serde_json::{Value, json};

mod mock;
pub use mock::*;

pub const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs a scenario once per backend, as separate tests.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Postgres).await;
                }
            )*
        }
    };
}

/// The binary under test: `PROVET_BROKER_BIN`, else `target/<profile>/provet-broker` beside
/// this test executable (the test command builds it first).
pub fn binary() -> PathBuf {
    if let Ok(path) = std::env::var("PROVET_BROKER_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let bin = profile_dir.join("provet-broker");
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build -p provet-broker`, as scripts/test does)",
        bin.display()
    );
    bin
}

fn random_name(prefix: &str) -> String {
    let n: u64 = rand::rng().random();
    format!("{prefix}{n:016x}")
}

pub fn random_key() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A fresh, empty database and a folder for the daemon's files.
pub struct TestDb {
    pub dir: tempfile::TempDir,
    pub url: String,
    pg_name: Option<String>,
}

impl TestDb {
    pub async fn new(backend: Backend) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        match backend {
            Backend::Sqlite => Self {
                url: format!("sqlite://{}/broker.db?mode=rwc", dir.path().display()),
                dir,
                pg_name: None,
            },
            Backend::Postgres => {
                let name = random_name("broker_t_");
                let admin = Database::connect(PG_ADMIN_URL)
                    .await
                    .expect("PostgreSQL at 127.0.0.1:5432 (see scripts/test)");
                admin
                    .execute_unprepared(&format!("CREATE DATABASE {name}"))
                    .await
                    .expect("create test database");
                admin.close().await.ok();
                Self {
                    url: format!("postgres://postgres@127.0.0.1:5432/{name}"),
                    dir,
                    pg_name: Some(name),
                }
            }
        }
    }

    pub async fn connect(&self) -> DatabaseConnection {
        Database::connect(&self.url)
            .await
            .expect("connect to test database")
    }

    /// Runs a query and returns the first column of every row as JSON.
    pub async fn column(&self, sql: &str) -> Vec<Value> {
        let db = self.connect().await;
        let rows = db
            .query_all_raw(Statement::from_string(
                db.get_database_backend(),
                sql.to_owned(),
            ))
            .await
            .expect(sql);
        let values = rows
            .iter()
            .map(|row| {
                if let Ok(v) = row.try_get_by_index::<Option<String>>(0) {
                    v.map_or(Value::Null, Value::String)
                } else if let Ok(v) = row.try_get_by_index::<Option<i64>>(0) {
                    v.map_or(Value::Null, Value::from)
                } else if let Ok(v) = row.try_get_by_index::<Option<i32>>(0) {
                    v.map_or(Value::Null, Value::from)
                } else if let Ok(v) = row.try_get_by_index::<Option<bool>>(0) {
                    v.map_or(Value::Null, Value::from)
                } else {
                    Value::String("<unreadable>".into())
                }
            })
            .collect();
        db.close().await.ok();
        values
    }

    pub async fn count(&self, sql: &str) -> i64 {
        self.column(sql)
            .await
            .first()
            .and_then(Value::as_i64)
            .expect(sql)
    }

    /// Every byte the database keeps for this test: the SQLite files (with WAL), or for
    /// PostgreSQL a dump plus the database's data files after a checkpoint.
    pub async fn raw_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        match &self.pg_name {
            None => {
                for entry in std::fs::read_dir(self.dir.path()).expect("read dir") {
                    let path = entry.expect("entry").path();
                    if path
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("broker.db"))
                    {
                        bytes.extend(std::fs::read(&path).expect("read db file"));
                    }
                }
            }
            Some(name) => {
                let dump = Command::new("pg_dump")
                    .args(["-h", "127.0.0.1", "-U", "postgres", name])
                    .output()
                    .expect("pg_dump");
                assert!(dump.status.success(), "pg_dump failed");
                bytes.extend(dump.stdout);
                let admin = Database::connect(PG_ADMIN_URL).await.expect("admin");
                admin
                    .execute_unprepared("CHECKPOINT")
                    .await
                    .expect("checkpoint");
                let dir = admin
                    .query_one_raw(Statement::from_string(
                        admin.get_database_backend(),
                        format!(
                            "SELECT current_setting('data_directory') || '/base/' || oid::text FROM pg_database WHERE datname = '{name}'"
                        ),
                    ))
                    .await
                    .expect("data dir")
                    .and_then(|r| r.try_get_by_index::<String>(0).ok())
                    .expect("database oid");
                admin.close().await.ok();
                for entry in std::fs::read_dir(&dir).expect("read pg data dir") {
                    let path = entry.expect("entry").path();
                    if path.is_file() {
                        bytes.extend(std::fs::read(&path).unwrap_or_default());
                    }
                }
            }
        }
        bytes
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(name) = &self.pg_name {
            let _ = Command::new("psql")
                .args([
                    "-h",
                    "127.0.0.1",
                    "-U",
                    "postgres",
                    "-d",
                    "test",
                    "-q",
                    "-c",
                ])
                .arg(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Settings a test daemon runs with; each test may change any of them before `start`.
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    pub master_key: String,
    pub previous_keys: Vec<String>,
    /// `None`: let the daemon generate and store one.
    pub hookup_secret: Option<String>,
    pub extra_env: Vec<(String, String)>,
}

impl DaemonConfig {
    pub fn new() -> Self {
        Self {
            master_key: random_key(),
            previous_keys: Vec::new(),
            hookup_secret: Some(random_name("hookup-")),
            extra_env: Vec::new(),
        }
    }

    /// The environment the daemon (and its CLI commands) run with.
    pub fn env(&self, db: &TestDb) -> Vec<(String, String)> {
        let mut env = vec![
            ("BROKER_SERVER__BIND".into(), "127.0.0.1:0".into()),
            (
                "BROKER_SERVER__PUBLIC_URL".into(),
                "http://broker.test".into(),
            ),
            ("BROKER_SERVER__WORKERS".into(), "2".into()),
            ("BROKER_SERVER__SHUTDOWN_TIMEOUT".into(), "5s".into()),
            ("BROKER_DATABASE__URL".into(), db.url.clone()),
            ("BROKER_DATABASE__MAX_CONNECTIONS".into(), "4".into()),
            ("BROKER_SECRETS__MASTER_KEY".into(), self.master_key.clone()),
            (
                "BROKER_SECRETS__PREVIOUS_KEYS".into(),
                serde_json::to_string(&self.previous_keys).expect("json"),
            ),
            ("BROKER_LOG__FORMAT".into(), "json".into()),
            // Messages name provetcloud.com hosts, which tests must never call: discovery
            // tests turn the worker on against a provider on 127.0.0.1.
            ("BROKER_DISCOVERY__ENABLED".into(), "false".into()),
            ("BROKER_TOKENS__VERIFY_ON_HOOKUP".into(), "false".into()),
            ("BROKER_SERVER__API_KEY_CACHE_TTL".into(), "1s".into()),
            (
                "BROKER_LOG__LEVEL".into(),
                "info,broker_api=debug,broker_service=debug,broker_store=debug,provet_broker=debug"
                    .into(),
            ),
        ];
        if let Some(secret) = &self.hookup_secret {
            env.push(("BROKER_HOOKUP__SECRET".into(), secret.clone()));
        }
        env.extend(self.extra_env.iter().cloned());
        env
    }
}

/// A running daemon.
pub struct Daemon {
    child: Child,
    pub base: String,
    /// Where the internal routes are served: `server.internal_bind`'s address when a test
    /// sets `BROKER_SERVER__INTERNAL_BIND`, else `base`.
    pub internal_base: String,
    pub hookup_url: String,
    pub logs: Arc<Mutex<Vec<String>>>,
    pub config: DaemonConfig,
    pub http: reqwest::Client,
    env: Vec<(String, String)>,
    cwd: PathBuf,
}

impl Daemon {
    pub async fn start(db: &TestDb, config: DaemonConfig) -> Self {
        let env = config.env(db);
        let cwd = db.dir.path().to_path_buf();
        let mut child = Command::new(binary())
            .arg("serve")
            .envs(env.iter().cloned())
            .env_remove("RUST_LOG")
            .env_remove("BROKER_SCREENSHOTS")
            .current_dir(&cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn provet-broker");
        let stderr = child.stderr.take().expect("stderr");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel::<(Option<String>, String)>();
        {
            let logs = logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    // JSON (the tests' default) or text (`log.format = "text"`).
                    let (message, bound, surface) = match serde_json::from_str::<Value>(&line) {
                        Ok(v) => {
                            let f = &v["fields"];
                            let s = |k: &str| f[k].as_str().map(str::to_owned);
                            (s("message"), s("address"), s("surface"))
                        }
                        Err(_) => {
                            let s = |k: &str| text_field(&line, k).map(str::to_owned);
                            let listening = line.contains(": listening ");
                            (
                                listening.then(|| "listening".to_owned()),
                                s("address"),
                                s("surface"),
                            )
                        }
                    };
                    if message.as_deref() == Some("listening")
                        && let Some(bound) = bound
                    {
                        let _ = tx.send((surface, bound));
                    }
                    logs.lock().expect("logs").push(line);
                }
            });
        }
        let started = Instant::now();
        // With `server.internal_bind` set, wait for both listeners.
        let wants_internal = env
            .iter()
            .any(|(k, v)| k == "BROKER_SERVER__INTERNAL_BIND" && !v.is_empty());
        let (mut public, mut internal): (Option<String>, Option<String>) = (None, None);
        let (address, internal) = loop {
            if let Some(address) = &public
                && (internal.is_some() || !wants_internal)
            {
                break (address.clone(), internal.clone());
            }
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok((surface, bound)) => {
                    if surface.as_deref() == Some("internal") {
                        internal = Some(bound);
                    } else {
                        public = Some(bound);
                    }
                }
                Err(_) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        panic!(
                            "provet-broker exited with {status} before listening:\n{}",
                            logs.lock().expect("logs").join("\n")
                        );
                    }
                    assert!(
                        started.elapsed() < Duration::from_secs(30),
                        "provet-broker did not start in 30 s:\n{}",
                        logs.lock().expect("logs").join("\n")
                    );
                }
            }
        };
        let base = format!("http://{address}");
        // The URL is logged only when generated: a configured secret is known, a stored one
        // is what `hookup-url` prints. Either uses public_url; tests talk to the bound address.
        let hookup_url = match &config.hookup_secret {
            Some(secret) => format!("{base}/hookup/{secret}"),
            None => {
                let (ok, stdout, stderr) = run_cli(&env, &cwd, &["hookup-url"]);
                assert!(ok, "hookup-url failed: {stderr}");
                stdout.trim().replacen("http://broker.test", &base, 1)
            }
        };
        let internal_base = internal.map_or_else(|| base.clone(), |a| format!("http://{a}"));
        Self {
            child,
            base,
            internal_base,
            hookup_url,
            logs,
            config,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client"),
            env,
            cwd,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn log_text(&self) -> String {
        self.logs.lock().expect("logs").join("\n")
    }

    /// POSTs a hookup body (JSON value) to the real hookup URL.
    pub async fn hookup(&self, body: &Value) -> (u16, Value) {
        self.post_raw(
            &self.hookup_url,
            body.to_string().into_bytes(),
            "application/json",
        )
        .await
    }

    pub async fn post_raw(&self, url: &str, body: Vec<u8>, content_type: &str) -> (u16, Value) {
        let response = self
            .http
            .post(url)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("request");
        read(response).await
    }

    pub async fn get(&self, path: &str, key: Option<&str>) -> (u16, Value) {
        let mut request = self.http.get(self.url(path));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        read(request.send().await.expect("request")).await
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self.http.request(method, self.url(path));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        read(request.send().await.expect("request")).await
    }

    /// `POST /v1/tenants/{id}/authorizations`: starts connecting a clinic user (`body` the
    /// optional scope or return_to).
    pub async fn start_authorization(
        &self,
        key: &str,
        id: i64,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.send(
            reqwest::Method::POST,
            &format!("/v1/tenants/{id}/authorizations"),
            Some(key),
            body,
        )
        .await
    }

    /// Runs a CLI command against the same configuration; returns (success, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        run_cli(&self.env, &self.cwd, args)
    }

    /// Creates an API key through the CLI.
    pub fn api_key(&self, role: &str, tenants: &[i64]) -> String {
        let mut args = vec![
            "api-key".to_owned(),
            "create".into(),
            "--name".into(),
            random_name("key-"),
            "--role".into(),
            role.into(),
        ];
        for t in tenants {
            args.push("--tenant".into());
            args.push(t.to_string());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, stdout, stderr) = self.cli(&args);
        assert!(ok, "api-key create failed: {stderr}");
        stdout.lines().last().expect("key line").trim().to_owned()
    }

    /// SIGTERM, then waits for the exit.
    pub fn stop(self) -> (ExitStatus, String) {
        self.stop_with("TERM")
    }

    /// Sends `signal` (`TERM`, `INT`), then waits for the exit.
    pub fn stop_with(mut self, signal: &str) -> (ExitStatus, String) {
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status();
        let status = wait(&mut self.child, Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(50));
        let logs = self.log_text();
        (status, logs)
    }
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.log_text()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of `key=value` in a text log line (values without spaces; quotes removed).
pub fn text_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
        .map(|value| value.trim_matches('"'))
}

fn wait(child: &mut Child, limit: Duration) -> ExitStatus {
    let started = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("provet-broker did not stop within {limit:?} of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn run_cli(env: &[(String, String)], cwd: &Path, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(binary())
        .args(args)
        .envs(env.iter().cloned())
        .env_remove("RUST_LOG")
        .env_remove("BROKER_SCREENSHOTS")
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .expect("run provet-broker");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

async fn read(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

/// A valid client_credentials hookup for `provet_id`, hosts on the default allowlist.
pub fn client_credentials(provet_id: i64, client_id: &str, secret: &str) -> Value {
    json!({
        "provet_id": provet_id,
        "client_id": client_id,
        "client_secret": secret,
        "algorithm": null,
        "authorization_grant_type": "client_credentials",
        "client_type": "confidential",
        "redirect_uris": "",
        "token_url": format!("https://us.provetcloud.com/{provet_id}/oauth2/token/"),
        "authorize_url": format!("https://us.provetcloud.com/{provet_id}/oauth2/authorize/"),
        "openid_autodiscovery_url": null,
    })
}

/// A valid authorization-code hookup (django-oauth-toolkit's spelling) with OpenID Connect.
pub fn authorization_code(provet_id: i64, client_id: &str, secret: &str) -> Value {
    json!({
        "provet_id": provet_id,
        "client_id": client_id,
        "client_secret": secret,
        "algorithm": "RS256",
        "authorization_grant_type": "authorization-code",
        "client_type": "confidential",
        "redirect_uris": "http://broker.test/oauth/callback https://other.example/cb",
        "token_url": format!("https://enterprise.provetcloud.com/{provet_id}/oauth2/token/"),
        "authorize_url": format!("https://enterprise.provetcloud.com/{provet_id}/oauth2/authorize/"),
        "openid_autodiscovery_url": format!("https://enterprise.provetcloud.com/{provet_id}/oauth2/.well-known/openid-configuration"),
        "departments": [1, 2],
    })
}

/// A secret that is easy to find in bytes and logs, and unique to one test.
pub fn distinctive_secret() -> String {
    random_name("SECRET-canary-")
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// One query parameter of a URL held in a JSON string (an `authorize_url`, say).
pub fn query_param(url: &Value, name: &str) -> String {
    url::Url::parse(url.as_str().expect("a URL string"))
        .expect("a URL")
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| panic!("no `{name}` in {url}"))
}

impl Daemon {
    /// One sample of `/metrics`, by its series (`name{labels}`); panics when it is absent.
    pub async fn metric_value(&self, series: &str) -> f64 {
        let text = self.metrics().await;
        *metric_samples(&text)
            .get(series)
            .unwrap_or_else(|| panic!("no series {series} in /metrics:\n{text}"))
    }

    /// The `/metrics` page as text.
    pub async fn metrics(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// Runs a CLI command with `input` on its stdin; returns (success, stdout, stderr).
    pub fn cli_with_stdin(&self, args: &[&str], input: &[u8]) -> (bool, String, String) {
        use std::io::Write;
        let mut child = Command::new(binary())
            .args(args)
            .envs(self.env.iter().cloned())
            .env_remove("RUST_LOG")
            .env_remove("BROKER_SCREENSHOTS")
            .current_dir(&self.cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run provet-broker");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input)
            .expect("write stdin");
        let output = child.wait_with_output().expect("wait");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }
}

/// Every sample of a `/metrics` page: `name{labels}` -> value.
pub fn metric_samples(text: &str) -> std::collections::BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}
