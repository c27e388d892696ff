//! WebSocket upgrades on a raw TCP socket: what the server's upgrade service
//! (which takes the socket from actix-http after a `101`) must do that the
//! official client never shows: bytes sent right behind the request head,
//! refusals written as whole problem+json answers, and upgrades to paths
//! that are not the hub.

use std::time::Duration;

use crate::support::spawn_app;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
/// RFC 6455's example answer to `KEY`.
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

pub(crate) fn upgrade_request(path: &str, port: &str, bearer: Option<&str>) -> String {
    let auth = bearer.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{auth}\r\n"
    )
}

/// A client text frame (masked, as RFC 6455 requires of clients).
pub(crate) fn client_text(payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mask = [0x11, 0x22, 0x33, 0x44];
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Reads until `done` says the bytes so far are enough, or the peer closes;
/// panics after 10 s.
pub(crate) async fn read_until(socket: &mut TcpStream, done: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut chunk = [0u8; 4096];
    tokio::time::timeout(Duration::from_secs(10), async {
        while !done(&seen) {
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .expect("an answer within 10 s");
    seen
}

pub(crate) fn head_end(bytes: &[u8]) -> Option<usize> {
    bytes.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

pub(crate) fn port(address: &str) -> &str {
    address.rsplit(':').next().expect("a port")
}

#[tokio::test]
async fn a_handshake_sent_with_the_upgrade_request_is_read_and_answered() {
    let app = spawn_app().await;
    let token = app.dispatcher(&["north"]);
    let mut socket = TcpStream::connect(app.address.trim_start_matches("http://")).await.expect("connects");
    // The request head and the SignalR handshake in one write: the server
    // reads them together, so the handshake is in the bytes read past the head.
    let mut bytes = upgrade_request("/hubs/jobs", port(&app.address), Some(&token)).into_bytes();
    bytes.extend(client_text(b"{\"protocol\":\"json\",\"version\":1}\x1e"));
    socket.write_all(&bytes).await.expect("writes");

    let reply = [0x81, 0x03, b'{', b'}', 0x1e];
    let seen = read_until(&mut socket, |seen| head_end(seen).is_some_and(|end| seen.len() >= end + reply.len())).await;
    let end = head_end(&seen).expect("a response head");
    let head = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains(&format!("sec-websocket-accept: {}", ACCEPT.to_ascii_lowercase())), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    assert_eq!(&seen[end..end + reply.len()], &reply, "the handshake reply {{}}\\x1e in one text frame, first");
}

#[tokio::test]
async fn a_refused_upgrade_is_a_whole_problem_answer_and_the_connection_ends() {
    let app = spawn_app().await;
    let cases = [
        ("/hubs/jobs", None, "401"),
        ("/hubs/jobs?id=no-such-connection", None, "404"),
        ("/no/such/path", None, "404"),
        ("/hubs/jobs/negotiate", None, "405"),
        ("/api/jobs?limit=0", Some(app.admin()), "400"),
    ];
    for (path, token, status) in cases {
        let mut socket = TcpStream::connect(app.address.trim_start_matches("http://")).await.expect("connects");
        socket.write_all(upgrade_request(path, port(&app.address), token.as_deref()).as_bytes()).await.expect("writes");
        // Everything up to the server's close: the head, then exactly the body it announced.
        let seen = read_until(&mut socket, |_| false).await;
        let text = String::from_utf8_lossy(&seen);
        let end = head_end(&seen).unwrap_or_else(|| panic!("{path}: a response head: {text}"));
        let head = text[..end].to_ascii_lowercase();
        assert!(head.starts_with(&format!("http/1.1 {status}")), "{path}: {head}");
        assert!(head.contains("content-type: application/problem+json"), "{path}: {head}");
        assert!(head.contains("connection: close"), "{path}: {head}");
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{path}: a content-length: {head}"));
        assert_eq!(seen.len() - end, length, "{path}: the whole body, then the end");
        let body: serde_json::Value = serde_json::from_slice(&seen[end..]).expect("a JSON body");
        assert_eq!(body["status"].as_u64().map(|s| s.to_string()).as_deref(), Some(status), "{path}: {body}");
    }
}
