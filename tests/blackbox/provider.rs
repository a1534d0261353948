//! The real django-oauth-toolkit provider (tests/provider), one per test binary, started on
//! first use on a free port of 127.0.0.1. It exits when this process does (its stdin closes).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};

use rand::Rng;
use serde_json::{Value, json};

pub struct Provider {
    pub base: String,
    _child: Mutex<Child>,
    _stdin: Mutex<ChildStdin>,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The shared provider.
pub fn provider() -> &'static Provider {
    static PROVIDER: OnceLock<Provider> = OnceLock::new();
    PROVIDER.get_or_init(|| {
        let root = root();
        let setup = Command::new(root.join("scripts/provider-setup"))
            .status()
            .expect("run scripts/provider-setup");
        assert!(setup.success(), "scripts/provider-setup failed");
        let mut child = Command::new(root.join("tests/.venv/bin/python"))
            .arg(root.join("tests/provider/serve.py"))
            .args(["--port", "0"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the test provider");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("READY line");
        let base = line
            .trim()
            .strip_prefix("READY ")
            .unwrap_or_else(|| panic!("the provider did not start: {line:?}"))
            .to_owned();
        Provider {
            base,
            _child: Mutex::new(child),
            _stdin: Mutex::new(stdin),
        }
    })
}

/// A provet_id no other test uses (tests share the provider).
pub fn unique_tenant() -> i64 {
    rand::rng().random_range(1_000_000..1_000_000_000)
}

impl Provider {
    fn client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .expect("client")
    }

    /// Creates an application at the provider; answers the hookup message Provet would send.
    pub async fn application(
        &self,
        provet_id: i64,
        grant_type: &str,
        client_type: &str,
        algorithm: Option<&str>,
    ) -> Value {
        let response = self
            .client()
            .post(format!("{}/_test/applications", self.base))
            .json(&json!({
                "provet_id": provet_id,
                "grant_type": grant_type,
                "client_type": client_type,
                "algorithm": algorithm,
                "redirect_uris": "http://broker.test/oauth/callback",
            }))
            .send()
            .await
            .expect("create application");
        assert_eq!(response.status(), 201);
        response.json().await.expect("hookup message")
    }

    /// How many requests the provider received for `path` since it started.
    pub async fn requests(&self, path: &str) -> u64 {
        let counts: Value = self
            .client()
            .get(format!("{}/_test/requests", self.base))
            .send()
            .await
            .expect("requests")
            .json()
            .await
            .expect("json");
        counts[path].as_u64().unwrap_or(0)
    }

    /// Every token-endpoint request the provider answered for the tenant.
    pub async fn token_requests(&self, provet_id: i64) -> Vec<Value> {
        let all: Value = self
            .client()
            .get(format!("{}/_test/token-requests", self.base))
            .send()
            .await
            .expect("token requests")
            .json()
            .await
            .expect("json");
        all.as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["provet_id"] == provet_id)
            .cloned()
            .collect()
    }

    pub async fn delete_application(&self, client_id: &str) {
        let response = self
            .client()
            .delete(format!("{}/_test/applications/{client_id}", self.base))
            .send()
            .await
            .expect("delete application");
        assert_eq!(response.status(), 204);
    }

    /// Calls the tenant's protected resource with a token: (status, body).
    pub async fn api_me(&self, provet_id: i64, token: &str) -> (u16, Value) {
        let response = self
            .client()
            .get(format!("{}/{provet_id}/api/me/", self.base))
            .bearer_auth(token)
            .send()
            .await
            .expect("api/me");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub fn discovery_path(provet_id: i64) -> String {
        format!("/{provet_id}/oauth2/.well-known/openid-configuration")
    }

    pub fn issuer(&self, provet_id: i64) -> String {
        format!("{}/{provet_id}/oauth2", self.base)
    }
}

/// Daemon settings that let it talk to the provider on 127.0.0.1 over http.
pub fn provider_env() -> Vec<(String, String)> {
    vec![
        (
            "BROKER_HOOKUP__ALLOWED_HOSTS".to_owned(),
            r#"["127.0.0.1"]"#.to_owned(),
        ),
        ("BROKER_HOOKUP__ALLOW_HTTP".to_owned(), "true".to_owned()),
        ("BROKER_DISCOVERY__ENABLED".to_owned(), "true".to_owned()),
        (
            "BROKER_TOKENS__VERIFY_ON_HOOKUP".to_owned(),
            "true".to_owned(),
        ),
    ]
}

impl Provider {
    /// Every token-endpoint request the provider answered, for every tenant (one read for
    /// tests that count over hundreds of tenants).
    pub async fn all_token_requests(&self) -> Vec<Value> {
        let all: Value = self
            .client()
            .get(format!("{}/_test/token-requests", self.base))
            .send()
            .await
            .expect("token requests")
            .json()
            .await
            .expect("json");
        all.as_array().cloned().unwrap_or_default()
    }
}
