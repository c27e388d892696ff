//! Real-time delivery: the ASP.NET Core SignalR protocols and the
//! `JobsHub`, so that the official `@microsoft/signalr` clients connect
//! unchanged, whatever transport and hub protocol they are set to.
//!
//! What it is not: no business rule (who may join which group is the
//! domain's `Principal::may_join`), no storage (replays read the EventLog
//! port).
//!
//! # Layout
//! - [`protocol`]: records, handshake, messages, in JSON and MessagePack
//!   ([`protocol::Codec`]); pure functions.
//! - [`hub`]: the task that owns connections, groups and parked
//!   connections, its handle, and its per-thread fan-out tasks.
//! - [`jobs_hub`]: the `JobsHub`: the hub methods, authorization,
//!   membership and replay.
//! - [`connection`]: one logical connection's state machine, on any transport.
//! - [`transport`]: the seam, and one adapter per transport (WebSockets
//!   through actix-ws or on dedicated sockets, Long Polling, Server-Sent Events).
//! - [`limits`]: negotiations, connections and invocations per user.
//! - [`http`]: negotiate and the hub endpoint, which picks the transport.
//! - [`forward`]: Long Polling and SSE requests that reach another node
//!   than their connection's are sent on to it (no sticky sessions).
//! - [`delivery`]: the event handler that sends published events to groups.

pub mod connection;
pub mod delivery;
pub mod forward;

pub mod http;
pub mod hub;
pub mod jobs_hub;
pub mod limits;
pub mod presence;
pub mod protocol;
pub mod transport;

use std::sync::Arc;
use std::time::Duration;

use smartscheduler_application::tailer::FollowedPosition;
use smartscheduler_application::{AcknowledgeAssignment, ConnectionTokens, PresenceTracker, TokenVerifier};
use smartscheduler_domain::ports::{EventLog, UsedConnectionTokens};

pub use delivery::HubDelivery;
pub use hub::{HubHandle, HubStats};
pub use presence::HubPresence;

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
    /// How long a Long Polling poll waits for records (90 s, as ASP.NET).
    pub poll_timeout: Duration,
    /// A Long Polling connection with no poll for this long is closed (15 s).
    pub disconnect_timeout: Duration,
    /// Which adapter serves WebSockets.
    pub websocket: WebSocketAdapter,
    /// This node's own URL, which its connection tokens name, so that
    /// another node can forward a Long Polling or SSE request here. `None`
    /// on a single node.
    pub node_url: Option<String>,
}

/// Which adapter serves WebSockets (`SMARTSCHEDULER_HUB_WEBSOCKET`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WebSocketAdapter {
    /// actix-ws, on the HTTP workers (the default).
    #[default]
    ActixWs,
    /// tungstenite on the bare socket, on socket threads of their own.
    Dedicated,
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
            poll_timeout: Duration::from_secs(90),
            disconnect_timeout: Duration::from_secs(15),
            websocket: WebSocketAdapter::ActixWs,
            node_url: None,
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
    /// This node's Long Polling and SSE connections, by connection token.
    pub sessions: Arc<transport::http_session::HttpSessions>,
    /// Sends Long Polling and SSE requests on to their connection's node.
    pub forwarder: forward::Forwarder,
    /// The hub's methods, authorization and replay.
    pub jobs: Arc<jobs_hub::JobsHub>,
    /// With several nodes: how far this node's follower has gone. A replay
    /// stops there; the follower brings the rest live (see
    /// [`smartscheduler_application::tailer`]).
    pub followed: Option<Arc<FollowedPosition>>,
    /// Counts contractors' connections for presence; `None`: not tracked.
    pub presence: Option<PresenceTracker>,
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
        let sessions = Arc::default();
        let jobs = Arc::new(jobs_hub::JobsHub::new(
            hub.clone(),
            event_log.clone(),
            config.max_replay,
            config.max_groups_per_connection,
        ));
        Self {
            hub,
            event_log,
            verifier,
            tickets,
            used_tokens,
            config: Arc::new(config),
            limits,
            sessions,
            forwarder: forward::Forwarder::default(),
            jobs,
            followed: None,
            presence: None,
        }
    }

    /// Bounds replays by this node's follower (several nodes).
    #[must_use]
    pub fn with_followed_position(mut self, followed: Arc<FollowedPosition>) -> Self {
        self.jobs = Arc::new(self.jobs.as_ref().clone().bounded_by(followed.clone()));
        self.followed = Some(followed);
        self
    }

    /// Counts contractors' connections in `presence`.
    #[must_use]
    pub fn with_presence(mut self, presence: PresenceTracker) -> Self {
        self.presence = Some(presence);
        self
    }

    /// Serves the hub's `AcknowledgeEvent` with `acknowledge`.
    #[must_use]
    pub fn with_acknowledgements(mut self, acknowledge: AcknowledgeAssignment) -> Self {
        self.jobs = Arc::new(self.jobs.as_ref().clone().with_acknowledgements(acknowledge));
        self
    }
}

/// The HTTP server for `make_app`'s application, with WebSockets served by
/// the adapter `ctx`'s configuration names: actix-web's `HttpServer` for
/// actix-ws, or the assembly the dedicated adapter needs (see
/// [`transport::dedicated::server`]). Signals are left to the caller; a
/// graceful stop waits `shutdown_timeout`.
///
/// # Errors
/// When the listener cannot be served or the socket threads cannot start.
pub fn http_server<F, I, S, B>(
    ctx: &HubContext,
    listener: std::net::TcpListener,
    make_app: F,
    shutdown_timeout: Duration,
) -> std::io::Result<actix_web::dev::Server>
where
    F: Fn() -> I + Send + Clone + 'static,
    I: actix_service::IntoServiceFactory<S, actix_http::Request>,
    S: actix_service::ServiceFactory<
            actix_http::Request,
            Config = actix_web::dev::AppConfig,
            Error = actix_web::Error,
            InitError = (),
        > + 'static,
    S::Response: Into<actix_http::Response<B>> + 'static,
    <S::Service as actix_service::Service<actix_http::Request>>::Future: 'static,
    S::Service: 'static,
    B: actix_web::body::MessageBody + 'static,
{
    match ctx.config.websocket {
        WebSocketAdapter::ActixWs => Ok(actix_web::HttpServer::new(make_app)
            .client_disconnect_timeout(Duration::from_secs(1))
            .shutdown_timeout(shutdown_timeout.as_secs())
            .disable_signals()
            .listen(listener)?
            .run()),
        WebSocketAdapter::Dedicated => {
            // Hub sockets run on threads of their own, one per core:
            // deliveries do not queue the API's requests.
            let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
            let threads = transport::dedicated::SocketThreads::start(cores, &ctx.hub)?;
            transport::dedicated::server(listener, make_app, threads, shutdown_timeout)
        }
    }
}
