//! Assigning a job over HTTP (`docs/contract.md`): the 201 answer, every
//! refusal (400/401/403/404/409) writing nothing to the EventLog, and
//! concurrent assignments committing and publishing each once.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use crate::support::{
    assert_assign_refused, assign_body, expect_json, expect_problem, id_of, is_utc_z, is_uuid, keys, spawn_app, END,
    START,
};
use reqwest::StatusCode;
use serde_json::json;
use tokio::sync::Barrier;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assigning_a_job_returns_201_with_exactly_the_contract_assignment_fields() {
    let app = spawn_app().await;
    let job_id = app.job_id("north").await;
    let contractor = app.contractor_id("north").await;
    let response = app.assign(Some(&app.dispatcher(&["north"])), &job_id, &assign_body(&contractor)).await;
    let assignment = expect_json(response, StatusCode::CREATED).await;

    assert_eq!(
        keys(&assignment),
        [
            "assignmentId",
            "auditId",
            "contractorId",
            "createdAtUtc",
            "endUtc",
            "eventId",
            "jobId",
            "region",
            "source",
            "startUtc"
        ]
    );
    assert!(is_uuid(&assignment["assignmentId"]), "{assignment:#}");
    assert!(is_uuid(&assignment["eventId"]), "{assignment:#}");
    assert_eq!(assignment["jobId"], job_id.as_str());
    assert_eq!(assignment["contractorId"], contractor.as_str());
    assert_eq!(assignment["startUtc"], START);
    assert_eq!(assignment["endUtc"], END);
    assert_eq!(assignment["source"], "manual", "source defaults to manual");
    assert!(assignment["auditId"].is_null(), "{assignment:#}");
    assert_eq!(assignment["region"], "north");
    assert!(is_utc_z(&assignment["createdAtUtc"]), "{assignment:#}");
    assert_ne!(assignment["assignmentId"], assignment["eventId"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assigning_with_source_auto_and_an_audit_id_echoes_both() {
    let app = spawn_app().await;
    let job_id = app.job_id("north").await;
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
    assert_eq!(assignment["source"], "auto");
    assert_eq!(assignment["auditId"], audit.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assignment_times_given_with_an_offset_come_back_in_utc_with_z() {
    let app = spawn_app().await;
    let job_id = app.job_id("north").await;
    let contractor = app.contractor_id("north").await;
    let assignment =
        app.assign_ok(&job_id, &contractor, "2030-01-15T10:00:00+01:00", "2030-01-15T12:30:00.250+01:00").await;
    assert_eq!(assignment["startUtc"], "2030-01-15T09:00:00Z");
    assert_eq!(assignment["endUtc"], "2030-01-15T11:30:00.250Z");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assigning_with_a_contractor_id_that_is_not_a_uuid_is_a_400_problem() {
    let app = spawn_app().await;
    let job_id = app.job_id("north").await;
    let problem =
        assert_assign_refused(&app, Some(&app.admin()), &job_id, &assign_body("not-a-uuid"), StatusCode::BAD_REQUEST)
            .await;
    assert!(problem["detail"].as_str().unwrap().contains("contractorId"), "{problem:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assigning_with_an_end_before_the_start_is_a_400_problem() {
    let app = spawn_app().await;
    let job_id = app.job_id("north").await;
    let contractor = app.contractor_id("north").await;
    let problem = assert_assign_refused(
        &app,
        Some(&app.admin()),
        &job_id,
        &json!({ "contractorId": contractor, "startUtc": END, "endUtc": START }),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(problem["detail"].as_str().unwrap().contains("endUtc"), "{problem:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assigning_with_an_end_equal_to_the_start_is_a_400_problem() {
    let app = spawn_app().await;
    let job_id = app.job_id("north").await;
    let contractor = app.contractor_id("north").await;
    assert_assign_refused(
        &app,
        Some(&app.admin()),
        &job_id,
        &json!({ "contractorId": contractor, "startUtc": START, "endUtc": START }),
        StatusCode::BAD_REQUEST,
    )
    .await;
    // The same instant written with another offset is still equal.
    assert_assign_refused(
        &app,
        Some(&app.admin()),
        &job_id,
        &json!({
            "contractorId": contractor,
            "startUtc": "2030-01-15T09:00:00Z",
            "endUtc": "2030-01-15T10:00:00+01:00"
        }),
        StatusCode::BAD_REQUEST,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assigning_with_an_unknown_source_is_a_400_problem() {
    let app = spawn_app().await;
    let job_id = app.job_id("north").await;
    let contractor = app.contractor_id("north").await;
    for source in ["robot", "Manual", ""] {
        let problem = assert_assign_refused(
            &app,
            Some(&app.admin()),
            &job_id,
            &json!({ "contractorId": contractor, "startUtc": START, "endUtc": END, "source": source }),
            StatusCode::BAD_REQUEST,
        )
        .await;
        assert!(problem["detail"].as_str().unwrap().contains("source"), "{problem:#}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assigning_with_a_missing_field_is_a_400_problem() {
    let app = spawn_app().await;
    let job_id = app.job_id("north").await;
    let contractor = app.contractor_id("north").await;
    for body in [
        json!({ "startUtc": START, "endUtc": END }),
        json!({ "contractorId": contractor, "endUtc": END }),
        json!({ "contractorId": contractor, "startUtc": START }),
        json!({}),
    ] {
        assert_assign_refused(&app, Some(&app.admin()), &job_id, &body, StatusCode::BAD_REQUEST).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assigning_with_an_audit_id_that_is_not_a_uuid_is_a_400_problem() {
    let app = spawn_app().await;
    let job_id = app.job_id("north").await;
    let contractor = app.contractor_id("north").await;
    let problem = assert_assign_refused(
        &app,
        Some(&app.admin()),
        &job_id,
        &json!({ "contractorId": contractor, "startUtc": START, "endUtc": END, "auditId": "audit-1" }),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(problem["detail"].as_str().unwrap().contains("auditId"), "{problem:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assigning_with_unparsable_times_or_an_unknown_field_is_a_400_problem() {
    let app = spawn_app().await;
    let job_id = app.job_id("north").await;
    let contractor = app.contractor_id("north").await;
    for body in [
        json!({ "contractorId": contractor, "startUtc": "soon", "endUtc": END }),
        json!({ "contractorId": contractor, "startUtc": START, "endUtc": "2030-01-15" }),
        json!({ "contractorId": contractor, "startUtc": START, "endUtc": END, "notes": "x" }),
        json!({ "contractorId": 42, "startUtc": START, "endUtc": END }),
    ] {
        assert_assign_refused(&app, Some(&app.admin()), &job_id, &body, StatusCode::BAD_REQUEST).await;
    }
    let job = expect_json(app.get_job(Some(&app.admin()), &job_id).await, StatusCode::OK).await;
    assert_eq!(job["status"], "Unassigned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assigning_an_unknown_job_is_a_404_problem() {
    let app = spawn_app().await;
    let contractor = app.contractor_id("north").await;
    assert_assign_refused(
        &app,
        Some(&app.admin()),
        &Uuid::new_v4().to_string(),
        &assign_body(&contractor),
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_assign_refused(&app, Some(&app.admin()), "not-a-job-id", &assign_body(&contractor), StatusCode::NOT_FOUND)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assigning_to_an_unknown_contractor_is_a_404_problem_and_leaves_the_job_unassigned() {
    let app = spawn_app().await;
    let job_id = app.job_id("north").await;
    assert_assign_refused(
        &app,
        Some(&app.admin()),
        &job_id,
        &assign_body(&Uuid::new_v4().to_string()),
        StatusCode::NOT_FOUND,
    )
    .await;
    let job = expect_json(app.get_job(Some(&app.admin()), &job_id).await, StatusCode::OK).await;
    assert_eq!(job["status"], "Unassigned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assigning_an_already_assigned_job_is_a_409_problem() {
    let app = spawn_app().await;
    let job_id = app.job_id("north").await;
    let first = app.contractor_id("north").await;
    let second = app.contractor_id("north").await;
    app.assign_ok(&job_id, &first, START, END).await;

    // Again to the same contractor, and to another one at another time.
    assert_assign_refused(&app, Some(&app.admin()), &job_id, &assign_body(&first), StatusCode::CONFLICT).await;
    assert_assign_refused(
        &app,
        Some(&app.admin()),
        &job_id,
        &json!({
            "contractorId": second,
            "startUtc": "2030-02-01T09:00:00Z",
            "endUtc": "2030-02-01T10:00:00Z"
        }),
        StatusCode::CONFLICT,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assigning_a_contractor_with_an_overlapping_assignment_is_a_409_problem() {
    let app = spawn_app().await;
    let first_job = app.job_id("north").await;
    let second_job = app.job_id("north").await;
    let contractor = app.contractor_id("north").await;
    app.assign_ok(&first_job, &contractor, START, END).await;

    for (start, end) in [
        (START, END),                                     // the same interval
        ("2030-01-15T10:00:00Z", "2030-01-15T12:00:00Z"), // overlaps the end
        ("2030-01-15T08:00:00Z", "2030-01-15T09:00:01Z"), // overlaps the start
        ("2030-01-15T09:30:00Z", "2030-01-15T10:00:00Z"), // inside
        ("2030-01-15T08:00:00Z", "2030-01-15T12:00:00Z"), // around
    ] {
        assert_assign_refused(
            &app,
            Some(&app.admin()),
            &second_job,
            &json!({ "contractorId": contractor, "startUtc": start, "endUtc": end }),
            StatusCode::CONFLICT,
        )
        .await;
    }
    let job = expect_json(app.get_job(Some(&app.admin()), &second_job).await, StatusCode::OK).await;
    assert_eq!(job["status"], "Unassigned", "the refused job stays free");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn touching_intervals_of_one_contractor_do_not_overlap() {
    let app = spawn_app().await;
    let contractor = app.contractor_id("north").await;
    let middle = app.job_id("north").await;
    let after = app.job_id("north").await;
    let before = app.job_id("north").await;
    app.assign_ok(&middle, &contractor, START, END).await;
    app.assign_ok(&after, &contractor, END, "2030-01-15T12:00:00Z").await;
    app.assign_ok(&before, &contractor, "2030-01-15T08:00:00Z", START).await;
    assert_eq!(app.event_count().await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatcher_of_another_region_may_not_assign_the_job() {
    let app = spawn_app().await;
    let job_id = app.job_id("north").await;
    let contractor = app.contractor_id("north").await;
    assert_assign_refused(
        &app,
        Some(&app.dispatcher(&["south", "west"])),
        &job_id,
        &assign_body(&contractor),
        StatusCode::FORBIDDEN,
    )
    .await;
    // The job's own dispatcher may.
    let response = app.assign(Some(&app.dispatcher(&["north"])), &job_id, &assign_body(&contractor)).await;
    expect_json(response, StatusCode::CREATED).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contractor_token_may_not_assign_a_job() {
    let app = spawn_app().await;
    let job_id = app.job_id("north").await;
    let contractor = app.contractor_id("north").await;
    let token = app.contractor(Uuid::parse_str(&contractor).unwrap());
    assert_assign_refused(&app, Some(&token), &job_id, &assign_body(&contractor), StatusCode::FORBIDDEN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contractor_cannot_probe_which_jobs_exist_through_assign() {
    let app = spawn_app().await;
    let contractor = app.contractor_id("north").await;
    let token = app.contractor(Uuid::parse_str(&contractor).unwrap());
    // An unknown job and a body that is not even valid: still 403, not 404 or 400.
    let unknown = Uuid::new_v4().to_string();
    assert_assign_refused(&app, Some(&token), &unknown, &assign_body(&contractor), StatusCode::FORBIDDEN).await;
    assert_assign_refused(
        &app,
        Some(&token),
        &unknown,
        &json!({ "contractorId": "nope", "startUtc": "x", "endUtc": "y" }),
        StatusCode::FORBIDDEN,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assigning_without_a_valid_token_is_a_401_problem() {
    let app = spawn_app().await;
    let job_id = app.job_id("north").await;
    let contractor = app.contractor_id("north").await;
    for token in [None, Some("garbage".to_owned()), Some(app.expired_admin()), Some(app.foreign_admin())] {
        assert_assign_refused(&app, token.as_deref(), &job_id, &assign_body(&contractor), StatusCode::UNAUTHORIZED)
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_assignments_are_all_committed_and_each_published_once_in_sequence_order() {
    const N: usize = 200;
    let app = Arc::new(spawn_app().await);
    let mut pairs = Vec::with_capacity(N);
    for _ in 0..N {
        pairs.push((app.job_id("north").await, app.contractor_id("north").await));
    }

    let token = Arc::new(app.admin());
    let barrier = Arc::new(Barrier::new(N));
    let mut tasks = tokio::task::JoinSet::new();
    for (job_id, contractor) in pairs.clone() {
        let app = app.clone();
        let token = token.clone();
        let barrier = barrier.clone();
        tasks.spawn(async move {
            barrier.wait().await;
            let response = app.assign(Some(&token), &job_id, &assign_body(&contractor)).await;
            (job_id, expect_json(response, StatusCode::CREATED).await)
        });
    }
    let mut assignments = Vec::with_capacity(N);
    while let Some(result) = tasks.join_next().await {
        let (job_id, assignment) = result.expect("the task did not panic");
        assert_eq!(assignment["jobId"], job_id.as_str());
        assignments.push(assignment);
    }
    assert_eq!(assignments.len(), N, "all {N} answered 201");

    let rows = app.wait_for_published(N, Duration::from_secs(30)).await;
    assert_eq!(rows.len(), N);
    assert_eq!(app.event_count().await, N, "exactly one row per assignment");

    let event_ids: Vec<String> = rows.iter().map(|r| id_of(r, "eventId")).collect();
    let unique: HashSet<&String> = event_ids.iter().collect();
    assert_eq!(unique.len(), N, "each eventId appears exactly once");
    for assignment in &assignments {
        let event_id = id_of(assignment, "eventId");
        assert!(unique.contains(&event_id), "event {event_id} of an assignment is missing");
    }

    for row in &rows {
        assert_eq!(row["status"], "Published");
        assert_eq!(row["attempts"], 1);
        assert_eq!(row["payload"]["sequence"], row["sequence"]);
    }
    let listed: Vec<i64> =
        rows.iter().map(|r| r["sequence"].as_i64().expect("a published row has a sequence")).collect();
    let mut sorted = listed.clone();
    sorted.sort_unstable();
    assert!(sorted.windows(2).all(|w| w[0] < w[1]), "sequences are unique: {sorted:?}");
    assert_eq!(listed, sorted, "published rows are listed in sequence order");

    // Paging with the cursor gives them all, strictly increasing.
    let mut cursor = 0;
    let mut paged = Vec::new();
    loop {
        let page = expect_json(
            app.list_events(Some(&token), &format!("afterSequence={cursor}&limit=64")).await,
            StatusCode::OK,
        )
        .await;
        let items = page["items"].as_array().unwrap();
        if items.is_empty() {
            break;
        }
        paged.extend(items.iter().map(|r| r["sequence"].as_i64().unwrap()));
        cursor = page["nextAfterSequence"].as_i64().unwrap();
    }
    assert_eq!(paged, sorted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_assignments_of_the_same_job_have_exactly_one_winner() {
    const ROUNDS: usize = 20;
    let app = Arc::new(spawn_app().await);
    let token = Arc::new(app.admin());
    for round in 0..ROUNDS {
        let job_id = app.job_id("north").await;
        let first = app.contractor_id("north").await;
        let second = app.contractor_id("north").await;
        let barrier = Arc::new(Barrier::new(2));
        let mut tasks = tokio::task::JoinSet::new();
        for contractor in [first, second] {
            let (app, token, barrier, job_id) = (app.clone(), token.clone(), barrier.clone(), job_id.clone());
            tasks.spawn(async move {
                barrier.wait().await;
                app.assign(Some(&token), &job_id, &assign_body(&contractor)).await
            });
        }
        let mut statuses = Vec::new();
        while let Some(result) = tasks.join_next().await {
            let response = result.expect("the task did not panic");
            let status = response.status();
            if status == StatusCode::CONFLICT {
                expect_problem(response, status).await;
            }
            statuses.push(status);
        }
        statuses.sort();
        assert_eq!(statuses, [StatusCode::CREATED, StatusCode::CONFLICT], "round {round}");
        let job = expect_json(app.get_job(Some(&token), &job_id).await, StatusCode::OK).await;
        assert_eq!(job["status"], "Assigned");
    }
    assert_eq!(app.event_count().await, ROUNDS, "one event per job, none for the losers");
    app.wait_for_published(ROUNDS, Duration::from_secs(10)).await;
}
