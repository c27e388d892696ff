//! The hub's HTTP side: `POST /hubs/jobs/negotiate?negotiateVersion=1` and
//! `GET /hubs/jobs[?id=TOKEN]` upgraded to a WebSocket. The bearer token comes
//! from `Authorization` or, for browsers, the `access_token` query parameter.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine;
use rand::RngCore;
use serde::Deserialize;
use serde_json::json;
use smartscheduler_application::{AuthError, ConnectionTicket, MAX_CONNECTION_TOKEN_LEN};
use smartscheduler_domain::{Principal, Timestamp};

use crate::upgrade::Takeover;
use crate::{connection, HubContext};

/// The hub's path.
pub const HUB_PATH: &str = "/hubs/jobs";

/// The negotiate endpoint's path.
pub const NEGOTIATE_PATH: &str = "/hubs/jobs/negotiate";

/// The hub's routes as (method, path): `configure` registers these, and only these.
pub const ROUTES: [(&str, &str); 2] = [("POST", NEGOTIATE_PATH), ("GET", HUB_PATH)];

/// Registers the hub routes; another method on them is a 405 problem.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource(ROUTES[0].1)
            .route(web::post().to(negotiate))
            .default_service(web::to(|| async { method_not_allowed(ROUTES[0].0) })),
    )
    .service(
        web::resource(ROUTES[1].1)
            .route(web::get().to(connect))
            .default_service(web::to(|| async { method_not_allowed(ROUTES[1].0) })),
    );
}

fn method_not_allowed(allowed: &'static str) -> HttpResponse {
    let mut response =
        problem(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed", &format!("this path answers {allowed}"));
    response.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static(allowed));
    response
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct HubQuery {
    id: Option<String>,
    #[serde(rename = "access_token")]
    access_token: Option<String>,
    use_stateful_reconnect: Option<String>,
    negotiate_version: Option<String>,
}

fn problem(status: StatusCode, title: &str, detail: &str) -> HttpResponse {
    let mut response = HttpResponse::build(status);
    response.insert_header((header::CONTENT_TYPE, "application/problem+json"));
    if status == StatusCode::UNAUTHORIZED {
        response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
    }
    let slug = title.to_ascii_lowercase().replace(' ', "-");
    response.body(
        json!({ "type": format!("/problems/{slug}"), "title": title, "status": status.as_u16(), "detail": detail })
            .to_string(),
    )
}

fn query(req: &HttpRequest) -> HubQuery {
    web::Query::<HubQuery>::from_query(req.query_string()).map(web::Query::into_inner).unwrap_or_default()
}

fn authenticate(ctx: &HubContext, req: &HttpRequest, query: &HubQuery) -> Result<Principal, AuthError> {
    let header_token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim().to_owned());
    let token =
        header_token.or_else(|| query.access_token.clone()).filter(|t| !t.is_empty()).ok_or(AuthError::Missing)?;
    ctx.verifier.verify(&token)
}

fn too_many(detail: &str) -> HttpResponse {
    let mut response = problem(StatusCode::TOO_MANY_REQUESTS, "Too many requests", detail);
    response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("60"));
    response
}

fn unavailable() -> HttpResponse {
    let mut response = problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "Service unavailable",
        "The connection could not be opened now; try again.",
    );
    response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    response
}

fn unauthorized(err: &AuthError) -> HttpResponse {
    problem(StatusCode::UNAUTHORIZED, "Unauthorized", &err.to_string())
}

/// 16 random bytes, base64url: URL-safe without encoding, as ASP.NET makes them.
fn random_id() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The negotiate protocol version to answer: 0 when the client names none (as the
/// spec says), the client's own when we know it, else our highest (1).
///
/// # Errors
/// The problem's detail when the value is not a whole number.
pub fn negotiate_version(requested: Option<&str>) -> Result<u8, &'static str> {
    match requested {
        None => Ok(0),
        Some(text) => match text.parse::<u64>() {
            Ok(version) => Ok(version.min(1) as u8),
            Err(_) => Err("'negotiateVersion' must be a whole number (0 or 1)"),
        },
    }
}

/// Negotiate: authenticates, then hands out a connection id and a signed,
/// short-lived connection token for the WebSocket URL, valid on any node. Only WebSockets with
/// the Text format is offered. `useStatefulReconnect` is answered only when
/// the client asked for it (the client refuses it otherwise).
///
/// Version 0 (no `negotiateVersion`, as third-party clients send) has no
/// `connectionToken`: the client puts `connectionId` in `id`, so there the
/// signed token itself is the `connectionId`. Stateful reconnect needs version 1.
pub async fn negotiate(req: HttpRequest, ctx: web::Data<HubContext>) -> HttpResponse {
    let query = query(&req);
    let version = match negotiate_version(query.negotiate_version.as_deref()) {
        Ok(version) => version,
        Err(detail) => return problem(StatusCode::BAD_REQUEST, "Bad request", detail),
    };
    let principal = match authenticate(&ctx, &req, &query) {
        Ok(p) => p,
        Err(err) => return unauthorized(&err),
    };
    if !ctx.limits.allow_negotiate(&principal.subject) {
        return too_many("Too many negotiations for this user; wait a minute.");
    }
    let stateful =
        version >= 1 && ctx.config.allow_stateful_reconnect && query.use_stateful_reconnect.as_deref() == Some("true");
    let connection_id = random_id();
    // Signed and self-contained: the WebSocket may land on any node.
    let ticket = ConnectionTicket { connection_id: connection_id.clone(), principal, stateful };
    let token = ctx.tickets.issue(&ticket, ctx.config.negotiate_ttl);
    if token.len() > MAX_CONNECTION_TOKEN_LEN {
        // The WebSocket would refuse it: say so now rather than loop.
        return problem(
            StatusCode::BAD_REQUEST,
            "Bad request",
            "the bearer token's claims are too large for a hub connection",
        );
    }
    let transports = json!([{ "transport": "WebSockets", "transferFormats": ["Text"] }]);
    let mut body = if version == 0 {
        json!({ "negotiateVersion": 0, "connectionId": token, "availableTransports": transports })
    } else {
        json!({
            "negotiateVersion": 1,
            "connectionId": connection_id,
            "connectionToken": token,
            "availableTransports": transports
        })
    };
    if stateful {
        body["useStatefulReconnect"] = json!(true);
    }
    HttpResponse::Ok().json(body)
}

/// Checks a token presented on the WebSocket against the negotiated subject;
/// a missing token is fine (the connection token is itself a secret). The
/// refusal is boxed: it is the rare path, and a response is large.
fn same_subject(
    ctx: &HubContext,
    req: &HttpRequest,
    query: &HubQuery,
    negotiated: &Principal,
) -> Result<Principal, Box<HttpResponse>> {
    match authenticate(ctx, req, query) {
        Ok(p) if p.subject == negotiated.subject => Ok(p),
        Ok(_) => Err(Box::new(problem(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "the token does not match the negotiated connection",
        ))),
        Err(AuthError::Missing) => Ok(negotiated.clone()),
        Err(err) => Err(Box::new(unauthorized(&err))),
    }
}

enum Attach {
    New { principal: Principal, token: Option<String>, stateful: bool },
    Resume(Box<crate::connection::Conn>),
}

/// How long a reattach waits for the live connection it takes over to let
/// go of its old socket.
const TAKEOVER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The stateful connection of this token, parked or taken over from its
/// old socket; `None` when there is none (or it did not let go in time: it
/// is parked then, for the client's next try).
async fn reattach(ctx: &HubContext, token: &str) -> Option<Box<crate::connection::Conn>> {
    tokio::time::timeout(TAKEOVER_TIMEOUT, ctx.hub.reattach(token.to_owned())).await.ok()?.ok()?
}

/// The WebSocket: with `id`, the connection negotiated before, or a
/// stateful connection coming back, parked or with its old socket still
/// open (404 when unknown, used or expired); without, a new one
/// (skipNegotiation).
pub async fn connect(req: HttpRequest, ctx: web::Data<HubContext>) -> HttpResponse {
    let query = query(&req);
    // Only a WebSocket upgrade may use (and so burn) a connection token.
    let upgrade = req.headers().get(header::UPGRADE).and_then(|v| v.to_str().ok());
    if !upgrade.is_some_and(|v| v.eq_ignore_ascii_case("websocket")) {
        return problem(StatusCode::BAD_REQUEST, "Bad request", "this endpoint expects a WebSocket upgrade");
    }
    let attach = match &query.id {
        Some(id) => {
            if let Some(conn) = reattach(&ctx, id).await {
                if let Err(response) = same_subject(&ctx, &req, &query, conn.principal()) {
                    // Not this caller's connection: its own client may still resume it.
                    let _ = ctx.hub.park(id.clone(), conn).await;
                    return *response;
                }
                Attach::Resume(conn)
            } else if let Some(ticket) = ctx.tickets.redeem(id) {
                // Checked before the token is marked used: a refused caller
                // must not use up the owner's token.
                let principal = match same_subject(&ctx, &req, &query, &ticket.principal) {
                    Ok(principal) => principal,
                    Err(response) => return *response,
                };
                // At least as long as the token lives: it was issued before now.
                let ttl = i64::try_from(ctx.config.negotiate_ttl.as_millis()).unwrap_or(i64::MAX);
                let until = Timestamp::now().plus_millis(ttl);
                match ctx.used_tokens.mark_used(&ticket.connection_id, until).await {
                    Ok(true) => Attach::New { principal, token: Some(id.clone()), stateful: ticket.stateful },
                    Ok(false) => {
                        return problem(
                            StatusCode::NOT_FOUND,
                            "Not found",
                            "This connection token was already used: negotiate again.",
                        )
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "could not record a connection token's use");
                        return unavailable();
                    }
                }
            } else {
                return problem(StatusCode::NOT_FOUND, "Not found", "No connection with that ID: negotiate again.");
            }
        }
        None => match authenticate(&ctx, &req, &query) {
            Ok(principal) if ctx.limits.allow_negotiate(&principal.subject) => {
                Attach::New { principal, token: None, stateful: false }
            }
            Ok(_) => return too_many("Too many connection attempts for this user; wait a minute."),
            Err(err) => return unauthorized(&err),
        },
    };
    let permit = match &attach {
        Attach::New { principal, .. } => match ctx.limits.open_connection(&principal.subject) {
            Some(permit) => Some(permit),
            None => return too_many("Too many open connections for this user."),
        },
        Attach::Resume(_) => None,
    };
    let mut response = match actix_http::ws::handshake(req.head()) {
        Ok(mut switching) => HttpResponse::from(switching.finish()).map_into_boxed_body(),
        Err(_) => {
            if let Attach::Resume(parked) = attach {
                if let Some(id) = &query.id {
                    let _ = ctx.hub.park(id.clone(), parked).await;
                }
            }
            return problem(StatusCode::BAD_REQUEST, "Bad request", "this endpoint expects a WebSocket upgrade");
        }
    };
    let ctx = ctx.get_ref().clone();
    // The upgrade service runs this on the socket once the 101 is written,
    // on one of the hub's socket threads (see `crate::upgrade`).
    let max = ctx.config.max_message_bytes;
    let takeover = match attach {
        Attach::New { principal, token, stateful } => {
            let permit = permit.expect("a new connection has a permit");
            Takeover::new(max, move |ws| {
                Box::pin(async move {
                    if let Some(ws) = ws {
                        connection::run(ctx, principal, ws, token, stateful, permit).await;
                    }
                })
            })
        }
        Attach::Resume(parked) => Takeover::new(max, move |ws| Box::pin(connection::resume(parked, ws))),
    };
    response.extensions_mut().insert(takeover);
    response
}

#[cfg(test)]
mod tests {
    use super::negotiate_version;

    #[test]
    fn negotiate_version_is_0_when_absent_and_at_most_1() {
        assert_eq!(negotiate_version(None), Ok(0));
        assert_eq!(negotiate_version(Some("0")), Ok(0));
        assert_eq!(negotiate_version(Some("1")), Ok(1));
        assert_eq!(negotiate_version(Some("99999999999999999999")).ok(), None, "past u64 is refused, not wrapped");
        assert_eq!(negotiate_version(Some("2")), Ok(1));
        for bad in ["", "-1", "1.0", "one", " 1"] {
            assert!(negotiate_version(Some(bad)).is_err(), "{bad:?}");
        }
    }
}
