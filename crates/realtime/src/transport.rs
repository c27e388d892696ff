//! The seam between a hub connection and what carries it. The connection
//! loop ([`crate::connection`]) speaks the hub protocol; a transport only
//! moves its records: it reads what the client sent, writes records, and
//! closes. One file per transport here, and one line in [`crate::http`]
//! that starts it:
//! - [`actix_ws`]: WebSockets through actix-ws, on the HTTP workers (the default);
//! - [`dedicated`]: WebSockets on the bare socket with tungstenite, on
//!   socket threads of their own (opt-in, `SMARTSCHEDULER_HUB_WEBSOCKET=dedicated`);
//! - [`long_polling`] and [`sse`]: half-transports whose client-to-server
//!   half is an HTTP POST ([`http_session`]).

pub mod actix_ws;
pub mod dedicated;
pub mod http_session;
pub mod long_polling;
pub mod sse;

use bytes::Bytes;

use crate::protocol::Encoded;

/// What the client sent, as the connection loop sees it.
#[derive(Debug)]
pub enum Incoming {
    /// A WebSocket text message.
    Text(Bytes),
    /// A WebSocket binary message.
    Binary(Bytes),
    /// Data with no message type (a POST body): in the connection's protocol.
    Data(Bytes),
    /// A WebSocket Ping: the transport owes a Pong, which the next `send`
    /// (even of nothing) writes.
    Ping,
    /// The client went away: a Close frame, a reset, an EOF, a dropped
    /// stream, a `DELETE`, or no poll for too long.
    Closed,
    /// The client broke the transport's protocol or a size limit.
    Broken(String),
}

/// The connection is lost: nothing more can be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lost;

/// What carries one hub connection. Not object-safe on purpose: the
/// connection loop is generic over it, so each transport's futures stay
/// unboxed.
pub(crate) trait Transport {
    /// Its name in logs and metrics (`WebSockets`, `ServerSentEvents`, `LongPolling`).
    fn name(&self) -> &'static str;

    /// Whether it carries binary data (MessagePack needs it).
    fn carries_binary(&self) -> bool;

    /// Whether a stateful reconnect can resume on it (WebSockets only, as
    /// the official client uses it).
    fn resumable(&self) -> bool {
        false
    }

    /// The next thing the client sent. Cancel-safe.
    async fn recv(&mut self) -> Incoming;

    /// Writes `records` (possibly none: then only what the transport owes,
    /// a Pong) as one write.
    async fn send(&mut self, records: impl IntoIterator<Item = Encoded>) -> Result<(), Lost>;

    /// Sends `last` when there is one, then ends the connection's transport.
    async fn close(self, last: Option<Encoded>);
}
