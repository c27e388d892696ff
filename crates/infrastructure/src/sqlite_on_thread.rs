//! Opt-in SQLite reads on the thread that asks for them
//! (`SMARTSCHEDULER_SQLITE_READS=on-thread`). sqlx's SQLite driver runs each
//! connection on a worker thread of its own, so every read is a command
//! there and an answer back: two sleeps and two wakes, about 90 µs of CPU
//! at a steady rate on the reference machine against 25–35 µs for the read
//! itself (docs/benchmarks.md, "Cost per operation"). Here reads run with
//! rusqlite on the caller's thread, from a small set of idle connections;
//! writes, and everything that must be ordered with them (group commit,
//! claims, publishes), stay with [`SqliteBackend`] and sqlx.
//!
//! The price: a read holds the calling thread (an HTTP worker) for as long
//! as it runs; reads here are index lookups and pages of at most 1,000 rows.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::types::Value as Cell;
use rusqlite::{Connection, OpenFlags};
use serde::de::DeserializeOwned;
use smartscheduler_domain::ports::{ClaimedEvent, CommitAssignmentError, Fence, PublishedRow, StoreError};
use smartscheduler_domain::{DomainEvent, Timestamp};
use uuid::Uuid;

use crate::errors::{corrupt, rusqlite_error};
use crate::sql::{bind_rusqlite, AssignmentCommit, Columns, FailedAttempt, SqlBackend, SqlStore, Statement};
use crate::sqlite::{SqliteBackend, SqliteStore};

/// The storage ports on SQLite, reads on the calling thread.
pub type SqliteOnThreadStore = SqlStore<SqliteOnThreadBackend>;

/// [`SqliteBackend`] for writes, rusqlite on the calling thread for reads.
#[derive(Clone)]
pub struct SqliteOnThreadBackend {
    writes: SqliteBackend,
    reads: Arc<Readers>,
}

impl std::fmt::Debug for SqliteOnThreadBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteOnThreadBackend").field("path", &self.reads.path).finish_non_exhaustive()
    }
}

impl SqlStore<SqliteOnThreadBackend> {
    /// Opens `url` as [`SqliteStore::connect`] does (migrations included),
    /// reading on the calling thread. Not for in-memory databases, which a
    /// second connection would not see.
    ///
    /// # Errors
    /// An in-memory URL, or what [`SqliteStore::connect`] returns.
    pub async fn connect(url: &str) -> Result<Self, sqlx::Error> {
        if url.contains(":memory:") || url.contains("mode=memory") {
            return Err(sqlx::Error::Configuration("reads on the calling thread need a database file".into()));
        }
        let options: sqlx::sqlite::SqliteConnectOptions = url.parse()?;
        let path = options.get_filename().to_path_buf();
        let store = SqliteStore::connect(url).await?;
        let reads = Arc::new(Readers { path, idle: Mutex::default() });
        Ok(Self::new(SqliteOnThreadBackend { writes: store.backend().clone(), reads }))
    }
}

/// Idle read connections, opened as needed.
struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl Readers {
    /// Runs `statement` on an idle connection (or a new one) on this thread.
    fn query(&self, statement: &Statement<'_>, limit: Option<usize>) -> Result<Vec<OwnedRow>, StoreError> {
        let idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop();
        let conn = match idle {
            Some(conn) => conn,
            None => self.open().map_err(rusqlite_error)?,
        };
        let rows = read(&conn, statement, limit).map_err(rusqlite_error);
        self.idle.lock().unwrap_or_else(PoisonError::into_inner).push(conn);
        rows
    }

    /// A read connection with the settings of the sqlx readers.
    fn open(&self) -> rusqlite::Result<Connection> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI,
        )?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.pragma_update(None, "query_only", true)?;
        conn.pragma_update(None, "mmap_size", 268_435_456)?;
        conn.pragma_update(None, "cache_size", -16_384)?;
        conn.set_prepared_statement_cache_capacity(64);
        Ok(conn)
    }
}

/// The rows of `statement` (at most `limit`), every column copied out.
fn read(conn: &Connection, statement: &Statement<'_>, limit: Option<usize>) -> rusqlite::Result<Vec<OwnedRow>> {
    let mut prepared = conn.prepare_cached(statement.sql())?;
    bind_rusqlite(statement, &mut prepared)?;
    let columns: Arc<[String]> = prepared.column_names().into_iter().map(str::to_owned).collect();
    let mut rows = prepared.raw_query();
    let mut found = Vec::new();
    while limit.is_none_or(|limit| found.len() < limit) {
        let Some(row) = rows.next()? else { break };
        let cells = (0..columns.len()).map(|i| row.get::<_, Cell>(i)).collect::<rusqlite::Result<Vec<_>>>()?;
        found.push(OwnedRow { columns: columns.clone(), cells });
    }
    Ok(found)
}

/// A row read on the calling thread: its columns' names and values.
#[derive(Debug)]
pub struct OwnedRow {
    columns: Arc<[String]>,
    cells: Vec<Cell>,
}

impl OwnedRow {
    fn cell(&self, column: &str) -> Result<&Cell, StoreError> {
        let index = self
            .columns
            .iter()
            .position(|name| name == column)
            .ok_or_else(|| corrupt(format!("no column {column}")))?;
        Ok(&self.cells[index])
    }
}

/// Stored as [`SqliteRow`](sqlx::sqlite::SqliteRow) reads them: ids as
/// hyphenated text, JSON as text.
impl Columns for OwnedRow {
    fn uuid(&self, column: &str) -> Result<Uuid, StoreError> {
        self.text(column)?.parse().map_err(corrupt)
    }
    fn optional_uuid(&self, column: &str) -> Result<Option<Uuid>, StoreError> {
        self.optional_text(column)?.map(str::parse).transpose().map_err(corrupt)
    }
    fn text(&self, column: &str) -> Result<&str, StoreError> {
        self.optional_text(column)?.ok_or_else(|| corrupt(format!("{column} is NULL")))
    }
    fn optional_text(&self, column: &str) -> Result<Option<&str>, StoreError> {
        match self.cell(column)? {
            Cell::Text(text) => Ok(Some(text)),
            Cell::Null => Ok(None),
            other => Err(corrupt(format!("{column} is not text: {other:?}"))),
        }
    }
    fn int(&self, column: &str) -> Result<i64, StoreError> {
        self.optional_int(column)?.ok_or_else(|| corrupt(format!("{column} is NULL")))
    }
    fn optional_int(&self, column: &str) -> Result<Option<i64>, StoreError> {
        match self.cell(column)? {
            Cell::Integer(int) => Ok(Some(*int)),
            Cell::Null => Ok(None),
            other => Err(corrupt(format!("{column} is not an integer: {other:?}"))),
        }
    }
    fn json<T: DeserializeOwned>(&self, column: &str) -> Result<T, StoreError> {
        serde_json::from_str(self.text(column)?).map_err(corrupt)
    }
}

#[async_trait]
impl SqlBackend for SqliteOnThreadBackend {
    type Row = OwnedRow;

    const REPLAYS_CLAIMED: bool = SqliteBackend::REPLAYS_CLAIMED;

    async fn fetch_all(&self, statement: Statement<'_>) -> Result<Vec<OwnedRow>, StoreError> {
        self.reads.query(&statement, None)
    }
    async fn fetch_optional(&self, statement: Statement<'_>) -> Result<Option<OwnedRow>, StoreError> {
        Ok(self.reads.query(&statement, Some(1))?.pop())
    }
    async fn execute(&self, statement: Statement<'_>) -> Result<u64, StoreError> {
        self.writes.execute(statement).await
    }
    async fn execute_in_transaction(&self, statements: Vec<Statement<'_>>) -> Result<Vec<u64>, StoreError> {
        self.writes.execute_in_transaction(statements).await
    }
    async fn close(&self) {
        self.writes.close().await;
        self.reads.idle.lock().unwrap_or_else(PoisonError::into_inner).clear();
    }
    async fn commit_assignment(&self, commit: AssignmentCommit<'_>) -> Result<(), CommitAssignmentError> {
        self.writes.commit_assignment(commit).await
    }
    async fn claim_due(&self, now: Timestamp, limit: u32, fence: Fence) -> Result<Vec<ClaimedEvent>, StoreError> {
        self.writes.claim_due(now, limit, fence).await
    }
    async fn claim(&self, events: Vec<DomainEvent>, fence: Fence) -> Result<Vec<ClaimedEvent>, StoreError> {
        self.writes.claim(events, fence).await
    }
    async fn mark_published(&self, rows: Vec<PublishedRow>, at: Timestamp, fence: Fence) -> Result<(), StoreError> {
        self.writes.mark_published(rows, at, fence).await
    }
    async fn record_failure(&self, attempt: FailedAttempt, fence: Fence) -> Result<(), StoreError> {
        self.writes.record_failure(attempt, fence).await
    }
}
