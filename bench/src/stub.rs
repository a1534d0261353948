//! An instant client_credentials token endpoint on 127.0.0.1, served by the benchmark
//! itself: every `POST /{tenant}/oauth2/token/` is answered at once with a fresh 30-character
//! access token (django-oauth-toolkit's length) valid 10 hours, and counted per client_id
//! (from HTTP Basic authentication, or the form's `client_id`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use crate::random_string;
use crate::server::{Bound, LocalServer};
use actix_web::{HttpRequest, HttpResponse, web};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::json;

/// What the endpoint has seen.
#[derive(Default)]
pub struct Counts {
    pub total: AtomicU64,
    per_client: Mutex<HashMap<String, u64>>,
}

impl Counts {
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::SeqCst)
    }

    /// Requests per client_id so far.
    pub fn per_client(&self) -> HashMap<String, u64> {
        self.per_client
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

pub struct TokenStub {
    /// `http://127.0.0.1:PORT`; a tenant's token URL is `{base}/{provet_id}/oauth2/token/`.
    pub base: String,
    pub counts: web::Data<Counts>,
    server: LocalServer,
}

impl TokenStub {
    /// Starts the endpoint with `workers` actix-web workers.
    pub fn start(workers: usize) -> anyhow::Result<Self> {
        let counts = web::Data::new(Counts::default());
        let data = counts.clone();
        let server = Bound::new()?.serve("the token endpoint", workers, move |cfg| {
            cfg.app_data(data.clone())
                .route("/{tenant}/oauth2/token/", web::post().to(token));
        })?;
        Ok(Self {
            base: server.base.clone(),
            counts,
            server,
        })
    }

    /// A tenant's token URL.
    pub fn token_url(&self, provet_id: i64) -> String {
        format!("{}/{provet_id}/oauth2/token/", self.base)
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        self.server.stop().await
    }
}

async fn token(request: HttpRequest, counts: web::Data<Counts>, form: web::Bytes) -> HttpResponse {
    let client_id = basic_user(&request)
        .or_else(|| form_field(&form, "client_id"))
        .unwrap_or_default();
    counts.total.fetch_add(1, Ordering::SeqCst);
    *counts
        .per_client
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(client_id)
        .or_default() += 1;
    HttpResponse::Ok()
        .content_type("application/json")
        .insert_header(("cache-control", "no-store"))
        .body(
            json!({
                "access_token": random_string(30),
                "token_type": "Bearer",
                "expires_in": 36000,
                "scope": "restapi",
            })
            .to_string(),
        )
}

/// The user of `Authorization: Basic …` (form-encoded, as RFC 6749 2.3.1 asks; the
/// benchmarks' client_ids are alphanumeric, so nothing needs decoding).
fn basic_user(request: &HttpRequest) -> Option<String> {
    let value = request.headers().get("authorization")?.to_str().ok()?;
    let decoded = BASE64.decode(value.strip_prefix("Basic ")?).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    Some(text.split_once(':')?.0.to_owned())
}

fn form_field(form: &[u8], name: &str) -> Option<String> {
    std::str::from_utf8(form)
        .ok()?
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
        .map(str::to_owned)
}
