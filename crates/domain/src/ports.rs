//! Ports: what the application needs from the outside world. Adapters live
//! in `smartscheduler-infrastructure` (and `-realtime` for delivery); they map
//! their own errors into the ones here, so no driver error leaves them.
//!
//! Ports are held as `Arc<dyn Port>`. With the `mock` feature each has a
//! mockall mock (`MockJobRepository`, ...) for unit tests of the layers above.

use async_trait::async_trait;
use serde::Serialize;

use crate::acknowledgement::{JobAssignmentAcknowledged, JobAssignmentUnacknowledged};
use crate::assignment::Assignment;
use crate::cause::Cause;
use crate::contractor::Contractor;
use crate::events::{DomainEvent, Group, Sequence};
use crate::ids::{AssignmentId, ContractorId, EventId, JobId};
use crate::job::{Job, JobStatus};
use crate::presence::{HeldConnections, Presence, PresenceChanged, SettleScope};
use crate::values::{Region, Timestamp};

/// A failure of storage itself, not of the request. The driver's error is
/// kept as the `source()`, for the log; the message says only what failed.
/// Two are equal when they are of one kind with causes that read the same
/// (the cause itself has no equality): enough for tests and for matching.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or is overloaded; the caller may retry.
    #[error("storage unavailable")]
    Unavailable(#[source] Cause),
    /// Anything else (a bug, corrupt data).
    #[error("storage failed")]
    Unexpected(#[source] Cause),
    /// A claim or publish carried the proof of a publisher lease that has
    /// since moved to another holder: nothing was written.
    #[error("the publisher lease has moved to another holder")]
    LeaseLost,
}

impl PartialEq for StoreError {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Unavailable(a), Self::Unavailable(b)) | (Self::Unexpected(a), Self::Unexpected(b)) => {
                a.to_string() == b.to_string()
            }
            (Self::LeaseLost, Self::LeaseLost) => true,
            _ => false,
        }
    }
}

impl Eq for StoreError {}

/// Proof of the publisher lease that a claim or a publish carries. The
/// EventLog checks it in the same transaction as the write, so a holder that
/// lost the lease (stalled, partitioned, its session killed) cannot write
/// late: its write fails with [`StoreError::LeaseLost`] instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fence {
    /// One node, no lease (SQLite): nothing to check.
    Unfenced,
    /// The lease's epoch: it grows each time the lease changes hands.
    Epoch(i64),
}

/// Contractors.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait ContractorRepository: Send + Sync {
    /// Stores a new contractor.
    ///
    /// # Errors
    /// [`StoreError`] when storage fails.
    async fn insert(&self, contractor: &Contractor) -> Result<(), StoreError>;
    /// One contractor, or `None`.
    ///
    /// # Errors
    /// [`StoreError`] when storage fails.
    async fn get(&self, id: ContractorId) -> Result<Option<Contractor>, StoreError>;
    /// Contractors, optionally of one region, oldest first, at most `limit`.
    ///
    /// # Errors
    /// [`StoreError`] when storage fails.
    async fn list(&self, region: Option<Region>, limit: u32) -> Result<Vec<Contractor>, StoreError>;
}

/// Which jobs to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobFilter {
    /// Only this region.
    pub region: Option<Region>,
    /// Only this status.
    pub status: Option<JobStatus>,
    /// At most this many.
    pub limit: u32,
}

/// Jobs.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait JobRepository: Send + Sync {
    /// Stores a new job.
    ///
    /// # Errors
    /// [`StoreError`] when storage fails.
    async fn insert(&self, job: &Job) -> Result<(), StoreError>;
    /// One job, or `None`.
    ///
    /// # Errors
    /// [`StoreError`] when storage fails.
    async fn get(&self, id: JobId) -> Result<Option<Job>, StoreError>;
    /// Jobs matching `filter`, oldest first.
    ///
    /// # Errors
    /// [`StoreError`] when storage fails.
    async fn list(&self, filter: JobFilter) -> Result<Vec<Job>, StoreError>;
}

/// Assignments as they were committed, for reading (the commit itself is
/// [`AssignmentStore`]'s).
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait AssignmentRepository: Send + Sync {
    /// The assignment of `job`, or `None` while it is unassigned (or does not exist).
    ///
    /// # Errors
    /// [`StoreError`] when storage fails.
    async fn of_job(&self, job: JobId) -> Result<Option<Assignment>, StoreError>;
    /// The assignments of `contractor` with their jobs, newest first
    /// (by creation, then id), at most `limit`.
    ///
    /// # Errors
    /// [`StoreError`] when storage fails.
    async fn of_contractor(&self, contractor: ContractorId, limit: u32) -> Result<Vec<(Assignment, Job)>, StoreError>;
    /// The assignment `id`, with its acknowledgement.
    ///
    /// # Errors
    /// [`StoreError`] when storage fails.
    async fn get(&self, id: AssignmentId) -> Result<Option<Assignment>, StoreError>;
    /// The assignment whose `JobAssigned` is `event`.
    ///
    /// # Errors
    /// [`StoreError`] when storage fails.
    async fn of_event(&self, event: EventId) -> Result<Option<Assignment>, StoreError>;
}

/// Why the store refused to commit an assignment. The store re-checks inside
/// its transaction, so these hold even when requests race.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommitAssignmentError {
    /// The job no longer exists.
    #[error("job not found")]
    JobNotFound,
    /// The contractor no longer exists.
    #[error("contractor not found")]
    ContractorNotFound,
    /// Another assignment of this job committed first.
    #[error("job is already assigned")]
    JobAlreadyAssigned,
    /// The contractor has an assignment overlapping this one.
    #[error("contractor already has an overlapping assignment")]
    ContractorBusy,
    /// The idempotency key was stored by a request that committed first.
    #[error("the idempotency key is already used")]
    IdempotencyKeyTaken,
    /// Storage failed; nothing was written.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The unit of work of an assignment.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait AssignmentStore: Send + Sync {
    /// In ONE transaction: marks `job` Assigned (only if it is still
    /// Unassigned), stores `assignment` (only if the contractor exists and has
    /// no overlapping assignment) and appends `event` to the EventLog as
    /// Pending with its audience. Either all of it is committed or none.
    ///
    /// # Errors
    /// [`CommitAssignmentError`]; nothing is written then.
    async fn commit_assignment(
        &self,
        job: &Job,
        assignment: &Assignment,
        event: &DomainEvent,
        idempotency: Option<IdempotencyKey>,
    ) -> Result<(), CommitAssignmentError>;

    /// The assignment stored under an idempotency key no older than
    /// `not_before`, with the request fingerprint it was stored with.
    ///
    /// # Errors
    /// [`StoreError`].
    async fn find_idempotent(
        &self,
        scope: String,
        key: String,
        not_before: Timestamp,
    ) -> Result<Option<(String, Assignment)>, StoreError>;

    /// Forgets idempotency keys stored before `before`; returns how many.
    ///
    /// # Errors
    /// [`StoreError`].
    async fn purge_idempotency(&self, before: Timestamp) -> Result<u64, StoreError>;

    /// In ONE transaction: records the first acknowledgement of
    /// `acknowledged.assignment_id` and appends `acknowledged` to the
    /// EventLog as Pending. `false`, and nothing written, when the
    /// assignment was acknowledged already (a racing repeat came first).
    ///
    /// # Errors
    /// [`StoreError`]; nothing is written then.
    async fn acknowledge(&self, acknowledged: &JobAssignmentAcknowledged) -> Result<bool, StoreError>;

    /// Assignments whose acknowledgement deadline is at or before `now`,
    /// not acknowledged and not escalated yet, earliest deadline first, at
    /// most `limit`.
    ///
    /// # Errors
    /// [`StoreError`].
    async fn overdue(&self, now: Timestamp, limit: u32) -> Result<Vec<Assignment>, StoreError>;

    /// In ONE transaction: records that `unacknowledged.assignment_id` was
    /// escalated and appends `unacknowledged` to the EventLog as Pending.
    /// `false`, and nothing written, when it was acknowledged or escalated
    /// meanwhile (by another node, say): so an escalation is logged once.
    ///
    /// # Errors
    /// [`StoreError`]; nothing is written then.
    async fn escalate(&self, unacknowledged: &JobAssignmentUnacknowledged) -> Result<bool, StoreError>;
}

/// How long an `Idempotency-Key` is honoured: 24 hours. The use case asks
/// for keys no older, the stores refuse to reuse a live one, and retention
/// forgets older ones.
pub const IDEMPOTENCY_WINDOW_MILLIS: i64 = 24 * 60 * 60 * 1000;

/// An `Idempotency-Key` to store with an assignment, in the same
/// transaction, so that a repeat returns the first answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    /// Whose key it is (the token's subject): keys of different callers never collide.
    pub scope: String,
    /// The key as sent.
    pub key: String,
    /// What the request said (job and body), to tell a repeat from a reuse.
    pub fingerprint: String,
}

/// What an admin's retry of an event found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryOutcome {
    /// The row was Failed and is Pending again.
    Requeued,
    /// No such event.
    NotFound,
    /// The row is not Failed (Pending or Published): nothing to do.
    NotFailed,
}

/// Where an event stands in the EventLog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum EventStatus {
    /// Committed, not yet delivered to every handler.
    Pending,
    /// Every handler succeeded.
    Published,
    /// Handlers kept failing; an admin may retry it.
    Failed,
}

impl EventStatus {
    /// The stored and sent form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Published => "Published",
            Self::Failed => "Failed",
        }
    }
    /// Parses the stored or queried form.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "Pending" => Some(Self::Pending),
            "Published" => Some(Self::Published),
            "Failed" => Some(Self::Failed),
            _ => None,
        }
    }
}

/// An event's payload as the EventLog shows it: `sequence` is null until the
/// event is published.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoggedPayload {
    /// The event.
    #[serde(flatten)]
    pub event: DomainEvent,
    /// Its place in publish order, once published.
    pub sequence: Option<Sequence>,
}

/// One row of the EventLog, as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventLogEntry {
    /// The event's id.
    pub event_id: EventId,
    /// Its kind.
    pub event_type: String,
    /// Its place in publish order; null until published.
    pub sequence: Option<Sequence>,
    /// Pending, Published or Failed.
    pub status: EventStatus,
    /// Delivery attempts made so far.
    pub attempts: u32,
    /// When it happened.
    pub occurred_at_utc: Timestamp,
    /// When every handler had it.
    pub published_at_utc: Option<Timestamp>,
    /// The groups it was sent to.
    pub published_groups: Vec<Group>,
    /// The last handler error.
    pub last_error: Option<String>,
    /// The payload.
    pub payload: LoggedPayload,
}

/// Which EventLog rows to list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventQuery {
    /// Only rows published with a greater sequence (rows not yet published
    /// are listed only without this bound).
    pub after_sequence: Option<Sequence>,
    /// Only rows with this status.
    pub status: Option<EventStatus>,
    /// At most this many.
    pub limit: u32,
}

/// An event whose delivery is being attempted: sequenced, not yet published.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedEvent {
    /// The event.
    pub event: DomainEvent,
    /// The sequence given to this attempt.
    pub sequence: Sequence,
    /// Attempts before this one.
    pub attempts: u32,
}

/// A row that every handler took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedRow {
    /// The event.
    pub event_id: EventId,
    /// The sequence of the successful claim.
    pub sequence: Sequence,
    /// The groups it went to.
    pub groups: Vec<Group>,
}

/// The EventLog: the durable record of every event and its delivery.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait EventLog: Send + Sync {
    /// Takes the Pending rows that are due (`next attempt <= now`), in the
    /// order they were committed, at most `limit`, and gives each a fresh
    /// sequence from a counter that never goes back, in that order, in one
    /// transaction. A row's sequence is replaced at each attempt, so the
    /// sequence of a published row is its place in publish order.
    ///
    /// # Errors
    /// [`StoreError`] ([`StoreError::LeaseLost`] when `fence` is stale);
    /// nothing is claimed then.
    async fn claim_due(&self, now: Timestamp, limit: u32, fence: Fence) -> Result<Vec<ClaimedEvent>, StoreError>;
    /// Claims the given rows if they are still Pending (others are skipped),
    /// in the given order. Used for events handed over in memory right after
    /// their commit, which saves a read.
    ///
    /// # Errors
    /// [`StoreError`] ([`StoreError::LeaseLost`] when `fence` is stale);
    /// nothing is claimed then.
    async fn claim(&self, events: Vec<DomainEvent>, fence: Fence) -> Result<Vec<ClaimedEvent>, StoreError>;
    /// Marks claimed rows Published, each with the sequence of its claim and
    /// the groups it went to, in one transaction.
    ///
    /// # Errors
    /// [`StoreError`] ([`StoreError::LeaseLost`] when `fence` is stale);
    /// nothing is marked then.
    async fn mark_published(&self, published: Vec<PublishedRow>, at: Timestamp, fence: Fence)
        -> Result<(), StoreError>;
    /// Records a failed attempt: `attempts` grows by one, `lastError` is set,
    /// the attempt's sequence is given up (it will never be published), and
    /// the row stays Pending until `retry_at`, or becomes Failed when
    /// `retry_at` is `None`.
    ///
    /// # Errors
    /// [`StoreError`] ([`StoreError::LeaseLost`] when `fence` is stale).
    async fn record_failure(
        &self,
        event_id: EventId,
        error: String,
        retry_at: Option<Timestamp>,
        fence: Fence,
    ) -> Result<(), StoreError>;
    /// Which of the sequences `from..=to` a row holds now: published, or
    /// claimed and perhaps still being published. A follower that sees a
    /// later sequence published waits for these. Any other sequence in the
    /// range was given up (its attempt failed, or its claim was taken over
    /// by a new lease holder) and will never be published.
    ///
    /// # Errors
    /// [`StoreError`].
    async fn held_sequences(&self, from: Sequence, to: Sequence) -> Result<Vec<Sequence>, StoreError>;
    /// Rows for the API, by sequence (unpublished ones last, by commit order).
    ///
    /// # Errors
    /// [`StoreError`].
    async fn list(&self, query: EventQuery) -> Result<Vec<EventLogEntry>, StoreError>;
    /// One row, or `None`.
    ///
    /// # Errors
    /// [`StoreError`].
    async fn get(&self, event_id: EventId) -> Result<Option<EventLogEntry>, StoreError>;
    /// The sequenced events of `group` after `after`, in sequence order, at
    /// most `limit`: what a client that saw `after` has missed.
    ///
    /// # Errors
    /// [`StoreError`].
    async fn replay(
        &self,
        group: Group,
        after: Sequence,
        limit: u32,
    ) -> Result<Vec<(DomainEvent, Sequence)>, StoreError>;
    /// Makes a Failed row Pending again, due now, with its attempts reset.
    ///
    /// # Errors
    /// [`StoreError`].
    async fn retry(&self, event_id: EventId) -> Result<RetryOutcome, StoreError>;
    /// Deletes Published rows published before `before` and returns how
    /// many; raises the purge watermark to the highest sequence deleted.
    ///
    /// # Errors
    /// [`StoreError`].
    async fn purge(&self, before: Timestamp) -> Result<u64, StoreError>;
    /// The highest sequence ever purged (0 when none): a replay from below it
    /// would have a gap.
    ///
    /// # Errors
    /// [`StoreError`].
    async fn purged_through(&self) -> Result<Sequence, StoreError>;
    /// The highest sequence of a Published row (0 when none): where a node
    /// that starts following the log begins.
    ///
    /// # Errors
    /// [`StoreError`].
    async fn highest_published(&self) -> Result<Sequence, StoreError>;
    /// How many rows are Pending and how many Failed.
    ///
    /// # Errors
    /// [`StoreError`].
    async fn backlog(&self) -> Result<(u64, u64), StoreError>;
}

/// The right to publish: with several nodes on one database, exactly one
/// node's relay claims and publishes at a time, so `sequence` follows one
/// publish order cluster-wide. The lease expires unless its holder renews
/// it, so a node that dies, freezes or is cut off loses it and another takes
/// it within the lease's time; every claim and publish carries the lease's
/// [`Fence`], so the old holder cannot write after that.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait PublisherLease: Send + Sync {
    /// Takes or renews the lease; its fence while this node holds it, `None`
    /// while it does not. Cheap to call often (an adapter may cache the
    /// answer for a moment).
    async fn hold(&self) -> Option<Fence>;
    /// Gives the lease up now, if held (a graceful stop), so that another
    /// node need not wait for it to expire.
    async fn release(&self);
}

/// Hands committed events to delivery.
#[cfg_attr(feature = "mock", mockall::automock)]
pub trait EventPublisher: Send + Sync {
    /// Takes a committed event for delivery after the commit. Never blocks
    /// and never fails: an event it cannot take now waits in the EventLog
    /// and is picked up from there.
    fn publish(&self, event: DomainEvent);
}

/// Tells a region's dispatchers that a contractor came online or went
/// offline (the hub's `PresenceChanged`).
#[cfg_attr(feature = "mock", mockall::automock)]
pub trait PresenceNotifier: Send + Sync {
    /// Sends `change` to its audience now. Never blocks and never fails:
    /// presence is not durable, and `GET /api/presence` has the state.
    fn notify(&self, change: PresenceChanged);
}

/// Where presence is decided: one node's memory, or a store that every
/// node of a cluster shares. Each node records how many hub connections of
/// each contractor it holds; `settle` turns the union over live nodes into
/// online and offline, each change made once however many nodes settle.
#[async_trait]
pub trait PresenceLedger: Send + Sync {
    /// This node holds `held` now (a count of 0: its last one here closed).
    ///
    /// # Errors
    /// [`StoreError`] when storage fails; the caller records them again later.
    async fn record(&self, held: &[HeldConnections]) -> Result<(), StoreError>;

    /// Says this node is alive; a node that stops saying it is dead, and its
    /// connections no longer count. `true` when the ledger did not know the
    /// node (its first heartbeat, or it had been given up for dead): the
    /// node then records everything it holds again.
    ///
    /// # Errors
    /// [`StoreError`] when storage fails.
    async fn heartbeat(&self) -> Result<bool, StoreError>;

    /// Makes the changes that are due among `scope`: online at a first
    /// connection on any live node, offline once no live node holds one and
    /// the grace since the last has passed. Each change is made once and
    /// told, through the [`PresenceNotifier`] of every node, to the region's
    /// dispatchers. Returns the changes this call made.
    ///
    /// # Errors
    /// [`StoreError`] when storage fails; the next call makes up for it.
    async fn settle(&self, scope: SettleScope<'_>) -> Result<Vec<PresenceChanged>, StoreError>;

    /// Where each of `contractors` stands, in the same order.
    ///
    /// # Errors
    /// [`StoreError`] when storage fails.
    async fn presence_of(&self, contractors: &[ContractorId]) -> Result<Vec<Presence>, StoreError>;
}

/// Hub connection tokens already used. A token opens one connection: with
/// several nodes on one database the record is shared, so a token used on
/// one node is refused on every other.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait UsedConnectionTokens: Send + Sync {
    /// Records the token `id` as used, keeping the record until
    /// `expires_at` (at least the token's own expiry). `Ok(true)` the first
    /// time; `Ok(false)` when it was already used, here or on another node.
    ///
    /// # Errors
    /// [`StoreError`] when storage fails; then the token must not be honoured.
    async fn mark_used(&self, id: &str, expires_at: Timestamp) -> Result<bool, StoreError>;
}
