//! What every request meets before routing: bounds on its head (414, 431)
//! and on the time its body may take (408), and `HEAD` served as `GET`.
//!
//! actix-http bounds the head's arrival (its client request timeout, 408)
//! and its size only at 128 KiB, with a bare 431; nothing bounds the body's
//! arrival. The limits here sit below actix-http's, so that an over-long
//! head is answered with a problem document while it is still parsed.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::http::{header, Method};
use actix_web::middleware::Next;
use actix_web::web::Bytes;
use actix_web::{HttpMessage, ResponseError};
use futures_util::Stream;

use super::ApiError;

/// Longest request target (path and query) accepted.
pub const MAX_REQUEST_TARGET_BYTES: usize = 16 * 1024;
/// Largest header section accepted (names, values and separators).
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// How long a whole request body may take to arrive, from the end of its head.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// The middleware: refuses over-long heads, puts a deadline on the body,
/// answers `HEAD` like `GET` (actix-http leaves the body out of a `HEAD`
/// answer by itself).
///
/// # Errors
/// Only those of the services it wraps.
pub async fn bound_request(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    if let Err(refusal) = check_head(&req) {
        return Ok(req.into_response(refusal.error_response()));
    }
    if req.method() == Method::HEAD {
        req.head_mut().method = Method::GET;
    }
    if has_body(&req) {
        let body = req.take_payload();
        let deadline = tokio::time::sleep(BODY_TIMEOUT);
        let bounded: Pin<Box<dyn Stream<Item = Result<Bytes, PayloadError>>>> =
            Box::pin(BoundedBody { body, deadline: Box::pin(deadline), expired: false });
        req.set_payload(Payload::from(bounded));
    }
    Ok(next.call(req).await?.map_into_boxed_body())
}

/// 414 for a request target past [`MAX_REQUEST_TARGET_BYTES`], 431 for a
/// header section past [`MAX_HEADER_BYTES`].
fn check_head(req: &ServiceRequest) -> Result<(), ApiError> {
    let target = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if target > MAX_REQUEST_TARGET_BYTES {
        return Err(ApiError::UriTooLong(format!(
            "the request target is {target} bytes; at most {MAX_REQUEST_TARGET_BYTES} are accepted"
        )));
    }
    // Each header line also carries ": " and CRLF.
    let headers: usize = req.headers().iter().map(|(name, value)| name.as_str().len() + value.len() + 4).sum();
    if headers > MAX_HEADER_BYTES {
        return Err(ApiError::HeadersTooLarge(format!(
            "the headers are {headers} bytes; at most {MAX_HEADER_BYTES} are accepted"
        )));
    }
    Ok(())
}

/// Whether a body follows the head. Upgrades hand their socket to the hub,
/// which bounds its own reads.
fn has_body(req: &ServiceRequest) -> bool {
    if req.head().upgrade() {
        return false;
    }
    let headers = req.headers();
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|length| length > 0)
}

/// The request body, failing with a timed-out I/O error once the deadline
/// passes (the JSON extractor turns that into a 408).
struct BoundedBody {
    body: Payload,
    deadline: Pin<Box<tokio::time::Sleep>>,
    expired: bool,
}

impl Stream for BoundedBody {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.expired {
            return Poll::Ready(None);
        }
        if let Poll::Ready(item) = Pin::new(&mut self.body).poll_next(cx) {
            return Poll::Ready(item);
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            self.expired = true;
            return Poll::Ready(Some(Err(body_timed_out())));
        }
        Poll::Pending
    }
}

/// The error a [`BoundedBody`] fails with once its deadline has passed.
fn body_timed_out() -> PayloadError {
    PayloadError::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("the body did not arrive within {} s", BODY_TIMEOUT.as_secs()),
    ))
}

/// Whether `err` is a body that missed its deadline.
pub(crate) fn is_body_timeout(err: &PayloadError) -> bool {
    matches!(err, PayloadError::Io(io) if io.kind() == std::io::ErrorKind::TimedOut)
}
