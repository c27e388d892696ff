//! The JobsHub: one task owns every connection, group membership and parked (stateful-reconnect) connection; everyone else
//! holds a cloneable [`HubHandle`] and talks to it through a private
//! [`Command`] enum.
//!
//! Fan-out never waits for a connection: each connection has a queue of
//! already-serialized frames, bounded in messages and in bytes, and a frame
//! is queued only when both bounds allow it. A connection whose queue is full
//! is dropped from every group and told to close (with `allowReconnect`), so
//! one slow client never slows the others or the publisher.
//!
//! The queues are filled on the connections' own threads: each thread (an
//! HTTP worker, or a socket thread of the dedicated WebSocket adapter) has a
//! fan-out task, an explicit [`Fanout`] its owner started and passes to
//! [`HubHandle::register`], that keeps the members of each group living
//! there, as the hub tells it on join and leave, and the hub hands each event's frame once to each
//! thread where its groups have members. Waking a task on another thread
//! costs a system call; waking one on the same thread does not, so an event
//! costs one cross-thread wake per thread instead of one per member, and the
//! hub's own work per event does not grow with the groups (see
//! `docs/architecture.md`, "Fan-out per socket thread").

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use bytestring::ByteString;
use smartscheduler_domain::Group;
use smartscheduler_domain::PublishedEvent;
use tokio::sync::{mpsc, oneshot};

use crate::connection::Conn;
use crate::protocol::{self, Codec, Encoded};

/// A connection's key inside this process.
pub type ConnKey = u64;

/// An event ready to send, shared by every connection it goes to: its
/// records are written once per hub protocol in use, not once per
/// connection (MessagePack the first time a MessagePack connection asks).
#[derive(Debug)]
pub struct Frame {
    /// The JSON record(s), ending in 0x1E.
    json: ByteString,
    /// The MessagePack record, written on first use.
    messagepack: OnceLock<Bytes>,
    /// What the MessagePack record is written from (absent for a frame made from text).
    event: Option<PublishedEvent>,
    /// The event's sequence.
    pub sequence: i64,
    /// Whether it carries an event with its sequence; a hub message that is
    /// not an event (`PresenceChanged`) has none, and goes to every member.
    pub sequenced: bool,
    /// The groups the event was sent to.
    pub groups: Arc<[Group]>,
    /// How many connections the fan-out tasks have queued it to so far.
    queued_to: AtomicUsize,
}

impl Frame {
    /// The frame of a published event, for the members of its audience.
    pub fn of_event(event: &PublishedEvent) -> Self {
        let json = protocol::invocation(event.event.event_type().as_str(), event);
        Self {
            json: ByteString::from(json),
            messagepack: OnceLock::new(),
            event: Some(event.clone()),
            sequence: event.sequence.0,
            sequenced: true,
            groups: event.event.audience().into(),
            queued_to: AtomicUsize::new(0),
        }
    }

    /// The frame of a hub message that is not an event (no sequence, no
    /// replay): `target` with `argument`, for the members of `groups`.
    pub fn message(target: &str, argument: &impl serde::Serialize, groups: Arc<[Group]>) -> Self {
        Self {
            json: ByteString::from(protocol::invocation(target, argument)),
            messagepack: OnceLock::from(Bytes::from(protocol::messagepack::invocation(target, argument))),
            event: None,
            sequence: 0,
            sequenced: false,
            groups,
            queued_to: AtomicUsize::new(0),
        }
    }

    /// A frame of whole JSON records `json` for the members of `groups`
    /// (tests and benchmarks); a MessagePack connection gets the same bytes.
    pub fn new(json: ByteString, sequence: i64, groups: Arc<[Group]>) -> Self {
        Self {
            json,
            messagepack: OnceLock::new(),
            event: None,
            sequence,
            sequenced: true,
            groups,
            queued_to: AtomicUsize::new(0),
        }
    }

    /// Its records in `codec`'s form.
    pub fn encoded(&self, codec: Codec) -> Encoded {
        if let (Codec::MessagePack, Some(written)) = (codec, self.messagepack.get()) {
            return Encoded::Binary(written.clone());
        }
        match (codec, &self.event) {
            (Codec::MessagePack, Some(event)) => Encoded::Binary(
                self.messagepack
                    .get_or_init(|| {
                        Bytes::from(protocol::messagepack::invocation(event.event.event_type().as_str(), event))
                    })
                    .clone(),
            ),
            (Codec::MessagePack, None) => Encoded::Binary(self.json.as_bytes().clone()),
            (Codec::Json, _) => Encoded::Text(self.json.clone()),
        }
    }

    /// What it counts for in a connection's queue bound: its JSON size
    /// (MessagePack's is smaller).
    pub fn size(&self) -> usize {
        self.json.len()
    }

    /// Whether the connections it was queued to have taken it from their
    /// queues, all but a few (at most eight, or one in eight of them),
    /// given that `own` of the references to it are the caller's. A frame
    /// not queued to anyone yet is not, unless nobody holds it either.
    pub fn mostly_taken(self: &Arc<Self>, own: usize) -> bool {
        let holders = Arc::strong_count(self).saturating_sub(own);
        let queued_to = self.queued_to.load(Ordering::Relaxed);
        holders == 0 || (queued_to > 0 && holders <= (queued_to / 8).max(8))
    }
}

/// Why the hub asks a connection to close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// Its outbound queue was full.
    SlowConsumer,
    /// The server is stopping.
    ShuttingDown,
    /// A parked connection was not resumed in time.
    ReconnectWindowExpired,
    /// A reattach with its connection token takes it over: let go of the
    /// socket and park, so the hub hands the connection to the new one.
    Replaced,
}

/// Counters for tests and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HubStats {
    /// Open connections (parked ones included).
    pub connections: usize,
    /// Groups with at least one member.
    pub groups: usize,
    /// Connections parked for a stateful reconnect.
    pub parked: usize,
    /// Frames queued to connections.
    pub frames_sent: u64,
    /// Frames not queued because the connection was full or gone.
    pub frames_dropped: u64,
    /// Connections closed for being slow.
    pub slow_closes: u64,
}

/// What a connection's outbound queue holds, in frames and in bytes.
#[derive(Default)]
struct Queued {
    frames: AtomicUsize,
    bytes: AtomicUsize,
}

/// A connection's end of its outbound queue, shared by the hub and the
/// fan-out task of the connection's thread. The queue itself is unbounded:
/// its bounds are the two counts, checked before each frame is queued (a
/// bounded channel would take a semaphore permit per frame as well).
struct Outlet {
    key: ConnKey,
    /// Shared frames: a queue slot is one pointer (a channel block is 32 slots).
    outbound: mpsc::UnboundedSender<Arc<Frame>>,
    queued: Arc<Queued>,
    max_frames: usize,
    max_bytes: usize,
    /// The last frame (a fan-out task's count) queued here: a member of two
    /// of a frame's groups gets it once. Only its thread's fan-out task
    /// touches it.
    last_frame: AtomicU64,
}

impl Outlet {
    /// Queues `frame` unless the queue's bounds refuse it; `Err(true)` when
    /// they did (a slow client), `Err(false)` when the connection is gone.
    fn queue(&self, frame: &Arc<Frame>) -> Result<(), bool> {
        let size = frame.size();
        // Counted before the frame can be taken (and subtracted), so the
        // counts never go below zero.
        let queued = &self.queued;
        let frames = queued.frames.fetch_add(1, Ordering::Relaxed);
        let bytes = queued.bytes.fetch_add(size, Ordering::Relaxed);
        let full = frames >= self.max_frames || bytes + size > self.max_bytes;
        if full || self.outbound.send(frame.clone()).is_err() {
            queued.frames.fetch_sub(1, Ordering::Relaxed);
            queued.bytes.fetch_sub(size, Ordering::Relaxed);
            return Err(full);
        }
        Ok(())
    }
}

/// The connection's side of its outbound queue.
pub struct Outbox {
    frames: mpsc::UnboundedReceiver<Arc<Frame>>,
    queued: Arc<Queued>,
}

impl Outbox {
    /// The next frame; `None` once the hub has dropped the connection.
    /// Cancel-safe.
    pub async fn recv(&mut self) -> Option<Arc<Frame>> {
        let frame = self.frames.recv().await?;
        Some(self.taken(frame))
    }

    /// The next frame if one is queued now; `None` when none is (or the hub
    /// has dropped the connection: `recv` then says so).
    pub fn try_recv(&mut self) -> Option<Arc<Frame>> {
        let frame = self.frames.try_recv().ok()?;
        Some(self.taken(frame))
    }

    fn taken(&self, frame: Arc<Frame>) -> Arc<Frame> {
        self.queued.frames.fetch_sub(1, Ordering::Relaxed);
        self.queued.bytes.fetch_sub(frame.size(), Ordering::Relaxed);
        frame
    }

    /// Bytes queued and not yet taken.
    #[cfg(test)]
    pub(crate) fn queued_bytes(&self) -> usize {
        self.queued.bytes.load(Ordering::Relaxed)
    }
}

/// What the hub tells the fan-out task of one thread, in the hub's order:
/// a frame broadcast after a join reaches the new member.
enum ToThread {
    Join { group: Group, outlet: Arc<Outlet> },
    Leave { group: Group, key: ConnKey },
    Frame(Arc<Frame>),
}

/// Connections a frame could not be queued to: `true` when the queue was
/// full (a slow client), `false` when the connection was gone.
type Undelivered = Vec<(ConnKey, bool)>;

/// What a hub shares with its fan-out tasks.
struct Shared {
    /// Where the fan-out tasks report the connections they could not queue to.
    undelivered: mpsc::UnboundedSender<Undelivered>,
    /// Frames queued to connections, counted by the fan-out tasks.
    frames_sent: AtomicU64,
    /// The id of the next fan-out task.
    next_fanout: AtomicU64,
}

/// The way in to one of the hub's fan-out tasks, which runs on the thread
/// that started it ([`HubHandle::start_fanout`]). The connections of that
/// thread register with it; whoever starts connections there keeps it
/// (a socket thread, an HTTP worker's app data).
#[derive(Clone)]
pub struct Fanout {
    id: u64,
    inbox: mpsc::UnboundedSender<ToThread>,
}

/// The members of one group living on one thread. Removal is O(1): each
/// member's place is indexed.
#[derive(Default)]
struct Members {
    outlets: Vec<Arc<Outlet>>,
    at: HashMap<ConnKey, usize>,
}

impl Members {
    fn insert(&mut self, outlet: Arc<Outlet>) {
        if let std::collections::hash_map::Entry::Vacant(slot) = self.at.entry(outlet.key) {
            slot.insert(self.outlets.len());
            self.outlets.push(outlet);
        }
    }

    fn remove(&mut self, key: ConnKey) {
        if let Some(index) = self.at.remove(&key) {
            self.outlets.swap_remove(index);
            if let Some(moved) = self.outlets.get(index) {
                self.at.insert(moved.key, index);
            }
        }
    }
}

/// One hub's fan-out task on one thread: keeps the members of each group
/// that live on this thread (as the hub tells it), and queues each frame to
/// them, reporting to the hub the ones it could not. Never waits for a
/// connection. Per frame the hub sends one message per thread, whatever the
/// size of the groups.
async fn fan_out(mut inbox: mpsc::UnboundedReceiver<ToThread>, shared: Arc<Shared>) {
    let mut groups: HashMap<Group, Members> = HashMap::new();
    let mut frames: u64 = 0;
    while let Some(message) = inbox.recv().await {
        match message {
            ToThread::Join { group, outlet } => groups.entry(group).or_default().insert(outlet),
            ToThread::Leave { group, key } => {
                if let Some(members) = groups.get_mut(&group) {
                    members.remove(key);
                    if members.outlets.is_empty() {
                        groups.remove(&group);
                    }
                }
            }
            ToThread::Frame(frame) => {
                frames += 1;
                // A member of two of the frame's groups gets it once.
                let once = frame.groups.len() > 1
                    && frame.groups.iter().filter(|group| groups.contains_key(*group)).count() > 1;
                let mut sent = 0;
                let mut undelivered = Vec::new();
                for outlet in
                    frame.groups.iter().filter_map(|group| groups.get(group)).flat_map(|members| &members.outlets)
                {
                    if once && outlet.last_frame.swap(frames, Ordering::Relaxed) == frames {
                        continue;
                    }
                    match outlet.queue(&frame) {
                        Ok(()) => sent += 1,
                        Err(full) => undelivered.push((outlet.key, full)),
                    }
                }
                shared.frames_sent.fetch_add(sent, Ordering::Relaxed);
                frame.queued_to.fetch_add(sent as usize, Ordering::Relaxed);
                if !undelivered.is_empty() {
                    let _ = shared.undelivered.send(undelivered);
                }
            }
        }
    }
}

struct Parked {
    conn: Box<Conn>,
    since: Instant,
}

enum Command {
    Register { outlet: Arc<Outlet>, fanout: Fanout, close: oneshot::Sender<CloseReason>, token: Option<String> },
    Unregister { key: ConnKey },
    Park { token: String, conn: Box<Conn> },
    Reattach { token: String, reply: oneshot::Sender<Option<Box<Conn>>> },
    Join { key: ConnKey, group: Group, reply: oneshot::Sender<bool> },
    Leave { key: ConnKey, group: Group, reply: oneshot::Sender<()> },
    Broadcast { frame: Arc<Frame> },
    Shutdown { reply: oneshot::Sender<()> },
    Stats { reply: oneshot::Sender<HubStats> },
}

/// The hub has stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the hub has stopped")]
pub struct HubStopped;

/// The way in to the hub task. Cheap to clone.
#[derive(Clone)]
pub struct HubHandle {
    commands: mpsc::Sender<Command>,
    next_key: Arc<AtomicU64>,
    /// The byte bound of every connection's queue.
    max_queued_bytes: usize,
    shared: Arc<Shared>,
}

impl HubHandle {
    async fn send(&self, command: Command) -> Result<(), HubStopped> {
        self.commands.send(command).await.map_err(|_| HubStopped)
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, HubStopped> {
        let (tx, rx) = oneshot::channel();
        self.send(make(tx)).await?;
        rx.await.map_err(|_| HubStopped)
    }

    /// Starts a fan-out task on the calling thread, for the connections that
    /// will run on it. On an actix thread (a socket thread, an HTTP worker)
    /// the connections are tasks of its LocalSet; a fan-out task of the same
    /// LocalSet wakes them through its local queue, while any other task
    /// goes through its locked shared one.
    pub fn start_fanout(&self) -> Fanout {
        let (inbox, rx) = mpsc::unbounded_channel();
        match actix_rt::Arbiter::try_current() {
            Some(arbiter) => {
                arbiter.spawn(fan_out(rx, self.shared.clone()));
            }
            None => {
                tokio::spawn(fan_out(rx, self.shared.clone()));
            }
        }
        Fanout { id: self.shared.next_fanout.fetch_add(1, Ordering::Relaxed), inbox }
    }

    /// A fresh key for a new connection.
    pub fn next_key(&self) -> ConnKey {
        self.next_key.fetch_add(1, Ordering::Relaxed)
    }

    /// Adds a connection, with its close signal, and gives it its outbound
    /// queue, which holds at most `max_frames` frames (and the hub's byte
    /// bound). A stateful connection gives its connection token as
    /// `resumable_by`: a reattach with it takes the connection over.
    /// `fanout` is the fan-out task of the thread that runs the connection:
    /// its frames are queued there.
    ///
    /// # Errors
    /// [`HubStopped`].
    pub async fn register(
        &self,
        fanout: &Fanout,
        key: ConnKey,
        max_frames: usize,
        close: oneshot::Sender<CloseReason>,
        resumable_by: Option<String>,
    ) -> Result<Outbox, HubStopped> {
        let (outbound, frames) = mpsc::unbounded_channel();
        let queued = Arc::new(Queued::default());
        let outlet = Arc::new(Outlet {
            key,
            outbound,
            queued: queued.clone(),
            max_frames,
            max_bytes: self.max_queued_bytes,
            last_frame: AtomicU64::new(0),
        });
        let token = resumable_by;
        self.send(Command::Register { outlet, fanout: fanout.clone(), close, token }).await?;
        Ok(Outbox { frames, queued })
    }

    /// Removes a connection and its memberships.
    ///
    /// # Errors
    /// [`HubStopped`].
    pub async fn unregister(&self, key: ConnKey) -> Result<(), HubStopped> {
        self.send(Command::Unregister { key }).await
    }

    /// Keeps a stateful connection whose socket dropped, still a member of
    /// its groups, until it is resumed or its window expires.
    ///
    /// # Errors
    /// [`HubStopped`].
    pub async fn park(&self, token: String, conn: Box<Conn>) -> Result<(), HubStopped> {
        self.send(Command::Park { token, conn }).await
    }

    /// Takes the stateful connection of this token for a new socket: a
    /// parked one at once; a live one (its old socket not yet seen dead) is
    /// told to let go of its socket ([`CloseReason::Replaced`]) and handed
    /// over once it has parked. `None` when there is no such connection, or
    /// it is closing, or another reattach is already taking it.
    ///
    /// # Errors
    /// [`HubStopped`].
    pub async fn reattach(&self, token: String) -> Result<Option<Box<Conn>>, HubStopped> {
        self.ask(|reply| Command::Reattach { token, reply }).await
    }

    /// Adds the connection to `group`; `false` when the connection is gone.
    ///
    /// # Errors
    /// [`HubStopped`].
    pub async fn join(&self, key: ConnKey, group: Group) -> Result<bool, HubStopped> {
        self.ask(|reply| Command::Join { key, group, reply }).await
    }

    /// Removes the connection from `group` (harmless when not a member).
    ///
    /// # Errors
    /// [`HubStopped`].
    pub async fn leave(&self, key: ConnKey, group: Group) -> Result<(), HubStopped> {
        self.ask(|reply| Command::Leave { key, group, reply }).await
    }

    /// Queues `frame` to every member of its groups, once per connection.
    ///
    /// # Errors
    /// [`HubStopped`].
    pub async fn broadcast(&self, frame: Arc<Frame>) -> Result<(), HubStopped> {
        self.send(Command::Broadcast { frame }).await
    }

    /// Asks every connection to close with `allowReconnect` and waits until
    /// the hub has told them all.
    ///
    /// # Errors
    /// [`HubStopped`].
    pub async fn shutdown(&self) -> Result<(), HubStopped> {
        self.ask(|reply| Command::Shutdown { reply }).await
    }

    /// Current counters.
    ///
    /// # Errors
    /// [`HubStopped`].
    pub async fn stats(&self) -> Result<HubStats, HubStopped> {
        self.ask(|reply| Command::Stats { reply }).await
    }
}

struct Connection {
    outlet: Arc<Outlet>,
    fanout: Fanout,
    close: Option<oneshot::Sender<CloseReason>>,
    groups: HashSet<Group>,
    /// The connection token a reattach takes it over with (stateful only).
    resumable_by: Option<String>,
}

/// A reattach waiting for a live connection to let go of its old socket.
struct Takeover {
    reply: oneshot::Sender<Option<Box<Conn>>>,
    /// The connection's close signal from then on (its old one has fired).
    close: oneshot::Receiver<CloseReason>,
}

/// Where a group's members live: per thread (its fan-out task), how many.
type Threads = Vec<(Fanout, usize)>;

struct Hub {
    connections: HashMap<ConnKey, Connection>,
    groups: HashMap<Group, Threads>,
    parked: HashMap<String, Parked>,
    /// Live stateful connections by connection token.
    resumable: HashMap<String, ConnKey>,
    /// Reattaches waiting for a live connection to park, by connection token.
    takeovers: HashMap<String, Takeover>,
    reconnect_window: Duration,
    stats: HubStats,
    shared: Arc<Shared>,
}

/// Starts the hub task on the current runtime. Parked connections not resumed within
/// `reconnect_window` are closed; a connection with more than
/// `max_queued_bytes` queued is slow.
pub fn spawn(reconnect_window: Duration, max_queued_bytes: usize) -> HubHandle {
    let (tx, rx) = mpsc::channel(4096);
    let (undelivered, undelivered_rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared { undelivered, frames_sent: AtomicU64::new(0), next_fanout: AtomicU64::new(1) });
    let hub = Hub {
        connections: HashMap::new(),
        groups: HashMap::new(),
        parked: HashMap::new(),
        resumable: HashMap::new(),
        takeovers: HashMap::new(),
        reconnect_window,
        stats: HubStats::default(),
        shared: shared.clone(),
    };
    tokio::spawn(hub.run(rx, undelivered_rx));
    HubHandle { commands: tx, next_key: Arc::new(AtomicU64::new(1)), max_queued_bytes, shared }
}

impl Hub {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut undelivered: mpsc::UnboundedReceiver<Undelivered>,
    ) {
        let mut sweep = tokio::time::interval(Duration::from_millis(250));
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => self.handle(command),
                    None => break,
                },
                Some(connections) = undelivered.recv() => self.undelivered(connections),
                _ = sweep.tick() => self.sweep(),
            }
        }
    }

    fn sweep(&mut self) {
        let window = self.reconnect_window;
        let expired: Vec<String> =
            self.parked.iter().filter(|(_, p)| p.since.elapsed() >= window).map(|(t, _)| t.clone()).collect();
        for token in expired {
            if let Some(parked) = self.parked.remove(&token) {
                tracing::info!(conn = parked.conn.key(), "reconnect window expired");
                self.remove(parked.conn.key(), Some(CloseReason::ReconnectWindowExpired));
            }
        }
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Register { outlet, fanout, close, token: resumable_by } => {
                if let Some(token) = &resumable_by {
                    self.resumable.insert(token.clone(), outlet.key);
                }
                let connection =
                    Connection { outlet, fanout, close: Some(close), groups: HashSet::new(), resumable_by };
                self.connections.insert(connection.outlet.key, connection);
            }
            // The connection has ended: nothing to tell it.
            Command::Unregister { key } => {
                self.remove(key, None);
            }
            Command::Park { token, conn } => self.park(token, conn),
            Command::Reattach { token, reply } => self.reattach(token, reply),
            Command::Join { key, group, reply } => {
                let joined = match self.connections.get_mut(&key) {
                    Some(conn) => {
                        if conn.groups.insert(group.clone()) {
                            let threads = self.groups.entry(group.clone()).or_default();
                            match threads.iter_mut().find(|(fanout, _)| fanout.id == conn.fanout.id) {
                                Some((_, count)) => *count += 1,
                                None => threads.push((conn.fanout.clone(), 1)),
                            }
                            let _ = conn.fanout.inbox.send(ToThread::Join { group, outlet: conn.outlet.clone() });
                        }
                        true
                    }
                    None => false,
                };
                let _ = reply.send(joined);
            }
            Command::Leave { key, group, reply } => {
                if let Some(conn) = self.connections.get_mut(&key) {
                    if conn.groups.remove(&group) {
                        let fanout = conn.fanout.clone();
                        self.remove_member(group, key, &fanout);
                    }
                }
                let _ = reply.send(());
            }
            Command::Broadcast { frame } => self.broadcast(frame),
            Command::Shutdown { reply } => {
                for conn in self.connections.values_mut() {
                    if let Some(close) = conn.close.take() {
                        let _ = close.send(CloseReason::ShuttingDown);
                    }
                }
                let _ = reply.send(());
            }
            Command::Stats { reply } => {
                let mut stats = self.stats.clone();
                stats.frames_sent = self.shared.frames_sent.load(Ordering::Relaxed);
                stats.connections = self.connections.len();
                stats.groups = self.groups.len();
                stats.parked = self.parked.len();
                let _ = reply.send(stats);
            }
        }
    }

    fn park(&mut self, token: String, mut conn: Box<Conn>) {
        if !self.connections.contains_key(&conn.key()) {
            return;
        }
        if let Some(Takeover { reply, close }) = self.takeovers.remove(&token) {
            conn.rearm_close(close);
            conn = match reply.send(Some(conn)) {
                // The reattach gave up: park it for the client's next try.
                Err(Some(conn)) => conn,
                Ok(()) | Err(None) => return,
            };
        }
        self.parked.insert(token, Parked { conn, since: Instant::now() });
    }

    fn reattach(&mut self, token: String, reply: oneshot::Sender<Option<Box<Conn>>>) {
        let window = self.reconnect_window;
        match self.parked.remove(&token) {
            Some(p) if p.since.elapsed() < window && self.connections.contains_key(&p.conn.key()) => {
                let _ = reply.send(Some(p.conn));
                return;
            }
            Some(p) => {
                self.remove(p.conn.key(), Some(CloseReason::ReconnectWindowExpired));
                let _ = reply.send(None);
                return;
            }
            None => {}
        }
        let live = self.resumable.get(&token).and_then(|key| self.connections.get_mut(key));
        let Some(conn) = live.filter(|_| !self.takeovers.contains_key(&token)) else {
            let _ = reply.send(None);
            return;
        };
        // The old socket may still look alive (a half-open TCP connection):
        // it lets go, and the connection parks straight into this reattach.
        let (close_tx, close) = oneshot::channel();
        let signalled = conn.close.replace(close_tx).is_some_and(|old| old.send(CloseReason::Replaced).is_ok());
        if signalled {
            tracing::info!(conn = conn.outlet.key, "stateful reconnect: a reattach takes over a live connection");
            self.takeovers.insert(token, Takeover { reply, close });
        } else {
            // Already told to close (shutting down, too slow): not to be resumed.
            let _ = reply.send(None);
        }
    }

    /// Hands the frame to the fan-out task of each thread where a member of
    /// one of its groups lives: one message per thread, whatever the size of
    /// the groups.
    fn broadcast(&mut self, frame: Arc<Frame>) {
        let mut threads: Vec<&Fanout> = Vec::new();
        for group in frame.groups.iter() {
            for (fanout, _) in self.groups.get(group).into_iter().flatten() {
                if !threads.iter().any(|known| known.id == fanout.id) {
                    threads.push(fanout);
                }
            }
        }
        let mut stopped = Vec::new();
        for fanout in threads {
            if fanout.inbox.send(ToThread::Frame(frame.clone())).is_err() {
                // The runtime of that thread has stopped, and its connections with it.
                stopped.push(fanout.id);
            }
        }
        for id in stopped {
            let gone: Vec<ConnKey> =
                self.connections.iter().filter(|(_, conn)| conn.fanout.id == id).map(|(key, _)| *key).collect();
            for key in gone {
                if self.connections[&key].groups.iter().any(|group| frame.groups.contains(group)) {
                    self.stats.frames_dropped += 1;
                }
                self.remove(key, None);
            }
        }
    }

    /// Frames a fan-out task could not queue: the connection is removed from
    /// every group, and told to close when it was too slow.
    fn undelivered(&mut self, connections: Undelivered) {
        for (key, full) in connections {
            self.stats.frames_dropped += 1;
            if self.remove(key, full.then_some(CloseReason::SlowConsumer)) && full {
                self.stats.slow_closes += 1;
                tracing::warn!(conn = key, "closing a slow connection: its outbound queue is full");
            }
        }
    }

    /// Forgets a connection and its memberships, telling it to close with
    /// `reason` when there is one; `false` when it was already gone.
    fn remove(&mut self, key: ConnKey, reason: Option<CloseReason>) -> bool {
        let Some(mut conn) = self.connections.remove(&key) else {
            return false;
        };
        if let Some(token) = &conn.resumable_by {
            self.resumable.remove(token);
            // A reattach waiting for it gets a 404 rather than waiting on.
            if let Some(takeover) = self.takeovers.remove(token) {
                let _ = takeover.reply.send(None);
            }
        }
        if let (Some(reason), Some(close)) = (reason, conn.close.take()) {
            let _ = close.send(reason);
        }
        for group in conn.groups {
            self.remove_member(group, key, &conn.fanout);
        }
        true
    }

    /// Takes `key`, which lives on `fanout`'s thread, out of `group`.
    fn remove_member(&mut self, group: Group, key: ConnKey, fanout: &Fanout) {
        if let Some(threads) = self.groups.get_mut(&group) {
            if let Some(index) = threads.iter().position(|(known, _)| known.id == fanout.id) {
                threads[index].1 -= 1;
                if threads[index].1 == 0 {
                    threads.swap_remove(index);
                }
            }
            if threads.is_empty() {
                self.groups.remove(&group);
            }
        }
        let _ = fanout.inbox.send(ToThread::Leave { group, key });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smartscheduler_domain::{ContractorId, Region};

    fn frame(seq: i64, groups: Vec<Group>) -> Arc<Frame> {
        Arc::new(Frame::new(ByteString::from(format!("{seq}\u{1e}")), seq, groups.into()))
    }

    async fn connect(
        hub: &HubHandle,
        fanout: &Fanout,
        capacity: usize,
    ) -> (ConnKey, Outbox, oneshot::Receiver<CloseReason>) {
        let key = hub.next_key();
        let (ctx, crx) = oneshot::channel();
        let outbox = hub.register(fanout, key, capacity, ctx, None).await.unwrap();
        (key, outbox, crx)
    }

    #[tokio::test]
    async fn members_of_either_group_get_the_frame_once_and_others_get_nothing() {
        let hub = spawn(Duration::from_secs(15), 1 << 20);
        let fanout = hub.start_fanout();
        let north = Group::dispatch(&Region::new("north").unwrap());
        let south = Group::dispatch(&Region::new("south").unwrap());
        let me = Group::contractor(ContractorId::new());
        let (a, mut a_rx, _a_close) = connect(&hub, &fanout, 8).await;
        let (b, mut b_rx, _b_close) = connect(&hub, &fanout, 8).await;
        let (c, c_rx, _c_close) = connect(&hub, &fanout, 8).await;
        assert!(hub.join(a, north.clone()).await.unwrap());
        assert!(hub.join(a, me.clone()).await.unwrap());
        assert!(hub.join(b, me.clone()).await.unwrap());
        assert!(hub.join(c, south.clone()).await.unwrap());

        hub.broadcast(frame(1, vec![north.clone(), me.clone()])).await.unwrap();
        assert_eq!(a_rx.recv().await.unwrap().sequence, 1);
        assert_eq!(b_rx.recv().await.unwrap().sequence, 1);
        // Counted by the fan-out task, which has run: the frames are here.
        let stats = hub.stats().await.unwrap();
        assert_eq!(stats.frames_sent, 2, "a is in both groups but gets one copy");
        assert_eq!(a_rx.queued_bytes(), 0, "nothing more for a");
        assert_eq!(c_rx.queued_bytes(), 0, "nothing for c");

        // The next frame to both groups reaches a once again, and a frame to
        // one group only is not held back by the dedup.
        hub.broadcast(frame(2, vec![north.clone(), me.clone()])).await.unwrap();
        hub.broadcast(frame(3, vec![me.clone()])).await.unwrap();
        assert_eq!(a_rx.recv().await.unwrap().sequence, 2);
        assert_eq!(a_rx.recv().await.unwrap().sequence, 3);
        assert_eq!(b_rx.recv().await.unwrap().sequence, 2);
        assert_eq!(b_rx.recv().await.unwrap().sequence, 3);
        assert_eq!(hub.stats().await.unwrap().frames_sent, 6);
        assert_eq!(a_rx.queued_bytes(), 0, "still one copy each");
    }

    /// Members join and leave a large group in any order: each frame reaches
    /// exactly the members at the time it was broadcast.
    #[tokio::test]
    async fn a_frame_reaches_exactly_the_members_when_it_was_broadcast() {
        let hub = spawn(Duration::from_secs(15), 1 << 20);
        let fanout = hub.start_fanout();
        let north = Group::dispatch(&Region::new("north").unwrap());
        let mut conns = Vec::new();
        for _ in 0..50 {
            let (key, rx, close) = connect(&hub, &fanout, 64).await;
            hub.join(key, north.clone()).await.unwrap();
            conns.push((key, rx, close));
        }
        // Every third leaves (from the middle and the ends of the list), one
        // rejoins, and a newcomer joins.
        let leavers: Vec<usize> = (0..50).step_by(3).collect();
        for &i in &leavers {
            hub.leave(conns[i].0, north.clone()).await.unwrap();
        }
        hub.join(conns[3].0, north.clone()).await.unwrap();
        let (late, late_rx, late_close) = connect(&hub, &fanout, 64).await;
        hub.join(late, north.clone()).await.unwrap();
        conns.push((late, late_rx, late_close));
        hub.broadcast(frame(7, vec![north.clone()])).await.unwrap();
        hub.stats().await.unwrap();
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        for (i, (_, rx, _)) in conns.iter_mut().enumerate() {
            let member = !leavers.contains(&i) || i == 3;
            match rx.try_recv() {
                Some(frame) => {
                    assert!(member, "connection {i} left and still got the frame");
                    assert_eq!(frame.sequence, 7);
                }
                None => assert!(!member, "connection {i} is a member and got nothing"),
            }
            assert!(rx.try_recv().is_none(), "connection {i} got one copy");
        }
        let expected = 51 - leavers.len() as u64 + 1;
        assert_eq!(hub.stats().await.unwrap().frames_sent, expected);
    }

    #[tokio::test]
    async fn leaving_and_unregistering_clean_up_membership() {
        let hub = spawn(Duration::from_secs(15), 1 << 20);
        let fanout = hub.start_fanout();
        let north = Group::dispatch(&Region::new("north").unwrap());
        let (a, a_rx, _close) = connect(&hub, &fanout, 8).await;
        hub.join(a, north.clone()).await.unwrap();
        assert_eq!(hub.stats().await.unwrap().groups, 1);
        hub.leave(a, north.clone()).await.unwrap();
        hub.broadcast(frame(1, vec![north.clone()])).await.unwrap();
        assert_eq!(hub.stats().await.unwrap().groups, 0);
        tokio::task::yield_now().await;
        assert_eq!(a_rx.queued_bytes(), 0, "a left before the frame");

        hub.join(a, north.clone()).await.unwrap();
        hub.unregister(a).await.unwrap();
        let stats = hub.stats().await.unwrap();
        assert_eq!((stats.connections, stats.groups), (0, 0));
        assert!(!hub.join(a, north).await.unwrap(), "a gone connection cannot join");
    }

    #[tokio::test]
    async fn a_full_queue_closes_only_that_connection() {
        let hub = spawn(Duration::from_secs(15), 1 << 20);
        let fanout = hub.start_fanout();
        let north = Group::dispatch(&Region::new("north").unwrap());
        let (slow, _slow_rx, slow_close) = connect(&hub, &fanout, 2).await;
        let (fast, mut fast_rx, mut fast_close) = connect(&hub, &fanout, 64).await;
        hub.join(slow, north.clone()).await.unwrap();
        hub.join(fast, north.clone()).await.unwrap();
        for seq in 1..=10 {
            hub.broadcast(frame(seq, vec![north.clone()])).await.unwrap();
        }
        assert_eq!(slow_close.await.unwrap(), CloseReason::SlowConsumer);
        for seq in 1..=10 {
            assert_eq!(fast_rx.recv().await.unwrap().sequence, seq);
        }
        assert!(fast_close.try_recv().is_err(), "the fast connection stays open");
        let stats = hub.stats().await.unwrap();
        assert_eq!(stats.connections, 1);
        assert_eq!(stats.slow_closes, 1);
    }

    /// A connection registered on another thread (another runtime, as an
    /// actix worker is) gets its frames through that thread's fan-out task;
    /// when that runtime stops, the hub counts its frames as dropped and
    /// forgets the connection instead of failing.
    #[tokio::test]
    async fn connections_on_other_threads_get_frames_through_their_threads_fan_out() {
        let hub = spawn(Duration::from_secs(15), 1 << 20);
        let fanout = hub.start_fanout();
        let north = Group::dispatch(&Region::new("north").unwrap());
        let (here, mut here_rx, _here_close) = connect(&hub, &fanout, 8).await;
        hub.join(here, north.clone()).await.unwrap();

        // A worker thread with its own runtime: it registers, joins, then
        // reports what it receives until told to stop.
        let (ready_tx, ready_rx) = oneshot::channel();
        let (got_tx, mut got_rx) = mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let worker_hub = hub.clone();
        let worker_group = north.clone();
        let worker = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let (key, mut rx, _close) = connect(&worker_hub, &worker_hub.start_fanout(), 8).await;
                worker_hub.join(key, worker_group).await.unwrap();
                ready_tx.send(key).unwrap();
                tokio::select! {
                    () = async { while let Some(frame) = rx.recv().await { got_tx.send(frame.sequence).unwrap(); } } => {}
                    _ = stop_rx => {}
                }
            });
        });
        let there = ready_rx.await.unwrap();
        assert_ne!(here, there);

        hub.broadcast(frame(1, vec![north.clone()])).await.unwrap();
        assert_eq!(here_rx.recv().await.unwrap().sequence, 1);
        assert_eq!(got_rx.recv().await.unwrap(), 1, "the other thread's connection got the frame");

        // Its runtime stops: the next frame to it cannot be queued.
        stop_tx.send(()).unwrap();
        worker.join().unwrap();
        hub.broadcast(frame(2, vec![north.clone()])).await.unwrap();
        assert_eq!(here_rx.recv().await.unwrap().sequence, 2, "the others still get it");
        let stats = hub.stats().await.unwrap();
        assert_eq!(stats.connections, 1, "the stopped thread's connection is forgotten");
        assert_eq!(stats.frames_sent, 3);
        assert_eq!(stats.frames_dropped, 1);
        assert_eq!(stats.slow_closes, 0, "gone, not slow");
    }

    #[tokio::test]
    async fn a_queue_over_its_byte_bound_closes_the_connection_and_the_count_comes_back() {
        // Room for two 600-byte frames, not three.
        let hub = spawn(Duration::from_secs(15), 1_300);
        let fanout = hub.start_fanout();
        let north = Group::dispatch(&Region::new("north").unwrap());
        let big = |seq: i64| {
            Arc::new(Frame::new(
                ByteString::from(format!("{}\u{1e}", "x".repeat(599))),
                seq,
                vec![north.clone()].into(),
            ))
        };
        let (key, mut rx, crx) = connect(&hub, &fanout, 64).await;
        hub.join(key, north.clone()).await.unwrap();
        hub.broadcast(big(1)).await.unwrap();
        hub.broadcast(big(2)).await.unwrap();
        hub.stats().await.unwrap();
        // The fan-out task runs on this thread: let it.
        for _ in 0..100 {
            if rx.queued_bytes() == 1_200 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(rx.queued_bytes(), 1_200, "two frames queued, counted in bytes");
        hub.broadcast(big(3)).await.unwrap();
        assert_eq!(crx.await.unwrap(), CloseReason::SlowConsumer);
        assert_eq!(rx.queued_bytes(), 1_200, "the refused frame is not counted");
        assert_eq!(rx.recv().await.unwrap().sequence, 1);
        assert_eq!(rx.recv().await.unwrap().sequence, 2);
    }
}
