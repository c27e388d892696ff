//! One log line per request, in a span that carries its request id: the
//! caller's `X-Request-Id` when it is sane, else a new one, echoed on the
//! response so a client can quote it. With trace export on, the span
//! continues the caller's W3C trace (`traceparent`).

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use actix_web::middleware::Next;
use tracing::Instrument;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The middleware (`from_fn(log_request)`): the request's method, path (no
/// query: it can carry access tokens), status and time, once it is answered.
///
/// # Errors
/// Whatever the service behind returns.
pub async fn log_request(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let method = req.method().clone();
    let path = req.path().to_owned();
    let request_id = request_id(req.headers());
    let span = tracing::info_span!("http_request", %request_id);
    crate::telemetry::otlp::continue_callers_trace(&span, req.headers());
    let started = Instant::now();
    // Entered while the service is called too: routing and extraction log in it.
    let answered = {
        let _entered = span.enter();
        next.call(req)
    };
    let mut res = answered.instrument(span.clone()).await?;
    span.in_scope(|| {
        tracing::info!(
            %method,
            %path,
            status = res.status().as_u16(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "request"
        );
    });
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        res.headers_mut().insert(REQUEST_ID, value);
    }
    Ok(res)
}

/// The caller's request id when it is 1 to 64 of `[A-Za-z0-9._-]`, else a new UUID.
fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        })
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}
