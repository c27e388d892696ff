//! Who is online: each contractor's open hub connections on this node,
//! recorded in a [`PresenceLedger`] that decides online and offline (this
//! node's memory, or a store a cluster shares) and tells the region's
//! dispatchers (`PresenceChanged`).
//!
//! Opening and closing a connection only touch this node's counts; a task
//! ([`PresenceTracker::run`]) records what changed and settles, so a slow
//! or unreachable store never holds up a connection.

mod memory;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use smartscheduler_domain::ports::{ContractorRepository, PresenceLedger, StoreError};
use smartscheduler_domain::{Chain, ContractorId, HeldConnections, Presence, Principal, Region, Role, SettleScope};
use tokio::sync::Notify;

pub use memory::MemoryPresenceLedger;

/// How often the tracker says the node is alive and settles: a grace that
/// ended or a node that died is noticed within this long.
pub const PRESENCE_TICK: Duration = Duration::from_secs(1);

/// Settling this long after a grace is due leaves room for the record of
/// the close, which the run task makes a moment after it.
const GRACE_MARGIN: Duration = Duration::from_millis(25);

/// This node's connections, which changed since the last record, and
/// whose grace has ended since the last settle.
#[derive(Debug, Default)]
struct Held {
    connections: HashMap<ContractorId, (Region, u32)>,
    changed: HashSet<ContractorId>,
    grace_ended: HashSet<ContractorId>,
}

/// Contractors' connections on this node, told to a ledger. Cheap to clone.
#[derive(Clone)]
pub struct PresenceTracker {
    contractors: Arc<dyn ContractorRepository>,
    ledger: Arc<dyn PresenceLedger>,
    grace: Duration,
    held: Arc<Mutex<Held>>,
    changed: Arc<Notify>,
}

/// A contractor's open connection: dropping it closes it (whatever path
/// the connection ends by: closed, timed out, or a parked one expired).
#[must_use = "the connection counts as open until the guard is dropped"]
pub struct PresenceGuard {
    tracker: PresenceTracker,
    contractor: ContractorId,
}

impl Drop for PresenceGuard {
    fn drop(&mut self) {
        self.tracker.closed(self.contractor);
    }
}

impl PresenceTracker {
    /// A tracker recording in `ledger`, whose grace after a last close is `grace`.
    pub fn new(contractors: Arc<dyn ContractorRepository>, ledger: Arc<dyn PresenceLedger>, grace: Duration) -> Self {
        Self { contractors, ledger, grace, held: Arc::default(), changed: Arc::default() }
    }

    /// A hub connection of `principal` opened. For a contractor that exists,
    /// the guard that counts it until dropped; `None` for anyone else.
    pub async fn opened(&self, principal: &Principal) -> Option<PresenceGuard> {
        let contractor = principal.contractor_id.filter(|_| principal.role == Role::Contractor)?;
        let region = match self.known_region(contractor) {
            Some(region) => region,
            None => match self.contractors.get(contractor).await {
                Ok(Some(found)) => found.region().clone(),
                Ok(None) => return None,
                Err(err) => {
                    tracing::warn!(error = %Chain(&err), %contractor, "presence: cannot read the contractor");
                    return None;
                }
            },
        };
        {
            let mut held = self.lock();
            held.connections.entry(contractor).or_insert((region, 0)).1 += 1;
            held.changed.insert(contractor);
        }
        self.changed.notify_one();
        Some(PresenceGuard { tracker: self.clone(), contractor })
    }

    /// Where each of `contractors` stands now.
    ///
    /// # Errors
    /// The ledger cannot be read.
    pub async fn presence_of(&self, contractors: &[ContractorId]) -> Result<Vec<Presence>, StoreError> {
        self.ledger.presence_of(contractors).await
    }

    /// Records what changed and settles it at once; every [`PRESENCE_TICK`]
    /// says the node is alive and settles everyone (graces that ended, nodes
    /// that died). Runs until aborted.
    pub async fn run(self) {
        let mut tick = tokio::time::interval(PRESENCE_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let everyone = tokio::select! {
                _ = tick.tick() => {
                    self.heartbeat().await;
                    true
                }
                () = self.changed.notified() => false,
            };
            let mut touched = self.record_changes().await;
            touched.extend(std::mem::take(&mut self.lock().grace_ended));
            let scope = if everyone { SettleScope::Everyone } else { SettleScope::Only(&touched) };
            if let Err(err) = self.ledger.settle(scope).await {
                tracing::warn!(error = %Chain(&err), "presence: cannot settle; trying again shortly");
            }
        }
    }

    /// This node stops: none of its connections count from now, so its
    /// contractors go offline a grace from now unless they reconnect to
    /// another node (rather than once the node is found dead).
    pub async fn leave(&self) {
        let held: Vec<HeldConnections> = {
            let held = self.lock();
            held.connections
                .iter()
                .map(|(id, (region, _))| HeldConnections { contractor_id: *id, region: region.clone(), connections: 0 })
                .collect()
        };
        if held.is_empty() {
            return;
        }
        if let Err(err) = self.ledger.record(&held).await {
            tracing::warn!(error = %Chain(&err), "presence: cannot record that this node leaves; it is found dead instead");
        }
    }

    async fn heartbeat(&self) {
        match self.ledger.heartbeat().await {
            Ok(false) => {}
            Ok(true) => {
                // The ledger did not know this node: tell it everything.
                let mut held = self.lock();
                let all: Vec<ContractorId> = held.connections.keys().copied().collect();
                held.changed.extend(all);
            }
            Err(err) => tracing::warn!(error = %Chain(&err), "presence: heartbeat failed"),
        }
    }

    /// Records the counts that changed and returns whose; on failure they
    /// stay to record later.
    async fn record_changes(&self) -> Vec<ContractorId> {
        let changes: Vec<HeldConnections> = {
            let mut held = self.lock();
            let changed: Vec<ContractorId> = held.changed.drain().collect();
            changed
                .into_iter()
                .filter_map(|id| {
                    let (region, connections) = held.connections.get(&id)?;
                    Some(HeldConnections { contractor_id: id, region: region.clone(), connections: *connections })
                })
                .collect()
        };
        if changes.is_empty() {
            return Vec::new();
        }
        match self.ledger.record(&changes).await {
            Ok(()) => {
                // A contractor recorded with none here is the ledger's to remember.
                let mut held = self.lock();
                for change in changes.iter().filter(|change| change.connections == 0) {
                    let id = change.contractor_id;
                    if !held.changed.contains(&id) && held.connections.get(&id).is_some_and(|(_, n)| *n == 0) {
                        held.connections.remove(&id);
                    }
                }
                changes.into_iter().map(|change| change.contractor_id).collect()
            }
            Err(err) => {
                tracing::warn!(error = %Chain(&err), "presence: cannot record connections; trying again shortly");
                self.lock().changed.extend(changes.iter().map(|change| change.contractor_id));
                Vec::new()
            }
        }
    }

    fn known_region(&self, contractor: ContractorId) -> Option<Region> {
        self.lock().connections.get(&contractor).map(|(region, _)| region.clone())
    }

    /// A connection closed: after the last one, settle again once the grace
    /// has passed, so offline is told on time rather than at the next tick.
    fn closed(&self, contractor: ContractorId) {
        let last = {
            let mut held = self.lock();
            let Some((_, connections)) = held.connections.get_mut(&contractor) else { return };
            *connections = connections.saturating_sub(1);
            let last = *connections == 0;
            held.changed.insert(contractor);
            last
        };
        self.changed.notify_one();
        if !last {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let tracker = self.clone();
            runtime.spawn(async move {
                tokio::time::sleep(tracker.grace + GRACE_MARGIN).await;
                tracker.lock().grace_ended.insert(contractor);
                tracker.changed.notify_one();
            });
        }
    }

    fn lock(&self) -> MutexGuard<'_, Held> {
        // Nothing panics while it is held.
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smartscheduler_domain::ports::{MockContractorRepository, PresenceNotifier};
    use smartscheduler_domain::{Contractor, PersonName, PresenceChanged, Timestamp};

    /// Records what dispatchers would be told.
    #[derive(Default)]
    struct Told(Mutex<Vec<(ContractorId, bool)>>);

    impl PresenceNotifier for Told {
        fn notify(&self, change: PresenceChanged) {
            assert_eq!(change.audience(), vec![smartscheduler_domain::Group::dispatch(&change.region)]);
            self.0.lock().unwrap().push((change.contractor_id, change.online));
        }
    }

    impl Told {
        fn take(&self) -> Vec<(ContractorId, bool)> {
            std::mem::take(&mut self.0.lock().unwrap())
        }
    }

    const GRACE: Duration = Duration::from_secs(10);

    /// Lets the run task record and settle what just happened.
    async fn settled() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    fn setup() -> (PresenceTracker, Arc<Told>, Contractor) {
        let ana = Contractor::create(
            PersonName::new("Ana").unwrap(),
            Region::new("north").unwrap(),
            vec![],
            Timestamp::now(),
        )
        .unwrap();
        let mut contractors = MockContractorRepository::new();
        let stored = ana.clone();
        contractors.expect_get().returning(move |id| Ok((id == stored.id()).then(|| stored.clone())));
        let told = Arc::new(Told::default());
        let ledger = Arc::new(MemoryPresenceLedger::new(told.clone(), GRACE));
        let tracker = PresenceTracker::new(Arc::new(contractors), ledger, GRACE);
        tokio::spawn(tracker.clone().run());
        (tracker, told, ana)
    }

    fn principal(role: Role, contractor_id: Option<ContractorId>) -> Principal {
        Principal { subject: "s".into(), role, regions: vec!["north".into()], contractor_id }
    }

    async fn presence(tracker: &PresenceTracker, id: ContractorId) -> Presence {
        tracker.presence_of(&[id]).await.unwrap()[0]
    }

    #[tokio::test(start_paused = true)]
    async fn online_at_the_first_connection_and_offline_a_grace_after_the_last() {
        let (tracker, told, ana) = setup();
        let me = principal(Role::Contractor, Some(ana.id()));
        let first = tracker.opened(&me).await.expect("a contractor's connection counts");
        let second = tracker.opened(&me).await.expect("and its second");
        settled().await;
        assert_eq!(told.take(), vec![(ana.id(), true)], "online once");
        assert_eq!(presence(&tracker, ana.id()).await.connections, 2);

        drop(first);
        drop(second);
        settled().await;
        tokio::time::sleep(GRACE - Duration::from_millis(2)).await;
        assert!(told.take().is_empty(), "still within the grace");
        let within = presence(&tracker, ana.id()).await;
        assert!(within.online && within.connections == 0 && within.last_seen_utc.is_some());

        tokio::time::sleep(GRACE_MARGIN + Duration::from_millis(2)).await;
        assert_eq!(told.take(), vec![(ana.id(), false)], "offline once the grace passed");
        assert!(!presence(&tracker, ana.id()).await.online);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reconnect_within_the_grace_changes_nothing() {
        let (tracker, told, ana) = setup();
        let me = principal(Role::Contractor, Some(ana.id()));
        drop(tracker.opened(&me).await.unwrap());
        tokio::time::sleep(GRACE / 2).await;
        let again = tracker.opened(&me).await.unwrap();
        tokio::time::sleep(GRACE * 2).await;
        assert_eq!(told.take(), vec![(ana.id(), true)], "no offline, no second online");
        drop(again);
        tokio::time::sleep(GRACE + GRACE_MARGIN + Duration::from_millis(2)).await;
        assert_eq!(told.take(), vec![(ana.id(), false)]);
    }

    /// A ledger that cannot record until `failing` reaches 0.
    struct Unreachable {
        inner: MemoryPresenceLedger,
        failing: Mutex<u32>,
    }

    #[async_trait::async_trait]
    impl PresenceLedger for Unreachable {
        async fn record(&self, held: &[HeldConnections]) -> Result<(), StoreError> {
            let down = {
                let mut failing = self.failing.lock().unwrap();
                let down = *failing > 0;
                *failing = failing.saturating_sub(1);
                down
            };
            if down {
                return Err(StoreError::Unavailable("down".into()));
            }
            self.inner.record(held).await
        }
        async fn heartbeat(&self) -> Result<bool, StoreError> {
            self.inner.heartbeat().await
        }
        async fn settle(&self, scope: SettleScope<'_>) -> Result<Vec<PresenceChanged>, StoreError> {
            self.inner.settle(scope).await
        }
        async fn presence_of(&self, contractors: &[ContractorId]) -> Result<Vec<Presence>, StoreError> {
            self.inner.presence_of(contractors).await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_record_that_fails_is_made_at_a_later_tick_and_the_connection_never_waits_for_it() {
        let (_, _, ana) = setup();
        let mut contractors = MockContractorRepository::new();
        let stored = ana.clone();
        contractors.expect_get().returning(move |_| Ok(Some(stored.clone())));
        let told = Arc::new(Told::default());
        let ledger =
            Arc::new(Unreachable { inner: MemoryPresenceLedger::new(told.clone(), GRACE), failing: Mutex::new(2) });
        let tracker = PresenceTracker::new(Arc::new(contractors), ledger, GRACE);
        tokio::spawn(tracker.clone().run());

        let _open = tracker.opened(&principal(Role::Contractor, Some(ana.id()))).await.expect("opened at once");
        settled().await;
        assert!(told.take().is_empty(), "not recorded yet: the ledger is down");
        tokio::time::sleep(PRESENCE_TICK * 2).await;
        assert_eq!(told.take(), vec![(ana.id(), true)], "recorded and told once the ledger is back");
    }

    #[tokio::test(start_paused = true)]
    async fn leaving_records_none_held_so_offline_comes_a_grace_later() {
        let (tracker, told, ana) = setup();
        let _open = tracker.opened(&principal(Role::Contractor, Some(ana.id()))).await.unwrap();
        settled().await;
        assert_eq!(told.take(), vec![(ana.id(), true)]);
        tracker.leave().await;
        assert_eq!(presence(&tracker, ana.id()).await.connections, 0, "none counted after leaving");
        tokio::time::sleep(GRACE + PRESENCE_TICK).await;
        assert_eq!(told.take(), vec![(ana.id(), false)]);
    }

    #[tokio::test(start_paused = true)]
    async fn dispatchers_admins_and_unknown_contractors_are_not_tracked() {
        let (tracker, told, ana) = setup();
        assert!(tracker.opened(&principal(Role::Dispatcher, None)).await.is_none());
        assert!(tracker.opened(&principal(Role::Admin, Some(ana.id()))).await.is_none());
        assert!(tracker.opened(&principal(Role::Contractor, Some(ContractorId::new()))).await.is_none());
        settled().await;
        assert!(told.take().is_empty());
        assert_eq!(presence(&tracker, ana.id()).await, Presence::default(), "never seen");
    }
}
