//! The ASP.NET Core SignalR hub protocols, as the official
//! `@microsoft/signalr` clients speak them. Here the JSON protocol (version
//! 1, and 2 with stateful reconnect): records are JSON objects ending in the
//! record separator 0x1E; several may share one message, and a record never
//! spans two. [`messagepack`] is the binary one, and [`Codec`] is the one a
//! connection's handshake chose. Pure functions, no I/O.

use serde::Serialize;
use serde_json::{Map, Value};

pub mod codec;
pub mod messagepack;

pub use codec::{Codec, Encoded, Splitter};

/// The record separator that ends every record.
pub const RS: u8 = 0x1e;
/// The handshake success reply, exactly as ASP.NET writes it.
pub const HANDSHAKE_OK: &str = "{}\u{1e}";
/// A Ping record.
pub const PING: &str = "{\"type\":6}\u{1e}";

/// Why input was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// A record is not a JSON object, or lacks a numeric `type`.
    #[error("Invalid message: {0}")]
    Invalid(String),
    /// The buffered, unterminated input grew past the limit.
    #[error("Message exceeds the maximum size of {0} bytes.")]
    TooLarge(usize),
}

/// Splits incoming text into records, keeping an unterminated tail for the
/// next message and bounding what it buffers.
#[derive(Debug)]
pub struct RecordBuffer {
    tail: Vec<u8>,
    max: usize,
}

impl RecordBuffer {
    /// A buffer that refuses records longer than `max` bytes.
    pub fn new(max: usize) -> Self {
        Self { tail: Vec::new(), max }
    }

    /// Adds `data` and returns the records it completes, in order, without
    /// their separators.
    ///
    /// # Errors
    /// [`ProtocolError::TooLarge`] when a record exceeds the limit.
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<Vec<u8>>, ProtocolError> {
        let mut records = Vec::new();
        let mut rest = data;
        while let Some(pos) = rest.iter().position(|&b| b == RS) {
            let (head, tail) = rest.split_at(pos);
            let mut record = std::mem::take(&mut self.tail);
            record.extend_from_slice(head);
            if record.len() > self.max {
                return Err(ProtocolError::TooLarge(self.max));
            }
            records.push(record);
            rest = &tail[1..];
        }
        self.tail.extend_from_slice(rest);
        if self.tail.len() > self.max {
            return Err(ProtocolError::TooLarge(self.max));
        }
        Ok(records)
    }

    /// Whether part of a record is waiting for its separator.
    pub fn has_partial(&self) -> bool {
        !self.tail.is_empty()
    }
}

/// The client's first record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeRequest {
    /// `json` or `messagepack`.
    pub protocol: String,
    /// 1 (or 0, served as 1), or 2 when the client negotiated stateful reconnect.
    pub version: u64,
}

/// Highest hub protocol version accepted in the handshake.
pub const MAX_VERSION: u64 = 2;

/// Parses and checks a handshake record. The error text is what ASP.NET
/// answers, to be sent back as `{"error": ...}`.
///
/// # Errors
/// A message for the client when the handshake is not acceptable.
pub fn parse_handshake(record: &[u8]) -> Result<HandshakeRequest, String> {
    let value: Value = serde_json::from_slice(record).map_err(|_| "Handshake request is not valid JSON.".to_owned())?;
    let object = value.as_object().ok_or_else(|| "Handshake request must be a JSON object.".to_owned())?;
    let protocol = object
        .get("protocol")
        .and_then(Value::as_str)
        .ok_or_else(|| "Handshake request is missing the 'protocol' string.".to_owned())?;
    let version = object
        .get("version")
        .and_then(Value::as_u64)
        .ok_or_else(|| "Handshake request is missing the 'version' number.".to_owned())?;
    if Codec::named(protocol).is_none() {
        return Err(format!("The protocol '{protocol}' is not supported."));
    }
    // ASP.NET accepts any version up to its own (`version <= Version`): Python's
    // signalrcore sends 0 after a version 0 negotiation, and is served as 1.
    if version > MAX_VERSION {
        return Err(format!("The server does not support version {version} of the '{protocol}' protocol."));
    }
    Ok(HandshakeRequest { protocol: protocol.to_owned(), version })
}

/// The handshake failure reply: `{"error":"..."}` and the separator.
pub fn handshake_error(message: &str) -> String {
    record(&serde_json::json!({ "error": message }))
}

/// A record the server receives.
#[derive(Debug, Clone, PartialEq)]
pub enum HubMessage {
    /// Type 1: a call. Without an id the caller wants no answer.
    Invocation {
        /// Present for `invoke`, absent for `send`.
        invocation_id: Option<String>,
        /// The method.
        target: String,
        /// The arguments.
        arguments: Vec<Value>,
    },
    /// Type 4: a streaming call (not served; answered with an error).
    StreamInvocation {
        /// Its id.
        invocation_id: String,
        /// The method.
        target: String,
    },
    /// Type 2, 3 or 5: stream items, completions of client results and
    /// cancellations, none of which this hub uses.
    Ignored(u64),
    /// Type 6.
    Ping,
    /// Type 7: the client is leaving.
    Close {
        /// Why.
        error: Option<String>,
    },
    /// Type 8 and 9: stateful reconnect.
    Ack {
        /// Highest processed sequence id.
        sequence_id: u64,
    },
    /// Type 9.
    Sequence {
        /// The next sequence id.
        sequence_id: u64,
    },
    /// A type this server does not know: ignored, as the JS client does.
    Unknown(u64),
}

fn invalid(message: impl Into<String>) -> ProtocolError {
    ProtocolError::Invalid(message.into())
}

fn optional_id(object: &Map<String, Value>) -> Result<Option<String>, ProtocolError> {
    match object.get("invocationId") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(id)) if !id.is_empty() => Ok(Some(id.clone())),
        Some(_) => Err(invalid("'invocationId' must be a non-empty string")),
    }
}

fn required_target(object: &Map<String, Value>) -> Result<String, ProtocolError> {
    match object.get("target") {
        Some(Value::String(t)) if !t.is_empty() => Ok(t.clone()),
        _ => Err(invalid("'target' must be a non-empty string")),
    }
}

fn sequence_id(object: &Map<String, Value>) -> Result<u64, ProtocolError> {
    object.get("sequenceId").and_then(Value::as_u64).ok_or_else(|| invalid("'sequenceId' must be a number"))
}

/// Parses one record (without its separator). Key order is free and
/// unknown keys (such as `headers`) are ignored.
///
/// # Errors
/// [`ProtocolError::Invalid`] for anything that is not a valid record.
pub fn parse_message(record: &[u8]) -> Result<HubMessage, ProtocolError> {
    let value: Value = serde_json::from_slice(record).map_err(|e| invalid(format!("not JSON ({e})")))?;
    let Value::Object(object) = value else {
        return Err(invalid("a record must be a JSON object"));
    };
    let kind = object.get("type").and_then(Value::as_u64).ok_or_else(|| invalid("'type' must be a number"))?;
    Ok(match kind {
        1 => {
            let arguments = match object.get("arguments") {
                Some(Value::Array(args)) => args.clone(),
                None => Vec::new(),
                Some(_) => return Err(invalid("'arguments' must be an array")),
            };
            HubMessage::Invocation {
                invocation_id: optional_id(&object)?,
                target: required_target(&object)?,
                arguments,
            }
        }
        4 => HubMessage::StreamInvocation {
            invocation_id: optional_id(&object)?.ok_or_else(|| invalid("'invocationId' is required"))?,
            target: required_target(&object)?,
        },
        2 | 3 | 5 => HubMessage::Ignored(kind),
        6 => HubMessage::Ping,
        7 => HubMessage::Close { error: object.get("error").and_then(Value::as_str).map(str::to_owned) },
        8 => HubMessage::Ack { sequence_id: sequence_id(&object)? },
        9 => HubMessage::Sequence { sequence_id: sequence_id(&object)? },
        other => HubMessage::Unknown(other),
    })
}

/// Serializes `value` as one record. serde_json escapes control characters,
/// so a 0x1E never appears inside.
pub fn record(value: &impl Serialize) -> String {
    let mut text = serde_json::to_string(value).unwrap_or_else(|_| "{}".to_owned());
    text.push(RS as char);
    text
}

#[derive(Serialize)]
struct Completion<'a, T: Serialize> {
    #[serde(rename = "type")]
    kind: u8,
    #[serde(rename = "invocationId")]
    invocation_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<&'a T>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

/// A Completion with a result.
pub fn completion_result(invocation_id: &str, result: &impl Serialize) -> String {
    record(&Completion { kind: 3, invocation_id, result: Some(result), error: None })
}

/// A Completion with an error; the client's `invoke` rejects with it.
pub fn completion_error(invocation_id: &str, error: &str) -> String {
    record(&Completion::<()> { kind: 3, invocation_id, result: None, error: Some(error) })
}

#[derive(Serialize)]
struct Invocation<'a, T: Serialize> {
    #[serde(rename = "type")]
    kind: u8,
    target: &'a str,
    arguments: [&'a T; 1],
}

/// A server-to-client call with one argument and no `invocationId` (the key
/// is left out; a null would kill the client).
pub fn invocation(target: &str, argument: &impl Serialize) -> String {
    record(&Invocation { kind: 1, target, arguments: [argument] })
}

#[derive(Serialize)]
struct Close<'a> {
    #[serde(rename = "type")]
    kind: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    #[serde(rename = "allowReconnect", skip_serializing_if = "std::ops::Not::not")]
    allow_reconnect: bool,
}

/// A Close record. Without `allow_reconnect` the client stops for good.
pub fn close(error: Option<&str>, allow_reconnect: bool) -> String {
    record(&Close { kind: 7, error, allow_reconnect })
}

#[derive(Serialize)]
struct SequenceRecord {
    #[serde(rename = "type")]
    kind: u8,
    #[serde(rename = "sequenceId")]
    sequence_id: u64,
}

/// An Ack (stateful reconnect): every record up to `sequence_id` was processed.
pub fn ack(sequence_id: u64) -> String {
    record(&SequenceRecord { kind: 8, sequence_id })
}

/// A Sequence (stateful reconnect): the number of the first record that follows.
pub fn sequence(sequence_id: u64) -> String {
    record(&SequenceRecord { kind: 9, sequence_id })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn one(input: &str) -> HubMessage {
        let mut buffer = RecordBuffer::new(32 * 1024);
        let records = buffer.push(input.as_bytes()).unwrap();
        assert_eq!(records.len(), 1);
        parse_message(&records[0]).unwrap()
    }

    #[test]
    fn vector_1_plain_and_stateful_handshakes_are_accepted() {
        let mut buffer = RecordBuffer::new(1024);
        let records = buffer.push(b"{\"protocol\":\"json\",\"version\":1}\x1e").unwrap();
        assert_eq!(parse_handshake(&records[0]).unwrap(), HandshakeRequest { protocol: "json".into(), version: 1 });
        assert_eq!(parse_handshake(b"{\"protocol\":\"json\",\"version\":2}").unwrap().version, 2);
        assert_eq!(parse_handshake(b"{\"version\":1,\"protocol\":\"json\",\"extra\":true}").unwrap().version, 1);
        // signalrcore's, after a version 0 negotiation; ASP.NET accepts it too.
        assert_eq!(parse_handshake(b"{\"protocol\":\"json\",\"version\":0}").unwrap().version, 0);
    }

    #[test]
    fn vector_2_handshake_replies_match_asp_net() {
        assert_eq!(HANDSHAKE_OK, "{}\u{1e}");
        let err = parse_handshake(b"{\"protocol\":\"xml\",\"version\":1}").unwrap_err();
        assert_eq!(handshake_error(&err), "{\"error\":\"The protocol 'xml' is not supported.\"}\u{1e}");
        assert_eq!(
            parse_handshake(b"{\"protocol\":\"json\",\"version\":3}").unwrap_err(),
            "The server does not support version 3 of the 'json' protocol."
        );
        assert!(parse_handshake(b"{\"protocol\":\"json\"}").is_err());
        assert!(parse_handshake(b"not json").is_err());
        assert!(parse_handshake(b"[1]").is_err());
    }

    #[test]
    fn vector_3_ping_is_accepted_and_emitted() {
        assert_eq!(one("{\"type\":6}\u{1e}"), HubMessage::Ping);
        assert_eq!(PING, "{\"type\":6}\u{1e}");
    }

    #[test]
    fn vector_4_invocation_with_type_last_is_accepted() {
        let msg = one("{\"target\":\"SubmitJob\",\"arguments\":[{\"kind\":\"render\",\"priority\":2}],\"invocationId\":\"0\",\"type\":1}\u{1e}");
        assert_eq!(
            msg,
            HubMessage::Invocation {
                invocation_id: Some("0".into()),
                target: "SubmitJob".into(),
                arguments: vec![json!({"kind":"render","priority":2})]
            }
        );
    }

    #[test]
    fn vector_5_completions_have_the_recommended_forms() {
        assert_eq!(
            completion_result("0", &json!({"jobId":"j-42"})),
            "{\"type\":3,\"invocationId\":\"0\",\"result\":{\"jobId\":\"j-42\"}}\u{1e}"
        );
        assert_eq!(
            completion_error("0", "Unknown hub method 'SubmitJob'"),
            "{\"type\":3,\"invocationId\":\"0\",\"error\":\"Unknown hub method 'SubmitJob'\"}\u{1e}"
        );
    }

    #[test]
    fn vector_6_send_without_id_is_accepted() {
        let msg = one("{\"target\":\"Heartbeat\",\"arguments\":[\"worker-7\"],\"type\":1}\u{1e}");
        assert!(matches!(msg, HubMessage::Invocation { invocation_id: None, .. }));
    }

    #[test]
    fn vector_7_server_invocation_has_no_invocation_id_key() {
        assert_eq!(
            invocation("JobAssigned", &json!({"jobId":"j-42","queue":"render"})),
            "{\"type\":1,\"target\":\"JobAssigned\",\"arguments\":[{\"jobId\":\"j-42\",\"queue\":\"render\"}]}\u{1e}"
        );
    }

    #[test]
    fn vector_8_several_records_in_one_message_are_split() {
        let mut buffer = RecordBuffer::new(1024);
        let records = buffer
            .push(
                "{\"type\":6}\u{1e}{\"type\":1,\"target\":\"JobAssigned\",\"arguments\":[{\"jobId\":\"j-43\"}]}\u{1e}"
                    .as_bytes(),
            )
            .unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(parse_message(&records[0]).unwrap(), HubMessage::Ping);
        assert!(
            matches!(parse_message(&records[1]).unwrap(), HubMessage::Invocation { ref target, .. } if target == "JobAssigned")
        );
    }

    #[test]
    fn vector_9_close_records() {
        assert_eq!(
            close(Some("Connection closed with an error."), true),
            "{\"type\":7,\"error\":\"Connection closed with an error.\",\"allowReconnect\":true}\u{1e}"
        );
        assert_eq!(close(None, false), "{\"type\":7}\u{1e}");
        assert_eq!(one("{\"type\":7}\u{1e}"), HubMessage::Close { error: None });
    }

    #[test]
    fn vector_10_ack_and_sequence_are_emitted_as_specified() {
        assert_eq!(ack(3), "{\"type\":8,\"sequenceId\":3}\u{1e}");
        assert_eq!(sequence(4), "{\"type\":9,\"sequenceId\":4}\u{1e}");
    }

    #[test]
    fn vector_10_ack_and_sequence_parse() {
        assert_eq!(one("{\"type\":8,\"sequenceId\":3}\u{1e}"), HubMessage::Ack { sequence_id: 3 });
        assert_eq!(one("{\"type\":9,\"sequenceId\":4}\u{1e}"), HubMessage::Sequence { sequence_id: 4 });
        assert!(parse_message(b"{\"type\":8}").is_err());
    }

    #[test]
    fn a_partial_record_waits_for_its_separator() {
        let mut buffer = RecordBuffer::new(1024);
        assert!(buffer.push(b"{\"type\":").unwrap().is_empty());
        assert!(buffer.has_partial());
        let records = buffer.push(b"6}\x1e{\"ty").unwrap();
        assert_eq!(records, vec![b"{\"type\":6}".to_vec()]);
        assert!(buffer.has_partial());
    }

    #[test]
    fn oversized_input_is_refused_even_without_a_separator() {
        let mut buffer = RecordBuffer::new(16);
        assert_eq!(buffer.push(&[b'a'; 17]).unwrap_err(), ProtocolError::TooLarge(16));
        let mut buffer = RecordBuffer::new(16);
        let mut long = vec![b'a'; 20];
        long.push(RS);
        assert!(buffer.push(&long).is_err());
    }

    #[test]
    fn garbage_records_are_invalid_not_panics() {
        for input in [
            &b"nonsense"[..],
            b"[]",
            b"{}",
            b"{\"type\":\"1\"}",
            b"\xff\xfe",
            b"{\"type\":1}",
            b"{\"type\":1,\"target\":\"\"}",
        ] {
            assert!(parse_message(input).is_err(), "{:?}", String::from_utf8_lossy(input));
        }
        assert!(parse_message(b"{\"type\":1,\"target\":\"X\",\"invocationId\":5}").is_err());
        assert!(parse_message(b"{\"type\":1,\"target\":\"X\",\"arguments\":{}}").is_err());
    }

    #[test]
    fn unknown_types_and_headers_are_tolerated() {
        assert_eq!(parse_message(b"{\"type\":99}").unwrap(), HubMessage::Unknown(99));
        assert!(matches!(
            parse_message(b"{\"type\":1,\"target\":\"X\",\"arguments\":[],\"headers\":{\"a\":\"b\"}}").unwrap(),
            HubMessage::Invocation { .. }
        ));
    }

    #[test]
    fn control_characters_are_escaped_so_records_never_contain_a_separator() {
        let text = invocation("JobAssigned", &json!({"title": "a\u{1e}b"}));
        assert_eq!(text.bytes().filter(|&b| b == RS).count(), 1);
        assert!(text.ends_with('\u{1e}'));
    }
}
