//! `GET /api/assignments/{id}` with its acknowledgement, who may read it, and
//! the escalation of an assignment not acknowledged by its deadline (the
//! hub's `AcknowledgeEvent` is driven by the official client in
//! tests/e2e/acknowledgements.test.mjs).

use std::time::Duration;

use crate::support::{
    expect_json, expect_problem, id_of, is_utc_z, spawn_app, spawn_app_with, TestApp, END, SECRET, START,
};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use smartscheduler_api::ServeConfig;
use smartscheduler_application::HandlerRegistry;
use uuid::Uuid;

async fn get_assignment(app: &TestApp, token: Option<&str>, id: &str) -> reqwest::Response {
    app.request(Method::GET, &format!("/api/assignments/{id}"), token).send().await.expect("the request is sent")
}

fn millis(rfc3339: &Value) -> i128 {
    let text = rfc3339.as_str().expect("a time");
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .expect("an RFC 3339 time")
        .unix_timestamp_nanos()
        / 1_000_000
}

/// The published rows of `event_type`.
async fn published_of(app: &TestApp, event_type: &str) -> Vec<Value> {
    app.event_rows()
        .await
        .into_iter()
        .filter(|row| row["eventType"] == event_type && row["status"] == "Published")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assignment_reads_back_with_a_pending_acknowledgement_due_after_the_default_300_seconds() {
    let app = spawn_app().await;
    let contractor = app.contractor_id("north").await;
    let job = app.job_id("north").await;
    let assigned = app.assign_ok(&job, &contractor, START, END).await;
    let id = id_of(&assigned, "assignmentId");

    let read = expect_json(get_assignment(&app, Some(&app.admin()), &id).await, StatusCode::OK).await;
    let mut expected = assigned.as_object().expect("an object").clone();
    let acknowledgement = read["acknowledgement"].clone();
    expected.insert("acknowledgement".into(), acknowledgement.clone());
    assert_eq!(read, Value::Object(expected), "the contract's Assignment plus acknowledgement");
    assert_eq!(acknowledgement["status"], "Pending");
    assert!(acknowledgement["acknowledgedAtUtc"].is_null());
    assert!(is_utc_z(&acknowledgement["deadlineUtc"]), "{acknowledgement}");
    assert_eq!(millis(&acknowledgement["deadlineUtc"]) - millis(&assigned["createdAtUtc"]), 300_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assignment_is_read_by_admins_its_regions_dispatchers_and_its_contractor_only() {
    let app = spawn_app().await;
    let contractor = app.contractor_id("north").await;
    let other = app.contractor_id("north").await;
    let job = app.job_id("north").await;
    let id = id_of(&app.assign_ok(&job, &contractor, START, END).await, "assignmentId");
    let uuid = |id: &str| Uuid::parse_str(id).expect("a UUID");

    for (who, token) in [
        ("an admin", app.admin()),
        ("a north dispatcher", app.dispatcher(&["north"])),
        ("its contractor", app.contractor(uuid(&contractor))),
    ] {
        let read = expect_json(get_assignment(&app, Some(&token), &id).await, StatusCode::OK).await;
        assert_eq!(read["assignmentId"], id.as_str(), "{who}");
    }
    for (who, token) in
        [("a south dispatcher", app.dispatcher(&["south"])), ("another contractor", app.contractor(uuid(&other)))]
    {
        let refused = expect_problem(get_assignment(&app, Some(&token), &id).await, StatusCode::FORBIDDEN).await;
        assert_eq!(refused["detail"], "you may not read this assignment", "{who}");
    }
    expect_problem(get_assignment(&app, None, &id).await, StatusCode::UNAUTHORIZED).await;
    let admin = app.admin();
    expect_problem(get_assignment(&app, Some(&admin), &Uuid::new_v4().to_string()).await, StatusCode::NOT_FOUND).await;
    expect_problem(get_assignment(&app, Some(&admin), "not-a-uuid").await, StatusCode::NOT_FOUND).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assignment_not_acknowledged_by_its_deadline_is_overdue_and_escalated_once() {
    let mut config = ServeConfig::for_tests(SECRET);
    config.delivery.ack_deadline_seconds = 1;
    let app = spawn_app_with(config, HandlerRegistry::new()).await;
    let contractor = app.contractor_id("north").await;
    let job = app.job_id("north").await;
    let assigned = app.assign_ok(&job, &contractor, START, END).await;
    let id = id_of(&assigned, "assignmentId");

    let mut escalations = Vec::new();
    for _ in 0..100 {
        escalations = published_of(&app, "JobAssignmentUnacknowledged").await;
        if !escalations.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(escalations.len(), 1, "escalated within 10 s");
    let payload = &escalations[0]["payload"];
    assert_eq!(payload["assignmentId"], id.as_str());
    assert_eq!(payload["jobAssignedEventId"], assigned["eventId"]);
    assert_eq!(payload["region"], "north");
    assert_eq!(escalations[0]["publishedGroups"], serde_json::json!(["dispatch/north"]));
    let read = expect_json(get_assignment(&app, Some(&app.admin()), &id).await, StatusCode::OK).await;
    assert_eq!(read["acknowledgement"]["status"], "Overdue");
    assert_eq!(read["acknowledgement"]["deadlineUtc"], payload["deadlineUtc"]);

    // Further scans find it escalated already.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let rows = app.event_rows().await;
    assert_eq!(rows.iter().filter(|row| row["eventType"] == "JobAssignmentUnacknowledged").count(), 1, "once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_deadline_off_an_assignment_has_none_and_is_never_overdue() {
    let mut config = ServeConfig::for_tests(SECRET);
    config.delivery.ack_deadline_seconds = 0;
    let app = spawn_app_with(config, HandlerRegistry::new()).await;
    let contractor = app.contractor_id("north").await;
    let job = app.job_id("north").await;
    let id = id_of(&app.assign_ok(&job, &contractor, START, END).await, "assignmentId");
    let read = expect_json(get_assignment(&app, Some(&app.admin()), &id).await, StatusCode::OK).await;
    assert_eq!(
        read["acknowledgement"],
        serde_json::json!({ "status": "Pending", "acknowledgedAtUtc": null, "deadlineUtc": null })
    );
}
