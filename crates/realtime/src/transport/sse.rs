//! Server-Sent Events, as ASP.NET Core serves them: `GET [hub]?id=TOKEN`
//! with `Accept: text/event-stream` opens a stream that stays open, each
//! record one unnamed event (`data: ` lines, then a blank line); what the
//! client sends comes by `POST` ([`super::http_session`]). Text only, so
//! JSON only. The client ends the connection by dropping the stream.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use tokio::sync::mpsc;

use super::http_session::{HttpSession, HttpSessions};
use super::{Incoming, Lost, Transport};
use crate::protocol::Encoded;

/// Chunks of events waiting for the response stream: a client that stops
/// reading fills it, and the connection's writes wait (and time out) as
/// on a socket.
const STREAM_CHUNKS: usize = 16;

/// A hub connection's [`Transport`] over Server-Sent Events.
pub struct ServerSentEvents {
    events: mpsc::Sender<Bytes>,
    bodies: mpsc::Receiver<Bytes>,
    sessions: Arc<HttpSessions>,
    session: Arc<HttpSession>,
    token: String,
}

/// Writes `record` as one event: a `data: ` line per line of it, then a blank line.
fn event(record: &[u8], out: &mut BytesMut) {
    for line in record.split(|&b| b == b'\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.strip_suffix(b"\r").unwrap_or(line));
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

impl ServerSentEvents {
    /// The transport of `session` (registered under `token`), reading its
    /// POSTs from `bodies`, and the response body that streams its events.
    pub(crate) fn new(
        session: Arc<HttpSession>,
        bodies: mpsc::Receiver<Bytes>,
        sessions: Arc<HttpSessions>,
        token: String,
    ) -> (Self, impl Stream<Item = Result<Bytes, actix_web::Error>> + 'static) {
        let (events, stream) = mpsc::channel(STREAM_CHUNKS);
        // A comment first: the headers and something behind them leave at
        // once, and the client's stream opens (ASP.NET does the same).
        let _ = events.try_send(Bytes::from_static(b":\r\n"));
        let body = futures_util::stream::unfold(stream, |mut stream| async move {
            stream.recv().await.map(|chunk| (Ok(chunk), stream))
        });
        (Self { events, bodies, sessions, session, token }, body)
    }
}

impl Transport for ServerSentEvents {
    fn name(&self) -> &'static str {
        "ServerSentEvents"
    }

    fn carries_binary(&self) -> bool {
        false
    }

    async fn recv(&mut self) -> Incoming {
        tokio::select! {
            body = self.bodies.recv() => match body {
                Some(body) => Incoming::Data(body),
                None => Incoming::Closed,
            },
            // The response stream was dropped: the client went away.
            () = self.events.closed() => Incoming::Closed,
        }
    }

    async fn send(&mut self, records: impl IntoIterator<Item = Encoded>) -> Result<(), Lost> {
        let mut chunk = BytesMut::new();
        for record in records {
            event(record.bytes(), &mut chunk);
        }
        if chunk.is_empty() {
            return Ok(());
        }
        self.events.send(chunk.freeze()).await.map_err(|_| Lost)
    }

    async fn close(mut self, last: Option<Encoded>) {
        if let Some(last) = last {
            let _ = tokio::time::timeout(Duration::from_secs(1), self.send([last])).await;
        }
        self.sessions.remove(&self.token, &self.session);
        // Dropping the sender ends the response stream.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_one_event_with_a_data_line_per_line() {
        let mut out = BytesMut::new();
        event(b"{\"type\":6}\x1e", &mut out);
        assert_eq!(&out[..], b"data: {\"type\":6}\x1e\r\n\r\n");
        let mut out = BytesMut::new();
        event(b"a\r\nb\nc", &mut out);
        assert_eq!(&out[..], b"data: a\r\ndata: b\r\ndata: c\r\n\r\n");
    }
}
