//! Publishing after commit: handler registration, the in-process publisher
//! and the outbox relay.
//!
//! The EventLog table is the queue of record. The use case commits a Pending
//! row and hands the event to [`InProcessPublisher`], which only `try_send`s
//! it onto a bounded in-memory queue: it never blocks and never fails. The
//! [`OutboxRelay`], one task, takes events from that queue (and, at start and
//! every `poll_interval`, the due Pending rows from the table: what a full
//! queue, a crash or a failed attempt left behind), gives each a sequence in
//! the order it publishes them, runs the handlers registered for its type,
//! and marks the row Published, or records the failure and retries it later
//! with exponential backoff and jitter, up to `max_attempts`, then Failed.
//!
//! With several nodes, the relay publishes only while it holds the
//! [`PublisherLease`], and every claim and publish carries the lease's
//! [`Fence`]: the EventLog refuses the writes of a holder that has lost the
//! lease ([`StoreError::LeaseLost`]), so a stalled or cut-off node cannot
//! publish late, out of order, beside the new holder. Its claimed rows stay
//! Pending, and the new holder claims them again with new sequences.
//!
//! Handlers register at start-up into a [`HandlerRegistry`] that is frozen
//! before the relay starts: publishing reads it without a lock.
//!
//! Tracing: the publisher carries the caller's span (for an assignment, the
//! use case's span inside the HTTP request's span) along with the event, and
//! the relay delivers the event inside a `deliver` span whose parent is that
//! span. One trace thus runs from the request through the commit to every
//! handler (the hub's fan-out), carrying the request, job, assignment and
//! event ids, although the relay is another task. Events the relay finds in
//! the table instead (a full queue, a restart, a retry) get a `deliver` span
//! of their own with the event id.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rand::Rng;
use smartscheduler_domain::ports::{
    ClaimedEvent, EventLog, EventPublisher, Fence, PublishedRow, PublisherLease, StoreError,
};
use smartscheduler_domain::{Cause, Chain, DomainEvent, EventId, EventType, PublishedEvent, Timestamp};
use tokio::sync::{mpsc, watch, Notify};
use tracing::Instrument;

/// A handler's failure: logged with its causes, recorded on the row (its
/// message, as `lastError`), and retried. Wraps what failed (`"text".into()`
/// where there is no error value).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct HandlerError(pub Cause);

/// Something that reacts to published events of one type.
#[async_trait]
pub trait EventHandler: Send + Sync {
    /// A short name for logs and `lastError`.
    fn name(&self) -> &str;
    /// Handles one event. Runs on the relay task: a handler must be quick
    /// (hand work to its own queue) because events are delivered in order.
    ///
    /// # Errors
    /// [`HandlerError`]; the event is retried later, with every handler.
    async fn handle(&self, event: &PublishedEvent) -> Result<(), HandlerError>;
}

/// Handlers by event type. Built at start-up, then frozen in an `Arc`.
#[derive(Default, Clone)]
pub struct HandlerRegistry {
    handlers: HashMap<EventType, Vec<Arc<dyn EventHandler>>>,
}

impl HandlerRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }
    /// Registers `handler` for events of `event_type`; handlers of one type
    /// run in registration order.
    pub fn register(mut self, event_type: EventType, handler: Arc<dyn EventHandler>) -> Self {
        self.handlers.entry(event_type).or_default().push(handler);
        self
    }
    /// The handlers of `event_type`.
    pub fn handlers(&self, event_type: EventType) -> &[Arc<dyn EventHandler>] {
        self.handlers.get(&event_type).map(Vec::as_slice).unwrap_or(&[])
    }
}

/// How the relay works. Defaults suit one node.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Capacity of the in-memory queue between the use case and the relay.
    pub queue_capacity: usize,
    /// How many events one claim takes.
    pub batch_size: u32,
    /// How often the table is scanned for due Pending rows.
    pub poll_interval: Duration,
    /// Attempts before a row becomes Failed.
    pub max_attempts: u32,
    /// Delay before the first retry; doubles each attempt.
    pub base_backoff: Duration,
    /// Longest delay between retries.
    pub max_backoff: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            queue_capacity: 4096,
            batch_size: 256,
            poll_interval: Duration::from_millis(500),
            max_attempts: 10,
            base_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(60),
        }
    }
}

/// The [`EventPublisher`] the use cases hold.
pub struct InProcessPublisher {
    queue: mpsc::Sender<Queued>,
    overflow: Arc<Notify>,
}

impl EventPublisher for InProcessPublisher {
    fn publish(&self, event: DomainEvent) {
        if let Err(err) = self.queue.try_send(Queued { event, span: tracing::Span::current() }) {
            // The row is committed; the relay's scan will find it.
            let event_id = match &err {
                mpsc::error::TrySendError::Full(q) | mpsc::error::TrySendError::Closed(q) => q.event.event_id(),
            };
            tracing::debug!(%event_id, "publish queue full; the event waits in the EventLog");
            self.overflow.notify_one();
        }
    }
}

/// An event handed over after commit, with the span of whoever committed it.
struct Queued {
    event: DomainEvent,
    span: tracing::Span,
}

/// A write refused by the fence: another node took the lease over and
/// publishes these rows itself. Nothing is lost and nothing is retried here.
fn lease_lost(what: &str) {
    metrics::counter!("smartscheduler_lease_fenced_writes_total").increment(1);
    tracing::warn!(what, "the publisher lease moved to another node: this node's write was refused, as it must be");
}

/// The task that delivers committed events. See the module docs.
pub struct OutboxRelay {
    lease: Option<Arc<dyn PublisherLease>>,
    published: Option<watch::Sender<i64>>,
    log: Arc<dyn EventLog>,
    handlers: Arc<HandlerRegistry>,
    queue: mpsc::Receiver<Queued>,
    overflow: Arc<Notify>,
    config: RelayConfig,
}

/// Builds the publisher and its relay; spawn [`OutboxRelay::run`].
pub fn outbox(
    log: Arc<dyn EventLog>,
    handlers: HandlerRegistry,
    config: RelayConfig,
) -> (Arc<InProcessPublisher>, OutboxRelay) {
    let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
    let overflow = Arc::new(Notify::new());
    let publisher = Arc::new(InProcessPublisher { queue: tx, overflow: overflow.clone() });
    let relay =
        OutboxRelay { lease: None, published: None, log, handlers: Arc::new(handlers), queue: rx, overflow, config };
    (publisher, relay)
}

impl OutboxRelay {
    /// Publishes only while `lease` is held (several nodes, one database).
    pub fn with_lease(mut self, lease: Arc<dyn PublisherLease>) -> Self {
        self.lease = Some(lease);
        self
    }

    /// Announces the highest sequence published after each batch (for
    /// [`crate::tailer`] and the cross-node bus).
    pub fn with_published_signal(mut self, published: watch::Sender<i64>) -> Self {
        self.published = Some(published);
        self
    }

    /// The fence to write with while this node may publish; `None` while
    /// another node holds the lease.
    async fn leading(&self) -> Option<Fence> {
        match &self.lease {
            None => Some(Fence::Unfenced),
            Some(lease) => lease.hold().await,
        }
    }

    /// Runs until `shutdown` completes, then delivers what is already queued
    /// and returns. Rows left Pending are published at the next start.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        // Crash recovery: rows committed but never published.
        self.drain_due().await;
        let mut ticker = tokio::time::interval(self.config.poll_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Vec::with_capacity(self.config.batch_size as usize);
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                n = self.queue.recv_many(&mut batch, self.config.batch_size as usize) => {
                    if n == 0 { break; }
                    let events = std::mem::take(&mut batch);
                    self.deliver_queued(events).await;
                }
                () = self.overflow.notified() => self.drain_due().await,
                _ = ticker.tick() => self.drain_due().await,
            }
        }
        // Drain what the queue holds so a graceful stop publishes it now.
        self.queue.close();
        while let Some(event) = self.queue.recv().await {
            batch.push(event);
        }
        if !batch.is_empty() {
            self.deliver_queued(batch).await;
        }
        if let Some(lease) = &self.lease {
            lease.release().await;
        }
        tracing::info!("outbox relay stopped");
    }

    async fn deliver_queued(&self, queued: Vec<Queued>) {
        let Some(fence) = self.leading().await else {
            // The rows are committed; the node holding the lease scans them.
            return;
        };
        let mut spans = HashMap::with_capacity(queued.len());
        let events = queued
            .into_iter()
            .map(|Queued { event, span }| {
                spans.insert(event.event_id(), span);
                event
            })
            .collect();
        match self.log.claim(events, fence).await {
            Ok(claimed) => {
                self.deliver(claimed, spans, fence).await;
            }
            Err(StoreError::LeaseLost) => lease_lost("claim"),
            Err(err) => {
                tracing::warn!(error = %Chain(&err), "could not claim queued events; they stay Pending for the next scan")
            }
        }
    }

    /// Publishes every due Pending row, batch after batch.
    async fn drain_due(&self) {
        loop {
            // Asked again for each batch, so that a long backlog renews the lease.
            let Some(fence) = self.leading().await else {
                return;
            };
            match self.log.claim_due(Timestamp::now(), self.config.batch_size, fence).await {
                Ok(claimed) => {
                    let full = claimed.len() as u32 >= self.config.batch_size;
                    if !self.deliver(claimed, HashMap::new(), fence).await || !full {
                        return;
                    }
                }
                Err(StoreError::LeaseLost) => return lease_lost("claim"),
                Err(err) => {
                    tracing::warn!(error = %Chain(&err), "could not scan the EventLog; will try again");
                    return;
                }
            }
        }
    }

    /// Runs the handlers of each claimed event, inside a `deliver` span that
    /// is a child of the span the event was published from, when known.
    /// Returns whether the events were marked Published.
    async fn deliver(
        &self,
        claimed: Vec<ClaimedEvent>,
        mut spans: HashMap<EventId, tracing::Span>,
        fence: Fence,
    ) -> bool {
        if claimed.is_empty() {
            return true;
        }
        let mut published = Vec::with_capacity(claimed.len());
        let mut lags = Vec::with_capacity(claimed.len());
        for ClaimedEvent { event, sequence, attempts } in claimed {
            if attempts > 0 {
                metrics::counter!("smartscheduler_event_retries_total").increment(1);
            }
            let event_id = event.event_id();
            let groups = event.audience();
            let event_type = event.event_type();
            let published_event = PublishedEvent { event, sequence };
            let parent = spans.remove(&event_id).unwrap_or_else(tracing::Span::none);
            let span = tracing::info_span!(
                parent: &parent,
                "deliver",
                %event_id,
                event_type = event_type.as_str(),
                sequence = sequence.0,
                attempt = attempts + 1
            );
            let failure = self.run_handlers(&published_event).instrument(span.clone()).await;
            match failure {
                None => {
                    span.in_scope(|| tracing::debug!(groups = groups.len(), "event delivered"));
                    published.push(PublishedRow { event_id, sequence, groups });
                    lags.push(published_event.event.occurred_at_utc());
                }
                Some((handler, err)) => {
                    let attempt = attempts + 1;
                    let retry_at = (attempt < self.config.max_attempts)
                        .then(|| Timestamp::now().plus_millis(self.backoff(attempt)));
                    span.in_scope(|| {
                        let error = Chain(&err);
                        tracing::warn!(%event_id, attempt, handler, %error, will_retry = retry_at.is_some(), "event handler failed");
                    });
                    // The row's `lastError` is read by clients: the message, not the causes below it.
                    let error = format!("{handler}: {err}");
                    let outcome = if retry_at.is_some() { "retry_scheduled" } else { "failed" };
                    metrics::counter!("smartscheduler_event_failures_total", "outcome" => outcome).increment(1);
                    match self.log.record_failure(event_id, error, retry_at, fence).await {
                        Ok(()) => {}
                        Err(StoreError::LeaseLost) => lease_lost("record a failure"),
                        Err(err) => {
                            tracing::warn!(%event_id, error = %Chain(&err), "could not record a handler failure")
                        }
                    }
                }
            }
        }
        if published.is_empty() {
            return true;
        }
        let count = published.len();
        let highest = published.iter().map(|p| p.sequence.0).max();
        let now = Timestamp::now();
        match self.log.mark_published(published, now, fence).await {
            Ok(()) => {}
            Err(StoreError::LeaseLost) => {
                lease_lost("publish");
                return false;
            }
            Err(err) => {
                // The rows stay Pending and are delivered again: at-least-once.
                tracing::warn!(error = %Chain(&err), count, "could not mark events Published; they will be delivered again");
                return false;
            }
        }
        metrics::counter!("smartscheduler_events_published_total").increment(count as u64);
        if let (Some(signal), Some(highest)) = (&self.published, highest) {
            signal.send_replace(highest);
        }
        let lag = metrics::histogram!("smartscheduler_publish_lag_seconds");
        for occurred in lags {
            lag.record((now.unix_millis() - occurred.unix_millis()).max(0) as f64 / 1000.0);
        }
        true
    }

    /// Runs every handler of the event's type in order; the first failure
    /// stops it and is returned with the failing handler's name.
    async fn run_handlers(&self, event: &PublishedEvent) -> Option<(&str, HandlerError)> {
        for handler in self.handlers.handlers(event.event.event_type()) {
            if let Err(err) = handler.handle(event).await {
                return Some((handler.name(), err));
            }
        }
        None
    }

    /// Exponential backoff with full jitter, in milliseconds.
    fn backoff(&self, attempt: u32) -> i64 {
        let base = self.config.base_backoff.as_millis() as u64;
        let cap = self.config.max_backoff.as_millis() as u64;
        let exp = base.saturating_mul(1u64 << attempt.saturating_sub(1).min(30)).min(cap).max(1);
        rand::rng().random_range(exp / 2..=exp) as i64
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use smartscheduler_domain::ports::MockEventLog;
    use smartscheduler_domain::{
        AssignmentSource, Contractor, DurationMinutes, Job, JobType, NewAssignment, PersonName, Region, Sequence,
        TimeRange,
    };
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Mutex;

    /// A `JobAssigned` of a fresh job and contractor (also for the tailer's tests).
    pub(crate) fn event() -> DomainEvent {
        let now = Timestamp::now();
        let mut job = Job::create(
            JobType::new("Flooring").unwrap(),
            None,
            Region::new("north").unwrap(),
            DurationMinutes::new(60).unwrap(),
            None,
            None,
            now,
        );
        let c =
            Contractor::create(PersonName::new("Ana").unwrap(), Region::new("north").unwrap(), vec![], now).unwrap();
        let request = NewAssignment {
            contractor_id: c.id(),
            range: TimeRange::new(now, now.plus_millis(1000)).unwrap(),
            source: AssignmentSource::Manual,
            audit_id: None,
        };
        job.assign(&c, request, now).unwrap().1.into()
    }

    struct Recorder {
        seen: Mutex<Vec<Sequence>>,
        fail_first: AtomicU32,
    }

    #[async_trait]
    impl EventHandler for Recorder {
        fn name(&self) -> &str {
            "recorder"
        }
        async fn handle(&self, event: &PublishedEvent) -> Result<(), HandlerError> {
            if self.fail_first.load(Ordering::SeqCst) > 0 {
                self.fail_first.fetch_sub(1, Ordering::SeqCst);
                return Err(HandlerError("boom".into()));
            }
            self.seen.lock().unwrap().push(event.sequence);
            Ok(())
        }
    }

    fn config() -> RelayConfig {
        RelayConfig { poll_interval: Duration::from_secs(3600), ..RelayConfig::default() }
    }

    #[tokio::test]
    async fn a_queued_event_reaches_its_handler_and_is_marked_published_with_its_groups() {
        let e = event();
        let expected_groups = e.audience();
        let mut log = MockEventLog::new();
        log.expect_claim_due().returning(|_, _, _| Ok(vec![]));
        log.expect_claim().times(1).returning(|events, _| {
            Ok(events.into_iter().map(|event| ClaimedEvent { event, sequence: Sequence(7), attempts: 0 }).collect())
        });
        let (tx, mut rx) = mpsc::unbounded_channel();
        log.expect_mark_published().times(1).returning(move |rows, _, _| {
            tx.send(rows).unwrap();
            Ok(())
        });
        let recorder = Arc::new(Recorder { seen: Mutex::default(), fail_first: AtomicU32::new(0) });
        let registry = HandlerRegistry::new().register(EventType::JobAssigned, recorder.clone());
        let (publisher, relay) = outbox(Arc::new(log), registry, config());
        let stop = Arc::new(Notify::new());
        let s = stop.clone();
        let task = tokio::spawn(relay.run(async move { s.notified().await }));

        publisher.publish(e.clone());
        let rows = rx.recv().await.unwrap();
        assert_eq!(rows, vec![PublishedRow { event_id: e.event_id(), sequence: Sequence(7), groups: expected_groups }]);
        assert_eq!(*recorder.seen.lock().unwrap(), vec![Sequence(7)]);
        stop.notify_one();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_failing_handler_is_recorded_and_retried_later_never_marked_published() {
        let e = event();
        let mut log = MockEventLog::new();
        log.expect_claim_due().returning(|_, _, _| Ok(vec![]));
        log.expect_claim().returning(|events, _| {
            Ok(events.into_iter().map(|event| ClaimedEvent { event, sequence: Sequence(1), attempts: 0 }).collect())
        });
        log.expect_mark_published().never();
        let (tx, mut rx) = mpsc::unbounded_channel();
        log.expect_record_failure().times(1).returning(move |id, error, retry_at, _| {
            tx.send((id, error, retry_at)).unwrap();
            Ok(())
        });
        let recorder = Arc::new(Recorder { seen: Mutex::default(), fail_first: AtomicU32::new(1) });
        let registry = HandlerRegistry::new().register(EventType::JobAssigned, recorder);
        let (publisher, relay) = outbox(Arc::new(log), registry, config());
        let stop = Arc::new(Notify::new());
        let s = stop.clone();
        let task = tokio::spawn(relay.run(async move { s.notified().await }));

        let before = Timestamp::now();
        publisher.publish(e.clone());
        let (id, error, retry_at) = rx.recv().await.unwrap();
        assert_eq!(id, e.event_id());
        assert_eq!(error, "recorder: boom");
        assert!(retry_at.expect("retried, not Failed") > before);
        stop.notify_one();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn the_last_allowed_attempt_marks_the_row_failed() {
        let mut log = MockEventLog::new();
        let e = event();
        let mut first = true;
        log.expect_claim_due().returning(move |_, _, _| {
            let claimed = if first {
                vec![ClaimedEvent { event: e.clone(), sequence: Sequence(3), attempts: 2 }]
            } else {
                vec![]
            };
            first = false;
            Ok(claimed)
        });
        let failures = Arc::new(Mutex::new(Vec::new()));
        let f = failures.clone();
        log.expect_record_failure().returning(move |_, _, retry_at, _| {
            f.lock().unwrap().push(retry_at);
            Ok(())
        });
        let recorder = Arc::new(Recorder { seen: Mutex::default(), fail_first: AtomicU32::new(5) });
        let registry = HandlerRegistry::new().register(EventType::JobAssigned, recorder);
        let (_publisher, relay) = outbox(Arc::new(log), registry, RelayConfig { max_attempts: 3, ..config() });
        relay.run(async {}).await;
        assert_eq!(*failures.lock().unwrap(), vec![None], "third failed attempt of three: Failed, no retry time");
    }

    #[tokio::test]
    async fn every_claim_and_publish_carries_the_lease_fence_and_a_refused_publish_is_dropped_not_retried() {
        use smartscheduler_domain::ports::MockPublisherLease;
        let e = event();
        let mut lease = MockPublisherLease::new();
        lease.expect_hold().returning(|| Some(Fence::Epoch(4)));
        lease.expect_release().times(1).returning(|| ());
        let mut log = MockEventLog::new();
        log.expect_claim_due().withf(|_, _, fence| *fence == Fence::Epoch(4)).returning(|_, _, _| Ok(vec![]));
        log.expect_claim().withf(|_, fence| *fence == Fence::Epoch(4)).times(1).returning(|events, _| {
            Ok(events.into_iter().map(|event| ClaimedEvent { event, sequence: Sequence(9), attempts: 0 }).collect())
        });
        let (tx, mut rx) = mpsc::unbounded_channel();
        // The lease moved between the claim and the publish: the store refuses.
        log.expect_mark_published().withf(|_, _, fence| *fence == Fence::Epoch(4)).times(1).returning(
            move |rows, _, _| {
                tx.send(rows).unwrap();
                Err(StoreError::LeaseLost)
            },
        );
        // Not a handler failure: the new holder publishes the row.
        log.expect_record_failure().never();
        let recorder = Arc::new(Recorder { seen: Mutex::default(), fail_first: AtomicU32::new(0) });
        let registry = HandlerRegistry::new().register(EventType::JobAssigned, recorder);
        let (publisher, relay) = outbox(Arc::new(log), registry, config());
        let relay = relay.with_lease(Arc::new(lease));
        let stop = Arc::new(Notify::new());
        let s = stop.clone();
        let task = tokio::spawn(relay.run(async move { s.notified().await }));

        publisher.publish(e.clone());
        let rows = rx.recv().await.unwrap();
        assert_eq!(rows[0].event_id, e.event_id());
        stop.notify_one();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_node_without_the_lease_claims_nothing() {
        use smartscheduler_domain::ports::MockPublisherLease;
        let mut lease = MockPublisherLease::new();
        lease.expect_hold().returning(|| None);
        lease.expect_release().returning(|| ());
        let mut log = MockEventLog::new();
        log.expect_claim_due().never();
        log.expect_claim().never();
        let (publisher, relay) = outbox(Arc::new(log), HandlerRegistry::new(), config());
        let relay = relay.with_lease(Arc::new(lease));
        publisher.publish(event());
        relay.run(async {}).await;
    }

    #[tokio::test]
    async fn a_full_queue_never_blocks_or_fails_the_publisher() {
        let log = MockEventLog::new();
        let (publisher, _relay) =
            outbox(Arc::new(log), HandlerRegistry::new(), RelayConfig { queue_capacity: 1, ..config() });
        for _ in 0..100 {
            publisher.publish(event());
        }
        // Reaching here is the assertion: 99 events overflowed without blocking.
        assert_eq!(publisher.queue.capacity(), 0);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let (_, relay) = outbox(Arc::new(MockEventLog::new()), HandlerRegistry::new(), config());
        for attempt in 1..40 {
            let ms = relay.backoff(attempt);
            assert!((1..=60_000).contains(&ms), "attempt {attempt}: {ms}");
        }
        assert!(relay.backoff(1) <= 200);
        assert!(relay.backoff(20) >= 30_000);
    }
}
