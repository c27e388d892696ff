//! One logical hub connection, on whatever [`Transport`] carries it: the
//! state machine every transport shares (handshake, invocations,
//! keep-alive, stateful reconnect, close, de-duplication), in the hub
//! protocol ([`Codec`]) its handshake chose.
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

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use smartscheduler_application::PresenceGuard;
use smartscheduler_domain::Principal;
use tokio::sync::oneshot;

use crate::hub::{CloseReason, ConnKey, Fanout, Frame, Outbox};
use crate::jobs_hub::{CallError, Called, Membership};
use crate::limits::{ConnectionPermit, RateLimiter};
use crate::protocol::{self, Codec, Encoded, HubMessage, Splitter};
use crate::transport::{Incoming, Lost, Transport};
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

/// The transport, with when it last sent and the write timeout, racing
/// each write against the hub's close signal.
struct Writer<T> {
    transport: T,
    last_sent: Instant,
    write_timeout: Duration,
}

impl<T: Transport> Writer<T> {
    fn new(transport: T, write_timeout: Duration) -> Self {
        Self { transport, last_sent: Instant::now(), write_timeout }
    }

    /// The next thing the client sent. Cancel-safe.
    async fn recv(&mut self) -> Incoming {
        self.transport.recv().await
    }

    async fn send(&mut self, close: &mut Option<oneshot::Receiver<CloseReason>>, record: Encoded) -> Result<(), Stop> {
        self.send_all(close, std::iter::once(record)).await
    }

    /// Writes the records as one write. With nothing to write, it writes
    /// what the transport owes by itself (a Pong).
    async fn send_all(
        &mut self,
        close: &mut Option<oneshot::Receiver<CloseReason>>,
        records: impl IntoIterator<Item = Encoded>,
    ) -> Result<(), Stop> {
        let write = tokio::time::timeout(self.write_timeout, self.transport.send(records));
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
            Ok(Err(Lost)) => Err(Stop::Dropped),
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

/// Stateful reconnect bookkeeping (handshake version 2, WebSockets only).
#[derive(Default)]
struct Stateful {
    /// Trackable records sent so far; the last one's number.
    sent: u64,
    /// Sent, not yet acknowledged: (number, record).
    unacked: VecDeque<(u64, Encoded)>,
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
    /// A contractor's presence, counted until the connection is dropped.
    _presence: Option<PresenceGuard>,
    /// Invocations per second.
    calls: RateLimiter,
    ctx: HubContext,
    principal: Principal,
    key: ConnKey,
    /// The connection token (absent with skipNegotiation).
    token: Option<String>,
    /// The hub protocol its handshake chose.
    codec: Codec,
    membership: Membership,
    outbound: Outbox,
    close: Option<oneshot::Receiver<CloseReason>>,
    stateful: Option<Stateful>,
    /// The frames of one write (see `send_frames`), empty between writes.
    batch: Vec<Encoded>,
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

/// Who a new connection is and how it was negotiated.
pub(crate) struct Opening {
    /// Who it speaks for.
    pub principal: Principal,
    /// The connection token (absent with skipNegotiation).
    pub token: Option<String>,
    /// Whether negotiate switched stateful reconnect on.
    pub stateful_negotiated: bool,
    /// The user's slot among its open connections.
    pub permit: ConnectionPermit,
}

/// Runs a new connection on `transport`: handshake, then the loop.
/// `fanout` is the fan-out task of the thread it runs on.
pub(crate) async fn run<T: Transport>(ctx: HubContext, fanout: Fanout, opening: Opening, transport: T) {
    let Opening { principal, token, stateful_negotiated, permit } = opening;
    // The connection's state is boxed, as are its rare steps (handshake,
    // hub calls, the close): the future of an idle connection stays small
    // (measured: 9.9 KiB with everything inline).
    let mut writer = Box::new(Writer::new(transport, ctx.config.client_timeout));

    // Handshake: nothing may be sent before its reply.
    let (version, codec, leftover) = match Box::pin(handshake(&ctx, &mut writer)).await {
        Ok(ok) => ok,
        Err(stop) => {
            Box::pin(finish(writer, Codec::Json, stop)).await;
            return;
        }
    };
    let mut records = codec.splitter(ctx.config.max_message_bytes);
    let leftover = match records.push(&leftover) {
        Ok(leftover) => leftover,
        Err(err) => {
            Box::pin(finish(writer, codec, Stop::Close { error: err.to_string(), allow_reconnect: false })).await;
            return;
        }
    };

    let stateful =
        (stateful_negotiated && version >= 2 && ctx.config.allow_stateful_reconnect && writer.transport.resumable())
            .then(Stateful::new);
    let key = ctx.hub.next_key();
    let (close_tx, close_rx) = oneshot::channel();
    let resumable_by = stateful.as_ref().and(token.clone());
    let Ok(outbound) = ctx.hub.register(&fanout, key, ctx.config.outbound_capacity, close_tx, resumable_by).await
    else {
        let stop = Stop::Close { error: "Server is shutting down.".into(), allow_reconnect: true };
        Box::pin(finish(writer, codec, stop)).await;
        return;
    };
    metrics::counter!("smartscheduler_hub_connections_total", "transport" => writer.transport.name(), "protocol" => codec.name())
        .increment(1);
    let calls = RateLimiter::new(ctx.config.invocations_per_second, ctx.config.invocations_per_second * 2);
    let presence = match &ctx.presence {
        Some(tracker) => tracker.opened(&principal).await,
        None => None,
    };
    let conn = Box::new(Conn {
        _permit: permit,
        _presence: presence,
        calls,
        ctx,
        principal,
        key,
        token,
        codec,
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
pub(crate) async fn resume<T: Transport>(mut conn: Box<Conn>, transport: Option<T>) {
    let Some(transport) = transport else {
        park_or_unregister(conn).await;
        return;
    };
    let mut writer = Box::new(Writer::new(transport, conn.ctx.config.client_timeout));
    tracing::info!(conn = conn.key, "stateful reconnect: resuming");
    let resent = {
        let state = conn.stateful.as_ref().expect("only stateful connections are parked");
        let mut records = vec![conn.codec.sequence(state.resend_from())];
        records.extend(state.unacked.iter().map(|(_, record)| record.clone()));
        records
    };
    if let Err(stop) = writer.send_all(&mut conn.close, resent).await {
        end(conn, writer, stop).await;
        return;
    }
    let records = conn.codec.splitter(conn.ctx.config.max_message_bytes);
    drive(conn, writer, records, Vec::new()).await;
}

async fn drive<T: Transport>(
    mut conn: Box<Conn>,
    mut writer: Box<Writer<T>>,
    mut records: Splitter,
    leftover: Vec<Vec<u8>>,
) {
    let stop = conn.serve(&mut writer, &mut records, leftover).await;
    end(conn, writer, stop).await;
}

/// Parks a stateful connection whose socket dropped; otherwise unregisters
/// and closes.
async fn end<T: Transport>(conn: Box<Conn>, writer: Box<Writer<T>>, stop: Stop) {
    let codec = conn.codec;
    if matches!(stop, Stop::Dropped) && conn.stateful.is_some() && conn.token.is_some() {
        park_or_unregister(conn).await;
        return;
    }
    if matches!(stop, Stop::Replaced) {
        // Handed over first: the reattach is waiting for it.
        park_or_unregister(conn).await;
        Box::pin(finish(writer, codec, Stop::ClientClosed)).await;
        return;
    }
    let _ = conn.ctx.hub.unregister(conn.key).await;
    Box::pin(finish(writer, codec, stop)).await;
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

/// The handshake error for a binary protocol on a text-only transport, as ASP.NET words it.
fn binary_refused(codec: Codec) -> String {
    format!(
        "Cannot use the '{}' protocol on the current transport. The transport does not support 'Binary' transfer format.",
        codec.name()
    )
}

/// Reads the handshake (JSON up to its 0x1E, whatever the protocol) and
/// answers it: the hub protocol version, the protocol, and the bytes that
/// followed the handshake in the same message (the protocol's first records).
async fn handshake<T: Transport>(ctx: &HubContext, writer: &mut Writer<T>) -> Result<(u64, Codec, Vec<u8>), Stop> {
    let deadline = tokio::time::sleep(ctx.config.handshake_timeout);
    tokio::pin!(deadline);
    let mut no_close = None;
    let mut received: Vec<u8> = Vec::new();
    loop {
        tokio::select! {
            () = &mut deadline => return Err(cancel_handshake(writer).await),
            message = writer.recv() => {
                let bytes = match message {
                    Incoming::Text(bytes) | Incoming::Binary(bytes) | Incoming::Data(bytes) => bytes,
                    Incoming::Broken(_) => return Err(cancel_handshake(writer).await),
                    Incoming::Ping => { writer.send_all(&mut no_close, []).await?; continue; }
                    Incoming::Closed => return Err(Stop::ClientClosed),
                };
                received.extend_from_slice(&bytes);
                let Some(end) = received.iter().position(|&b| b == protocol::RS) else {
                    if received.len() > ctx.config.max_message_bytes {
                        return Err(cancel_handshake(writer).await);
                    }
                    continue;
                };
                let rest = received.split_off(end + 1);
                let request = protocol::parse_handshake(&received[..end]).and_then(|request| {
                    let codec = Codec::named(&request.protocol).expect("parse_handshake accepts served protocols only");
                    if codec.is_binary() && !writer.transport.carries_binary() {
                        return Err(binary_refused(codec));
                    }
                    Ok((request.version, codec))
                });
                return match request {
                    Ok((version, codec)) => {
                        writer.send(&mut no_close, codec.handshake_reply(None)).await?;
                        Ok((version, codec, rest))
                    }
                    Err(error) => {
                        let _ = writer.send(&mut no_close, Codec::Json.handshake_reply(Some(&error))).await;
                        Err(Stop::ClientClosed)
                    }
                };
            }
        }
    }
}

/// Ends a handshake that cannot succeed: ASP.NET's handshake error, then
/// the close.
async fn cancel_handshake<T: Transport>(writer: &mut Writer<T>) -> Stop {
    let _ = writer.send(&mut None, Codec::Json.handshake_reply(Some("Handshake was canceled."))).await;
    Stop::ClientClosed
}

/// Sends the Close record when there is one, and closes the transport.
async fn finish<T: Transport>(writer: Box<Writer<T>>, codec: Codec, stop: Stop) {
    let last = match stop {
        Stop::Close { error, allow_reconnect } => Some(codec.close(Some(&error), allow_reconnect)),
        _ => None,
    };
    let Writer { transport, .. } = *writer;
    transport.close(last).await;
}

fn is_trackable(message: &HubMessage) -> bool {
    matches!(message, HubMessage::Invocation { .. } | HubMessage::StreamInvocation { .. } | HubMessage::Ignored(_))
}

impl Conn {
    /// Sends a trackable record, numbering and buffering it when stateful.
    async fn send_tracked<T: Transport>(&mut self, writer: &mut Writer<T>, record: Encoded) -> Result<(), Stop> {
        self.track(&record)?;
        writer.send(&mut self.close, record).await
    }

    /// Numbers and keeps a trackable record when stateful.
    fn track(&mut self, record: &Encoded) -> Result<(), Stop> {
        if let Some(state) = self.stateful.as_mut() {
            state.sent += 1;
            state.unacked_bytes += record.len();
            state.unacked.push_back((state.sent, record.clone()));
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
    async fn send_frames<T: Transport>(&mut self, writer: &mut Writer<T>, first: Arc<Frame>) -> Result<(), Stop> {
        // The batch's buffer is kept between calls: no allocation per wake-up.
        let mut batch = std::mem::take(&mut self.batch);
        let mut next = Some(first);
        while let Some(frame) = next {
            if self.membership.wants(&frame) {
                let record = frame.encoded(self.codec);
                self.track(&record)?;
                batch.push(record);
            }
            next = if batch.len() < MAX_BATCH { self.outbound.try_recv() } else { None };
        }
        let sent = if batch.is_empty() { Ok(()) } else { writer.send_all(&mut self.close, batch.drain(..)).await };
        self.batch = batch;
        sent
    }

    async fn serve<T: Transport>(
        &mut self,
        writer: &mut Writer<T>,
        records: &mut Splitter,
        leftover: Vec<Vec<u8>>,
    ) -> Stop {
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
                        Incoming::Data(bytes) => bytes,
                        Incoming::Text(bytes) if !self.codec.is_binary() => bytes,
                        Incoming::Binary(bytes) if self.codec.is_binary() => bytes,
                        Incoming::Text(_) | Incoming::Binary(_) => {
                            return Stop::Close { error: wrong_format(self.codec), allow_reconnect: false };
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
                    let complete = match records.push(&bytes) {
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
                            let ack = self.codec.ack(state.processed);
                            if let Err(stop) = writer.send(&mut self.close, ack).await {
                                return stop;
                            }
                        }
                    }
                    if writer.last_sent.elapsed() >= keep_alive {
                        if let Err(stop) = writer.send(&mut self.close, self.codec.ping()).await {
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

    async fn on_record<T: Transport>(&mut self, record: &[u8], writer: &mut Writer<T>) -> Result<(), Stop> {
        let message =
            self.codec.parse(record).map_err(|err| Stop::Close { error: err.to_string(), allow_reconnect: false })?;
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
                        Ok(result) => self.codec.completion_result(&id, &result),
                        Err(CallError(error)) => self.codec.completion_error(&id, &error),
                    };
                    self.send_tracked(writer, reply).await?;
                }
                Ok(())
            }
            HubMessage::StreamInvocation { invocation_id, target } => {
                let reply =
                    self.codec.completion_error(&invocation_id, &format!("Streaming is not supported for '{target}'."));
                self.send_tracked(writer, reply).await
            }
            HubMessage::Close { .. } => Err(Stop::ClientClosed),
            HubMessage::Ping
            | HubMessage::Ignored(_)
            | HubMessage::Unknown(_)
            | HubMessage::Ack { .. }
            | HubMessage::Sequence { .. } => Ok(()),
        }
    }

    /// Runs a hub method through the [`JobsHub`]: the replay it reads
    /// goes out first, then the call's answer. The outer `Result` stops the
    /// connection (a socket failure during a replay, the hub stopping); the
    /// inner one is the call's own outcome.
    async fn invoke<T: Transport>(
        &mut self,
        target: &str,
        args: &[Value],
        writer: &mut Writer<T>,
    ) -> Result<Result<Value, CallError>, Stop> {
        let called = self.ctx.jobs.call(self.key, &self.principal, &mut self.membership, target, args).await;
        let Ok(Called { result, replay }) = called else {
            return Err(Stop::Close { error: "Server is shutting down.".into(), allow_reconnect: true });
        };
        for published in replay {
            let record = self.codec.invocation(published.event.event_type().as_str(), &published);
            self.send_tracked(writer, record).await?;
        }
        Ok(result)
    }
}

/// The Close error for a WebSocket message of the other format than the protocol's.
fn wrong_format(codec: Codec) -> String {
    match codec {
        Codec::Json => "Binary messages are not supported: this connection speaks the JSON protocol.".into(),
        Codec::MessagePack => {
            "Text messages are not supported: this connection speaks the MessagePack protocol.".into()
        }
    }
}
