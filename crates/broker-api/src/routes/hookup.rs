//! `POST /hookup/{secret}`: Provet delivers a tenant's OAuth client.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::StreamExt;

use crate::AppState;
use crate::openapi::{
    BadRequest, HookupMessageRef, NotFound, PayloadTooLarge, RequestTimeout, Unavailable,
    UnsupportedMediaType,
};
use crate::problem::ApiError;
use crate::views::HookupReceiptView;

/// The largest hookup body accepted.
pub const MAX_BODY: usize = crate::body::MAX_BODY;

/// Receives one tenant's OAuth client from Provet.
///
/// The path segment is the hookup secret: a wrong one answers exactly like an unknown path.
/// The message is stored in one transaction before the answer; the same message again
/// answers `unchanged`.
#[utoipa::path(
    post,
    path = "/hookup/{hookup_secret}",
    tag = "hookup",
    params(("hookup_secret" = String, Path, description = "The secret path segment given to Provet")),
    request_body(content = HookupMessageRef, content_type = "application/json", description = "The hookup message (Provet's schema)"),
    responses(
        (status = 200, description = "Stored", body = HookupReceiptView),
        (status = 400, response = BadRequest),
        (status = 404, response = NotFound),
        (status = 408, response = RequestTimeout),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 503, response = Unavailable),
    )
)]
pub async fn receive(
    state: web::Data<AppState>,
    secret: web::Path<String>,
    req: HttpRequest,
    mut payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    // The secret first: nothing else about the request may tell a guesser anything.
    if !state.hookups().admit(&secret) {
        return Err(ApiError::NotFound);
    }
    if !is_json(&req) {
        return Err(ApiError::UnsupportedMediaType);
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY) {
        return Err(ApiError::TooLarge(MAX_BODY));
    }
    // A body that trickles in slowly is cut off: it would hold a connection open.
    let read = async {
        let mut body = web::BytesMut::new();
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(crate::body::read_error)?;
            if body.len() + chunk.len() > MAX_BODY {
                return Err(ApiError::TooLarge(MAX_BODY));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    };
    let body = tokio::time::timeout(state.body_timeout(), read)
        .await
        .map_err(|_| ApiError::RequestTimeout)??;
    let receipt = state.hookups().receive(&body).await?;
    Ok(HttpResponse::Ok().json(HookupReceiptView::from(receipt)))
}

/// `application/json` or any `+json` type, parameters (charset) allowed.
pub(crate) fn is_json(req: &HttpRequest) -> bool {
    let Some(value) = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}
