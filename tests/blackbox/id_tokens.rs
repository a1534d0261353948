//! Forged ID tokens are refused. The provider is an HTTP mock here: a real provider does not
//! sign bad tokens on demand. Keys are test-only fixtures.

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::connect::deliver;
use crate::discovery_faults::document;
use crate::helpers::*;

const PROVIDER_KEY: &str = include_str!("fixtures/provider.pem");
const PROVIDER_N: &str = include_str!("fixtures/provider.n");
const FORGER_KEY: &str = include_str!("fixtures/forger.pem");

fn jwks() -> Value {
    json!({"keys": [{"kty": "RSA", "use": "sig", "alg": "RS256", "kid": "k1", "n": PROVIDER_N.trim(), "e": "AQAB"}]})
}

fn sign(claims: &Value, key: &str, kid: &str) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(
        &header,
        claims,
        &EncodingKey::from_rsa_pem(key.as_bytes()).expect("pem"),
    )
    .expect("sign")
}

struct Setup {
    daemon: Daemon,
    admin: String,
    server: MockServer,
    issuer: String,
    _db: TestDb,
}

async fn setup() -> Setup {
    let db = TestDb::new(Backend::Sqlite).await;
    let config = mock_provider_config(&[
        ("BROKER_DISCOVERY__ENABLED", "true"),
        ("BROKER_DISCOVERY__JWKS_MIN_INTERVAL", "0s"),
    ]);
    let daemon = Daemon::start(&db, config).await;
    let admin = daemon.api_key("admin", &[]);
    let server = MockServer::start().await;
    let issuer = format!("{}/7/oauth2", server.uri());
    mount_discovery(&server, &issuer).await;
    assert_eq!(daemon.hookup(&web_app_hookup(&issuer)).await.0, 200);
    wait_for_discovery(&daemon, &admin, 7, "ok").await;
    Setup {
        daemon,
        admin,
        server,
        issuer,
        _db: db,
    }
}

async fn mount_discovery(server: &MockServer, issuer: &str) {
    Mock::given(path("/7/oauth2/.well-known/openid-configuration"))
        .respond_with(ResponseTemplate::new(200).set_body_json(document(issuer)))
        .mount(server)
        .await;
    // A short max-age, so that a test can watch it being honoured.
    Mock::given(path("/7/oauth2/.well-known/jwks.json"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(jwks())
                .insert_header("cache-control", "max-age=2"),
        )
        .mount(server)
        .await;
}

/// Starts an authorization, makes the token endpoint answer with `id_token(nonce)`, and
/// delivers the callback. Returns the callback's status and page.
async fn attempt(s: &Setup, id_token: impl Fn(&str) -> String) -> (u16, String) {
    let query = start_authorization(&s.daemon, &s.admin).await;
    s.server.reset().await;
    mount_discovery(&s.server, &s.issuer).await;
    Mock::given(method("POST"))
        .and(path("/7/oauth2/token/"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": "at", "token_type": "Bearer", "expires_in": 36000,
            "refresh_token": "rt", "scope": "openid restapi", "id_token": id_token(&query["nonce"]),
        })))
        .mount(&s.server)
        .await;
    let (status, page, _) = deliver(
        &s.daemon,
        &format!(
            "http://broker.test/oauth/callback?code=c0de&state={}",
            query["state"]
        ),
    )
    .await;
    (status, page)
}

/// Runs the connect flow with an ID token carrying `aud` and `azp` (absent when `None`).
async fn connect_with(s: &Setup, aud: Value, azp: Option<&str>) -> (u16, String) {
    attempt(s, |nonce| {
        let mut c = claims(s, nonce);
        c["aud"] = aud.clone();
        if let Some(azp) = azp {
            c["azp"] = json!(azp);
        }
        sign(&c, PROVIDER_KEY, "k1")
    })
    .await
}

fn claims(s: &Setup, nonce: &str) -> Value {
    let now = chrono::Utc::now().timestamp();
    json!({"iss": s.issuer, "aud": "web-app", "sub": "user-42", "exp": now + 3600, "iat": now, "nonce": nonce})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_id_tokens_are_refused() {
    let s = setup().await;
    let refused = |(status, page): (u16, String), what: &str| {
        assert_eq!(status, 400, "{what}: {page}");
        assert!(page.contains("identity token"), "{what}: {page}");
    };
    refused(
        attempt(&s, |n| sign(&claims(&s, n), FORGER_KEY, "k1")).await,
        "wrong signature",
    );
    refused(
        attempt(&s, |n| {
            let mut c = claims(&s, n);
            c["aud"] = json!("another-client");
            sign(&c, PROVIDER_KEY, "k1")
        })
        .await,
        "wrong aud",
    );
    refused(
        attempt(&s, |n| {
            let mut c = claims(&s, n);
            c["iss"] = json!(s.issuer.replace("/7/", "/8/"));
            sign(&c, PROVIDER_KEY, "k1")
        })
        .await,
        "wrong iss",
    );
    refused(
        attempt(&s, |_| {
            sign(&claims(&s, "not-the-nonce"), PROVIDER_KEY, "k1")
        })
        .await,
        "wrong nonce",
    );
    refused(
        attempt(&s, |n| {
            let mut c = claims(&s, n);
            let now = chrono::Utc::now().timestamp();
            c["exp"] = json!(now - 3600);
            c["iat"] = json!(now - 7200);
            sign(&c, PROVIDER_KEY, "k1")
        })
        .await,
        "expired",
    );
    refused(
        attempt(&s, |n| {
            // Algorithm confusion: HS256 "signed" with the public modulus.
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &claims(&s, n),
                &EncodingKey::from_secret(PROVIDER_N.as_bytes()).expect("key"),
            )
            .expect("sign")
        })
        .await,
        "HS256 for an RS256 client",
    );
    // An unknown key id makes the broker fetch the JWKS again (once), then refuse.
    let before = jwks_fetches(&s.server).await;
    refused(
        attempt(&s, |n| sign(&claims(&s, n), PROVIDER_KEY, "k2")).await,
        "unknown kid",
    );
    assert_eq!(
        jwks_fetches(&s.server).await,
        before + 1,
        "the JWKS was refetched for the unknown kid"
    );
    // None of these stored a grant.
    let (_, view) = s.daemon.get("/admin/tenants/7", Some(&s.admin)).await;
    assert_eq!(view["grants"], json!([]));

    // And the real thing is accepted (the setup can tell the difference).
    let (status, page) = attempt(&s, |n| sign(&claims(&s, n), PROVIDER_KEY, "k1")).await;
    assert_eq!(status, 200, "{page}");
    let (_, view) = s.daemon.get("/admin/tenants/7", Some(&s.admin)).await;
    assert_eq!(view["grants"][0]["subject"], "user-42");
}

async fn jwks_fetches(server: &MockServer) -> usize {
    server
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|r| r.url.path().ends_with("jwks.json"))
        .count()
}

/// The JWKS is fetched again once its `Cache-Control: max-age` has passed, not before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_jwks_is_fetched_again() {
    let s = setup().await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, page) = attempt(&s, |n| sign(&claims(&s, n), PROVIDER_KEY, "k1")).await;
    assert_eq!(status, 200, "{page}");
    // `attempt` resets the mock's request log: count from here.
    assert_eq!(
        jwks_fetches(&s.server).await,
        1,
        "the expired JWKS was fetched again"
    );
    let (status, page) = attempt(&s, |n| sign(&claims(&s, n), PROVIDER_KEY, "k1")).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(
        jwks_fetches(&s.server).await,
        0,
        "a fresh JWKS is not fetched again"
    );
}

/// OpenID Connect Core 3.1.3.7: with several audiences `azp` must name us; a present `azp`
/// must always name us.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn id_tokens_for_several_audiences_need_our_azp() {
    let s = setup().await;
    let refused = |(status, page): (u16, String), what: &str| {
        assert_eq!(status, 400, "{what}: {page}");
        assert!(page.contains("identity token"), "{what}: {page}");
    };
    refused(
        connect_with(&s, json!(["web-app", "another-client"]), None).await,
        "two audiences, no azp",
    );
    refused(
        connect_with(
            &s,
            json!(["web-app", "another-client"]),
            Some("another-client"),
        )
        .await,
        "two audiences, azp another client",
    );
    refused(
        connect_with(&s, json!("web-app"), Some("another-client")).await,
        "one audience, azp another client",
    );
    let (_, view) = s.daemon.get("/admin/tenants/7", Some(&s.admin)).await;
    assert_eq!(view["grants"], json!([]));
    let (status, page) =
        connect_with(&s, json!(["web-app", "another-client"]), Some("web-app")).await;
    assert_eq!(status, 200, "{page}");
    let (status, page) = connect_with(&s, json!("web-app"), None).await;
    assert_eq!(status, 200, "{page}");
}
