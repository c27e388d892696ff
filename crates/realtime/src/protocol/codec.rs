//! One connection's hub protocol, chosen by its handshake: what the
//! connection loop asks of "the protocol" without knowing which it is.

use bytes::Bytes;
use bytestring::ByteString;
use serde::Serialize;

use super::{messagepack, HubMessage, ProtocolError, RecordBuffer};

/// The hub protocols served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// `json`: text records ending in 0x1E.
    Json,
    /// `messagepack`: binary records behind a VarInt length.
    MessagePack,
}

/// Records ready for a transport: text for JSON (a WebSocket text message
/// must be UTF-8), bytes for MessagePack. Clones share the buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Encoded {
    /// Whole JSON records.
    Text(ByteString),
    /// Whole MessagePack records.
    Binary(Bytes),
}

impl Encoded {
    /// The bytes as they go on the wire.
    pub fn bytes(&self) -> &Bytes {
        match self {
            Self::Text(text) => text.as_bytes(),
            Self::Binary(bytes) => bytes,
        }
    }

    /// Their size in bytes.
    pub fn len(&self) -> usize {
        self.bytes().len()
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.bytes().is_empty()
    }
}

impl From<String> for Encoded {
    fn from(text: String) -> Self {
        Self::Text(ByteString::from(text))
    }
}

impl From<&'static str> for Encoded {
    fn from(text: &'static str) -> Self {
        Self::Text(ByteString::from_static(text))
    }
}

/// Splits what a client sends into records, per protocol.
#[derive(Debug)]
pub enum Splitter {
    /// JSON: records end at 0x1E.
    Json(RecordBuffer),
    /// MessagePack: records are length-prefixed.
    MessagePack(messagepack::FrameBuffer),
}

impl Splitter {
    /// Adds `data` and returns the records it completes, in order, without their framing.
    ///
    /// # Errors
    /// A record past the size limit, or a malformed MessagePack prefix.
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<Vec<u8>>, ProtocolError> {
        match self {
            Self::Json(buffer) => buffer.push(data),
            Self::MessagePack(buffer) => buffer.push(data),
        }
    }
}

impl Codec {
    /// The protocol a handshake names; `None` for one not served.
    pub fn named(name: &str) -> Option<Self> {
        match name {
            "json" => Some(Self::Json),
            messagepack::PROTOCOL_NAME => Some(Self::MessagePack),
            _ => None,
        }
    }

    /// Its name in the handshake.
    pub fn name(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::MessagePack => messagepack::PROTOCOL_NAME,
        }
    }

    /// Whether it needs a transport that carries binary data.
    pub fn is_binary(self) -> bool {
        self == Self::MessagePack
    }

    /// A splitter for records of at most `max` bytes.
    pub fn splitter(self, max: usize) -> Splitter {
        match self {
            Self::Json => Splitter::Json(RecordBuffer::new(max)),
            Self::MessagePack => Splitter::MessagePack(messagepack::FrameBuffer::new(max)),
        }
    }

    /// Parses one record (without its framing).
    ///
    /// # Errors
    /// [`ProtocolError::Invalid`] for anything that is not a valid record.
    pub fn parse(self, record: &[u8]) -> Result<HubMessage, ProtocolError> {
        match self {
            Self::Json => super::parse_message(record),
            Self::MessagePack => messagepack::parse_message(record),
        }
    }

    /// The handshake's reply, in this protocol's transfer format (the
    /// handshake itself is JSON whatever the protocol).
    pub fn handshake_reply(self, error: Option<&str>) -> Encoded {
        let text = match error {
            None => super::HANDSHAKE_OK.to_owned(),
            Some(error) => super::handshake_error(error),
        };
        self.wrap_text(text)
    }

    fn wrap_text(self, text: String) -> Encoded {
        match self {
            Self::Json => Encoded::from(text),
            Self::MessagePack => Encoded::Binary(Bytes::from(text)),
        }
    }

    fn pick(self, json: impl FnOnce() -> String, messagepack: impl FnOnce() -> Vec<u8>) -> Encoded {
        match self {
            Self::Json => Encoded::from(json()),
            Self::MessagePack => Encoded::Binary(Bytes::from(messagepack())),
        }
    }

    /// A Ping.
    pub fn ping(self) -> Encoded {
        match self {
            Self::Json => Encoded::from(super::PING),
            Self::MessagePack => Encoded::Binary(Bytes::from_static(&messagepack::PING)),
        }
    }

    /// A server-to-client call with one argument.
    pub fn invocation(self, target: &str, argument: &impl Serialize) -> Encoded {
        self.pick(|| super::invocation(target, argument), || messagepack::invocation(target, argument))
    }

    /// A Completion with a result.
    pub fn completion_result(self, invocation_id: &str, result: &impl Serialize) -> Encoded {
        self.pick(
            || super::completion_result(invocation_id, result),
            || messagepack::completion_result(invocation_id, result),
        )
    }

    /// A Completion with an error.
    pub fn completion_error(self, invocation_id: &str, error: &str) -> Encoded {
        self.pick(
            || super::completion_error(invocation_id, error),
            || messagepack::completion_error(invocation_id, error),
        )
    }

    /// A Close record.
    pub fn close(self, error: Option<&str>, allow_reconnect: bool) -> Encoded {
        self.pick(|| super::close(error, allow_reconnect), || messagepack::close(error, allow_reconnect))
    }

    /// An Ack (stateful reconnect).
    pub fn ack(self, sequence_id: u64) -> Encoded {
        self.pick(|| super::ack(sequence_id), || messagepack::ack(sequence_id))
    }

    /// A Sequence (stateful reconnect).
    pub fn sequence(self, sequence_id: u64) -> Encoded {
        self.pick(|| super::sequence(sequence_id), || messagepack::sequence(sequence_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_handshake_reply_is_json_text_in_either_transfer_format() {
        assert_eq!(Codec::Json.handshake_reply(None), Encoded::from("{}\u{1e}"));
        assert_eq!(Codec::MessagePack.handshake_reply(None), Encoded::Binary(Bytes::from_static(b"{}\x1e")));
        let refused = Codec::MessagePack.handshake_reply(Some("no"));
        assert_eq!(refused.bytes().as_ref(), b"{\"error\":\"no\"}\x1e");
    }

    #[test]
    fn each_codec_parses_what_it_splits() {
        let mut json = Codec::Json.splitter(1024);
        let records = json.push(b"{\"type\":6}\x1e").unwrap();
        assert_eq!(Codec::Json.parse(&records[0]).unwrap(), HubMessage::Ping);
        let mut packed = Codec::MessagePack.splitter(1024);
        let records = packed.push(&messagepack::PING).unwrap();
        assert_eq!(Codec::MessagePack.parse(&records[0]).unwrap(), HubMessage::Ping);
        assert_eq!(Codec::named("messagepack"), Some(Codec::MessagePack));
        assert_eq!(Codec::named("xml"), None);
    }
}
