//! The presence ledger of a single node: its own memory. With one process
//! there is nobody to agree with, so a change is decided and told at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use smartscheduler_domain::ports::{PresenceLedger, PresenceNotifier, StoreError};
use smartscheduler_domain::{ContractorId, HeldConnections, Presence, PresenceChanged, Region, SettleScope, Timestamp};
use tokio::time::Instant;

/// One contractor's connections on this node, and what dispatchers were told.
#[derive(Debug)]
struct Entry {
    region: Region,
    connections: u32,
    online: bool,
    /// When its last connection closed, while it has none: the instant
    /// (for the grace, on tokio's clock) and the time (for `lastSeenUtc`).
    closed: Option<(Instant, Timestamp)>,
}

/// Presence in this process's memory, told to `notifier`.
pub struct MemoryPresenceLedger {
    notifier: Arc<dyn PresenceNotifier>,
    grace: Duration,
    entries: Mutex<HashMap<ContractorId, Entry>>,
}

impl MemoryPresenceLedger {
    /// A ledger telling `notifier`, offline `grace` after a last close.
    pub fn new(notifier: Arc<dyn PresenceNotifier>, grace: Duration) -> Self {
        Self { notifier, grace, entries: Mutex::default() }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<ContractorId, Entry>> {
        // Nothing panics while it is held.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl PresenceLedger for MemoryPresenceLedger {
    async fn record(&self, held: &[HeldConnections]) -> Result<(), StoreError> {
        let mut entries = self.lock();
        for held in held {
            let entry = entries.entry(held.contractor_id).or_insert_with(|| Entry {
                region: held.region.clone(),
                connections: 0,
                online: false,
                closed: None,
            });
            entry.connections = held.connections;
            if held.connections > 0 {
                entry.closed = None;
            } else if entry.closed.is_none() {
                entry.closed = Some((Instant::now(), Timestamp::now()));
            }
        }
        Ok(())
    }

    async fn heartbeat(&self) -> Result<bool, StoreError> {
        Ok(false)
    }

    async fn settle(&self, scope: SettleScope<'_>) -> Result<Vec<PresenceChanged>, StoreError> {
        let changes: Vec<PresenceChanged> = {
            let mut entries = self.lock();
            entries
                .iter_mut()
                .filter(|(id, _)| match scope {
                    SettleScope::Everyone => true,
                    SettleScope::Only(these) => these.contains(id),
                })
                .filter_map(|(id, entry)| {
                    let within_grace = entry.closed.is_some_and(|(closed, _)| closed.elapsed() < self.grace);
                    let online = entry.connections > 0 || within_grace;
                    (online != std::mem::replace(&mut entry.online, online))
                        .then(|| PresenceChanged::new(*id, entry.region.clone(), online, Timestamp::now()))
                })
                .collect()
        };
        for change in &changes {
            self.notifier.notify(change.clone());
        }
        Ok(changes)
    }

    async fn presence_of(&self, contractors: &[ContractorId]) -> Result<Vec<Presence>, StoreError> {
        let entries = self.lock();
        let now = Timestamp::now();
        Ok(contractors
            .iter()
            .map(|id| match entries.get(id) {
                None => Presence::default(),
                Some(entry) => Presence {
                    online: entry.online,
                    connections: entry.connections,
                    last_seen_utc: Some(entry.closed.map_or(now, |(_, at)| at)),
                },
            })
            .collect())
    }
}
