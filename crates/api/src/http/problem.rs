//! Errors as `application/problem+json` (RFC 9457): `type`, `title`,
//! `status`, `detail`. Every refusal of the API goes through [`ApiError`],
//! rendered by the [`Problem`] the hub's refusals use too.

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse, ResponseError};
use smartscheduler_application::{AssignJobError, AuthError, CatalogError};
use smartscheduler_domain::ports::StoreError;
use smartscheduler_domain::{Cause, Chain, ValidationError};
use smartscheduler_problem::Problem;

/// An API failure, mapped to a status and a problem document.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is not valid.
    #[error("{0}")]
    Validation(String),
    /// 401: no valid token.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: the role or region does not allow it.
    #[error("{0}")]
    Forbidden(String),
    /// 404.
    #[error("{0}")]
    NotFound(String),
    /// 405: the path exists, the method does not; the methods it has.
    #[error("{0}")]
    MethodNotAllowed(String, &'static [&'static str]),
    /// 409: the request conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// 422: understood but refused (an `Idempotency-Key` reused with another body).
    #[error("{0}")]
    Unprocessable(String),
    /// 408: the body did not arrive in time; the connection is closed.
    #[error("{0}")]
    RequestTimeout(String),
    /// 413: the body is too large.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 414: the request target is too long; the connection is closed.
    #[error("{0}")]
    UriTooLong(String),
    /// 431: the header section is too large; the connection is closed.
    #[error("{0}")]
    HeadersTooLarge(String),
    /// 415: the body is not JSON.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 503: a dependency is down; retry later. The cause is logged, not shown.
    #[error("dependency unavailable")]
    Unavailable(#[source] Cause),
    /// 500: a bug; the cause is logged, not shown.
    #[error("internal error")]
    Internal(#[source] Cause),
}

impl ApiError {
    /// A 400 with `detail`.
    pub fn validation(detail: impl Into<String>) -> Self {
        Self::Validation(detail.into())
    }
    /// A 404 with `detail`.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::NotFound(detail.into())
    }

    fn kind(&self) -> (&'static str, &'static str) {
        match self {
            Self::Validation(_) => ("validation-error", "The request is not valid"),
            Self::Unauthorized(_) => ("unauthorized", "Authentication is required"),
            Self::Forbidden(_) => ("forbidden", "Not allowed"),
            Self::NotFound(_) => ("not-found", "Not found"),
            Self::MethodNotAllowed(..) => ("method-not-allowed", "Method not allowed"),
            Self::Conflict(_) => ("conflict", "Conflict"),
            Self::RequestTimeout(_) => ("request-timeout", "The request body did not arrive in time"),
            Self::PayloadTooLarge(_) => ("payload-too-large", "The request body is too large"),
            Self::UriTooLong(_) => ("uri-too-long", "The request target is too long"),
            Self::HeadersTooLarge(_) => ("headers-too-large", "The request headers are too large"),
            Self::Unprocessable(_) => ("unprocessable", "The request cannot be processed"),
            Self::UnsupportedMediaType(_) => ("unsupported-media-type", "The request body must be JSON"),
            Self::Unavailable(_) => ("unavailable", "Service unavailable"),
            Self::Internal(_) => ("internal", "Internal server error"),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::Validation(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(..) => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UriTooLong(_) => StatusCode::URI_TOO_LONG,
            Self::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        let (slug, title) = self.kind();
        // The causes are logged once, here at the edge; the client sees none.
        let detail = match self {
            Self::Internal(_) => {
                tracing::error!(error = %Chain(self), "internal error");
                "An unexpected error occurred.".to_owned()
            }
            Self::Unavailable(_) => {
                tracing::warn!(error = %Chain(self), "dependency unavailable");
                "A dependency is unavailable; retry later.".to_owned()
            }
            other => other.to_string(),
        };
        let mut problem = Problem::new(status, slug, title, detail);
        if status == StatusCode::SERVICE_UNAVAILABLE {
            problem = problem.retry_after("1");
        }
        if matches!(self, Self::RequestTimeout(_) | Self::UriTooLong(_) | Self::HeadersTooLarge(_)) {
            // The rest of this connection's input cannot be trusted to frame
            // a next request: a body still trickling in, an oversized head.
            problem = problem.close_connection();
        }
        if let Self::MethodNotAllowed(_, allowed) = self {
            // `HEAD` is answered wherever `GET` is (see `edge`).
            let head = allowed.contains(&"GET") && !allowed.contains(&"HEAD");
            problem = problem.allow(allowed.join(", ") + if head { ", HEAD" } else { "" });
        }
        problem.response()
    }
}

impl From<ValidationError> for ApiError {
    fn from(value: ValidationError) -> Self {
        Self::Validation(value.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(value: StoreError) -> Self {
        match value {
            StoreError::Unavailable(_) => Self::Unavailable(Box::new(value)),
            StoreError::Unexpected(_) | StoreError::LeaseLost => Self::Internal(Box::new(value)),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(value: AuthError) -> Self {
        Self::Unauthorized(value.to_string())
    }
}

impl From<CatalogError> for ApiError {
    fn from(value: CatalogError) -> Self {
        match value {
            CatalogError::Forbidden(e) => Self::Forbidden(e),
            CatalogError::Invalid(e) => e.into(),
            CatalogError::Store(e) => e.into(),
            CatalogError::NotFound(e) => Self::not_found(e),
        }
    }
}

impl From<AssignJobError> for ApiError {
    fn from(value: AssignJobError) -> Self {
        let detail = value.to_string();
        match value {
            AssignJobError::JobNotFound(_) | AssignJobError::ContractorNotFound(_) => Self::NotFound(detail),
            AssignJobError::Forbidden(_) => Self::Forbidden(detail),
            AssignJobError::JobAlreadyAssigned(_) | AssignJobError::ContractorBusy(_) => Self::Conflict(detail),
            AssignJobError::IdempotencyKeyReused => Self::Unprocessable(detail),
            AssignJobError::Unavailable(_) => Self::Unavailable(Box::new(value)),
            AssignJobError::Unexpected(_) => Self::Internal(Box::new(value)),
        }
    }
}

/// JSON bodies: at most [`super::MAX_BODY_BYTES`], errors as problems.
pub(crate) fn json_config() -> web::JsonConfig {
    web::JsonConfig::default().limit(super::MAX_BODY_BYTES).error_handler(|err, _req| {
        use actix_web::error::JsonPayloadError as E;
        let api = match &err {
            E::OverflowKnownLength { .. } | E::Overflow { .. } => {
                ApiError::PayloadTooLarge(format!("the body must be at most {} bytes", super::MAX_BODY_BYTES))
            }
            E::Payload(payload) if super::edge::is_body_timeout(payload) => ApiError::RequestTimeout(format!(
                "the body must arrive within {} s of the request head",
                super::edge::BODY_TIMEOUT.as_secs()
            )),
            E::ContentType => ApiError::UnsupportedMediaType("send the body as application/json".into()),
            E::Deserialize(e) => ApiError::Validation(format!("the body is not valid: {e}")),
            other => ApiError::Validation(format!("the body could not be read: {other}")),
        };
        api.into()
    })
}

/// Query strings: errors as problems.
pub(crate) fn query_config() -> web::QueryConfig {
    web::QueryConfig::default()
        .error_handler(|err, _req| ApiError::Validation(format!("the query is not valid: {err}")).into())
}

/// Path segments: errors as problems.
pub(crate) fn path_config() -> web::PathConfig {
    web::PathConfig::default().error_handler(|err, _req| ApiError::NotFound(format!("no such resource: {err}")).into())
}

/// The fallback for unknown routes.
pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::not_found("no route matches this path"))
}

/// The fallback for a known path asked with another method: 405 with `Allow`.
pub async fn method_not_allowed(allowed: &'static [&'static str]) -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed(format!("this path answers {}", allowed.join(", ")), allowed))
}

#[cfg(test)]
mod tests {
    use actix_web::body::MessageBody;

    use super::*;

    const DRIVER_TEXT: &str = "connection refused by 10.1.2.3:5432 for user scheduler";

    fn body_of(err: ApiError) -> (StatusCode, String) {
        let response = err.error_response();
        let body = response.into_body().try_into_bytes().expect("a complete body");
        (err.status_code(), String::from_utf8(body.to_vec()).expect("UTF-8"))
    }

    fn driver_error() -> Cause {
        Box::new(sqlx::Error::Io(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, DRIVER_TEXT)))
    }

    #[test]
    fn a_503_keeps_the_driver_text_out_of_the_body() {
        let (status, body) = body_of(StoreError::Unavailable(driver_error()).into());

        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("A dependency is unavailable; retry later."), "{body}");
        assert!(!body.contains(DRIVER_TEXT), "{body}");
    }

    #[test]
    fn a_500_keeps_the_driver_text_out_of_the_body() {
        let (status, body) = body_of(AssignJobError::from(StoreError::Unexpected(driver_error())).into());

        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(body.contains("An unexpected error occurred."), "{body}");
        assert!(!body.contains(DRIVER_TEXT), "{body}");
    }

    #[test]
    fn the_logged_chain_keeps_the_driver_text() {
        let err = ApiError::from(StoreError::Unavailable(driver_error()));

        let logged = Chain(&err).to_string();

        assert!(logged.starts_with("dependency unavailable: storage unavailable: "), "{logged}");
        assert!(logged.contains(DRIVER_TEXT), "{logged}");
    }
}
