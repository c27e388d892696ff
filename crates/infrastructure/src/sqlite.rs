//! SQLite adapters for every storage port: the embedded default.
//!
//! Writes go through a pool of ONE connection, so SQLite's single writer is
//! queued fairly in process instead of failing with `SQLITE_BUSY`; reads use a
//! separate pool in WAL mode and never wait for writers. `sqlite::memory:`
//! uses one connection for both (each connection would see its own database).

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use smartscheduler_domain::ports::{
    AssignmentStore, ClaimedEvent, CommitAssignmentError, ContractorRepository, EventLog, EventLogEntry, EventQuery,
    EventStatus, IdempotencyKey, JobFilter, JobRepository, LoggedPayload, PublishedRow, RetryOutcome, StoreError,
};
use smartscheduler_domain::values::Address;
use smartscheduler_domain::{
    Assignment, AssignmentSource, Contractor, ContractorId, DomainEvent, DurationMinutes, EventId, Group, Job, JobId,
    JobStatus, JobType, NewAssignment, PersonName, Region, Sequence, Skill, TimeRange, Timestamp, Title,
};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use tracing::instrument;

use crate::errors::{corrupt, store_error};

/// How long an idempotency key is honoured: 24 hours.
pub const IDEMPOTENCY_TTL_MILLIS: i64 = 24 * 60 * 60 * 1000;

/// The SQLite store. Cheap to clone.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating it if missing) the database at `url` and applies
    /// pending migrations.
    ///
    /// # Errors
    /// When the file cannot be opened or a migration fails.
    pub async fn connect(url: &str) -> Result<Self, sqlx::Error> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let store = if in_memory {
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .connect_with(options)
                .await?;
            Self { writer: pool.clone(), reader: pool }
        } else {
            if let Some(parent) = options.get_filename().parent() {
                if !parent.as_os_str().is_empty() {
                    std::fs::create_dir_all(parent).map_err(sqlx::Error::Io)?;
                }
            }
            let options = options.journal_mode(SqliteJournalMode::Wal).synchronous(SqliteSynchronous::Normal);
            let writer = SqlitePoolOptions::new()
                .max_connections(1)
                .acquire_timeout(Duration::from_secs(30))
                .connect_with(options.clone())
                .await?;
            sqlx::migrate!("../../migrations/sqlite").run(&writer).await?;
            let reader = SqlitePoolOptions::new().max_connections(8).connect_with(options).await?;
            return Ok(Self { writer, reader });
        };
        sqlx::migrate!("../../migrations/sqlite").run(&store.writer).await?;
        Ok(store)
    }

    /// Whether the database answers.
    ///
    /// # Errors
    /// [`StoreError`] when it does not.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.reader).await.map_err(store_error)?;
        Ok(())
    }

    /// Closes both pools.
    pub async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
    }
}

fn contractor_from_row(row: &SqliteRow) -> Result<Contractor, StoreError> {
    let skills: Vec<String> = serde_json::from_str(row.try_get("skills").map_err(store_error)?).map_err(corrupt)?;
    Ok(Contractor::restore(
        parse_id(row, "id")?,
        PersonName::new(row.try_get("name").map_err(store_error)?).map_err(corrupt)?,
        Region::new(row.try_get("region").map_err(store_error)?).map_err(corrupt)?,
        skills.iter().map(|s| Skill::new(s)).collect::<Result<_, _>>().map_err(corrupt)?,
        Timestamp::from_unix_millis(row.try_get("created_at").map_err(store_error)?),
    ))
}

fn job_from_row(row: &SqliteRow) -> Result<Job, StoreError> {
    let title: Option<String> = row.try_get("title").map_err(store_error)?;
    let address: Option<String> = row.try_get("address").map_err(store_error)?;
    let desired: Option<i64> = row.try_get("desired_start").map_err(store_error)?;
    Ok(Job::restore(
        parse_id(row, "id")?,
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

fn assignment_from_row(row: &SqliteRow) -> Result<Assignment, StoreError> {
    let contractor_id: ContractorId = parse_id(row, "contractor_id")?;
    let start = Timestamp::from_unix_millis(row.try_get("start_at").map_err(store_error)?);
    let end = Timestamp::from_unix_millis(row.try_get("end_at").map_err(store_error)?);
    let audit: Option<String> = row.try_get("audit_id").map_err(store_error)?;
    let request = NewAssignment {
        contractor_id,
        range: TimeRange::new(start, end).map_err(corrupt)?,
        source: AssignmentSource::parse(row.try_get("source").map_err(store_error)?).map_err(corrupt)?,
        audit_id: audit.map(|a| a.parse()).transpose().map_err(corrupt)?,
    };
    Ok(Assignment::new(
        parse_id(row, "id")?,
        parse_id(row, "job_id")?,
        contractor_id,
        request,
        Region::new(row.try_get("region").map_err(store_error)?).map_err(corrupt)?,
        Timestamp::from_unix_millis(row.try_get("created_at").map_err(store_error)?),
        parse_id(row, "event_id")?,
    ))
}

fn parse_id<T: FromStr>(row: &SqliteRow, column: &str) -> Result<T, StoreError>
where
    T::Err: std::fmt::Display,
{
    let text: &str = row.try_get(column).map_err(store_error)?;
    text.parse().map_err(corrupt)
}

fn event_from_row(row: &SqliteRow) -> Result<DomainEvent, StoreError> {
    let payload: &str = row.try_get("payload").map_err(store_error)?;
    serde_json::from_str(payload).map_err(corrupt)
}

fn entry_from_row(row: &SqliteRow) -> Result<EventLogEntry, StoreError> {
    let status: &str = row.try_get("status").map_err(store_error)?;
    let status = EventStatus::parse(status).ok_or_else(|| corrupt(format!("unknown status {status}")))?;
    let sequence: Option<i64> = row.try_get("sequence").map_err(store_error)?;
    // The contract: sequence is null until published.
    let sequence = if status == EventStatus::Published { sequence.map(Sequence) } else { None };
    let groups: Vec<Group> =
        serde_json::from_str(row.try_get("published_groups").map_err(store_error)?).map_err(corrupt)?;
    let attempts: i64 = row.try_get("attempts").map_err(store_error)?;
    let published_at: Option<i64> = row.try_get("published_at").map_err(store_error)?;
    Ok(EventLogEntry {
        event_id: parse_id(row, "event_id")?,
        event_type: row.try_get("event_type").map_err(store_error)?,
        sequence,
        status,
        attempts: attempts as u32,
        occurred_at_utc: Timestamp::from_unix_millis(row.try_get("occurred_at").map_err(store_error)?),
        published_at_utc: published_at.map(Timestamp::from_unix_millis),
        published_groups: groups,
        last_error: row.try_get("last_error").map_err(store_error)?,
        payload: LoggedPayload { event: event_from_row(row)?, sequence },
    })
}

#[async_trait]
impl ContractorRepository for SqliteStore {
    #[instrument(skip_all, err)]
    async fn insert(&self, c: &Contractor) -> Result<(), StoreError> {
        let skills =
            serde_json::to_string(&c.skills().iter().map(Skill::as_str).collect::<Vec<_>>()).map_err(corrupt)?;
        sqlx::query("INSERT INTO contractors (id, name, region, skills, created_at) VALUES (?, ?, ?, ?, ?)")
            .bind(c.id().to_string())
            .bind(c.name().as_str())
            .bind(c.region().as_str())
            .bind(skills)
            .bind(c.created_at_utc().unix_millis())
            .execute(&self.writer)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn get(&self, id: ContractorId) -> Result<Option<Contractor>, StoreError> {
        sqlx::query("SELECT * FROM contractors WHERE id = ?")
            .bind(id.to_string())
            .fetch_optional(&self.reader)
            .await
            .map_err(store_error)?
            .as_ref()
            .map(contractor_from_row)
            .transpose()
    }

    async fn list(&self, region: Option<Region>, limit: u32) -> Result<Vec<Contractor>, StoreError> {
        let rows =
            sqlx::query("SELECT * FROM contractors WHERE (?1 IS NULL OR region = ?1) ORDER BY created_at, id LIMIT ?2")
                .bind(region.as_ref().map(Region::as_str))
                .bind(i64::from(limit))
                .fetch_all(&self.reader)
                .await
                .map_err(store_error)?;
        rows.iter().map(contractor_from_row).collect()
    }
}

#[async_trait]
impl JobRepository for SqliteStore {
    #[instrument(skip_all, err)]
    async fn insert(&self, job: &Job) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO jobs (id, job_type, title, region, duration_minutes, desired_start, address, status, created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(job.id().to_string())
        .bind(job.job_type().as_str())
        .bind(job.title().map(Title::as_str))
        .bind(job.region().as_str())
        .bind(i64::from(job.duration_minutes().get()))
        .bind(job.desired_start_utc().map(Timestamp::unix_millis))
        .bind(job.address().map(Address::as_str))
        .bind(job.status().as_str())
        .bind(job.created_at_utc().unix_millis())
        .execute(&self.writer)
        .await
        .map_err(store_error)?;
        Ok(())
    }

    async fn get(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        sqlx::query("SELECT * FROM jobs WHERE id = ?")
            .bind(id.to_string())
            .fetch_optional(&self.reader)
            .await
            .map_err(store_error)?
            .as_ref()
            .map(job_from_row)
            .transpose()
    }

    async fn list(&self, filter: JobFilter) -> Result<Vec<Job>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM jobs WHERE (?1 IS NULL OR region = ?1) AND (?2 IS NULL OR status = ?2)
             ORDER BY created_at, id LIMIT ?3",
        )
        .bind(filter.region.as_ref().map(Region::as_str))
        .bind(filter.status.map(JobStatus::as_str))
        .bind(i64::from(filter.limit))
        .fetch_all(&self.reader)
        .await
        .map_err(store_error)?;
        rows.iter().map(job_from_row).collect()
    }
}

#[async_trait]
impl AssignmentStore for SqliteStore {
    #[instrument(skip_all, err, fields(job_id = %job.id(), assignment_id = %assignment.id()))]
    async fn commit_assignment(
        &self,
        job: &Job,
        assignment: &Assignment,
        event: &DomainEvent,
        idempotency: Option<IdempotencyKey>,
    ) -> Result<(), CommitAssignmentError> {
        let mut tx = self.writer.begin().await.map_err(store_error)?;
        // The first statement writes, so this transaction holds SQLite's write
        // lock from the start: racing assignments are serialized, not retried.
        let updated = sqlx::query("UPDATE jobs SET status = 'Assigned' WHERE id = ? AND status = 'Unassigned'")
            .bind(job.id().to_string())
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        if updated.rows_affected() == 0 {
            let exists = sqlx::query("SELECT 1 FROM jobs WHERE id = ?")
                .bind(job.id().to_string())
                .fetch_optional(&mut *tx)
                .await
                .map_err(store_error)?;
            return Err(if exists.is_some() {
                CommitAssignmentError::JobAlreadyAssigned
            } else {
                CommitAssignmentError::JobNotFound
            });
        }
        let contractor = sqlx::query("SELECT 1 FROM contractors WHERE id = ?")
            .bind(assignment.contractor_id().to_string())
            .fetch_optional(&mut *tx)
            .await
            .map_err(store_error)?;
        if contractor.is_none() {
            return Err(CommitAssignmentError::ContractorNotFound);
        }
        let range = assignment.range();
        let overlap =
            sqlx::query("SELECT 1 FROM assignments WHERE contractor_id = ? AND start_at < ? AND end_at > ? LIMIT 1")
                .bind(assignment.contractor_id().to_string())
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
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(assignment.id().to_string())
        .bind(assignment.job_id().to_string())
        .bind(assignment.contractor_id().to_string())
        .bind(range.start().unix_millis())
        .bind(range.end().unix_millis())
        .bind(assignment.source().as_str())
        .bind(assignment.audit_id().map(|a| a.to_string()))
        .bind(assignment.region().as_str())
        .bind(assignment.created_at_utc().unix_millis())
        .bind(assignment.event_id().to_string())
        .execute(&mut *tx)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(db) if db.is_unique_violation() => CommitAssignmentError::JobAlreadyAssigned,
            _ => store_error(e).into(),
        })?;
        append_event(&mut tx, event).await?;
        if let Some(key) = idempotency {
            // A stale row under the same key (past its 24 h) is replaced; a
            // live one means another request took the key first.
            let stored = sqlx::query(
                "INSERT INTO idempotency_keys (scope, key, fingerprint, assignment_id, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (scope, key) DO UPDATE SET fingerprint = excluded.fingerprint,
                    assignment_id = excluded.assignment_id, created_at = excluded.created_at
                 WHERE idempotency_keys.created_at < ?6",
            )
            .bind(&key.scope)
            .bind(&key.key)
            .bind(&key.fingerprint)
            .bind(assignment.id().to_string())
            .bind(assignment.created_at_utc().unix_millis())
            .bind(assignment.created_at_utc().unix_millis() - IDEMPOTENCY_TTL_MILLIS)
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
             WHERE k.scope = ? AND k.key = ? AND k.created_at >= ?",
        )
        .bind(scope)
        .bind(key)
        .bind(not_before.unix_millis())
        .fetch_optional(&self.writer)
        .await
        .map_err(store_error)?;
        let Some(row) = row else { return Ok(None) };
        let fingerprint: String = row.try_get("fingerprint").map_err(store_error)?;
        Ok(Some((fingerprint, assignment_from_row(&row)?)))
    }

    async fn purge_idempotency(&self, before: Timestamp) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM idempotency_keys WHERE created_at < ?")
            .bind(before.unix_millis())
            .execute(&self.writer)
            .await
            .map_err(store_error)?;
        Ok(done.rows_affected())
    }
}

async fn append_event(tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>, event: &DomainEvent) -> Result<(), StoreError> {
    let payload = serde_json::to_string(event).map_err(corrupt)?;
    let event_id = event.event_id().to_string();
    let occurred = event.occurred_at_utc().unix_millis();
    sqlx::query(
        // Due at once (0): only a failed attempt sets a later time.
        "INSERT INTO event_log (event_id, event_type, aggregate_id, payload, occurred_at, next_attempt_at)
         VALUES (?, ?, ?, ?, ?, 0)",
    )
    .bind(&event_id)
    .bind(event.event_type().as_str())
    .bind(event.aggregate_id().to_string())
    .bind(payload)
    .bind(occurred)
    .execute(&mut **tx)
    .await
    .map_err(store_error)?;
    for group in event.audience() {
        sqlx::query("INSERT INTO event_groups (group_name, event_id) VALUES (?, ?)")
            .bind(group.as_str())
            .bind(&event_id)
            .execute(&mut **tx)
            .await
            .map_err(store_error)?;
    }
    Ok(())
}

/// Gives each event the next sequence, in order, and saves the counter.
async fn sequence_all(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    events: Vec<(DomainEvent, u32)>,
) -> Result<Vec<ClaimedEvent>, StoreError> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let last: i64 = sqlx::query_scalar("SELECT last FROM event_sequence WHERE id = 1")
        .fetch_one(&mut **tx)
        .await
        .map_err(store_error)?;
    let mut next = last;
    let mut claimed = Vec::with_capacity(events.len());
    for (event, attempts) in events {
        next += 1;
        let id = event.event_id().to_string();
        sqlx::query("UPDATE event_log SET sequence = ? WHERE event_id = ?")
            .bind(next)
            .bind(&id)
            .execute(&mut **tx)
            .await
            .map_err(store_error)?;
        sqlx::query("UPDATE event_groups SET sequence = ? WHERE event_id = ?")
            .bind(next)
            .bind(&id)
            .execute(&mut **tx)
            .await
            .map_err(store_error)?;
        claimed.push(ClaimedEvent { event, sequence: Sequence(next), attempts });
    }
    sqlx::query("UPDATE event_sequence SET last = ? WHERE id = 1")
        .bind(next)
        .execute(&mut **tx)
        .await
        .map_err(store_error)?;
    Ok(claimed)
}

#[async_trait]
impl EventLog for SqliteStore {
    #[instrument(skip_all, err)]
    async fn claim_due(&self, now: Timestamp, limit: u32) -> Result<Vec<ClaimedEvent>, StoreError> {
        let mut tx = self.writer.begin().await.map_err(store_error)?;
        let rows = sqlx::query(
            "SELECT event_id, payload, attempts FROM event_log
             WHERE status = 'Pending' AND next_attempt_at <= ? ORDER BY position LIMIT ?",
        )
        .bind(now.unix_millis())
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await
        .map_err(store_error)?;
        let events = rows
            .iter()
            .map(|row| Ok((event_from_row(row)?, row.try_get::<i64, _>("attempts").map_err(store_error)? as u32)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        let claimed = sequence_all(&mut tx, events).await?;
        tx.commit().await.map_err(store_error)?;
        Ok(claimed)
    }

    #[instrument(skip_all, err)]
    async fn claim(&self, events: Vec<DomainEvent>) -> Result<Vec<ClaimedEvent>, StoreError> {
        let mut tx = self.writer.begin().await.map_err(store_error)?;
        let mut pending = Vec::with_capacity(events.len());
        for event in events {
            let attempts: Option<i64> =
                sqlx::query_scalar("SELECT attempts FROM event_log WHERE event_id = ? AND status = 'Pending'")
                    .bind(event.event_id().to_string())
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(store_error)?;
            if let Some(attempts) = attempts {
                pending.push((event, attempts as u32));
            }
        }
        let claimed = sequence_all(&mut tx, pending).await?;
        tx.commit().await.map_err(store_error)?;
        Ok(claimed)
    }

    #[instrument(skip_all, err)]
    async fn mark_published(&self, published: Vec<PublishedRow>, at: Timestamp) -> Result<(), StoreError> {
        let mut tx = self.writer.begin().await.map_err(store_error)?;
        for row in published {
            let groups = serde_json::to_string(&row.groups).map_err(corrupt)?;
            sqlx::query(
                "UPDATE event_log SET status = 'Published', published_at = ?, published_groups = ?, attempts = attempts + 1
                 WHERE event_id = ? AND sequence = ? AND status = 'Pending'",
            )
            .bind(at.unix_millis())
            .bind(groups)
            .bind(row.event_id.to_string())
            .bind(row.sequence.0)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        }
        tx.commit().await.map_err(store_error)?;
        Ok(())
    }

    #[instrument(skip_all, err)]
    async fn record_failure(
        &self,
        event_id: EventId,
        error: String,
        retry_at: Option<Timestamp>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE event_log SET attempts = attempts + 1, last_error = ?1,
                status = CASE WHEN ?2 IS NULL THEN 'Failed' ELSE 'Pending' END,
                next_attempt_at = COALESCE(?2, next_attempt_at)
             WHERE event_id = ?3 AND status = 'Pending'",
        )
        .bind(error)
        .bind(retry_at.map(Timestamp::unix_millis))
        .bind(event_id.to_string())
        .execute(&self.writer)
        .await
        .map_err(store_error)?;
        Ok(())
    }

    async fn list(&self, query: EventQuery) -> Result<Vec<EventLogEntry>, StoreError> {
        let status = query.status.map(EventStatus::as_str);
        let rows = match query.after_sequence {
            Some(after) => sqlx::query(
                "SELECT * FROM event_log WHERE status = 'Published' AND sequence > ?1 AND (?2 IS NULL OR status = ?2)
                 ORDER BY sequence LIMIT ?3",
            )
            .bind(after.0)
            .bind(status)
            .bind(i64::from(query.limit))
            .fetch_all(&self.reader)
            .await,
            // Published rows by sequence, then the rest by commit order (a
            // claimed row has a sequence too, but not a published one).
            None => {
                sqlx::query(
                    "SELECT * FROM event_log WHERE (?1 IS NULL OR status = ?1)
                 ORDER BY status <> 'Published', CASE WHEN status = 'Published' THEN sequence END, position LIMIT ?2",
                )
                .bind(status)
                .bind(i64::from(query.limit))
                .fetch_all(&self.reader)
                .await
            }
        }
        .map_err(store_error)?;
        rows.iter().map(entry_from_row).collect()
    }

    async fn get(&self, event_id: EventId) -> Result<Option<EventLogEntry>, StoreError> {
        sqlx::query("SELECT * FROM event_log WHERE event_id = ?")
            .bind(event_id.to_string())
            .fetch_optional(&self.reader)
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
             WHERE g.group_name = ? AND g.sequence > ? ORDER BY g.sequence LIMIT ?",
        )
        .bind(group.as_str())
        .bind(after.0)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await
        .map_err(store_error)?;
        rows.iter()
            .map(|row| Ok((event_from_row(row)?, Sequence(row.try_get("sequence").map_err(store_error)?))))
            .collect()
    }

    #[instrument(skip_all, err)]
    async fn retry(&self, event_id: EventId) -> Result<RetryOutcome, StoreError> {
        let mut tx = self.writer.begin().await.map_err(store_error)?;
        let done = sqlx::query(
            "UPDATE event_log SET status = 'Pending', attempts = 0, next_attempt_at = ?
             WHERE event_id = ? AND status = 'Failed'",
        )
        .bind(Timestamp::now().unix_millis())
        .bind(event_id.to_string())
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        let outcome = if done.rows_affected() == 1 {
            RetryOutcome::Requeued
        } else {
            let exists = sqlx::query("SELECT 1 FROM event_log WHERE event_id = ?")
                .bind(event_id.to_string())
                .fetch_optional(&mut *tx)
                .await
                .map_err(store_error)?;
            if exists.is_some() {
                RetryOutcome::NotFailed
            } else {
                RetryOutcome::NotFound
            }
        };
        tx.commit().await.map_err(store_error)?;
        Ok(outcome)
    }

    #[instrument(skip_all, err)]
    async fn purge(&self, before: Timestamp) -> Result<u64, StoreError> {
        let mut tx = self.writer.begin().await.map_err(store_error)?;
        let highest: Option<i64> =
            sqlx::query_scalar("SELECT MAX(sequence) FROM event_log WHERE status = 'Published' AND published_at < ?")
                .bind(before.unix_millis())
                .fetch_one(&mut *tx)
                .await
                .map_err(store_error)?;
        sqlx::query(
            "DELETE FROM event_groups WHERE event_id IN
               (SELECT event_id FROM event_log WHERE status = 'Published' AND published_at < ?)",
        )
        .bind(before.unix_millis())
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        let done = sqlx::query("DELETE FROM event_log WHERE status = 'Published' AND published_at < ?")
            .bind(before.unix_millis())
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        if let Some(highest) = highest {
            sqlx::query("UPDATE event_sequence SET purged_through = MAX(purged_through, ?) WHERE id = 1")
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
            .fetch_one(&self.reader)
            .await
            .map_err(store_error)?;
        Ok(Sequence(through))
    }

    async fn highest_published(&self) -> Result<Sequence, StoreError> {
        let highest: Option<i64> = sqlx::query_scalar("SELECT MAX(sequence) FROM event_log WHERE status = 'Published'")
            .fetch_one(&self.reader)
            .await
            .map_err(store_error)?;
        Ok(Sequence(highest.unwrap_or(0)))
    }

    async fn backlog(&self) -> Result<(u64, u64), StoreError> {
        let row = sqlx::query(
            "SELECT COALESCE(SUM(status = 'Pending'), 0) AS pending, COALESCE(SUM(status = 'Failed'), 0) AS failed
             FROM event_log WHERE status <> 'Published'",
        )
        .fetch_one(&self.reader)
        .await
        .map_err(store_error)?;
        let pending: i64 = row.try_get("pending").map_err(store_error)?;
        let failed: i64 = row.try_get("failed").map_err(store_error)?;
        Ok((pending as u64, failed as u64))
    }
}
