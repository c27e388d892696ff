//! The ASP.NET Core SignalR MessagePack hub protocol (`messagepack`, version
//! 1, and 2 with stateful reconnect), as `@microsoft/signalr-protocol-msgpack`
//! speaks it: every record is a VarInt length and then one msgpack array whose
//! first element is the message type. Pure functions, no I/O.
//!
//! A client's records parse into the JSON protocol's [`HubMessage`], so the
//! hub handles both alike; arguments become the JSON values the JSON protocol
//! would have given (binary as base64, as the spec's type table maps it).
//! What the server sends is written from the same serde payloads, through
//! their JSON form, so both protocols carry the same data. Served on
//! WebSockets and Long Polling ([`super::Codec::MessagePack`]).

use base64::Engine;
use rmpv::Value as Pack;
use serde::Serialize;
use serde_json::{Map, Number, Value};

use super::{HubMessage, ProtocolError};

/// The protocol's name in the handshake.
pub const PROTOCOL_NAME: &str = "messagepack";

/// A framed Ping: length 2, then `[6]` (the spec: always exactly `0x91 0x06`).
pub const PING: [u8; 3] = [0x02, 0x91, 0x06];

/// A VarInt length prefix has at most 5 bytes: 0x7fffffff, the 2 GB cap.
const MAX_PREFIX_BYTES: usize = 5;
/// The largest length a prefix may hold.
const MAX_LENGTH: u64 = 0x7fff_ffff;
/// Nesting accepted in a record, as serde_json allows for JSON records.
const MAX_DEPTH: usize = 128;

fn invalid(message: impl Into<String>) -> ProtocolError {
    ProtocolError::Invalid(message.into())
}

/// The length a VarInt prefix at the start of `data` holds, and the prefix's
/// size; `None` while the prefix is incomplete.
///
/// # Errors
/// [`ProtocolError::Invalid`] for a prefix past 5 bytes or 2 GB.
pub fn read_length(data: &[u8]) -> Result<Option<(usize, usize)>, ProtocolError> {
    let mut length: u64 = 0;
    for (i, &byte) in data.iter().take(MAX_PREFIX_BYTES).enumerate() {
        length |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            if length > MAX_LENGTH {
                return Err(invalid("a record's length prefix is past 2 GB"));
            }
            return Ok(Some((length as usize, i + 1)));
        }
    }
    if data.len() >= MAX_PREFIX_BYTES {
        return Err(invalid("a record's length prefix is longer than 5 bytes"));
    }
    Ok(None)
}

/// Appends the VarInt prefix for `length` to `out`.
pub fn write_length(length: usize, out: &mut Vec<u8>) {
    let mut rest = length;
    loop {
        let low = (rest & 0x7f) as u8;
        rest >>= 7;
        if rest == 0 {
            out.push(low);
            return;
        }
        out.push(low | 0x80);
    }
}

/// Splits incoming binary data into record bodies, keeping an incomplete
/// record for the next message and refusing one longer than the limit as
/// soon as its prefix says so (before its body is buffered).
#[derive(Debug)]
pub struct FrameBuffer {
    tail: Vec<u8>,
    max: usize,
}

impl FrameBuffer {
    /// A buffer that refuses records longer than `max` bytes.
    pub fn new(max: usize) -> Self {
        Self { tail: Vec::new(), max }
    }

    /// Adds `data` and returns the record bodies it completes, in order,
    /// without their prefixes.
    ///
    /// # Errors
    /// [`ProtocolError::TooLarge`] for a record past the limit,
    /// [`ProtocolError::Invalid`] for a malformed prefix.
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<Vec<u8>>, ProtocolError> {
        self.tail.extend_from_slice(data);
        let mut records = Vec::new();
        let mut start = 0;
        while let Some((length, prefix)) = read_length(&self.tail[start..])? {
            if length > self.max {
                return Err(ProtocolError::TooLarge(self.max));
            }
            let body = start + prefix;
            if self.tail.len() - body < length {
                break;
            }
            records.push(self.tail[body..body + length].to_vec());
            start = body + length;
        }
        self.tail.drain(..start);
        Ok(records)
    }

    /// Whether part of a record is waiting for the rest.
    pub fn has_partial(&self) -> bool {
        !self.tail.is_empty()
    }
}

/// A msgpack value as the JSON value the JSON protocol would carry.
fn to_json(value: Pack) -> Result<Value, ProtocolError> {
    Ok(match value {
        Pack::Nil => Value::Null,
        Pack::Boolean(b) => Value::Bool(b),
        Pack::Integer(i) => match (i.as_u64(), i.as_i64()) {
            (Some(u), _) => Value::from(u),
            (None, Some(s)) => Value::from(s),
            (None, None) => return Err(invalid("an integer out of range")),
        },
        Pack::F32(f) => finite(f64::from(f))?,
        Pack::F64(f) => finite(f)?,
        Pack::String(s) => Value::String(s.into_str().ok_or_else(|| invalid("a string is not valid UTF-8"))?),
        Pack::Binary(bytes) => Value::String(base64::engine::general_purpose::STANDARD.encode(bytes)),
        Pack::Array(items) => Value::Array(items.into_iter().map(to_json).collect::<Result<_, _>>()?),
        Pack::Map(entries) => {
            let mut object = Map::new();
            for (key, value) in entries {
                let Pack::String(key) = key else {
                    return Err(invalid("map keys must be strings"));
                };
                let key = key.into_str().ok_or_else(|| invalid("a map key is not valid UTF-8"))?;
                object.insert(key, to_json(value)?);
            }
            Value::Object(object)
        }
        Pack::Ext(kind, _) => return Err(invalid(format!("extension type {kind} is not accepted"))),
    })
}

fn finite(f: f64) -> Result<Value, ProtocolError> {
    Number::from_f64(f).map(Value::Number).ok_or_else(|| invalid("NaN and infinities are not accepted"))
}

fn optional_id(value: &Pack) -> Result<Option<String>, ProtocolError> {
    match value {
        Pack::Nil => Ok(None),
        Pack::String(s) => match s.as_str() {
            Some(id) if !id.is_empty() => Ok(Some(id.to_owned())),
            _ => Err(invalid("'invocationId' must be a non-empty string or nil")),
        },
        _ => Err(invalid("'invocationId' must be a non-empty string or nil")),
    }
}

fn required_target(value: &Pack) -> Result<String, ProtocolError> {
    match value.as_str() {
        Some(target) if !target.is_empty() => Ok(target.to_owned()),
        _ => Err(invalid("'target' must be a non-empty string")),
    }
}

fn headers(value: &Pack) -> Result<(), ProtocolError> {
    match value {
        Pack::Map(entries) if entries.iter().all(|(k, v)| k.is_str() && v.is_str()) => Ok(()),
        _ => Err(invalid("'headers' must be a map of strings")),
    }
}

fn sequence_id(value: &Pack) -> Result<u64, ProtocolError> {
    value.as_u64().ok_or_else(|| invalid("'sequenceId' must be an unsigned integer"))
}

/// Checks that `items` has at least `n` elements, for a message `name`.
fn at_least(items: &[Pack], n: usize, name: &str) -> Result<(), ProtocolError> {
    if items.len() < n {
        return Err(invalid(format!("a {name} message has at least {n} elements")));
    }
    Ok(())
}

/// Parses one record body (without its prefix). Trailing elements are
/// allowed, as the JS client allows them; trailing bytes are not.
///
/// # Errors
/// [`ProtocolError::Invalid`] for anything that is not a valid record.
pub fn parse_message(body: &[u8]) -> Result<HubMessage, ProtocolError> {
    let mut reader = body;
    let value = rmpv::decode::read_value_with_max_depth(&mut reader, MAX_DEPTH)
        .map_err(|e| invalid(format!("not MessagePack ({e})")))?;
    if !reader.is_empty() {
        return Err(invalid("a record holds one MessagePack value, and bytes follow it"));
    }
    let Pack::Array(items) = value else {
        return Err(invalid("a record must be a MessagePack array"));
    };
    let kind = items.first().and_then(Pack::as_u64).ok_or_else(|| invalid("the message type must come first"))?;
    Ok(match kind {
        1 => {
            // [1, headers, invocationId, target, arguments, streamIds?]
            at_least(&items, 5, "Invocation")?;
            headers(&items[1])?;
            let invocation_id = optional_id(&items[2])?;
            let target = required_target(&items[3])?;
            let Pack::Array(arguments) = items.into_iter().nth(4).unwrap_or(Pack::Nil) else {
                return Err(invalid("'arguments' must be an array"));
            };
            let arguments = arguments.into_iter().map(to_json).collect::<Result<_, _>>()?;
            HubMessage::Invocation { invocation_id, target, arguments }
        }
        4 => {
            at_least(&items, 5, "StreamInvocation")?;
            headers(&items[1])?;
            HubMessage::StreamInvocation {
                invocation_id: optional_id(&items[2])?.ok_or_else(|| invalid("'invocationId' is required"))?,
                target: required_target(&items[3])?,
            }
        }
        2 | 3 | 5 => HubMessage::Ignored(kind),
        6 => HubMessage::Ping,
        7 => {
            // [7, error, allowReconnect?]
            at_least(&items, 2, "Close")?;
            let error = match &items[1] {
                Pack::Nil => None,
                Pack::String(s) => Some(s.as_str().ok_or_else(|| invalid("'error' is not valid UTF-8"))?.to_owned()),
                _ => return Err(invalid("'error' must be a string or nil")),
            };
            HubMessage::Close { error }
        }
        8 => {
            at_least(&items, 2, "Ack")?;
            HubMessage::Ack { sequence_id: sequence_id(&items[1])? }
        }
        9 => {
            at_least(&items, 2, "Sequence")?;
            HubMessage::Sequence { sequence_id: sequence_id(&items[1])? }
        }
        other => HubMessage::Unknown(other),
    })
}

/// Writes a JSON value as msgpack in the forms `@msgpack/msgpack` uses: the
/// smallest integer form, and a whole float as an integer (JavaScript has
/// one number type, so its encoder does the same).
fn write_json(value: &Value, out: &mut Vec<u8>) {
    // Writing to a Vec cannot fail.
    match value {
        Value::Null => rmp::encode::write_nil(out).expect("to a Vec"),
        Value::Bool(b) => rmp::encode::write_bool(out, *b).expect("to a Vec"),
        Value::Number(n) => write_number(n, out),
        Value::String(s) => rmp::encode::write_str(out, s).expect("to a Vec"),
        Value::Array(items) => {
            rmp::encode::write_array_len(out, items.len() as u32).expect("to a Vec");
            items.iter().for_each(|item| write_json(item, out));
        }
        Value::Object(object) => {
            rmp::encode::write_map_len(out, object.len() as u32).expect("to a Vec");
            for (key, item) in object {
                rmp::encode::write_str(out, key).expect("to a Vec");
                write_json(item, out);
            }
        }
    }
}

fn write_number(n: &Number, out: &mut Vec<u8>) {
    /// Past 2^53 a float is no longer an exact JavaScript integer.
    const SAFE: f64 = 9_007_199_254_740_991.0;
    if let Some(u) = n.as_u64() {
        rmp::encode::write_uint(out, u).expect("to a Vec");
    } else if let Some(i) = n.as_i64() {
        rmp::encode::write_sint(out, i).expect("to a Vec");
    } else {
        let f = n.as_f64().unwrap_or_default();
        if f.fract() == 0.0 && f.abs() <= SAFE {
            if f >= 0.0 {
                rmp::encode::write_uint(out, f as u64).expect("to a Vec");
            } else {
                rmp::encode::write_sint(out, f as i64).expect("to a Vec");
            }
        } else {
            rmp::encode::write_f64(out, f).expect("to a Vec");
        }
    }
}

/// Frames a record body written by `write`: the VarInt length, then the body.
fn framed(write: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut body = Vec::with_capacity(64);
    write(&mut body);
    let mut out = Vec::with_capacity(body.len() + MAX_PREFIX_BYTES);
    write_length(body.len(), &mut out);
    out.extend_from_slice(&body);
    out
}

/// A serde value's JSON form, the same data the JSON protocol sends.
fn json_of(value: &impl Serialize) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// Empty headers (`0x80`) and a small integer: how every message with headers starts.
fn start(out: &mut Vec<u8>, elements: u32, kind: u8) {
    rmp::encode::write_array_len(out, elements).expect("to a Vec");
    rmp::encode::write_uint(out, u64::from(kind)).expect("to a Vec");
    rmp::encode::write_map_len(out, 0).expect("to a Vec");
}

/// A server-to-client call with one argument and no invocation id:
/// `[1, {}, nil, target, [argument]]`, as the JS client writes one without streams.
pub fn invocation(target: &str, argument: &impl Serialize) -> Vec<u8> {
    let argument = json_of(argument);
    framed(|out| {
        start(out, 5, 1);
        rmp::encode::write_nil(out).expect("to a Vec");
        rmp::encode::write_str(out, target).expect("to a Vec");
        rmp::encode::write_array_len(out, 1).expect("to a Vec");
        write_json(&argument, out);
    })
}

/// A Completion with a result: `[3, {}, id, 3, result]`.
pub fn completion_result(invocation_id: &str, result: &impl Serialize) -> Vec<u8> {
    let result = json_of(result);
    framed(|out| {
        start(out, 5, 3);
        rmp::encode::write_str(out, invocation_id).expect("to a Vec");
        rmp::encode::write_uint(out, 3).expect("to a Vec");
        write_json(&result, out);
    })
}

/// A Completion with an error: `[3, {}, id, 1, error]`; the client's `invoke` rejects with it.
pub fn completion_error(invocation_id: &str, error: &str) -> Vec<u8> {
    framed(|out| {
        start(out, 5, 3);
        rmp::encode::write_str(out, invocation_id).expect("to a Vec");
        rmp::encode::write_uint(out, 1).expect("to a Vec");
        rmp::encode::write_str(out, error).expect("to a Vec");
    })
}

/// A Close: `[7, error or nil, allowReconnect]`. Without `allow_reconnect`
/// the client stops for good.
pub fn close(error: Option<&str>, allow_reconnect: bool) -> Vec<u8> {
    framed(|out| {
        rmp::encode::write_array_len(out, 3).expect("to a Vec");
        rmp::encode::write_uint(out, 7).expect("to a Vec");
        match error {
            Some(error) => rmp::encode::write_str(out, error).expect("to a Vec"),
            None => rmp::encode::write_nil(out).expect("to a Vec"),
        }
        rmp::encode::write_bool(out, allow_reconnect).expect("to a Vec");
    })
}

fn sequence_record(kind: u8, sequence_id: u64) -> Vec<u8> {
    framed(|out| {
        rmp::encode::write_array_len(out, 2).expect("to a Vec");
        rmp::encode::write_uint(out, u64::from(kind)).expect("to a Vec");
        rmp::encode::write_uint(out, sequence_id).expect("to a Vec");
    })
}

/// An Ack (stateful reconnect): every record up to `sequence_id` was processed.
pub fn ack(sequence_id: u64) -> Vec<u8> {
    sequence_record(8, sequence_id)
}

/// A Sequence (stateful reconnect): the number of the first record that follows.
pub fn sequence(sequence_id: u64) -> Vec<u8> {
    sequence_record(9, sequence_id)
}

#[cfg(test)]
mod tests {
    //! Vectors 1 to 12 are the bodies HubProtocol.md gives byte for byte
    //! ("MessagePack (MsgPack) encoding"); the rest check this codec's choices.

    use super::*;
    use serde_json::json;

    const XYZ: [u8; 4] = [0xa3, b'x', b'y', b'z'];
    const METHOD: [u8; 7] = [0xa6, b'm', b'e', b't', b'h', b'o', b'd'];

    fn body(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    /// Splits a framed output into its one body, checking the prefix.
    fn unframe(framed: &[u8]) -> Vec<u8> {
        let mut buffer = FrameBuffer::new(1 << 20);
        let mut records = buffer.push(framed).unwrap();
        assert_eq!(records.len(), 1, "one record");
        assert!(!buffer.has_partial());
        records.remove(0)
    }

    #[test]
    fn vector_1_invocation_with_id() {
        let msg = parse_message(&body(&[&[0x96, 0x01, 0x80], &XYZ, &METHOD, &[0x91, 0x2a, 0x90]])).unwrap();
        assert_eq!(
            msg,
            HubMessage::Invocation {
                invocation_id: Some("xyz".into()),
                target: "method".into(),
                arguments: vec![json!(42)]
            }
        );
    }

    #[test]
    fn vector_2_non_blocking_invocation() {
        let msg = parse_message(&body(&[&[0x96, 0x01, 0x80, 0xc0], &METHOD, &[0x91, 0x2a, 0x90]])).unwrap();
        assert_eq!(
            msg,
            HubMessage::Invocation { invocation_id: None, target: "method".into(), arguments: vec![json!(42)] }
        );
    }

    #[test]
    fn vector_3_stream_invocation() {
        let msg = parse_message(&body(&[&[0x96, 0x04, 0x80], &XYZ, &METHOD, &[0x91, 0x2a, 0x90]])).unwrap();
        assert_eq!(msg, HubMessage::StreamInvocation { invocation_id: "xyz".into(), target: "method".into() });
    }

    #[test]
    fn vector_4_stream_item_is_ignored() {
        assert_eq!(parse_message(&body(&[&[0x94, 0x02, 0x80], &XYZ, &[0x2a]])).unwrap(), HubMessage::Ignored(2));
    }

    #[test]
    fn vector_5_6_7_completions_are_ignored_and_the_non_void_one_is_emitted_byte_for_byte() {
        let error = body(&[&[0x95, 0x03, 0x80], &XYZ, &[0x01, 0xa5], b"Error"]);
        let void = body(&[&[0x94, 0x03, 0x80], &XYZ, &[0x02]]);
        let value = body(&[&[0x95, 0x03, 0x80], &XYZ, &[0x03, 0x2a]]);
        for input in [&error, &void, &value] {
            assert_eq!(parse_message(input).unwrap(), HubMessage::Ignored(3));
        }
        assert_eq!(unframe(&completion_result("xyz", &42)), value);
        assert_eq!(unframe(&completion_error("xyz", "Error")), error);
    }

    #[test]
    fn vector_8_cancel_invocation_is_ignored() {
        assert_eq!(parse_message(&body(&[&[0x93, 0x05, 0x80], &XYZ])).unwrap(), HubMessage::Ignored(5));
    }

    #[test]
    fn vector_9_ping_is_exactly_0x91_0x06() {
        assert_eq!(parse_message(&[0x91, 0x06]).unwrap(), HubMessage::Ping);
        assert_eq!(unframe(&PING), [0x91, 0x06]);
    }

    #[test]
    fn vector_10_close_messages() {
        assert_eq!(
            parse_message(&body(&[&[0x92, 0x07], &XYZ])).unwrap(),
            HubMessage::Close { error: Some("xyz".into()) }
        );
        let reconnect = body(&[&[0x93, 0x07], &XYZ, &[0xc3]]);
        assert_eq!(parse_message(&reconnect).unwrap(), HubMessage::Close { error: Some("xyz".into()) });
        assert_eq!(unframe(&close(Some("xyz"), true)), reconnect);
        assert_eq!(unframe(&close(None, false)), [0x93, 0x07, 0xc0, 0xc2]);
        assert_eq!(parse_message(&[0x92, 0x07, 0xc0]).unwrap(), HubMessage::Close { error: None });
    }

    #[test]
    fn vector_11_ack_and_sequence_accept_any_unsigned_size() {
        assert_eq!(parse_message(&[0x92, 0x08, 0xcc, 0x24]).unwrap(), HubMessage::Ack { sequence_id: 36 });
        assert_eq!(parse_message(&[0x92, 0x09, 0xcc, 0x13]).unwrap(), HubMessage::Sequence { sequence_id: 19 });
        assert_eq!(parse_message(&[0x92, 0x08, 0x24]).unwrap(), HubMessage::Ack { sequence_id: 36 });
        // Written in the smallest form, as @msgpack/msgpack does.
        assert_eq!(unframe(&ack(36)), [0x92, 0x08, 0x24]);
        assert_eq!(unframe(&sequence(300)), [0x92, 0x09, 0xcd, 0x01, 0x2c]);
    }

    #[test]
    fn vector_12_headers_are_read_and_ignored() {
        let with_headers = body(&[
            &[0x96, 0x01, 0x82, 0xa1, b'x', 0xa1, b'y', 0xa1, b'z', 0xa1, b'z'],
            &XYZ,
            &METHOD,
            &[0x91, 0x2a, 0x90],
        ]);
        assert!(matches!(parse_message(&with_headers).unwrap(), HubMessage::Invocation { .. }));
        let number_header = body(&[&[0x96, 0x01, 0x81, 0xa1, b'x', 0x01], &XYZ, &METHOD, &[0x91, 0x2a, 0x90]]);
        assert!(parse_message(&number_header).is_err());
    }

    #[test]
    fn vector_13_varint_prefixes_from_the_spec() {
        assert_eq!(read_length(&[0x35]).unwrap(), Some((0x35, 1)));
        assert_eq!(read_length(&[0x80, 0x29]).unwrap(), Some((0x1480, 2)));
        assert_eq!(read_length(&[0xff, 0xff, 0xff, 0xff, 0x07]).unwrap(), Some((0x7fff_ffff, 5)));
        assert_eq!(read_length(&[0x80, 0x80]).unwrap(), None, "incomplete");
        assert!(read_length(&[0xff, 0xff, 0xff, 0xff, 0x08]).is_err(), "past 2 GB");
        assert!(read_length(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x01]).is_err(), "a sixth byte");
        for length in [0, 1, 127, 128, 0x1480, 16_383, 16_384, 0x7fff_ffff] {
            let mut out = Vec::new();
            write_length(length, &mut out);
            assert_eq!(read_length(&out).unwrap(), Some((length, out.len())), "{length}");
        }
    }

    #[test]
    fn vector_14_the_specs_two_frames_split_anywhere() {
        let mut wire = vec![0x0b];
        wire.extend_from_slice(b"Hello\nWorld");
        wire.extend_from_slice(&[0x02, 0x01, 0x02]);
        for cut in 0..=wire.len() {
            let mut buffer = FrameBuffer::new(64);
            let mut records = buffer.push(&wire[..cut]).unwrap();
            records.extend(buffer.push(&wire[cut..]).unwrap());
            assert_eq!(records, vec![b"Hello\nWorld".to_vec(), vec![0x01, 0x02]], "cut at {cut}");
            assert!(!buffer.has_partial());
        }
    }

    #[test]
    fn the_server_invocation_carries_the_payloads_json_form() {
        let payload = json!({"jobId": "j-42", "priority": 2, "late": -3, "score": 1.5, "whole": 2.0, "tags": ["a"], "none": null});
        let record = unframe(&invocation("JobAssigned", &payload));
        let mut reader = &record[..];
        let value = rmpv::decode::read_value(&mut reader).unwrap();
        let items = value.as_array().unwrap();
        assert_eq!(items.len(), 5);
        assert_eq!(items[0].as_u64(), Some(1));
        assert_eq!(items[1], Pack::Map(vec![]));
        assert!(items[2].is_nil());
        assert_eq!(items[3].as_str(), Some("JobAssigned"));
        let argument = to_json(items[4].as_array().unwrap()[0].clone()).unwrap();
        assert_eq!(
            argument,
            json!({"jobId": "j-42", "priority": 2, "late": -3, "score": 1.5, "whole": 2, "tags": ["a"], "none": null})
        );
        // A whole float is an integer on the wire, as JavaScript's encoder writes it.
        assert!(record.windows(6).any(|w| w == [0xa5, b'w', b'h', b'o', b'l', b'e']));
    }

    #[test]
    fn arguments_become_the_json_values_the_json_protocol_gives() {
        // [1, {}, "0", "Join", [nil, true, -1, 2.5f32, bin[1,2], {"k": [1]}, 18446744073709551615]]
        let mut input = vec![0x95, 0x01, 0x80, 0xa1, b'0', 0xa4, b'J', b'o', b'i', b'n', 0x97];
        input.extend_from_slice(&[0xc0, 0xc3, 0xff, 0xca, 0x40, 0x20, 0x00, 0x00, 0xc4, 0x02, 0x01, 0x02]);
        input.extend_from_slice(&[0x81, 0xa1, b'k', 0x91, 0x01, 0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        let HubMessage::Invocation { arguments, .. } = parse_message(&input).unwrap() else { panic!("an invocation") };
        assert_eq!(
            arguments,
            vec![json!(null), json!(true), json!(-1), json!(2.5), json!("AQI="), json!({"k": [1]}), json!(u64::MAX)]
        );
    }

    #[test]
    fn bad_records_are_invalid_with_a_reason() {
        let cases: &[(&[u8], &str)] = &[
            (&[], "not MessagePack"),
            // 0xc1 is "never used": rmpv reads it as nil, still no array.
            (&[0xc1], "array"),
            (&[0x06], "array"),
            (&[0x90], "type"),
            (&[0x91, 0xa1, b'6'], "type"),
            (&[0x91, 0x06, 0x00], "bytes follow"),
            (&[0x94, 0x01, 0x80, 0xc0, 0xa1, b'X'], "at least 5"),
            (&[0x95, 0x01, 0x80, 0xc0, 0xa0, 0x90], "target"),
            (&[0x95, 0x01, 0x80, 0x05, 0xa1, b'X', 0x90], "invocationId"),
            (&[0x95, 0x01, 0x80, 0xa0, 0xa1, b'X', 0x90], "invocationId"),
            (&[0x95, 0x01, 0x90, 0xc0, 0xa1, b'X', 0x90], "headers"),
            (&[0x95, 0x01, 0x80, 0xc0, 0xa1, b'X', 0x80], "arguments"),
            (&[0x95, 0x01, 0x80, 0xc0, 0xa1, b'X', 0x91, 0xd4, 0x01, 0x00], "extension"),
            (&[0x95, 0x01, 0x80, 0xc0, 0xa1, b'X', 0x91, 0x81, 0x01, 0x01], "keys"),
            (&[0x95, 0x01, 0x80, 0xc0, 0xa1, b'X', 0x91, 0xa1, 0xff], "UTF-8"),
            (&[0x95, 0x01, 0x80, 0xc0, 0xa1, b'X', 0x91, 0xcb, 0x7f, 0xf8, 0, 0, 0, 0, 0, 0], "NaN"),
            (&[0x95, 0x04, 0x80, 0xc0, 0xa1, b'X', 0x90], "required"),
            (&[0x91, 0x07], "at least 2"),
            (&[0x92, 0x07, 0x01], "'error'"),
            (&[0x92, 0x08, 0xff], "sequenceId"),
            (&[0x91, 0x09], "at least 2"),
            (&[0xdd, 0xff, 0xff, 0xff, 0xff], "not MessagePack"),
        ];
        for (input, reason) in cases {
            match parse_message(input) {
                Err(ProtocolError::Invalid(message)) => assert!(message.contains(reason), "{input:02x?}: {message}"),
                other => panic!("{input:02x?}: {other:?}"),
            }
        }
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        let mut input = vec![0x95, 0x01, 0x80, 0xc0, 0xa1, b'X'];
        input.extend(std::iter::repeat_n(0x91, 100_000));
        input.push(0xc0);
        assert!(parse_message(&input).is_err());
    }

    #[test]
    fn unknown_types_and_trailing_elements_are_tolerated() {
        assert_eq!(parse_message(&[0x91, 0x63]).unwrap(), HubMessage::Unknown(99));
        assert_eq!(parse_message(&[0x93, 0x06, 0x01, 0x02]).unwrap(), HubMessage::Ping);
        let seven = body(&[&[0x97, 0x01, 0x80, 0xc0], &METHOD, &[0x90, 0x90, 0xc0]]);
        assert!(matches!(parse_message(&seven).unwrap(), HubMessage::Invocation { .. }));
    }

    #[test]
    fn a_record_past_the_limit_is_refused_from_its_prefix() {
        let mut buffer = FrameBuffer::new(16);
        // The prefix says 17 bytes: refused before any body arrives.
        assert_eq!(buffer.push(&[0x11]).unwrap_err(), ProtocolError::TooLarge(16));
        let mut buffer = FrameBuffer::new(16);
        assert!(buffer.push(&[0x80, 0x80, 0x80, 0x80, 0x80]).is_err(), "a malformed prefix");
        let mut buffer = FrameBuffer::new(16);
        assert!(buffer.push(&[0x10]).unwrap().is_empty());
        assert!(buffer.has_partial());
        assert_eq!(buffer.push(&[7; 16]).unwrap(), vec![vec![7; 16]]);
    }
}
