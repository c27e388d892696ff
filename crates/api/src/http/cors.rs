//! CORS for browser clients, and its refusals as problem documents.
//!
//! actix-cors answers a preflight it refuses with a plain-text 400; the
//! contract wants every refusal as `application/problem+json`.

use actix_cors::{Cors, CorsError};
use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderName};
use actix_web::middleware::Next;
use actix_web::ResponseError;

use super::ApiError;

/// Only the configured origins, echoed exactly, with credentials (the
/// SignalR client sends them by default) and the headers the SignalR client
/// and the API use. No origins: no CORS at all.
pub fn cors(origins: &[String]) -> Cors {
    let mut cors = Cors::default()
        .allowed_methods(["GET", "POST", "OPTIONS"])
        .allowed_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("x-requested-with"),
            HeaderName::from_static("x-signalr-user-agent"),
            HeaderName::from_static("idempotency-key"),
        ])
        .expose_headers([header::LOCATION])
        .supports_credentials()
        .max_age(3600);
    for origin in origins.iter().filter(|o| !o.is_empty()) {
        cors = cors.allowed_origin(origin);
    }
    cors
}

/// Wraps [`cors`] (from outside): a refusal of actix-cors becomes a 403
/// problem, without CORS headers, so the browser denies the call.
///
/// # Errors
/// Only those of the services it wraps.
pub async fn refusals_as_problems(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let res = next.call(req).await?;
    let refusal = res.response().error().and_then(|err| err.as_error::<CorsError>()).map(refusal);
    match refusal {
        Some(problem) => {
            let (req, _) = res.into_parts();
            Ok(ServiceResponse::new(req, problem.error_response()))
        }
        None => Ok(res.map_into_boxed_body()),
    }
}

/// The problem for a CORS refusal: 403 when the origin, method or headers
/// are not allowed, 400 when the preflight itself is malformed.
fn refusal(err: &CorsError) -> ApiError {
    let detail = format!("CORS preflight refused: {err}");
    match err {
        CorsError::BadRequestMethod | CorsError::BadRequestHeaders | CorsError::MissingRequestMethod => {
            ApiError::Validation(detail)
        }
        _ => ApiError::Forbidden(detail),
    }
}
