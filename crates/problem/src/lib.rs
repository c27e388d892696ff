//! Refusals as `application/problem+json` (RFC 9457): `type`, `title`,
//! `status`, `detail`, and the headers that go with some statuses. The API
//! (`ApiError`) and the hub's HTTP side both render through [`Problem`], so
//! every refusal of the service has one shape. A crate of its own: both
//! may depend on it without depending on each other.

use actix_web::http::{header, StatusCode};
use actix_web::HttpResponse;
use serde::Serialize;

/// One problem document and its response headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    status: StatusCode,
    slug: String,
    title: String,
    detail: String,
    allow: Option<String>,
    retry_after: Option<&'static str>,
    close: bool,
}

#[derive(Serialize)]
struct Document<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: &'a str,
}

impl Problem {
    /// A problem of type `/problems/{slug}`.
    pub fn new(status: StatusCode, slug: &str, title: &str, detail: impl Into<String>) -> Self {
        Self {
            status,
            slug: slug.to_owned(),
            title: title.to_owned(),
            detail: detail.into(),
            allow: None,
            retry_after: None,
            close: false,
        }
    }

    /// A problem whose type is its title in lower case, words joined by `-`
    /// (`Too many requests` → `/problems/too-many-requests`).
    pub fn titled(status: StatusCode, title: &str, detail: impl Into<String>) -> Self {
        let slug = title.to_ascii_lowercase().replace(' ', "-");
        Self::new(status, &slug, title, detail)
    }

    /// With `Allow: methods` (a 405).
    pub fn allow(mut self, methods: impl Into<String>) -> Self {
        self.allow = Some(methods.into());
        self
    }

    /// With `Retry-After: seconds` (a 429 or a 503).
    pub fn retry_after(mut self, seconds: &'static str) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// Closes the connection after the answer: the rest of its input cannot
    /// be trusted to frame a next request.
    pub fn close_connection(mut self) -> Self {
        self.close = true;
        self
    }

    /// Its status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The response: the document, `Content-Type: application/problem+json`,
    /// `WWW-Authenticate: Bearer` on a 401, and the headers asked for.
    pub fn response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        response.insert_header((header::CONTENT_TYPE, "application/problem+json"));
        if self.status == StatusCode::UNAUTHORIZED {
            response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        if let Some(seconds) = self.retry_after {
            response.insert_header((header::RETRY_AFTER, seconds));
        }
        if let Some(methods) = &self.allow {
            response.insert_header((header::ALLOW, methods.as_str()));
        }
        if self.close {
            response.force_close();
        }
        let document = Document {
            kind: format!("/problems/{}", self.slug),
            title: &self.title,
            status: self.status.as_u16(),
            detail: &self.detail,
        };
        response.body(serde_json::to_string(&document).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::to_bytes;

    async fn body(response: HttpResponse) -> serde_json::Value {
        serde_json::from_slice(&to_bytes(response.into_body()).await.unwrap()).unwrap()
    }

    #[actix_web::test]
    async fn a_problem_is_an_rfc_9457_document_with_its_headers() {
        let response =
            Problem::titled(StatusCode::TOO_MANY_REQUESTS, "Too many requests", "wait").retry_after("60").response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers().get(header::CONTENT_TYPE).unwrap(), "application/problem+json");
        assert_eq!(response.headers().get(header::RETRY_AFTER).unwrap(), "60");
        assert_eq!(
            body(response).await,
            serde_json::json!({"type": "/problems/too-many-requests", "title": "Too many requests", "status": 429, "detail": "wait"})
        );
    }

    #[actix_web::test]
    async fn a_401_asks_for_a_bearer_token_and_a_405_names_the_methods() {
        let unauthorized =
            Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", "Authentication is required", "no token");
        assert_eq!(unauthorized.response().headers().get(header::WWW_AUTHENTICATE).unwrap(), "Bearer");
        let not_allowed =
            Problem::titled(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed", "no").allow("GET, HEAD");
        let response = not_allowed.response();
        assert_eq!(response.headers().get(header::ALLOW).unwrap(), "GET, HEAD");
        assert!(response.headers().get(header::WWW_AUTHENTICATE).is_none());
        assert_eq!(body(response).await["type"], "/problems/method-not-allowed");
    }
}
