//! One WebSocket connection: the handshake, then one `select!` loop over the
//! client's messages, the outbound queue the hub fills, the hub's close
//! signal and a one-second tick for keep-alive and timeouts. Every exit path
//! unregisters from the hub.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use actix_ws::{
    AggregatedMessage, CloseCode, CloseReason as WsCloseReason, MessageStream, Session,
};
use serde_json::{json, Value};
use smartscheduler_domain::{ContractorId, Group, Principal, PublishedEvent, Region, Sequence};
use tokio::sync::{mpsc, oneshot};

use crate::hub::{CloseReason, ConnKey, Frame};
use crate::protocol::{self, HubMessage, RecordBuffer};
use crate::HubContext;

/// Why the loop ends; decides the Close record.
enum Stop {
    /// The client closed or went away: nothing more to send.
    Gone,
    /// Send a Close record with this error and reconnect permission.
    Close {
        error: String,
        allow_reconnect: bool,
    },
}

/// Writes to the socket, giving up when the hub says close or the client
/// stops reading for too long.
struct Writer {
    session: Session,
    close: Option<oneshot::Receiver<CloseReason>>,
    last_sent: Instant,
    write_timeout: Duration,
}

impl Writer {
    async fn send(&mut self, text: impl Into<bytestring::ByteString>) -> Result<(), Stop> {
        let text = text.into();
        let write = self.session.text(text);
        let result = match self.close.as_mut() {
            Some(close) => tokio::select! {
                r = tokio::time::timeout(self.write_timeout, write) => r,
                reason = close => {
                    self.close = None;
                    return Err(close_for(reason.unwrap_or(CloseReason::ShuttingDown)));
                }
            },
            None => tokio::time::timeout(self.write_timeout, write).await,
        };
        match result {
            Ok(Ok(())) => {
                self.last_sent = Instant::now();
                Ok(())
            }
            Ok(Err(_)) => Err(Stop::Gone),
            Err(_) => Err(Stop::Close {
                error: "The client stopped reading.".into(),
                allow_reconnect: true,
            }),
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
}

impl Membership {
    fn wants(&mut self, frame: &Frame) -> bool {
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
        frame.groups.iter().any(|g| {
            self.groups.contains(g)
                && frame.sequence > self.floors.get(g).copied().unwrap_or(i64::MIN)
        })
    }
}

/// Runs the connection until it ends.
pub(crate) async fn run(
    ctx: HubContext,
    principal: Principal,
    session: Session,
    stream: MessageStream,
) {
    let max = ctx.config.max_message_bytes;
    let mut stream = stream
        .max_frame_size(max)
        .aggregate_continuations()
        .max_continuation_size(max);
    let mut writer = Writer {
        session,
        close: None,
        last_sent: Instant::now(),
        write_timeout: ctx.config.client_timeout,
    };
    let mut records = RecordBuffer::new(max);

    // Handshake: nothing may be sent before its reply.
    let leftover = match handshake(&ctx, &mut stream, &mut writer, &mut records).await {
        Ok(leftover) => leftover,
        Err(stop) => {
            finish(writer, stop).await;
            return;
        }
    };

    let key = ctx.hub.next_key();
    let (tx, mut outbound) = mpsc::channel::<Frame>(ctx.config.outbound_capacity);
    let (close_tx, close_rx) = oneshot::channel();
    writer.close = Some(close_rx);
    if ctx.hub.register(key, tx, close_tx).await.is_err() {
        finish(
            writer,
            Stop::Close {
                error: "Server is shutting down.".into(),
                allow_reconnect: true,
            },
        )
        .await;
        return;
    }
    let mut conn = Conn {
        ctx: ctx.clone(),
        principal,
        key,
        membership: Membership::default(),
    };
    let stop = conn
        .serve(
            &mut stream,
            &mut writer,
            &mut records,
            &mut outbound,
            leftover,
        )
        .await;
    let _ = ctx.hub.unregister(key).await;
    finish(writer, stop).await;
}

async fn handshake(
    ctx: &HubContext,
    stream: &mut actix_ws::AggregatedMessageStream,
    writer: &mut Writer,
    records: &mut RecordBuffer,
) -> Result<Vec<Vec<u8>>, Stop> {
    let deadline = tokio::time::sleep(ctx.config.handshake_timeout);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            () = &mut deadline => {
                let _ = writer.send(protocol::handshake_error("Handshake was canceled.")).await;
                return Err(Stop::Gone);
            }
            message = stream.recv() => {
                let bytes = match message {
                    Some(Ok(AggregatedMessage::Text(text))) => text.into_bytes(),
                    Some(Ok(AggregatedMessage::Binary(bytes))) => bytes,
                    Some(Ok(AggregatedMessage::Ping(p))) => { let _ = writer.session.pong(&p).await; continue; }
                    Some(Ok(AggregatedMessage::Pong(_))) => continue,
                    Some(Ok(AggregatedMessage::Close(_))) | None => return Err(Stop::Gone),
                    Some(Err(_)) => {
                        let _ = writer.send(protocol::handshake_error("Handshake was canceled.")).await;
                        return Err(Stop::Gone);
                    }
                };
                let mut complete = match records.push(&bytes) {
                    Ok(complete) => complete,
                    Err(_) => {
                        let _ = writer.send(protocol::handshake_error("Handshake was canceled.")).await;
                        return Err(Stop::Gone);
                    }
                };
                if complete.is_empty() {
                    continue;
                }
                let first = complete.remove(0);
                return match protocol::parse_handshake(&first) {
                    Ok(_) => {
                        writer.send(protocol::HANDSHAKE_OK).await?;
                        Ok(complete)
                    }
                    Err(error) => {
                        let _ = writer.send(protocol::handshake_error(&error)).await;
                        Err(Stop::Gone)
                    }
                };
            }
        }
    }
}

/// Sends the Close record when there is one, then closes the socket with 1000.
async fn finish(mut writer: Writer, stop: Stop) {
    writer.close = None;
    if let Stop::Close {
        error,
        allow_reconnect,
    } = stop
    {
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            writer
                .session
                .text(protocol::close(Some(&error), allow_reconnect)),
        )
        .await;
    }
    let reason = WsCloseReason {
        code: CloseCode::Normal,
        description: None,
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), writer.session.close(Some(reason))).await;
}

struct Conn {
    ctx: HubContext,
    principal: Principal,
    key: ConnKey,
    membership: Membership,
}

/// A refused or failed hub call: the text the client's `invoke` rejects with.
struct CallError(String);

impl Conn {
    async fn serve(
        &mut self,
        stream: &mut actix_ws::AggregatedMessageStream,
        writer: &mut Writer,
        records: &mut RecordBuffer,
        outbound: &mut mpsc::Receiver<Frame>,
        leftover: Vec<Vec<u8>>,
    ) -> Stop {
        let mut last_received = Instant::now();
        for record in leftover {
            if let Err(stop) = self.on_record(&record, writer).await {
                return stop;
            }
        }
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                message = stream.recv() => {
                    last_received = Instant::now();
                    let bytes = match message {
                        Some(Ok(AggregatedMessage::Text(text))) => text.into_bytes(),
                        Some(Ok(AggregatedMessage::Binary(_))) => {
                            return Stop::Close { error: "Binary messages are not supported: this hub speaks the JSON protocol.".into(), allow_reconnect: false };
                        }
                        Some(Ok(AggregatedMessage::Ping(p))) => { let _ = writer.session.pong(&p).await; continue; }
                        Some(Ok(AggregatedMessage::Pong(_))) => continue,
                        Some(Ok(AggregatedMessage::Close(_))) | None => return Stop::Gone,
                        Some(Err(err)) => {
                            return Stop::Close { error: format!("Connection closed with an error: {err}"), allow_reconnect: false };
                        }
                    };
                    let complete = match records.push(&bytes) {
                        Ok(complete) => complete,
                        Err(err) => return Stop::Close { error: err.to_string(), allow_reconnect: false },
                    };
                    for record in complete {
                        if let Err(stop) = self.on_record(&record, writer).await {
                            return stop;
                        }
                    }
                }
                frame = outbound.recv() => match frame {
                    Some(frame) => {
                        if self.membership.wants(&frame) {
                            if let Err(stop) = writer.send(frame.text).await {
                                return stop;
                            }
                        }
                    }
                    // The hub dropped us (it was full) and the close signal follows.
                    None => {
                        let reason = match writer.close.take() {
                            Some(close) => close.await.unwrap_or(CloseReason::SlowConsumer),
                            None => CloseReason::SlowConsumer,
                        };
                        return close_for(reason);
                    }
                },
                reason = async { writer.close.as_mut().expect("set after register").await } => {
                    writer.close = None;
                    return close_for(reason.unwrap_or(CloseReason::ShuttingDown));
                }
                _ = tick.tick() => {
                    if last_received.elapsed() >= self.ctx.config.client_timeout {
                        return Stop::Close { error: "Server timeout elapsed without receiving a message from the client.".into(), allow_reconnect: true };
                    }
                    if writer.last_sent.elapsed() >= self.ctx.config.keep_alive {
                        if let Err(stop) = writer.send(protocol::PING).await {
                            return stop;
                        }
                    }
                }
            }
        }
    }

    async fn on_record(&mut self, record: &[u8], writer: &mut Writer) -> Result<(), Stop> {
        let message = protocol::parse_message(record).map_err(|err| Stop::Close {
            error: err.to_string(),
            allow_reconnect: false,
        })?;
        match message {
            HubMessage::Invocation {
                invocation_id,
                target,
                arguments,
            } => {
                let outcome = self.invoke(&target, &arguments, writer).await?;
                if let Some(id) = invocation_id {
                    let reply = match outcome {
                        Ok(result) => protocol::completion_result(&id, &result),
                        Err(CallError(error)) => protocol::completion_error(&id, &error),
                    };
                    writer.send(reply).await?;
                }
                Ok(())
            }
            HubMessage::StreamInvocation {
                invocation_id,
                target,
            } => {
                writer
                    .send(protocol::completion_error(
                        &invocation_id,
                        &format!("Streaming is not supported for '{target}'."),
                    ))
                    .await
            }
            HubMessage::Close { .. } => Err(Stop::Gone),
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

    async fn leave(&mut self, group: Group) -> Result<Value, CallError> {
        self.membership.groups.remove(&group);
        self.membership.floors.remove(&group);
        self.ctx
            .hub
            .leave(self.key, group.clone())
            .await
            .map_err(|_| CallError("The hub is stopping.".into()))?;
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
            return Ok(Err(refused(
                target,
                &format!("You are not allowed to join '{group}'."),
            )));
        }
        if !self.membership.groups.contains(&group)
            && self.membership.groups.len() >= self.ctx.config.max_groups_per_connection
        {
            return Ok(Err(refused(
                target,
                &format!(
                    "A connection may join at most {} groups.",
                    self.ctx.config.max_groups_per_connection
                ),
            )));
        }
        // Join first, so live events queue up while the replay is read: no gap.
        match self.ctx.hub.join(self.key, group.clone()).await {
            Ok(true) => {}
            _ => return Err(Stop::Gone),
        }
        self.membership.groups.insert(group.clone());
        let Some(after) = after else {
            self.membership.floors.remove(&group);
            return Ok(Ok(json!({ "group": group, "replayed": 0 })));
        };
        let limit = self.ctx.config.max_replay;
        let missed = match self
            .ctx
            .event_log
            .replay(group.clone(), Sequence(after), limit + 1)
            .await
        {
            Ok(missed) => missed,
            Err(err) => {
                tracing::warn!(error = %err, %group, "replay failed");
                self.membership.groups.remove(&group);
                let _ = self.ctx.hub.leave(self.key, group).await;
                return Ok(Err(refused(
                    target,
                    "The missed events could not be read; try again.",
                )));
            }
        };
        if missed.len() > limit as usize {
            self.membership.groups.remove(&group);
            let _ = self.ctx.hub.leave(self.key, group).await;
            return Ok(Err(refused(
                target,
                &format!("More than {limit} events were missed; reload the state over HTTP and join without afterSequence."),
            )));
        }
        let mut floor = after;
        let replayed = missed.len();
        for (event, sequence) in missed {
            floor = floor.max(sequence.0);
            let target = event.event_type().as_str();
            let published = PublishedEvent { event, sequence };
            writer
                .send(protocol::invocation(target, &published))
                .await?;
            self.membership.replayed.insert(sequence.0);
        }
        self.membership.floors.insert(group.clone(), floor);
        Ok(Ok(json!({ "group": group, "replayed": replayed })))
    }
}

/// ASP.NET's form for a method that refused: the client's `invoke` rejects
/// with this text.
fn refused(target: &str, message: &str) -> CallError {
    CallError(format!(
        "An unexpected error occurred invoking '{target}' on the server. HubException: {message}"
    ))
}

fn after_sequence(target: &str, args: &[Value]) -> Result<Option<i64>, CallError> {
    match args.get(1) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_i64() {
            Some(n) if n >= 0 => Ok(Some(n)),
            _ => Err(refused(
                target,
                "afterSequence must be a whole number, 0 or more.",
            )),
        },
    }
}

fn check_arity(target: &str, args: &[Value], max: usize) -> Result<(), CallError> {
    if args.is_empty() || args.len() > max {
        return Err(refused(
            target,
            &format!(
                "Expected {} argument(s), got {}.",
                if max == 1 {
                    "1".into()
                } else {
                    format!("1 to {max}")
                },
                args.len()
            ),
        ));
    }
    Ok(())
}

fn region_group(target: &str, args: &[Value]) -> Result<(Group, Option<i64>), CallError> {
    let leave = target.to_ascii_lowercase().starts_with("leave");
    check_arity(target, args, if leave { 1 } else { 2 })?;
    let region = args[0]
        .as_str()
        .ok_or_else(|| refused(target, "region must be a string."))?;
    let region = Region::new(region).map_err(|e| refused(target, &e.to_string()))?;
    Ok((
        Group::dispatch(&region),
        if leave {
            None
        } else {
            after_sequence(target, args)?
        },
    ))
}

fn contractor_group(target: &str, args: &[Value]) -> Result<(Group, Option<i64>), CallError> {
    let leave = target.to_ascii_lowercase().starts_with("leave");
    check_arity(target, args, if leave { 1 } else { 2 })?;
    let id = args[0]
        .as_str()
        .ok_or_else(|| refused(target, "contractorId must be a string."))?;
    let id: ContractorId = id
        .parse()
        .map_err(|e: smartscheduler_domain::ValidationError| refused(target, &e.to_string()))?;
    Ok((
        Group::contractor(id),
        if leave {
            None
        } else {
            after_sequence(target, args)?
        },
    ))
}
