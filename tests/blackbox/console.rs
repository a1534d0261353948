//! The operator console in a real headless Chromium (driven over WebDriver by fantoccini
//! through chromedriver on a free port), against the real provider; the cheap checks (CSRF,
//! cookie flags, sign-out, session storage) over plain HTTP on both backends.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use crate::backend_tests;
use crate::connect::{deliver, log_in_and_approve};
use crate::helpers::*;
use crate::provider::*;

/// Headless Chromium through its chromedriver; both end with the test.
struct Browser {
    client: Client,
    driver: Child,
}

impl Browser {
    async fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver (apt-get install chromium chromium-driver)");
        let url = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        while reqwest::get(format!("{url}/status")).await.is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "chromedriver did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                            "--disable-dev-shm-usage", "--window-size=1280,1000"]}),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&url)
            .await
            .expect("a WebDriver session");
        Self { client, driver }
    }

    async fn goto(&self, url: &str) {
        self.client.goto(url).await.expect("goto");
    }

    async fn text(&self, css: &str) -> String {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no `{css}`: {e}"))
            .text()
            .await
            .expect("text")
    }

    /// An input's current value; the page's text in the panic when it is missing.
    async fn value(&self, css: &str) -> String {
        match self.client.find(Locator::Css(css)).await {
            Ok(e) => e.prop("value").await.expect("value").unwrap_or_default(),
            Err(e) => panic!(
                "no `{css}` ({e}) on {}:\n{}",
                self.path().await,
                self.text("body").await
            ),
        }
    }

    async fn has(&self, css: &str) -> bool {
        !self
            .client
            .find_all(Locator::Css(css))
            .await
            .expect("find")
            .is_empty()
    }

    /// Clicks a link or a form's button and waits for the page it loads (every click here
    /// loads one): WebDriver's click may return before a form's answer has arrived, and on
    /// a busy machine the next check would then read the old page.
    async fn click(&self, css: &str) {
        self.client
            .execute("window.__before_click = true;", vec![])
            .await
            .expect("mark the page");
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no `{css}`: {e}"))
            .click()
            .await
            .expect("click");
        let started = Instant::now();
        loop {
            let loaded = self
                .client
                .execute(
                    "return window.__before_click !== true && document.readyState === 'complete';",
                    vec![],
                )
                .await;
            // While the next page loads the script may fail: that is "not yet".
            if matches!(loaded, Ok(Value::Bool(true))) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "no new page after clicking `{css}`"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn fill(&self, css: &str, value: &str) {
        let field = self
            .client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no `{css}`: {e}"));
        field.clear().await.expect("clear");
        field.send_keys(value).await.expect("type");
    }

    /// Sets a (large) field's value at once: typing 1 KiB key by key is slow.
    async fn set_value(&self, css: &str, value: &str) {
        self.client
            .execute(
                "document.querySelector(arguments[0]).value = arguments[1];",
                vec![json!(css), json!(value)],
            )
            .await
            .expect("set value");
    }

    async fn path(&self) -> String {
        let url = self.client.current_url().await.expect("url");
        match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        }
    }

    async fn sign_in(&self, daemon: &Daemon, key: &str) {
        self.goto(&daemon.url("/console")).await;
        assert_eq!(self.path().await, "/console/sign-in");
        self.fill("#key", key).await;
        self.click("form.stack button[type=submit]").await;
    }

    /// With `BROKER_SCREENSHOTS=1`, writes the page as `docs/console/<name>.png`.
    async fn screenshot(&self, name: &str) {
        if std::env::var("BROKER_SCREENSHOTS").as_deref() != Ok("1") {
            return;
        }
        let png = self.client.screenshot().await.expect("screenshot");
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/console");
        std::fs::create_dir_all(&dir).expect("docs/console");
        std::fs::write(dir.join(format!("{name}.png")), png).expect("write screenshot");
    }

    async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

async fn start(db: &TestDb) -> Daemon {
    let mut config = DaemonConfig::new();
    config.extra_env.extend(provider_env());
    Daemon::start(db, config).await
}

async fn tenant_json(daemon: &Daemon, admin: &str, id: i64) -> Value {
    let (status, body) = daemon
        .get(&format!("/admin/tenants/{id}"), Some(admin))
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn wait_until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..200 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} did not happen");
}

async fn verify(daemon: &Daemon, admin: &str, id: i64) -> Value {
    daemon
        .send(
            reqwest::Method::POST,
            &format!("/admin/tenants/{id}/verify"),
            Some(admin),
            None,
        )
        .await
        .1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_refuses_wrong_and_token_keys_and_admits_an_admin_key() {
    let db = TestDb::new(Backend::Sqlite).await;
    let daemon = start(&db).await;
    let admin = daemon.api_key("admin", &[]);
    let token = daemon.api_key("token", &[]);
    let browser = Browser::start().await;

    browser.sign_in(&daemon, "pbk_not-a-real-key").await;
    assert_eq!(browser.path().await, "/console/sign-in");
    assert!(
        browser
            .text("#sign-in-error")
            .await
            .contains("unknown or revoked")
    );

    browser.sign_in(&daemon, &token).await;
    assert_eq!(browser.path().await, "/console/sign-in");
    assert!(browser.text("#sign-in-error").await.contains("token key"));

    browser.sign_in(&daemon, &admin).await;
    assert_eq!(browser.path().await, "/console");
    assert_eq!(browser.text("h1").await, "Overview");
    assert!(browser.text("form.signout").await.contains("Signed in as"));

    // Sign-out from the page: the browser is back at the sign-in form and /console sends it there.
    browser.click("form.signout button").await;
    assert_eq!(browser.path().await, "/console/sign-in");
    browser.goto(&daemon.url("/console/tenants")).await;
    assert_eq!(browser.path().await, "/console/sign-in");
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_lists_rejected_credentials_and_failed_discovery_but_not_a_healthy_tenant() {
    let p = provider();
    let db = TestDb::new(Backend::Sqlite).await;
    let daemon = start(&db).await;
    let admin = daemon.api_key("admin", &[]);

    // Rejected: the provider forgot the application after the hookup.
    let rejected = unique_tenant();
    let message = p
        .application(rejected, "client_credentials", "confidential", None)
        .await;
    assert_eq!(daemon.hookup(&message).await.0, 200);
    p.delete_application(message["client_id"].as_str().unwrap())
        .await;
    wait_until("credentials rejected", async || {
        verify(&daemon, &admin, rejected).await["state"] == "rejected"
    })
    .await;

    // Failed discovery: the discovery URL answers 404.
    let failed = unique_tenant();
    let mut message = p
        .application(failed, "authorization_code", "confidential", Some("RS256"))
        .await;
    message["openid_autodiscovery_url"] = json!(format!(
        "{}/{failed}/oauth2/missing/.well-known/openid-configuration",
        p.base
    ));
    assert_eq!(daemon.hookup(&message).await.0, 200);
    assert_eq!(
        wait_for_discovery(&daemon, &admin, failed, "failed").await,
        "failed"
    );

    // Healthy.
    let healthy = unique_tenant();
    let message = p
        .application(healthy, "client_credentials", "confidential", None)
        .await;
    assert_eq!(daemon.hookup(&message).await.0, 200);
    wait_until("credentials ok", async || {
        verify(&daemon, &admin, healthy).await["state"] == "ok"
    })
    .await;

    let browser = Browser::start().await;
    browser.sign_in(&daemon, &admin).await;
    let credentials = browser.text("#attention-credentials").await;
    let discovery = browser.text("#attention-discovery").await;
    assert!(
        credentials.contains(&format!("Tenant {rejected}")),
        "{credentials}"
    );
    assert!(
        credentials.starts_with("Credentials rejected\n1"),
        "{credentials}"
    );
    assert!(
        discovery.contains(&format!("Tenant {failed}")),
        "{discovery}"
    );
    assert!(!credentials.contains(&failed.to_string()));
    assert!(!discovery.contains(&rejected.to_string()));
    let attention = browser.text("div.grid").await;
    assert!(!attention.contains(&healthy.to_string()), "{attention}");
    let fleet = browser.text("#fleet").await;
    assert!(fleet.contains("3 tenants"), "{fleet}");
    assert!(fleet.contains("client_credentials") && fleet.contains("authorization_code"));
    browser.screenshot("overview").await;

    // The link leads to the tenant's page.
    browser
        .click(&format!(
            "#attention-credentials a[href='/console/tenants/{rejected}']"
        ))
        .await;
    assert_eq!(browser.path().await, format!("/console/tenants/{rejected}"));
    assert!(browser.text("#credentials").await.contains("rejected"));
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_actions_change_what_the_admin_api_and_the_provider_see() {
    let p = provider();
    let db = TestDb::new(Backend::Sqlite).await;
    let daemon = start(&db).await;
    let admin = daemon.api_key("admin", &[]);
    let id = unique_tenant();
    let message = p
        .application(id, "authorization_code", "confidential", Some("RS256"))
        .await;
    assert_eq!(daemon.hookup(&message).await.0, 200);
    assert_eq!(wait_for_discovery(&daemon, &admin, id, "ok").await, "ok");
    let secret = message["client_secret"].as_str().unwrap().to_owned();

    let browser = Browser::start().await;
    browser.sign_in(&daemon, &admin).await;
    browser
        .goto(&daemon.url(&format!("/console/tenants/{id}")))
        .await;
    let source = browser.client.source().await.unwrap();
    assert!(
        !source.contains(&secret),
        "the page shows the client secret"
    );
    assert!(
        browser
            .text("#client")
            .await
            .contains(message["client_id"].as_str().unwrap())
    );
    assert!(browser.text("#discovery").await.contains(&p.issuer(id)));

    // Re-run discovery: one more request at the provider.
    let before = p.requests(&Provider::discovery_path(id)).await;
    browser.click("#rerun-discovery").await;
    assert_eq!(
        browser.path().await,
        format!("/console/tenants/{id}?notice=discovery")
    );
    assert_eq!(p.requests(&Provider::discovery_path(id)).await, before + 1);

    // Connect link: a clinic user follows it, and the grant shows up.
    browser.click("#make-connect-link").await;
    let link = browser.value("#connect-url").await;
    assert!(
        link.starts_with(&format!("{}/{id}/oauth2/authorize", p.base)),
        "{link}"
    );
    let redirect = log_in_and_approve(&link).await;
    assert_eq!(deliver(&daemon, &redirect).await.0, 200);
    let grants = tenant_json(&daemon, &admin, id).await["grants"].clone();
    assert_eq!(grants[0]["state"], "active", "{grants}");

    // Verify: the provider sees a token request.
    let seen = p.token_requests(id).await.len();
    browser
        .goto(&daemon.url(&format!("/console/tenants/{id}")))
        .await;
    browser.click("#verify").await;
    assert_eq!(
        browser.path().await,
        format!("/console/tenants/{id}?notice=verified")
    );
    assert!(p.token_requests(id).await.len() > seen);
    browser.screenshot("tenant").await;

    // Revoke the grant.
    assert!(browser.text("#grants").await.contains("active"));
    browser.click("#grants button.danger").await;
    assert_eq!(
        browser.path().await,
        format!("/console/tenants/{id}?notice=grant-revoked")
    );
    assert_eq!(
        tenant_json(&daemon, &admin, id).await["grants"][0]["state"],
        "revoked"
    );

    // Remove: a wrong provet_id removes nothing; the right one does.
    browser.fill("#remove input[name=confirm]", "12345").await;
    browser.click("#remove-tenant").await;
    assert!(
        browser
            .text("#remove")
            .await
            .contains("Nothing was removed")
    );
    assert_eq!(tenant_json(&daemon, &admin, id).await["status"], "active");
    browser
        .fill("#remove input[name=confirm]", &id.to_string())
        .await;
    browser.click("#remove-tenant").await;
    assert_eq!(
        browser.path().await,
        format!("/console/tenants/{id}?notice=removed")
    );
    assert_eq!(tenant_json(&daemon, &admin, id).await["status"], "removed");

    // Every action is in the audit log, by the console and the signed-in key.
    let (status, log) = daemon.get("/admin/audit?limit=100", Some(&admin)).await;
    assert_eq!(status, 200, "{log}");
    let entries = log["entries"].as_array().cloned().unwrap_or_default();
    for (action, outcome) in [
        ("tenant.discovery", "ok"),
        ("tenant.connect_link", "ok"),
        ("tenant.verify", "ok"),
        ("grant.revoke", "ok"),
        ("tenant.remove", "refused"),
        ("tenant.remove", "ok"),
        ("console.sign_in", "ok"),
    ] {
        assert!(
            entries.iter().any(|e| e["action"] == action
                && e["outcome"] == outcome
                && e["actor"]["kind"] == "console"),
            "no console {action} {outcome} in {log}"
        );
    }
    browser.goto(&daemon.url("/console/audit")).await;
    assert!(browser.text("#audit").await.contains("tenant.remove"));
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_shows_every_field_error_and_stores_a_good_message() {
    let db = TestDb::new(Backend::Sqlite).await;
    let daemon = Daemon::start(&db, DaemonConfig::new()).await;
    let admin = daemon.api_key("admin", &[]);
    let browser = Browser::start().await;
    browser.sign_in(&daemon, &admin).await;
    browser.click("nav a[href='/console/register']").await;

    let mut bad = client_credentials(77, "", "s");
    bad["token_url"] = json!("ftp://example.com/token");
    browser.set_value("#message", &bad.to_string()).await;
    browser.click("#register").await;
    let errors = browser.text("#field-errors").await;
    assert!(errors.contains("client_id"), "{errors}");
    assert!(errors.contains("token_url"), "{errors}");
    assert_eq!(daemon.get("/admin/tenants/77", Some(&admin)).await.0, 404);
    // The message is kept in the form to correct.
    let kept = browser.value("#message").await;
    assert!(kept.contains("ftp://example.com/token"));

    let good = client_credentials(77, "client-77", &distinctive_secret());
    browser.set_value("#message", &good.to_string()).await;
    browser.click("#register").await;
    assert_eq!(
        browser.path().await,
        "/console/tenants/77?notice=registered"
    );
    assert_eq!(
        tenant_json(&daemon, &admin, 77).await["client"]["client_id"],
        "client-77"
    );
    let (_, events) = daemon.get("/admin/tenants/77/events", Some(&admin)).await;
    assert_eq!(events["events"][0]["source"], "admin", "{events}");
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_and_webhooks_are_created_once_shown_and_revoked() {
    let db = TestDb::new(Backend::Sqlite).await;
    let daemon = Daemon::start(&db, DaemonConfig::new()).await;
    let admin = daemon.api_key("admin", &[]);
    let browser = Browser::start().await;
    browser.sign_in(&daemon, &admin).await;

    browser.goto(&daemon.url("/console/api-keys")).await;
    browser.fill("input[name=name]", "billing").await;
    browser.click("#create-key").await;
    let key = browser.value("#new-key").await;
    assert_eq!(daemon.get("/v1/tenants", Some(&key)).await.0, 200);
    browser.goto(&daemon.url("/console/api-keys")).await;
    assert!(!browser.has("#new-key").await, "the key is shown once");
    let (_, keys) = daemon.get("/admin/api-keys", Some(&admin)).await;
    let id = keys["api_keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "billing")
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    browser
        .click(&format!(
            "form[action='/console/api-keys/{id}/revoke'] button"
        ))
        .await;
    assert_eq!(browser.path().await, "/console/api-keys?notice=revoked");
    tokio::time::sleep(Duration::from_millis(1100)).await; // the key cache's TTL in tests
    assert_eq!(daemon.get("/v1/tenants", Some(&key)).await.0, 401);

    browser.goto(&daemon.url("/console/webhooks")).await;
    browser
        .fill("input[name=url]", "http://169.254.169.254/hook")
        .await;
    browser.click("#create-webhook").await;
    assert!(browser.text("ul.field-errors").await.contains("url"));
    browser
        .fill("input[name=url]", "http://127.0.0.1:9/hook")
        .await;
    browser
        .fill("input[name=events]", "tenant.registered")
        .await;
    browser.click("#create-webhook").await;
    let secret = browser.value("#new-secret").await;
    assert!(secret.starts_with("whsec_"), "{secret}");
    let (_, hooks) = daemon.get("/admin/webhooks", Some(&admin)).await;
    assert_eq!(
        hooks["webhooks"][0]["url"], "http://127.0.0.1:9/hook",
        "{hooks}"
    );
    assert!(!hooks.to_string().contains(&secret));
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_load_nothing_from_elsewhere_under_a_strict_policy() {
    let db = TestDb::new(Backend::Sqlite).await;
    let daemon = Daemon::start(&db, DaemonConfig::new()).await;
    let admin = daemon.api_key("admin", &[]);
    assert_eq!(
        daemon
            .hookup(&authorization_code(5, "client-5", "s"))
            .await
            .0,
        200
    );
    let browser = Browser::start().await;
    browser.sign_in(&daemon, &admin).await;
    for page in [
        "/console",
        "/console/tenants",
        "/console/tenants/5",
        "/console/register",
        "/console/api-keys",
        "/console/webhooks",
    ] {
        browser.goto(&daemon.url(page)).await;
        let refs = browser
            .client
            .execute(
                "return Array.from(document.querySelectorAll('[src],[href],[action]'))
                   .map(e => e.getAttribute('src') || e.getAttribute('href') || e.getAttribute('action'));",
                vec![],
            )
            .await
            .unwrap();
        let refs = refs.as_array().unwrap();
        assert!(!refs.is_empty());
        for r in refs {
            let r = r.as_str().unwrap();
            assert!(
                r.starts_with('/') && !r.starts_with("//"),
                "{page} links {r}"
            );
        }
        // Every stylesheet and script actually loaded came from the daemon.
        let loaded = browser
            .client
            .execute(
                "return performance.getEntriesByType('resource').map(e => e.name);",
                vec![],
            )
            .await
            .unwrap();
        for url in loaded.as_array().unwrap() {
            assert!(
                url.as_str().unwrap().starts_with(&daemon.base),
                "{page} loaded {url}"
            );
        }
        let styled = browser
            .client
            .execute(
                "return getComputedStyle(document.querySelector('header.top')).display;",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(
            styled, "flex",
            "{page}: the stylesheet applies under the policy"
        );
    }
    let response = reqwest::get(daemon.url("/console/sign-in")).await.unwrap();
    let csp = response.headers()["content-security-policy"]
        .to_str()
        .unwrap();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    browser.close().await;
}

/// A browser over plain HTTP: cookies by hand, redirects not followed.
struct Http {
    client: reqwest::Client,
    base: String,
}

fn set_cookie(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with(&format!("{name}=")))
        .map(str::to_owned)
}

fn cookie_value(set_cookie: &str) -> String {
    let pair = set_cookie.split(';').next().unwrap();
    pair.split_once('=').unwrap().1.to_owned()
}

fn csrf_of(html: &str) -> String {
    let at = html.find(r#"name="csrf" value=""#).expect("a csrf field") + 19;
    html[at..].split('"').next().unwrap().to_owned()
}

impl Http {
    fn new(daemon: &Daemon) -> Self {
        Self {
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            base: daemon.base.clone(),
        }
    }

    /// Signs in; answers the session cookie's Set-Cookie line.
    async fn sign_in(&self, key: &str) -> reqwest::Response {
        let page = self
            .client
            .get(format!("{}/console/sign-in", self.base))
            .send()
            .await
            .unwrap();
        let pre = cookie_value(&set_cookie(&page, "broker_console_sign_in").unwrap());
        let csrf = csrf_of(&page.text().await.unwrap());
        assert_eq!(pre, csrf);
        self.client
            .post(format!("{}/console/sign-in", self.base))
            .header("cookie", format!("broker_console_sign_in={pre}"))
            .form(&[("csrf", csrf.as_str()), ("key", key)])
            .send()
            .await
            .unwrap()
    }

    async fn get(&self, path: &str, session: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.base))
            .header("cookie", format!("broker_console={session}"))
            .send()
            .await
            .unwrap()
    }

    async fn post(&self, path: &str, session: &str, form: &[(&str, &str)]) -> reqwest::Response {
        self.client
            .post(format!("{}{path}", self.base))
            .header("cookie", format!("broker_console={session}"))
            .form(form)
            .send()
            .await
            .unwrap()
    }
}

async fn sessions_are_stored_hashed_checked_for_csrf_and_ended_by_sign_out(backend: Backend) {
    let db = TestDb::new(backend).await;
    let daemon = Daemon::start(&db, DaemonConfig::new()).await;
    let admin = daemon.api_key("admin", &[]);
    assert_eq!(
        daemon
            .hookup(&client_credentials(9, "client-9", "s"))
            .await
            .0,
        200
    );
    let http = Http::new(&daemon);

    // A wrong key: 401 and no session.
    let refused = http.sign_in("pbk_wrong").await;
    assert_eq!(refused.status(), 401);
    assert!(set_cookie(&refused, "broker_console").is_none());

    let signed = http.sign_in(&admin).await;
    assert_eq!(signed.status(), 303);
    assert_eq!(signed.headers()["location"], "/console");
    let line = set_cookie(&signed, "broker_console").expect("a session cookie");
    for flag in [
        "HttpOnly",
        "SameSite=Strict",
        "Path=/console",
        "Max-Age=43200",
    ] {
        assert!(line.contains(flag), "{line} lacks {flag}");
    }
    assert!(!line.contains("Secure"), "public_url is http: {line}");
    let session = cookie_value(&line);
    assert_eq!(db.count("SELECT COUNT(*) FROM console_sessions").await, 1);
    let stored = db.column("SELECT token_hash FROM console_sessions").await;
    assert_eq!(stored[0].as_str().unwrap().len(), 64);
    assert!(
        !contains(&db.raw_bytes().await, &session),
        "the token is stored in clear"
    );

    let page = http.get("/console/tenants/9", &session).await;
    assert_eq!(page.status(), 200);
    let csrf = csrf_of(&page.text().await.unwrap());

    // Without or with a wrong CSRF token: 403, and the tenant stays.
    for form in [
        vec![("confirm", "9")],
        vec![("confirm", "9"), ("csrf", "wrong")],
        vec![("confirm", "9"), ("csrf", "")],
    ] {
        let refused = http
            .post("/console/tenants/9/remove", &session, &form)
            .await;
        assert_eq!(refused.status(), 403, "{form:?}");
        assert!(
            refused
                .text()
                .await
                .unwrap()
                .contains("Nothing was changed")
        );
    }
    assert_eq!(
        daemon.get("/admin/tenants/9", Some(&admin)).await.1["status"],
        "active"
    );
    // A sign-in form without its cookie's token is refused too.
    let forged = http
        .client
        .post(format!("{}/console/sign-in", http.base))
        .form(&[("csrf", "x"), ("key", admin.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    assert!(set_cookie(&forged, "broker_console").is_none());

    // Sign-out deletes the session: the old cookie opens nothing.
    let out = http
        .post("/console/sign-out", &session, &[("csrf", csrf.as_str())])
        .await;
    assert_eq!(out.status(), 303);
    assert!(
        set_cookie(&out, "broker_console")
            .unwrap()
            .contains("Max-Age=0")
    );
    assert_eq!(db.count("SELECT COUNT(*) FROM console_sessions").await, 0);
    let after = http.get("/console", &session).await;
    assert_eq!(after.status(), 303);
    assert_eq!(after.headers()["location"], "/console/sign-in");
    let refused = http
        .post(
            "/console/tenants/9/remove",
            &session,
            &[("confirm", "9"), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(refused.status(), 303);
    assert_eq!(
        daemon.get("/admin/tenants/9", Some(&admin)).await.1["status"],
        "active"
    );
}

async fn a_revoked_key_ends_its_sessions_and_wrong_keys_are_throttled(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut config = DaemonConfig::new();
    config.extra_env.push((
        "BROKER_SERVER__AUTH_FAILURE_LIMIT".to_owned(),
        "3".to_owned(),
    ));
    let daemon = Daemon::start(&db, config).await;
    let admin = daemon.api_key("admin", &[]);
    let http = Http::new(&daemon);
    let session = cookie_value(&set_cookie(&http.sign_in(&admin).await, "broker_console").unwrap());
    assert_eq!(http.get("/console", &session).await.status(), 200);
    let (ok, _, err) = daemon.cli(&["api-key", "revoke", "1"]);
    assert!(ok, "{err}");
    assert_eq!(http.get("/console", &session).await.status(), 303);

    for _ in 0..3 {
        assert_eq!(http.sign_in("pbk_wrong").await.status(), 401);
    }
    // The same throttle as bad API keys: the fourth try (and the API) wait.
    assert_eq!(http.sign_in("pbk_wrong").await.status(), 429);
    assert_eq!(daemon.get("/v1/tenants", Some("pbk_wrong")).await.0, 429);
}

backend_tests!(
    sessions_are_stored_hashed_checked_for_csrf_and_ended_by_sign_out,
    a_revoked_key_ends_its_sessions_and_wrong_keys_are_throttled,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cookie_is_secure_when_the_public_url_is_https() {
    let db = TestDb::new(Backend::Sqlite).await;
    let mut config = DaemonConfig::new();
    config.extra_env.push((
        "BROKER_SERVER__PUBLIC_URL".to_owned(),
        "https://broker.test".to_owned(),
    ));
    config
        .extra_env
        .push(("BROKER_CONSOLE__SESSION_TTL".to_owned(), "1h".to_owned()));
    let daemon = Daemon::start(&db, config).await;
    let admin = daemon.api_key("admin", &[]);
    let line = set_cookie(&Http::new(&daemon).sign_in(&admin).await, "broker_console").unwrap();
    assert!(
        line.contains("Secure") && line.contains("Max-Age=3600"),
        "{line}"
    );
}
