//! Hostile input at the HTTP edge, against the real service over real
//! sockets: slow bodies, over-long heads, `HEAD`, refused CORS preflights,
//! and readiness when the database is dropped under the service.

use std::time::Duration;

use crate::support::{expect_json, expect_problem, spawn_app, spawn_app_with, SECRET};
use reqwest::header::{ACCESS_CONTROL_ALLOW_ORIGIN, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use smartscheduler_api::ServeConfig;
use smartscheduler_application::HandlerRegistry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Reads everything the server sends until it closes the connection, for at
/// most `limit`; `None` when it kept the connection open that long.
async fn read_until_closed(reader: &mut tokio::net::tcp::OwnedReadHalf, limit: Duration) -> Option<String> {
    let mut answer = Vec::new();
    let read = tokio::time::timeout(limit, async {
        let mut chunk = [0u8; 4096];
        loop {
            match reader.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    read.ok().map(|()| String::from_utf8_lossy(&answer).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_sent_one_byte_a_second_is_answered_408_problem_and_the_connection_closed() {
    let app = spawn_app().await;
    let stream = tokio::net::TcpStream::connect(app.address.trim_start_matches("http://")).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let head = format!(
        "POST /api/contractors HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"name\": \"",
        app.admin()
    );
    writer.write_all(head.as_bytes()).await.unwrap();
    // The rest of the body, one byte a second, for longer than the bound.
    let trickle = tokio::spawn(async move {
        for _ in 0..60 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if writer.write_all(b"a").await.is_err() {
                break;
            }
        }
    });

    let answer = read_until_closed(&mut reader, Duration::from_secs(40))
        .await
        .expect("the connection is still open after 40 s of a trickling body");
    trickle.abort();
    assert!(answer.starts_with("HTTP/1.1 408"), "answer: {answer:?}");
    let lower = answer.to_ascii_lowercase();
    assert!(lower.contains("content-type: application/problem+json"), "answer: {answer:?}");
    assert!(lower.contains("connection: close"), "answer: {answer:?}");
    assert!(answer.contains("/problems/request-timeout"), "answer: {answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_arrives_in_time_is_not_cut_off() {
    let app = spawn_app().await;
    let response = app
        .post_contractor(
            Some(&app.admin()),
            &serde_json::json!({ "name": "Ana Flores", "region": "north", "skills": ["Flooring"] }),
        )
        .await;
    expect_json(response, StatusCode::CREATED).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_on_get_routes_answers_like_get_without_a_body() {
    let app = spawn_app().await;
    for path in ["/health/live", "/api/openapi.json", "/"] {
        let get = app.get(path).await;
        assert_eq!(get.status(), StatusCode::OK, "GET {path}");
        let get_type = get.headers().get(CONTENT_TYPE).cloned();
        let get_body = get.bytes().await.unwrap();

        let (status, head, body) =
            app.raw_http(format!("HEAD {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")).await;
        assert_eq!(status, 200, "HEAD {path}: {head}");
        assert!(body.is_empty(), "HEAD {path} sent a body: {body:?}");
        let content_type = get_type.unwrap();
        assert!(
            head.to_ascii_lowercase().contains(&format!("content-type: {}", content_type.to_str().unwrap())),
            "HEAD {path} has GET's content type: {head}"
        );
        assert!(!get_body.is_empty(), "GET {path} has a body");
    }
    // With a token, and the same authorization as GET.
    let head = app.request(Method::HEAD, "/api/contractors", Some(&app.admin())).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    let refused = app.request(Method::HEAD, "/api/contractors", None).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    // A path without GET still says what it answers.
    let post_only = app.request(Method::HEAD, "/api/events/00000000-0000-0000-0000-000000000000/retry", None);
    assert_eq!(post_only.send().await.unwrap().status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_over_long_request_target_is_answered_414_problem_and_the_connection_closed() {
    let app = spawn_app().await;
    let path = format!("/api/jobs?region={}", "n".repeat(20 * 1024));
    let (status, head, body) =
        app.raw_http(format!("GET {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer x\r\n\r\n")).await;
    assert_eq!(status, 414, "{head}\n{body}");
    assert!(head.to_ascii_lowercase().contains("content-type: application/problem+json"), "{head}");
    assert!(head.to_ascii_lowercase().contains("connection: close"), "{head}");
    assert!(body.contains("/problems/uri-too-long"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_large_headers_are_answered_431_problem_and_the_connection_closed() {
    let app = spawn_app().await;
    let headers: String = (0..10).map(|i| format!("X-Padding-{i}: {}\r\n", "p".repeat(7 * 1024))).collect();
    let (status, head, body) = app.raw_http(format!("GET /health/live HTTP/1.1\r\nHost: test\r\n{headers}\r\n")).await;
    assert_eq!(status, 431, "{head}\n{body}");
    assert!(head.to_ascii_lowercase().contains("content-type: application/problem+json"), "{head}");
    assert!(head.to_ascii_lowercase().contains("connection: close"), "{head}");
    assert!(body.contains("/problems/headers-too-large"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_past_the_http_layer_buffer_is_answered_431_not_reset() {
    // Past 128 KiB actix-http refuses before the application sees anything;
    // its answer has no body, but it is an answer.
    let app = spawn_app().await;
    let path = format!("/health/live?{}", "q".repeat(200 * 1024));
    let (status, head, _) = app.raw_http(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n")).await;
    assert_eq!(status, 431, "{head}");
}

/// A CORS preflight for the negotiate endpoint from `origin`.
async fn preflight(app: &crate::support::TestApp, origin: &str) -> reqwest::Response {
    app.request(Method::OPTIONS, "/hubs/jobs/negotiate?negotiateVersion=1", None)
        .header("Origin", origin)
        .header("Access-Control-Request-Method", "POST")
        .header("Access-Control-Request-Headers", "authorization")
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preflight_from_an_unlisted_origin_is_a_403_problem_without_cors_headers() {
    let mut config = ServeConfig::for_tests(SECRET);
    config.cors_origins = vec!["https://dispatch.example.com".into()];
    let app = spawn_app_with(config, HandlerRegistry::new()).await;

    let allowed = preflight(&app, "https://dispatch.example.com").await;
    assert_eq!(allowed.status(), StatusCode::OK);
    assert_eq!(allowed.headers()[ACCESS_CONTROL_ALLOW_ORIGIN], "https://dispatch.example.com");

    let refused = preflight(&app, "https://evil.example.com").await;
    let grants: Vec<_> =
        refused.headers().keys().filter(|k| k.as_str().starts_with("access-control-")).cloned().collect();
    assert!(grants.is_empty(), "CORS headers on a refusal: {grants:?}");
    let problem = expect_problem(refused, StatusCode::FORBIDDEN).await;
    assert!(problem["detail"].as_str().unwrap().contains("not allowed"), "{problem:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preflight_without_any_configured_origin_is_a_403_problem() {
    let app = spawn_app().await;
    let refused = preflight(&app, "https://dispatch.example.com").await;
    assert!(refused.headers().get(ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
    expect_problem(refused, StatusCode::FORBIDDEN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preflight_for_a_method_or_header_not_allowed_is_a_403_problem() {
    let mut config = ServeConfig::for_tests(SECRET);
    config.cors_origins = vec!["https://dispatch.example.com".into()];
    let app = spawn_app_with(config, HandlerRegistry::new()).await;
    for (method, headers) in [("DELETE", "authorization"), ("POST", "x-not-allowed")] {
        let refused = app
            .request(Method::OPTIONS, "/api/jobs", None)
            .header("Origin", "https://dispatch.example.com")
            .header("Access-Control-Request-Method", method)
            .header("Access-Control-Request-Headers", headers)
            .send()
            .await
            .unwrap();
        assert!(refused.headers().get(ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
        expect_problem(refused, StatusCode::FORBIDDEN).await;
    }
}

// ---------------------------------------------------------------------------
// Readiness with a real PostgreSQL database dropped under the service
// ---------------------------------------------------------------------------

/// The server used when `SMARTSCHEDULER_TEST_POSTGRES_URL` is not set.
const POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Runs one statement on the maintenance database; `Err` when PostgreSQL is
/// not reachable.
async fn admin_sql(sql: &str) -> Result<(), String> {
    use sqlx::{Connection, Executor};
    let base = std::env::var("SMARTSCHEDULER_TEST_POSTGRES_URL").unwrap_or_else(|_| POSTGRES_URL.to_owned());
    let mut admin = sqlx::PgConnection::connect(&base).await.map_err(|e| e.to_string())?;
    admin.execute(sql).await.map_err(|e| e.to_string())?;
    let _ = admin.close().await;
    Ok(())
}

/// `postgres://…/name` on the test server.
fn database_url(name: &str) -> String {
    let base = std::env::var("SMARTSCHEDULER_TEST_POSTGRES_URL").unwrap_or_else(|_| POSTGRES_URL.to_owned());
    let (head, _) = base.rsplit_once('/').expect("a database in the URL");
    format!("{head}/{name}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_is_a_503_problem_for_every_database_failure_even_a_dropped_database() {
    let name = format!("ss_ready_{}", uuid::Uuid::new_v4().simple());
    if let Err(e) = admin_sql(&format!(r#"CREATE DATABASE "{name}""#)).await {
        let ci = std::env::var("CI").is_ok_and(|ci| ci.eq_ignore_ascii_case("true") || ci == "1");
        assert!(!ci, "PostgreSQL is required when CI=true: {e}");
        eprintln!("skipped: PostgreSQL not reachable ({e})");
        return;
    }
    let mut config = ServeConfig::for_tests(SECRET);
    config.database_url = Some(database_url(&name));
    let app = spawn_app_with(config, HandlerRegistry::new()).await;
    expect_json(app.ready().await, StatusCode::OK).await;

    admin_sql(&format!(r#"DROP DATABASE "{name}" WITH (FORCE)"#)).await.expect("the database is dropped");

    // The first answers see terminated sessions, the later ones a database
    // that does not exist: each must be the contract's 503.
    for attempt in 0..8 {
        let response = app.ready().await;
        let retry_after = response.headers().get("retry-after").cloned();
        let problem = expect_problem(response, StatusCode::SERVICE_UNAVAILABLE).await;
        assert!(retry_after.is_some(), "attempt {attempt}: no Retry-After");
        assert!(!problem["detail"].as_str().unwrap().contains(&name), "internals in the detail: {problem:#}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(app.live().await.status(), StatusCode::OK, "still live");
}
