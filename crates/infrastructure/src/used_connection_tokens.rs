//! The record of hub connection tokens already used ([`UsedConnectionTokens`]):
//! in memory for a single node (SQLite), in a shared table when several
//! nodes share a PostgreSQL database, so that a token opens one connection
//! in the whole cluster rather than one per node.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;

use async_trait::async_trait;
use smartscheduler_domain::ports::{StoreError, UsedConnectionTokens};
use smartscheduler_domain::Timestamp;
use sqlx::PgPool;

use crate::errors::store_error;
use crate::postgres::PostgresStore;

/// Expired records are deleted at most this often.
const PURGE_EVERY_MILLIS: i64 = 60_000;

/// Used tokens of this process only: right for a single node. Each value is
/// its own record, so create one per node.
#[derive(Debug, Default)]
pub struct InMemoryUsedConnectionTokens {
    /// Token id to the end of its record.
    used: Mutex<HashMap<String, Timestamp>>,
    last_purge: AtomicI64,
}

impl InMemoryUsedConnectionTokens {
    /// An empty record.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl UsedConnectionTokens for InMemoryUsedConnectionTokens {
    async fn mark_used(&self, id: &str, expires_at: Timestamp) -> Result<bool, StoreError> {
        let now = Timestamp::now();
        let mut used = self.used.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if purge_due(&self.last_purge, now) {
            used.retain(|_, until| *until >= now);
        }
        if used.get(id).is_some_and(|until| *until >= now) {
            return Ok(false);
        }
        used.insert(id.to_owned(), expires_at);
        Ok(true)
    }
}

/// Used tokens in the `used_connection_tokens` table, shared by every node
/// on the database: the primary key decides which use is the first.
#[derive(Debug, Clone)]
pub struct PostgresUsedConnectionTokens {
    pool: PgPool,
    last_purge: std::sync::Arc<AtomicI64>,
}

impl PostgresUsedConnectionTokens {
    /// The record in `store`'s database.
    pub fn new(store: &PostgresStore) -> Self {
        Self { pool: store.pool().clone(), last_purge: Default::default() }
    }
}

#[async_trait]
impl UsedConnectionTokens for PostgresUsedConnectionTokens {
    async fn mark_used(&self, id: &str, expires_at: Timestamp) -> Result<bool, StoreError> {
        let now = Timestamp::now();
        if purge_due(&self.last_purge, now) {
            // Housekeeping only: a failure here must not refuse the connection.
            let purged = sqlx::query("DELETE FROM used_connection_tokens WHERE expires_at < $1")
                .bind(now.unix_millis())
                .execute(&self.pool)
                .await;
            if let Err(err) = purged {
                tracing::warn!(error = %err, "could not purge expired connection tokens");
            }
        }
        let inserted = sqlx::query(
            "INSERT INTO used_connection_tokens (token_id, expires_at) VALUES ($1, $2)
             ON CONFLICT (token_id) DO NOTHING",
        )
        .bind(id)
        .bind(expires_at.unix_millis())
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(inserted.rows_affected() == 1)
    }
}

/// Whether a purge is due now; if so, this caller does it (one at a time).
fn purge_due(last_purge: &AtomicI64, now: Timestamp) -> bool {
    let last = last_purge.load(Ordering::Relaxed);
    now.unix_millis() - last >= PURGE_EVERY_MILLIS
        && last_purge.compare_exchange(last, now.unix_millis(), Ordering::Relaxed, Ordering::Relaxed).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_token_is_used_once_until_its_record_expires() {
        let record = InMemoryUsedConnectionTokens::new();
        let later = Timestamp::now().plus_millis(15_000);
        assert_eq!(record.mark_used("a", later).await, Ok(true));
        assert_eq!(record.mark_used("a", later).await, Ok(false), "a second use is refused");
        assert_eq!(record.mark_used("b", later).await, Ok(true), "another token is not affected");
        let past = Timestamp::now().plus_millis(-1);
        assert_eq!(record.mark_used("c", past).await, Ok(true));
        assert_eq!(record.mark_used("c", later).await, Ok(true), "an expired record no longer counts");
    }
}
