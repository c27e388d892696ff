//! The OpenAPI 3.1 document, served at `GET /api/openapi.json`.
//!
//! Generated from the code with utoipa: each handler carries its
//! `#[utoipa::path]` (method, path, parameters, body and every answer it can
//! give), request bodies and queries derive their schemas from the very types
//! the handlers deserialize, and the response shapes below mirror what the
//! domain types serialize to (the domain has no framework types, so the
//! mirrors live here). Two tests keep the document honest: one checks that it
//! describes exactly the routes the server registers ([`crate::http::ROUTES`]),
//! and a property-based run of schemathesis against the running service
//! (`tests/openapi/run.sh`) checks every answer against it.

use std::sync::OnceLock;

use actix_web::HttpResponse;
use serde::Serialize;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::http;

/// The document's root: every documented route and schema.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "SmartScheduler events",
        description = "Contractors, jobs, assignments and the EventLog of SmartScheduler, plus the HTTP side \
                       of the real-time hub (ASP.NET Core SignalR protocol). Errors are \
                       `application/problem+json`. Authenticate with `Authorization: Bearer TOKEN` (a JWT; \
                       see the README).",
        license(name = "MIT")
    ),
    paths(
        http::contractors::create,
        http::contractors::list,
        http::contractors::get,
        http::contractors::assignments,
        http::jobs::create,
        http::jobs::list,
        http::jobs::get,
        http::jobs::assign,
        http::assignments::get,
        http::presence::get,
        http::events::list,
        http::events::get,
        http::events::retry,
        http::health::live,
        http::health::ready,
        http::metrics::render,
        http::console::index,
        http::console::console_js,
        http::console::console_css,
        http::console::signalr_js,
        http::console::signalr_msgpack_js,
        http::console::events_client_js,
        document,
        hub_negotiate,
        hub_connect,
        hub_send,
        hub_delete,
    ),
    components(schemas(Problem)),
    modifiers(&BearerAuth, &CommonProblems),
    tags(
        (name = "contractors", description = "Contractors, each working in one region."),
        (name = "jobs", description = "Jobs and their assignment (which publishes JobAssigned)."),
        (name = "assignments", description = "Assignments and whether their contractor has acknowledged them."),
        (name = "events", description = "The EventLog: every event, its groups and its delivery state."),
        (name = "hub", description = "The real-time hub's HTTP endpoints (SignalR negotiate and the WebSocket)."),
        (name = "operations", description = "Health, metrics, this document and the console."),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut scheme = Http::new(HttpAuthScheme::Bearer);
        scheme.bearer_format = Some("JWT".into());
        scheme.description = Some(
            "A JWT with `sub`, `role` (Admin, Dispatcher or Contractor), `regions` (dispatchers) or \
             `contractorId` (contractors), and `exp`."
                .into(),
        );
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// Every authenticated `/api` operation may answer 400 (a query, header or
/// body that is not valid), 401, 403 and 503, and one with a body 413 and
/// 415: added here once rather than on each handler. (A method a path does
/// not have is a 405 with `Allow`.)
struct CommonProblems;

impl Modify for CommonProblems {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, HeaderBuilder, Ref, ResponseBuilder};
        let problem = |description: &str, header: Option<(&str, &str)>| {
            let mut response = ResponseBuilder::new().description(description).content(
                "application/problem+json",
                ContentBuilder::new().schema(Some(Ref::from_schema_name("Problem"))).build(),
            );
            if let Some((name, about)) = header {
                response = response.header(
                    name,
                    HeaderBuilder::new()
                        .schema(utoipa::openapi::ObjectBuilder::new().schema_type(utoipa::openapi::Type::String))
                        .description(Some(about))
                        .build(),
                );
            }
            response.build()
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            if !path.starts_with("/api/") || path == "/api/openapi.json" {
                continue;
            }
            for operation in [&mut item.get, &mut item.post].into_iter().flatten() {
                let has_body = operation.request_body.is_some();
                let responses = &mut operation.responses.responses;
                let mut add = |status: &str, response: utoipa::openapi::Response| {
                    responses.entry(status.to_owned()).or_insert_with(|| response.into());
                };
                add("400", problem("A query parameter, header or body that is not valid.", None));
                add("401", problem("No valid bearer token.", Some(("WWW-Authenticate", "`Bearer`"))));
                add("403", problem("The token's role or regions do not allow it.", None));
                add(
                    "503",
                    problem("The database does not answer; retry later.", Some(("Retry-After", "Seconds to wait."))),
                );
                if has_body {
                    add("413", problem("The body is larger than 64 KiB.", None));
                    add("415", problem("The body is not JSON.", None));
                }
            }
        }
    }
}

/// The document as JSON, built once.
pub fn json() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| ApiDoc::openapi().to_pretty_json().expect("the OpenAPI document serializes"))
}

/// This OpenAPI document.
#[utoipa::path(
    get,
    path = "/api/openapi.json",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document of this service.", content_type = "application/json", body = Object))
)]
pub async fn document() -> HttpResponse {
    HttpResponse::Ok().content_type("application/json").body(json())
}

/// `POST /hubs/jobs/negotiate`: documented here, served by the realtime crate.
#[utoipa::path(
    post,
    path = "/hubs/jobs/negotiate",
    tag = "hub",
    params(
        ("negotiateVersion" = Option<i32>, Query, description = "The client's negotiate version: absent or 0 is answered 0 (no `connectionToken`; the `connectionId` is the token), 1 and higher 1."),
        ("useStatefulReconnect" = Option<bool>, Query, description = "Ask for stateful reconnect."),
        ("access_token" = Option<String>, Query, description = "The bearer token, for clients that cannot set headers."),
    ),
    responses(
        (status = 200, description = "A connection id and single-use connection token for the WebSocket.", body = NegotiateResponse),
        (status = 400, description = "`negotiateVersion` is not a whole number, or the token's claims do not fit a hub connection.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token.", body = Problem, content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 429, description = "Too many negotiations or connections for this user.", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = String, description = "Seconds to wait."))),
    ),
    security(("bearer" = []))
)]
#[allow(dead_code)]
fn hub_negotiate() {}

/// `GET /hubs/jobs`: the WebSocket, the Server-Sent Events stream or a Long
/// Polling poll; documented here, served by the realtime crate.
#[utoipa::path(
    get,
    path = "/hubs/jobs",
    tag = "hub",
    params(
        ("id" = Option<String>, Query, description = "The connection token from negotiate (absent with skipNegotiation, WebSockets only)."),
        ("access_token" = Option<String>, Query, description = "The bearer token, for browsers."),
    ),
    responses(
        (status = 101, description = "Switched to the WebSocket: the SignalR handshake follows."),
        (status = 200, description = "Long Polling: the records queued (empty: poll again). With `Accept: text/event-stream`: the event stream.",
            content_type = "text/plain"),
        (status = 204, description = "Long Polling: the connection is over."),
        (status = 400, description = "A broken WebSocket upgrade, or no `id` without a WebSocket.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The connection's event stream is already open.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token.", body = Problem, content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 403, description = "The token is not the one that negotiated this connection.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown, used or expired connection token: negotiate again.", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many connections for this user.", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = String, description = "Seconds to wait."))),
    ),
    security(("bearer" = []))
)]
#[allow(dead_code)]
fn hub_connect() {}

/// `POST /hubs/jobs?id=TOKEN`: what a Long Polling or SSE client sends.
#[utoipa::path(
    post,
    path = "/hubs/jobs",
    tag = "hub",
    params(
        ("id" = Option<String>, Query, description = "The connection token from negotiate."),
        ("access_token" = Option<String>, Query, description = "The bearer token, for browsers."),
    ),
    request_body(content = String, content_type = "text/plain", description = "Whole hub protocol records."),
    responses(
        (status = 200, description = "Taken."),
        (status = 400, description = "No `id`.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token.", body = Problem, content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 403, description = "The token is not the one that negotiated this connection.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such connection (ended, or never opened).", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Another send of this connection is in progress.", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "More than the largest message accepted.", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[allow(dead_code)]
fn hub_send() {}

/// `DELETE /hubs/jobs?id=TOKEN`: ends a Long Polling connection.
#[utoipa::path(
    delete,
    path = "/hubs/jobs",
    tag = "hub",
    params(
        ("id" = Option<String>, Query, description = "The connection token from negotiate."),
        ("access_token" = Option<String>, Query, description = "The bearer token, for browsers."),
    ),
    responses(
        (status = 202, description = "Ended; a waiting poll gets 204."),
        (status = 400, description = "No `id`, or not a Long Polling connection.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token.", body = Problem, content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 403, description = "The token is not the one that negotiated this connection.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such connection.", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[allow(dead_code)]
fn hub_delete() {}

/// An error: RFC 9457 problem details.
#[derive(Serialize, ToSchema)]
pub struct Problem {
    /// A URI reference naming the kind of problem, e.g. `/problems/validation`.
    #[serde(rename = "type")]
    pub kind: String,
    /// A short summary of the kind.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong with this request.
    pub detail: String,
}

/// A contractor.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Contractor {
    #[schema(format = Uuid)]
    id: String,
    name: String,
    region: String,
    skills: Vec<String>,
    #[schema(format = DateTime)]
    created_at_utc: String,
}

/// The status of a job.
#[derive(Serialize, ToSchema)]
pub enum JobStatus {
    /// Waiting for a contractor.
    Unassigned,
    /// Has one.
    Assigned,
}

/// A job.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Job {
    #[schema(format = Uuid)]
    id: String,
    job_type: String,
    title: Option<String>,
    region: String,
    #[schema(minimum = 1)]
    duration_minutes: i64,
    #[schema(format = DateTime)]
    desired_start_utc: Option<String>,
    address: Option<String>,
    status: JobStatus,
    #[schema(format = DateTime)]
    created_at_utc: String,
}

/// Who or what made an assignment.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AssignmentSource {
    /// A dispatcher.
    Manual,
    /// An automatic matcher.
    Auto,
}

/// An assignment of a job to a contractor.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Assignment {
    #[schema(format = Uuid)]
    assignment_id: String,
    #[schema(format = Uuid)]
    job_id: String,
    #[schema(format = Uuid)]
    contractor_id: String,
    #[schema(format = DateTime)]
    start_utc: String,
    #[schema(format = DateTime)]
    end_utc: String,
    source: AssignmentSource,
    #[schema(format = Uuid)]
    audit_id: Option<String>,
    region: String,
    #[schema(format = DateTime)]
    created_at_utc: String,
    /// The JobAssigned event this assignment published.
    #[schema(format = Uuid)]
    event_id: String,
}

/// Where an assignment's acknowledgement stands.
#[derive(Serialize, ToSchema)]
pub enum AcknowledgementStatus {
    /// Not acknowledged; the deadline (if any) is ahead.
    Pending,
    /// Acknowledged by the contractor (before or after the deadline).
    Acknowledged,
    /// Not acknowledged, and the deadline has passed.
    Overdue,
}

/// Whether the contractor has acknowledged an assignment.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Acknowledgement {
    status: AcknowledgementStatus,
    /// The first acknowledgement's time.
    #[schema(format = DateTime)]
    acknowledged_at_utc: Option<String>,
    /// When dispatchers are told it has not come (null: no deadline).
    #[schema(format = DateTime)]
    deadline_utc: Option<String>,
}

/// An assignment with its acknowledgement.
#[derive(Serialize, ToSchema)]
pub struct AssignmentWithAcknowledgement {
    #[serde(flatten)]
    assignment: Assignment,
    acknowledgement: Acknowledgement,
}

/// One contractor's presence.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContractorPresence {
    #[schema(format = Uuid)]
    contractor_id: String,
    name: String,
    /// Connected to the hub now, or within the grace after its last connection closed.
    online: bool,
    /// Its open hub connections.
    connections: u32,
    /// Last seen connected (now while connected); null when never seen.
    #[schema(format = DateTime)]
    last_seen_utc: Option<String>,
}

/// Every contractor of a region with its presence.
#[derive(Serialize, ToSchema)]
pub struct RegionPresence {
    region: String,
    contractors: Vec<ContractorPresence>,
}

/// An assignment with the job it gives.
#[derive(Serialize, ToSchema)]
pub struct AssignmentWithJob {
    #[serde(flatten)]
    assignment: Assignment,
    job: Job,
}

/// A contractor's assignments, newest first.
#[derive(Serialize, ToSchema)]
pub struct ContractorAssignments {
    items: Vec<AssignmentWithJob>,
}

/// The job as it stands in a JobAssigned payload.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobSnapshot {
    #[schema(format = Uuid)]
    id: String,
    job_type: String,
    title: Option<String>,
    region: String,
    status: JobStatus,
    duration_minutes: i64,
    /// When the customer would like it to start (null when unset).
    #[schema(format = DateTime)]
    desired_start_utc: Option<String>,
    /// Where it is (null when unset).
    address: Option<String>,
}

/// The JobAssigned payload (schemaVersion 1), as the hub sends it and the
/// EventLog shows it; `sequence` is null until the event is published.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobAssignedPayload {
    /// `JobAssigned`.
    #[serde(rename = "type")]
    kind: String,
    schema_version: u32,
    #[schema(format = Uuid)]
    event_id: String,
    sequence: Option<i64>,
    #[schema(format = DateTime)]
    occurred_at_utc: String,
    #[schema(format = Uuid)]
    job_id: String,
    #[schema(format = Uuid)]
    contractor_id: String,
    #[schema(format = Uuid)]
    assignment_id: String,
    #[schema(format = DateTime)]
    start_utc: String,
    #[schema(format = DateTime)]
    end_utc: String,
    region: String,
    source: AssignmentSource,
    #[schema(format = Uuid)]
    audit_id: Option<String>,
    job: JobSnapshot,
}

/// The delivery state of an EventLog row.
#[derive(Serialize, ToSchema)]
pub enum EventStatus {
    /// Committed, not yet delivered (or waiting for a retry).
    Pending,
    /// Delivered to every handler.
    Published,
    /// Gave up after the last attempt; an admin may retry it.
    Failed,
}

/// One EventLog row.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventLogEntry {
    #[schema(format = Uuid)]
    event_id: String,
    event_type: String,
    /// Its place in publish order; null until published.
    sequence: Option<i64>,
    status: EventStatus,
    attempts: u32,
    #[schema(format = DateTime)]
    occurred_at_utc: String,
    #[schema(format = DateTime)]
    published_at_utc: Option<String>,
    /// `dispatch/{region}` and `contractor/{contractorId}`.
    published_groups: Vec<String>,
    last_error: Option<String>,
    payload: JobAssignedPayload,
}

/// A page of the EventLog.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventPage {
    items: Vec<EventLogEntry>,
    /// Pass as `afterSequence` to get the next page of published events.
    next_after_sequence: i64,
}

/// `GET /health/live`.
#[derive(Serialize, ToSchema)]
pub struct Liveness {
    /// `live`.
    status: String,
}

/// `GET /health/ready`.
#[derive(Serialize, ToSchema)]
pub struct Readiness {
    /// `ready`, or `degraded` when Redis is configured and down.
    status: String,
    /// `up`.
    database: String,
    /// `up` or `down`; only with Redis configured.
    redis: Option<String>,
}

/// One transport the hub offers.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Transport {
    /// `WebSockets`.
    transport: String,
    /// `["Text"]`.
    transfer_formats: Vec<String>,
}

/// The answer to negotiate (SignalR negotiate version 0 or 1).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NegotiateResponse {
    /// 0 when the request named none (or 0), else 1.
    negotiate_version: i32,
    /// Version 1: the public id. Version 0: the single-use connection token, passed as `id`.
    connection_id: String,
    /// Version 1 only. Single-use, short-lived: pass as `id` to `GET /hubs/jobs`.
    connection_token: Option<String>,
    available_transports: Vec<Transport>,
    /// Present (true) when stateful reconnect was asked for and is on.
    use_stateful_reconnect: Option<bool>,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use super::json;
    use crate::http;

    const METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

    #[test]
    fn the_document_is_openapi_3_1_and_describes_exactly_the_routes_the_server_registers() {
        let doc: Value = serde_json::from_str(json()).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let documented: BTreeSet<(String, String)> = doc["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(path, item)| {
                METHODS.iter().filter(|m| item.get(**m).is_some()).map(move |m| (m.to_ascii_uppercase(), path.clone()))
            })
            .collect();
        let registered: BTreeSet<(String, String)> = http::ROUTES
            .iter()
            .chain(smartscheduler_realtime::http::ROUTES.iter())
            .copied()
            .chain(http::console::routes())
            .map(|(m, p)| (m.to_owned(), p.to_owned()))
            .collect();
        let undocumented: Vec<_> = registered.difference(&documented).collect();
        let not_served: Vec<_> = documented.difference(&registered).collect();
        assert!(undocumented.is_empty(), "routes missing from the document: {undocumented:?}");
        assert!(not_served.is_empty(), "documented but not registered: {not_served:?}");
    }

    #[test]
    fn every_operation_has_an_id_a_tag_and_documents_its_answers() {
        let doc: Value = serde_json::from_str(json()).unwrap();
        // Unique: tools that follow links by operationId (schemathesis) must find the one meant.
        let mut ids = std::collections::BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in METHODS.iter().filter(|m| item.get(**m).is_some()) {
                let id = item[*method]["operationId"].as_str().unwrap_or_default().to_owned();
                assert!(ids.insert(id.clone()), "{method} {path}: operationId {id} is used twice");
            }
        }
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in METHODS.iter().filter(|m| item.get(**m).is_some()) {
                let op = &item[*method];
                assert!(op["operationId"].is_string(), "{method} {path}: no operationId");
                assert!(op["tags"].as_array().is_some_and(|t| !t.is_empty()), "{method} {path}: no tag");
                let responses = op["responses"].as_object().unwrap();
                assert!(responses.keys().any(|s| s.starts_with('2') || s == "101"), "{method} {path}: no success");
                if path.starts_with("/api/") && path != "/api/openapi.json" {
                    for status in ["400", "401", "403", "503"] {
                        assert!(responses.contains_key(status), "{method} {path}: {status} not documented");
                    }
                    assert_eq!(op["security"][0]["bearer"], serde_json::json!([]), "{method} {path}");
                }
                // Every problem answer points at the Problem schema.
                for (status, response) in responses {
                    if let Some(problem) = response["content"].get("application/problem+json") {
                        assert_eq!(
                            problem["schema"]["$ref"], "#/components/schemas/Problem",
                            "{method} {path} {status}"
                        );
                    }
                }
            }
        }
        assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    }
}
