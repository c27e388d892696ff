//! The hub's HTTP side: `POST /hubs/jobs/negotiate?negotiateVersion=1`, and
//! `/hubs/jobs?id=TOKEN`, where the transport is picked: `GET` upgraded to a
//! WebSocket, `GET` with `Accept: text/event-stream` for Server-Sent Events,
//! any other `GET` a Long Polling poll; `POST` carries what a Long Polling
//! or SSE client sends, and `DELETE` ends a Long Polling connection. The
//! bearer token comes from `Authorization` or, for browsers, the
//! `access_token` query parameter.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine;
use std::sync::Arc;

use bytes::Bytes;
use rand::RngCore;
use serde::Deserialize;
use serde_json::json;
use smartscheduler_application::{AuthError, ConnectionTicket, MAX_CONNECTION_TOKEN_LEN};
use smartscheduler_domain::{Chain, Principal, Timestamp};
use smartscheduler_problem::Problem;

use crate::connection::{self, Opening};
use crate::forward;
use crate::hub::Fanout;
use crate::transport::actix_ws::ActixWebSocket;
use crate::transport::dedicated::{DedicatedSocket, Takeover};
use crate::transport::http_session::HttpSession;
use crate::transport::long_polling::{LongPolling, PollAnswer, Polls};
use crate::transport::sse::ServerSentEvents;
use crate::{HubContext, WebSocketAdapter};

/// The hub's path.
pub const HUB_PATH: &str = "/hubs/jobs";

/// The negotiate endpoint's path.
pub const NEGOTIATE_PATH: &str = "/hubs/jobs/negotiate";

/// The hub's routes as (method, path): `configure` registers these, and only these.
pub const ROUTES: [(&str, &str); 4] =
    [("POST", NEGOTIATE_PATH), ("GET", HUB_PATH), ("POST", HUB_PATH), ("DELETE", HUB_PATH)];

/// The hub's fan-out task on one HTTP worker, for the connections that run
/// there (actix-ws, Long Polling, SSE): started by the first of them. Each
/// worker builds its own application, and so its own `WorkerFanout`.
#[derive(Default)]
pub struct WorkerFanout(std::cell::OnceCell<Fanout>);

impl WorkerFanout {
    fn get(&self, ctx: &HubContext) -> Fanout {
        self.0.get_or_init(|| ctx.hub.start_fanout()).clone()
    }
}

/// Registers the hub routes (and the worker's [`WorkerFanout`]); another
/// method on them is a 405 problem.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::Data::new(WorkerFanout::default()))
        .service(
            web::resource(ROUTES[0].1)
                .route(web::post().to(negotiate))
                .default_service(web::to(|| async { method_not_allowed(ROUTES[0].0) })),
        )
        .service(
            web::resource(HUB_PATH)
                .route(web::get().to(connect))
                .route(web::post().to(send))
                .route(web::delete().to(delete))
                .default_service(web::to(|| async { method_not_allowed("GET, POST, DELETE") })),
        );
}

fn method_not_allowed(allowed: &'static str) -> HttpResponse {
    Problem::titled(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed", format!("this path answers {allowed}"))
        .allow(allowed)
        .response()
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

pub(crate) fn problem(status: StatusCode, title: &str, detail: &str) -> HttpResponse {
    Problem::titled(status, title, detail).response()
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
    Problem::titled(StatusCode::TOO_MANY_REQUESTS, "Too many requests", detail).retry_after("60").response()
}

fn unavailable() -> HttpResponse {
    let detail = "The connection could not be opened now; try again.";
    Problem::titled(StatusCode::SERVICE_UNAVAILABLE, "Service unavailable", detail).retry_after("1").response()
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
/// short-lived connection token for the transport's URL, valid on any node.
/// Every transport is offered, with the formats ASP.NET gives it. `useStatefulReconnect` is answered only when
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
    let ticket = ConnectionTicket {
        connection_id: connection_id.clone(),
        principal,
        stateful,
        home: ctx.config.node_url.clone(),
    };
    let token = ctx.tickets.issue(&ticket, ctx.config.negotiate_ttl);
    if token.len() > MAX_CONNECTION_TOKEN_LEN {
        // The WebSocket would refuse it: say so now rather than loop.
        return problem(
            StatusCode::BAD_REQUEST,
            "Bad request",
            "the bearer token's claims are too large for a hub connection",
        );
    }
    let transports = json!([
        { "transport": "WebSockets", "transferFormats": ["Text", "Binary"] },
        { "transport": "ServerSentEvents", "transferFormats": ["Text"] },
        { "transport": "LongPolling", "transferFormats": ["Text", "Binary"] }
    ]);
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
    New(Opening),
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

fn not_found() -> HttpResponse {
    problem(StatusCode::NOT_FOUND, "Not found", "No connection with that ID: negotiate again.")
}

fn missing_id() -> HttpResponse {
    problem(
        StatusCode::BAD_REQUEST,
        "Bad request",
        "'id' is required: Long Polling and Server-Sent Events need the connection token negotiate gave (only WebSockets may skip negotiation)",
    )
}

/// The negotiated connection of `id`, as a new connection: the caller must
/// be its subject, and the token is used up here.
async fn redeem(ctx: &HubContext, req: &HttpRequest, query: &HubQuery, id: &str) -> Result<Opening, HttpResponse> {
    let Some(ticket) = ctx.tickets.redeem(id) else {
        return Err(not_found());
    };
    // Checked before the token is marked used: a refused caller must not
    // use up the owner's token.
    let principal = same_subject(ctx, req, query, &ticket.principal).map_err(|response| *response)?;
    // At least as long as the token lives: it was issued before now.
    let ttl = i64::try_from(ctx.config.negotiate_ttl.as_millis()).unwrap_or(i64::MAX);
    let until = Timestamp::now().plus_millis(ttl);
    match ctx.used_tokens.mark_used(&ticket.connection_id, until).await {
        Ok(true) => {}
        Ok(false) => {
            return Err(problem(
                StatusCode::NOT_FOUND,
                "Not found",
                "This connection token was already used: negotiate again.",
            ))
        }
        Err(err) => {
            tracing::warn!(error = %Chain(&err), "could not record a connection token's use");
            return Err(unavailable());
        }
    }
    let permit = ctx
        .limits
        .open_connection(&principal.subject)
        .ok_or_else(|| too_many("Too many open connections for this user."))?;
    Ok(Opening { principal, token: Some(id.to_owned()), stateful_negotiated: ticket.stateful, permit })
}

fn is_websocket(req: &HttpRequest) -> bool {
    let upgrade = req.headers().get(header::UPGRADE).and_then(|v| v.to_str().ok());
    upgrade.is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

fn wants_event_stream(req: &HttpRequest) -> bool {
    req.headers()
        .get_all(header::ACCEPT)
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|t| t.trim().starts_with("text/event-stream")))
}

/// `GET /hubs/jobs`: a WebSocket, an SSE stream or a Long Polling poll.
pub async fn connect(
    req: HttpRequest,
    payload: web::Payload,
    ctx: web::Data<HubContext>,
    worker: web::Data<WorkerFanout>,
) -> HttpResponse {
    let query = query(&req);
    if is_websocket(&req) {
        return websocket(req, payload, &ctx, &worker, query).await;
    }
    let Some(id) = query.id.clone() else {
        return missing_id();
    };
    if let Some(session) = ctx.sessions.get(&id) {
        if let Err(response) = same_subject(&ctx, &req, &query, session.principal()) {
            return *response;
        }
        return match session.polls.clone() {
            Some(polls) => poll_answer(polls.poll().await),
            None => problem(StatusCode::CONFLICT, "Conflict", "This connection's event stream is already open."),
        };
    }
    if let Some(home) = forward::elsewhere(&ctx, &req, &id) {
        return ctx.forwarder.forward(&home, &req, Bytes::new()).await;
    }
    let opening = match redeem(&ctx, &req, &query, &id).await {
        Ok(opening) => opening,
        Err(response) => return response,
    };
    let ctx = ctx.get_ref().clone();
    let fanout = worker.get(&ctx);
    let principal = opening.principal.clone();
    if wants_event_stream(&req) {
        let (session, bodies) = HttpSession::new(principal, None);
        ctx.sessions.insert(id.clone(), session.clone());
        let (transport, events) = ServerSentEvents::new(session, bodies, ctx.sessions.clone(), id);
        actix_web::rt::spawn(connection::run(ctx, fanout, opening, transport));
        return HttpResponse::Ok()
            .insert_header((header::CONTENT_TYPE, "text/event-stream"))
            .insert_header((header::CACHE_CONTROL, "no-cache"))
            .insert_header(("X-Accel-Buffering", "no"))
            .streaming(events);
    }
    let polls = Polls::new(
        ctx.config.poll_timeout,
        ctx.config.disconnect_timeout,
        ctx.config.outbound_capacity,
        ctx.config.outbound_max_bytes,
    );
    let (session, bodies) = HttpSession::new(principal, Some(polls));
    ctx.sessions.insert(id.clone(), session.clone());
    let transport = LongPolling::new(session, bodies, ctx.sessions.clone(), id);
    actix_web::rt::spawn(connection::run(ctx, fanout, opening, transport));
    // The first poll confirms the connection, at once.
    poll_response(StatusCode::OK, Bytes::new(), false)
}

fn poll_response(status: StatusCode, body: Bytes, binary: bool) -> HttpResponse {
    let content_type = if binary { "application/octet-stream" } else { "text/plain; charset=utf-8" };
    HttpResponse::build(status)
        .insert_header((header::CONTENT_TYPE, content_type))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(body)
}

fn poll_answer(answer: PollAnswer) -> HttpResponse {
    match answer {
        PollAnswer::Records { body, binary } => poll_response(StatusCode::OK, body, binary),
        PollAnswer::Nothing => poll_response(StatusCode::OK, Bytes::new(), false),
        // The session stays until its client has been gone a while (see
        // `LongPolling::close`): the official client's DELETE right after
        // its Close still finds it, and gets 202.
        PollAnswer::Over => HttpResponse::NoContent().finish(),
    }
}

/// Where the Long Polling or SSE connection a request's `id` names lives.
enum Found {
    /// Here, and the caller may use it.
    Here(String, Arc<HttpSession>),
    /// On another node: this URL.
    Elsewhere(String),
}

/// The Long Polling or SSE connection a request's `id` names; else the refusal.
fn live_session(req: &HttpRequest, ctx: &HubContext) -> Result<Found, Box<HttpResponse>> {
    let query = query(req);
    let Some(id) = query.id.clone() else {
        return Err(Box::new(missing_id()));
    };
    let Some(session) = ctx.sessions.get(&id) else {
        return match forward::elsewhere(ctx, req, &id) {
            Some(home) => Ok(Found::Elsewhere(home)),
            None => Err(Box::new(not_found())),
        };
    };
    same_subject(ctx, req, &query, session.principal())?;
    Ok(Found::Here(id, session))
}

/// `POST /hubs/jobs?id=TOKEN`: what a Long Polling or SSE client sends.
pub async fn send(req: HttpRequest, payload: web::Payload, ctx: web::Data<HubContext>) -> HttpResponse {
    let found = match live_session(&req, &ctx) {
        Ok(found) => found,
        Err(response) => return *response,
    };
    let max = ctx.config.max_message_bytes;
    let session = match found {
        Found::Here(_, session) => session,
        Found::Elsewhere(home) => {
            return match read_send(payload, max).await {
                Ok(body) => ctx.forwarder.forward(&home, &req, body).await,
                Err(response) => response,
            }
        }
    };
    let Some(claim) = session.start_send() else {
        return problem(StatusCode::CONFLICT, "Conflict", "Another send of this connection is in progress.");
    };
    let body = match read_send(payload, max).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    match claim.send(body).await {
        Ok(()) => HttpResponse::Ok().insert_header((header::CONTENT_TYPE, "text/plain")).finish(),
        Err(_) => not_found(),
    }
}

/// A send's body, at most `max` bytes.
async fn read_send(payload: web::Payload, max: usize) -> Result<Bytes, HttpResponse> {
    match payload.to_bytes_limited(max).await {
        Ok(Ok(body)) => Ok(body),
        Ok(Err(err)) => {
            Err(problem(StatusCode::BAD_REQUEST, "Bad request", &format!("the body could not be read: {err}")))
        }
        // The limit: the outer error.
        Err(_) => Err(problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Payload too large",
            &format!("A send carries at most {max} bytes."),
        )),
    }
}

/// `DELETE /hubs/jobs?id=TOKEN`: ends a Long Polling connection.
pub async fn delete(req: HttpRequest, ctx: web::Data<HubContext>) -> HttpResponse {
    let (id, session) = match live_session(&req, &ctx) {
        Ok(Found::Here(id, session)) => (id, session),
        Ok(Found::Elsewhere(home)) => return ctx.forwarder.forward(&home, &req, Bytes::new()).await,
        Err(response) => return *response,
    };
    let Some(polls) = session.polls.as_ref() else {
        return problem(
            StatusCode::BAD_REQUEST,
            "Bad request",
            "Cannot terminate this connection using the DELETE endpoint: it is not a Long Polling connection.",
        );
    };
    polls.delete();
    ctx.sessions.remove(&id, &session);
    HttpResponse::Accepted().insert_header((header::CONTENT_TYPE, "text/plain")).body("")
}

/// The WebSocket: with `id`, the connection negotiated before, or a
/// stateful connection coming back, parked or with its old socket still
/// open (404 when unknown, used or expired); without, a new one
/// (skipNegotiation).
async fn websocket(
    req: HttpRequest,
    payload: web::Payload,
    ctx: &web::Data<HubContext>,
    worker: &WorkerFanout,
    query: HubQuery,
) -> HttpResponse {
    let attach = match &query.id {
        Some(id) => {
            if let Some(conn) = reattach(ctx, id).await {
                if let Err(response) = same_subject(ctx, &req, &query, conn.principal()) {
                    // Not this caller's connection: its own client may still resume it.
                    let _ = ctx.hub.park(id.clone(), conn).await;
                    return *response;
                }
                Attach::Resume(conn)
            } else {
                match redeem(ctx, &req, &query, id).await {
                    Ok(opening) => Attach::New(opening),
                    Err(response) => return response,
                }
            }
        }
        None => match authenticate(ctx, &req, &query) {
            Ok(principal) if ctx.limits.allow_negotiate(&principal.subject) => {
                match ctx.limits.open_connection(&principal.subject) {
                    Some(permit) => Attach::New(Opening { principal, token: None, stateful_negotiated: false, permit }),
                    None => return too_many("Too many open connections for this user."),
                }
            }
            Ok(_) => return too_many("Too many connection attempts for this user; wait a minute."),
            Err(err) => return unauthorized(&err),
        },
    };
    let ctx = ctx.get_ref().clone();
    let max = ctx.config.max_message_bytes;
    match ctx.config.websocket {
        WebSocketAdapter::ActixWs => {
            let (response, session, messages) = match actix_ws::handle(&req, payload) {
                Ok(upgraded) => upgraded,
                Err(_) => return not_an_upgrade(&ctx, attach, query.id).await,
            };
            let transport = ActixWebSocket::new(session, messages, max);
            match attach {
                Attach::New(opening) => {
                    let fanout = worker.get(&ctx);
                    actix_web::rt::spawn(connection::run(ctx, fanout, opening, transport));
                }
                Attach::Resume(parked) => {
                    actix_web::rt::spawn(connection::resume(parked, Some(transport)));
                }
            }
            response
        }
        WebSocketAdapter::Dedicated => {
            let mut response = match actix_http::ws::handshake(req.head()) {
                Ok(mut switching) => HttpResponse::from(switching.finish()).map_into_boxed_body(),
                Err(_) => return not_an_upgrade(&ctx, attach, query.id).await,
            };
            // The upgrade service runs this on the socket once the 101 is
            // written, on one of the hub's socket threads (see
            // `crate::transport::dedicated`).
            let takeover = match attach {
                Attach::New(opening) => Takeover::new(max, move |socket| {
                    Box::pin(async move {
                        if let Some((ws, fanout)) = socket {
                            connection::run(ctx, fanout, opening, DedicatedSocket::new(ws)).await;
                        }
                    })
                }),
                Attach::Resume(parked) => Takeover::new(max, move |socket| {
                    Box::pin(connection::resume(parked, socket.map(|(ws, _)| DedicatedSocket::new(ws))))
                }),
            };
            response.extensions_mut().insert(takeover);
            response
        }
    }
}

/// A broken upgrade request: a parked connection taken for it is put back.
async fn not_an_upgrade(ctx: &HubContext, attach: Attach, id: Option<String>) -> HttpResponse {
    if let (Attach::Resume(parked), Some(id)) = (attach, id) {
        let _ = ctx.hub.park(id, parked).await;
    }
    problem(StatusCode::BAD_REQUEST, "Bad request", "this endpoint expects a WebSocket upgrade")
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
