//! The adapter from published events to hub groups: registered on the
//! in-process publisher, it serializes each event once per hub protocol in use into a shared frame
//! and queues it to the event's audience.
//!
//! It also holds the relay back when the hub falls behind. The relay runs
//! the handlers of one event after another, so while [`HubDelivery::handle`]
//! waits, the next events wait in the EventLog (durable) instead of in the
//! connections' queues, where a long enough backlog would close every
//! member as a slow consumer. The assignments are never held back: they
//! are committed before the relay sees them.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use smartscheduler_application::{EventHandler, HandlerError};
use smartscheduler_domain::PublishedEvent;
use tokio::time::Instant;

use crate::hub::{Frame, HubHandle};

/// At most this many events on their way to their members at once: still
/// in the queues of more than a few of them (more than eight, and more
/// than one in eight; see [`Frame::mostly_taken`]). A few members that
/// stopped reading do not hold the relay back, a hub that is behind does.
/// A member's
/// queue then holds about this many frames when the hub is behind, enough
/// for full writes (64 frames) and far below its bound (1,024).
pub const MAX_IN_FLIGHT: usize = 64;

/// An event no longer holds the relay back after this long, however many
/// of its members still hold it: an event whose members have all stopped
/// reading waits for them to be closed as slow, not the relay.
pub const HOLD_AT_MOST: Duration = Duration::from_secs(2);

/// How often a held-back relay looks again.
const RECHECK: Duration = Duration::from_millis(1);

/// The events on their way, oldest first, with when each was handed over.
#[derive(Default)]
pub(crate) struct InFlight {
    frames: Mutex<VecDeque<(Arc<Frame>, Instant)>>,
}

impl InFlight {
    /// Counts `frame` (already broadcast) as on its way, then waits until
    /// fewer than [`MAX_IN_FLIGHT`] are.
    pub(crate) async fn admit(&self, frame: Arc<Frame>) {
        let since = Instant::now();
        self.lock().push_back((frame, since));
        if self.has_room() {
            return;
        }
        loop {
            tokio::time::sleep(RECHECK).await;
            if self.has_room() {
                break;
            }
        }
        metrics::histogram!("smartscheduler_hub_relay_held_seconds").record(since.elapsed().as_secs_f64());
    }

    /// Forgets the events mostly taken or held long enough; whether fewer
    /// than [`MAX_IN_FLIGHT`] remain.
    fn has_room(&self) -> bool {
        let mut frames = self.lock();
        frames.retain(|(frame, since)| !frame.mostly_taken(1) && since.elapsed() < HOLD_AT_MOST);
        frames.len() < MAX_IN_FLIGHT
    }

    /// Events counted as on their way now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(Arc<Frame>, Instant)>> {
        // Nothing can panic while it is held.
        self.frames.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Sends published events to their groups on this node.
pub struct HubDelivery {
    hub: HubHandle,
    in_flight: InFlight,
}

impl HubDelivery {
    /// Delivery through `hub`.
    pub fn new(hub: HubHandle) -> Self {
        Self { hub, in_flight: InFlight::default() }
    }
}

#[async_trait]
impl EventHandler for HubDelivery {
    fn name(&self) -> &str {
        "hub"
    }

    async fn handle(&self, event: &PublishedEvent) -> Result<(), HandlerError> {
        let frame = Arc::new(Frame::of_event(event));
        self.hub.broadcast(frame.clone()).await.map_err(|e| HandlerError(Box::new(e)))?;
        self.in_flight.admit(frame).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use smartscheduler_domain::{Group, Region};
    use tokio::sync::oneshot;

    use super::*;
    use crate::hub::{self, Outbox};

    fn frame(sequence: i64, group: &Group) -> Arc<Frame> {
        Arc::new(Frame::new(
            bytestring::ByteString::from(format!("{sequence}\u{1e}")),
            sequence,
            vec![group.clone()].into(),
        ))
    }

    async fn members(
        hub: &HubHandle,
        group: &Group,
        count: usize,
    ) -> Vec<(Outbox, oneshot::Receiver<hub::CloseReason>)> {
        let mut members = Vec::new();
        let fanout = hub.start_fanout();
        for _ in 0..count {
            let key = hub.next_key();
            let (close, closed) = oneshot::channel();
            let outbox = hub.register(&fanout, key, 1024, close, None).await.unwrap();
            assert!(hub.join(key, group.clone()).await.unwrap());
            members.push((outbox, closed));
        }
        members
    }

    /// Broadcasts and admits `frame`; whether that returned within `wait`.
    async fn deliver(hub: &HubHandle, in_flight: &InFlight, frame: Arc<Frame>, wait: Duration) -> bool {
        hub.broadcast(frame.clone()).await.unwrap();
        tokio::time::timeout(wait, in_flight.admit(frame)).await.is_ok()
    }

    #[tokio::test(start_paused = true)]
    async fn the_relay_waits_while_the_members_have_not_taken_enough_events() {
        let hub = hub::spawn(Duration::from_secs(15), 1 << 20);
        let north = Group::dispatch(&Region::new("north").unwrap());
        let mut members = members(&hub, &north, 16).await;
        let in_flight = InFlight::default();
        for sequence in 1..MAX_IN_FLIGHT as i64 {
            assert!(deliver(&hub, &in_flight, frame(sequence, &north), Duration::from_millis(10)).await);
        }
        // Nobody reads: the next one fills the window and waits.
        assert!(!deliver(&hub, &in_flight, frame(MAX_IN_FLIGHT as i64, &north), Duration::from_millis(100)).await);
        assert_eq!(in_flight.len(), MAX_IN_FLIGHT);

        // The members take the first ten: room again, at once.
        let (_stalled, _) = members.pop().unwrap();
        for (outbox, _) in &mut members {
            for sequence in 1..=10 {
                assert_eq!(outbox.recv().await.unwrap().sequence, sequence);
            }
        }
        assert!(deliver(&hub, &in_flight, frame(MAX_IN_FLIGHT as i64 + 1, &north), Duration::from_millis(10)).await);
        assert_eq!(in_flight.len(), MAX_IN_FLIGHT + 1 - 10);
    }

    #[tokio::test(start_paused = true)]
    async fn a_member_that_stopped_reading_does_not_hold_the_relay_back() {
        let hub = hub::spawn(Duration::from_secs(15), 1 << 20);
        let north = Group::dispatch(&Region::new("north").unwrap());
        let mut members = members(&hub, &north, 9).await;
        let (_stalled, _) = members.pop().unwrap();
        let in_flight = InFlight::default();
        for sequence in 1..=3 * MAX_IN_FLIGHT as i64 {
            assert!(
                deliver(&hub, &in_flight, frame(sequence, &north), Duration::from_millis(10)).await,
                "event {sequence}"
            );
            for (outbox, _) in &mut members {
                assert_eq!(outbox.recv().await.unwrap().sequence, sequence);
            }
        }
        assert!(in_flight.has_room());
        assert_eq!(in_flight.len(), 0, "one of nine still holding an event is not one in eight");
    }

    #[tokio::test(start_paused = true)]
    async fn events_nobody_takes_stop_holding_the_relay_back_after_a_while() {
        let hub = hub::spawn(Duration::from_secs(15), 1 << 20);
        let north = Group::dispatch(&Region::new("north").unwrap());
        let _stalled = members(&hub, &north, 9).await;
        let in_flight = InFlight::default();
        for sequence in 1..MAX_IN_FLIGHT as i64 {
            assert!(deliver(&hub, &in_flight, frame(sequence, &north), Duration::from_millis(10)).await);
        }
        let started = Instant::now();
        assert!(deliver(&hub, &in_flight, frame(MAX_IN_FLIGHT as i64, &north), HOLD_AT_MOST * 2).await);
        assert!(started.elapsed() >= HOLD_AT_MOST - Duration::from_millis(100), "held until the first ones aged out");
    }

    #[tokio::test(start_paused = true)]
    async fn an_event_for_a_group_without_members_is_never_on_its_way() {
        let hub = hub::spawn(Duration::from_secs(15), 1 << 20);
        let empty = Group::dispatch(&Region::new("nowhere").unwrap());
        let in_flight = InFlight::default();
        for sequence in 1..=2 * MAX_IN_FLIGHT as i64 {
            assert!(deliver(&hub, &in_flight, frame(sequence, &empty), Duration::from_millis(10)).await);
        }
        // Once the hub has handled the last one.
        hub.stats().await.unwrap();
        assert!(in_flight.has_room());
        assert_eq!(in_flight.len(), 0);
    }
}
