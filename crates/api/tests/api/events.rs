//! The EventLog API (`/api/events`): what a committed assignment publishes,
//! reads by id and after a sequence, filters, and who may read it.

use std::collections::HashSet;
use std::time::Duration;

use crate::support::{expect_json, expect_problem, id_of, is_utc_z, keys, spawn_app, END, START};
use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_assignment_is_published_with_the_contract_payload() {
    let app = spawn_app().await;
    let job = app.create_job("north").await;
    let job_id = id_of(&job, "id");
    let contractor = app.contractor_id("north").await;
    let audit = Uuid::new_v4().to_string();
    let response = app
        .assign(
            Some(&app.admin()),
            &job_id,
            &json!({
                "contractorId": contractor,
                "startUtc": START,
                "endUtc": END,
                "source": "auto",
                "auditId": audit
            }),
        )
        .await;
    let assignment = expect_json(response, StatusCode::CREATED).await;
    let event_id = id_of(&assignment, "eventId");

    let rows = app.wait_for_published(1, Duration::from_secs(5)).await;
    assert_eq!(rows.len(), 1, "{rows:#?}");
    let row = &rows[0];

    assert_eq!(
        keys(row),
        [
            "attempts",
            "eventId",
            "eventType",
            "lastError",
            "occurredAtUtc",
            "payload",
            "publishedAtUtc",
            "publishedGroups",
            "sequence",
            "status"
        ]
    );
    assert_eq!(row["eventId"], event_id.as_str());
    assert_eq!(row["eventType"], "JobAssigned");
    assert_eq!(row["status"], "Published");
    let sequence = row["sequence"].as_i64().expect("sequence is a number");
    assert!(sequence > 0);
    assert!(is_utc_z(&row["publishedAtUtc"]), "{row:#}");
    assert!(is_utc_z(&row["occurredAtUtc"]), "{row:#}");
    assert_eq!(row["publishedGroups"], json!(["dispatch/north", format!("contractor/{contractor}")]));
    assert_eq!(row["attempts"], 1);
    assert!(row["lastError"].is_null(), "{row:#}");

    let payload = &row["payload"];
    assert_eq!(payload["type"], "JobAssigned");
    assert_eq!(payload["schemaVersion"], 1);
    assert_eq!(payload["sequence"], json!(sequence));
    assert_eq!(payload["eventId"], event_id.as_str());
    assert_eq!(payload["occurredAtUtc"], row["occurredAtUtc"]);
    assert_eq!(payload["jobId"], job_id.as_str());
    assert_eq!(payload["contractorId"], contractor.as_str());
    assert_eq!(payload["assignmentId"], assignment["assignmentId"]);
    assert_eq!(payload["startUtc"], START);
    assert_eq!(payload["endUtc"], END);
    assert_eq!(payload["region"], "north");
    assert_eq!(payload["source"], "auto");
    assert_eq!(payload["auditId"], audit.as_str());
    assert_eq!(payload["job"]["id"], job_id.as_str());
    assert_eq!(payload["job"]["jobType"], job["jobType"]);
    assert_eq!(payload["job"]["title"], job["title"]);
    assert_eq!(payload["job"]["region"], "north");
    assert_eq!(payload["job"]["status"], "Assigned");
    assert_eq!(payload["job"]["durationMinutes"], 120);
    assert!(payload["job"]["desiredStartUtc"].is_null() && payload["job"]["address"].is_null(), "null when unset");
    assert!(serde_json::to_vec(payload).unwrap().len() < 2048, "the payload stays under 2 KiB");

    // The same row through GET /api/events/{eventId}.
    let by_id = app.wait_until_event_published(&event_id).await;
    assert_eq!(&by_id, row);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_payload_of_a_manual_assignment_has_a_null_audit_id() {
    let app = spawn_app().await;
    let job_id = app.job_id("north").await;
    let contractor = app.contractor_id("north").await;
    let assignment = app.assign_ok(&job_id, &contractor, START, END).await;
    let row = app.wait_until_event_published(&id_of(&assignment, "eventId")).await;
    assert_eq!(row["payload"]["source"], "manual");
    assert!(row["payload"]["auditId"].is_null(), "{row:#}");
    assert_eq!(row["payload"]["sequence"], row["sequence"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_can_be_read_by_id_and_unknown_or_malformed_ids_are_404_problems() {
    let app = spawn_app().await;
    let job_id = app.job_id("north").await;
    let contractor = app.contractor_id("north").await;
    let assignment = app.assign_ok(&job_id, &contractor, START, END).await;
    let event_id = id_of(&assignment, "eventId");

    let row = expect_json(app.get_event(Some(&app.dispatcher(&["north"])), &event_id).await, StatusCode::OK).await;
    assert_eq!(row["eventId"], event_id.as_str());
    assert_eq!(row["eventType"], "JobAssigned");

    let response = app.get_event(Some(&app.admin()), &Uuid::new_v4().to_string()).await;
    expect_problem(response, StatusCode::NOT_FOUND).await;
    let response = app.get_event(Some(&app.admin()), "nope").await;
    expect_problem(response, StatusCode::NOT_FOUND).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sequence_returns_only_later_events_and_the_next_cursor() {
    let app = spawn_app().await;
    let mut event_ids = Vec::new();
    for _ in 0..3 {
        let job_id = app.job_id("north").await;
        let contractor = app.contractor_id("north").await;
        let assignment = app.assign_ok(&job_id, &contractor, START, END).await;
        event_ids.push(id_of(&assignment, "eventId"));
    }
    let rows = app.wait_for_published(3, Duration::from_secs(5)).await;
    let mut sequences: Vec<(i64, String)> =
        rows.iter().map(|r| (r["sequence"].as_i64().unwrap(), id_of(r, "eventId"))).collect();
    sequences.sort();
    let token = app.admin();

    // After the first: the two later ones, in sequence order.
    let page =
        expect_json(app.list_events(Some(&token), &format!("afterSequence={}", sequences[0].0)).await, StatusCode::OK)
            .await;
    let items = page["items"].as_array().unwrap();
    let got: Vec<(i64, String)> =
        items.iter().map(|r| (r["sequence"].as_i64().unwrap(), id_of(r, "eventId"))).collect();
    assert_eq!(got, sequences[1..].to_vec());
    assert_eq!(page["nextAfterSequence"], json!(sequences[2].0));

    // A page of one follows with the cursor.
    let page = expect_json(
        app.list_events(Some(&token), &format!("afterSequence={}&limit=1", sequences[0].0)).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    assert_eq!(page["items"][0]["eventId"], sequences[1].1.as_str());
    assert_eq!(page["nextAfterSequence"], json!(sequences[1].0));

    // After the last: nothing, and the cursor stays.
    let page =
        expect_json(app.list_events(Some(&token), &format!("afterSequence={}", sequences[2].0)).await, StatusCode::OK)
            .await;
    assert_eq!(page["items"], json!([]));
    assert_eq!(page["nextAfterSequence"], json!(sequences[2].0));

    // From 0: all three.
    let page = expect_json(app.list_events(Some(&token), "afterSequence=0").await, StatusCode::OK).await;
    assert_eq!(page["items"].as_array().unwrap().len(), 3);
    let all: HashSet<String> = sequences.iter().map(|(_, id)| id.clone()).collect();
    assert_eq!(all, event_ids.into_iter().collect::<HashSet<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_events_with_a_negative_after_sequence_is_a_400_problem() {
    let app = spawn_app().await;
    for query in ["afterSequence=-1", "afterSequence=abc"] {
        let response = app.list_events(Some(&app.admin()), query).await;
        expect_problem(response, StatusCode::BAD_REQUEST).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_events_with_an_unknown_status_is_a_400_problem_and_known_ones_filter() {
    let app = spawn_app().await;
    let response = app.list_events(Some(&app.admin()), "status=Bogus").await;
    expect_problem(response, StatusCode::BAD_REQUEST).await;

    let job_id = app.job_id("north").await;
    let contractor = app.contractor_id("north").await;
    app.assign_ok(&job_id, &contractor, START, END).await;
    app.wait_for_published(1, Duration::from_secs(5)).await;
    for (status, expected) in [("Published", 1), ("Pending", 0), ("Failed", 0)] {
        let page =
            expect_json(app.list_events(Some(&app.admin()), &format!("status={status}")).await, StatusCode::OK).await;
        assert_eq!(page["items"].as_array().unwrap().len(), expected, "status={status}: {page:#}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contractor_may_not_read_the_event_log() {
    let app = spawn_app().await;
    let job_id = app.job_id("north").await;
    let contractor = app.contractor_id("north").await;
    let assignment = app.assign_ok(&job_id, &contractor, START, END).await;
    let token = app.contractor(Uuid::parse_str(&contractor).unwrap());
    expect_problem(app.list_events(Some(&token), "").await, StatusCode::FORBIDDEN).await;
    expect_problem(app.get_event(Some(&token), &id_of(&assignment, "eventId")).await, StatusCode::FORBIDDEN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_log_without_a_valid_token_is_a_401_problem() {
    let app = spawn_app().await;
    expect_problem(app.list_events(None, "").await, StatusCode::UNAUTHORIZED).await;
    expect_problem(app.get_event(None, &Uuid::new_v4().to_string()).await, StatusCode::UNAUTHORIZED).await;
    expect_problem(app.list_events(Some(&app.foreign_admin()), "").await, StatusCode::UNAUTHORIZED).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_service_has_an_empty_event_log() {
    let app = spawn_app().await;
    let page = expect_json(app.list_events(Some(&app.dispatcher(&["north"])), "").await, StatusCode::OK).await;
    assert_eq!(page["items"], json!([]));
    assert_eq!(page["nextAfterSequence"], 0);
}
