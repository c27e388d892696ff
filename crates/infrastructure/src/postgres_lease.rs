//! The publisher lease on PostgreSQL: a session advisory lock held on a
//! connection of its own. While the connection lives, this node publishes;
//! when the node dies, PostgreSQL drops the connection and the lock, and
//! another node takes it at its next check (about a second). No home-made
//! consensus: the database arbitrates.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use smartscheduler_domain::ports::PublisherLease;
use sqlx::{Connection, PgConnection};
use tokio::sync::Mutex;

/// The advisory lock key ("SmSc" in ASCII).
const LOCK_KEY: i64 = 0x536d_5363;

/// How long a positive answer is trusted before the connection is checked.
const RECHECK: Duration = Duration::from_millis(500);

/// A lease through `pg_try_advisory_lock`.
pub struct PostgresLease {
    url: String,
    state: Mutex<LeaseState>,
}

#[derive(Default)]
struct LeaseState {
    conn: Option<PgConnection>,
    checked: Option<Instant>,
}

impl PostgresLease {
    /// A lease on the database at `url` (not taken until [`PublisherLease::hold`]).
    pub fn new(url: &str) -> Self {
        Self { url: url.to_owned(), state: Mutex::new(LeaseState::default()) }
    }
}

#[async_trait]
impl PublisherLease for PostgresLease {
    async fn hold(&self) -> bool {
        let mut guard = self.state.lock().await;
        let state = &mut *guard;
        let fresh = state.checked.is_some_and(|at| at.elapsed() < RECHECK);
        if let Some(conn) = state.conn.as_mut() {
            if fresh {
                return true;
            }
            // Still ours while the session lives.
            if sqlx::query("SELECT 1").execute(&mut *conn).await.is_ok() {
                state.checked = Some(Instant::now());
                return true;
            }
            tracing::warn!("lost the publisher lease (its connection failed)");
            state.conn = None;
        }
        if fresh {
            return false;
        }
        state.checked = Some(Instant::now());
        let Ok(mut conn) = PgConnection::connect(&self.url).await else {
            return false;
        };
        let taken: Result<bool, _> =
            sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(LOCK_KEY).fetch_one(&mut conn).await;
        if matches!(taken, Ok(true)) {
            tracing::info!("took the publisher lease: this node publishes");
            state.conn = Some(conn);
            true
        } else {
            let _ = conn.close().await;
            false
        }
    }
}
