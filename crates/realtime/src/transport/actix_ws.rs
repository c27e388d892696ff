//! The default WebSocket transport: actix-ws, on the HTTP worker that
//! answered the upgrade. The connection runs as a task of that worker, with
//! the worker's fan-out task ([`crate::http::WorkerFanout`]).

use std::time::Duration;

use actix_ws::{AggregatedMessage, AggregatedMessageStream, CloseCode, CloseReason, Session};
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
