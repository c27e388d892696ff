//! `GET /api/presence?region=R`: a contractor with a hub connection is
//! online, stays online for the grace after its last one closes, then is
//! offline; who may ask. (`PresenceChanged` on the hub is driven by the
//! official client in tests/e2e.)

use std::time::Duration;

use crate::support::{expect_json, expect_problem, spawn_app_with, TestApp, SECRET};
use crate::upgrade::{client_text, head_end, port, read_until, upgrade_request};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use smartscheduler_api::ServeConfig;
use smartscheduler_application::HandlerRegistry;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use uuid::Uuid;

async fn presence(app: &TestApp, token: Option<&str>, query: &str) -> reqwest::Response {
    app.request(Method::GET, &format!("/api/presence{query}"), token).send().await.expect("the request is sent")
}

/// A hub connection of `token` (WebSocket, JSON), its handshake answered.
async fn hub_connection(app: &TestApp, token: &str) -> TcpStream {
    let mut socket = TcpStream::connect(app.address.trim_start_matches("http://")).await.expect("connects");
    let mut bytes = upgrade_request("/hubs/jobs", port(&app.address), Some(token)).into_bytes();
    bytes.extend(client_text(b"{\"protocol\":\"json\",\"version\":1}\x1e"));
    socket.write_all(&bytes).await.expect("writes");
    read_until(&mut socket, |seen| head_end(seen).is_some_and(|end| seen.len() >= end + 5)).await;
    socket
}

/// The entry of `contractor` in north's presence, as an admin reads it.
async fn entry(app: &TestApp, contractor: &str) -> Value {
    let listed = expect_json(presence(app, Some(&app.admin()), "?region=north").await, StatusCode::OK).await;
    assert_eq!(listed["region"], "north");
    let contractors = listed["contractors"].as_array().expect("a list").clone();
    contractors.into_iter().find(|c| c["contractorId"] == contractor).expect("every contractor of the region is listed")
}

async fn app_with_grace(seconds: u64) -> TestApp {
    let mut config = ServeConfig::for_tests(SECRET);
    config.delivery.presence_grace_seconds = seconds;
    spawn_app_with(config, HandlerRegistry::new()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connected_contractor_is_online_until_a_grace_after_its_last_connection_closes() {
    let app = app_with_grace(1).await;
    let ana = app.contractor_id("north").await;
    let never = app.contractor_id("north").await;
    app.contractor_id("south").await;
    let token = app.contractor(Uuid::parse_str(&ana).expect("a UUID"));

    let first = hub_connection(&app, &token).await;
    let second = hub_connection(&app, &token).await;
    let mut online = Value::Null;
    for _ in 0..50 {
        online = entry(&app, &ana).await;
        if online["connections"] == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(online["online"], true, "{online}");
    assert_eq!(online["connections"], 2);
    assert!(online["lastSeenUtc"].is_string());
    assert!(online["name"].is_string());
    let listed = expect_json(presence(&app, Some(&app.admin()), "?region=north").await, StatusCode::OK).await;
    assert_eq!(listed["contractors"].as_array().unwrap().len(), 2, "north's contractors only");
    let absent = entry(&app, &never).await;
    assert_eq!(absent["online"], false);
    assert_eq!(absent["connections"], 0);
    assert!(absent["lastSeenUtc"].is_null(), "never seen");

    drop(first);
    drop(second);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let within = entry(&app, &ana).await;
    assert_eq!((within["online"].clone(), within["connections"].clone()), (Value::Bool(true), 0.into()), "{within}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = entry(&app, &ana).await;
    assert_eq!(after["online"], false, "{after}");
    assert!(after["lastSeenUtc"].is_string(), "last seen when it closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_for_admins_and_the_regions_dispatchers_and_needs_a_valid_region() {
    let app = app_with_grace(10).await;
    let ana = app.contractor_id("north").await;
    expect_json(presence(&app, Some(&app.dispatcher(&["north"])), "?region=north").await, StatusCode::OK).await;
    let south =
        expect_problem(presence(&app, Some(&app.dispatcher(&["south"])), "?region=north").await, StatusCode::FORBIDDEN)
            .await;
    assert!(south["detail"].as_str().unwrap().contains("north"), "{south}");
    let contractor = app.contractor(Uuid::parse_str(&ana).expect("a UUID"));
    expect_problem(presence(&app, Some(&contractor), "?region=north").await, StatusCode::FORBIDDEN).await;
    expect_problem(presence(&app, None, "?region=north").await, StatusCode::UNAUTHORIZED).await;
    let missing = expect_problem(presence(&app, Some(&app.admin()), "").await, StatusCode::BAD_REQUEST).await;
    assert!(missing["detail"].as_str().unwrap().contains("region"), "{missing}");
    expect_problem(presence(&app, Some(&app.admin()), "?region=no%20spaces").await, StatusCode::BAD_REQUEST).await;
}
