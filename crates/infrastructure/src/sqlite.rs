//! The SQLite backend of the shared SQL core ([`crate::sql`]): the embedded default.
//!
//! Writes go through a pool of ONE connection, so SQLite's single writer is
//! queued fairly in process instead of failing with `SQLITE_BUSY`; reads use a
//! separate pool in WAL mode and never wait for writers. `sqlite::memory:`
//! uses one connection for both (each connection would see its own database).
//!
//! Group commit ([`crate::sql::group_commit`]): a group of assignments is
//! checked with one read (job, contractor, overlap, idempotency key) before
//! anything is written, so a refused assignment leaves nothing behind and
//! does not disturb the others; the single writer means no one else changes
//! those rows between the check and the write. The relay's claims and
//! publishes are set-based too (one statement per batch, over a JSON array),
//! so the writer spends a few statements per assignment.
//! SQLite serves one node, so there is no publisher lease: fences are not
//! checked here.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use smartscheduler_domain::ports::{ClaimedEvent, CommitAssignmentError, Fence, PublishedRow, StoreError};
use smartscheduler_domain::{DomainEvent, Sequence, Timestamp};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous};
use sqlx::{Row, SqliteConnection, SqlitePool};
use tracing::instrument;

use crate::errors::{corrupt, store_error};
use crate::sql::group_commit::{judge, AssignmentRow, Check, GroupCommitter, GroupWriter, Outcome};
use crate::sql::{self, bind_sqlite, AssignmentCommit, Columns, FailedAttempt, SqlBackend, SqlStore, Statement};

/// The SQLite schema's migrations, applied by [`SqliteStore::connect`].
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/sqlite");

/// The storage ports on SQLite.
pub type SqliteStore = SqlStore<SqliteBackend>;

/// SQLite under the shared core: a writer pool of one connection, a reader
/// pool, and the group-commit task. Cheap to clone.
#[derive(Clone, Debug)]
pub struct SqliteBackend {
    writer: SqlitePool,
    reader: SqlitePool,
    /// To the group-commit task.
    commits: GroupCommitter,
}

impl SqlStore<SqliteBackend> {
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
                .test_before_acquire(false)
                .max_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .connect_with(options)
                .await?;
            SqliteBackend::start(pool.clone(), pool)
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
            // No ping before each use: a connection to a local file does not go
            // stale, and the ping is one more round trip to sqlx's worker thread
            // (docs/benchmarks.md, "Cost per operation").
            let writer = SqlitePoolOptions::new()
                .test_before_acquire(false)
                .max_connections(1)
                .acquire_timeout(Duration::from_secs(30))
                .connect_with(options.clone())
                .await?;
            MIGRATOR.run(&writer).await?;
            let reader =
                SqlitePoolOptions::new().test_before_acquire(false).max_connections(8).connect_with(options).await?;
            return Ok(Self::new(SqliteBackend::start(writer, reader)));
        };
        MIGRATOR.run(&store.writer).await?;
        Ok(Self::new(store))
    }
}

impl SqliteBackend {
    /// The backend over its pools, with its group-commit task started.
    fn start(writer: SqlitePool, reader: SqlitePool) -> Self {
        let commits = GroupCommitter::start(SqliteGroupWriter { writer: writer.clone() });
        Self { writer, reader, commits }
    }
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

/// The SQLite side of group commit: the single writer connection.
#[derive(Debug)]
struct SqliteGroupWriter {
    writer: SqlitePool,
}

#[async_trait]
impl GroupWriter for SqliteGroupWriter {
    const SIZE_METRIC: &'static str = "smartscheduler_sqlite_group_commit_size";

    /// One read checks every assignment against the database, [`judge`]
    /// checks the group against itself, and the accepted ones are written
    /// with one statement per table over a JSON array: a fixed number of
    /// statements whatever the group's size. A refused assignment writes
    /// nothing.
    async fn commit_group(&self, rows: &[&AssignmentRow]) -> Result<Vec<Outcome>, StoreError> {
        let mut conn = self.writer.acquire().await.map_err(store_error)?;
        let committed = commit_group_on(&mut conn, rows).await;
        if committed.is_err() {
            roll_back(&mut conn).await;
        }
        committed
    }
}

/// [`SqliteGroupWriter::commit_group`] on the writer's connection, in two
/// commands to sqlx's worker thread: BEGIN travels with the check, COMMIT
/// with the writes (see [`write_group`] for why commands count). On `Err`
/// the caller rolls back.
async fn commit_group_on(conn: &mut SqliteConnection, rows: &[&AssignmentRow]) -> Result<Vec<Outcome>, StoreError> {
    let checks = check_group(conn, rows).await?;
    let (outcomes, accepted) = judge(rows, checks);
    if accepted.is_empty() {
        sqlx::query("COMMIT").execute(&mut *conn).await.map_err(store_error)?;
    } else {
        write_group(conn, &serde_json::Value::Array(accepted).to_string()).await?;
    }
    Ok(outcomes)
}

/// Ends a transaction a failed command left open (a failure before BEGIN
/// took effect leaves none: SQLite's complaint about that is ignored).
async fn roll_back(conn: &mut SqliteConnection) {
    let _ = sqlx::query("ROLLBACK").execute(conn).await;
}

/// Begins the group's transaction and, in the same command, reads for the
/// whole group: each assignment's job status, whether its job already has an
/// assignment, whether its contractor exists or is booked over its range, and
/// whether its idempotency key is live. In group order.
async fn check_group(conn: &mut SqliteConnection, rows: &[&AssignmentRow]) -> Result<Vec<Check>, StoreError> {
    let probes = rows.iter().map(|row| row.probe()).collect();
    let found = sqlx::query(
        "BEGIN IMMEDIATE;
         SELECT (SELECT status FROM jobs WHERE id = r.value ->> '$.job') AS job_status,
                EXISTS (SELECT 1 FROM assignments WHERE job_id = r.value ->> '$.job') AS job_taken,
                EXISTS (SELECT 1 FROM contractors WHERE id = r.value ->> '$.contractor') AS contractor_exists,
                EXISTS (SELECT 1 FROM assignments WHERE contractor_id = r.value ->> '$.contractor'
                        AND start_at < r.value ->> '$.end' AND end_at > r.value ->> '$.start') AS busy,
                EXISTS (SELECT 1 FROM idempotency_keys WHERE scope = r.value ->> '$.scope'
                        AND key = r.value ->> '$.key' AND created_at >= r.value ->> '$.live') AS key_taken
         FROM json_each(?1) AS r ORDER BY r.key",
    )
    .bind(serde_json::Value::Array(probes).to_string())
    .fetch_all(&mut *conn)
    .await
    .map_err(store_error)?;
    Check::read_all(&found, rows.len())
}

/// Writes the accepted assignments of a group (a JSON array of
/// [`AssignmentRow::to_json`]) and commits: one statement per table, in group
/// order, so EventLog positions follow commit order. The statements go to
/// SQLite's thread as one command: each command is a round trip to it, and
/// those are most of an assignment's CPU (docs/benchmarks.md, "Cost per
/// operation"). Every statement reads the array as `?1`.
async fn write_group(conn: &mut SqliteConnection, accepted: &str) -> Result<(), StoreError> {
    const WRITE_GROUP: &str = "
        UPDATE jobs SET status = 'Assigned' WHERE id IN (SELECT value ->> '$.job' FROM json_each(?1));
        INSERT INTO assignments
            (id, job_id, contractor_id, start_at, end_at, source, audit_id, region, created_at, ack_deadline, event_id)
         SELECT value ->> '$.id', value ->> '$.job', value ->> '$.contractor', value ->> '$.start', value ->> '$.end',
                value ->> '$.source', value ->> '$.audit', value ->> '$.region', value ->> '$.created',
                value ->> '$.deadline', value ->> '$.event'
         FROM json_each(?1) ORDER BY key;
        -- Due at once (0): only a failed attempt sets a later time.
        INSERT INTO event_log (event_id, event_type, aggregate_id, payload, occurred_at, next_attempt_at)
         SELECT value ->> '$.event', value ->> '$.type', value ->> '$.aggregate', value ->> '$.payload',
                value ->> '$.occurred', 0
         FROM json_each(?1) ORDER BY key;
        INSERT INTO event_groups (group_name, event_id)
         SELECT g.value, r.value ->> '$.event' FROM json_each(?1) AS r, json_each(r.value -> '$.groups') AS g;
        -- A stale row under the same key (past its 24 h) is replaced; the
        -- check has refused live ones. (`WHERE` keeps `ON CONFLICT` unambiguous.)
        INSERT INTO idempotency_keys (scope, key, fingerprint, assignment_id, created_at)
         SELECT value ->> '$.scope', value ->> '$.key', value ->> '$.fingerprint', value ->> '$.id', value ->> '$.created'
         FROM json_each(?1) WHERE value ->> '$.scope' IS NOT NULL
         ON CONFLICT (scope, key) DO UPDATE SET fingerprint = excluded.fingerprint,
            assignment_id = excluded.assignment_id, created_at = excluded.created_at;
        COMMIT;";
    sqlx::query(WRITE_GROUP).bind(accepted).execute(conn).await.map_err(store_error)?;
    Ok(())
}

/// Claims the Pending rows among the events `?1` (a JSON array of ids, in
/// publish order): gives them the next sequences in that order, in
/// `event_log` and `event_groups`, saves the counter and returns each row's
/// id, attempts and sequence. One transaction in one command to sqlx's
/// worker thread (see [`write_group`]); `+status`: look rows up by id, as the
/// planner would otherwise walk every Pending row through the status index.
const CLAIM: &str = "
    BEGIN IMMEDIATE;
    UPDATE event_sequence SET last = last + (
        SELECT COUNT(*) FROM json_each(?1) AS j JOIN event_log AS e ON e.event_id = j.value AND +e.status = 'Pending')
     WHERE id = 1;
    UPDATE event_log SET sequence = p.seq
     FROM (SELECT j.value AS id,
                  (SELECT last FROM event_sequence WHERE id = 1)
                    - COUNT(*) OVER () + ROW_NUMBER() OVER (ORDER BY j.key) AS seq
           FROM json_each(?1) AS j JOIN event_log AS e ON e.event_id = j.value AND +e.status = 'Pending') AS p
     WHERE event_log.event_id = p.id;
    UPDATE event_groups SET sequence = e.sequence
     FROM event_log AS e
     WHERE event_groups.event_id = e.event_id AND e.event_id IN (SELECT value FROM json_each(?1))
       AND +e.status = 'Pending';
    SELECT e.event_id, e.attempts, e.sequence
     FROM json_each(?1) AS j JOIN event_log AS e ON e.event_id = j.value AND +e.status = 'Pending'
     ORDER BY j.key;
    COMMIT;";

#[async_trait]
impl SqlBackend for SqliteBackend {
    type Row = SqliteRow;

    // One node delivers a claimed event before it marks it published.
    const REPLAYS_CLAIMED: bool = true;

    async fn fetch_all(&self, statement: Statement<'_>) -> Result<Vec<SqliteRow>, StoreError> {
        bind_sqlite(&statement).fetch_all(&self.reader).await.map_err(store_error)
    }

    async fn fetch_optional(&self, statement: Statement<'_>) -> Result<Option<SqliteRow>, StoreError> {
        bind_sqlite(&statement).fetch_optional(&self.reader).await.map_err(store_error)
    }

    async fn execute(&self, statement: Statement<'_>) -> Result<u64, StoreError> {
        Ok(bind_sqlite(&statement).execute(&self.writer).await.map_err(store_error)?.rows_affected())
    }

    async fn execute_in_transaction(&self, statements: Vec<Statement<'_>>) -> Result<Vec<u64>, StoreError> {
        let mut tx = self.writer.begin().await.map_err(store_error)?;
        let mut changed = Vec::with_capacity(statements.len());
        for statement in &statements {
            changed.push(bind_sqlite(statement).execute(&mut *tx).await.map_err(store_error)?.rows_affected());
        }
        tx.commit().await.map_err(store_error)?;
        Ok(changed)
    }

    async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
    }

    // No `err`: a conflict here is the caller's 409, logged once by the HTTP edge.
    #[instrument(skip_all, fields(job_id = %commit.job.id(), assignment_id = %commit.assignment.id()))]
    async fn commit_assignment(&self, commit: AssignmentCommit<'_>) -> Result<(), CommitAssignmentError> {
        self.commits.commit(commit).await
    }

    #[instrument(skip_all, err)]
    async fn claim_due(&self, now: Timestamp, limit: u32, fence: Fence) -> Result<Vec<ClaimedEvent>, StoreError> {
        // One writer, one relay: nobody claims between this read and the
        // claim, which takes only rows still Pending anyway.
        let rows = sqlx::query(
            "SELECT event_id, payload, attempts FROM event_log
             WHERE status = 'Pending' AND next_attempt_at <= ? ORDER BY position LIMIT ?",
        )
        .bind(now.unix_millis())
        .bind(i64::from(limit))
        .fetch_all(&self.writer)
        .await
        .map_err(store_error)?;
        let events = rows.iter().map(|row| Ok(sql::claimable(row)?.0)).collect::<Result<Vec<_>, StoreError>>()?;
        self.claim(events, fence).await
    }

    #[instrument(skip_all, err)]
    async fn claim(&self, events: Vec<DomainEvent>, _fence: Fence) -> Result<Vec<ClaimedEvent>, StoreError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let ids = serde_json::to_string(&events.iter().map(|e| e.event_id().to_string()).collect::<Vec<_>>())
            .map_err(corrupt)?;
        let mut conn = self.writer.acquire().await.map_err(store_error)?;
        let rows = match sqlx::query(CLAIM).bind(ids).fetch_all(&mut *conn).await {
            Ok(rows) => rows,
            Err(err) => {
                roll_back(&mut conn).await;
                return Err(store_error(err));
            }
        };
        let mut claimed = HashMap::with_capacity(rows.len());
        for row in &rows {
            let sequence: i64 = row.try_get("sequence").map_err(store_error)?;
            claimed.insert(row.text("event_id")?.to_owned(), (sql::attempts(row)?, Sequence(sequence)));
        }
        // In the order given: that is publish order.
        Ok(events
            .into_iter()
            .filter_map(|event| {
                let (attempts, sequence) = *claimed.get(&event.event_id().to_string())?;
                Some(ClaimedEvent { event, sequence, attempts })
            })
            .collect())
    }

    #[instrument(skip_all, err)]
    async fn mark_published(&self, rows: Vec<PublishedRow>, at: Timestamp, _fence: Fence) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let published = rows
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
        .bind(serde_json::Value::Array(published).to_string())
        .execute(&self.writer)
        .await
        .map_err(store_error)?;
        Ok(())
    }

    #[instrument(skip_all, err)]
    async fn record_failure(&self, attempt: FailedAttempt, _fence: Fence) -> Result<(), StoreError> {
        let FailedAttempt { event_id, error, retry_at } = attempt;
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
}

#[cfg(test)]
mod tests {
    use smartscheduler_domain::ports::{ContractorRepository, IdempotencyKey, JobRepository};
    use smartscheduler_domain::{
        AssignmentSource, Contractor, DurationMinutes, Job, JobType, NewAssignment, PersonName, Region, TimeRange,
    };

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
    fn pending(job: &Job, contractor: &Contractor, from: i64, to: i64, key: Option<&str>) -> AssignmentRow {
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
        let event = DomainEvent::from(event);
        AssignmentRow::new(AssignmentCommit { job: &job, assignment: &assignment, event: &event, idempotency }).unwrap()
    }

    async fn count(store: &SqliteStore, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}")).fetch_one(&store.backend().reader).await.unwrap()
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
        let writer = SqliteGroupWriter { writer: store.backend().writer.clone() };
        let outcomes = writer.commit_group(&group.iter().collect::<Vec<_>>()).await.unwrap();
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
            .fetch_all(&store.backend().reader)
            .await
            .unwrap();
        let mut expected = vec![j1.id().to_string(), j3.id().to_string()];
        expected.sort();
        assert_eq!(assigned, expected);
        // EventLog positions follow the group's order.
        let logged: Vec<String> = sqlx::query_scalar("SELECT event_id FROM event_log ORDER BY position")
            .fetch_all(&store.backend().reader)
            .await
            .unwrap();
        assert_eq!(logged, vec![group[0].event_id.clone(), group[3].event_id.clone()]);

        // A second group sees the first one's rows in the database.
        let again = [pending(&j5, &ana, 0, 30, None), pending(&j5, &ben, 0, 60, Some("k1"))];
        let outcomes = writer.commit_group(&again.iter().collect::<Vec<_>>()).await.unwrap();
        assert_eq!(
            outcomes,
            vec![Err(CommitAssignmentError::ContractorBusy), Err(CommitAssignmentError::IdempotencyKeyTaken)]
        );
        assert_eq!(count(&store, "assignments").await, 2);
    }
}
