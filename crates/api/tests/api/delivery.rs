//! Delivery failures seen from the API: a handler that keeps failing leads
//! to a Failed row with its last error; an admin's retry publishes it.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::{expect_json, expect_problem, spawn_app_with, TestApp, END, SECRET, START};
use async_trait::async_trait;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use smartscheduler_api::ServeConfig;
use smartscheduler_application::{EventHandler, HandlerError, HandlerRegistry};
use smartscheduler_domain::{EventType, PublishedEvent};

/// Fails while `failing` is set, counting its calls.
struct Flaky {
    failing: AtomicBool,
    calls: AtomicU32,
}

#[async_trait]
impl EventHandler for Flaky {
    fn name(&self) -> &str {
        "flaky"
    }
    async fn handle(&self, _event: &PublishedEvent) -> Result<(), HandlerError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.failing.load(Ordering::SeqCst) {
            Err(HandlerError("downstream is down".into()))
        } else {
            Ok(())
        }
    }
}

async fn app_with_flaky(max_attempts: u32) -> (TestApp, Arc<Flaky>) {
    let flaky = Arc::new(Flaky { failing: AtomicBool::new(true), calls: AtomicU32::new(0) });
    let mut config = ServeConfig::for_tests(SECRET);
    config.delivery.max_delivery_attempts = max_attempts;
    config.delivery.retry_backoff_ms = 10;
    let handlers = HandlerRegistry::new().register(EventType::JobAssigned, flaky.clone());
    (spawn_app_with(config, handlers).await, flaky)
}

async fn wait_for_status(app: &TestApp, event_id: &str, status: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let row = expect_json(app.get_event(Some(&app.admin()), event_id).await, StatusCode::OK).await;
        if row["status"] == status {
            return row;
        }
        assert!(Instant::now() < deadline, "still {} instead of {status}: {row}", row["status"]);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_keeps_failing_leaves_the_assignment_created_and_the_event_failed_with_its_error() {
    let (app, flaky) = app_with_flaky(3).await;
    let job = app.job_id("north").await;
    let contractor = app.contractor_id("north").await;

    let assignment = app.assign_ok(&job, &contractor, START, END).await;
    let event_id = assignment["eventId"].as_str().unwrap();

    let row = wait_for_status(&app, event_id, "Failed").await;
    assert_eq!(row["attempts"], 3);
    assert_eq!(row["lastError"], "flaky: downstream is down");
    assert!(row["sequence"].is_null());
    assert_eq!(flaky.calls.load(Ordering::SeqCst), 3, "retried up to the maximum, then stopped");
    let failed = expect_json(app.list_events(Some(&app.admin()), "status=Failed").await, StatusCode::OK).await;
    assert_eq!(failed["items"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_retry_publishes_a_failed_event_and_refuses_what_is_not_failed() {
    let (app, flaky) = app_with_flaky(1).await;
    let job = app.job_id("north").await;
    let contractor = app.contractor_id("north").await;
    let assignment = app.assign_ok(&job, &contractor, START, END).await;
    let event_id = assignment["eventId"].as_str().unwrap().to_owned();
    wait_for_status(&app, &event_id, "Failed").await;

    let retry = |token: String| {
        let path = format!("/api/events/{event_id}/retry");
        let request = app.request(Method::POST, &path, Some(&token));
        async move { request.send().await.unwrap() }
    };
    // Only admins.
    expect_problem(retry(app.dispatcher(&["north"])).await, StatusCode::FORBIDDEN).await;

    flaky.failing.store(false, Ordering::SeqCst);
    let accepted = expect_json(retry(app.admin()).await, StatusCode::ACCEPTED).await;
    assert_eq!(accepted["eventId"], json!(event_id));
    let row = wait_for_status(&app, &event_id, "Published").await;
    assert!(row["sequence"].as_i64().unwrap() > 0);
    assert_eq!(row["publishedGroups"].as_array().unwrap().len(), 2);

    // Published now: nothing to retry. Unknown: 404.
    expect_problem(retry(app.admin()).await, StatusCode::CONFLICT).await;
    let unknown = app
        .request(Method::POST, &format!("/api/events/{}/retry", uuid::Uuid::new_v4()), Some(&app.admin()))
        .send()
        .await
        .unwrap();
    expect_problem(unknown, StatusCode::NOT_FOUND).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_in_the_prometheus_text_format_and_count_assignments() {
    let (app, flaky) = app_with_flaky(5).await;
    flaky.failing.store(false, Ordering::SeqCst);
    let job = app.job_id("north").await;
    let contractor = app.contractor_id("north").await;
    let assignment = app.assign_ok(&job, &contractor, START, END).await;
    wait_for_status(&app, assignment["eventId"].as_str().unwrap(), "Published").await;

    let response = app.get("/metrics").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = response.text().await.unwrap();
    for name in [
        "smartscheduler_assignments_total{outcome=\"created\"}",
        "smartscheduler_events_published_total",
        "smartscheduler_publish_lag_seconds_bucket",
        "smartscheduler_events_pending",
        "smartscheduler_hub_connections",
    ] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
}
