//! Where state lives: the database (migrated on connect), its EventLog, and
//! the delivery topology that the kind of database decides.

use std::sync::Arc;
use std::time::Duration;

use smartscheduler_domain::ports::EventLog;
use smartscheduler_infrastructure::redis_bus::RedisBus;
use smartscheduler_infrastructure::Database;

use super::topology::DeliveryTopology;
use crate::config::ServeConfig;

/// What the storage phase yields.
pub(crate) struct Storage {
    /// Every storage port, and readiness.
    pub db: Database,
    /// The durable record of events.
    pub event_log: Arc<dyn EventLog>,
    /// Single node (SQLite) or cluster (PostgreSQL).
    pub topology: DeliveryTopology,
}

/// Connects the database and chooses the topology from it.
///
/// # Errors
/// An unreachable database, a bad Redis URL, or Redis without PostgreSQL.
pub(crate) async fn storage(config: &ServeConfig) -> anyhow::Result<Storage> {
    let database_url = config.database_url();
    let db = Database::connect_with(&database_url, config.sqlite_reads.into()).await?;
    let event_log: Arc<dyn EventLog> = db.event_log();
    let bus = config.redis_url.as_deref().map(RedisBus::new).transpose().map_err(anyhow::Error::msg)?;
    let lease = Duration::from_millis(config.delivery.publisher_lease_ms);
    let topology = DeliveryTopology::choose(&db, &database_url, bus, lease)?;
    Ok(Storage { db, event_log, topology })
}
