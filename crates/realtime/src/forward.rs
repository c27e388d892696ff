//! No sticky sessions for Long Polling and SSE: their requests carry the
//! connection token, which names the node that negotiated it (its home).
//! A request that reaches another node than the one its connection lives
//! on is sent on to that node, and the answer (a poll, a whole SSE stream)
//! streams back. WebSockets need none of this: one socket is one request.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpRequest, HttpResponse};
use bytes::Bytes;
use futures_util::TryStreamExt;
use smartscheduler_domain::Chain;

use crate::HubContext;

/// Marks a forwarded request: the node it reaches serves it or answers 404,
/// never forwards it again (no loops between nodes that disagree).
pub const FORWARDED_HEADER: &str = "x-smartscheduler-forwarded";

/// Headers a hub request carries that its home node needs.
const PASSED_ON: [header::HeaderName; 3] = [header::AUTHORIZATION, header::ACCEPT, header::CONTENT_TYPE];

/// Sends requests to other nodes.
#[derive(Clone)]
pub struct Forwarder {
    client: reqwest::Client,
}

impl Default for Forwarder {
    fn default() -> Self {
        // No overall timeout: a poll waits up to its poll timeout, and a
        // stream lasts as long as its connection.
        let client = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(5))
            .build()
            .expect("a client without TLS settings builds");
        Self { client }
    }
}

/// The home node of `id` when it is another node and `req` was not
/// forwarded already.
pub fn elsewhere(ctx: &HubContext, req: &HttpRequest, id: &str) -> Option<String> {
    if req.headers().contains_key(FORWARDED_HEADER) {
        return None;
    }
    let home = ctx.tickets.home(id)?;
    (ctx.config.node_url.as_deref() != Some(home.as_str())).then_some(home)
}

impl Forwarder {
    /// Sends `req` (with `body`) to the same path and query on `home`, and
    /// streams its answer back. An unreachable home is a 502 problem.
    pub async fn forward(&self, home: &str, req: &HttpRequest, body: Bytes) -> HttpResponse {
        let target = format!("{}{}", home.trim_end_matches('/'), req.uri().path_and_query().map_or("", |p| p.as_str()));
        // actix-web and reqwest use two versions of the `http` types: passed on as bytes.
        let method = reqwest::Method::from_bytes(req.method().as_str().as_bytes()).unwrap_or(reqwest::Method::GET);
        let mut outgoing = self.client.request(method, &target).header(FORWARDED_HEADER, "1").body(body);
        for name in PASSED_ON {
            for value in req.headers().get_all(&name) {
                outgoing = outgoing.header(name.as_str(), value.as_bytes());
            }
        }
        let answer = match outgoing.send().await {
            Ok(answer) => answer,
            Err(err) => {
                tracing::warn!(error = %Chain(&err), %home, "a hub request could not reach its connection's node");
                return crate::http::problem(
                    StatusCode::BAD_GATEWAY,
                    "Bad gateway",
                    "The node serving this connection cannot be reached: negotiate again.",
                );
            }
        };
        let status = StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        let mut response = HttpResponse::build(status);
        for (name, value) in answer.headers() {
            let (Ok(name), Ok(value)) =
                (header::HeaderName::from_bytes(name.as_ref()), header::HeaderValue::from_bytes(value.as_bytes()))
            else {
                continue;
            };
            if !is_hop_by_hop(&name) {
                response.insert_header((name, value));
            }
        }
        response.streaming(answer.bytes_stream().map_err(actix_web::error::ErrorBadGateway))
    }
}

/// Headers that belong to one hop (and the length, which the stream sets).
fn is_hop_by_hop(name: &header::HeaderName) -> bool {
    [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::CONTENT_LENGTH,
        header::UPGRADE,
        header::TE,
        header::TRAILER,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
    ]
    .contains(name)
        || name.as_str() == "keep-alive"
}
