//! Request bodies on every route: at most [`MAX_BODY`], and all of it within
//! `server.request_body_timeout` of the request head. A connection whose body was not read to
//! its end is closed after the answer: actix-http would otherwise keep reading (and
//! discarding) a chunked body for as long as the client trickles it.

use std::cell::RefCell;
use std::future::{Future, Ready, ready};
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::http::header;
use actix_web::middleware::Next;
use actix_web::web::{self, Bytes, BytesMut};
use actix_web::{Error, FromRequest, HttpMessage, HttpRequest};
use futures_util::{Stream, StreamExt};

use crate::AppState;
use crate::problem::ApiError;

/// The body timeout when the application state is missing (never, outside tests).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest request body accepted on any route.
pub const MAX_BODY: usize = 64 * 1024;

/// The request's payload, shared by the stream handlers read and the answer's body.
type SharedPayload = Rc<RefCell<Payload>>;

/// Middleware: bounds the time a request body may take, and keeps the payload alive until
/// the answer is written, so that actix-http sees it unfinished (not dropped) and closes the
/// connection instead of draining it.
pub async fn bound_request_body(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<HeldPayload>, Error> {
    let held = match req.take_payload() {
        Payload::None => None,
        payload => {
            let deadline = req
                .app_data::<web::Data<AppState>>()
                .map(|s| s.clock().instant() + s.body_timeout());
            let shared = Rc::new(RefCell::new(payload));
            req.set_payload(Payload::Stream {
                payload: Box::pin(Deadline {
                    payload: shared.clone(),
                    deadline,
                    timer: None,
                    expired: false,
                }),
            });
            Some(shared)
        }
    };
    let response = next.call(req).await?;
    Ok(response.map_body(|_, body| HeldPayload {
        body: body.boxed(),
        _payload: held,
    }))
}

/// The payload as handlers see it: ends with a `TimedOut` error at the deadline.
struct Deadline {
    payload: SharedPayload,
    /// When the whole body must be in (the request head's arrival plus the body timeout).
    deadline: Option<Instant>,
    /// Armed only once the body has to be waited for: most bodies arrive with their head,
    /// and a timer per request would cost the hot path a timer registration.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    expired: bool,
}

impl Stream for Deadline {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.expired {
            return Poll::Ready(None);
        }
        let polled = match this.payload.try_borrow_mut() {
            Ok(mut payload) => Pin::new(&mut *payload).poll_next(cx),
            Err(_) => Poll::Ready(None),
        };
        if polled.is_pending() && this.timer.is_none() {
            this.timer = Some(Box::pin(match this.deadline {
                Some(at) => tokio::time::sleep_until(at.into()),
                None => tokio::time::sleep(DEFAULT_TIMEOUT),
            }));
        }
        let timed_out = polled.is_pending()
            && this
                .timer
                .as_mut()
                .is_some_and(|t| t.as_mut().poll(cx).is_ready());
        match polled {
            Poll::Pending if timed_out => {
                this.expired = true;
                Poll::Ready(Some(Err(PayloadError::Io(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the request body did not arrive in time",
                )))))
            }
            other => other,
        }
    }
}

/// An answer's body that holds the request payload until it has been written.
pub struct HeldPayload {
    body: BoxBody,
    _payload: Option<SharedPayload>,
}

impl MessageBody for HeldPayload {
    type Error = <BoxBody as MessageBody>::Error;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_next(cx)
    }
}

/// A request body, read when the handler asks (after it checked the caller), within
/// [`MAX_BODY`] and the body timeout.
pub struct Body {
    payload: Payload,
    declared: Option<usize>,
}

impl FromRequest for Body {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<usize>().ok());
        ready(Ok(Self {
            payload: payload.take(),
            declared,
        }))
    }
}

impl Body {
    /// The whole body: `413` over the limit, `408` when it did not arrive in time.
    pub async fn read(mut self) -> Result<Bytes, ApiError> {
        if self.declared.is_some_and(|n| n > MAX_BODY) {
            return Err(ApiError::TooLarge(MAX_BODY));
        }
        let mut body = BytesMut::new();
        while let Some(chunk) = self.payload.next().await {
            let chunk = chunk.map_err(read_error)?;
            if body.len() + chunk.len() > MAX_BODY {
                return Err(ApiError::TooLarge(MAX_BODY));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    }
}

/// A failure while reading a body, as the client should see it.
pub fn read_error(err: PayloadError) -> ApiError {
    match err {
        PayloadError::Io(e) if e.kind() == io::ErrorKind::TimedOut => ApiError::RequestTimeout,
        PayloadError::Overflow => ApiError::TooLarge(MAX_BODY),
        other => ApiError::InvalidRequest(format!("the body could not be read: {other}")),
    }
}
