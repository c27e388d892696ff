//! One logical hub connection and the WebSocket that carries it.
//!
//! After the handshake, one `select!` loop runs over the client's messages,
//! the outbound queue the hub fills, the hub's close signal and one timer
//! armed for whatever is due next (keep-alive ping, client timeout,
//! stateful-reconnect ack).
//!
//! With stateful reconnect (negotiated with `useStatefulReconnect=true` and
//! handshake version 2), every trackable record sent (invocations and
//! completions) is numbered and kept until the client acks it. When the
//! socket drops without a Close record, the logical connection is parked in
//! the hub (still a member of its groups, its queue still filling) for the
//! reconnect window; a new WebSocket with the same connection token resumes
//! it: the server sends `Sequence` with its oldest unacknowledged number,
//! re-sends those records, and carries on. A reattach that comes while the
//! old socket still looks open takes it over the same way: the hub tells
//! the old loop ([`CloseReason::Replaced`]), which parks the connection
//! straight into the reattach and closes its socket. Otherwise every exit
//! path unregisters from the hub.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use smartscheduler_domain::{ContractorId, Group, Principal, PublishedEvent, Region, Sequence};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};

use crate::hub::{CloseReason, ConnKey, Frame, Outbox};
use crate::limits::{ConnectionPermit, RateLimiter};
use crate::protocol::{self, HubMessage, RecordBuffer};
use crate::upgrade::Ws;
use crate::HubContext;

/// Why the socket loop ends; decides the Close record and whether to park.
enum Stop {
    /// The socket went away without a Close record: park when stateful.
    Dropped,
    /// The client said goodbye (a Close record): nothing more to send.
    ClientClosed,
    /// Send a Close record with this error and reconnect permission.
    Close { error: String, allow_reconnect: bool },
    /// A reattach took the connection over: park it for the new socket and
    /// close this one without a Close record (the client has moved on).
    Replaced,
}

/// How soon a stateful connection acks the messages it has processed.
const ACK_INTERVAL: Duration = Duration::from_secs(1);

/// At most this many queued frames go out in one write.
const MAX_BATCH: usize = 64;

/// What the client sent, as the connection loop sees it.
enum Incoming {
    Text(Utf8Bytes),
    Binary,
    /// A WebSocket Ping: tungstenite has queued the Pong, a flush sends it.
    Ping,
    /// A Close frame, or the socket was lost (reset, EOF without a Close frame).
    Closed,
    /// The client broke the WebSocket protocol or a size limit.
    Broken(tungstenite::Error),
}

/// Whether a read error means the connection was lost (the socket was reset
/// or hit EOF without a close frame: how a network drop looks) rather than
/// the client breaking the protocol.
fn is_transport_loss(err: &tungstenite::Error) -> bool {
    use tungstenite::error::ProtocolError;
    matches!(
        err,
        tungstenite::Error::ConnectionClosed
            | tungstenite::Error::AlreadyClosed
            | tungstenite::Error::Io(_)
            | tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake)
    )
}

/// The socket: reads, and writes with a timeout racing the hub's close signal.
struct Writer {
    ws: Ws,
    last_sent: Instant,
    write_timeout: Duration,
}

impl Writer {
    fn new(ws: Ws, write_timeout: Duration) -> Self {
        Self { ws, last_sent: Instant::now(), write_timeout }
    }

    /// The next message from the client. Cancel-safe.
    async fn recv(&mut self) -> Incoming {
        loop {
            return match self.ws.next().await {
                Some(Ok(Message::Text(text))) => Incoming::Text(text),
                Some(Ok(Message::Binary(_))) => Incoming::Binary,
                Some(Ok(Message::Ping(_))) => Incoming::Ping,
                Some(Ok(Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Close(_))) | None => Incoming::Closed,
                Some(Err(err)) if is_transport_loss(&err) => Incoming::Closed,
                Some(Err(err)) => Incoming::Broken(err),
            };
        }
    }

    async fn send(&mut self, close: &mut Option<oneshot::Receiver<CloseReason>>, text: Utf8Bytes) -> Result<(), Stop> {
        self.send_all(close, std::iter::once(text)).await
    }

    /// Writes each text as one text message, then flushes once: whatever is
    /// queued leaves in one `send`. With nothing to write, it flushes what
    /// tungstenite queued by itself (a Pong).
    async fn send_all(
        &mut self,
        close: &mut Option<oneshot::Receiver<CloseReason>>,
        texts: impl IntoIterator<Item = Utf8Bytes>,
    ) -> Result<(), Stop> {
        let ws = &mut self.ws;
        let write = tokio::time::timeout(self.write_timeout, async move {
            for text in texts {
                ws.feed(Message::Text(text)).await?;
            }
            ws.flush().await
        });
        let result = match close.as_mut() {
            Some(signal) => tokio::select! {
                r = write => r,
                reason = signal => {
                    *close = None;
                    return Err(close_for(reason.unwrap_or(CloseReason::ShuttingDown)));
                }
            },
            None => write.await,
        };
        match result {
            Ok(Ok(())) => {
                self.last_sent = Instant::now();
                Ok(())
            }
            Ok(Err(_)) => Err(Stop::Dropped),
            Err(_) => Err(Stop::Close { error: "The client stopped reading.".into(), allow_reconnect: true }),
        }
    }
}

fn close_for(reason: CloseReason) -> Stop {
    match reason {
        CloseReason::SlowConsumer => Stop::Close {
            error: "Connection closed: the client did not keep up. Rejoin with afterSequence to catch up.".into(),
            allow_reconnect: true,
        },
        CloseReason::ShuttingDown => Stop::Close { error: "Server is shutting down.".into(), allow_reconnect: true },
        CloseReason::ReconnectWindowExpired => {
            Stop::Close { error: "The reconnect window expired.".into(), allow_reconnect: true }
        }
        CloseReason::Replaced => Stop::Replaced,
    }
}

/// What this connection has joined, and what it must not receive twice.
#[derive(Default)]
struct Membership {
    groups: HashSet<Group>,
    /// Per group: live events at or below this were already covered by a replay.
    floors: HashMap<Group, i64>,
    /// Sequences sent by replays, skipped when they arrive live.
    replayed: BTreeSet<i64>,
    /// Whether the connection ever left a group (or had a join undone):
    /// frames queued before the hub heard of it may still be on their way.
    has_left: bool,
}

impl Membership {
    /// Takes `group` out: its frames still queued are not wanted.
    fn remove(&mut self, group: &Group) {
        self.groups.remove(group);
        self.floors.remove(group);
        self.has_left = true;
    }

    fn wants(&mut self, frame: &Frame) -> bool {
        // The hub queues a frame only to members of its groups. A connection
        // that has left none and applies no replay floor wants it all.
        if !self.has_left && self.floors.is_empty() && self.replayed.is_empty() {
            return true;
        }
        // Forget replayed sequences that live delivery has passed.
        while let Some(&first) = self.replayed.first() {
            if first < frame.sequence {
                self.replayed.pop_first();
            } else {
                break;
            }
        }
        if self.replayed.remove(&frame.sequence) {
            return false;
        }
        frame
            .groups
            .iter()
            .any(|g| self.groups.contains(g) && frame.sequence > self.floors.get(g).copied().unwrap_or(i64::MIN))
    }
}

/// Stateful reconnect bookkeeping (handshake version 2).
#[derive(Default)]
struct Stateful {
    /// Trackable records sent so far; the last one's number.
    sent: u64,
    /// Sent, not yet acknowledged: (number, record).
    unacked: VecDeque<(u64, Utf8Bytes)>,
    unacked_bytes: usize,
    /// The number the next trackable record from the client takes.
    next_expected: u64,
    /// The highest client record processed.
    processed: u64,
    /// The highest number acknowledged to the client.
    acked_to_client: u64,
}

impl Stateful {
    fn new() -> Self {
        Self { next_expected: 1, ..Self::default() }
    }
    /// The number the server announces in its Sequence on reattach.
    fn resend_from(&self) -> u64 {
        self.unacked.front().map_or(self.sent + 1, |(n, _)| *n)
    }
    fn ack(&mut self, upto: u64) {
        while let Some((n, text)) = self.unacked.front() {
            if *n > upto {
                break;
            }
            self.unacked_bytes -= text.len();
            self.unacked.pop_front();
        }
    }
}

/// A logical connection: hub membership, queues and protocol state. It
/// outlives its socket when parked for a stateful reconnect.
pub struct Conn {
    /// This user's slot among its open connections, released on drop.
    _permit: ConnectionPermit,
    /// Invocations per second.
    calls: RateLimiter,
    ctx: HubContext,
    principal: Principal,
    key: ConnKey,
    /// The connection token (absent with skipNegotiation).
    token: Option<String>,
    membership: Membership,
    outbound: Outbox,
    close: Option<oneshot::Receiver<CloseReason>>,
    stateful: Option<Stateful>,
    /// The frames of one write (see `send_frames`), empty between writes.
    batch: Vec<Utf8Bytes>,
}

impl Conn {
    /// Who this connection speaks for.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }
    /// The hub key.
    pub fn key(&self) -> ConnKey {
        self.key
    }
    /// A new close signal, when the hub has used the old one to take the
    /// connection over.
    pub(crate) fn rearm_close(&mut self, close: oneshot::Receiver<CloseReason>) {
        self.close = Some(close);
    }
}

/// Runs a new connection: handshake, then the socket loop.
pub(crate) async fn run(
    ctx: HubContext,
    principal: Principal,
    ws: Ws,
    token: Option<String>,
    stateful_negotiated: bool,
    permit: ConnectionPermit,
) {
    let max = ctx.config.max_message_bytes;
    // The connection's state is boxed, as are its rare steps (handshake,
    // hub calls, the close): the future of an idle connection stays small
    // (measured: 9.9 KiB with everything inline).
    let mut writer = Box::new(Writer::new(ws, ctx.config.client_timeout));
    let mut records = RecordBuffer::new(max);

    // Handshake: nothing may be sent before its reply.
    let (version, leftover) = match Box::pin(handshake(&ctx, &mut writer, &mut records)).await {
        Ok(ok) => ok,
        Err(stop) => {
            Box::pin(finish(writer, stop)).await;
            return;
        }
    };

    let stateful = (stateful_negotiated && version >= 2 && ctx.config.allow_stateful_reconnect).then(Stateful::new);
    let key = ctx.hub.next_key();
    let (close_tx, close_rx) = oneshot::channel();
    let resumable_by = stateful.as_ref().and(token.clone());
    let Ok(outbound) = ctx.hub.register(key, ctx.config.outbound_capacity, close_tx, resumable_by).await else {
        Box::pin(finish(writer, Stop::Close { error: "Server is shutting down.".into(), allow_reconnect: true })).await;
        return;
    };
    let calls = RateLimiter::new(ctx.config.invocations_per_second, ctx.config.invocations_per_second * 2);
    let conn = Box::new(Conn {
        _permit: permit,
        calls,
        ctx,
        principal,
        key,
        token,
        membership: Membership::default(),
        outbound,
        close: Some(close_rx),
        stateful,
        batch: Vec::new(),
    });
    drive(conn, writer, records, leftover).await;
}

/// Resumes a parked stateful connection on a new socket: no handshake; the
/// server's Sequence first, then every unacknowledged record, then live.
/// Without a socket (the `101` could not be written) it parks again.
pub(crate) async fn resume(mut conn: Box<Conn>, ws: Option<Ws>) {
    let Some(ws) = ws else {
        park_or_unregister(conn).await;
        return;
    };
    let max = conn.ctx.config.max_message_bytes;
    let mut writer = Box::new(Writer::new(ws, conn.ctx.config.client_timeout));
    tracing::info!(conn = conn.key, "stateful reconnect: resuming");
    let resent = {
        let state = conn.stateful.as_ref().expect("only stateful connections are parked");
        let mut records = vec![Utf8Bytes::from(protocol::sequence(state.resend_from()))];
        records.extend(state.unacked.iter().map(|(_, text)| text.clone()));
        records
    };
    if let Err(stop) = writer.send_all(&mut conn.close, resent).await {
        end(conn, writer, stop).await;
        return;
    }
    drive(conn, writer, RecordBuffer::new(max), Vec::new()).await;
}

async fn drive(mut conn: Box<Conn>, mut writer: Box<Writer>, mut records: RecordBuffer, leftover: Vec<Vec<u8>>) {
    let stop = conn.serve(&mut writer, &mut records, leftover).await;
    end(conn, writer, stop).await;
}

/// Parks a stateful connection whose socket dropped; otherwise unregisters
/// and closes.
async fn end(conn: Box<Conn>, writer: Box<Writer>, stop: Stop) {
    if matches!(stop, Stop::Dropped) && conn.stateful.is_some() && conn.token.is_some() {
        park_or_unregister(conn).await;
        return;
    }
    if matches!(stop, Stop::Replaced) {
        // Handed over first: the reattach is waiting for it.
        park_or_unregister(conn).await;
        Box::pin(finish(writer, Stop::ClientClosed)).await;
        return;
    }
    let _ = conn.ctx.hub.unregister(conn.key).await;
    Box::pin(finish(writer, stop)).await;
}

/// Parks a stateful connection for its reconnect window (unregisters it when
/// it cannot be parked).
async fn park_or_unregister(conn: Box<Conn>) {
    let hub = conn.ctx.hub.clone();
    let key = conn.key;
    if let Some(token) = conn.token.clone() {
        tracing::info!(conn = key, "socket dropped: parked for a stateful reconnect");
        if hub.park(token, conn).await.is_ok() {
            return;
        }
    }
    let _ = hub.unregister(key).await;
}

async fn handshake(
    ctx: &HubContext,
    writer: &mut Writer,
    records: &mut RecordBuffer,
) -> Result<(u64, Vec<Vec<u8>>), Stop> {
    let deadline = tokio::time::sleep(ctx.config.handshake_timeout);
    tokio::pin!(deadline);
    let mut no_close = None;
    loop {
        tokio::select! {
            () = &mut deadline => return Err(cancel_handshake(writer).await),
            message = writer.recv() => {
                let bytes = match message {
                    Incoming::Text(text) => text,
                    Incoming::Binary | Incoming::Broken(_) => return Err(cancel_handshake(writer).await),
                    Incoming::Ping => { writer.send_all(&mut no_close, []).await?; continue; }
                    Incoming::Closed => return Err(Stop::ClientClosed),
                };
                let Ok(mut complete) = records.push(bytes.as_bytes()) else {
                    return Err(cancel_handshake(writer).await);
                };
                if complete.is_empty() {
                    continue;
                }
                let first = complete.remove(0);
                return match protocol::parse_handshake(&first) {
                    Ok(request) => {
                        writer.send(&mut no_close, protocol::HANDSHAKE_OK.into()).await?;
                        Ok((request.version, complete))
                    }
                    Err(error) => {
                        let _ = writer.send(&mut no_close, protocol::handshake_error(&error).into()).await;
                        Err(Stop::ClientClosed)
                    }
                };
            }
        }
    }
}

/// Ends a handshake that cannot succeed: ASP.NET's handshake error, then
/// the close.
async fn cancel_handshake(writer: &mut Writer) -> Stop {
    let _ = writer.send(&mut None, protocol::handshake_error("Handshake was canceled.").into()).await;
    Stop::ClientClosed
}

/// Sends the Close record when there is one and a Close frame (1000), then
/// ends the socket's sending side and reads (and drops) what the client
/// still sends until it closes, a second at most: closing a socket with
/// unread input resets it, and a reset can destroy the Close record before
/// the client has read it.
async fn finish(mut writer: Box<Writer>, stop: Stop) {
    let ws = &mut writer.ws;
    let goodbye = async {
        if let Stop::Close { error, allow_reconnect } = stop {
            ws.feed(Message::Text(protocol::close(Some(&error), allow_reconnect).into())).await?;
        }
        ws.close(Some(CloseFrame { code: CloseCode::Normal, reason: Utf8Bytes::default() })).await
    };
    if tokio::time::timeout(Duration::from_secs(1), goodbye).await.is_err() {
        return; // not reading: nothing more to say
    }
    let socket = ws.get_mut();
    let drained = async {
        let _ = tokio::io::AsyncWriteExt::shutdown(socket).await;
        let mut sink = [0u8; 4096];
        while socket.readable().await.is_ok() {
            match socket.try_read(&mut sink) {
                Ok(0) => break,
                Err(err) if err.kind() != std::io::ErrorKind::WouldBlock => break,
                _ => {}
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drained).await;
}

/// A refused or failed hub call: the text the client's `invoke` rejects with.
struct CallError(String);

fn is_trackable(message: &HubMessage) -> bool {
    matches!(message, HubMessage::Invocation { .. } | HubMessage::StreamInvocation { .. } | HubMessage::Ignored(_))
}

impl Conn {
    /// Sends a trackable record, numbering and buffering it when stateful.
    async fn send_tracked(&mut self, writer: &mut Writer, text: Utf8Bytes) -> Result<(), Stop> {
        self.track(&text)?;
        writer.send(&mut self.close, text).await
    }

    /// Numbers and keeps a trackable record when stateful.
    fn track(&mut self, text: &Utf8Bytes) -> Result<(), Stop> {
        if let Some(state) = self.stateful.as_mut() {
            state.sent += 1;
            state.unacked_bytes += text.len();
            state.unacked.push_back((state.sent, text.clone()));
            if state.unacked_bytes > self.ctx.config.stateful_buffer_bytes {
                return Err(Stop::Close {
                    error: "Too many unacknowledged messages; reconnect and rejoin with afterSequence.".into(),
                    allow_reconnect: true,
                });
            }
        }
        Ok(())
    }

    /// Sends `first` and whatever else the hub has queued (up to
    /// [`MAX_BATCH`]) that this connection wants, in one write.
    async fn send_frames(&mut self, writer: &mut Writer, first: Arc<Frame>) -> Result<(), Stop> {
        // The batch's buffer is kept between calls: no allocation per wake-up.
        let mut batch = std::mem::take(&mut self.batch);
        let mut next = Some(first);
        while let Some(frame) = next {
            if self.membership.wants(&frame) {
                self.track(&frame.text)?;
                batch.push(frame.text.clone());
            }
            next = if batch.len() < MAX_BATCH { self.outbound.try_recv() } else { None };
        }
        let sent = if batch.is_empty() { Ok(()) } else { writer.send_all(&mut self.close, batch.drain(..)).await };
        self.batch = batch;
        sent
    }

    async fn serve(&mut self, writer: &mut Writer, records: &mut RecordBuffer, leftover: Vec<Vec<u8>>) -> Stop {
        let mut last_received = Instant::now();
        for record in leftover {
            if let Err(stop) = Box::pin(self.on_record(&record, writer)).await {
                return stop;
            }
        }
        // One timer per connection, armed for the next thing due (a
        // keep-alive Ping, the client timeout, a stateful ack) rather than a
        // tick every second: an idle connection wakes every 15 s, not every 1 s.
        // Traffic does not re-arm it (that would cost a timer update per
        // message): when it fires early, it re-arms for what is due next.
        let keep_alive = self.ctx.config.keep_alive;
        let client_timeout = self.ctx.config.client_timeout;
        let timer = tokio::time::sleep(keep_alive.min(client_timeout).min(ACK_INTERVAL));
        tokio::pin!(timer);
        loop {
            tokio::select! {
                message = writer.recv() => {
                    last_received = Instant::now();
                    let bytes = match message {
                        Incoming::Text(text) => text,
                        Incoming::Binary => {
                            return Stop::Close { error: "Binary messages are not supported: this hub speaks the JSON protocol.".into(), allow_reconnect: false };
                        }
                        Incoming::Ping => {
                            if let Err(stop) = writer.send_all(&mut self.close, []).await {
                                return stop;
                            }
                            continue;
                        }
                        // A Close frame, a reset or an EOF without a Close frame.
                        Incoming::Closed => return Stop::Dropped,
                        Incoming::Broken(err) => {
                            return Stop::Close { error: format!("Connection closed with an error: {err}"), allow_reconnect: false };
                        }
                    };
                    let complete = match records.push(bytes.as_bytes()) {
                        Ok(complete) => complete,
                        Err(err) => return Stop::Close { error: err.to_string(), allow_reconnect: false },
                    };
                    for record in complete {
                        if let Err(stop) = Box::pin(self.on_record(&record, writer)).await {
                            return stop;
                        }
                    }
                    // Something to ack: within a second, as before.
                    if self.ack_pending() {
                        let soon = tokio::time::Instant::now() + ACK_INTERVAL;
                        if timer.deadline() > soon {
                            timer.as_mut().reset(soon);
                        }
                    }
                }
                frame = self.outbound.recv() => match frame {
                    Some(frame) => {
                        if let Err(stop) = self.send_frames(writer, frame).await {
                            return stop;
                        }
                    }
                    // The hub dropped us (it was full) and the close signal follows.
                    None => {
                        let reason = match self.close.take() {
                            Some(close) => close.await.unwrap_or(CloseReason::SlowConsumer),
                            None => CloseReason::SlowConsumer,
                        };
                        return close_for(reason);
                    }
                },
                reason = async { self.close.as_mut().expect("set until it fires").await }, if self.close.is_some() => {
                    self.close = None;
                    return close_for(reason.unwrap_or(CloseReason::ShuttingDown));
                }
                () = &mut timer => {
                    if last_received.elapsed() >= client_timeout {
                        return Stop::Close { error: "Server timeout elapsed without receiving a message from the client.".into(), allow_reconnect: true };
                    }
                    if let Some(state) = self.stateful.as_mut() {
                        if state.processed > state.acked_to_client {
                            state.acked_to_client = state.processed;
                            let ack = protocol::ack(state.processed);
                            if let Err(stop) = writer.send(&mut self.close, ack.into()).await {
                                return stop;
                            }
                        }
                    }
                    if writer.last_sent.elapsed() >= keep_alive {
                        if let Err(stop) = writer.send(&mut self.close, protocol::PING.into()).await {
                            return stop;
                        }
                    }
                    let mut next = (last_received + client_timeout).min(writer.last_sent + keep_alive);
                    if self.ack_pending() {
                        next = next.min(Instant::now() + ACK_INTERVAL);
                    }
                    // Never a busy loop, even if a clock reading lags.
                    let next = next.max(Instant::now() + Duration::from_millis(10));
                    timer.as_mut().reset(tokio::time::Instant::from_std(next));
                }
            }
        }
    }

    /// Whether a stateful connection has processed messages it has not acked yet.
    fn ack_pending(&self) -> bool {
        self.stateful.as_ref().is_some_and(|state| state.processed > state.acked_to_client)
    }

    async fn on_record(&mut self, record: &[u8], writer: &mut Writer) -> Result<(), Stop> {
        let message = protocol::parse_message(record)
            .map_err(|err| Stop::Close { error: err.to_string(), allow_reconnect: false })?;
        if let Some(state) = self.stateful.as_mut() {
            match message {
                HubMessage::Ack { sequence_id } => {
                    state.ack(sequence_id);
                    return Ok(());
                }
                HubMessage::Sequence { sequence_id } => {
                    if sequence_id > state.next_expected {
                        return Err(Stop::Close {
                            error: "Sequence ID greater than amount of messages we've received.".into(),
                            allow_reconnect: false,
                        });
                    }
                    state.next_expected = sequence_id;
                    return Ok(());
                }
                ref m if is_trackable(m) => {
                    let number = state.next_expected;
                    state.next_expected += 1;
                    if number <= state.processed {
                        return Ok(()); // a re-sent duplicate
                    }
                    state.processed = number;
                }
                _ => {}
            }
        }
        match message {
            HubMessage::Invocation { invocation_id, target, arguments } => {
                let outcome = if self.calls.allow() {
                    self.invoke(&target, &arguments, writer).await?
                } else {
                    Err(CallError(format!(
                        "Too many invocations: at most {} per second.",
                        self.ctx.config.invocations_per_second
                    )))
                };
                if let Some(id) = invocation_id {
                    let reply = match outcome {
                        Ok(result) => protocol::completion_result(&id, &result),
                        Err(CallError(error)) => protocol::completion_error(&id, &error),
                    };
                    self.send_tracked(writer, reply.into()).await?;
                }
                Ok(())
            }
            HubMessage::StreamInvocation { invocation_id, target } => {
                let reply =
                    protocol::completion_error(&invocation_id, &format!("Streaming is not supported for '{target}'."));
                self.send_tracked(writer, reply.into()).await
            }
            HubMessage::Close { .. } => Err(Stop::ClientClosed),
            HubMessage::Ping
            | HubMessage::Ignored(_)
            | HubMessage::Unknown(_)
            | HubMessage::Ack { .. }
            | HubMessage::Sequence { .. } => Ok(()),
        }
    }

    /// Runs a hub method. The outer `Result` stops the connection (a socket
    /// failure during a replay); the inner one is the call's own outcome.
    async fn invoke(
        &mut self,
        target: &str,
        args: &[Value],
        writer: &mut Writer,
    ) -> Result<Result<Value, CallError>, Stop> {
        let method = target.to_ascii_lowercase();
        let parsed = match method.as_str() {
            "joindispatchgroup" | "leavedispatchgroup" => region_group(target, args),
            "joincontractorgroup" | "leavecontractorgroup" => contractor_group(target, args),
            _ => return Ok(Err(CallError(format!("Unknown hub method '{target}'")))),
        };
        let (group, after) = match parsed {
            Ok(parsed) => parsed,
            Err(err) => return Ok(Err(err)),
        };
        if method.starts_with("leave") {
            return Ok(self.leave(group).await);
        }
        self.join(target, group, after, writer).await
    }

    /// Takes back a join that just happened, unless the connection was
    /// already a member before it.
    async fn undo_join(&mut self, was_member: bool, group: Group) {
        if !was_member {
            self.membership.remove(&group);
            let _ = self.ctx.hub.leave(self.key, group).await;
        }
    }

    async fn leave(&mut self, group: Group) -> Result<Value, CallError> {
        self.membership.remove(&group);
        self.ctx.hub.leave(self.key, group.clone()).await.map_err(|_| CallError("The hub is stopping.".into()))?;
        Ok(json!({ "group": group }))
    }

    async fn join(
        &mut self,
        target: &str,
        group: Group,
        after: Option<i64>,
        writer: &mut Writer,
    ) -> Result<Result<Value, CallError>, Stop> {
        if !self.principal.may_join(&group) {
            tracing::info!(subject = %self.principal.subject, %group, "join refused");
            return Ok(Err(refused(target, &format!("You are not allowed to join '{group}'."))));
        }
        if !self.membership.groups.contains(&group)
            && self.membership.groups.len() >= self.ctx.config.max_groups_per_connection
        {
            return Ok(Err(refused(
                target,
                &format!("A connection may join at most {} groups.", self.ctx.config.max_groups_per_connection),
            )));
        }
        // A refused replay must not undo a membership the connection had.
        let was_member = self.membership.groups.contains(&group);
        // Join first, so live events queue up while the replay is read: no gap.
        match self.ctx.hub.join(self.key, group.clone()).await {
            Ok(true) => {}
            _ => return Err(Stop::Close { error: "Server is shutting down.".into(), allow_reconnect: true }),
        }
        self.membership.groups.insert(group.clone());
        let Some(after) = after else {
            self.membership.floors.remove(&group);
            return Ok(Ok(json!({ "group": group, "replayed": 0 })));
        };
        match self.ctx.event_log.purged_through().await {
            Ok(purged) if after < purged.0 => {
                self.undo_join(was_member, group).await;
                return Ok(Err(refused(
                    target,
                    "This position is older than the events kept for replay; reload the state over HTTP and join without afterSequence.",
                )));
            }
            _ => {}
        }
        let limit = self.ctx.config.max_replay;
        // Read after the join: what this node's follower hands over later
        // reaches this connection live, so the replay stops where it is.
        let bound = self.ctx.followed.as_ref().map_or(i64::MAX, |followed| followed.replay_bound());
        let missed = match self.ctx.event_log.replay(group.clone(), Sequence(after), limit + 1).await {
            Ok(mut missed) => {
                missed.retain(|(_, sequence)| sequence.0 <= bound);
                missed
            }
            Err(err) => {
                tracing::warn!(error = %err, %group, "replay failed");
                self.undo_join(was_member, group).await;
                return Ok(Err(refused(target, "The missed events could not be read; try again.")));
            }
        };
        if missed.len() > limit as usize {
            self.undo_join(was_member, group).await;
            return Ok(Err(refused(
                target,
                &format!(
                    "More than {limit} events were missed; reload the state over HTTP and join without afterSequence."
                ),
            )));
        }
        let mut floor = after;
        let replayed = missed.len();
        metrics::counter!("smartscheduler_hub_replayed_events_total").increment(replayed as u64);
        for (event, sequence) in missed {
            floor = floor.max(sequence.0);
            let target = event.event_type().as_str();
            let published = PublishedEvent { event, sequence };
            self.send_tracked(writer, protocol::invocation(target, &published).into()).await?;
            self.membership.replayed.insert(sequence.0);
        }
        self.membership.floors.insert(group.clone(), floor);
        Ok(Ok(json!({ "group": group, "replayed": replayed })))
    }
}

/// ASP.NET's form for a method that refused: the client's `invoke` rejects
/// with this text.
fn refused(target: &str, message: &str) -> CallError {
    CallError(format!("An unexpected error occurred invoking '{target}' on the server. HubException: {message}"))
}

fn after_sequence(target: &str, args: &[Value]) -> Result<Option<i64>, CallError> {
    match args.get(1) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_i64() {
            Some(n) if n >= 0 => Ok(Some(n)),
            _ => Err(refused(target, "afterSequence must be a whole number, 0 or more.")),
        },
    }
}

fn check_arity(target: &str, args: &[Value], max: usize) -> Result<(), CallError> {
    if args.is_empty() || args.len() > max {
        return Err(refused(
            target,
            &format!(
                "Expected {} argument(s), got {}.",
                if max == 1 { "1".into() } else { format!("1 to {max}") },
                args.len()
            ),
        ));
    }
    Ok(())
}

fn region_group(target: &str, args: &[Value]) -> Result<(Group, Option<i64>), CallError> {
    let leave = target.to_ascii_lowercase().starts_with("leave");
    check_arity(target, args, if leave { 1 } else { 2 })?;
    let region = args[0].as_str().ok_or_else(|| refused(target, "region must be a string."))?;
    let region = Region::new(region).map_err(|e| refused(target, &e.to_string()))?;
    Ok((Group::dispatch(&region), if leave { None } else { after_sequence(target, args)? }))
}

fn contractor_group(target: &str, args: &[Value]) -> Result<(Group, Option<i64>), CallError> {
    let leave = target.to_ascii_lowercase().starts_with("leave");
    check_arity(target, args, if leave { 1 } else { 2 })?;
    let id = args[0].as_str().ok_or_else(|| refused(target, "contractorId must be a string."))?;
    let id: ContractorId =
        id.parse().map_err(|e: smartscheduler_domain::ValidationError| refused(target, &e.to_string()))?;
    Ok((Group::contractor(id), if leave { None } else { after_sequence(target, args)? }))
}

#[cfg(test)]
mod tests {
    use std::io;

    use tungstenite::error::{CapacityError, ProtocolError};

    use super::*;

    #[test]
    fn a_reset_or_eof_is_a_dropped_socket_and_a_protocol_violation_is_not() {
        // How tungstenite reports a socket reset or an EOF without a close frame.
        assert!(is_transport_loss(&tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake)));
        assert!(is_transport_loss(&tungstenite::Error::Io(io::Error::from(io::ErrorKind::ConnectionReset))));
        assert!(is_transport_loss(&tungstenite::Error::ConnectionClosed));
        // The client's fault: close with an error, no stateful resume.
        assert!(!is_transport_loss(&tungstenite::Error::Capacity(CapacityError::MessageTooLong {
            size: 40_000,
            max_size: 32_768
        })));
        assert!(!is_transport_loss(&tungstenite::Error::Utf8("invalid utf-8".into())));
        assert!(!is_transport_loss(&tungstenite::Error::Protocol(ProtocolError::UnmaskedFrameFromClient)));
        assert!(!is_transport_loss(&tungstenite::Error::Protocol(ProtocolError::FragmentedControlFrame)));
    }

    fn frame(sequence: i64, groups: &[&Group]) -> Frame {
        let groups: Vec<Group> = groups.iter().map(|g| (*g).clone()).collect();
        Frame::new(Utf8Bytes::from_static("x\u{1e}"), sequence, groups.into())
    }

    fn member_of(groups: &[&Group]) -> Membership {
        Membership { groups: groups.iter().map(|g| (*g).clone()).collect(), ..Membership::default() }
    }

    #[test]
    fn a_member_that_never_left_wants_every_frame_queued_to_it() {
        let north = Group::dispatch(&smartscheduler_domain::Region::new("north").unwrap());
        let mut membership = member_of(&[&north]);
        assert!(membership.wants(&frame(1, &[&north])));
        assert!(membership.wants(&frame(2, &[&north])));
    }

    #[test]
    fn frames_of_a_group_left_are_not_wanted_and_the_others_still_are() {
        let north = Group::dispatch(&smartscheduler_domain::Region::new("north").unwrap());
        let south = Group::dispatch(&smartscheduler_domain::Region::new("south").unwrap());
        let mut membership = member_of(&[&north, &south]);
        membership.remove(&north);
        assert!(!membership.wants(&frame(1, &[&north])), "queued before the leave reached the hub");
        assert!(membership.wants(&frame(2, &[&south])));
        assert!(membership.wants(&frame(3, &[&north, &south])), "still a member of one of its groups");
        // Joined again: wanted again.
        membership.groups.insert(north.clone());
        assert!(membership.wants(&frame(4, &[&north])));
    }

    #[test]
    fn a_replay_floor_and_replayed_sequences_are_not_sent_twice() {
        let north = Group::dispatch(&smartscheduler_domain::Region::new("north").unwrap());
        let mut membership = member_of(&[&north]);
        membership.floors.insert(north.clone(), 10);
        membership.replayed.extend([9, 10]);
        assert!(!membership.wants(&frame(9, &[&north])), "replayed");
        assert!(!membership.wants(&frame(10, &[&north])), "replayed");
        assert!(membership.wants(&frame(11, &[&north])), "after the floor");
        assert!(membership.replayed.is_empty(), "replayed sequences passed by live delivery are forgotten");
    }
}
