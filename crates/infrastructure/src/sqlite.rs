//! SQLite adapters for every storage port: the embedded default.
//!
//! Writes go through a pool of ONE connection, so SQLite's single writer is
//! queued fairly in process instead of failing with `SQLITE_BUSY`; reads use a
//! separate pool in WAL mode and never wait for writers. `sqlite::memory:`
//! uses one connection for both (each connection would see its own database).
//!
//! Group commit: assignments are committed by one task that takes every
//! assignment waiting (up to [`MAX_GROUP`]) and commits them in ONE
//! transaction. Each is checked with one read (job, contractor, overlap,
//! idempotency key) before it writes anything, so a refused assignment
//! leaves nothing behind and does not disturb the others; the single writer
//! means no one else changes those rows between the check and the write. If
//! the group's transaction fails as a whole, each assignment is committed
//! again on its own, so one bad request never fails its neighbours. The
//! relay's claims and publishes are set-based too (one statement per batch,
//! over a JSON array), so the writer spends a few statements per assignment.
//! SQLite serves one node, so there is no publisher lease: fences are not
//! checked here.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use smartscheduler_domain::ports::{
    AssignmentRepository, AssignmentStore, ClaimedEvent, CommitAssignmentError, ContractorRepository, EventLog,
    EventLogEntry, EventQuery, EventStatus, Fence, IdempotencyKey, JobFilter, JobRepository, LoggedPayload,
    PublishedRow, RetryOutcome, StoreError, IDEMPOTENCY_WINDOW_MILLIS,
};
use smartscheduler_domain::values::Address;
use smartscheduler_domain::{
    Assignment, AssignmentSource, Contractor, ContractorId, DomainEvent, DurationMinutes, EventId, Group, Job, JobId,
    JobStatus, JobType, NewAssignment, PersonName, Region, Sequence, Skill, TimeRange, Timestamp, Title,
};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use tokio::sync::{mpsc, oneshot};
use tracing::instrument;

use crate::assignment_reads::pair_with_job;
use crate::errors::{corrupt, store_error};

/// Most assignments committed in one transaction.
pub const MAX_GROUP: usize = 256;

/// The SQLite store. Cheap to clone.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    /// To the group-commit task.
    commits: mpsc::Sender<PendingCommit>,
}

/// An assignment waiting for the group-commit task, its values ready to bind.
#[derive(Debug)]
struct PendingCommit {
    row: AssignmentRow,
    reply: oneshot::Sender<Result<(), CommitAssignmentError>>,
}

/// Everything one assignment writes, serialized by the caller (off the writer).
#[derive(Debug)]
struct AssignmentRow {
    job_id: String,
    assignment_id: String,
    contractor_id: String,
    start_at: i64,
    end_at: i64,
    source: &'static str,
    audit_id: Option<String>,
    region: String,
    created_at: i64,
    event_id: String,
    event_type: &'static str,
    aggregate_id: String,
    payload: String,
    occurred_at: i64,
    /// The audience: a JSON array of group names.
    groups: serde_json::Value,
    idempotency: Option<IdempotencyKey>,
}

impl AssignmentRow {
    /// The row as [`write_group`] reads it.
    fn to_json(&self) -> serde_json::Value {
        let key = self.idempotency.as_ref();
        serde_json::json!({
            "id": self.assignment_id, "job": self.job_id, "contractor": self.contractor_id,
            "start": self.start_at, "end": self.end_at, "source": self.source, "audit": self.audit_id,
            "region": self.region, "created": self.created_at, "event": self.event_id, "type": self.event_type,
            "aggregate": self.aggregate_id, "payload": self.payload, "occurred": self.occurred_at,
            "groups": self.groups, "scope": key.map(|k| &k.scope), "key": key.map(|k| &k.key),
            "fingerprint": key.map(|k| &k.fingerprint),
        })
    }

    fn new(
        job: &Job,
        assignment: &Assignment,
        event: &DomainEvent,
        idempotency: Option<IdempotencyKey>,
    ) -> Result<Self, StoreError> {
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
            event_id: event.event_id().to_string(),
            event_type: event.event_type().as_str(),
            aggregate_id: event.aggregate_id().to_string(),
            payload: serde_json::to_string(event).map_err(corrupt)?,
            occurred_at: event.occurred_at_utc().unix_millis(),
            groups: serde_json::to_value(event.audience()).map_err(corrupt)?,
            idempotency,
        })
    }
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
            Self::with_pools(pool.clone(), pool)
        } else {
            if let Some(parent) = options.get_filename().parent() {
                if !parent.as_os_str().is_empty() {
                    std::fs::create_dir_all(parent).map_err(sqlx::Error::Io)?;
                }
            }
            create_owner_only(options.get_filename()).map_err(sqlx::Error::Io)?;
            // Pages are read through a shared memory map rather than a
            // pread each (readers re-read pages after every commit), and each
            // connection keeps a larger cache than SQLite's 2 MiB default.
            let options = options
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .pragma("mmap_size", "268435456")
                .pragma("cache_size", "-16384")
                .pragma("temp_store", "memory");
            let writer = SqlitePoolOptions::new()
                .max_connections(1)
                .acquire_timeout(Duration::from_secs(30))
                .connect_with(options.clone())
                .await?;
            sqlx::migrate!("../../migrations/sqlite").run(&writer).await?;
            let reader = SqlitePoolOptions::new().max_connections(8).connect_with(options).await?;
            return Ok(Self::with_pools(writer, reader));
        };
        sqlx::migrate!("../../migrations/sqlite").run(&store.writer).await?;
        Ok(store)
    }

    /// The store over its pools, with its group-commit task started.
    fn with_pools(writer: SqlitePool, reader: SqlitePool) -> Self {
        let (commits, queue) = mpsc::channel(MAX_GROUP * 4);
        tokio::spawn(group_commit(writer.clone(), queue));
        Self { writer, reader, commits }
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
    T::Err: std::error::Error + Send + Sync + 'static,
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

/// Creates the database file with mode 0600 when it does not exist yet, so
/// that SQLite (which would create it 0644 under the usual umask) opens it
/// as is; SQLite gives its `-wal` and `-shm` files the database file's mode.
fn create_owner_only(path: &std::path::Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(err) => Err(err),
    }
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
impl AssignmentRepository for SqliteStore {
    async fn of_job(&self, job: JobId) -> Result<Option<Assignment>, StoreError> {
        sqlx::query("SELECT * FROM assignments WHERE job_id = ?")
            .bind(job.to_string())
            .fetch_optional(&self.reader)
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
            "SELECT * FROM assignments WHERE contractor_id = ?1 ORDER BY created_at DESC, id DESC LIMIT ?2",
        )
        .bind(contractor.to_string())
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await
        .map_err(store_error)?;
        let jobs = sqlx::query(
            "SELECT * FROM jobs WHERE id IN (SELECT job_id FROM assignments WHERE contractor_id = ?1
             ORDER BY created_at DESC, id DESC LIMIT ?2)",
        )
        .bind(contractor.to_string())
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await
        .map_err(store_error)?;
        let jobs = jobs.iter().map(job_from_row).collect::<Result<Vec<_>, _>>()?;
        assignments.iter().map(|row| pair_with_job(assignment_from_row(row)?, &jobs)).collect()
    }
}

#[async_trait]
impl AssignmentStore for SqliteStore {
    // No `err`: a conflict here is the caller's 409, logged once by the HTTP edge.
    #[instrument(skip_all, fields(job_id = %job.id(), assignment_id = %assignment.id()))]
    async fn commit_assignment(
        &self,
        job: &Job,
        assignment: &Assignment,
        event: &DomainEvent,
        idempotency: Option<IdempotencyKey>,
    ) -> Result<(), CommitAssignmentError> {
        let row = AssignmentRow::new(job, assignment, event, idempotency)?;
        let (reply, answer) = oneshot::channel();
        let closed = || StoreError::Unavailable("the SQLite writer has stopped".into());
        self.commits.send(PendingCommit { row, reply }).await.map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
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

/// The group-commit task: commits whatever is waiting, in one transaction,
/// until every [`SqliteStore`] clone is gone.
async fn group_commit(writer: SqlitePool, mut queue: mpsc::Receiver<PendingCommit>) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    while queue.recv_many(&mut group, MAX_GROUP).await > 0 {
        metrics::histogram!("smartscheduler_sqlite_group_commit_size").record(group.len() as f64);
        match commit_group(&writer, &group).await {
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
                tracing::warn!(error = %err, size = group.len(), "group commit failed; committing one by one");
                for pending in group.drain(..) {
                    let outcome = match commit_group(&writer, std::slice::from_ref(&pending)).await {
                        Ok(mut outcomes) => outcomes.pop().expect("one outcome per assignment"),
                        Err(err) => Err(err.into()),
                    };
                    let _ = pending.reply.send(outcome);
                }
            }
        }
    }
}

/// Commits `group` in one transaction, in a fixed number of statements
/// whatever its size: one read checks every assignment against the database,
/// the group is then checked against itself in order (two assignments of one
/// job, overlapping ranges of one contractor, one idempotency key), and the
/// accepted ones are written with one statement per table over a JSON array.
/// A refused assignment writes nothing. An `Err` means nothing was committed.
async fn commit_group(
    writer: &SqlitePool,
    group: &[PendingCommit],
) -> Result<Vec<Result<(), CommitAssignmentError>>, StoreError> {
    let rows: Vec<&AssignmentRow> = group.iter().map(|p| &p.row).collect();
    let mut tx = writer.begin().await.map_err(store_error)?;
    let checks = check_group(&mut tx, &rows).await?;
    let mut outcomes = Vec::with_capacity(rows.len());
    let mut accepted = Vec::with_capacity(rows.len());
    let mut jobs_taken = std::collections::HashSet::new();
    let mut booked: std::collections::HashMap<&str, Vec<(i64, i64)>> = std::collections::HashMap::new();
    let mut keys_taken = std::collections::HashSet::new();
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
    if !accepted.is_empty() {
        write_group(&mut tx, &serde_json::Value::Array(accepted).to_string()).await?;
    }
    tx.commit().await.map_err(store_error)?;
    Ok(outcomes)
}

/// What the database says of one assignment of a group.
struct Check {
    job_status: Option<String>,
    job_taken: bool,
    contractor_exists: bool,
    busy: bool,
    key_taken: bool,
}

/// One read for the whole group: each assignment's job status, whether its
/// job already has an assignment, whether its contractor exists or is booked
/// over its range, and whether its idempotency key is live. In group order.
async fn check_group(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    rows: &[&AssignmentRow],
) -> Result<Vec<Check>, StoreError> {
    let probes = rows
        .iter()
        .map(|row| {
            let (scope, key) = row.idempotency.as_ref().map(|k| (k.scope.as_str(), k.key.as_str())).unzip();
            serde_json::json!({
                "job": row.job_id, "contractor": row.contractor_id, "start": row.start_at, "end": row.end_at,
                "scope": scope, "key": key, "live": row.created_at - IDEMPOTENCY_WINDOW_MILLIS,
            })
        })
        .collect();
    let found = sqlx::query(
        "SELECT (SELECT status FROM jobs WHERE id = r.value ->> '$.job') AS job_status,
                EXISTS (SELECT 1 FROM assignments WHERE job_id = r.value ->> '$.job') AS job_taken,
                EXISTS (SELECT 1 FROM contractors WHERE id = r.value ->> '$.contractor') AS contractor_exists,
                EXISTS (SELECT 1 FROM assignments WHERE contractor_id = r.value ->> '$.contractor'
                        AND start_at < r.value ->> '$.end' AND end_at > r.value ->> '$.start') AS busy,
                EXISTS (SELECT 1 FROM idempotency_keys WHERE scope = r.value ->> '$.scope'
                        AND key = r.value ->> '$.key' AND created_at >= r.value ->> '$.live') AS key_taken
         FROM json_each(?) AS r ORDER BY r.key",
    )
    .bind(serde_json::Value::Array(probes).to_string())
    .fetch_all(&mut **tx)
    .await
    .map_err(store_error)?;
    if found.len() != rows.len() {
        return Err(StoreError::Unexpected(format!("checked {} of {} assignments", found.len(), rows.len()).into()));
    }
    found
        .iter()
        .map(|row| {
            Ok(Check {
                job_status: row.try_get("job_status").map_err(store_error)?,
                job_taken: row.try_get("job_taken").map_err(store_error)?,
                contractor_exists: row.try_get("contractor_exists").map_err(store_error)?,
                busy: row.try_get("busy").map_err(store_error)?,
                key_taken: row.try_get("key_taken").map_err(store_error)?,
            })
        })
        .collect()
}

/// Writes the accepted assignments of a group (a JSON array of
/// [`AssignmentRow::to_json`]): one statement per table, in group order, so
/// EventLog positions follow commit order.
async fn write_group(tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>, accepted: &str) -> Result<(), StoreError> {
    const STATEMENTS: [&str; 5] = [
        "UPDATE jobs SET status = 'Assigned' WHERE id IN (SELECT value ->> '$.job' FROM json_each(?1))",
        "INSERT INTO assignments (id, job_id, contractor_id, start_at, end_at, source, audit_id, region, created_at, event_id)
         SELECT value ->> '$.id', value ->> '$.job', value ->> '$.contractor', value ->> '$.start', value ->> '$.end',
                value ->> '$.source', value ->> '$.audit', value ->> '$.region', value ->> '$.created', value ->> '$.event'
         FROM json_each(?1) ORDER BY key",
        // Due at once (0): only a failed attempt sets a later time.
        "INSERT INTO event_log (event_id, event_type, aggregate_id, payload, occurred_at, next_attempt_at)
         SELECT value ->> '$.event', value ->> '$.type', value ->> '$.aggregate', value ->> '$.payload',
                value ->> '$.occurred', 0
         FROM json_each(?1) ORDER BY key",
        "INSERT INTO event_groups (group_name, event_id)
         SELECT g.value, r.value ->> '$.event' FROM json_each(?1) AS r, json_each(r.value -> '$.groups') AS g",
        // A stale row under the same key (past its 24 h) is replaced; the
        // check has refused live ones. (`WHERE` keeps `ON CONFLICT` unambiguous.)
        "INSERT INTO idempotency_keys (scope, key, fingerprint, assignment_id, created_at)
         SELECT value ->> '$.scope', value ->> '$.key', value ->> '$.fingerprint', value ->> '$.id', value ->> '$.created'
         FROM json_each(?1) WHERE value ->> '$.scope' IS NOT NULL
         ON CONFLICT (scope, key) DO UPDATE SET fingerprint = excluded.fingerprint,
            assignment_id = excluded.assignment_id, created_at = excluded.created_at",
    ];
    for statement in STATEMENTS {
        sqlx::query(statement).bind(accepted).execute(&mut **tx).await.map_err(store_error)?;
    }
    Ok(())
}

/// Gives each event the next sequence, in order, and saves the counter:
/// three statements for the whole batch.
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
    let mut pairs = Vec::with_capacity(events.len());
    let mut claimed = Vec::with_capacity(events.len());
    for (event, attempts) in events {
        next += 1;
        pairs.push(serde_json::json!([event.event_id().to_string(), next]));
        claimed.push(ClaimedEvent { event, sequence: Sequence(next), attempts });
    }
    let pairs = serde_json::Value::Array(pairs).to_string();
    for table in ["event_log", "event_groups"] {
        sqlx::query(&format!(
            "UPDATE {table} SET sequence = p.seq
             FROM (SELECT value ->> 0 AS id, value ->> 1 AS seq FROM json_each(?1)) AS p
             WHERE {table}.event_id = p.id"
        ))
        .bind(&pairs)
        .execute(&mut **tx)
        .await
        .map_err(store_error)?;
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
    async fn claim_due(&self, now: Timestamp, limit: u32, _fence: Fence) -> Result<Vec<ClaimedEvent>, StoreError> {
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
    async fn claim(&self, events: Vec<DomainEvent>, _fence: Fence) -> Result<Vec<ClaimedEvent>, StoreError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let ids = serde_json::to_string(&events.iter().map(|e| e.event_id().to_string()).collect::<Vec<_>>())
            .map_err(corrupt)?;
        let mut tx = self.writer.begin().await.map_err(store_error)?;
        // `+status`: look rows up by id; the planner would otherwise walk
        // every Pending row through the status index and scan the array for each.
        let rows = sqlx::query(
            "SELECT event_id, attempts FROM event_log
             WHERE event_id IN (SELECT value FROM json_each(?)) AND +status = 'Pending'",
        )
        .bind(ids)
        .fetch_all(&mut *tx)
        .await
        .map_err(store_error)?;
        let mut attempts = std::collections::HashMap::with_capacity(rows.len());
        for row in &rows {
            let id: String = row.try_get("event_id").map_err(store_error)?;
            attempts.insert(id, row.try_get::<i64, _>("attempts").map_err(store_error)? as u32);
        }
        // In the order given: that is publish order.
        let pending = events
            .into_iter()
            .filter_map(|event| attempts.get(&event.event_id().to_string()).map(|a| (event, *a)))
            .collect();
        let claimed = sequence_all(&mut tx, pending).await?;
        tx.commit().await.map_err(store_error)?;
        Ok(claimed)
    }

    #[instrument(skip_all, err)]
    async fn mark_published(
        &self,
        published: Vec<PublishedRow>,
        at: Timestamp,
        _fence: Fence,
    ) -> Result<(), StoreError> {
        if published.is_empty() {
            return Ok(());
        }
        let rows = published
            .iter()
            .map(|row| {
                let groups = serde_json::to_string(&row.groups).map_err(corrupt)?;
                Ok(serde_json::json!([row.event_id.to_string(), row.sequence.0, groups]))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        // `+status`: drive the update from the array (see `claim`).
        sqlx::query(
            "UPDATE event_log SET status = 'Published', published_at = ?1, published_groups = p.groups,
                attempts = attempts + 1
             FROM (SELECT value ->> 0 AS id, value ->> 1 AS seq, value ->> 2 AS groups FROM json_each(?2)) AS p
             WHERE event_log.event_id = p.id AND event_log.sequence = p.seq AND +event_log.status = 'Pending'",
        )
        .bind(at.unix_millis())
        .bind(serde_json::Value::Array(rows).to_string())
        .execute(&self.writer)
        .await
        .map_err(store_error)?;
        Ok(())
    }

    #[instrument(skip_all, err)]
    async fn record_failure(
        &self,
        event_id: EventId,
        error: String,
        retry_at: Option<Timestamp>,
        _fence: Fence,
    ) -> Result<(), StoreError> {
        let mut tx = self.writer.begin().await.map_err(store_error)?;
        // The attempt's sequence is given up: it will never be published.
        let failed = sqlx::query(
            "UPDATE event_log SET attempts = attempts + 1, last_error = ?1, sequence = NULL,
                status = CASE WHEN ?2 IS NULL THEN 'Failed' ELSE 'Pending' END,
                next_attempt_at = COALESCE(?2, next_attempt_at)
             WHERE event_id = ?3 AND status = 'Pending'",
        )
        .bind(error)
        .bind(retry_at.map(Timestamp::unix_millis))
        .bind(event_id.to_string())
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        if failed.rows_affected() > 0 {
            sqlx::query("UPDATE event_groups SET sequence = NULL WHERE event_id = ?1")
                .bind(event_id.to_string())
                .execute(&mut *tx)
                .await
                .map_err(store_error)?;
        }
        tx.commit().await.map_err(store_error)?;
        Ok(())
    }

    async fn held_sequences(&self, from: Sequence, to: Sequence) -> Result<Vec<Sequence>, StoreError> {
        let held: Vec<i64> =
            sqlx::query_scalar("SELECT sequence FROM event_log WHERE sequence BETWEEN ?1 AND ?2 ORDER BY sequence")
                .bind(from.0)
                .bind(to.0)
                .fetch_all(&self.reader)
                .await
                .map_err(store_error)?;
        Ok(held.into_iter().map(Sequence).collect())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn north() -> Region {
        Region::new("north").unwrap()
    }

    async fn stored_job(store: &SqliteStore) -> Job {
        let job = Job::create(
            JobType::new("Flooring").unwrap(),
            None,
            north(),
            DurationMinutes::new(60).unwrap(),
            None,
            None,
            Timestamp::now(),
        );
        JobRepository::insert(store, &job).await.unwrap();
        job
    }

    async fn stored_contractor(store: &SqliteStore) -> Contractor {
        let c = Contractor::create(PersonName::new("Ana").unwrap(), north(), vec![], Timestamp::now()).unwrap();
        ContractorRepository::insert(store, &c).await.unwrap();
        c
    }

    /// The pending commit of `job` to `contractor` from `from` to `to` minutes past a fixed hour.
    fn pending(job: &Job, contractor: &Contractor, from: i64, to: i64, key: Option<&str>) -> PendingCommit {
        let base = Timestamp::parse_rfc3339("t", "2030-01-01T10:00:00Z").unwrap();
        let mut job = job.clone();
        let request = NewAssignment {
            contractor_id: contractor.id(),
            range: TimeRange::new(base.plus_millis(from * 60_000), base.plus_millis(to * 60_000)).unwrap(),
            source: AssignmentSource::Manual,
            audit_id: None,
        };
        let (assignment, event) = job.assign(contractor, request, Timestamp::now()).unwrap();
        let idempotency = key.map(|k| IdempotencyKey { scope: "sub".into(), key: k.into(), fingerprint: "f".into() });
        let row = AssignmentRow::new(&job, &assignment, &DomainEvent::from(event), idempotency).unwrap();
        PendingCommit { row, reply: oneshot::channel().0 }
    }

    async fn count(store: &SqliteStore, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}")).fetch_one(&store.reader).await.unwrap()
    }

    #[tokio::test]
    async fn one_group_checks_its_assignments_against_each_other_in_order() {
        let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
        let (j1, j2, j3, j4, j5) = (
            stored_job(&store).await,
            stored_job(&store).await,
            stored_job(&store).await,
            stored_job(&store).await,
            stored_job(&store).await,
        );
        let (ana, ben) = (stored_contractor(&store).await, stored_contractor(&store).await);
        let ghost = Contractor::create(PersonName::new("Ghost").unwrap(), north(), vec![], Timestamp::now()).unwrap();
        let group = [
            pending(&j1, &ana, 0, 60, Some("k1")), // ok
            pending(&j1, &ben, 0, 60, None),       // the same job again: taken in this group
            pending(&j2, &ana, 30, 90, None),      // Ana is booked 0-60 by the first
            pending(&j3, &ana, 60, 120, None),     // touching: ok
            pending(&j4, &ghost, 0, 60, None),     // no such contractor
            pending(&j5, &ben, 0, 60, Some("k1")), // the key is taken by the first
        ];
        let outcomes = commit_group(&store.writer, &group).await.unwrap();
        assert_eq!(
            outcomes,
            vec![
                Ok(()),
                Err(CommitAssignmentError::JobAlreadyAssigned),
                Err(CommitAssignmentError::ContractorBusy),
                Ok(()),
                Err(CommitAssignmentError::ContractorNotFound),
                Err(CommitAssignmentError::IdempotencyKeyTaken),
            ]
        );
        assert_eq!(count(&store, "assignments").await, 2);
        assert_eq!(count(&store, "event_log").await, 2);
        assert_eq!(count(&store, "event_groups").await, 4);
        assert_eq!(count(&store, "idempotency_keys").await, 1);
        let assigned: Vec<String> = sqlx::query_scalar("SELECT id FROM jobs WHERE status = 'Assigned' ORDER BY id")
            .fetch_all(&store.reader)
            .await
            .unwrap();
        let mut expected = vec![j1.id().to_string(), j3.id().to_string()];
        expected.sort();
        assert_eq!(assigned, expected);
        // EventLog positions follow the group's order.
        let logged: Vec<String> = sqlx::query_scalar("SELECT event_id FROM event_log ORDER BY position")
            .fetch_all(&store.reader)
            .await
            .unwrap();
        assert_eq!(logged, vec![group[0].row.event_id.clone(), group[3].row.event_id.clone()]);

        // A second group sees the first one's rows in the database.
        let again = [pending(&j5, &ana, 0, 30, None), pending(&j5, &ben, 0, 60, Some("k1"))];
        let outcomes = commit_group(&store.writer, &again).await.unwrap();
        assert_eq!(
            outcomes,
            vec![Err(CommitAssignmentError::ContractorBusy), Err(CommitAssignmentError::IdempotencyKeyTaken)]
        );
        assert_eq!(count(&store, "assignments").await, 2);
    }
}
