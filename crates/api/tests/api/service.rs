//! What every route shares: health, unknown routes and methods, the
//! OpenAPI document matching the handlers, body limits and types, and
//! request ids.

use crate::support::{assign_body, expect_json, expect_problem, spawn_app, END, START};
use reqwest::header::CONTENT_TYPE;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_is_live_and_ready_without_a_token() {
    let app = spawn_app().await;
    assert_eq!(app.live().await.status(), StatusCode::OK);
    assert_eq!(app.ready().await.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_route_is_a_404_problem() {
    let app = spawn_app().await;
    expect_problem(app.get("/api/nothing-here").await, StatusCode::NOT_FOUND).await;
    expect_problem(app.get("/nothing-here").await, StatusCode::NOT_FOUND).await;
    let response = app.request(Method::GET, "/api/assignments", Some(&app.admin())).send().await.unwrap();
    expect_problem(response, StatusCode::NOT_FOUND).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_path_with_an_unsupported_method_is_a_405_problem_with_allow() {
    let app = spawn_app().await;
    let job = app.job_id("north").await;
    let cases = [
        (Method::DELETE, "/api/contractors".to_owned(), "POST, GET, HEAD"),
        (Method::PUT, format!("/api/jobs/{job}"), "GET, HEAD"),
        (Method::GET, format!("/api/jobs/{job}/assign"), "POST"),
        (Method::PATCH, "/api/events".to_owned(), "GET, HEAD"),
        (Method::POST, "/health/ready".to_owned(), "GET, HEAD"),
        (Method::DELETE, "/metrics".to_owned(), "GET, HEAD"),
        (Method::POST, "/api/openapi.json".to_owned(), "GET, HEAD"),
        (Method::POST, "/".to_owned(), "GET, HEAD"),
        (Method::GET, "/hubs/jobs/negotiate".to_owned(), "POST"),
        (Method::PUT, "/hubs/jobs".to_owned(), "GET, POST, DELETE"),
    ];
    for (method, path, allow) in cases {
        let response = app.request(method.clone(), &path, Some(&app.admin())).send().await.unwrap();
        assert_eq!(response.headers().get("allow").map(|v| v.to_str().unwrap().to_owned()), Some(allow.to_owned()));
        let problem = expect_problem(response, StatusCode::METHOD_NOT_ALLOWED).await;
        assert_eq!(problem["type"], "/problems/method-not-allowed", "{method} {path}: {problem}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_is_served_and_every_operation_in_it_reaches_its_handler() {
    let app = spawn_app().await;
    let response = app.get("/api/openapi.json").await;
    assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
    let doc = expect_json(response, StatusCode::OK).await;
    assert_eq!(doc["openapi"], "3.1.0");
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, _) in item.as_object().unwrap().iter().filter(|(k, _)| ["get", "post"].contains(&k.as_str())) {
            operations += 1;
            let concrete = path.replace("{id}", &Uuid::new_v4().to_string());
            let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes()).unwrap();
            let mut request = app.request(method.clone(), &concrete, Some(&app.admin()));
            if method == Method::POST {
                request = request.json(&json!({}));
            }
            let response = request.send().await.unwrap();
            let status = response.status();
            let body = response.text().await.unwrap();
            // The router's own answers: no route (404 naming no resource) or no such method (405).
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}: {body}");
            assert!(!body.contains("no route matches"), "{method} {path} is documented but not routed: {body}");
            assert!(status.as_u16() < 500, "{method} {path}: {status} {body}");
        }
    }
    assert!(operations >= 20, "only {operations} operations documented");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_64_kib_is_a_413_problem_on_every_post() {
    let app = spawn_app().await;
    let job_id = app.job_id("north").await;
    let contractor = app.contractor_id("north").await;
    let filler = "x".repeat(70 * 1024);
    let before = app.event_count().await;
    for (path, body) in [
        ("/api/contractors".to_owned(), json!({ "name": filler, "region": "north" })),
        (
            "/api/jobs".to_owned(),
            json!({ "jobType": "Flooring", "region": "north", "durationMinutes": 60, "title": filler }),
        ),
        (
            format!("/api/jobs/{job_id}/assign"),
            json!({ "contractorId": contractor, "startUtc": START, "endUtc": END, "source": filler }),
        ),
    ] {
        let response = app.request(Method::POST, &path, Some(&app.admin())).json(&body).send().await.unwrap();
        expect_problem(response, StatusCode::PAYLOAD_TOO_LARGE).await;
    }
    assert_eq!(app.event_count().await, before, "nothing was published");
    let job = expect_json(app.get_job(Some(&app.admin()), &job_id).await, StatusCode::OK).await;
    assert_eq!(job["status"], "Unassigned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_over_64_kib_without_a_length_is_a_413_problem() {
    let app = spawn_app().await;
    let chunk = "x".repeat(8 * 1024);
    let mut body = String::new();
    for _ in 0..9 {
        body.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    body.push_str("0\r\n\r\n");
    let request = format!(
        "POST /api/contractors HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{body}",
        app.admin()
    );
    let (status, head, payload) = app.raw_http(request).await;
    assert_eq!(status, 413, "{head}\n{payload}");
    assert!(head.to_ascii_lowercase().contains("content-type: application/problem+json"), "{head}");
    let problem: Value = serde_json::from_str(&payload).expect("a JSON problem");
    assert_eq!(problem["status"], 413);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_sent_as_text_plain_is_a_415_problem_on_every_post() {
    let app = spawn_app().await;
    let job_id = app.job_id("north").await;
    let contractor = app.contractor_id("north").await;
    let before = app.event_count().await;
    for (path, body) in [
        ("/api/contractors".to_owned(), json!({ "name": "Ana", "region": "north" })),
        ("/api/jobs".to_owned(), json!({ "jobType": "Flooring", "region": "north", "durationMinutes": 60 })),
        (format!("/api/jobs/{job_id}/assign"), assign_body(&contractor)),
    ] {
        let response = app
            .request(Method::POST, &path, Some(&app.admin()))
            .header(CONTENT_TYPE, "text/plain")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        expect_problem(response, StatusCode::UNSUPPORTED_MEDIA_TYPE).await;
    }
    assert_eq!(app.event_count().await, before, "nothing was published");
    let contractors = expect_json(app.list_contractors(Some(&app.admin()), "").await, StatusCode::OK).await;
    assert_eq!(contractors.as_array().map(Vec::len), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_carries_a_request_id_echoing_a_sane_one_from_the_caller() {
    let app = spawn_app().await;
    let fresh = app.live().await;
    let id = fresh.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(Uuid::parse_str(&id).is_ok(), "a generated id: {id}");

    let echoed =
        app.request(Method::GET, "/health/live", None).header("X-Request-Id", "trace-42.a_b").send().await.unwrap();
    assert_eq!(echoed.headers()["x-request-id"], "trace-42.a_b");

    let hostile =
        app.request(Method::GET, "/health/live", None).header("X-Request-Id", "a b\"<script>").send().await.unwrap();
    let replaced = hostile.headers()["x-request-id"].to_str().unwrap();
    assert!(Uuid::parse_str(replaced).is_ok(), "an unsafe id is replaced: {replaced}");
}
