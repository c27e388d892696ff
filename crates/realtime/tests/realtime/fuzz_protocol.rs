//! Property tests ("fuzzing") of the SignalR JSON hub protocol: everything a
//! client can put on the wire reaches [`RecordBuffer::push`],
//! [`parse_handshake`] and [`parse_message`] before any check of who it is, so
//! none of them may panic, buffer past the limit or hand on a record that
//! still holds a separator, whatever the bytes and however they are split
//! into WebSocket messages. What the server writes must parse back.
//!
//! Case counts: `PROPTEST_CASES` (proptest's default, 256, keeps `cargo test`
//! quick); `scripts/fuzz.sh` runs these with many more. A failure is saved in
//! `crates/realtime/proptest-regressions/fuzz_protocol.txt` and replayed first
//! on every later run: commit that file with the fix.

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::{json, Map, Value};

use crate::support::exact_json;
use smartscheduler_realtime::protocol::{
    close, completion_error, completion_result, handshake_error, invocation, parse_handshake, parse_message,
    HubMessage, ProtocolError, RecordBuffer, MAX_VERSION, RS,
};

/// Where failures are kept (replayed before new cases on every run).
const REGRESSIONS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/proptest-regressions/fuzz_protocol.txt");

/// [`crate::support::fuzz`] with this module's regressions.
fn fuzz<S: Strategy>(name: &str, strategy: S, property: impl Fn(S::Value) -> Result<(), TestCaseError>) {
    crate::support::fuzz(REGRESSIONS, name, strategy, property);
}

// ---------------------------------------------------------------------------
// Strategies

/// Bytes rich in separators and JSON punctuation, so records of every length
/// (empty ones included) and near-JSON appear often.
fn wire_bytes(max_len: usize) -> impl Strategy<Value = Vec<u8>> {
    // A cheap mapping of random bytes (a union per byte is ten times slower):
    // about 1 in 5 becomes a separator, 1 in 5 JSON punctuation.
    const PUNCTUATION: &[u8] = b"{}[]\":,0123456789 tnf";
    prop::collection::vec(any::<(u8, u8)>(), 0..max_len).prop_map(|pairs| {
        pairs
            .into_iter()
            .map(|(pick, byte)| match pick % 10 {
                0 | 1 => RS,
                2 | 3 => PUNCTUATION[usize::from(byte) % PUNCTUATION.len()],
                _ => byte,
            })
            .collect()
    })
}

/// Splits `data` into WebSocket messages of the given sizes (cycled; a zero
/// size makes an empty message), the rest in a last one.
fn chunk<'a>(data: &'a [u8], sizes: &[usize]) -> Vec<&'a [u8]> {
    let mut chunks = Vec::new();
    let mut rest = data;
    let mut i = 0;
    // Bounded: all-zero sizes must not spin out thousands of empty messages.
    while !sizes.is_empty() && !rest.is_empty() && i < data.len() / 8 + sizes.len() {
        let n = sizes[i % sizes.len()].min(rest.len());
        let (head, tail) = rest.split_at(n);
        chunks.push(head);
        rest = tail;
        i += 1;
    }
    chunks.push(rest);
    chunks
}

fn chunk_sizes() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(prop_oneof![1 => Just(0usize), 8 => 1usize..64, 2 => 64usize..2048], 0..16)
}

/// Keys the protocol reads, and any other.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "type", "target", "arguments", "invocationId", "sequenceId", "error", "headers", "protocol",
            "version", "allowReconnect", "result", "item", "streamIds",
        ])
        .prop_map(str::to_owned),
        1 => any::<String>(),
    ]
}

/// Numbers at the edges of what the parser converts (u64, i64, f64).
fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        (0u64..12).prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        Just(json!(u64::MAX)),
        Just(json!(-1)),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f).map(Value::Number)),
        Just(json!(1.0)),
        Just(json!(1.5)),
    ]
}

/// Any JSON value, floats included.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        number(),
        any::<String>().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..6).prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
        ]
    })
}

/// An object shaped like a hub record: each field the parser reads is
/// present or not, well-typed or not, plus other keys.
fn record_shaped() -> impl Strategy<Value = Map<String, Value>> {
    let field = |good: BoxedStrategy<Value>| prop::option::weighted(0.7, prop_oneof![3 => good, 1 => json_value()]);
    (
        field((0u64..12).prop_map(Value::from).boxed()),
        field(prop_oneof![Just("JoinDispatchGroup".to_owned()), any::<String>()].prop_map(Value::from).boxed()),
        field(prop::collection::vec(json_value(), 0..4).prop_map(Value::Array).boxed()),
        field(any::<String>().prop_map(Value::from).boxed()),
        field(number().boxed()),
        field(any::<String>().prop_map(Value::from).boxed()),
        prop::collection::vec((key(), json_value()), 0..3),
    )
        .prop_map(|(kind, target, arguments, id, sequence_id, error, extra)| {
            let mut object: Map<String, Value> = extra.into_iter().collect();
            for (name, value) in [
                ("type", kind),
                ("target", target),
                ("arguments", arguments),
                ("invocationId", id),
                ("sequenceId", sequence_id),
                ("error", error),
            ] {
                if let Some(value) = value {
                    object.insert(name.to_owned(), value);
                }
            }
            object
        })
}

/// Text made of JSON tokens and the protocol's keys: mostly almost-valid
/// records, with the odd escape, surrogate, huge number or deep nesting.
fn near_json() -> impl Strategy<Value = String> {
    let token = prop::sample::select(vec![
        "{",
        "}",
        "[",
        "]",
        ":",
        ",",
        "\"type\"",
        "\"target\"",
        "\"arguments\"",
        "\"invocationId\"",
        "\"sequenceId\"",
        "\"protocol\"",
        "\"version\"",
        "\"json\"",
        "\"error\"",
        "1",
        "2",
        "3",
        "4",
        "6",
        "7",
        "8",
        "9",
        "0",
        "-1",
        "1.5",
        "1e400",
        "-0",
        "18446744073709551616",
        "null",
        "true",
        "false",
        "\"\"",
        "\"x\"",
        "\"\\u001e\"",
        "\"\\ud800\"",
        "\"\\\"",
        "\u{1e}",
        " ",
        "\u{0}",
    ]);
    prop_oneof![
        4 => prop::collection::vec(token, 0..64).prop_map(|tokens| tokens.concat()),
        1 => (1usize..400, prop::sample::select(vec!["[", "{\"a\":"])).prop_map(|(depth, open)| open.repeat(depth)),
    ]
}

// ---------------------------------------------------------------------------
// RecordBuffer

/// Feeds `chunks` to a buffer and checks it against a model: the records a
/// push returns are exactly the complete ones (no separator inside, none
/// longer than `max`), and a push fails exactly when a record, complete or
/// still buffered, grew past `max`: it never holds more than the limit.
fn check_buffer(max: usize, chunks: &[&[u8]]) -> Result<(), TestCaseError> {
    let mut buffer = RecordBuffer::new(max);
    let mut tail: Vec<u8> = Vec::new();
    for chunk in chunks {
        let mut expected = Vec::new();
        let mut current = tail.clone();
        let mut overflow = false;
        for &b in *chunk {
            if b == RS {
                overflow |= current.len() > max;
                expected.push(std::mem::take(&mut current));
            } else {
                current.push(b);
            }
        }
        overflow |= current.len() > max;
        match buffer.push(chunk) {
            Err(ProtocolError::TooLarge(limit)) => {
                prop_assert!(overflow, "refused input within the limit");
                prop_assert_eq!(limit, max);
                return Ok(()); // the connection closes here
            }
            Err(other) => return Err(TestCaseError::fail(format!("unexpected error {other:?}"))),
            Ok(records) => {
                prop_assert!(!overflow, "accepted a record or a tail longer than {} bytes", max);
                for record in &records {
                    prop_assert!(!record.contains(&RS), "a record still holds a separator");
                    prop_assert!(record.len() <= max);
                }
                prop_assert_eq!(&records, &expected);
                tail = current;
                prop_assert_eq!(buffer.has_partial(), !tail.is_empty());
            }
        }
    }
    Ok(())
}

#[test]
fn record_buffer_splits_any_bytes_in_any_chunking_within_the_limit() {
    fuzz("record_buffer_model", (1usize..300, wire_bytes(2048), chunk_sizes()), |(max, data, sizes)| {
        check_buffer(max, &chunk(&data, &sizes))
    });
}

#[test]
fn record_buffer_handles_arbitrary_bytes_and_limits() {
    let limit = prop_oneof![Just(0usize), Just(1), 1usize..64, Just(32 * 1024)];
    let data = prop::collection::vec(any::<u8>(), 0..4096);
    fuzz("record_buffer_arbitrary", (limit, data, chunk_sizes()), |(max, data, sizes)| {
        check_buffer(max, &chunk(&data, &sizes))
    });
}

// ---------------------------------------------------------------------------
// Parsers on hostile input

/// Parses `bytes` both ways; neither may panic, and a handshake refusal
/// must come back as one well-formed record.
fn parse_both(bytes: &[u8]) -> Result<(), TestCaseError> {
    let _ = parse_message(bytes);
    check_handshake_reply(bytes)
}

/// The handshake answer echoes client text (an unknown protocol's name):
/// it must stay one JSON record with one separator, at its end.
fn check_handshake_reply(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Err(message) = parse_handshake(bytes) {
        let reply = handshake_error(&message);
        prop_assert_eq!(reply.bytes().filter(|&b| b == RS).count(), 1);
        prop_assert!(reply.ends_with(RS as char));
        let parsed: Value =
            serde_json::from_str(&reply[..reply.len() - 1]).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(parsed, json!({ "error": message }));
    }
    Ok(())
}

#[test]
fn parsers_never_panic_on_arbitrary_bytes() {
    fuzz("parse_arbitrary_bytes", prop::collection::vec(any::<u8>(), 0..2048), |bytes| parse_both(&bytes));
}

#[test]
fn parsers_never_panic_on_arbitrary_text() {
    fuzz("parse_arbitrary_text", any::<String>(), |text| parse_both(text.as_bytes()));
}

#[test]
fn parsers_never_panic_on_near_json() {
    fuzz("parse_near_json", near_json(), |text| parse_both(text.as_bytes()));
}

#[test]
fn parsers_never_panic_on_arbitrary_json_values() {
    fuzz("parse_arbitrary_json", json_value(), |value| {
        let bytes = serde_json::to_vec(&value).expect("a Value serializes");
        parse_both(&bytes)
    });
}

/// What a record-shaped object must parse into, when it parses at all.
#[test]
fn record_shaped_objects_parse_consistently() {
    fuzz("parse_record_shaped", record_shaped(), |object| {
        let bytes = serde_json::to_vec(&Value::Object(object)).expect("a Value serializes");
        check_handshake_reply(&bytes)?;
        // The oracle is the JSON as read back, not as generated: serde_json
        // reads floats best-effort, so 1e63 may come back one ulp off.
        let Ok(Value::Object(object)) = serde_json::from_slice::<Value>(&bytes) else {
            return Err(TestCaseError::fail("serialized JSON does not read back as an object"));
        };
        let kind = object.get("type").and_then(Value::as_u64);
        let Ok(message) = parse_message(&bytes) else {
            return Ok(());
        };
        let kind = kind.ok_or_else(|| TestCaseError::fail("accepted a record without a numeric type"))?;
        let text = |name: &str| object.get(name).and_then(Value::as_str).map(str::to_owned);
        match message {
            HubMessage::Invocation { invocation_id, target, arguments } => {
                prop_assert_eq!(kind, 1);
                prop_assert!(!target.is_empty());
                prop_assert_eq!(Some(target), text("target"));
                prop_assert_eq!(invocation_id, text("invocationId").filter(|id| !id.is_empty()));
                let expected = object.get("arguments").cloned().unwrap_or(Value::Array(Vec::new()));
                prop_assert_eq!(Value::Array(arguments), expected);
            }
            HubMessage::StreamInvocation { invocation_id, target } => {
                prop_assert_eq!(kind, 4);
                prop_assert!(!invocation_id.is_empty() && !target.is_empty());
            }
            HubMessage::Ignored(k) => prop_assert!(k == kind && matches!(k, 2 | 3 | 5)),
            HubMessage::Ping => prop_assert_eq!(kind, 6),
            HubMessage::Close { error } => {
                prop_assert_eq!(kind, 7);
                prop_assert_eq!(error, text("error"));
            }
            HubMessage::Ack { sequence_id } => {
                prop_assert_eq!(kind, 8);
                prop_assert_eq!(Some(sequence_id), object.get("sequenceId").and_then(Value::as_u64));
            }
            HubMessage::Sequence { sequence_id } => {
                prop_assert_eq!(kind, 9);
                prop_assert_eq!(Some(sequence_id), object.get("sequenceId").and_then(Value::as_u64));
            }
            HubMessage::Unknown(k) => prop_assert!(k == kind && !(1..=9).contains(&k)),
        }
        Ok(())
    });
}

#[test]
fn handshakes_are_accepted_only_for_json_or_messagepack_version_0_to_2() {
    let protocol = prop_oneof![
        3 => prop::sample::select(vec!["json", "messagepack"]).prop_map(Value::from),
        1 => prop::sample::select(vec!["JSON", "json ", "MessagePack", "msgpack", "", "j\u{1e}son"]).prop_map(Value::from),
        1 => any::<String>().prop_map(Value::from),
        1 => json_value(),
    ];
    let version = prop_oneof![3 => (0u64..4).prop_map(Value::from), 1 => number(), 1 => json_value()];
    let handshake = (
        prop::option::weighted(0.9, protocol),
        prop::option::weighted(0.9, version),
        prop::collection::vec((key(), json_value()), 0..3),
    );
    fuzz("handshake_shaped", handshake, |(protocol, version, extra)| {
        let mut object: Map<String, Value> = extra.into_iter().collect();
        if let Some(p) = protocol {
            object.insert("protocol".into(), p);
        }
        if let Some(v) = version {
            object.insert("version".into(), v);
        }
        let bytes = serde_json::to_vec(&Value::Object(object.clone())).expect("a Value serializes");
        check_handshake_reply(&bytes)?;
        let named = object.get("protocol").and_then(Value::as_str);
        let acceptable = matches!(named, Some("json" | "messagepack"))
            && object.get("version").and_then(Value::as_u64).is_some_and(|v| (0..=MAX_VERSION).contains(&v));
        match parse_handshake(&bytes) {
            Ok(request) => {
                prop_assert!(acceptable, "accepted {:?}", object);
                prop_assert_eq!(Some(request.protocol.as_str()), named);
                prop_assert_eq!(Some(request.version), object.get("version").and_then(Value::as_u64));
            }
            Err(_) => prop_assert!(!acceptable, "refused {:?}", object),
        }
        Ok(())
    });
}

// ---------------------------------------------------------------------------
// What the server writes parses back

/// One record of `text`: exactly one separator, at the end; split out by a
/// RecordBuffer in any chunking.
fn only_record(text: &str, sizes: &[usize]) -> Result<Vec<u8>, TestCaseError> {
    prop_assert_eq!(text.bytes().filter(|&b| b == RS).count(), 1, "one separator: {:?}", text);
    prop_assert!(text.ends_with(RS as char));
    let mut buffer = RecordBuffer::new(text.len());
    let mut records = Vec::new();
    for part in chunk(text.as_bytes(), sizes) {
        records.extend(buffer.push(part).map_err(|e| TestCaseError::fail(e.to_string()))?);
    }
    prop_assert!(!buffer.has_partial());
    prop_assert_eq!(records.len(), 1);
    Ok(records.remove(0))
}

fn as_json(record: &[u8]) -> Result<Value, TestCaseError> {
    serde_json::from_slice(record).map_err(|e| TestCaseError::fail(format!("not JSON: {e}")))
}

#[test]
fn invocations_round_trip() {
    let target = "\\PC{1,40}|[\\x00-\\x1f\"\\\\]{1,8}|JobAssigned";
    fuzz("roundtrip_invocation", (target, exact_json(), chunk_sizes()), |(target, argument, sizes)| {
        let record = only_record(&invocation(&target, &argument), &sizes)?;
        prop_assert_eq!(
            parse_message(&record).map_err(|e| TestCaseError::fail(e.to_string()))?,
            HubMessage::Invocation { invocation_id: None, target, arguments: vec![argument] }
        );
        prop_assert!(as_json(&record)?.get("invocationId").is_none(), "a server invocation has no invocationId key");
        Ok(())
    });
}

#[test]
fn records_with_floats_still_hold_one_separator() {
    fuzz("record_any_json", (any::<String>(), json_value()), |(target, argument)| {
        let text = invocation(&target, &argument);
        prop_assert_eq!(text.bytes().filter(|&b| b == RS).count(), 1);
        prop_assert!(text.ends_with(RS as char));
        as_json(&text.as_bytes()[..text.len() - 1]).map(|_| ())
    });
}

#[test]
fn completions_round_trip() {
    let id = "\\PC{1,20}|[0-9]{1,6}";
    let outcome = prop_oneof![exact_json().prop_map(Ok), any::<String>().prop_map(Err)];
    fuzz("roundtrip_completion", (id, outcome, chunk_sizes()), |(id, outcome, sizes)| {
        let text = match &outcome {
            Ok(result) => completion_result(&id, result),
            Err(error) => completion_error(&id, error),
        };
        let record = only_record(&text, &sizes)?;
        prop_assert_eq!(
            parse_message(&record).map_err(|e| TestCaseError::fail(e.to_string()))?,
            HubMessage::Ignored(3)
        );
        let expected = match outcome {
            Ok(result) => json!({ "type": 3, "invocationId": id, "result": result }),
            Err(error) => json!({ "type": 3, "invocationId": id, "error": error }),
        };
        prop_assert_eq!(as_json(&record)?, expected);
        Ok(())
    });
}

#[test]
fn closes_round_trip() {
    fuzz(
        "roundtrip_close",
        (prop::option::of(any::<String>()), any::<bool>(), chunk_sizes()),
        |(error, allow, sizes)| {
            let record = only_record(&close(error.as_deref(), allow), &sizes)?;
            prop_assert_eq!(
                parse_message(&record).map_err(|e| TestCaseError::fail(e.to_string()))?,
                HubMessage::Close { error: error.clone() }
            );
            let value = as_json(&record)?;
            prop_assert_eq!(value.get("allowReconnect").and_then(Value::as_bool).unwrap_or(false), allow);
            Ok(())
        },
    );
}

/// Several records in one stream, cut anywhere (inside UTF-8 sequences
/// too), come out whole and in order.
#[test]
fn batches_of_records_round_trip_in_any_chunking() {
    let one = prop_oneof![
        ("\\PC{1,20}", exact_json()).prop_map(|(t, a)| invocation(&t, &a)),
        ("[a-z0-9]{1,8}", exact_json()).prop_map(|(id, r)| completion_result(&id, &r)),
        ("[a-z0-9]{1,8}", any::<String>()).prop_map(|(id, e)| completion_error(&id, &e)),
        (prop::option::of(any::<String>()), any::<bool>()).prop_map(|(e, a)| close(e.as_deref(), a)),
    ];
    fuzz("roundtrip_batch", (prop::collection::vec(one, 1..8), chunk_sizes()), |(texts, sizes)| {
        let stream = texts.concat();
        let max = texts.iter().map(String::len).max().unwrap_or(0);
        let mut buffer = RecordBuffer::new(max);
        let mut records = Vec::new();
        for part in chunk(stream.as_bytes(), &sizes) {
            records.extend(buffer.push(part).map_err(|e| TestCaseError::fail(e.to_string()))?);
        }
        prop_assert!(!buffer.has_partial());
        prop_assert_eq!(records.len(), texts.len());
        for (record, text) in records.iter().zip(&texts) {
            prop_assert_eq!(record.as_slice(), &text.as_bytes()[..text.len() - 1]);
            prop_assert!(parse_message(record).is_ok());
        }
        Ok(())
    });
}
