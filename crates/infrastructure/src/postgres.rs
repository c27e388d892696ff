//! The PostgreSQL backend of the shared SQL core ([`crate::sql`]): for
//! several nodes sharing one database.
//!
//! One pool serves reads and writes. Transactions run at READ COMMITTED and
//! races are settled by row locks, never by retries:
//! - Assignments are committed in groups, one transaction per group
//!   ([`crate::sql::group_commit`]), by one task per node. A group first
//!   locks its jobs' rows, then its contractors' rows, each in id order:
//!   racing assignments of one job, or of one contractor, from this node or
//!   another, queue there, and the check that follows sees every committed
//!   assignment. `UNIQUE(job_id)` is the backstop.
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
    ClaimedEvent, CommitAssignmentError, Fence, PublishedRow, StoreError, IDEMPOTENCY_WINDOW_MILLIS,
};
use smartscheduler_domain::{DomainEvent, Sequence, Timestamp};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::PgPool;
use tracing::instrument;
use uuid::Uuid;

use crate::errors::{corrupt, store_error};
use crate::sql::group_commit::{judge, AssignmentRow, Check, GroupCommitter, GroupWriter, Outcome};
use crate::sql::{self, bind_postgres, AssignmentCommit, Columns, FailedAttempt, SqlBackend, SqlStore, Statement};

/// `application_name` of the pool's sessions.
pub const POOL_APPLICATION_NAME: &str = "smartscheduler";

/// How long a fenced transaction may sit idle before the server ends it: a
/// holder frozen inside one would otherwise keep the lease row locked and
/// hold up the takeover for as long as it stays frozen.
const FENCED_IDLE_LIMIT_MS: &str = "2000";

/// The PostgreSQL schema's migrations, applied by [`PostgresStore::connect`].
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/postgres");

/// The storage ports on PostgreSQL.
pub type PostgresStore = SqlStore<PostgresBackend>;

/// PostgreSQL under the shared core: one pool for reads and writes. Cheap to clone.
#[derive(Clone, Debug)]
pub struct PostgresBackend {
    pool: PgPool,
    /// To this node's group-commit task.
    commits: GroupCommitter,
}

impl SqlStore<PostgresBackend> {
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
        MIGRATOR.run(&pool).await?;
        let commits = GroupCommitter::start(PostgresGroupWriter { pool: pool.clone() });
        Ok(Self::new(PostgresBackend { pool, commits }))
    }

    /// The connection pool, for adapters of other ports on the same database.
    pub(crate) fn pool(&self) -> &PgPool {
        &self.backend().pool
    }
}

/// The PostgreSQL side of group commit ([`crate::sql::group_commit`]).
/// Several nodes commit groups at once, so the rows a group is checked
/// against are locked first, always jobs before contractors and each in id
/// order: two groups that share rows queue on them instead of deadlocking,
/// and the check that follows (a fresh snapshot at READ COMMITTED) sees
/// every assignment committed before the locks were granted.
#[derive(Debug)]
struct PostgresGroupWriter {
    pool: PgPool,
}

#[async_trait]
impl GroupWriter for PostgresGroupWriter {
    const SIZE_METRIC: &'static str = "smartscheduler_postgres_group_commit_size";

    async fn commit_group(&self, rows: &[&AssignmentRow]) -> Result<Vec<Outcome>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        let jobs: Vec<&str> = rows.iter().map(|row| row.job_id.as_str()).collect();
        let contractors: Vec<&str> = rows.iter().map(|row| row.contractor_id.as_str()).collect();
        // NO KEY UPDATE: excludes the other groups, not the foreign-key
        // checks of rows that merely refer to these. One statement: UNION
        // ALL runs its branches in order, so every job is locked before any
        // contractor.
        sqlx::query(
            "SELECT 1 FROM (SELECT id FROM jobs WHERE id = ANY($1::text[]::uuid[]) ORDER BY id FOR NO KEY UPDATE) AS j
             UNION ALL
             SELECT 1 FROM (SELECT id FROM contractors WHERE id = ANY($2::text[]::uuid[]) ORDER BY id
                            FOR NO KEY UPDATE) AS c",
        )
        .bind(&jobs)
        .bind(&contractors)
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        let probes = serde_json::Value::Array(rows.iter().map(|row| row.probe()).collect());
        let checks = check_group(&mut tx, &probes, rows.len()).await?;
        let (outcomes, accepted) = judge(rows, checks);
        if !accepted.is_empty() {
            let keys = accepted.iter().filter(|row| !row["scope"].is_null()).count() as u64;
            let stored_keys = write_group(&mut tx, &serde_json::Value::Array(accepted)).await?;
            if stored_keys < keys {
                // A node committed one of these keys after the check: the
                // request that races it loses, as a lone request would.
                tx.rollback().await.map_err(store_error)?;
                return match rows {
                    [_] => Ok(vec![Err(CommitAssignmentError::IdempotencyKeyTaken)]),
                    _ => Err(StoreError::Unexpected("an idempotency key of the group was taken meanwhile".into())),
                };
            }
        }
        tx.commit().await.map_err(store_error)?;
        Ok(outcomes)
    }
}

/// What the database holds for each probe ([`AssignmentRow::probe`]), in
/// order. Scalar subqueries, not `EXISTS`: the planner may answer an
/// `EXISTS` by hashing the whole table once per statement (it did so for
/// contractors: a sequential scan of 20,000 rows, 9 ms for a group of 16,
/// against 0.8 ms for these index lookups).
async fn check_group(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    probes: &serde_json::Value,
    expected: usize,
) -> Result<Vec<Check>, StoreError> {
    let found = sqlx::query(
        "SELECT (SELECT status FROM jobs WHERE id = (p ->> 'job')::uuid) AS job_status,
                COALESCE((SELECT true FROM assignments WHERE job_id = (p ->> 'job')::uuid), false) AS job_taken,
                COALESCE((SELECT true FROM contractors WHERE id = (p ->> 'contractor')::uuid), false)
                    AS contractor_exists,
                COALESCE((SELECT true FROM assignments WHERE contractor_id = (p ->> 'contractor')::uuid
                          AND start_at < (p ->> 'end')::bigint AND end_at > (p ->> 'start')::bigint LIMIT 1), false)
                    AS busy,
                COALESCE((SELECT true FROM idempotency_keys WHERE scope = p ->> 'scope' AND key = p ->> 'key'
                          AND created_at >= (p ->> 'live')::bigint), false) AS key_taken
         FROM jsonb_array_elements($1) WITH ORDINALITY AS r (p, ord)
         ORDER BY ord",
    )
    .bind(probes)
    .fetch_all(&mut **tx)
    .await
    .map_err(store_error)?;
    Check::read_all(&found, expected)
}

/// Writes the accepted rows of a group ([`AssignmentRow::to_json`]) in one
/// statement, each table by a sub-statement over the array, in group order
/// (EventLog positions follow it): each statement is a round trip that the
/// group's transaction holds its row locks over. Returns how many
/// idempotency keys were stored.
async fn write_group(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    accepted: &serde_json::Value,
) -> Result<u64, StoreError> {
    // The sub-statements see one snapshot, not each other's rows; the
    // foreign keys are checked when the statement ends, and find them all.
    let stored: i64 = sqlx::query_scalar(
        "WITH r AS (SELECT v, ord FROM jsonb_array_elements($1) WITH ORDINALITY AS r (v, ord)),
         -- `= ANY(ARRAY(...))`, not `IN (SELECT ...)`: for the latter the
         -- generic plan hashed the array against every job.
         assigned AS (
            UPDATE jobs SET status = 'Assigned' WHERE id = ANY(ARRAY(SELECT (v ->> 'job')::uuid FROM r))),
         -- Due at once (0), not at this node's clock: the publishing node
         -- compares with its own, and clocks of nodes may differ.
         logged AS (
            INSERT INTO event_log (event_id, event_type, aggregate_id, payload, occurred_at, next_attempt_at)
            SELECT (v ->> 'event')::uuid, v ->> 'type', (v ->> 'aggregate')::uuid, (v ->> 'payload')::jsonb,
                   (v ->> 'occurred')::bigint, 0
            FROM r ORDER BY ord),
         grouped AS (
            INSERT INTO event_groups (group_name, event_id)
            SELECT g, (v ->> 'event')::uuid FROM r, jsonb_array_elements_text(v -> 'groups') AS g),
         booked AS (
            INSERT INTO assignments (id, job_id, contractor_id, start_at, end_at, source, audit_id, region,
                                     created_at, event_id, ack_deadline)
            SELECT (v ->> 'id')::uuid, (v ->> 'job')::uuid, (v ->> 'contractor')::uuid, (v ->> 'start')::bigint,
                   (v ->> 'end')::bigint, v ->> 'source', (v ->> 'audit')::uuid, v ->> 'region',
                   (v ->> 'created')::bigint, (v ->> 'event')::uuid, (v ->> 'deadline')::bigint
            FROM r ORDER BY ord),
         -- A stale row under the same key (past its 24 h) is replaced; a live
         -- one is left as it is, and the count tells. In key order, so that
         -- two groups inserting the same keys wait for each other instead of
         -- deadlocking.
         keyed AS (
            INSERT INTO idempotency_keys (scope, key, fingerprint, assignment_id, created_at)
            SELECT v ->> 'scope', v ->> 'key', v ->> 'fingerprint', (v ->> 'id')::uuid, (v ->> 'created')::bigint
            FROM r WHERE v ->> 'scope' IS NOT NULL ORDER BY v ->> 'scope', v ->> 'key'
            ON CONFLICT (scope, key) DO UPDATE SET fingerprint = EXCLUDED.fingerprint,
               assignment_id = EXCLUDED.assignment_id, created_at = EXCLUDED.created_at
            WHERE idempotency_keys.created_at < EXCLUDED.created_at - $2
            RETURNING 1)
         SELECT COUNT(*) FROM keyed",
    )
    .bind(accepted)
    .bind(IDEMPOTENCY_WINDOW_MILLIS)
    .fetch_one(&mut **tx)
    .await
    .map_err(store_error)?;
    u64::try_from(stored).map_err(corrupt)
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
    // The event's row and its groups' rows carry the sequence alike.
    const STATEMENTS: [&str; 2] = [
        // `= ANY($1)` repeats the join for the planner: without it the
        // statements' generic plans may scan every row (2.9 ms for the groups
        // at 12,600 rows; 1.3 ms a claim for the log in a longer run).
        "UPDATE event_log AS e SET sequence = u.sequence
         FROM UNNEST($1::uuid[], $2::bigint[]) AS u (event_id, sequence)
         WHERE e.event_id = u.event_id AND e.event_id = ANY($1::uuid[])",
        "UPDATE event_groups AS g SET sequence = u.sequence
         FROM UNNEST($1::uuid[], $2::bigint[]) AS u (event_id, sequence)
         WHERE g.event_id = u.event_id AND g.event_id = ANY($1::uuid[])",
    ];
    for statement in STATEMENTS {
        sqlx::query(statement).bind(&ids).bind(&sequences).execute(&mut **tx).await.map_err(store_error)?;
    }
    Ok(claimed)
}

#[async_trait]
impl SqlBackend for PostgresBackend {
    type Row = PgRow;

    // Nodes deliver what the log marks published, and replay only that.
    const REPLAYS_CLAIMED: bool = false;

    async fn fetch_all(&self, statement: Statement<'_>) -> Result<Vec<PgRow>, StoreError> {
        bind_postgres(&statement).fetch_all(&self.pool).await.map_err(store_error)
    }

    async fn fetch_optional(&self, statement: Statement<'_>) -> Result<Option<PgRow>, StoreError> {
        bind_postgres(&statement).fetch_optional(&self.pool).await.map_err(store_error)
    }

    async fn execute(&self, statement: Statement<'_>) -> Result<u64, StoreError> {
        Ok(bind_postgres(&statement).execute(&self.pool).await.map_err(store_error)?.rows_affected())
    }

    async fn execute_in_transaction(&self, statements: Vec<Statement<'_>>) -> Result<Vec<u64>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        let mut changed = Vec::with_capacity(statements.len());
        for statement in &statements {
            changed.push(bind_postgres(statement).execute(&mut *tx).await.map_err(store_error)?.rows_affected());
        }
        tx.commit().await.map_err(store_error)?;
        Ok(changed)
    }

    async fn close(&self) {
        self.pool.close().await;
    }

    // No `err`: a conflict here is the caller's 409, logged once by the HTTP edge.
    #[instrument(skip_all, fields(job_id = %commit.job.id(), assignment_id = %commit.assignment.id()))]
    async fn commit_assignment(&self, commit: AssignmentCommit<'_>) -> Result<(), CommitAssignmentError> {
        self.commits.commit(commit).await
    }

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
        let events = rows.iter().map(sql::claimable).collect::<Result<Vec<_>, _>>()?;
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
            // `status || ''`: look rows up by id only, as SQLite's `+status` does;
            // an index on status also holds an entry for every old version of
            // every row (0.47 ms against 0.05 ms at 6,300 rows).
            "SELECT event_id, attempts FROM event_log
             WHERE event_id = ANY($1) AND status || '' = 'Pending' FOR UPDATE SKIP LOCKED",
        )
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await
        .map_err(store_error)?;
        let mut attempts = rows
            .iter()
            .map(|row| Ok((row.uuid("event_id")?, sql::attempts(row)?)))
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
    async fn mark_published(&self, rows: Vec<PublishedRow>, at: Timestamp, fence: Fence) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut ids = Vec::with_capacity(rows.len());
        let mut sequences = Vec::with_capacity(rows.len());
        let mut groups = Vec::with_capacity(rows.len());
        for row in &rows {
            ids.push(row.event_id.as_uuid());
            sequences.push(row.sequence.0);
            groups.push(serde_json::to_string(&row.groups).map_err(corrupt)?);
        }
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        check_fence(&mut tx, fence).await?;
        // `= ANY($2)` repeats the join for the planner (see `sequence_all`).
        sqlx::query(
            "UPDATE event_log AS e SET status = 'Published', published_at = $1,
                published_groups = u.groups::jsonb, attempts = e.attempts + 1
             FROM UNNEST($2::uuid[], $3::bigint[], $4::text[]) AS u (event_id, sequence, groups)
             WHERE e.event_id = u.event_id AND e.event_id = ANY($2::uuid[]) AND e.sequence = u.sequence
               AND e.status = 'Pending'",
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
    async fn record_failure(&self, attempt: FailedAttempt, fence: Fence) -> Result<(), StoreError> {
        let FailedAttempt { event_id, error, retry_at } = attempt;
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
}
