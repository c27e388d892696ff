//! How a committed event reaches clients: the hub, the outbox relay (or,
//! clustered, the follower) and the process's background tasks (retention).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use smartscheduler_application::acknowledgements::run_escalation;
use smartscheduler_application::publishing::outbox;
use smartscheduler_application::tailer::FollowedPosition;
use smartscheduler_application::{AcknowledgeAssignment, HandlerRegistry, InProcessPublisher, PresenceTracker};
use smartscheduler_infrastructure::SignedConnectionTokens;
use smartscheduler_realtime::{HubConfig, HubContext, HubDelivery, HubPresence, WebSocketAdapter};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::topology::{DeliveryTopology, Wired};
use super::{Auth, Storage};
use crate::config::{DeliveryArgs, HubWebSocket};

/// How often overdue assignments are looked for: an escalation comes at
/// most this long after its deadline.
const ESCALATION_SCAN: Duration = Duration::from_secs(1);

/// What the delivery phase yields: the running hub and relay.
pub(crate) struct Delivery {
    /// The hub, served by the HTTP server and stopped at shutdown.
    pub hub: HubContext,
    /// Hands committed assignments to the relay.
    pub publisher: Arc<InProcessPublisher>,
    /// The relay's task, stopped through `stop_relay`.
    pub relay: JoinHandle<()>,
    /// Tells the relay to publish what it holds and stop.
    pub stop_relay: Arc<Notify>,
    /// Tasks aborted at shutdown: the follower and its wake-ups, presence,
    /// retention, the escalation scan.
    pub background: Vec<JoinHandle<()>>,
    /// How long a contractor has to acknowledge a new assignment (`None`: no escalation).
    pub acknowledgement_deadline: Option<Duration>,
}

/// Starts the hub, the relay and the background tasks. `address` is where
/// the server listens, which a cluster node names in its connection tokens.
///
/// # Errors
/// The EventLog does not answer, or the lease cannot use the database URL.
pub(crate) async fn delivery(
    config: &DeliveryArgs,
    auth: &Auth,
    storage: &Storage,
    address: SocketAddr,
    handlers: HandlerRegistry,
) -> anyhow::Result<Delivery> {
    let Storage { db, event_log, topology } = storage;
    let acknowledgement_deadline = config.acknowledgement_deadline();
    let hub_config = hub_config(config, topology.node_url(config.node_url.as_deref(), address));
    let tickets = Arc::new(SignedConnectionTokens::new(auth.secret.as_bytes()));
    let follow_from = topology.follow_from(event_log.as_ref()).await?;
    let followed = Arc::new(FollowedPosition::starting_at(follow_from));
    let mut hub =
        HubContext::start(event_log.clone(), auth.verifier.clone(), tickets, db.used_connection_tokens(), hub_config);
    if let DeliveryTopology::Cluster { .. } = topology {
        // Replays stop where this node's follower is.
        hub = hub.with_followed_position(followed.clone());
    }
    let grace = Duration::from_secs(config.presence_grace_seconds);
    let (ledger, presence_listener) = topology.presence_ledger(db, Arc::new(HubPresence::new(hub.hub.clone())), grace);
    let presence = PresenceTracker::new(db.contractors(), ledger, grace);
    let presence_task = tokio::spawn(presence.clone().run());
    hub = hub.with_presence(presence);
    let hub_delivery = Arc::new(HubDelivery::new(hub.hub.clone()));
    let handlers = topology.handlers(handlers, &hub_delivery);
    let relay_config =
        topology.relay_config(config.max_delivery_attempts, Duration::from_millis(config.retry_backoff_ms));
    let (publisher, relay) = outbox(event_log.clone(), handlers, relay_config);
    let hub = hub.with_acknowledgements(AcknowledgeAssignment::new(
        db.assignment_reads(),
        db.assignments(),
        publisher.clone(),
    ));
    let Wired { relay, mut background } =
        topology.wire(relay, event_log.clone(), hub_delivery, follow_from, followed)?;
    let stop_relay = Arc::new(Notify::new());
    let stop = stop_relay.clone();
    let relay = tokio::spawn(relay.run(async move { stop.notified().await }));

    background.push(presence_task);
    background.extend(presence_listener);
    background.push(tokio::spawn(smartscheduler_application::maintenance::run_retention(
        event_log.clone(),
        db.assignments(),
        Duration::from_secs(u64::from(config.event_retention_days) * 24 * 3600),
        Duration::from_secs(3600),
    )));
    if acknowledgement_deadline.is_some() {
        // Every node scans; the store lets one of them escalate each assignment.
        background.push(tokio::spawn(run_escalation(db.assignments(), publisher.clone(), ESCALATION_SCAN)));
    }
    Ok(Delivery { hub, publisher, relay, stop_relay, background, acknowledgement_deadline })
}

/// The hub's limits and transports, from the delivery settings.
fn hub_config(config: &DeliveryArgs, node_url: Option<String>) -> HubConfig {
    HubConfig {
        outbound_capacity: config.hub_queue_messages as usize,
        outbound_max_bytes: config.hub_queue_bytes,
        reconnect_window: Duration::from_secs(config.reconnect_window_seconds),
        negotiate_per_minute: config.hub_negotiate_per_minute,
        connections_per_user: config.hub_connections_per_user,
        invocations_per_second: config.hub_invocations_per_second,
        max_message_bytes: config.hub_max_message_bytes,
        poll_timeout: Duration::from_secs(config.hub_poll_seconds),
        disconnect_timeout: Duration::from_secs(config.hub_disconnect_seconds),
        node_url,
        websocket: match config.hub_websocket {
            HubWebSocket::ActixWs => WebSocketAdapter::ActixWs,
            HubWebSocket::Dedicated => WebSocketAdapter::Dedicated,
        },
        ..HubConfig::default()
    }
}
