//! Property tests ("fuzzing") of the SignalR MessagePack hub protocol, as
//! `fuzz_protocol.rs` does for JSON: whatever bytes a client sends, however
//! they are split, [`FrameBuffer::push`] and [`parse_message`] never panic,
//! never hand on a record past the limit, and give the same records for any
//! chunking; what parses is what the record said; what the server writes
//! parses back.
//!
//! Case counts: `PROPTEST_CASES` (default 256); failures are saved in
//! `crates/realtime/proptest-regressions/fuzz_messagepack.txt` and replayed
//! first on every later run: commit that file with the fix.

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use rmpv::Value as Pack;
use smartscheduler_realtime::protocol::messagepack::{
    ack, close, completion_error, completion_result, invocation, parse_message, read_length, sequence, write_length,
    FrameBuffer, PING,
};
use smartscheduler_realtime::protocol::{HubMessage, ProtocolError};

use crate::support::exact_json;

const REGRESSIONS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/proptest-regressions/fuzz_messagepack.txt");

/// [`crate::support::fuzz`] with this module's regressions, its counts
/// named `mp_…` apart from the JSON protocol's.
fn fuzz<S: Strategy>(name: &str, strategy: S, property: impl Fn(S::Value) -> Result<(), TestCaseError>) {
    crate::support::fuzz(REGRESSIONS, &format!("mp_{name}"), strategy, property);
}

// ---------------------------------------------------------------------------
// Strategies

/// Any msgpack value, with the odd invalid string, extension and odd float.
fn pack_value() -> impl Strategy<Value = Pack> {
    let leaf = prop_oneof![
        Just(Pack::Nil),
        any::<bool>().prop_map(Pack::from),
        any::<u64>().prop_map(Pack::from),
        any::<i64>().prop_map(Pack::from),
        (0u64..12).prop_map(Pack::from),
        any::<f64>().prop_map(Pack::F64),
        any::<f32>().prop_map(Pack::F32),
        any::<String>().prop_map(Pack::from),
        prop::collection::vec(any::<u8>(), 0..8).prop_map(Pack::Binary),
        (any::<i8>(), prop::collection::vec(any::<u8>(), 0..4)).prop_map(|(k, d)| Pack::Ext(k, d)),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Pack::Array),
            prop::collection::vec((inner.clone(), inner), 0..4).prop_map(Pack::Map),
        ]
    })
}

/// A record-shaped array: a type (mostly a known one), then fields that are
/// well-typed or not.
fn record_shaped() -> impl Strategy<Value = Vec<Pack>> {
    let field = prop_oneof![
        2 => Just(Pack::Map(vec![])),
        2 => Just(Pack::Nil),
        2 => prop_oneof![Just("JoinDispatchGroup".to_owned()), Just(String::new()), any::<String>()].prop_map(Pack::from),
        2 => prop::collection::vec(pack_value(), 0..3).prop_map(Pack::Array),
        1 => (0u64..5).prop_map(Pack::from),
        1 => pack_value(),
    ];
    (prop_oneof![4 => (0u64..11).prop_map(Pack::from), 1 => pack_value()], prop::collection::vec(field, 0..7)).prop_map(
        |(kind, mut rest)| {
            rest.insert(0, kind);
            rest
        },
    )
}

fn encode(value: &Pack) -> Vec<u8> {
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, value).expect("to a Vec");
    out
}

/// Splits `data` at the given sizes (cycled), the rest in a last chunk.
fn chunk<'a>(data: &'a [u8], sizes: &[usize]) -> Vec<&'a [u8]> {
    let mut chunks = Vec::new();
    let mut rest = data;
    let mut i = 0;
    while !sizes.is_empty() && !rest.is_empty() && i < data.len() + sizes.len() {
        let (head, tail) = rest.split_at(sizes[i % sizes.len()].min(rest.len()));
        chunks.push(head);
        rest = tail;
        i += 1;
    }
    chunks.push(rest);
    chunks
}

fn chunk_sizes() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(prop_oneof![1 => Just(0usize), 8 => 1usize..32, 2 => 32usize..1024], 0..16)
}

// ---------------------------------------------------------------------------
// FrameBuffer

/// Pushes `chunks` and returns the records and how it ended, checking
/// every record against the limit on the way.
fn push_all(max: usize, chunks: &[&[u8]]) -> Result<(Vec<Vec<u8>>, Option<ProtocolError>), TestCaseError> {
    let mut buffer = FrameBuffer::new(max);
    let mut records = Vec::new();
    for chunk in chunks {
        match buffer.push(chunk) {
            Ok(more) => {
                for record in &more {
                    prop_assert!(record.len() <= max, "a record past the limit");
                }
                records.extend(more);
            }
            Err(err) => return Ok((records, Some(err))),
        }
    }
    Ok((records, None))
}

#[test]
fn framed_bodies_come_back_whole_in_any_chunking_or_are_refused_for_size() {
    let bodies = prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..8);
    fuzz("frames_model", (1usize..256, bodies, chunk_sizes()), |(max, bodies, sizes)| {
        let mut wire = Vec::new();
        for body in &bodies {
            write_length(body.len(), &mut wire);
            wire.extend_from_slice(body);
        }
        let (records, error) = push_all(max, &chunk(&wire, &sizes))?;
        match bodies.iter().position(|b| b.len() > max) {
            // Records before the first oversized one (not those of the failing
            // push: the connection closes there), then the refusal.
            Some(first) => {
                prop_assert_eq!(error, Some(ProtocolError::TooLarge(max)));
                prop_assert!(bodies[..first].starts_with(&records));
            }
            None => {
                prop_assert_eq!(error, None);
                prop_assert_eq!(records, bodies);
            }
        }
        Ok(())
    });
}

#[test]
fn arbitrary_bytes_give_the_same_records_however_they_are_split() {
    let limit = prop_oneof![Just(0usize), 1usize..64, Just(32 * 1024)];
    fuzz(
        "frames_arbitrary",
        (limit, prop::collection::vec(any::<u8>(), 0..2048), chunk_sizes()),
        |(max, data, sizes)| {
            // Byte by byte, every record is handed on as soon as it is whole.
            let bytewise: Vec<&[u8]> = data.chunks(1).collect();
            let (model, model_error) = push_all(max, &bytewise)?;
            let (records, error) = push_all(max, &chunk(&data, &sizes))?;
            prop_assert_eq!(error.is_some(), model_error.is_some());
            if error.is_some() {
                // A push that fails drops what it found: the connection closes there.
                prop_assert!(model.starts_with(&records));
            } else {
                prop_assert_eq!(records, model);
            }
            Ok(())
        },
    );
}

#[test]
fn varint_prefixes_round_trip_and_never_panic() {
    fuzz("varint", (0usize..=0x7fff_ffff, prop::collection::vec(any::<u8>(), 0..8)), |(length, junk)| {
        let mut out = Vec::new();
        write_length(length, &mut out);
        prop_assert!(out.len() <= 5);
        prop_assert_eq!(read_length(&out).ok().flatten(), Some((length, out.len())));
        out.extend_from_slice(&junk);
        prop_assert_eq!(read_length(&out).ok().flatten().map(|(l, _)| l), Some(length), "bytes after it do not matter");
        if let Ok(Some((_, used))) = read_length(&junk) {
            prop_assert!((1..=5).contains(&used));
        }
        Ok(())
    });
}

// ---------------------------------------------------------------------------
// parse_message

#[test]
fn the_parser_never_panics_on_arbitrary_bytes() {
    fuzz("parse_bytes", prop::collection::vec(any::<u8>(), 0..2048), |bytes| {
        let _ = parse_message(&bytes);
        Ok(())
    });
}

#[test]
fn the_parser_never_panics_on_arbitrary_values() {
    fuzz("parse_values", pack_value(), |value| {
        let _ = parse_message(&encode(&value));
        Ok(())
    });
}

/// What a record-shaped array parses into, when it parses at all.
#[test]
fn record_shaped_arrays_parse_consistently() {
    fuzz("parse_record_shaped", record_shaped(), |items| {
        let bytes = encode(&Pack::Array(items.clone()));
        let Ok(message) = parse_message(&bytes) else {
            return Ok(());
        };
        let kind = items[0].as_u64().ok_or_else(|| TestCaseError::fail("accepted a record without a numeric type"))?;
        let text = |i: usize| items.get(i).and_then(Pack::as_str).map(str::to_owned);
        match message {
            HubMessage::Invocation { invocation_id, target, arguments } => {
                prop_assert_eq!(kind, 1);
                prop_assert!(items.len() >= 5 && !target.is_empty());
                prop_assert_eq!(Some(target), text(3));
                prop_assert_eq!(invocation_id, text(2));
                prop_assert_eq!(Some(arguments.len()), items[4].as_array().map(Vec::len));
            }
            HubMessage::StreamInvocation { invocation_id, target } => {
                prop_assert_eq!(kind, 4);
                prop_assert!(!invocation_id.is_empty() && !target.is_empty());
            }
            HubMessage::Ignored(k) => prop_assert!(k == kind && matches!(k, 2 | 3 | 5)),
            HubMessage::Ping => prop_assert_eq!(kind, 6),
            HubMessage::Close { error } => {
                prop_assert_eq!(kind, 7);
                prop_assert_eq!(error, text(1));
            }
            HubMessage::Ack { sequence_id } => {
                prop_assert_eq!(kind, 8);
                prop_assert_eq!(Some(sequence_id), items[1].as_u64());
            }
            HubMessage::Sequence { sequence_id } => {
                prop_assert_eq!(kind, 9);
                prop_assert_eq!(Some(sequence_id), items[1].as_u64());
            }
            HubMessage::Unknown(k) => prop_assert!(k == kind && !(1..=9).contains(&k)),
        }
        Ok(())
    });
}

// ---------------------------------------------------------------------------
// What the server writes

/// The one record a server output holds, through a FrameBuffer split at `cut`.
fn one_record(framed: &[u8], cut: usize) -> Result<Vec<u8>, TestCaseError> {
    let mut buffer = FrameBuffer::new(1 << 20);
    let cut = cut % (framed.len() + 1);
    let mut records = buffer.push(&framed[..cut]).map_err(|e| TestCaseError::fail(e.to_string()))?;
    if cut < framed.len() {
        prop_assert!(records.is_empty(), "a record before all its bytes came");
    }
    records.extend(buffer.push(&framed[cut..]).map_err(|e| TestCaseError::fail(e.to_string()))?);
    prop_assert_eq!(records.len(), 1);
    prop_assert!(!buffer.has_partial());
    Ok(records.remove(0))
}

#[test]
fn what_the_server_writes_parses_back() {
    let strategy =
        (any::<String>(), exact_json(), any::<Option<String>>(), any::<bool>(), any::<u64>(), any::<usize>());
    fuzz("server_round_trip", strategy, |(text, payload, error, allow, seq, cut)| {
        let target = if text.is_empty() { "JobAssigned".to_owned() } else { text.clone() };
        let record = one_record(&invocation(&target, &payload), cut)?;
        prop_assert_eq!(
            parse_message(&record).map_err(|e| TestCaseError::fail(e.to_string()))?,
            HubMessage::Invocation { invocation_id: None, target, arguments: vec![payload.clone()] }
        );
        let close_record = one_record(&close(error.as_deref(), allow), cut)?;
        prop_assert_eq!(parse_message(&close_record), Ok(HubMessage::Close { error: error.clone() }));
        let mut reader = &close_record[..];
        let value = rmpv::decode::read_value(&mut reader).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(value.as_array().and_then(|items| items.get(2)).and_then(Pack::as_bool), Some(allow));
        prop_assert_eq!(parse_message(&one_record(&ack(seq), cut)?), Ok(HubMessage::Ack { sequence_id: seq }));
        prop_assert_eq!(
            parse_message(&one_record(&sequence(seq), cut)?),
            Ok(HubMessage::Sequence { sequence_id: seq })
        );
        prop_assert_eq!(parse_message(&one_record(&PING, cut)?), Ok(HubMessage::Ping));
        for completion in [completion_result(&text, &payload), completion_error(&text, &text)] {
            let record = one_record(&completion, cut)?;
            prop_assert_eq!(parse_message(&record), Ok(HubMessage::Ignored(3)));
        }
        Ok(())
    });
}
