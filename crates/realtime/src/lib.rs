//! Real-time delivery: the ASP.NET Core SignalR protocol (JSON hub protocol
//! v1 over WebSockets) and the `JobsHub`, so that the official
//! `@microsoft/signalr` clients connect unchanged.
//!
//! What it is not: no business rule (who may join which group is the
//! domain's `Principal::may_join`), no storage (replays read the EventLog
//! port), no long polling or server-sent events, and MessagePack only as a
//! codec ([`protocol::messagepack`]) that no connection uses yet.
//!
//! # Layout
//! - [`protocol`]: records, handshake, messages; pure functions
//!   (`protocol::messagepack`: the MessagePack codec, not served yet).
//! - [`hub`]: the task that owns connections and groups, and its handle.
//! - [`connection`]: one WebSocket's loop and the hub methods.
//! - [`limits`]: negotiations, connections and invocations per user.
//! - [`http`]: `POST /hubs/jobs/negotiate` and the WebSocket endpoint.
//! - [`upgrade`]: the server's upgrade service, which hands an accepted
//!   WebSocket's socket to its connection (tungstenite on the bare socket).
//! - [`delivery`]: the event handler that sends published events to groups.

pub mod connection;
pub mod delivery;
pub mod http;
pub mod hub;
pub mod limits;
pub mod protocol;
pub mod upgrade;

use std::sync::Arc;
use std::time::Duration;

use smartscheduler_application::tailer::FollowedPosition;
use smartscheduler_application::{ConnectionTokens, TokenVerifier};
use smartscheduler_domain::ports::{EventLog, UsedConnectionTokens};

pub use delivery::HubDelivery;
pub use hub::{HubHandle, HubStats};

/// The hub's limits and timers. Defaults follow ASP.NET Core SignalR.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// The server pings when it has sent nothing for this long (15 s).
    pub keep_alive: Duration,
    /// A connection that sends nothing for this long is closed (30 s).
    pub client_timeout: Duration,
    /// Time allowed for the handshake (15 s).
    pub handshake_timeout: Duration,
    /// How long a negotiated connection token waits for its WebSocket (15 s).
    pub negotiate_ttl: Duration,
    /// Frames queued per connection before it counts as slow and is closed.
    pub outbound_capacity: usize,
    /// Bytes queued per connection before it counts as slow and is closed.
    pub outbound_max_bytes: usize,
    /// Whether clients may negotiate stateful reconnect.
    pub allow_stateful_reconnect: bool,
    /// How long a dropped stateful connection waits for its client (15 s).
    pub reconnect_window: Duration,
    /// Unacknowledged bytes a stateful connection may hold before it is closed.
    pub stateful_buffer_bytes: usize,
    /// Largest record accepted from a client (32 KiB).
    pub max_message_bytes: usize,
    /// Most events one join replays; past that the client reloads over HTTP.
    pub max_replay: u32,
    /// Groups one connection may be in.
    pub max_groups_per_connection: usize,
    /// Negotiations (and connections without one) per user per minute.
    pub negotiate_per_minute: u32,
    /// Open connections per user on this node.
    pub connections_per_user: usize,
    /// Invocations per second per connection (bursts up to twice that).
    pub invocations_per_second: u32,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            keep_alive: Duration::from_secs(15),
            client_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(15),
            negotiate_ttl: Duration::from_secs(15),
            outbound_capacity: 1024,
            outbound_max_bytes: 1024 * 1024,
            allow_stateful_reconnect: true,
            reconnect_window: Duration::from_secs(15),
            stateful_buffer_bytes: 1024 * 1024,
            max_message_bytes: 32 * 1024,
            max_replay: 10_000,
            max_groups_per_connection: 100,
            negotiate_per_minute: 600,
            connections_per_user: 100,
            invocations_per_second: 20,
        }
    }
}

/// What the hub's endpoints and connections share (actix app data).
#[derive(Clone)]
pub struct HubContext {
    /// The hub task.
    pub hub: HubHandle,
    /// For replays.
    pub event_log: Arc<dyn EventLog>,
    /// For bearer tokens.
    pub verifier: Arc<dyn TokenVerifier>,
    /// For the connection tokens negotiate hands out.
    pub tickets: Arc<dyn ConnectionTokens>,
    /// Which connection tokens were used already (on every node).
    pub used_tokens: Arc<dyn UsedConnectionTokens>,
    /// Limits and timers.
    pub config: Arc<HubConfig>,
    /// Per-user counters.
    pub limits: Arc<limits::Limits>,
    /// With several nodes: how far this node's follower has gone. A replay
    /// stops there; the follower brings the rest live (see
    /// [`smartscheduler_application::tailer`]).
    pub followed: Option<Arc<FollowedPosition>>,
}

impl HubContext {
    /// Starts the hub task and returns its context.
    pub fn start(
        event_log: Arc<dyn EventLog>,
        verifier: Arc<dyn TokenVerifier>,
        tickets: Arc<dyn ConnectionTokens>,
        used_tokens: Arc<dyn UsedConnectionTokens>,
        config: HubConfig,
    ) -> Self {
        let hub = hub::spawn(config.reconnect_window, config.outbound_max_bytes);
        let limits = limits::Limits::new(config.negotiate_per_minute, config.connections_per_user);
        Self { hub, event_log, verifier, tickets, used_tokens, config: Arc::new(config), limits, followed: None }
    }

    /// Bounds replays by this node's follower (several nodes).
    pub fn with_followed_position(mut self, followed: Arc<FollowedPosition>) -> Self {
        self.followed = Some(followed);
        self
    }
}
