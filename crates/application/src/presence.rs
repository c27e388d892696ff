//! Who is online, on this node: each contractor's open hub connections,
//! and the grace after its last one closes that absorbs a reconnect. The
//! first connection of an offline contractor and the end of a grace with
//! no connection are told to the region's dispatchers (`PresenceChanged`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use smartscheduler_domain::ports::{ContractorRepository, PresenceNotifier};
use smartscheduler_domain::{Chain, ContractorId, Presence, PresenceChanged, Principal, Region, Role, Timestamp};

/// One contractor's connections and state.
#[derive(Debug)]
struct Entry {
    region: Region,
    connections: u32,
    online: bool,
    /// When its last connection closed (while it has none).
    closed_at: Option<Timestamp>,
    /// Bumped at each last close: a grace timer acts only if none came since.
    closings: u64,
}

/// Contractors' presence on this node. Cheap to clone.
#[derive(Clone)]
pub struct PresenceTracker {
    contractors: Arc<dyn ContractorRepository>,
    notifier: Arc<dyn PresenceNotifier>,
    grace: Duration,
    entries: Arc<Mutex<HashMap<ContractorId, Entry>>>,
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
    /// A tracker telling `notifier`, with `grace` after a last close.
    pub fn new(
        contractors: Arc<dyn ContractorRepository>,
        notifier: Arc<dyn PresenceNotifier>,
        grace: Duration,
    ) -> Self {
        Self { contractors, notifier, grace, entries: Arc::default() }
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
        let came_online = {
            let mut entries = self.lock();
            let entry = entries.entry(contractor).or_insert_with(|| Entry {
                region: region.clone(),
                connections: 0,
                online: false,
                closed_at: None,
                closings: 0,
            });
            entry.connections += 1;
            entry.closed_at = None;
            !std::mem::replace(&mut entry.online, true)
        };
        if came_online {
            self.notifier.notify(PresenceChanged::new(contractor, region, true, Timestamp::now()));
        }
        Some(PresenceGuard { tracker: self.clone(), contractor })
    }

    /// Where each of `contractors` stands now.
    pub fn presence_of(&self, contractors: &[ContractorId]) -> Vec<Presence> {
        let entries = self.lock();
        let now = Timestamp::now();
        contractors
            .iter()
            .map(|id| match entries.get(id) {
                None => Presence::default(),
                Some(entry) => Presence {
                    online: entry.online,
                    connections: entry.connections,
                    last_seen_utc: Some(if entry.connections > 0 { now } else { entry.closed_at.unwrap_or(now) }),
                },
            })
            .collect()
    }

    fn known_region(&self, contractor: ContractorId) -> Option<Region> {
        self.lock().get(&contractor).map(|entry| entry.region.clone())
    }

    /// A connection closed: after the last one, offline once the grace
    /// passes with no new connection.
    fn closed(&self, contractor: ContractorId) {
        let closing = {
            let mut entries = self.lock();
            let Some(entry) = entries.get_mut(&contractor) else { return };
            entry.connections = entry.connections.saturating_sub(1);
            if entry.connections > 0 {
                return;
            }
            entry.closed_at = Some(Timestamp::now());
            entry.closings += 1;
            entry.closings
        };
        let tracker = self.clone();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime left (the process is ending): offline at once.
            tracker.grace_ended(contractor, closing);
            return;
        };
        runtime.spawn(async move {
            tokio::time::sleep(tracker.grace).await;
            tracker.grace_ended(contractor, closing);
        });
    }

    /// The grace after the `closing`-th last close has passed.
    fn grace_ended(&self, contractor: ContractorId, closing: u64) {
        let region = {
            let mut entries = self.lock();
            let Some(entry) = entries.get_mut(&contractor) else { return };
            if entry.connections > 0 || entry.closings != closing || !entry.online {
                return;
            }
            entry.online = false;
            entry.region.clone()
        };
        self.notifier.notify(PresenceChanged::new(contractor, region, false, Timestamp::now()));
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<ContractorId, Entry>> {
        // Nothing panics while it is held.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smartscheduler_domain::ports::MockContractorRepository;
    use smartscheduler_domain::{Contractor, PersonName};

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
        (PresenceTracker::new(Arc::new(contractors), told.clone(), GRACE), told, ana)
    }

    fn principal(role: Role, contractor_id: Option<ContractorId>) -> Principal {
        Principal { subject: "s".into(), role, regions: vec!["north".into()], contractor_id }
    }

    #[tokio::test(start_paused = true)]
    async fn online_at_the_first_connection_and_offline_a_grace_after_the_last() {
        let (tracker, told, ana) = setup();
        let me = principal(Role::Contractor, Some(ana.id()));
        let first = tracker.opened(&me).await.expect("a contractor's connection counts");
        let second = tracker.opened(&me).await.expect("and its second");
        assert_eq!(told.take(), vec![(ana.id(), true)], "online once");
        assert_eq!(tracker.presence_of(&[ana.id()])[0].connections, 2);

        drop(first);
        drop(second);
        tokio::time::sleep(GRACE - Duration::from_millis(1)).await;
        assert!(told.take().is_empty(), "still within the grace");
        let within = tracker.presence_of(&[ana.id()])[0];
        assert!(within.online && within.connections == 0 && within.last_seen_utc.is_some());

        tokio::time::sleep(Duration::from_millis(2)).await;
        assert_eq!(told.take(), vec![(ana.id(), false)], "offline once the grace passed");
        assert!(!tracker.presence_of(&[ana.id()])[0].online);
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
        tokio::time::sleep(GRACE + Duration::from_millis(1)).await;
        assert_eq!(told.take(), vec![(ana.id(), false)]);
    }

    #[tokio::test(start_paused = true)]
    async fn dispatchers_admins_and_unknown_contractors_are_not_tracked() {
        let (tracker, told, ana) = setup();
        assert!(tracker.opened(&principal(Role::Dispatcher, None)).await.is_none());
        assert!(tracker.opened(&principal(Role::Admin, Some(ana.id()))).await.is_none());
        assert!(tracker.opened(&principal(Role::Contractor, Some(ContractorId::new()))).await.is_none());
        assert!(told.take().is_empty());
        assert_eq!(tracker.presence_of(&[ana.id()]), vec![Presence::default()], "never seen");
    }
}
