//! Following the EventLog: with several nodes on one database, every node
//! delivers to its own hub clients by reading the published events in
//! `sequence` order, from where it last was. The node that publishes and
//! the cross-node bus only say "there is more up to N"; the log is the
//! source, so a lost or late signal delays delivery and loses nothing, and
//! every node delivers in the one publish order.
//!
//! The follower never moves past a sequence that might still be published:
//! - A hole (sequence N seen published, some M < N not) is waited for while a
//!   row still holds M: claimed, its publish may be in flight; or published
//!   since the page was read, so the next read brings it. A sequence no row
//!   holds any more was given up (its attempt failed, or its claim was taken
//!   over by a new lease holder) and is passed. The wait is bounded
//!   (`hole_wait`), with an error logged and counted, because the fenced
//!   lease makes a publish that late impossible.
//! - A local delivery that fails is retried, with backoff, until it
//!   succeeds; the follower does not move on without it.
//!
//! The follower announces each sequence in a [`FollowedPosition`] before it
//! hands the event over. A hub client that joins with `afterSequence` is
//! replayed the events up to that position only: later ones reach it live,
//! from the follower, so a replay can never run past a hole the follower
//! still waits for.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use smartscheduler_domain::ports::{EventLog, EventQuery};
use smartscheduler_domain::{Chain, PublishedEvent, Sequence};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::publishing::EventHandler;

/// The default bound on waiting for a hole.
pub const DEFAULT_HOLE_WAIT: Duration = Duration::from_secs(30);

/// How far a node's follower has gone: the highest sequence it has handed
/// to (or is handing to) its hub clients, or passed as given up. Shared by
/// the follower, which writes it, and the hub's replays, which read it.
#[derive(Debug)]
pub struct FollowedPosition(AtomicI64);

impl FollowedPosition {
    /// Not started yet: no bound.
    pub fn new() -> Self {
        Self(AtomicI64::new(i64::MAX))
    }
    /// A follower that starts after `sequence`: replays reach up to it.
    pub fn starting_at(sequence: Sequence) -> Self {
        Self(AtomicI64::new(sequence.0))
    }
    /// The highest sequence a replay may send; live delivery brings the rest.
    pub fn replay_bound(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
    fn announce(&self, sequence: i64) {
        self.0.store(sequence, Ordering::SeqCst);
    }
}

impl Default for FollowedPosition {
    fn default() -> Self {
        Self::new()
    }
}

/// Reads published events after its position and hands them to a handler.
pub struct EventTailer {
    log: Arc<dyn EventLog>,
    handler: Arc<dyn EventHandler>,
    wake: Arc<Notify>,
    poll: Duration,
    batch: u32,
    hole_wait: Duration,
    followed: Arc<FollowedPosition>,
    start: Option<Sequence>,
}

/// Where the follower is.
struct Position {
    /// The highest sequence delivered (or passed as given up).
    delivered: i64,
    /// Since when the hole right after `delivered` has been waited for.
    hole_since: Option<Instant>,
}

/// What a hole in the published sequences means now.
enum Hole {
    /// Nothing can fill it any more: move past it.
    GivenUp,
    /// A row holds it, published since the read or perhaps being published: read again.
    MayFill,
}

impl EventTailer {
    /// Follows `log` into `handler`; wakes on `wake`, and every `poll` anyway.
    pub fn new(log: Arc<dyn EventLog>, handler: Arc<dyn EventHandler>, wake: Arc<Notify>, poll: Duration) -> Self {
        Self {
            log,
            handler,
            wake,
            poll,
            batch: 1000,
            hole_wait: DEFAULT_HOLE_WAIT,
            followed: Arc::default(),
            start: None,
        }
    }

    /// Starts after `sequence` instead of reading the highest published one
    /// when it runs: the composition reads it before it serves any client,
    /// so that no join falls between a replay and the follower's start.
    pub fn starting_after(mut self, sequence: Sequence) -> Self {
        self.start = Some(sequence);
        self
    }

    /// Announces its position in `followed` (see the module docs).
    pub fn with_followed_position(mut self, followed: Arc<FollowedPosition>) -> Self {
        self.followed = followed;
        self
    }

    /// Waits at most `hole_wait` for a hole that a claimed row still holds.
    pub fn with_hole_wait(mut self, hole_wait: Duration) -> Self {
        self.hole_wait = hole_wait;
        self
    }

    /// Starts after the highest published sequence, or where it was told
    /// (history is for joins with `afterSequence`), and follows forever.
    pub async fn run(self) {
        let delivered = match self.start {
            Some(start) => start.0,
            None => loop {
                match self.log.highest_published().await {
                    Ok(highest) => break highest.0,
                    Err(err) => {
                        tracing::warn!(error = %Chain(&err), "tailer: the EventLog is unavailable; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            },
        };
        self.followed.announce(delivered);
        let mut position = Position { delivered, hole_since: None };
        let mut tick = tokio::time::interval(self.poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = self.wake.notified() => {}
                _ = tick.tick() => {}
            }
            self.catch_up(&mut position).await;
        }
    }

    /// Delivers everything published after `position` that it may, in order.
    async fn catch_up(&self, position: &mut Position) {
        loop {
            let query =
                EventQuery { after_sequence: Some(Sequence(position.delivered)), status: None, limit: self.batch };
            let page = match self.log.list(query).await {
                Ok(page) => page,
                Err(err) => {
                    tracing::warn!(error = %Chain(&err), "tailer: could not read the EventLog");
                    return;
                }
            };
            let full = page.len() as u32 == self.batch;
            for entry in page {
                let Some(sequence) = entry.sequence else { continue };
                if sequence.0 > position.delivered + 1 {
                    match self.hole_before(position, sequence).await {
                        Hole::GivenUp => {}
                        Hole::MayFill => return,
                    }
                }
                // Announced first: a join that misses this broadcast replays it.
                self.followed.announce(sequence.0);
                self.deliver(&PublishedEvent { event: entry.payload.event, sequence }).await;
                position.delivered = sequence.0;
                position.hole_since = None;
            }
            if !full {
                return;
            }
        }
    }

    /// Judges the hole between `position` and `next`, the next published sequence.
    async fn hole_before(&self, position: &mut Position, next: Sequence) -> Hole {
        let (from, to) = (Sequence(position.delivered + 1), Sequence(next.0 - 1));
        let held = match self.log.held_sequences(from, to).await {
            Ok(held) => held,
            Err(err) => {
                tracing::warn!(error = %Chain(&err), "tailer: could not look into a hole in the EventLog; waiting");
                return Hole::MayFill;
            }
        };
        if held.is_empty() {
            return Hole::GivenUp;
        }
        let since = *position.hole_since.get_or_insert_with(Instant::now);
        if since.elapsed() < self.hole_wait {
            tracing::debug!(first = held[0].0, count = held.len(), "tailer: waiting for held sequences");
            return Hole::MayFill;
        }
        metrics::counter!("smartscheduler_tailer_holes_passed_total").increment(held.len() as u64);
        tracing::error!(
            first = held[0].0,
            count = held.len(),
            waited_ms = since.elapsed().as_millis() as u64,
            "tailer: held sequences were not published in time; moving past them"
        );
        Hole::GivenUp
    }

    /// Hands `event` to the handler until it takes it.
    async fn deliver(&self, event: &PublishedEvent) {
        let mut backoff = Duration::from_millis(20);
        while let Err(err) = self.handler.handle(event).await {
            metrics::counter!("smartscheduler_tailer_delivery_retries_total").increment(1);
            tracing::warn!(error = %Chain(&err), sequence = %event.sequence, "tailer: local delivery failed; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;
    use std::sync::Mutex;

    use async_trait::async_trait;
    use smartscheduler_domain::ports::{EventLogEntry, EventStatus, LoggedPayload, MockEventLog};

    use super::*;
    use crate::publishing::tests::event;
    use crate::publishing::HandlerError;

    fn entry(sequence: i64) -> EventLogEntry {
        let event = event();
        EventLogEntry {
            event_id: event.event_id(),
            event_type: event.event_type().as_str().to_owned(),
            sequence: Some(Sequence(sequence)),
            status: EventStatus::Published,
            attempts: 1,
            occurred_at_utc: event.occurred_at_utc(),
            published_at_utc: Some(event.occurred_at_utc()),
            published_groups: event.audience(),
            last_error: None,
            payload: LoggedPayload { event, sequence: Some(Sequence(sequence)) },
        }
    }

    /// The EventLog as the follower sees it: published sequences (some
    /// perhaps not yet visible to a read of the page), and the sequences
    /// claimed rows hold.
    #[derive(Default)]
    struct Log {
        published: Vec<i64>,
        claimed: Vec<i64>,
        not_yet_listed: Vec<i64>,
    }

    fn mock(log: &Arc<Mutex<Log>>) -> MockEventLog {
        let mut mock = MockEventLog::new();
        let l = log.clone();
        mock.expect_list().returning(move |query| {
            let after = query.after_sequence.unwrap().0;
            let log = l.lock().unwrap();
            let mut page: Vec<i64> =
                log.published.iter().copied().filter(|s| *s > after && !log.not_yet_listed.contains(s)).collect();
            page.sort_unstable();
            Ok(page.into_iter().take(query.limit as usize).map(entry).collect())
        });
        let l = log.clone();
        mock.expect_held_sequences().returning(move |from, to| {
            let log = l.lock().unwrap();
            let held = log.claimed.iter().chain(&log.published);
            Ok(held.copied().filter(|s| (from.0..=to.0).contains(s)).map(Sequence).collect())
        });
        mock
    }

    struct Recorder {
        seen: Mutex<Vec<i64>>,
        failures_left: AtomicU32,
        followed: Arc<FollowedPosition>,
    }

    #[async_trait]
    impl EventHandler for Recorder {
        fn name(&self) -> &str {
            "recorder"
        }
        async fn handle(&self, event: &PublishedEvent) -> Result<(), HandlerError> {
            if self.failures_left.load(Ordering::SeqCst) > 0 {
                self.failures_left.fetch_sub(1, Ordering::SeqCst);
                return Err(HandlerError("hub unavailable".into()));
            }
            assert_eq!(self.followed.replay_bound(), event.sequence.0, "announced before it is handed over");
            self.seen.lock().unwrap().push(event.sequence.0);
            Ok(())
        }
    }

    fn tailer(log: &Arc<Mutex<Log>>, failures: u32) -> (EventTailer, Arc<Recorder>) {
        let followed = Arc::new(FollowedPosition::new());
        let recorder = Arc::new(Recorder {
            seen: Mutex::default(),
            failures_left: AtomicU32::new(failures),
            followed: followed.clone(),
        });
        let tailer = EventTailer::new(
            Arc::new(mock(log)),
            recorder.clone(),
            Arc::new(Notify::new()),
            Duration::from_millis(100),
        )
        .with_hole_wait(Duration::from_secs(10))
        .with_followed_position(followed);
        (tailer, recorder)
    }

    #[tokio::test(start_paused = true)]
    async fn a_hole_held_by_a_claimed_row_is_waited_for_and_delivered_in_order_when_it_fills() {
        // Arrange: 1 and 3 are published; 2 is claimed, its publish in flight.
        let log = Arc::new(Mutex::new(Log { published: vec![1, 3], claimed: vec![2], ..Log::default() }));
        let (tailer, seen) = tailer(&log, 0);
        let mut position = Position { delivered: 0, hole_since: None };

        // Act and assert: 3 waits behind 2.
        tailer.catch_up(&mut position).await;
        assert_eq!(*seen.seen.lock().unwrap(), vec![1]);
        tokio::time::advance(Duration::from_secs(5)).await;
        tailer.catch_up(&mut position).await;
        assert_eq!(*seen.seen.lock().unwrap(), vec![1], "still within the wait");

        // 2 is published late: both arrive, in order.
        {
            let mut log = log.lock().unwrap();
            log.claimed.clear();
            log.published.push(2);
        }
        tailer.catch_up(&mut position).await;
        assert_eq!(*seen.seen.lock().unwrap(), vec![1, 2, 3]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_sequence_published_between_the_read_and_the_look_into_the_hole_is_read_again_not_passed() {
        // The page showed 3 but not 2, whose publish committed just after.
        let log = Arc::new(Mutex::new(Log { published: vec![1, 2, 3], claimed: vec![], not_yet_listed: vec![2] }));
        let (tailer, seen) = tailer(&log, 0);
        let mut position = Position { delivered: 0, hole_since: None };
        tailer.catch_up(&mut position).await;
        assert_eq!(*seen.seen.lock().unwrap(), vec![1], "2 is held (published): not given up");
        log.lock().unwrap().not_yet_listed.clear();
        tailer.catch_up(&mut position).await;
        assert_eq!(*seen.seen.lock().unwrap(), vec![1, 2, 3]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_sequence_no_row_holds_any_more_is_passed_at_once() {
        // 2 was claimed by a holder that lost the lease; the new holder
        // claimed the row again as 4: nothing can publish 2 now.
        let log = Arc::new(Mutex::new(Log { published: vec![1, 3, 4], ..Log::default() }));
        let (tailer, seen) = tailer(&log, 0);
        let mut position = Position { delivered: 0, hole_since: None };
        tailer.catch_up(&mut position).await;
        assert_eq!(*seen.seen.lock().unwrap(), vec![1, 3, 4]);
        assert_eq!(position.delivered, 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hole_that_never_fills_is_passed_after_the_bound_not_before() {
        let log = Arc::new(Mutex::new(Log { published: vec![2], claimed: vec![1], ..Log::default() }));
        let (tailer, seen) = tailer(&log, 0);
        let mut position = Position { delivered: 0, hole_since: None };
        tailer.catch_up(&mut position).await;
        tokio::time::advance(Duration::from_millis(9_900)).await;
        tailer.catch_up(&mut position).await;
        assert!(seen.seen.lock().unwrap().is_empty());
        tokio::time::advance(Duration::from_millis(200)).await;
        tailer.catch_up(&mut position).await;
        assert_eq!(*seen.seen.lock().unwrap(), vec![2]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_local_delivery_is_retried_never_skipped() {
        let log = Arc::new(Mutex::new(Log { published: vec![1, 2], ..Log::default() }));
        let (tailer, seen) = tailer(&log, 3);
        let mut position = Position { delivered: 0, hole_since: None };
        tailer.catch_up(&mut position).await;
        assert_eq!(*seen.seen.lock().unwrap(), vec![1, 2], "1 was retried until taken, then 2");
        assert_eq!(seen.failures_left.load(Ordering::SeqCst), 0);
    }
}
