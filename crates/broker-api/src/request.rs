//! Per request: its id (`X-Request-Id`), a tracing span, the request metrics and one access
//! log line.
//!
//! Not `tracing-actix-web`: its request id is always generated (it deliberately ignores the
//! caller's `X-Request-Id`, and does not answer it), and its root span records about a dozen
//! fields per request (host, user agent, client address, target, ...) where the token hot path
//! needs one; the access line, the response header and the problem bodies' `request_id` would
//! still be ours. This middleware does all of it with one span of two fields.

use std::borrow::Cow;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage, web};
use broker_service::Clock;
use broker_service::metrics::{HttpLabels, MethodLabel, RouteLabels};
use tracing::Instrument;

use crate::AppState;

/// The request id header, read from callers and set on every answer.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest caller-sent request id kept; a longer one is replaced.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// The target of the access lines: `broker_api::access=warn` in `log.level` keeps only the
/// refused ones.
pub const ACCESS_TARGET: &str = "broker_api::access";

tokio::task_local! {
    /// The id of the request being handled, for the problem bodies rendered inside it.
    static REQUEST_ID: HeaderValue;
}

/// The current request's id, when called while a request is handled.
pub fn current_request_id() -> Option<String> {
    REQUEST_ID
        .try_with(|id| id.to_str().ok().map(str::to_owned))
        .ok()
        .flatten()
}

/// A resource's path pattern, attached to it as app data by [`crate::resource`], so that the
/// middleware labels metrics and the access line without looking the pattern up again.
#[derive(Clone, Copy, Debug)]
pub struct RoutePattern(pub &'static str);

/// The name of the API key that authenticated the request, for the access line (set by the
/// `Caller` extractor).
#[derive(Clone, Debug)]
pub struct KeyName(pub Arc<str>);

/// A caller's id is kept when it is a plain token: 1 to 128 characters of letters, digits
/// and `-_.:/+=@` (UUIDs, hex, base64, W3C trace ids). Anything else (control characters,
/// spaces, quotes, overlong) could forge or break log lines, so it is replaced.
pub fn is_sane_request_id(value: &[u8]) -> bool {
    !value.is_empty()
        && value.len() <= MAX_REQUEST_ID_LEN
        && value
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.:/+=@".contains(c))
}

/// Middleware (the outermost): the request id, the span, the metrics by route pattern (never
/// the concrete path, which for the hookup carries its secret; every label bounded), and the
/// access line. The route pattern is read after routing, where it is an index lookup (before
/// it, actix matches every pattern again).
pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let started = state.as_ref().map(|s| s.clock().instant());
    let method = req.method().clone();
    let id = req
        .headers()
        .get(X_REQUEST_ID)
        .filter(|v| is_sane_request_id(v.as_bytes()))
        .cloned()
        .unwrap_or_else(generated_id);
    // One field: the access line carries the rest (recording more into the span costs a
    // formatting pass per field on the hot path).
    let span = tracing::info_span!("request", request_id = %id.to_str().unwrap_or_default());
    let called = REQUEST_ID
        .scope(id.clone(), next.call(req))
        .instrument(span.clone())
        .await;
    let mut response = match called {
        Ok(response) => response,
        Err(err) => {
            // Only a middleware fails this way (handlers' errors are answers by now): actix
            // renders it after us, without the header; still logged once.
            let status = err.as_response_error().status_code();
            if let (Some(state), Some(started)) = (&state, started) {
                access_line(
                    state,
                    &span,
                    AccessLine {
                        method,
                        route: "unmatched",
                        status,
                        latency: state.clock().since(started),
                        api_key: None,
                        provet_id: None,
                    },
                );
            }
            return Err(err);
        }
    };
    response.headers_mut().insert(X_REQUEST_ID, id);
    let status = response.status();
    if let (Some(state), Some(started)) = (state, started) {
        let latency = state.clock().since(started);
        let request = response.request();
        let route: Cow<'static, str> = match request.app_data::<RoutePattern>() {
            Some(pattern) => Cow::Borrowed(pattern.0),
            None => request
                .match_pattern()
                .map_or(Cow::Borrowed("unmatched"), Cow::Owned),
        };
        let api_key = request.extensions().get::<KeyName>().map(|k| k.0.clone());
        let provet_id = request
            .match_info()
            .get("provet_id")
            .and_then(|p| p.parse::<i64>().ok());
        record(&state, &method, route.clone(), status, latency);
        access_line(
            &state,
            &span,
            AccessLine {
                method,
                route: &route,
                status,
                latency,
                api_key: api_key.as_deref(),
                provet_id,
            },
        );
    }
    Ok(response)
}

/// The request's metrics, by method and route pattern.
fn record(
    state: &AppState,
    method: &Method,
    route: Cow<'static, str>,
    status: StatusCode,
    latency: Duration,
) {
    let metrics = state.metrics();
    let label = MethodLabel::of(method.as_str());
    metrics
        .http_duration
        .get_or_create(&RouteLabels {
            method: label,
            route: route.clone(),
        })
        .observe(latency.as_secs_f64());
    metrics
        .http_requests
        .get_or_create(&HttpLabels {
            method: label,
            route,
            status: status.as_u16(),
        })
        .inc();
}

struct AccessLine<'a> {
    method: Method,
    route: &'a str,
    status: StatusCode,
    latency: Duration,
    api_key: Option<&'a str>,
    provet_id: Option<i64>,
}

/// One line per request, at info; a refused one (401, 403, 429) at warn, but only as many
/// as `RefusalLog` lets through (a key-guessing flood must not flood the log too).
fn access_line(state: &AppState, span: &tracing::Span, line: AccessLine<'_>) {
    let latency_ms = line.latency.as_secs_f64() * 1000.0;
    let status = line.status.as_u16();
    if matches!(status, 401 | 403 | 429) {
        if let Some(suppressed) = state.refusal_log().admit() {
            tracing::warn!(
                target: ACCESS_TARGET,
                parent: span,
                method = %line.method,
                route = line.route,
                status,
                latency_ms,
                api_key = line.api_key,
                provet_id = line.provet_id,
                suppressed,
                "request refused"
            );
        }
    } else {
        tracing::info!(
            target: ACCESS_TARGET,
            parent: span,
            method = %line.method,
            route = line.route,
            status,
            latency_ms,
            api_key = line.api_key,
            provet_id = line.provet_id,
            "request"
        );
    }
}

/// A request id: a per-process random start plus a counter, as 16 hex digits.
fn generated_id() -> HeaderValue {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static START: OnceLock<u64> = OnceLock::new();
    let start = *START.get_or_init(rand_id);
    let n = start.wrapping_add(
        NEXT.fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15),
    );
    let mut hex = [0u8; 16];
    for (i, digit) in hex.iter_mut().enumerate() {
        *digit = b"0123456789abcdef"[((n >> (60 - 4 * i)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&hex).unwrap_or(HeaderValue::from_static("0"))
}

fn rand_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded per process and per instance: good enough for correlation ids.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.finish()
}

/// A token bucket for the refused requests' warn lines: up to `burst` at once, then `per_sec`
/// a second. Each line let through after some were held back says how many (`suppressed`).
pub struct RefusalLog {
    burst: f64,
    per_sec: f64,
    clock: Arc<dyn Clock>,
    bucket: Mutex<Bucket>,
}

struct Bucket {
    tokens: f64,
    refilled: Option<Instant>,
    suppressed: u64,
}

impl RefusalLog {
    pub fn new(burst: u32, per_sec: u32, clock: Arc<dyn Clock>) -> Self {
        Self {
            burst: f64::from(burst.max(1)),
            per_sec: f64::from(per_sec),
            clock,
            bucket: Mutex::new(Bucket {
                tokens: f64::from(burst.max(1)),
                refilled: None,
                suppressed: 0,
            }),
        }
    }

    /// `Some(n)`: log this one, saying `n` were left out since the last; `None`: leave it out.
    pub fn admit(&self) -> Option<u64> {
        let now = self.clock.instant();
        let mut b = self.bucket.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(refilled) = b.refilled {
            let elapsed = now.saturating_duration_since(refilled).as_secs_f64();
            b.tokens = (b.tokens + elapsed * self.per_sec).min(self.burst);
        }
        b.refilled = Some(now);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Some(std::mem::take(&mut b.suppressed))
        } else {
            b.suppressed = b.suppressed.saturating_add(1);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};

    /// A clock moved by hand.
    struct Manual(Mutex<Instant>);

    impl Clock for Manual {
        fn now(&self) -> DateTime<Utc> {
            DateTime::from_timestamp(1_800_000_000, 0).unwrap()
        }
        fn instant(&self) -> Instant {
            *self.0.lock().unwrap()
        }
    }

    impl Manual {
        fn advance(&self, by: Duration) {
            let mut t = self.0.lock().unwrap();
            *t += by;
        }
    }

    #[test]
    fn refusal_log_lets_a_burst_through_then_counts_the_rest() {
        let clock = Arc::new(Manual(Mutex::new(broker_service::SystemClock.instant())));
        let log = RefusalLog::new(3, 1, clock.clone());
        let admitted: Vec<_> = (0..10).map(|_| log.admit()).collect();
        assert_eq!(&admitted[..3], &[Some(0), Some(0), Some(0)]);
        assert!(admitted[3..].iter().all(Option::is_none));
        clock.advance(Duration::from_millis(1500));
        assert_eq!(log.admit(), Some(7), "the 7 held back are counted");
        assert_eq!(log.admit(), None, "1.5 s refill one and a half lines");
        clock.advance(Duration::from_secs(60));
        assert_eq!(log.admit(), Some(1));
        assert_eq!(log.admit(), Some(0));
        assert_eq!(log.admit(), Some(0));
        assert_eq!(log.admit(), None, "the bucket holds at most the burst");
    }

    #[test]
    fn generated_ids_are_distinct_sane_hex() {
        let ids: Vec<_> = (0..100).map(|_| generated_id()).collect();
        for id in &ids {
            assert_eq!(id.len(), 16);
            assert!(id.as_bytes().iter().all(u8::is_ascii_hexdigit), "{id:?}");
            assert!(is_sane_request_id(id.as_bytes()));
        }
        let distinct: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
    }

    #[test]
    fn sane_request_ids_are_plain_tokens() {
        for ok in [
            "abc",
            "0123456789abcdef",
            "3f1c2a8e-9b0d-4e55-a1f2-6c7d8e9f0a1b",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "dGVzdA==",
            "a/b+c@d:e.f_g",
        ] {
            assert!(is_sane_request_id(ok.as_bytes()), "{ok:?}");
        }
        let long = "a".repeat(MAX_REQUEST_ID_LEN + 1);
        for bad in ["", "a b", "a\tb", "a\u{7f}", "a\"b", "a\nb", long.as_str()] {
            assert!(!is_sane_request_id(bad.as_bytes()), "{bad:?}");
        }
        assert!(is_sane_request_id(
            "a".repeat(MAX_REQUEST_ID_LEN).as_bytes()
        ));
    }
}
