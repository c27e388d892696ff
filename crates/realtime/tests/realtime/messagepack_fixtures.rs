//! The MessagePack codec against `@microsoft/signalr-protocol-msgpack`,
//! through files both sides check (tests/fixtures/messagepack/cases.json):
//! the server records this codec writes must be byte for byte the committed
//! files, which tests/e2e/messagepack.test.mjs decodes with the npm package;
//! the client records that package wrote must parse here into what the case
//! says. `UPDATE_FIXTURES=1 cargo test -p smartscheduler-realtime --test
//! realtime messagepack_fixtures` rewrites the server files after a
//! deliberate change.

use std::path::PathBuf;

use serde_json::{json, Value};
use smartscheduler_realtime::protocol::messagepack::{
    ack, close, completion_error, completion_result, invocation, parse_message, sequence, FrameBuffer, PING,
};
use smartscheduler_realtime::protocol::HubMessage;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/messagepack")
}

fn cases() -> Value {
    let text = std::fs::read_to_string(fixtures().join("cases.json")).expect("cases.json");
    serde_json::from_str(&text).expect("cases.json is JSON")
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or_else(|| panic!("a string: {value}"))
}

/// What the codec writes for one server case.
fn write(case: &Value) -> Vec<u8> {
    if let Some(c) = case.get("invocation") {
        invocation(text(&c["target"]), &c["argument"])
    } else if let Some(c) = case.get("completionResult") {
        completion_result(text(&c["invocationId"]), &c["result"])
    } else if let Some(c) = case.get("completionError") {
        completion_error(text(&c["invocationId"]), text(&c["error"]))
    } else if let Some(c) = case.get("close") {
        close(c["error"].as_str(), c["allowReconnect"].as_bool().expect("allowReconnect"))
    } else if case.get("ping").is_some() {
        PING.to_vec()
    } else if let Some(id) = case.get("ack") {
        ack(id.as_u64().expect("a sequence id"))
    } else if let Some(id) = case.get("sequence") {
        sequence(id.as_u64().expect("a sequence id"))
    } else {
        panic!("an unknown server case: {case}")
    }
}

/// A parsed message in the cases' notation.
fn describe(message: HubMessage) -> Value {
    match message {
        HubMessage::Invocation { invocation_id, target, arguments } => {
            json!({ "Invocation": { "invocationId": invocation_id, "target": target, "arguments": arguments } })
        }
        HubMessage::StreamInvocation { invocation_id, target } => {
            json!({ "StreamInvocation": { "invocationId": invocation_id, "target": target } })
        }
        HubMessage::Ignored(kind) => json!({ "Ignored": kind }),
        HubMessage::Ping => json!({ "Ping": null }),
        HubMessage::Close { error } => json!({ "Close": { "error": error } }),
        HubMessage::Ack { sequence_id } => json!({ "Ack": sequence_id }),
        HubMessage::Sequence { sequence_id } => json!({ "Sequence": sequence_id }),
        HubMessage::Unknown(kind) => json!({ "Unknown": kind }),
    }
}

#[test]
fn the_server_records_are_the_committed_bytes() {
    let update = std::env::var_os("UPDATE_FIXTURES").is_some();
    let cases = cases();
    let server = cases["server"].as_array().expect("server cases");
    assert!(server.len() >= 8, "every record the server writes has a case");
    for case in server {
        let path = fixtures().join(text(&case["file"]));
        let written = write(case);
        if update {
            std::fs::write(&path, &written).expect("writes the fixture");
        }
        let committed = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(written, committed, "{}: the codec's output changed", path.display());
    }
}

#[test]
fn the_records_the_npm_package_wrote_parse_as_the_cases_say() {
    let cases = cases();
    let client = cases["client"].as_array().expect("client cases");
    assert!(client.len() >= 10);
    let mut stream = Vec::new();
    let mut expected = Vec::new();
    for case in client {
        let path = fixtures().join(text(&case["file"]));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut buffer = FrameBuffer::new(32 * 1024);
        let records = buffer.push(&bytes).expect("a well-framed record");
        assert_eq!(records.len(), 1, "{}", path.display());
        let parsed = parse_message(&records[0]).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(describe(parsed), case["parsed"], "{}", path.display());
        stream.extend_from_slice(&bytes);
        expected.push(case["parsed"].clone());
    }
    // All of them in one message, as the client's send queue may batch them, split in two anywhere.
    for cut in [1, stream.len() / 3, stream.len() - 1] {
        let mut buffer = FrameBuffer::new(32 * 1024);
        let mut records = buffer.push(&stream[..cut]).expect("framed");
        records.extend(buffer.push(&stream[cut..]).expect("framed"));
        let parsed: Vec<Value> = records.iter().map(|r| describe(parse_message(r).expect("parses"))).collect();
        assert_eq!(parsed, expected, "cut at {cut}");
    }
}
