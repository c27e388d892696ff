//! Every storage port, written once over a [`SqlBackend`].

use async_trait::async_trait;
use smartscheduler_domain::ports::{
    AssignmentRepository, AssignmentStore, ClaimedEvent, CommitAssignmentError, ContractorRepository, EventLog,
    EventLogEntry, EventQuery, EventStatus, Fence, IdempotencyKey, JobFilter, JobRepository, PublishedRow,
    RetryOutcome, StoreError,
};
use smartscheduler_domain::values::Address;
use smartscheduler_domain::{
    Assignment, AssignmentId, Contractor, ContractorId, DomainEvent, EventId, Group, Job, JobAssignmentAcknowledged,
    JobAssignmentUnacknowledged, JobId, JobStatus, Region, Sequence, Skill, Timestamp, Title,
};
use tracing::instrument;

use super::rows::{self, pair_with_job};
use super::{AssignmentCommit, Columns, FailedAttempt, SqlBackend, Statement};
use crate::errors::corrupt;

/// The storage ports over one database. Cheap to clone.
#[derive(Clone, Debug)]
pub struct SqlStore<B> {
    backend: B,
}

impl<B: SqlBackend> SqlStore<B> {
    pub(crate) fn new(backend: B) -> Self {
        Self { backend }
    }

    pub(crate) fn backend(&self) -> &B {
        &self.backend
    }

    /// Whether the database answers.
    ///
    /// # Errors
    /// [`StoreError`] when it does not.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.backend.fetch_optional(Statement::new("SELECT 1")).await?;
        Ok(())
    }

    /// Closes the connections.
    pub async fn close(&self) {
        self.backend.close().await;
    }
}

#[async_trait]
impl<B: SqlBackend> ContractorRepository for SqlStore<B> {
    #[instrument(skip_all, err)]
    async fn insert(&self, c: &Contractor) -> Result<(), StoreError> {
        let skills = serde_json::to_value(c.skills().iter().map(Skill::as_str).collect::<Vec<_>>()).map_err(corrupt)?;
        let insert = Statement::new(
            "INSERT INTO contractors (id, name, region, skills, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .id(c.id().as_uuid())
        .text(c.name().as_str())
        .text(c.region().as_str())
        .json(&skills)
        .int(c.created_at_utc().unix_millis());
        self.backend.execute(insert).await?;
        Ok(())
    }

    async fn get(&self, id: ContractorId) -> Result<Option<Contractor>, StoreError> {
        let select = Statement::new("SELECT * FROM contractors WHERE id = $1").id(id.as_uuid());
        self.backend.fetch_optional(select).await?.as_ref().map(rows::contractor).transpose()
    }

    async fn list(&self, region: Option<Region>, limit: u32) -> Result<Vec<Contractor>, StoreError> {
        let select = Statement::new(
            "SELECT * FROM contractors WHERE ($1 IS NULL OR region = $1) ORDER BY created_at, id LIMIT $2",
        )
        .text(region.as_ref().map(Region::as_str))
        .int(i64::from(limit));
        self.backend.fetch_all(select).await?.iter().map(rows::contractor).collect()
    }
}

#[async_trait]
impl<B: SqlBackend> JobRepository for SqlStore<B> {
    #[instrument(skip_all, err)]
    async fn insert(&self, job: &Job) -> Result<(), StoreError> {
        let insert = Statement::new(
            "INSERT INTO jobs (id, job_type, title, region, duration_minutes, desired_start, address, status, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .id(job.id().as_uuid())
        .text(job.job_type().as_str())
        .text(job.title().map(Title::as_str))
        .text(job.region().as_str())
        .int(i64::from(job.duration_minutes().get()))
        .int(job.desired_start_utc().map(Timestamp::unix_millis))
        .text(job.address().map(Address::as_str))
        .text(job.status().as_str())
        .int(job.created_at_utc().unix_millis());
        self.backend.execute(insert).await?;
        Ok(())
    }

    async fn get(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        let select = Statement::new("SELECT * FROM jobs WHERE id = $1").id(id.as_uuid());
        self.backend.fetch_optional(select).await?.as_ref().map(rows::job).transpose()
    }

    async fn list(&self, filter: JobFilter) -> Result<Vec<Job>, StoreError> {
        let select = Statement::new(
            "SELECT * FROM jobs WHERE ($1 IS NULL OR region = $1) AND ($2 IS NULL OR status = $2)
             ORDER BY created_at, id LIMIT $3",
        )
        .text(filter.region.as_ref().map(Region::as_str))
        .text(filter.status.map(JobStatus::as_str))
        .int(i64::from(filter.limit));
        self.backend.fetch_all(select).await?.iter().map(rows::job).collect()
    }
}

#[async_trait]
impl<B: SqlBackend> AssignmentRepository for SqlStore<B> {
    async fn of_job(&self, job: JobId) -> Result<Option<Assignment>, StoreError> {
        let select = Statement::new("SELECT * FROM assignments WHERE job_id = $1").id(job.as_uuid());
        self.backend.fetch_optional(select).await?.as_ref().map(rows::assignment).transpose()
    }

    async fn of_contractor(&self, contractor: ContractorId, limit: u32) -> Result<Vec<(Assignment, Job)>, StoreError> {
        // Two reads that reuse the row mappers (the tables share column names);
        // assignments are never changed or deleted, so the second read finds every job.
        let assignments = Statement::new(
            "SELECT * FROM assignments WHERE contractor_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2",
        )
        .id(contractor.as_uuid())
        .int(i64::from(limit));
        let jobs = Statement::new(
            "SELECT * FROM jobs WHERE id IN (SELECT job_id FROM assignments WHERE contractor_id = $1
             ORDER BY created_at DESC, id DESC LIMIT $2)",
        )
        .id(contractor.as_uuid())
        .int(i64::from(limit));
        let assignments = self.backend.fetch_all(assignments).await?;
        let jobs = self.backend.fetch_all(jobs).await?.iter().map(rows::job).collect::<Result<Vec<_>, _>>()?;
        assignments.iter().map(|row| pair_with_job(rows::assignment(row)?, &jobs)).collect()
    }

    async fn get(&self, id: AssignmentId) -> Result<Option<Assignment>, StoreError> {
        let select = Statement::new("SELECT * FROM assignments WHERE id = $1").id(id.as_uuid());
        self.backend.fetch_optional(select).await?.as_ref().map(rows::assignment).transpose()
    }

    async fn of_event(&self, event: EventId) -> Result<Option<Assignment>, StoreError> {
        let select = Statement::new("SELECT * FROM assignments WHERE event_id = $1").id(event.as_uuid());
        self.backend.fetch_optional(select).await?.as_ref().map(rows::assignment).transpose()
    }
}

#[async_trait]
impl<B: SqlBackend> AssignmentStore for SqlStore<B> {
    async fn commit_assignment(
        &self,
        job: &Job,
        assignment: &Assignment,
        event: &DomainEvent,
        idempotency: Option<IdempotencyKey>,
    ) -> Result<(), CommitAssignmentError> {
        self.backend.commit_assignment(AssignmentCommit { job, assignment, event, idempotency }).await
    }

    async fn find_idempotent(
        &self,
        scope: String,
        key: String,
        not_before: Timestamp,
    ) -> Result<Option<(String, Assignment)>, StoreError> {
        let select = Statement::new(
            "SELECT k.fingerprint, a.* FROM idempotency_keys k JOIN assignments a ON a.id = k.assignment_id
             WHERE k.scope = $1 AND k.key = $2 AND k.created_at >= $3",
        )
        .text(scope.as_str())
        .text(key.as_str())
        .int(not_before.unix_millis());
        let Some(row) = self.backend.fetch_optional(select).await? else { return Ok(None) };
        Ok(Some((row.text("fingerprint")?.to_owned(), rows::assignment(&row)?)))
    }

    async fn purge_idempotency(&self, before: Timestamp) -> Result<u64, StoreError> {
        let delete = Statement::new("DELETE FROM idempotency_keys WHERE created_at < $1").int(before.unix_millis());
        self.backend.execute(delete).await
    }

    #[instrument(skip_all, err, fields(assignment_id = %acknowledged.assignment_id))]
    async fn acknowledge(&self, acknowledged: &JobAssignmentAcknowledged) -> Result<bool, StoreError> {
        let record = Statement::new(
            "UPDATE assignments SET acknowledged_at = $1, acknowledgement_event_id = $2
             WHERE id = $3 AND acknowledged_at IS NULL",
        )
        .int(acknowledged.acknowledged_at_utc.unix_millis())
        .id(acknowledged.event_id.as_uuid())
        .id(acknowledged.assignment_id.as_uuid());
        let event = DomainEvent::from(acknowledged.clone());
        self.record_with_event(record, LOG_IF_ACKNOWLEDGED, &event, acknowledged.assignment_id).await
    }

    async fn overdue(&self, now: Timestamp, limit: u32) -> Result<Vec<Assignment>, StoreError> {
        let select = Statement::new(
            "SELECT * FROM assignments
             WHERE ack_deadline <= $1 AND acknowledged_at IS NULL AND escalation_event_id IS NULL
             ORDER BY ack_deadline LIMIT $2",
        )
        .int(now.unix_millis())
        .int(i64::from(limit));
        self.backend.fetch_all(select).await?.iter().map(rows::assignment).collect()
    }

    #[instrument(skip_all, err, fields(assignment_id = %unacknowledged.assignment_id))]
    async fn escalate(&self, unacknowledged: &JobAssignmentUnacknowledged) -> Result<bool, StoreError> {
        let record = Statement::new(
            "UPDATE assignments SET escalation_event_id = $1
             WHERE id = $2 AND acknowledged_at IS NULL AND escalation_event_id IS NULL",
        )
        .id(unacknowledged.event_id.as_uuid())
        .id(unacknowledged.assignment_id.as_uuid());
        let event = DomainEvent::from(unacknowledged.clone());
        self.record_with_event(record, LOG_IF_ESCALATED, &event, unacknowledged.assignment_id).await
    }
}

/// Logs an acknowledgement's event only if its assignment row names it, that
/// is, if the conditional UPDATE before it in the transaction recorded it.
const LOG_IF_ACKNOWLEDGED: &str =
    "INSERT INTO event_log (event_id, event_type, aggregate_id, payload, occurred_at, next_attempt_at)
     SELECT $1, $2, $3, $4, $5, 0 WHERE EXISTS
       (SELECT 1 FROM assignments WHERE id = $6 AND acknowledgement_event_id = $1)";
/// The same for an escalation's event.
const LOG_IF_ESCALATED: &str =
    "INSERT INTO event_log (event_id, event_type, aggregate_id, payload, occurred_at, next_attempt_at)
     SELECT $1, $2, $3, $4, $5, 0 WHERE EXISTS
       (SELECT 1 FROM assignments WHERE id = $6 AND escalation_event_id = $1)";

impl<B: SqlBackend> SqlStore<B> {
    /// Runs `record` (a conditional UPDATE of an assignment) and, in the same
    /// transaction, `log` (the event's EventLog row, written only if `record`
    /// changed the row) and the event's groups. Whether `record` changed it.
    async fn record_with_event(
        &self,
        record: Statement<'_>,
        log: &'static str,
        event: &DomainEvent,
        assignment: AssignmentId,
    ) -> Result<bool, StoreError> {
        let payload = serde_json::to_value(event).map_err(corrupt)?;
        let event_id = event.event_id().as_uuid();
        let groups = event.audience();
        let mut statements = vec![
            record,
            Statement::new(log)
                .id(event_id)
                .text(event.event_type().as_str())
                .id(event.aggregate_id())
                .json(&payload)
                .int(event.occurred_at_utc().unix_millis())
                .id(assignment.as_uuid()),
        ];
        statements.extend(groups.iter().map(|group| {
            Statement::new(
                "INSERT INTO event_groups (group_name, event_id)
                 SELECT $1, $2 WHERE EXISTS (SELECT 1 FROM event_log WHERE event_id = $2)",
            )
            .text(group.as_str())
            .id(event_id)
        }));
        let changed = self.backend.execute_in_transaction(statements).await?;
        Ok(changed.first() == Some(&1))
    }
}

/// Replay when the backend serves claimed rows too (see [`SqlBackend::REPLAYS_CLAIMED`]).
const REPLAY_SEQUENCED: &str = "SELECT e.payload, g.sequence FROM event_groups g
     JOIN event_log e ON e.event_id = g.event_id
     WHERE g.group_name = $1 AND g.sequence > $2 ORDER BY g.sequence LIMIT $3";
/// Replay of published rows only.
const REPLAY_PUBLISHED: &str = "SELECT e.payload, g.sequence FROM event_groups g
     JOIN event_log e ON e.event_id = g.event_id
     WHERE g.group_name = $1 AND g.sequence > $2 AND e.status = 'Published' ORDER BY g.sequence LIMIT $3";

#[async_trait]
impl<B: SqlBackend> EventLog for SqlStore<B> {
    async fn claim_due(&self, now: Timestamp, limit: u32, fence: Fence) -> Result<Vec<ClaimedEvent>, StoreError> {
        self.backend.claim_due(now, limit, fence).await
    }

    async fn claim(&self, events: Vec<DomainEvent>, fence: Fence) -> Result<Vec<ClaimedEvent>, StoreError> {
        self.backend.claim(events, fence).await
    }

    async fn mark_published(
        &self,
        published: Vec<PublishedRow>,
        at: Timestamp,
        fence: Fence,
    ) -> Result<(), StoreError> {
        self.backend.mark_published(published, at, fence).await
    }

    async fn record_failure(
        &self,
        event_id: EventId,
        error: String,
        retry_at: Option<Timestamp>,
        fence: Fence,
    ) -> Result<(), StoreError> {
        self.backend.record_failure(FailedAttempt { event_id, error, retry_at }, fence).await
    }

    async fn held_sequences(&self, from: Sequence, to: Sequence) -> Result<Vec<Sequence>, StoreError> {
        let select =
            Statement::new("SELECT sequence FROM event_log WHERE sequence BETWEEN $1 AND $2 ORDER BY sequence")
                .int(from.0)
                .int(to.0);
        self.backend.fetch_all(select).await?.iter().map(|row| row.int("sequence").map(Sequence)).collect()
    }

    async fn list(&self, query: EventQuery) -> Result<Vec<EventLogEntry>, StoreError> {
        let status = query.status.map(EventStatus::as_str);
        let select = match query.after_sequence {
            Some(after) => Statement::new(
                "SELECT * FROM event_log WHERE status = 'Published' AND sequence > $1 AND ($2 IS NULL OR status = $2)
                 ORDER BY sequence LIMIT $3",
            )
            .int(after.0),
            // Published rows by sequence, then the rest by commit order (a
            // claimed row has a sequence too, but not a published one).
            None => Statement::new(
                "SELECT * FROM event_log WHERE ($1 IS NULL OR status = $1)
                 ORDER BY status <> 'Published', CASE WHEN status = 'Published' THEN sequence END, position LIMIT $2",
            ),
        };
        let select = select.text(status).int(i64::from(query.limit));
        self.backend.fetch_all(select).await?.iter().map(rows::entry).collect()
    }

    async fn get(&self, event_id: EventId) -> Result<Option<EventLogEntry>, StoreError> {
        let select = Statement::new("SELECT * FROM event_log WHERE event_id = $1").id(event_id.as_uuid());
        self.backend.fetch_optional(select).await?.as_ref().map(rows::entry).transpose()
    }

    async fn replay(
        &self,
        group: Group,
        after: Sequence,
        limit: u32,
    ) -> Result<Vec<(DomainEvent, Sequence)>, StoreError> {
        let sql = if B::REPLAYS_CLAIMED { REPLAY_SEQUENCED } else { REPLAY_PUBLISHED };
        let select = Statement::new(sql).text(group.as_str()).int(after.0).int(i64::from(limit));
        self.backend
            .fetch_all(select)
            .await?
            .iter()
            .map(|row| Ok((rows::event(row)?, Sequence(row.int("sequence")?))))
            .collect()
    }

    #[instrument(skip_all, err)]
    async fn retry(&self, event_id: EventId) -> Result<RetryOutcome, StoreError> {
        let requeue = Statement::new(
            "UPDATE event_log SET status = 'Pending', attempts = 0, next_attempt_at = $1
             WHERE event_id = $2 AND status = 'Failed'",
        )
        .int(Timestamp::now().unix_millis())
        .id(event_id.as_uuid());
        if self.backend.execute(requeue).await? > 0 {
            return Ok(RetryOutcome::Requeued);
        }
        let find = Statement::new("SELECT 1 FROM event_log WHERE event_id = $1").id(event_id.as_uuid());
        Ok(match self.backend.fetch_optional(find).await? {
            Some(_) => RetryOutcome::NotFailed,
            None => RetryOutcome::NotFound,
        })
    }

    #[instrument(skip_all, err)]
    async fn purge(&self, before: Timestamp) -> Result<u64, StoreError> {
        let before = before.unix_millis();
        // `purged_through` first, from the rows about to go; it never moves back.
        let statements = vec![
            Statement::new(
                "UPDATE event_sequence SET purged_through = m.highest
                 FROM (SELECT MAX(sequence) AS highest FROM event_log
                       WHERE status = 'Published' AND published_at < $1) AS m
                 WHERE event_sequence.id = 1 AND m.highest > event_sequence.purged_through",
            )
            .int(before),
            Statement::new(
                "DELETE FROM event_groups WHERE event_id IN
                   (SELECT event_id FROM event_log WHERE status = 'Published' AND published_at < $1)",
            )
            .int(before),
            Statement::new("DELETE FROM event_log WHERE status = 'Published' AND published_at < $1").int(before),
        ];
        let changed = self.backend.execute_in_transaction(statements).await?;
        Ok(changed.last().copied().unwrap_or(0))
    }

    async fn purged_through(&self) -> Result<Sequence, StoreError> {
        let select = Statement::new("SELECT purged_through FROM event_sequence WHERE id = 1");
        let row = self.backend.fetch_optional(select).await?;
        let row = row.ok_or_else(|| corrupt("the event_sequence row is missing"))?;
        Ok(Sequence(row.int("purged_through")?))
    }

    async fn highest_published(&self) -> Result<Sequence, StoreError> {
        let select = Statement::new("SELECT MAX(sequence) AS highest FROM event_log WHERE status = 'Published'");
        let row = self.backend.fetch_optional(select).await?;
        Ok(Sequence(row.map(|row| row.optional_int("highest")).transpose()?.flatten().unwrap_or(0)))
    }

    async fn backlog(&self) -> Result<(u64, u64), StoreError> {
        let select = Statement::new(
            "SELECT COUNT(*) FILTER (WHERE status = 'Pending') AS pending,
                    COUNT(*) FILTER (WHERE status = 'Failed') AS failed
             FROM event_log WHERE status <> 'Published'",
        );
        let row = self.backend.fetch_optional(select).await?;
        let count = |column| row.as_ref().map(|row| row.int(column)).transpose().map(Option::unwrap_or_default);
        Ok((count("pending")?.unsigned_abs(), count("failed")?.unsigned_abs()))
    }
}
