//! The publisher lease on PostgreSQL: a session advisory lock held on a
//! connection of its own. While the connection lives, this node publishes;
//! when the node dies, PostgreSQL drops the connection and the lock, and
//! another node takes it at its next check (about a second). No home-made
//! consensus: the database arbitrates.
//!
//! A node whose host vanishes (power loss, network cut) sends no FIN or RST:
//! its session would hold the lock until PostgreSQL's TCP keepalives give up,
//! two hours by default. The lease connection therefore sets short keepalives
//! for its own session (about 11 s to notice), and every check has a time
//! limit: a connection that does not answer is given up (this node stops
//! publishing), never waited on.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use smartscheduler_domain::ports::PublisherLease;
use sqlx::{Connection, PgConnection};
use tokio::sync::Mutex;

/// The advisory lock key ("SmSc" in ASCII).
const LOCK_KEY: i64 = 0x536d_5363;

/// How long an answer (held or not) is trusted before the next check.
const RECHECK: Duration = Duration::from_millis(500);

/// The longest a connect or a check may take; longer counts as a failure.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// Server-side keepalives of the lease session: idle seconds, interval, count
/// (a vanished holder is noticed after about 5 + 2 × 3 = 11 seconds).
const KEEPALIVES: &str = "SELECT set_config('tcp_keepalives_idle', '5', false),
    set_config('tcp_keepalives_interval', '2', false), set_config('tcp_keepalives_count', '3', false)";

/// A lease through `pg_try_advisory_lock`.
pub struct PostgresLease {
    url: String,
    state: Mutex<LeaseState>,
}

#[derive(Default)]
struct LeaseState {
    /// The lease connection: kept while holding and while waiting to hold.
    conn: Option<PgConnection>,
    held: bool,
    checked: Option<Instant>,
}

impl PostgresLease {
    /// A lease on the database at `url` (not taken until [`PublisherLease::hold`]).
    pub fn new(url: &str) -> Self {
        Self { url: url.to_owned(), state: Mutex::new(LeaseState::default()) }
    }

    async fn connect(&self) -> Option<PgConnection> {
        let mut conn = match tokio::time::timeout(CHECK_TIMEOUT, PgConnection::connect(&self.url)).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(err)) => {
                tracing::debug!(error = %err, "publisher lease: cannot connect");
                return None;
            }
            Err(_) => {
                tracing::debug!("publisher lease: connecting timed out");
                return None;
            }
        };
        // Ignored over a Unix socket; a failure only keeps the server's defaults.
        if let Err(err) = sqlx::query(KEEPALIVES).execute(&mut conn).await {
            tracing::warn!(error = %err, "publisher lease: could not set TCP keepalives on its connection");
        }
        Some(conn)
    }
}

#[async_trait]
impl PublisherLease for PostgresLease {
    async fn hold(&self) -> bool {
        let mut guard = self.state.lock().await;
        let state = &mut *guard;
        if state.checked.is_some_and(|at| at.elapsed() < RECHECK) {
            return state.held;
        }
        state.checked = Some(Instant::now());

        if state.held {
            let conn = state.conn.as_mut().expect("a held lease has its connection");
            // Still ours while the session lives.
            match tokio::time::timeout(CHECK_TIMEOUT, sqlx::query("SELECT 1").execute(&mut *conn)).await {
                Ok(Ok(_)) => return true,
                Ok(Err(err)) => tracing::warn!(error = %err, "lost the publisher lease (its connection failed)"),
                Err(_) => tracing::warn!("gave up the publisher lease (its connection does not answer)"),
            }
            // Dropping the connection ends the session, and so the lock, as
            // soon as the server notices; until then nobody else holds it.
            state.held = false;
            state.conn = None;
        }

        if state.conn.is_none() {
            state.conn = self.connect().await;
        }
        let Some(conn) = state.conn.as_mut() else {
            return false;
        };
        let taken =
            sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)").bind(LOCK_KEY).fetch_one(&mut *conn);
        match tokio::time::timeout(CHECK_TIMEOUT, taken).await {
            Ok(Ok(true)) => {
                tracing::info!("took the publisher lease: this node publishes");
                state.held = true;
                true
            }
            // Another node holds it: keep the connection for the next try.
            Ok(Ok(false)) => false,
            Ok(Err(err)) => {
                tracing::debug!(error = %err, "publisher lease: the connection failed");
                state.conn = None;
                false
            }
            Err(_) => {
                // The lock may have been granted after all: dropping the
                // session releases it.
                state.conn = None;
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! Against a real server: `SMARTSCHEDULER_TEST_POSTGRES_URL` (default
    //! `postgres://postgres@127.0.0.1:5432/postgres`), in a fresh database (the
    //! lock is per database). Skipped when unreachable, unless `CI=true`.

    use super::*;

    async fn admin() -> Option<(PgConnection, String)> {
        let base = std::env::var("SMARTSCHEDULER_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        match tokio::time::timeout(Duration::from_secs(10), PgConnection::connect(&base)).await {
            Ok(Ok(conn)) => Some((conn, base)),
            other => {
                let why = other
                    .map_or_else(|_| "timed out".to_owned(), |r| r.err().map(|e| e.to_string()).unwrap_or_default());
                assert!(std::env::var("CI").as_deref() != Ok("true"), "PostgreSQL is required when CI=true: {why}");
                eprintln!("skipped: PostgreSQL is not reachable at {base}: {why}");
                None
            }
        }
    }

    #[tokio::test]
    async fn one_holder_at_a_time_and_the_lease_moves_when_the_holder_session_ends() {
        let Some((mut admin, base)) = admin().await else { return };
        let name = format!("ss_lease_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.unwrap();
        let (head, _) = base.rsplit_once('/').unwrap();
        let url = format!("{head}/{name}");

        let body = tokio::spawn(async move {
            let a = PostgresLease::new(&url);
            let b = PostgresLease::new(&url);
            assert!(a.hold().await, "the first to ask takes it");
            assert!(!b.hold().await, "one holder at a time");
            tokio::time::sleep(RECHECK).await;
            assert!(a.hold().await && !b.hold().await, "checked again: unchanged");
            {
                // A vanished holder is noticed in seconds, not hours.
                let mut state = a.state.lock().await;
                let conn = state.conn.as_mut().unwrap();
                let (tcp, idle, interval, count): (bool, String, String, String) = sqlx::query_as(
                    "SELECT inet_client_addr() IS NOT NULL, current_setting('tcp_keepalives_idle'),
                        current_setting('tcp_keepalives_interval'), current_setting('tcp_keepalives_count')",
                )
                .fetch_one(&mut *conn)
                .await
                .unwrap();
                // Keepalives apply over TCP only (a Unix socket reports 0).
                if tcp {
                    assert_eq!((idle.as_str(), interval.as_str(), count.as_str()), ("5", "2", "3"));
                }
            }

            // The holder's session ends (as when its node dies).
            let mut probe = PgConnection::connect(&url).await.unwrap();
            let ended: bool = sqlx::query_scalar(
                "SELECT pg_terminate_backend(pid) FROM pg_locks
                 WHERE locktype = 'advisory' AND granted AND ((classid::bigint << 32) | objid::bigint) = $1",
            )
            .bind(LOCK_KEY)
            .fetch_one(&mut probe)
            .await
            .unwrap();
            assert!(ended);
            let started = Instant::now();
            while !b.hold().await {
                assert!(started.elapsed() < Duration::from_secs(5), "the other node takes the lease");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert!(started.elapsed() < Duration::from_secs(2), "within about a second: {:?}", started.elapsed());
            tokio::time::sleep(RECHECK).await;
            assert!(!a.hold().await, "the old holder notices it lost the lease");
            assert!(b.hold().await);
        })
        .await;
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut admin).await;
        if let Err(panic) = body {
            std::panic::resume_unwind(panic.into_panic());
        }
    }
}
