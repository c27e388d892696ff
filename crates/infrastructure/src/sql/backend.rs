//! What a database must provide for the shared core: running its statements,
//! and the few operations whose SQL and locking differ between databases.

use async_trait::async_trait;
use smartscheduler_domain::ports::{
    ClaimedEvent, CommitAssignmentError, Fence, IdempotencyKey, PublishedRow, StoreError,
};
use smartscheduler_domain::{Assignment, DomainEvent, EventId, Job, Timestamp};

use super::{Columns, Statement};

/// What one assignment commits, all or nothing: the job's new status, the
/// assignment, its event with the event's groups, and the idempotency key.
#[derive(Debug)]
pub struct AssignmentCommit<'a> {
    /// The job, as it was before the assignment.
    pub job: &'a Job,
    /// The new assignment.
    pub assignment: &'a Assignment,
    /// Its `JobAssigned` event.
    pub event: &'a DomainEvent,
    /// The request's idempotency key, when it had one.
    pub idempotency: Option<IdempotencyKey>,
}

/// A delivery attempt of one event that failed.
#[derive(Debug)]
pub struct FailedAttempt {
    /// The event.
    pub event_id: EventId,
    /// Why it failed, for operators.
    pub error: String,
    /// When to try again; `None` gives up (the row becomes Failed).
    pub retry_at: Option<Timestamp>,
}

/// A database under the shared core. Cheap to clone.
#[async_trait]
pub trait SqlBackend: Clone + Send + Sync + 'static {
    /// A result row.
    type Row: Columns + Send + Sync;

    /// Whether replay serves events claimed but not yet marked published.
    /// One node delivers a claimed event before it marks it, so a client
    /// joining in between finds it only so; nodes of a cluster deliver what
    /// the log marks published, so they replay only that (a claim that a
    /// lost lease abandons is claimed again under another sequence).
    const REPLAYS_CLAIMED: bool;

    /// The rows `statement` reads.
    async fn fetch_all(&self, statement: Statement<'_>) -> Result<Vec<Self::Row>, StoreError>;
    /// The one row `statement` reads, if any.
    async fn fetch_optional(&self, statement: Statement<'_>) -> Result<Option<Self::Row>, StoreError>;
    /// Runs a write; the number of rows it changed.
    async fn execute(&self, statement: Statement<'_>) -> Result<u64, StoreError>;
    /// Runs writes in order in one transaction; the rows each changed.
    async fn execute_in_transaction(&self, statements: Vec<Statement<'_>>) -> Result<Vec<u64>, StoreError>;
    /// Closes the connections.
    async fn close(&self);

    /// Commits an assignment with its EventLog row or, when a rule refuses
    /// it, nothing.
    async fn commit_assignment(&self, commit: AssignmentCommit<'_>) -> Result<(), CommitAssignmentError>;
    /// See [`smartscheduler_domain::ports::EventLog::claim_due`].
    async fn claim_due(&self, now: Timestamp, limit: u32, fence: Fence) -> Result<Vec<ClaimedEvent>, StoreError>;
    /// See [`smartscheduler_domain::ports::EventLog::claim`].
    async fn claim(&self, events: Vec<DomainEvent>, fence: Fence) -> Result<Vec<ClaimedEvent>, StoreError>;
    /// See [`smartscheduler_domain::ports::EventLog::mark_published`].
    async fn mark_published(&self, rows: Vec<PublishedRow>, at: Timestamp, fence: Fence) -> Result<(), StoreError>;
    /// See [`smartscheduler_domain::ports::EventLog::record_failure`].
    async fn record_failure(&self, attempt: FailedAttempt, fence: Fence) -> Result<(), StoreError>;
}
