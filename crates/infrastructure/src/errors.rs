//! Mapping driver errors into the domain's [`StoreError`] at the boundary:
//! no `sqlx::Error` leaves this crate.

use smartscheduler_domain::ports::StoreError;

/// Classifies a sqlx error: connection trouble and lock contention are
/// `Unavailable` (retryable, 503); the rest is `Unexpected`.
pub(crate) fn store_error(err: sqlx::Error) -> StoreError {
    match &err {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => StoreError::Unavailable(err.to_string()),
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            // SQLite BUSY/LOCKED; PostgreSQL connection and admin-shutdown classes.
            if matches!(code.as_ref(), "5" | "6" | "517" | "262")
                || code.starts_with("08")
                || code.starts_with("57P")
            {
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
