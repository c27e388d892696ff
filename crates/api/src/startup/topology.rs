//! Single node or cluster, chosen once from the database: everything that
//! differs between the two (who publishes, how this node's hub hears of
//! events, where a replay stops, what the node calls itself) is decided
//! here rather than in checks scattered over the composition root.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use smartscheduler_application::publishing::OutboxRelay;
use smartscheduler_application::tailer::{EventTailer, FollowedPosition};
use smartscheduler_application::MemoryPresenceLedger;
use smartscheduler_application::{HandlerRegistry, RelayConfig};
use smartscheduler_domain::ports::{EventLog, PresenceLedger, PresenceNotifier};
use smartscheduler_domain::{Chain, EventType, Sequence};
use smartscheduler_infrastructure::postgres_lease::PostgresLease;
use smartscheduler_infrastructure::postgres_presence::PostgresPresence;
use smartscheduler_infrastructure::redis_bus::RedisBus;
use smartscheduler_infrastructure::Database;
use smartscheduler_realtime::HubDelivery;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// How published events reach the hubs.
// One per process, built once: the size of its variants does not matter.
#[allow(clippy::large_enum_variant)]
pub enum DeliveryTopology {
    /// SQLite: one process; its relay hands each event to its own hub.
    SingleNode,
    /// PostgreSQL: nodes share the database. One publishes, under a lease;
    /// every node follows the EventLog into its own hub, woken by Redis
    /// when there is one, else by polling.
    Cluster {
        /// For the lease's own connection.
        database_url: String,
        /// Wakes the other nodes' followers at once.
        bus: Option<RedisBus>,
        /// How long the publisher lease lasts after its last renewal.
        lease: Duration,
    },
}

/// What `wire` started: the relay to run, and the tasks beside it.
pub struct Wired {
    /// The relay, with the lease when clustered.
    pub relay: OutboxRelay,
    /// The follower and its wake-ups (clustered), to stop at shutdown.
    pub background: Vec<JoinHandle<()>>,
}

impl DeliveryTopology {
    /// The topology of `db`: a cluster on PostgreSQL, else a single node.
    ///
    /// # Errors
    /// Redis configured without PostgreSQL (it is for several nodes).
    pub fn choose(db: &Database, database_url: &str, bus: Option<RedisBus>, lease: Duration) -> anyhow::Result<Self> {
        if !matches!(db, Database::Postgres(_)) {
            anyhow::ensure!(
                bus.is_none(),
                "SMARTSCHEDULER_REDIS_URL is for several nodes, which need a postgres:// database"
            );
            return Ok(Self::SingleNode);
        }
        Ok(Self::Cluster { database_url: database_url.to_owned(), bus, lease })
    }

    /// Redis, when this is a cluster that has it.
    pub fn bus(&self) -> Option<&RedisBus> {
        match self {
            Self::Cluster { bus, .. } => bus.as_ref(),
            Self::SingleNode => None,
        }
    }

    /// The URL this node names in its connection tokens, so that other nodes
    /// forward Long Polling and SSE here: the configured one, else (in a
    /// cluster) `http://` and the bound address.
    pub fn node_url(&self, configured: Option<&str>, address: SocketAddr) -> Option<String> {
        match (configured, self) {
            (Some(url), _) => Some(url.to_owned()),
            (None, Self::SingleNode) => None,
            (None, Self::Cluster { .. }) => {
                if address.ip().is_unspecified() {
                    tracing::warn!(%address, "bound to every address: set SMARTSCHEDULER_NODE_URL so other nodes can forward Long Polling and SSE here");
                }
                Some(format!("http://{address}"))
            }
        }
    }

    /// Where this node's follower starts, read before any client can join
    /// (a cluster's replays stop where the follower is); 0 on a single node.
    ///
    /// # Errors
    /// The EventLog does not answer for ten seconds.
    pub async fn follow_from(&self, event_log: &dyn EventLog) -> anyhow::Result<Sequence> {
        match self {
            Self::SingleNode => Ok(Sequence(0)),
            Self::Cluster { .. } => highest_published(event_log).await,
        }
    }

    /// The relay's settings: a cluster's publisher also scans for rows
    /// other nodes committed, so it polls more often.
    pub fn relay_config(&self, max_attempts: u32, base_backoff: Duration) -> RelayConfig {
        let defaults = RelayConfig::default();
        let poll_interval = match self {
            Self::SingleNode => defaults.poll_interval,
            Self::Cluster { .. } => Duration::from_millis(100),
        };
        RelayConfig { max_attempts, base_backoff, poll_interval, ..defaults }
    }

    /// The relay's handlers: on a single node the hub is one of them; in a
    /// cluster the follower delivers to it instead.
    pub fn handlers(&self, handlers: HandlerRegistry, hub_delivery: &Arc<HubDelivery>) -> HandlerRegistry {
        match self {
            Self::SingleNode => EventType::ALL
                .into_iter()
                .fold(handlers, |handlers, event_type| handlers.register(event_type, hub_delivery.clone())),
            Self::Cluster { .. } => handlers,
        }
    }

    /// Where presence is decided: this node's memory, or (cluster) the
    /// database every node shares, with the task that hears its changes.
    pub fn presence_ledger(
        &self,
        db: &Database,
        notifier: Arc<dyn PresenceNotifier>,
        grace: Duration,
    ) -> (Arc<dyn PresenceLedger>, Option<JoinHandle<()>>) {
        match (self, db) {
            (Self::Cluster { .. }, Database::Postgres(store)) => {
                let ledger = PostgresPresence::new(store, grace);
                let listener = tokio::spawn(ledger.clone().listen(notifier));
                (Arc::new(ledger), Some(listener))
            }
            _ => (Arc::new(MemoryPresenceLedger::new(notifier, grace)), None),
        }
    }

    /// Puts the relay under the lease and starts the follower (cluster), or
    /// leaves the relay as it is (single node).
    ///
    /// # Errors
    /// The lease cannot use the database URL.
    pub fn wire(
        &self,
        relay: OutboxRelay,
        event_log: Arc<dyn EventLog>,
        hub_delivery: Arc<HubDelivery>,
        follow_from: Sequence,
        followed: Arc<FollowedPosition>,
    ) -> anyhow::Result<Wired> {
        let Self::Cluster { database_url, bus, lease } = self else {
            return Ok(Wired { relay, background: Vec::new() });
        };
        let mut background = Vec::new();
        let (published_tx, published_rx) = tokio::sync::watch::channel(0i64);
        let lease =
            PostgresLease::new(database_url, *lease).context("the publisher lease cannot use the database URL")?;
        let relay = relay.with_lease(Arc::new(lease)).with_published_signal(published_tx);
        let wake = Arc::new(Notify::new());
        // This node's own publishes wake its follower at once.
        let local_wake = wake.clone();
        let mut local_rx = published_rx.clone();
        background.push(tokio::spawn(async move {
            while local_rx.changed().await.is_ok() {
                local_wake.notify_one();
            }
        }));
        let poll = if bus.is_some() { Duration::from_secs(1) } else { Duration::from_millis(100) };
        if let Some(bus) = bus {
            background.push(tokio::spawn(bus.clone().announce(published_rx)));
            background.push(tokio::spawn(bus.clone().listen(wake.clone())));
        }
        let tailer = EventTailer::new(event_log, hub_delivery, wake, poll)
            .starting_after(follow_from)
            .with_followed_position(followed);
        background.push(tokio::spawn(tailer.run()));
        Ok(Wired { relay, background })
    }
}

/// The highest published sequence, retried for a while: the database has
/// just answered the migrations, but may be flapping.
async fn highest_published(event_log: &dyn EventLog) -> anyhow::Result<Sequence> {
    let mut attempt = 0;
    loop {
        match event_log.highest_published().await {
            Ok(highest) => return Ok(highest),
            Err(err) if attempt < 20 => {
                attempt += 1;
                tracing::warn!(error = %Chain(&err), "cannot read where the EventLog stands yet; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(err) => return Err(err).context("cannot read where the EventLog stands"),
        }
    }
}
