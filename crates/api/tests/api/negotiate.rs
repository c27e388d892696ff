//! Negotiate protocol versions 0 and 1 (TransportProtocols.md): a client
//! that names no `negotiateVersion` gets version 0, whose `connectionId` is
//! what it sends back as `id`; version 1 and above get the secret
//! `connectionToken` beside a public `connectionId`.

use std::time::Duration;

use crate::support::{expect_json, expect_problem, keys, spawn_app, TestApp};
use reqwest::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn negotiate(app: &TestApp, query: &str, token: &str) -> reqwest::Response {
    app.request(Method::POST, &format!("/hubs/jobs/negotiate{query}"), Some(token))
        .send()
        .await
        .expect("negotiate is answered")
}

fn is_url_safe(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Opens the hub's WebSocket at `path` on a raw socket, sends the JSON
/// handshake and returns the status line and whatever followed the head.
async fn upgrade_and_handshake(app: &TestApp, path: &str, bearer: &str) -> (String, Vec<u8>) {
    let address = app.address.trim_start_matches("http://");
    let mut socket = TcpStream::connect(address).await.expect("connects");
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Authorization: Bearer {bearer}\r\n\r\n"
    );
    let mut bytes = request.into_bytes();
    // One masked client text frame with the handshake.
    let handshake = b"{\"protocol\":\"json\",\"version\":1}\x1e";
    let mask = [0x11u8, 0x22, 0x33, 0x44];
    bytes.extend_from_slice(&[0x81, 0x80 | handshake.len() as u8]);
    bytes.extend_from_slice(&mask);
    bytes.extend(handshake.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    socket.write_all(&bytes).await.expect("writes");

    let mut seen = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = |seen: &[u8]| seen.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    tokio::time::timeout(Duration::from_secs(10), async {
        // Enough for a 101 and the 5-byte handshake reply, or a refusal's whole answer.
        while head_end(&seen).is_none_or(|end| seen.len() < end + 5) {
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .expect("an answer within 10 s");
    let end = head_end(&seen).expect("a response head");
    let status = String::from_utf8_lossy(&seen[..end]).lines().next().unwrap_or_default().to_owned();
    (status, seen[end..].to_vec())
}

#[tokio::test]
async fn without_negotiate_version_the_answer_is_version_0_without_a_connection_token() {
    let app = spawn_app().await;
    let token = app.dispatcher(&["north"]);
    for query in ["", "?negotiateVersion=0", "?useStatefulReconnect=true"] {
        let body = expect_json(negotiate(&app, query, &token).await, StatusCode::OK).await;
        assert_eq!(keys(&body), ["availableTransports", "connectionId", "negotiateVersion"], "{query}: {body}");
        assert_eq!(body["negotiateVersion"], 0, "{query}");
        assert!(is_url_safe(body["connectionId"].as_str().unwrap_or_default()), "{query}: {body}");
        assert_eq!(body["availableTransports"][0]["transport"], "WebSockets", "{query}");
    }
}

#[tokio::test]
async fn version_1_and_above_answer_version_1_with_a_secret_token() {
    let app = spawn_app().await;
    let token = app.dispatcher(&["north"]);
    for query in ["?negotiateVersion=1", "?negotiateVersion=7"] {
        let body = expect_json(negotiate(&app, query, &token).await, StatusCode::OK).await;
        assert_eq!(
            keys(&body),
            ["availableTransports", "connectionId", "connectionToken", "negotiateVersion"],
            "{query}: {body}"
        );
        assert_eq!(body["negotiateVersion"], 1, "{query}");
        assert_ne!(body["connectionId"], body["connectionToken"], "{query}: the secret is not the public id");
    }
    let stateful =
        expect_json(negotiate(&app, "?negotiateVersion=1&useStatefulReconnect=true", &token).await, StatusCode::OK)
            .await;
    assert_eq!(stateful["useStatefulReconnect"], true);
}

#[tokio::test]
async fn a_negotiate_version_that_is_not_a_whole_number_is_a_problem() {
    let app = spawn_app().await;
    let token = app.dispatcher(&["north"]);
    for query in ["?negotiateVersion=abc", "?negotiateVersion=-1", "?negotiateVersion=1.5", "?negotiateVersion="] {
        let problem = expect_problem(negotiate(&app, query, &token).await, StatusCode::BAD_REQUEST).await;
        assert!(problem["detail"].as_str().unwrap_or_default().contains("negotiateVersion"), "{query}: {problem}");
    }
}

#[tokio::test]
async fn a_version_0_connection_id_opens_the_websocket_once() {
    let app = spawn_app().await;
    let token = app.dispatcher(&["north"]);
    let body = expect_json(negotiate(&app, "", &token).await, StatusCode::OK).await;
    let id = body["connectionId"].as_str().expect("a connectionId").to_owned();

    let (status, after) = upgrade_and_handshake(&app, &format!("/hubs/jobs?id={id}"), &token).await;
    assert!(status.starts_with("HTTP/1.1 101"), "{status}");
    assert_eq!(&after[..5], &[0x81, 0x03, b'{', b'}', 0x1e], "the handshake reply");

    // Like a version 1 token, it is spent by its first WebSocket.
    let (again, _) = upgrade_and_handshake(&app, &format!("/hubs/jobs?id={id}"), &token).await;
    assert!(again.starts_with("HTTP/1.1 404"), "{again}");
}
