//! One SQL core, two backends: every storage port is written once here,
//! over a [`SqlBackend`] that SQLite and PostgreSQL each implement.
//!
//! The core owns what both databases say alike: the catalog (contractors,
//! jobs, assignments), idempotency lookups, and the EventLog's reads,
//! replay, retry and retention. Statements use `$1` placeholders, which
//! both read, and bind their values as [`Value`]s that each backend stores
//! in its own column types (an id is a `uuid` on PostgreSQL, text on SQLite).
//!
//! A backend keeps only what must differ: how an assignment is committed
//! (SQLite's single-writer group commit, PostgreSQL's row locks), how events
//! are claimed and sequenced (a counter row under lock, fenced by the
//! publisher lease on PostgreSQL), and its connections.

mod backend;
mod columns;
pub(crate) mod group_commit;
mod rows;
mod statement;
mod store;

pub use backend::{AssignmentCommit, FailedAttempt, SqlBackend};
pub use columns::Columns;
pub use group_commit::MAX_GROUP;
pub(crate) use rows::{attempts, claimable};
pub(crate) use statement::{bind_postgres, bind_rusqlite, bind_sqlite};
pub use statement::{Statement, Value};
pub use store::SqlStore;
