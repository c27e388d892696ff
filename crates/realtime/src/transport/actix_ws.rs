//! The default WebSocket transport: actix-ws, on the HTTP worker that
//! answered the upgrade. The connection runs as a task of that worker, with
//! the worker's fan-out task ([`crate::http::WorkerFanout`]).

use std::time::Duration;

use actix_ws::{AggregatedMessage, AggregatedMessageStream, CloseCode, CloseReason, ProtocolError, Session};
use bytes::Bytes;

use super::{Incoming, Lost, Transport};
use crate::protocol::Encoded;

/// A hub connection's [`Transport`] on an actix-ws session.
pub struct ActixWebSocket {
    session: Session,
    messages: AggregatedMessageStream,
    /// A Ping's payload, answered by the next send.
    pong_owed: Option<Bytes>,
}

impl ActixWebSocket {
    /// The transport of an upgraded request; messages (and the frames of a
    /// fragmented one, together) longer than `max_message_bytes` end the read
    /// with an error.
    pub fn new(session: Session, messages: actix_ws::MessageStream, max_message_bytes: usize) -> Self {
        let messages = messages
            .max_frame_size(max_message_bytes)
            .aggregate_continuations()
            .max_continuation_size(max_message_bytes);
        Self { session, messages, pong_owed: None }
    }
}

/// Whether a read error means the connection was lost rather than the
/// client breaking the protocol. actix-ws reports both as I/O errors: a
/// reset or EOF of the request's payload wraps actix-http's `PayloadError`;
/// invalid UTF-8 and a fragmented message past the limit wrap other errors.
fn is_transport_loss(err: &ProtocolError) -> bool {
    match err {
        ProtocolError::Io(io) => match io.get_ref() {
            Some(inner) => inner.is::<actix_http::error::PayloadError>(),
            None => io.kind() != std::io::ErrorKind::InvalidData,
        },
        _ => false,
    }
}

impl Transport for ActixWebSocket {
    fn name(&self) -> &'static str {
        "WebSockets"
    }

    fn carries_binary(&self) -> bool {
        true
    }

    fn resumable(&self) -> bool {
        true
    }

    async fn recv(&mut self) -> Incoming {
        loop {
            return match self.messages.recv().await {
                Some(Ok(AggregatedMessage::Text(text))) => Incoming::Text(text.into_bytes()),
                Some(Ok(AggregatedMessage::Binary(bytes))) => Incoming::Binary(bytes),
                Some(Ok(AggregatedMessage::Ping(payload))) => {
                    self.pong_owed = Some(payload);
                    Incoming::Ping
                }
                Some(Ok(AggregatedMessage::Pong(_))) => continue,
                Some(Ok(AggregatedMessage::Close(_))) | None => Incoming::Closed,
                Some(Err(err)) if is_transport_loss(&err) => Incoming::Closed,
                Some(Err(err)) => Incoming::Broken(err.to_string()),
            };
        }
    }

    async fn send(&mut self, records: impl IntoIterator<Item = Encoded>) -> Result<(), Lost> {
        if let Some(payload) = self.pong_owed.take() {
            self.session.pong(&payload).await.map_err(|_| Lost)?;
        }
        for record in records {
            match record {
                Encoded::Text(text) => self.session.text(text).await,
                Encoded::Binary(bytes) => self.session.binary(bytes).await,
            }
            .map_err(|_| Lost)?;
        }
        Ok(())
    }

    async fn close(mut self, last: Option<Encoded>) {
        let goodbye = async {
            if let Some(last) = last {
                self.send([last]).await?;
            }
            self.session.close(Some(CloseReason { code: CloseCode::Normal, description: None })).await.map_err(|_| Lost)
        };
        // Not reading: nothing more to say.
        let _ = tokio::time::timeout(Duration::from_secs(1), goodbye).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_payload_is_a_dropped_socket_and_bad_frames_or_text_are_the_clients_fault() {
        let lost = actix_http::error::PayloadError::Incomplete(None);
        assert!(is_transport_loss(&ProtocolError::Io(std::io::Error::other(lost))));
        assert!(!is_transport_loss(&ProtocolError::Io(std::io::Error::other("Exceeded maximum continuation size"))));
        assert!(is_transport_loss(&ProtocolError::Io(std::io::ErrorKind::ConnectionReset.into())));
        assert!(!is_transport_loss(&ProtocolError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "invalid utf-8"
        ))));
        assert!(!is_transport_loss(&ProtocolError::Overflow));
        assert!(!is_transport_loss(&ProtocolError::UnmaskedFrame));
    }
}
