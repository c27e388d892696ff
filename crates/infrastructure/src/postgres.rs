//! PostgreSQL adapters for every storage port: for several nodes sharing one
//! database.
//!
//! One pool serves reads and writes. Transactions run at READ COMMITTED and
//! races are settled by row locks, never by retries:
//! - `commit_assignment` first updates the job row (racing assignments of one
//!   job queue on its lock and then find it Assigned), then locks the
//!   contractor row (assignments of one contractor queue there, so the overlap
//!   check that follows sees every committed assignment). `UNIQUE(job_id)` is
//!   the backstop.
//! - Claims lock the due rows with `FOR UPDATE SKIP LOCKED` (two nodes never
//!   claim the same row at once) and take a block of sequences from the
//!   `event_sequence` row, whose lock orders claimers: sequence order is claim
//!   order and no value is handed out twice.
//! - Claims and publishes carry the publisher lease's [`Fence`] and check it
//!   in their own transaction against the `publisher_lease` row, read
//!   `FOR SHARE`: a takeover (an update of that row) waits for the writes in
//!   flight, and a write after a takeover sees the new epoch and fails with
//!   [`StoreError::LeaseLost`]. See [`crate::postgres_lease`].

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use smartscheduler_domain::ports::{
    AssignmentRepository, AssignmentStore, ClaimedEvent, CommitAssignmentError, ContractorRepository, EventLog,
    EventLogEntry, EventQuery, EventStatus, Fence, IdempotencyKey, JobFilter, JobRepository, LoggedPayload,
    PublishedRow, RetryOutcome, StoreError, IDEMPOTENCY_WINDOW_MILLIS,
};
use smartscheduler_domain::values::Address;
use smartscheduler_domain::{
    Assignment, AssignmentId, AssignmentSource, AuditId, Contractor, ContractorId, DomainEvent, DurationMinutes,
    EventId, Group, Job, JobId, JobStatus, JobType, NewAssignment, PersonName, Region, Sequence, Skill, TimeRange,
    Timestamp, Title,
};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{PgPool, Row};
use tracing::instrument;
use uuid::Uuid;

use crate::assignment_reads::pair_with_job;
use crate::errors::{corrupt, store_error};

/// `application_name` of the pool's sessions.
pub const POOL_APPLICATION_NAME: &str = "smartscheduler";

/// How long a fenced transaction may sit idle before the server ends it: a
/// holder frozen inside one would otherwise keep the lease row locked and
/// hold up the takeover for as long as it stays frozen.
const FENCED_IDLE_LIMIT_MS: &str = "2000";

/// The PostgreSQL store. Cheap to clone.
#[derive(Clone, Debug)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://` or `postgresql://`)
    /// and applies pending migrations. Nodes migrating the same database at
    /// once wait for each other (sqlx takes an advisory lock per database).
    ///
    /// # Errors
    /// When the server cannot be reached or a migration fails.
    pub async fn connect(url: &str) -> Result<Self, sqlx::Error> {
        // Named, so that an operator (or a fault test) can tell the node's
        // sessions from its lease session in `pg_stat_activity`.
        let options = url.parse::<PgConnectOptions>()?.application_name(POOL_APPLICATION_NAME);
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await?;
        sqlx::migrate!("../../migrations/postgres").run(&pool).await?;
        Ok(Self { pool })
    }

    /// The connection pool, for adapters of other ports on the same database.
    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Whether the database answers.
    ///
    /// # Errors
    /// [`StoreError`] when it does not.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map_err(store_error)?;
        Ok(())
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn contractor_from_row(row: &PgRow) -> Result<Contractor, StoreError> {
    let skills: Vec<String> = serde_json::from_value(row.try_get("skills").map_err(store_error)?).map_err(corrupt)?;
    Ok(Contractor::restore(
        ContractorId::from_uuid(uuid(row, "id")?),
        PersonName::new(row.try_get("name").map_err(store_error)?).map_err(corrupt)?,
        Region::new(row.try_get("region").map_err(store_error)?).map_err(corrupt)?,
        skills.iter().map(|s| Skill::new(s)).collect::<Result<_, _>>().map_err(corrupt)?,
        Timestamp::from_unix_millis(row.try_get("created_at").map_err(store_error)?),
    ))
}

fn job_from_row(row: &PgRow) -> Result<Job, StoreError> {
    let title: Option<String> = row.try_get("title").map_err(store_error)?;
    let address: Option<String> = row.try_get("address").map_err(store_error)?;
    let desired: Option<i64> = row.try_get("desired_start").map_err(store_error)?;
    Ok(Job::restore(
        JobId::from_uuid(uuid(row, "id")?),
        JobType::new(row.try_get("job_type").map_err(store_error)?).map_err(corrupt)?,
        title.as_deref().map(Title::new).transpose().map_err(corrupt)?,
        Region::new(row.try_get("region").map_err(store_error)?).map_err(corrupt)?,
        DurationMinutes::new(row.try_get("duration_minutes").map_err(store_error)?).map_err(corrupt)?,
        desired.map(Timestamp::from_unix_millis),
        address.as_deref().map(Address::new).transpose().map_err(corrupt)?,
        JobStatus::parse(row.try_get("status").map_err(store_error)?).map_err(corrupt)?,
        Timestamp::from_unix_millis(row.try_get("created_at").map_err(store_error)?),
    ))
}

fn assignment_from_row(row: &PgRow) -> Result<Assignment, StoreError> {
    let contractor_id = ContractorId::from_uuid(uuid(row, "contractor_id")?);
    let start = Timestamp::from_unix_millis(row.try_get("start_at").map_err(store_error)?);
    let end = Timestamp::from_unix_millis(row.try_get("end_at").map_err(store_error)?);
    let audit: Option<Uuid> = row.try_get("audit_id").map_err(store_error)?;
    let request = NewAssignment {
        contractor_id,
        range: TimeRange::new(start, end).map_err(corrupt)?,
        source: AssignmentSource::parse(row.try_get("source").map_err(store_error)?).map_err(corrupt)?,
        audit_id: audit.map(AuditId::from_uuid),
    };
    Ok(Assignment::new(
        AssignmentId::from_uuid(uuid(row, "id")?),
        JobId::from_uuid(uuid(row, "job_id")?),
        contractor_id,
        request,
        Region::new(row.try_get("region").map_err(store_error)?).map_err(corrupt)?,
        Timestamp::from_unix_millis(row.try_get("created_at").map_err(store_error)?),
        EventId::from_uuid(uuid(row, "event_id")?),
    ))
}

fn uuid(row: &PgRow, column: &str) -> Result<Uuid, StoreError> {
    row.try_get(column).map_err(store_error)
}

fn event_from_row(row: &PgRow) -> Result<DomainEvent, StoreError> {
    let payload: serde_json::Value = row.try_get("payload").map_err(store_error)?;
    serde_json::from_value(payload).map_err(corrupt)
}

fn attempts_from_row(row: &PgRow) -> Result<u32, StoreError> {
    let attempts: i64 = row.try_get("attempts").map_err(store_error)?;
    u32::try_from(attempts).map_err(corrupt)
}

fn entry_from_row(row: &PgRow) -> Result<EventLogEntry, StoreError> {
    let status: &str = row.try_get("status").map_err(store_error)?;
    let status = EventStatus::parse(status).ok_or_else(|| corrupt(format!("unknown status {status}")))?;
    let sequence: Option<i64> = row.try_get("sequence").map_err(store_error)?;
    // The contract: sequence is null until published.
    let sequence = if status == EventStatus::Published { sequence.map(Sequence) } else { None };
    let groups: Vec<Group> =
        serde_json::from_value(row.try_get("published_groups").map_err(store_error)?).map_err(corrupt)?;
    let published_at: Option<i64> = row.try_get("published_at").map_err(store_error)?;
    Ok(EventLogEntry {
        event_id: EventId::from_uuid(uuid(row, "event_id")?),
        event_type: row.try_get("event_type").map_err(store_error)?,
        sequence,
        status,
        attempts: attempts_from_row(row)?,
        occurred_at_utc: Timestamp::from_unix_millis(row.try_get("occurred_at").map_err(store_error)?),
        published_at_utc: published_at.map(Timestamp::from_unix_millis),
        published_groups: groups,
        last_error: row.try_get("last_error").map_err(store_error)?,
        payload: LoggedPayload { event: event_from_row(row)?, sequence },
    })
}

#[async_trait]
impl ContractorRepository for PostgresStore {
    #[instrument(skip_all, err)]
    async fn insert(&self, c: &Contractor) -> Result<(), StoreError> {
        let skills = serde_json::to_value(c.skills().iter().map(Skill::as_str).collect::<Vec<_>>()).map_err(corrupt)?;
        sqlx::query("INSERT INTO contractors (id, name, region, skills, created_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(c.id().as_uuid())
            .bind(c.name().as_str())
            .bind(c.region().as_str())
            .bind(skills)
            .bind(c.created_at_utc().unix_millis())
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn get(&self, id: ContractorId) -> Result<Option<Contractor>, StoreError> {
        sqlx::query("SELECT * FROM contractors WHERE id = $1")
            .bind(id.as_uuid())
            .fetch_optional(&self.pool)
            .await
            .map_err(store_error)?
            .as_ref()
            .map(contractor_from_row)
            .transpose()
    }

    async fn list(&self, region: Option<Region>, limit: u32) -> Result<Vec<Contractor>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM contractors WHERE ($1::text IS NULL OR region = $1)
             ORDER BY created_at, id LIMIT $2",
        )
        .bind(region.as_ref().map(Region::as_str))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        rows.iter().map(contractor_from_row).collect()
    }
}

#[async_trait]
impl JobRepository for PostgresStore {
    #[instrument(skip_all, err)]
    async fn insert(&self, job: &Job) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO jobs (id, job_type, title, region, duration_minutes, desired_start, address, status, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(job.id().as_uuid())
        .bind(job.job_type().as_str())
        .bind(job.title().map(Title::as_str))
        .bind(job.region().as_str())
        .bind(i64::from(job.duration_minutes().get()))
        .bind(job.desired_start_utc().map(Timestamp::unix_millis))
        .bind(job.address().map(Address::as_str))
        .bind(job.status().as_str())
        .bind(job.created_at_utc().unix_millis())
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(())
    }

    async fn get(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        sqlx::query("SELECT * FROM jobs WHERE id = $1")
            .bind(id.as_uuid())
            .fetch_optional(&self.pool)
            .await
            .map_err(store_error)?
            .as_ref()
            .map(job_from_row)
            .transpose()
    }

    async fn list(&self, filter: JobFilter) -> Result<Vec<Job>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM jobs WHERE ($1::text IS NULL OR region = $1) AND ($2::text IS NULL OR status = $2)
             ORDER BY created_at, id LIMIT $3",
        )
        .bind(filter.region.as_ref().map(Region::as_str))
        .bind(filter.status.map(JobStatus::as_str))
        .bind(i64::from(filter.limit))
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        rows.iter().map(job_from_row).collect()
    }
}

#[async_trait]
impl AssignmentRepository for PostgresStore {
    async fn of_job(&self, job: JobId) -> Result<Option<Assignment>, StoreError> {
        sqlx::query("SELECT * FROM assignments WHERE job_id = $1")
            .bind(job.as_uuid())
            .fetch_optional(&self.pool)
            .await
            .map_err(store_error)?
            .as_ref()
            .map(assignment_from_row)
            .transpose()
    }

    async fn of_contractor(&self, contractor: ContractorId, limit: u32) -> Result<Vec<(Assignment, Job)>, StoreError> {
        // Two reads that reuse the row mappers (the tables share column names);
        // assignments are never changed or deleted, so the second read finds every job.
        let assignments = sqlx::query(
            "SELECT * FROM assignments WHERE contractor_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2",
        )
        .bind(contractor.as_uuid())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        let jobs = sqlx::query(
            "SELECT * FROM jobs WHERE id IN (SELECT job_id FROM assignments WHERE contractor_id = $1
             ORDER BY created_at DESC, id DESC LIMIT $2)",
        )
        .bind(contractor.as_uuid())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        let jobs = jobs.iter().map(job_from_row).collect::<Result<Vec<_>, _>>()?;
        assignments.iter().map(|row| pair_with_job(assignment_from_row(row)?, &jobs)).collect()
    }
}

#[async_trait]
impl AssignmentStore for PostgresStore {
    // No `err`: a conflict here is the caller's 409, logged once by the HTTP edge.
    #[instrument(skip_all, fields(job_id = %job.id(), assignment_id = %assignment.id()))]
    async fn commit_assignment(
        &self,
        job: &Job,
        assignment: &Assignment,
        event: &DomainEvent,
        idempotency: Option<IdempotencyKey>,
    ) -> Result<(), CommitAssignmentError> {
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        // The job's row lock serializes racing assignments of one job: the
        // losers wait for the winner's commit, then re-check the status and
        // update nothing.
        let updated = sqlx::query("UPDATE jobs SET status = 'Assigned' WHERE id = $1 AND status = 'Unassigned'")
            .bind(job.id().as_uuid())
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        if updated.rows_affected() == 0 {
            let exists = sqlx::query("SELECT 1 FROM jobs WHERE id = $1")
                .bind(job.id().as_uuid())
                .fetch_optional(&mut *tx)
                .await
                .map_err(store_error)?;
            return Err(if exists.is_some() {
                CommitAssignmentError::JobAlreadyAssigned
            } else {
                CommitAssignmentError::JobNotFound
            });
        }
        // The contractor's row lock serializes assignments of one contractor,
        // so the overlap check below sees every assignment committed before.
        let contractor = sqlx::query("SELECT 1 FROM contractors WHERE id = $1 FOR UPDATE")
            .bind(assignment.contractor_id().as_uuid())
            .fetch_optional(&mut *tx)
            .await
            .map_err(store_error)?;
        if contractor.is_none() {
            return Err(CommitAssignmentError::ContractorNotFound);
        }
        let range = assignment.range();
        let overlap =
            sqlx::query("SELECT 1 FROM assignments WHERE contractor_id = $1 AND start_at < $2 AND end_at > $3 LIMIT 1")
                .bind(assignment.contractor_id().as_uuid())
                .bind(range.end().unix_millis())
                .bind(range.start().unix_millis())
                .fetch_optional(&mut *tx)
                .await
                .map_err(store_error)?;
        if overlap.is_some() {
            return Err(CommitAssignmentError::ContractorBusy);
        }
        sqlx::query(
            "INSERT INTO assignments (id, job_id, contractor_id, start_at, end_at, source, audit_id, region, created_at, event_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(assignment.id().as_uuid())
        .bind(assignment.job_id().as_uuid())
        .bind(assignment.contractor_id().as_uuid())
        .bind(range.start().unix_millis())
        .bind(range.end().unix_millis())
        .bind(assignment.source().as_str())
        .bind(assignment.audit_id().map(|a| a.as_uuid()))
        .bind(assignment.region().as_str())
        .bind(assignment.created_at_utc().unix_millis())
        .bind(assignment.event_id().as_uuid())
        .execute(&mut *tx)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(db) if db.is_unique_violation() => CommitAssignmentError::JobAlreadyAssigned,
            _ => store_error(e).into(),
        })?;
        append_event(&mut tx, event).await?;
        if let Some(key) = idempotency {
            // A racing request with the same key waits on the key's index
            // entry, then finds it live and stores nothing.
            let stored = sqlx::query(
                "INSERT INTO idempotency_keys (scope, key, fingerprint, assignment_id, created_at)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (scope, key) DO UPDATE SET fingerprint = EXCLUDED.fingerprint,
                    assignment_id = EXCLUDED.assignment_id, created_at = EXCLUDED.created_at
                 WHERE idempotency_keys.created_at < $6",
            )
            .bind(&key.scope)
            .bind(&key.key)
            .bind(&key.fingerprint)
            .bind(assignment.id().as_uuid())
            .bind(assignment.created_at_utc().unix_millis())
            .bind(assignment.created_at_utc().unix_millis() - IDEMPOTENCY_WINDOW_MILLIS)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
            if stored.rows_affected() == 0 {
                return Err(CommitAssignmentError::IdempotencyKeyTaken);
            }
        }
        tx.commit().await.map_err(store_error)?;
        Ok(())
    }

    async fn find_idempotent(
        &self,
        scope: String,
        key: String,
        not_before: Timestamp,
    ) -> Result<Option<(String, Assignment)>, StoreError> {
        let row = sqlx::query(
            "SELECT k.fingerprint, a.* FROM idempotency_keys k JOIN assignments a ON a.id = k.assignment_id
             WHERE k.scope = $1 AND k.key = $2 AND k.created_at >= $3",
        )
        .bind(scope)
        .bind(key)
        .bind(not_before.unix_millis())
        .fetch_optional(&self.pool)
        .await
        .map_err(store_error)?;
        let Some(row) = row else { return Ok(None) };
        let fingerprint: String = row.try_get("fingerprint").map_err(store_error)?;
        Ok(Some((fingerprint, assignment_from_row(&row)?)))
    }

    async fn purge_idempotency(&self, before: Timestamp) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1")
            .bind(before.unix_millis())
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(done.rows_affected())
    }
}

async fn append_event(tx: &mut sqlx::Transaction<'_, sqlx::Postgres>, event: &DomainEvent) -> Result<(), StoreError> {
    let payload = serde_json::to_value(event).map_err(corrupt)?;
    let event_id = event.event_id().as_uuid();
    let occurred = event.occurred_at_utc().unix_millis();
    sqlx::query(
        // Due at once (0), not at this node's clock: the publishing node
        // compares with its own, and clocks of nodes may differ.
        "INSERT INTO event_log (event_id, event_type, aggregate_id, payload, occurred_at, next_attempt_at)
         VALUES ($1, $2, $3, $4, $5, 0)",
    )
    .bind(event_id)
    .bind(event.event_type().as_str())
    .bind(event.aggregate_id())
    .bind(payload)
    .bind(occurred)
    .execute(&mut **tx)
    .await
    .map_err(store_error)?;
    let groups: Vec<String> = event.audience().into_iter().map(String::from).collect();
    sqlx::query("INSERT INTO event_groups (group_name, event_id) SELECT g, $2 FROM UNNEST($1::text[]) AS g")
        .bind(groups)
        .bind(event_id)
        .execute(&mut **tx)
        .await
        .map_err(store_error)?;
    Ok(())
}

/// Checks `fence` as the first statement of `tx`: see the module docs.
async fn check_fence(tx: &mut sqlx::Transaction<'_, sqlx::Postgres>, fence: Fence) -> Result<(), StoreError> {
    let Fence::Epoch(epoch) = fence else {
        return Ok(());
    };
    let (_, current): (String, i64) = sqlx::query_as(
        "SELECT set_config('idle_in_transaction_session_timeout', $1, true), epoch
         FROM publisher_lease WHERE id = 1 FOR SHARE",
    )
    .bind(FENCED_IDLE_LIMIT_MS)
    .fetch_one(&mut **tx)
    .await
    .map_err(store_error)?;
    if current == epoch {
        Ok(())
    } else {
        Err(StoreError::LeaseLost)
    }
}

/// Takes the next block of sequences, one per event, and gives them to the
/// events in order. The counter's row stays locked until the transaction
/// ends, so a concurrent claimer gets the block after this one.
async fn sequence_all(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    events: Vec<(DomainEvent, u32)>,
) -> Result<Vec<ClaimedEvent>, StoreError> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let count = i64::try_from(events.len()).map_err(corrupt)?;
    let last: i64 = sqlx::query_scalar("UPDATE event_sequence SET last = last + $1 WHERE id = 1 RETURNING last")
        .bind(count)
        .fetch_one(&mut **tx)
        .await
        .map_err(store_error)?;
    let claimed: Vec<ClaimedEvent> = events
        .into_iter()
        .zip(last - count + 1..)
        .map(|((event, attempts), sequence)| ClaimedEvent { event, sequence: Sequence(sequence), attempts })
        .collect();
    let ids: Vec<Uuid> = claimed.iter().map(|c| c.event.event_id().as_uuid()).collect();
    let sequences: Vec<i64> = claimed.iter().map(|c| c.sequence.0).collect();
    sqlx::query(
        "UPDATE event_log AS e SET sequence = u.sequence
         FROM UNNEST($1::uuid[], $2::bigint[]) AS u (event_id, sequence) WHERE e.event_id = u.event_id",
    )
    .bind(&ids)
    .bind(&sequences)
    .execute(&mut **tx)
    .await
    .map_err(store_error)?;
    sqlx::query(
        "UPDATE event_groups AS g SET sequence = u.sequence
         FROM UNNEST($1::uuid[], $2::bigint[]) AS u (event_id, sequence) WHERE g.event_id = u.event_id",
    )
    .bind(&ids)
    .bind(&sequences)
    .execute(&mut **tx)
    .await
    .map_err(store_error)?;
    Ok(claimed)
}

#[async_trait]
impl EventLog for PostgresStore {
    #[instrument(skip_all, err(level = "warn"))]
    async fn claim_due(&self, now: Timestamp, limit: u32, fence: Fence) -> Result<Vec<ClaimedEvent>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        check_fence(&mut tx, fence).await?;
        // Rows another node is claiming right now are skipped, not waited for.
        let rows = sqlx::query(
            "SELECT event_id, payload, attempts FROM event_log
             WHERE status = 'Pending' AND next_attempt_at <= $1 ORDER BY position LIMIT $2
             FOR UPDATE SKIP LOCKED",
        )
        .bind(now.unix_millis())
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await
        .map_err(store_error)?;
        let events = rows
            .iter()
            .map(|row| Ok((event_from_row(row)?, attempts_from_row(row)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        let claimed = sequence_all(&mut tx, events).await?;
        tx.commit().await.map_err(store_error)?;
        Ok(claimed)
    }

    #[instrument(skip_all, err(level = "warn"))]
    async fn claim(&self, events: Vec<DomainEvent>, fence: Fence) -> Result<Vec<ClaimedEvent>, StoreError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        check_fence(&mut tx, fence).await?;
        let ids: Vec<Uuid> = events.iter().map(|e| e.event_id().as_uuid()).collect();
        let rows = sqlx::query(
            "SELECT event_id, attempts FROM event_log
             WHERE event_id = ANY($1) AND status = 'Pending' FOR UPDATE SKIP LOCKED",
        )
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await
        .map_err(store_error)?;
        let mut attempts = rows
            .iter()
            .map(|row| Ok((uuid(row, "event_id")?, attempts_from_row(row)?)))
            .collect::<Result<HashMap<_, _>, StoreError>>()?;
        // In the given order; an event given twice is claimed once.
        let pending = events
            .into_iter()
            .filter_map(|event| attempts.remove(&event.event_id().as_uuid()).map(|a| (event, a)))
            .collect();
        let claimed = sequence_all(&mut tx, pending).await?;
        tx.commit().await.map_err(store_error)?;
        Ok(claimed)
    }

    #[instrument(skip_all, err(level = "warn"))]
    async fn mark_published(
        &self,
        published: Vec<PublishedRow>,
        at: Timestamp,
        fence: Fence,
    ) -> Result<(), StoreError> {
        if published.is_empty() {
            return Ok(());
        }
        let mut ids = Vec::with_capacity(published.len());
        let mut sequences = Vec::with_capacity(published.len());
        let mut groups = Vec::with_capacity(published.len());
        for row in &published {
            ids.push(row.event_id.as_uuid());
            sequences.push(row.sequence.0);
            groups.push(serde_json::to_string(&row.groups).map_err(corrupt)?);
        }
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        check_fence(&mut tx, fence).await?;
        sqlx::query(
            "UPDATE event_log AS e SET status = 'Published', published_at = $1,
                published_groups = u.groups::jsonb, attempts = e.attempts + 1
             FROM UNNEST($2::uuid[], $3::bigint[], $4::text[]) AS u (event_id, sequence, groups)
             WHERE e.event_id = u.event_id AND e.sequence = u.sequence AND e.status = 'Pending'",
        )
        .bind(at.unix_millis())
        .bind(ids)
        .bind(sequences)
        .bind(groups)
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        tx.commit().await.map_err(store_error)?;
        Ok(())
    }

    #[instrument(skip_all, err(level = "warn"))]
    async fn record_failure(
        &self,
        event_id: EventId,
        error: String,
        retry_at: Option<Timestamp>,
        fence: Fence,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        check_fence(&mut tx, fence).await?;
        // The attempt's sequence is given up: followers waiting for it move on.
        sqlx::query(
            "WITH failed AS (
                UPDATE event_log SET attempts = attempts + 1, last_error = $1, sequence = NULL,
                    status = CASE WHEN $2::bigint IS NULL THEN 'Failed' ELSE 'Pending' END,
                    next_attempt_at = COALESCE($2::bigint, next_attempt_at)
                WHERE event_id = $3 AND status = 'Pending' RETURNING event_id)
             UPDATE event_groups SET sequence = NULL WHERE event_id IN (SELECT event_id FROM failed)",
        )
        .bind(error)
        .bind(retry_at.map(Timestamp::unix_millis))
        .bind(event_id.as_uuid())
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        tx.commit().await.map_err(store_error)?;
        Ok(())
    }

    #[instrument(skip_all, err)]
    async fn held_sequences(&self, from: Sequence, to: Sequence) -> Result<Vec<Sequence>, StoreError> {
        let held: Vec<i64> =
            sqlx::query_scalar("SELECT sequence FROM event_log WHERE sequence BETWEEN $1 AND $2 ORDER BY sequence")
                .bind(from.0)
                .bind(to.0)
                .fetch_all(&self.pool)
                .await
                .map_err(store_error)?;
        Ok(held.into_iter().map(Sequence).collect())
    }

    async fn list(&self, query: EventQuery) -> Result<Vec<EventLogEntry>, StoreError> {
        let status = query.status.map(EventStatus::as_str);
        let rows = match query.after_sequence {
            Some(after) => sqlx::query(
                "SELECT * FROM event_log WHERE status = 'Published' AND sequence > $1 AND ($2::text IS NULL OR status = $2)
                 ORDER BY sequence LIMIT $3",
            )
            .bind(after.0)
            .bind(status)
            .bind(i64::from(query.limit))
            .fetch_all(&self.pool)
            .await,
            // Published rows by sequence, then the rest by commit order (a
            // claimed row has a sequence too, but not a published one).
            None => sqlx::query(
                "SELECT * FROM event_log WHERE ($1::text IS NULL OR status = $1)
                 ORDER BY status <> 'Published', CASE WHEN status = 'Published' THEN sequence END, position LIMIT $2",
            )
            .bind(status)
            .bind(i64::from(query.limit))
            .fetch_all(&self.pool)
            .await,
        }
        .map_err(store_error)?;
        rows.iter().map(entry_from_row).collect()
    }

    async fn get(&self, event_id: EventId) -> Result<Option<EventLogEntry>, StoreError> {
        sqlx::query("SELECT * FROM event_log WHERE event_id = $1")
            .bind(event_id.as_uuid())
            .fetch_optional(&self.pool)
            .await
            .map_err(store_error)?
            .as_ref()
            .map(entry_from_row)
            .transpose()
    }

    async fn replay(
        &self,
        group: Group,
        after: Sequence,
        limit: u32,
    ) -> Result<Vec<(DomainEvent, Sequence)>, StoreError> {
        let rows = sqlx::query(
            "SELECT e.payload, g.sequence FROM event_groups g JOIN event_log e ON e.event_id = g.event_id
             WHERE g.group_name = $1 AND g.sequence > $2 AND e.status = 'Published'
             ORDER BY g.sequence LIMIT $3",
        )
        .bind(group.as_str())
        .bind(after.0)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        rows.iter()
            .map(|row| Ok((event_from_row(row)?, Sequence(row.try_get("sequence").map_err(store_error)?))))
            .collect()
    }

    #[instrument(skip_all, err)]
    async fn retry(&self, event_id: EventId) -> Result<RetryOutcome, StoreError> {
        let row = sqlx::query(
            "WITH requeued AS (
                UPDATE event_log SET status = 'Pending', attempts = 0, next_attempt_at = $1
                WHERE event_id = $2 AND status = 'Failed' RETURNING 1)
             SELECT (SELECT COUNT(*) FROM requeued) AS requeued,
                    (SELECT COUNT(*) FROM event_log WHERE event_id = $2) AS found",
        )
        .bind(Timestamp::now().unix_millis())
        .bind(event_id.as_uuid())
        .fetch_one(&self.pool)
        .await
        .map_err(store_error)?;
        let requeued: i64 = row.try_get("requeued").map_err(store_error)?;
        let found: i64 = row.try_get("found").map_err(store_error)?;
        Ok(match (requeued, found) {
            (1.., _) => RetryOutcome::Requeued,
            (_, 0) => RetryOutcome::NotFound,
            _ => RetryOutcome::NotFailed,
        })
    }

    #[instrument(skip_all, err)]
    async fn purge(&self, before: Timestamp) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        let highest: Option<i64> =
            sqlx::query_scalar("SELECT MAX(sequence) FROM event_log WHERE status = 'Published' AND published_at < $1")
                .bind(before.unix_millis())
                .fetch_one(&mut *tx)
                .await
                .map_err(store_error)?;
        sqlx::query(
            "DELETE FROM event_groups WHERE event_id IN
               (SELECT event_id FROM event_log WHERE status = 'Published' AND published_at < $1)",
        )
        .bind(before.unix_millis())
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        let done = sqlx::query("DELETE FROM event_log WHERE status = 'Published' AND published_at < $1")
            .bind(before.unix_millis())
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        if let Some(highest) = highest {
            sqlx::query("UPDATE event_sequence SET purged_through = GREATEST(purged_through, $1) WHERE id = 1")
                .bind(highest)
                .execute(&mut *tx)
                .await
                .map_err(store_error)?;
        }
        tx.commit().await.map_err(store_error)?;
        Ok(done.rows_affected())
    }

    async fn purged_through(&self) -> Result<Sequence, StoreError> {
        let through: i64 = sqlx::query_scalar("SELECT purged_through FROM event_sequence WHERE id = 1")
            .fetch_one(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(Sequence(through))
    }

    async fn highest_published(&self) -> Result<Sequence, StoreError> {
        let highest: Option<i64> = sqlx::query_scalar("SELECT MAX(sequence) FROM event_log WHERE status = 'Published'")
            .fetch_one(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(Sequence(highest.unwrap_or(0)))
    }

    async fn backlog(&self) -> Result<(u64, u64), StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) FILTER (WHERE status = 'Pending') AS pending,
                    COUNT(*) FILTER (WHERE status = 'Failed') AS failed
             FROM event_log WHERE status <> 'Published'",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(store_error)?;
        let pending: i64 = row.try_get("pending").map_err(store_error)?;
        let failed: i64 = row.try_get("failed").map_err(store_error)?;
        Ok((pending as u64, failed as u64))
    }
}
