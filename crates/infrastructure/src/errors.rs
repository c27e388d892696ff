//! Mapping driver errors into the domain's [`StoreError`] at the boundary:
//! no `sqlx::Error` leaves this crate.

use smartscheduler_domain::ports::StoreError;
use smartscheduler_domain::Cause;
use sqlx::postgres::PgDatabaseError;

/// Classifies a sqlx error: connection trouble and lock contention are
/// `Unavailable` (retryable, 503); the rest is `Unexpected`. The sqlx error
/// is kept as the source.
pub(crate) fn store_error(err: sqlx::Error) -> StoreError {
    let retryable = match &err {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            if db.try_downcast_ref::<PgDatabaseError>().is_some() {
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
            }
        }
        _ => false,
    };
    if retryable {
        StoreError::Unavailable(Box::new(err))
    } else {
        StoreError::Unexpected(Box::new(err))
    }
}

/// [`store_error`] for the opt-in reads on the calling thread
/// ([`crate::sqlite_on_thread`]): SQLite's busy and locked are `Unavailable`
/// there too, the rest `Unexpected`.
pub(crate) fn rusqlite_error(err: rusqlite::Error) -> StoreError {
    let retryable = matches!(
        err.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    );
    if retryable {
        StoreError::Unavailable(Box::new(err))
    } else {
        StoreError::Unexpected(Box::new(err))
    }
}

/// Stored data that does not parse (a bug or a hand edit): the parse error,
/// or a description where there is none, is the source.
pub(crate) fn corrupt(err: impl Into<Cause>) -> StoreError {
    StoreError::Unexpected(Box::new(Corrupt(err.into())))
}

/// The context of a [`corrupt`] failure.
#[derive(Debug, thiserror::Error)]
#[error("stored data is invalid")]
struct Corrupt(#[source] Cause);

#[cfg(test)]
mod tests {
    use std::error::Error;

    use smartscheduler_domain::Chain;

    use super::*;

    #[test]
    fn a_sqlx_error_is_kept_as_the_source_not_copied_into_the_message() {
        let err = store_error(sqlx::Error::PoolTimedOut);

        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        let source = err.source().expect("the sqlx error is the source");
        assert!(matches!(source.downcast_ref::<sqlx::Error>(), Some(sqlx::Error::PoolTimedOut)));
        assert_eq!(err.to_string(), "storage unavailable");
    }

    #[test]
    fn corrupt_data_keeps_the_parse_error_under_its_context() {
        let parse = "not a number".parse::<i64>().unwrap_err();

        let err = corrupt(parse.clone());

        assert!(matches!(err, StoreError::Unexpected(_)), "{err:?}");
        let context = err.source().expect("the context is the source");
        assert_eq!(context.to_string(), "stored data is invalid");
        let cause = context.source().and_then(|e| e.downcast_ref::<std::num::ParseIntError>());
        assert_eq!(cause, Some(&parse));
        assert_eq!(Chain(&err).to_string(), format!("storage failed: stored data is invalid: {parse}"));
    }
}
