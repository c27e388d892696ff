//! Choosing the storage adapter from a database URL, in one place.

use std::sync::Arc;

use smartscheduler_domain::ports::{
    AssignmentRepository, AssignmentStore, ContractorRepository, EventLog, JobRepository, StoreError,
    UsedConnectionTokens,
};
use smartscheduler_domain::Cause;

use crate::postgres::PostgresStore;
use crate::sqlite::SqliteStore;
use crate::sqlite_on_thread::SqliteOnThreadStore;
use crate::used_connection_tokens::{InMemoryUsedConnectionTokens, PostgresUsedConnectionTokens};

/// Why the database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    /// Not a URL this build serves.
    #[error("unsupported database URL {0} (expected sqlite://PATH, sqlite::memory: or postgres://…)")]
    Unsupported(String),
    /// Connecting or migrating failed.
    #[error("could not open the database {url}")]
    Connect {
        /// The URL, its password hidden.
        url: String,
        /// The driver's error.
        #[source]
        source: Cause,
    },
}

/// Where SQLite's reads run (`SMARTSCHEDULER_SQLITE_READS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SqliteReads {
    /// On sqlx's worker thread of each connection (the default).
    #[default]
    Worker,
    /// On the thread that asks, with rusqlite: no hop to another thread
    /// (docs/benchmarks.md, "Cost per operation"). SQLite files only.
    OnThread,
}

/// The configured database, handing out its ports.
#[derive(Clone, Debug)]
pub enum Database {
    /// SQLite (`sqlite://PATH`, `sqlite::memory:`).
    Sqlite(SqliteStore),
    /// SQLite, its reads on the calling thread ([`SqliteReads::OnThread`]).
    SqliteOnThread(SqliteOnThreadStore),
    /// PostgreSQL (`postgres://…`, `postgresql://…`).
    Postgres(PostgresStore),
}

impl Database {
    /// Connects to `url` and applies pending migrations.
    ///
    /// # Errors
    /// An unsupported scheme, or a failure to connect or migrate.
    pub async fn connect(url: &str) -> Result<Self, DatabaseError> {
        Self::connect_with(url, SqliteReads::Worker).await
    }

    /// Like [`Database::connect`], with SQLite's reads where `reads` says.
    ///
    /// # Errors
    /// As [`Database::connect`]; reads on the calling thread of an in-memory database.
    pub async fn connect_with(url: &str, reads: SqliteReads) -> Result<Self, DatabaseError> {
        if url.starts_with("sqlite:") && reads == SqliteReads::OnThread {
            return SqliteOnThreadStore::connect(url)
                .await
                .map(Self::SqliteOnThread)
                .map_err(|e| DatabaseError::Connect { url: redact(url), source: Box::new(e) });
        }
        if url.starts_with("sqlite:") {
            return SqliteStore::connect(url)
                .await
                .map(Self::Sqlite)
                .map_err(|e| DatabaseError::Connect { url: redact(url), source: Box::new(e) });
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return PostgresStore::connect(url)
                .await
                .map(Self::Postgres)
                .map_err(|e| DatabaseError::Connect { url: redact(url), source: Box::new(e) });
        }
        Err(DatabaseError::Unsupported(redact(url)))
    }

    /// The contractor repository.
    pub fn contractors(&self) -> Arc<dyn ContractorRepository> {
        match self {
            Self::Sqlite(s) => Arc::new(s.clone()),
            Self::SqliteOnThread(s) => Arc::new(s.clone()),
            Self::Postgres(s) => Arc::new(s.clone()),
        }
    }
    /// The job repository.
    pub fn jobs(&self) -> Arc<dyn JobRepository> {
        match self {
            Self::Sqlite(s) => Arc::new(s.clone()),
            Self::SqliteOnThread(s) => Arc::new(s.clone()),
            Self::Postgres(s) => Arc::new(s.clone()),
        }
    }
    /// The assignment unit of work.
    pub fn assignments(&self) -> Arc<dyn AssignmentStore> {
        match self {
            Self::Sqlite(s) => Arc::new(s.clone()),
            Self::SqliteOnThread(s) => Arc::new(s.clone()),
            Self::Postgres(s) => Arc::new(s.clone()),
        }
    }
    /// Committed assignments, for reading.
    pub fn assignment_reads(&self) -> Arc<dyn AssignmentRepository> {
        match self {
            Self::Sqlite(s) => Arc::new(s.clone()),
            Self::SqliteOnThread(s) => Arc::new(s.clone()),
            Self::Postgres(s) => Arc::new(s.clone()),
        }
    }
    /// The EventLog.
    pub fn event_log(&self) -> Arc<dyn EventLog> {
        match self {
            Self::Sqlite(s) => Arc::new(s.clone()),
            Self::SqliteOnThread(s) => Arc::new(s.clone()),
            Self::Postgres(s) => Arc::new(s.clone()),
        }
    }
    /// The record of used hub connection tokens: shared by every node on a
    /// PostgreSQL database; on SQLite (one node) this process's own, so
    /// call it once.
    pub fn used_connection_tokens(&self) -> Arc<dyn UsedConnectionTokens> {
        match self {
            Self::Sqlite(_) | Self::SqliteOnThread(_) => Arc::new(InMemoryUsedConnectionTokens::new()),
            Self::Postgres(s) => Arc::new(PostgresUsedConnectionTokens::new(s)),
        }
    }
    /// Whether the database answers (for `/health/ready`).
    ///
    /// # Errors
    /// [`StoreError`] when it does not.
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Self::Sqlite(s) => s.ping().await,
            Self::SqliteOnThread(s) => s.ping().await,
            Self::Postgres(s) => s.ping().await,
        }
    }
    /// Closes the connections.
    pub async fn close(&self) {
        match self {
            Self::Sqlite(s) => s.close().await,
            Self::SqliteOnThread(s) => s.close().await,
            Self::Postgres(s) => s.close().await,
        }
    }
}

/// A URL with any password hidden, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}
