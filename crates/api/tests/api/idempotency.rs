//! The `Idempotency-Key` of assignments: a repeat gets the first answer
//! and publishes nothing new, per caller, even when repeats race.

use crate::support::{assign_body, expect_json, expect_problem, spawn_app, START};
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeating_an_assignment_with_the_same_idempotency_key_returns_the_first_answer_and_publishes_nothing_new() {
    let app = spawn_app().await;
    let job_id = app.job_id("north").await;
    let contractor = app.contractor_id("north").await;
    let send = || async {
        app.request(Method::POST, &format!("/api/jobs/{job_id}/assign"), Some(&app.admin()))
            .header("Idempotency-Key", "assign-once-1")
            .json(&assign_body(&contractor))
            .send()
            .await
            .unwrap()
    };
    let first = expect_json(send().await, StatusCode::CREATED).await;
    let again = expect_json(send().await, StatusCode::CREATED).await;
    assert_eq!(again, first, "the first answer, again");
    assert_eq!(app.event_count().await, 1, "nothing new was published");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reusing_an_idempotency_key_with_another_body_is_a_422_problem() {
    let app = spawn_app().await;
    let job_id = app.job_id("north").await;
    let contractor = app.contractor_id("north").await;
    let path = format!("/api/jobs/{job_id}/assign");
    let response = app
        .request(Method::POST, &path, Some(&app.admin()))
        .header("Idempotency-Key", "assign-once-2")
        .json(&assign_body(&contractor))
        .send()
        .await
        .unwrap();
    expect_json(response, StatusCode::CREATED).await;
    let before = app.event_count().await;
    let response = app
        .request(Method::POST, &path, Some(&app.admin()))
        .header("Idempotency-Key", "assign-once-2")
        .json(&json!({ "contractorId": contractor, "startUtc": START, "endUtc": "2030-01-15T12:00:00Z" }))
        .send()
        .await
        .unwrap();
    expect_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(app.event_count().await, before, "nothing new was published");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_repeats_of_one_idempotency_key_all_get_the_one_first_answer() {
    let app = spawn_app().await;
    let job_id = app.job_id("north").await;
    let contractor = app.contractor_id("north").await;
    let path = format!("/api/jobs/{job_id}/assign");
    let sends = (0..10).map(|_| {
        app.request(Method::POST, &path, Some(&app.admin()))
            .header("Idempotency-Key", "race-1")
            .json(&assign_body(&contractor))
            .send()
    });
    let responses = futures_util::future::join_all(sends).await;
    let mut bodies = Vec::new();
    for response in responses {
        bodies.push(expect_json(response.unwrap(), StatusCode::CREATED).await);
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "every repeat returns the same assignment");
    assert_eq!(app.event_count().await, 1, "one event for ten requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeat_from_the_same_caller_after_losing_the_region_is_403_not_the_first_answer() {
    let app = spawn_app().await;
    let job_id = app.job_id("north").await;
    let contractor = app.contractor_id("north").await;
    let path = format!("/api/jobs/{job_id}/assign");
    let send = |token: String| {
        app.request(Method::POST, &path, Some(&token))
            .header("Idempotency-Key", "lost-region")
            .json(&assign_body(&contractor))
            .send()
    };
    expect_json(send(app.dispatcher(&["north"])).await.unwrap(), StatusCode::CREATED).await;
    // The same `sub`, whose token now names south only.
    let refused = send(app.dispatcher(&["south"])).await.unwrap();
    assert!(refused.headers().get("idempotent-replayed").is_none(), "not a replay");
    let problem = expect_problem(refused, StatusCode::FORBIDDEN).await;
    assert!(problem["detail"].as_str().unwrap().contains("north"), "{problem}");
    // Still allowed: the first answer, as before.
    let again = send(app.dispatcher(&["north", "south"])).await.unwrap();
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    expect_json(again, StatusCode::CREATED).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_are_per_caller_and_must_be_visible_ascii() {
    let app = spawn_app().await;
    let job_id = app.job_id("north").await;
    let contractor = app.contractor_id("north").await;
    let path = format!("/api/jobs/{job_id}/assign");
    for bad in ["", " ", &"k".repeat(256)] {
        let response = app
            .request(Method::POST, &path, Some(&app.admin()))
            .header("Idempotency-Key", bad)
            .json(&assign_body(&contractor))
            .send()
            .await
            .unwrap();
        expect_problem(response, StatusCode::BAD_REQUEST).await;
    }
    assert_eq!(app.event_count().await, 0);
    // The same key from another caller is another key: it does not replay
    // the first caller's answer (here it meets the assigned job: 409).
    let first = app
        .request(Method::POST, &path, Some(&app.admin()))
        .header("Idempotency-Key", "shared")
        .json(&assign_body(&contractor))
        .send()
        .await
        .unwrap();
    expect_json(first, StatusCode::CREATED).await;
    let other = app
        .request(Method::POST, &path, Some(&app.dispatcher(&["north"])))
        .header("Idempotency-Key", "shared")
        .json(&assign_body(&contractor))
        .send()
        .await
        .unwrap();
    expect_problem(other, StatusCode::CONFLICT).await;
}
