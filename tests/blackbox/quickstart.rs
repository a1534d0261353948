//! The README's quickstart, run as written so that it cannot rot: its `bash` blocks between
//! `<!-- quickstart:begin -->` and `<!-- quickstart:end -->`, in order, in one bash (the built
//! binary and `scripts/` on PATH, free ports in `PORT` and `PROVIDER_PORT`, a scratch folder),
//! with the browser step at `<!-- quickstart:browser -->` played over HTTP. Every process the
//! steps start stays in the shell's process group, which is killed at the end, whatever the
//! outcome.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::binary;

const BEGIN: &str = "<!-- quickstart:begin -->";
const END: &str = "<!-- quickstart:end -->";
const BROWSER: &str = "<!-- quickstart:browser -->";
/// The longest a step may take: the first `dev-provider` may install the provider from PyPI.
const STEP_LIMIT: Duration = Duration::from_secs(300);

#[derive(Debug, PartialEq)]
enum Step {
    Bash(String),
    Browser,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The quickstart's steps: each fenced `bash` block, and the browser marker where it stands.
fn steps(readme: &str) -> Vec<Step> {
    let begin = readme
        .find(BEGIN)
        .expect("the README's quickstart:begin marker");
    let end = readme
        .find(END)
        .expect("the README's quickstart:end marker");
    assert!(
        begin < end,
        "quickstart:begin must come before quickstart:end"
    );
    let mut steps = Vec::new();
    let mut block: Option<String> = None;
    for line in readme[begin..end].lines() {
        match block.as_mut() {
            Some(_) if line.trim_end() == "```" => {
                steps.push(Step::Bash(block.take().expect("block")))
            }
            Some(text) => {
                text.push_str(line);
                text.push('\n');
            }
            None if line.trim_end() == "```bash" => block = Some(String::new()),
            None if line.trim() == BROWSER => steps.push(Step::Browser),
            None => {}
        }
    }
    assert!(
        block.is_none(),
        "an unclosed ```bash block in the quickstart"
    );
    steps
}

/// The shell the steps run in, killed with its whole process group when dropped.
struct Shell {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Shell {
    /// Lines until `marker` (not included).
    fn until(&mut self, marker: &str) -> String {
        let started = Instant::now();
        let mut out = Vec::new();
        loop {
            match self.lines.recv_timeout(Duration::from_millis(200)) {
                Ok(line) if line == marker => break,
                Ok(line) => {
                    self.seen.push(line.clone());
                    out.push(line);
                }
                Err(RecvTimeoutError::Timeout) => {
                    if let Ok(Some(status)) = self.child.try_wait() {
                        // Lines still in the pipe tell why.
                        std::thread::sleep(Duration::from_millis(200));
                        self.seen.extend(self.lines.try_iter());
                        panic!(
                            "the quickstart stopped ({status}) before `{marker}`:\n{}",
                            self.seen.join("\n")
                        );
                    }
                    assert!(
                        started.elapsed() < STEP_LIMIT,
                        "no `{marker}` within {STEP_LIMIT:?}:\n{}",
                        self.seen.join("\n")
                    );
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!(
                        "the quickstart's output ended before `{marker}`:\n{}",
                        self.seen.join("\n")
                    )
                }
            }
        }
        out.join("\n")
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        for signal in ["-TERM", "-KILL"] {
            let _ = Command::new("kill")
                .args([signal, "--", &group])
                .stderr(Stdio::null())
                .status();
            std::thread::sleep(Duration::from_millis(300));
        }
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Every line of a step's output that is a JSON object.
fn json_lines(out: &str) -> Vec<Value> {
    out.lines()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The one JSON line of `out` that has `field`.
fn answer_with(out: &str, field: &str) -> Value {
    let found: Vec<Value> = json_lines(out)
        .into_iter()
        .filter(|v| v.get(field).is_some())
        .collect();
    assert_eq!(found.len(), 1, "one answer with `{field}` in:\n{out}");
    found.into_iter().next().expect("one")
}

/// The HTTP answer whose JSON has `field` equal to `value`.
fn answer_where(out: &str, field: &str, value: &Value) -> Value {
    json_lines(out)
        .into_iter()
        .find(|v| v.get(field) == Some(value))
        .unwrap_or_else(|| panic!("no answer with {field} = {value} in:\n{out}"))
}

fn location(response: &reqwest::Response, from: &url::Url) -> url::Url {
    let to = response.headers()["location"].to_str().expect("location");
    from.join(to).expect("a location URL")
}

/// The clinic user's browser: follows the authorize URL, logs in at the provider's form and
/// answers where the provider sends the browser (the daemon's callback with code and state).
async fn log_in(authorize_url: &str, username: &str, password: &str) -> url::Url {
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("browser");
    let mut cookies = HashMap::new();
    let mut take = |response: &reqwest::Response| {
        for value in response.headers().get_all("set-cookie") {
            if let Some((name, value)) = value
                .to_str()
                .unwrap_or_default()
                .split(';')
                .next()
                .and_then(|pair| pair.split_once('='))
            {
                cookies.insert(name.trim().to_owned(), value.trim().to_owned());
            }
        }
        cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    };
    let start = url::Url::parse(authorize_url).expect("authorize_url");
    let response = browser.get(start.clone()).send().await.expect("authorize");
    assert_eq!(
        response.status(),
        302,
        "the provider should ask for a login"
    );
    let login = location(&response, &start);
    let response = browser.get(login.clone()).send().await.expect("login form");
    let jar = take(&response);
    let html = response.text().await.expect("login form");
    let csrf = html
        .split("name=\"csrfmiddlewaretoken\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a CSRF token in the login form")
        .to_owned();
    let next = login
        .query_pairs()
        .find(|(k, _)| k == "next")
        .map(|(_, v)| v.into_owned())
        .expect("next");
    let response = browser
        .post(login.join("/accounts/login/").expect("login URL"))
        .header("cookie", jar)
        .form(&[
            ("csrfmiddlewaretoken", csrf.as_str()),
            ("username", username),
            ("password", password),
            ("next", next.as_str()),
        ])
        .send()
        .await
        .expect("log in");
    assert_eq!(
        response.status(),
        302,
        "the printed demo user should log in"
    );
    let jar = take(&response);
    let approve = location(&response, &login);
    let response = browser
        .get(approve.clone())
        .header("cookie", jar)
        .send()
        .await
        .expect("authorize, logged in");
    assert_eq!(response.status(), 302);
    location(&response, &approve)
}

#[test]
fn readme_quickstart_steps_parse_in_order() {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let steps = steps(&readme);
    let kinds: Vec<&str> = steps
        .iter()
        .map(|s| match s {
            Step::Bash(_) => "bash",
            Step::Browser => "browser",
        })
        .collect();
    assert_eq!(
        kinds,
        ["bash", "bash", "bash", "bash", "browser", "bash", "bash"],
        "the quickstart test below checks each of these steps: update both together"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_quickstart_runs_as_written() {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let steps = steps(&readme);
    let scratch = tempfile::tempdir().expect("tempdir");
    let work = scratch.path().join("work");
    let tmp = scratch.path().join("tmp");
    std::fs::create_dir_all(&work).expect("work dir");
    std::fs::create_dir_all(&tmp).expect("tmp dir");
    let (port, provider_port) = (free_port(), free_port());

    let mut script = String::from("set -euo pipefail\nexec 2>&1\n");
    for (i, step) in steps.iter().enumerate() {
        match step {
            Step::Bash(text) => script.push_str(text),
            // The test plays the browser, then lets the shell go on.
            Step::Browser => script.push_str("read -r _\n"),
        }
        script.push_str(&format!("printf '\\n@@quickstart:{i}\\n'\n"));
    }

    let bin_dir = binary()
        .parent()
        .expect("the binary's folder")
        .to_path_buf();
    let path = format!(
        "{}:{}:{}",
        bin_dir.display(),
        root().join("scripts").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut command = Command::new("bash");
    command
        .args(["-c", &script])
        .current_dir(&work)
        .env("PATH", path)
        .env("PORT", port.to_string())
        .env("PROVIDER_PORT", provider_port.to_string())
        .env("TMPDIR", &tmp)
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0);
    for (name, _) in std::env::vars() {
        if name.starts_with("BROKER_") {
            command.env_remove(name);
        }
    }
    let mut child = command.spawn().expect("start bash");
    let stdin = child.stdin.take().expect("stdin");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, lines) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut shell = Shell {
        child,
        stdin,
        lines,
        seen: Vec::new(),
    };
    let broker = format!("http://127.0.0.1:{port}");
    let provider = format!("http://127.0.0.1:{provider_port}");

    // 0: the daemon runs and its hookup URL is known.
    let out = shell.until("@@quickstart:0");
    assert!(
        out.lines()
            .any(|l| l.starts_with(&format!("{broker}/hookup/"))),
        "the hookup URL:\n{out}"
    );

    // 1: the provider's client_credentials client is registered from its hookup message.
    let out = shell.until("@@quickstart:1");
    let message: Value =
        serde_json::from_slice(&std::fs::read(work.join("hookup.json")).expect("hookup.json"))
            .expect("the hookup message is JSON");
    assert_eq!(message["authorization_grant_type"], "client-credentials");
    assert_eq!(message["token_url"], format!("{provider}/1/oauth2/token/"));
    let receipt = answer_with(&out, "status");
    assert_eq!(receipt["status"], "registered", "{out}");
    assert_eq!(receipt["provet_id"], 1);
    assert_eq!(receipt["client_id"], message["client_id"]);

    // 2: a token from the daemon, accepted by the provider's protected resource.
    let out = shell.until("@@quickstart:2");
    let token = answer_with(&out, "access_token");
    assert_eq!(token["token_type"], "Bearer");
    assert_eq!(token["provet_id"], 1);
    assert!(
        token["access_token"]
            .as_str()
            .is_some_and(|t| !t.is_empty())
    );
    let me = answer_where(&out, "client_id", &message["client_id"]);
    assert_eq!(me["provet_id"], 1, "{out}");
    assert_eq!(me["user"], Value::Null);

    // 3: the authorization-code client is registered and a connect link made.
    let out = shell.until("@@quickstart:3");
    let clinic: Value = serde_json::from_slice(
        &std::fs::read(work.join("hookup-clinic.json")).expect("hookup-clinic.json"),
    )
    .expect("the hookup message is JSON");
    assert_eq!(clinic["authorization_grant_type"], "authorization-code");
    assert_eq!(clinic["redirect_uris"], format!("{broker}/oauth/callback"));
    let receipt = answer_where(&out, "client_id", &clinic["client_id"]);
    assert_eq!(receipt["status"], "registered", "{out}");
    assert_eq!(receipt["provet_id"], 2);
    let started = answer_with(&out, "authorize_url");
    let authorize_url = started["authorize_url"].as_str().expect("authorize_url");
    assert!(
        authorize_url.starts_with(&format!("{provider}/2/oauth2/authorize/?")),
        "{authorize_url}"
    );
    // The demo user as dev-provider printed it.
    let (username, password) = out
        .lines()
        .find_map(|l| {
            let rest = l.split("log in as user '").nth(1)?;
            let (user, rest) = rest.split_once("', password '")?;
            Some((user.to_owned(), rest.split_once('\'')?.0.to_owned()))
        })
        .unwrap_or_else(|| panic!("dev-provider names the demo user:\n{out}"));

    // 4: the browser: log in at the provider, follow its redirect to the daemon's callback.
    let callback = log_in(authorize_url, &username, &password).await;
    assert!(
        callback
            .as_str()
            .starts_with(&format!("{broker}/oauth/callback?")),
        "{callback}"
    );
    let page = reqwest::get(callback).await.expect("callback");
    assert_eq!(page.status(), 200);
    let page = page.text().await.expect("page");
    assert!(page.contains("connected"), "{page}");
    shell.stdin.write_all(b"\n").expect("go on");
    shell.stdin.flush().expect("go on");
    let _ = shell.until("@@quickstart:4");

    // 5: the grant is there and its token is the demo user's at the provider.
    let out = shell.until("@@quickstart:5");
    let view = answer_with(&out, "usable_grant");
    assert_eq!(view["usable_grant"], true, "{out}");
    assert_eq!(view["grant_type"], "authorization_code");
    let token = answer_with(&out, "access_token");
    assert_eq!(token["provet_id"], 2);
    let me = answer_where(&out, "client_id", &clinic["client_id"]);
    assert_eq!(me["provet_id"], 2, "{out}");
    assert_eq!(me["user"], username.as_str());

    // 6: both stopped.
    let out = shell.until("@@quickstart:6");
    assert!(out.contains("stopped the provider"), "{out}");
    let status = shell.child.wait().expect("bash");
    assert!(status.success(), "{status}:\n{}", shell.seen.join("\n"));
    for base in [&broker, &provider] {
        assert!(
            reqwest::get(format!("{base}/healthz")).await.is_err(),
            "{base} still answers after the stop step"
        );
    }
}
