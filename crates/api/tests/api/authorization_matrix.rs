//! The contract's access rules as one table: every role (and a caller with
//! no token) against every endpoint, for a resource in the caller's own
//! region and in another one. Each cell is the status the contract demands.

use crate::support::{spawn_app, TestApp, END, START};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Caller {
    Anonymous,
    Admin,
    NorthDispatcher,
    SouthDispatcher,
    Contractor,
}

/// One endpoint case: (name, method, path, body, back office, bound to the
/// north region, the status on success).
type Case = (&'static str, Method, String, Option<Value>, bool, bool, StatusCode);

const CALLERS: [Caller; 5] =
    [Caller::Anonymous, Caller::Admin, Caller::NorthDispatcher, Caller::SouthDispatcher, Caller::Contractor];

fn token(app: &TestApp, caller: Caller, contractor: Uuid) -> Option<String> {
    match caller {
        Caller::Anonymous => None,
        Caller::Admin => Some(app.admin()),
        Caller::NorthDispatcher => Some(app.dispatcher(&["north"])),
        Caller::SouthDispatcher => Some(app.dispatcher(&["south"])),
        Caller::Contractor => Some(app.contractor(contractor)),
    }
}

/// What the contract allows: 401 without a token; contractors never use the
/// back office; dispatchers create and assign jobs only in their regions.
fn expected(caller: Caller, back_office: bool, region_bound: bool, success: StatusCode) -> StatusCode {
    match caller {
        Caller::Anonymous => StatusCode::UNAUTHORIZED,
        Caller::Contractor if back_office => StatusCode::FORBIDDEN,
        Caller::SouthDispatcher if region_bound => StatusCode::FORBIDDEN,
        _ => success,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_gets_exactly_the_access_the_contract_gives_on_every_endpoint() {
    let app = spawn_app().await;
    let contractor: Value = app.create_contractor("north").await;
    let contractor_id = contractor["id"].as_str().unwrap().to_owned();
    let contractor_uuid = Uuid::parse_str(&contractor_id).unwrap();
    let event_job = app.job_id("north").await;
    let event = app.assign_ok(&event_job, &contractor_id, START, END).await;
    let event_id = event["eventId"].as_str().unwrap().to_owned();

    let mut failures = Vec::new();
    for caller in CALLERS {
        let tok = token(&app, caller, contractor_uuid);
        // (name, method, path, body, back office, bound to the north region, success)
        let job = app.job_id("north").await;
        let other_contractor = app.contractor_id("north").await;
        let cases: Vec<Case> = vec![
            (
                "create contractor",
                Method::POST,
                "/api/contractors".into(),
                Some(json!({"name": "X", "region": "north"})),
                true,
                false,
                StatusCode::CREATED,
            ),
            (
                "get contractor",
                Method::GET,
                format!("/api/contractors/{contractor_id}"),
                None,
                true,
                false,
                StatusCode::OK,
            ),
            (
                "list contractors",
                Method::GET,
                "/api/contractors?region=north".into(),
                None,
                true,
                false,
                StatusCode::OK,
            ),
            (
                "create north job",
                Method::POST,
                "/api/jobs".into(),
                Some(json!({"jobType": "Tile", "region": "north", "durationMinutes": 30})),
                true,
                true,
                StatusCode::CREATED,
            ),
            ("get job", Method::GET, format!("/api/jobs/{job}"), None, true, false, StatusCode::OK),
            ("list jobs", Method::GET, "/api/jobs?region=north".into(), None, true, false, StatusCode::OK),
            (
                "assign north job",
                Method::POST,
                format!("/api/jobs/{job}/assign"),
                Some(json!({"contractorId": other_contractor, "startUtc": START, "endUtc": END})),
                true,
                true,
                StatusCode::CREATED,
            ),
            ("list events", Method::GET, "/api/events".into(), None, true, false, StatusCode::OK),
            ("get event", Method::GET, format!("/api/events/{event_id}"), None, true, false, StatusCode::OK),
        ];
        for (name, method, path, body, back_office, region_bound, success) in cases {
            let want = expected(caller, back_office, region_bound, success);
            let mut request = app.request(method, &path, tok.as_deref());
            if let Some(body) = body {
                request = request.json(&body);
            }
            let got = request.send().await.unwrap().status();
            if got != want {
                failures.push(format!("{caller:?} {name}: got {got}, want {want}"));
            }
        }
        // Retry is Admin-only (409 for an event that is not Failed).
        let retry =
            app.request(Method::POST, &format!("/api/events/{event_id}/retry"), tok.as_deref()).send().await.unwrap();
        let want = match caller {
            Caller::Anonymous => StatusCode::UNAUTHORIZED,
            Caller::Admin => StatusCode::CONFLICT,
            _ => StatusCode::FORBIDDEN,
        };
        if retry.status() != want {
            failures.push(format!("{caller:?} retry: got {}, want {want}", retry.status()));
        }
        // Anyone may read health and metrics.
        for path in ["/health/live", "/health/ready", "/metrics"] {
            let got = app.request(Method::GET, path, tok.as_deref()).send().await.unwrap().status();
            if got != StatusCode::OK {
                failures.push(format!("{caller:?} {path}: got {got}"));
            }
        }
    }
    assert!(failures.is_empty(), "access rules broken:\n{}", failures.join("\n"));
}
