//! Group commit, shared by both backends: one task per store takes every
//! assignment waiting (up to [`MAX_GROUP`]) and commits them in ONE
//! transaction, so a burst pays one transaction, one flush and a fixed number
//! of statements instead of that many per assignment.
//!
//! What each database does differently, reading what the group must be
//! checked against and writing the accepted rows, is a [`GroupWriter`]. What
//! both do alike is here: the assignment as a row ready to bind
//! ([`AssignmentRow`], JSON both databases read), judging a group in order
//! against the database and against itself ([`judge`]), and the task that
//! falls back to one transaction per assignment when a group fails as a
//! whole, so one bad request never fails its neighbours.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use smartscheduler_domain::ports::{CommitAssignmentError, IdempotencyKey, StoreError};
use smartscheduler_domain::{Chain, JobStatus, Timestamp};
use tokio::sync::{mpsc, oneshot};

use super::AssignmentCommit;
use crate::errors::{corrupt, store_error};

/// Most assignments committed in one transaction.
pub const MAX_GROUP: usize = 256;

/// One assignment's outcome.
pub(crate) type Outcome = Result<(), CommitAssignmentError>;

/// Everything one assignment writes, serialized by the caller (off the
/// group-commit task).
#[derive(Debug)]
pub(crate) struct AssignmentRow {
    pub(crate) job_id: String,
    pub(crate) assignment_id: String,
    pub(crate) contractor_id: String,
    pub(crate) start_at: i64,
    pub(crate) end_at: i64,
    source: &'static str,
    audit_id: Option<String>,
    region: String,
    pub(crate) created_at: i64,
    /// When the contractor should have acknowledged it (escalation on).
    ack_deadline: Option<i64>,
    pub(crate) event_id: String,
    event_type: &'static str,
    aggregate_id: String,
    payload: String,
    occurred_at: i64,
    /// The audience: a JSON array of group names.
    groups: serde_json::Value,
    pub(crate) idempotency: Option<IdempotencyKey>,
}

impl AssignmentRow {
    pub(crate) fn new(commit: AssignmentCommit<'_>) -> Result<Self, StoreError> {
        let AssignmentCommit { job, assignment, event, idempotency } = commit;
        let range = assignment.range();
        Ok(Self {
            job_id: job.id().to_string(),
            assignment_id: assignment.id().to_string(),
            contractor_id: assignment.contractor_id().to_string(),
            start_at: range.start().unix_millis(),
            end_at: range.end().unix_millis(),
            source: assignment.source().as_str(),
            audit_id: assignment.audit_id().map(|a| a.to_string()),
            region: assignment.region().as_str().to_owned(),
            created_at: assignment.created_at_utc().unix_millis(),
            ack_deadline: assignment.acknowledgement().deadline_utc.map(Timestamp::unix_millis),
            event_id: event.event_id().to_string(),
            event_type: event.event_type().as_str(),
            aggregate_id: event.aggregate_id().to_string(),
            payload: serde_json::to_string(event).map_err(corrupt)?,
            occurred_at: event.occurred_at_utc().unix_millis(),
            groups: serde_json::to_value(event.audience()).map_err(corrupt)?,
            idempotency,
        })
    }

    /// The row as the backends' group writes read it (one element of a JSON array).
    pub(crate) fn to_json(&self) -> serde_json::Value {
        let key = self.idempotency.as_ref();
        serde_json::json!({
            "id": self.assignment_id, "job": self.job_id, "contractor": self.contractor_id,
            "start": self.start_at, "end": self.end_at, "source": self.source, "audit": self.audit_id,
            "region": self.region, "created": self.created_at, "deadline": self.ack_deadline,
            "event": self.event_id, "type": self.event_type,
            "aggregate": self.aggregate_id, "payload": self.payload, "occurred": self.occurred_at,
            "groups": self.groups, "scope": key.map(|k| &k.scope), "key": key.map(|k| &k.key),
            "fingerprint": key.map(|k| &k.fingerprint),
        })
    }

    /// What the check reads for this row: its job, contractor, range and
    /// key, and the oldest key creation that is still live.
    pub(crate) fn probe(&self) -> serde_json::Value {
        let (scope, key) = self.idempotency.as_ref().map(|k| (k.scope.as_str(), k.key.as_str())).unzip();
        serde_json::json!({
            "job": self.job_id, "contractor": self.contractor_id, "start": self.start_at, "end": self.end_at,
            "scope": scope, "key": key,
            "live": self.created_at - smartscheduler_domain::ports::IDEMPOTENCY_WINDOW_MILLIS,
        })
    }
}

/// What the database says of one assignment of a group, read inside the
/// group's transaction.
#[derive(Debug)]
pub(crate) struct Check {
    /// The job's status; `None` when there is no such job.
    pub(crate) job_status: Option<String>,
    /// The job already has an assignment.
    pub(crate) job_taken: bool,
    pub(crate) contractor_exists: bool,
    /// The contractor has an assignment overlapping this range.
    pub(crate) busy: bool,
    /// The idempotency key is held by a live row.
    pub(crate) key_taken: bool,
}

impl Check {
    /// The checks a backend's check statement returned, one row per
    /// assignment in group order, with the columns named as the fields.
    pub(crate) fn read_all<R>(found: &[R], expected: usize) -> Result<Vec<Self>, StoreError>
    where
        R: sqlx::Row,
        for<'r> bool: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        for<'n> &'n str: sqlx::ColumnIndex<R>,
    {
        if found.len() != expected {
            return Err(StoreError::Unexpected(format!("checked {} of {expected} assignments", found.len()).into()));
        }
        found
            .iter()
            .map(|row| {
                Ok(Self {
                    job_status: row.try_get("job_status").map_err(store_error)?,
                    job_taken: row.try_get("job_taken").map_err(store_error)?,
                    contractor_exists: row.try_get("contractor_exists").map_err(store_error)?,
                    busy: row.try_get("busy").map_err(store_error)?,
                    key_taken: row.try_get("key_taken").map_err(store_error)?,
                })
            })
            .collect()
    }
}

/// Each row's outcome, in group order, and the accepted rows as JSON: a row
/// is refused for what the database holds (`checks`) or for what an earlier
/// accepted row of the same group takes (its job, an overlapping range of
/// its contractor, its idempotency key).
pub(crate) fn judge(rows: &[&AssignmentRow], checks: Vec<Check>) -> (Vec<Outcome>, Vec<serde_json::Value>) {
    let mut outcomes = Vec::with_capacity(rows.len());
    let mut accepted = Vec::with_capacity(rows.len());
    let mut jobs_taken = HashSet::new();
    let mut booked: HashMap<&str, Vec<(i64, i64)>> = HashMap::new();
    let mut keys_taken = HashSet::new();
    for (row, check) in rows.iter().zip(checks) {
        let overlaps = booked
            .get(row.contractor_id.as_str())
            .is_some_and(|ranges| ranges.iter().any(|(start, end)| *start < row.end_at && *end > row.start_at));
        let key = row.idempotency.as_ref().map(|k| (k.scope.as_str(), k.key.as_str()));
        let refusal = match check.job_status.as_deref() {
            None => Some(CommitAssignmentError::JobNotFound),
            Some(status)
                if status != JobStatus::Unassigned.as_str()
                    || check.job_taken
                    || jobs_taken.contains(row.job_id.as_str()) =>
            {
                Some(CommitAssignmentError::JobAlreadyAssigned)
            }
            Some(_) if !check.contractor_exists => Some(CommitAssignmentError::ContractorNotFound),
            Some(_) if check.busy || overlaps => Some(CommitAssignmentError::ContractorBusy),
            Some(_) if check.key_taken || key.is_some_and(|k| keys_taken.contains(&k)) => {
                Some(CommitAssignmentError::IdempotencyKeyTaken)
            }
            Some(_) => None,
        };
        match refusal {
            Some(refusal) => outcomes.push(Err(refusal)),
            None => {
                jobs_taken.insert(row.job_id.as_str());
                booked.entry(row.contractor_id.as_str()).or_default().push((row.start_at, row.end_at));
                if let Some(key) = key {
                    keys_taken.insert(key);
                }
                accepted.push(row.to_json());
                outcomes.push(Ok(()));
            }
        }
    }
    (outcomes, accepted)
}

/// How one database commits a group.
#[async_trait]
pub(crate) trait GroupWriter: Send + Sync + 'static {
    /// The histogram of group sizes, for operators.
    const SIZE_METRIC: &'static str;

    /// Commits `rows` in one transaction, each judged by [`judge`], and
    /// returns their outcomes in order. An `Err` means nothing was committed.
    async fn commit_group(&self, rows: &[&AssignmentRow]) -> Result<Vec<Outcome>, StoreError>;
}

/// An assignment waiting for the group-commit task.
#[derive(Debug)]
struct PendingCommit {
    row: AssignmentRow,
    reply: oneshot::Sender<Outcome>,
}

/// The way to a store's group-commit task. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct GroupCommitter {
    queue: mpsc::Sender<PendingCommit>,
}

impl GroupCommitter {
    /// Starts the task that commits with `writer`; it ends when every clone
    /// of the committer is gone.
    pub(crate) fn start(writer: impl GroupWriter) -> Self {
        let (queue, pending) = mpsc::channel(MAX_GROUP * 4);
        tokio::spawn(run(writer, pending));
        Self { queue }
    }

    /// Commits one assignment with whatever else is waiting.
    pub(crate) async fn commit(&self, commit: AssignmentCommit<'_>) -> Outcome {
        let row = AssignmentRow::new(commit)?;
        let (reply, answer) = oneshot::channel();
        let closed = || StoreError::Unavailable("the group-commit task has stopped".into());
        self.queue.send(PendingCommit { row, reply }).await.map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }
}

/// The group-commit task: commits whatever is waiting, in one transaction.
/// One task per store, even where the database has many writers: two groups
/// at once on PostgreSQL commit fewer assignments per second, not more
/// (docs/architecture.md, "Concurrency on PostgreSQL").
async fn run<W: GroupWriter>(writer: W, mut queue: mpsc::Receiver<PendingCommit>) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    while queue.recv_many(&mut group, MAX_GROUP).await > 0 {
        metrics::histogram!(W::SIZE_METRIC).record(group.len() as f64);
        let rows: Vec<&AssignmentRow> = group.iter().map(|p| &p.row).collect();
        let committed = writer.commit_group(&rows).await;
        match committed {
            Ok(outcomes) => {
                for (pending, outcome) in group.drain(..).zip(outcomes) {
                    let _ = pending.reply.send(outcome);
                }
            }
            Err(err) if group.len() == 1 => {
                let pending = group.pop().expect("one");
                let _ = pending.reply.send(Err(err.into()));
            }
            Err(err) => {
                // Whatever failed the group must fail only its own request.
                tracing::warn!(error = %Chain(&err), size = group.len(), "group commit failed; committing one by one");
                one_by_one(&writer, &mut group).await;
            }
        }
    }
}

/// Commits each of a failed group on its own. When one of them cannot reach
/// the database either, the rest are answered at once: an outage must cost
/// a group one more timeout, not one per assignment. A group that failed for
/// one of its rows (or a deadlock) commits the others here.
async fn one_by_one<W: GroupWriter>(writer: &W, group: &mut Vec<PendingCommit>) {
    let mut unreachable = false;
    for pending in group.drain(..) {
        let outcome = if unreachable {
            Err(StoreError::Unavailable("the database did not answer the assignment before this one".into()).into())
        } else {
            match writer.commit_group(&[&pending.row]).await {
                Ok(mut outcomes) => outcomes.pop().expect("one outcome per assignment"),
                Err(err) => {
                    unreachable = matches!(err, StoreError::Unavailable(_));
                    Err(err.into())
                }
            }
        };
        let _ = pending.reply.send(outcome);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    use smartscheduler_domain::{
        AssignmentSource, Contractor, DomainEvent, DurationMinutes, Job, JobType, NewAssignment, PersonName, Region,
        TimeRange,
    };

    use super::*;

    /// A writer that answers each commit with the next of `answers` (an
    /// `Err` for the whole call, or `Ok` for every row) and counts the rows
    /// of each call.
    struct Scripted {
        answers: Mutex<VecDeque<Result<(), StoreError>>>,
        calls: Arc<Mutex<Vec<usize>>>,
    }

    impl Scripted {
        fn new(answers: Vec<Result<(), StoreError>>) -> Self {
            Self { answers: Mutex::new(answers.into()), calls: Arc::default() }
        }
    }

    #[async_trait]
    impl GroupWriter for Scripted {
        const SIZE_METRIC: &'static str = "test_group_commit_size";

        async fn commit_group(&self, rows: &[&AssignmentRow]) -> Result<Vec<Outcome>, StoreError> {
            self.calls.lock().unwrap().push(rows.len());
            let answer = self.answers.lock().unwrap().pop_front().expect("an answer is scripted");
            answer.map(|()| rows.iter().map(|_| Ok(())).collect())
        }
    }

    fn unavailable() -> StoreError {
        StoreError::Unavailable("connection refused".into())
    }

    fn pending(n: usize) -> (Vec<PendingCommit>, Vec<oneshot::Receiver<Outcome>>) {
        let region = Region::new("north").unwrap();
        let now = Timestamp::now();
        (0..n)
            .map(|i| {
                let job = Job::create(
                    JobType::new("Flooring").unwrap(),
                    None,
                    region.clone(),
                    DurationMinutes::new(60).unwrap(),
                    None,
                    None,
                    now,
                );
                let contractor =
                    Contractor::create(PersonName::new(&format!("C{i}")).unwrap(), region.clone(), vec![], now)
                        .unwrap();
                let mut assigned = job.clone();
                let request = NewAssignment {
                    contractor_id: contractor.id(),
                    range: TimeRange::new(now, now.plus_millis(3_600_000)).unwrap(),
                    source: AssignmentSource::Manual,
                    audit_id: None,
                };
                let (assignment, event) = assigned.assign(&contractor, request, now).unwrap();
                let event = DomainEvent::from(event);
                let commit =
                    AssignmentCommit { job: &assigned, assignment: &assignment, event: &event, idempotency: None };
                let (reply, answer) = oneshot::channel();
                (PendingCommit { row: AssignmentRow::new(commit).unwrap(), reply }, answer)
            })
            .unzip()
    }

    async fn answers(receivers: Vec<oneshot::Receiver<Outcome>>) -> Vec<Outcome> {
        let mut outcomes = Vec::new();
        for receiver in receivers {
            outcomes.push(receiver.await.expect("every assignment is answered"));
        }
        outcomes
    }

    #[tokio::test]
    async fn a_group_that_failed_for_one_row_commits_the_others_one_by_one() {
        // The group fails (say, a deadlock); alone, the second row fails, the others commit.
        let writer = Scripted::new(vec![Ok(()), Err(StoreError::Unexpected("a bad row".into())), Ok(())]);
        let (mut group, receivers) = pending(3);
        one_by_one(&writer, &mut group).await;
        let outcomes = answers(receivers).await;
        assert_eq!(outcomes[0], Ok(()));
        assert!(matches!(outcomes[1], Err(CommitAssignmentError::Store(StoreError::Unexpected(_)))), "{outcomes:?}");
        assert_eq!(outcomes[2], Ok(()));
        assert_eq!(*writer.calls.lock().unwrap(), vec![1, 1, 1]);
    }

    #[tokio::test]
    async fn when_the_database_is_unreachable_the_rest_of_the_group_is_answered_without_waiting_for_it_again() {
        let writer = Scripted::new(vec![Err(unavailable())]);
        let (mut group, receivers) = pending(4);
        one_by_one(&writer, &mut group).await;
        let outcomes = answers(receivers).await;
        assert!(
            outcomes.iter().all(|o| matches!(o, Err(CommitAssignmentError::Store(StoreError::Unavailable(_))))),
            "{outcomes:?}"
        );
        // One attempt alone, not four.
        assert_eq!(*writer.calls.lock().unwrap(), vec![1]);
    }

    #[tokio::test]
    async fn the_task_commits_a_waiting_burst_as_one_group() {
        let writer = Scripted::new(vec![Ok(())]);
        let calls = Arc::clone(&writer.calls);
        let (group, receivers) = pending(5);
        let (queue, waiting) = mpsc::channel(MAX_GROUP);
        for pending in group {
            queue.send(pending).await.unwrap();
        }
        drop(queue);
        run(writer, waiting).await;
        let outcomes = answers(receivers).await;
        assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
        assert_eq!(outcomes.len(), 5);
        assert_eq!(*calls.lock().unwrap(), vec![5]);
    }
}
