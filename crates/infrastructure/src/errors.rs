//! Mapping driver errors into the domain's [`StoreError`] at the boundary:
//! no `sqlx::Error` leaves this crate.

use smartscheduler_domain::ports::StoreError;
use sqlx::postgres::PgDatabaseError;

/// Classifies a sqlx error: connection trouble and lock contention are
/// `Unavailable` (retryable, 503); the rest is `Unexpected`.
pub(crate) fn store_error(err: sqlx::Error) -> StoreError {
    match &err {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => {
            StoreError::Unavailable(err.to_string())
        }
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            let retryable = if db.try_downcast_ref::<PgDatabaseError>().is_some() {
                // PostgreSQL: serialization failure and deadlock (the
                // transaction was rolled back and may be retried), and the
                // connection, insufficient-resources and admin-shutdown classes.
                matches!(code.as_ref(), "40001" | "40P01")
                    || code.starts_with("08")
                    || code.starts_with("53")
                    || code.starts_with("57P")
            } else {
                // SQLite BUSY/LOCKED and their extended codes.
                matches!(code.as_ref(), "5" | "6" | "517" | "262")
            };
            if retryable {
                StoreError::Unavailable(err.to_string())
            } else {
                StoreError::Unexpected(err.to_string())
            }
        }
        _ => StoreError::Unexpected(err.to_string()),
    }
}

/// Stored data that does not parse: a bug or a hand edit.
pub(crate) fn corrupt(err: impl std::fmt::Display) -> StoreError {
    StoreError::Unexpected(format!("stored data is invalid: {err}"))
}
