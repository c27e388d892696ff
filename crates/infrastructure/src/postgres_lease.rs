//! The publisher lease on PostgreSQL: the `publisher_lease` row, which
//! expires unless its holder renews it, and whose `epoch` fences every claim
//! and publish (see [`crate::postgres`]).
//!
//! A node takes the lease when it has expired, by the database's clock (the
//! one clock every node shares), or at once when the holder's lease session
//! is gone (its process died); the epoch grows by one. It renews it
//! every tenth of the lease's time. A holder that dies, freezes (SIGSTOP, a
//! long stall), is cut off from the database or has its session killed
//! stops renewing; another node takes over once the lease expires. When the
//! old holder comes back, its renewal finds another epoch and its writes
//! fail the fence check: it can never publish late. A node that stops
//! gracefully gives the lease up at once, so a restart does not wait for it
//! to expire.
//!
//! The lease runs on a connection of its own (`application_name`
//! `smartscheduler-lease`), with short TCP keepalives and a lock timeout, and
//! every statement has a time limit: a connection that does not answer is
//! given up, never waited on.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use smartscheduler_domain::ports::{Fence, PublisherLease};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};
use tokio::sync::Mutex;

/// `application_name` of the lease session.
pub const LEASE_APPLICATION_NAME: &str = "smartscheduler-lease";

/// The default time a lease lasts after its last renewal.
pub const DEFAULT_LEASE_TIME: Duration = Duration::from_secs(5);

/// The longest a connect or a statement may take; longer counts as a failure.
const STATEMENT_LIMIT: Duration = Duration::from_secs(2);

/// Session settings of the lease connection: server-side keepalives (a
/// vanished node's session is noticed in about 11 s), and a lock timeout so
/// that a takeover queued behind a frozen holder's transaction gives up and
/// tries again rather than hanging.
const SESSION_SETTINGS: &str = "SELECT set_config('tcp_keepalives_idle', '5', false),
    set_config('tcp_keepalives_interval', '2', false), set_config('tcp_keepalives_count', '3', false),
    set_config('lock_timeout', '1000', false)";

/// Takes the lease when it has expired or its holder's session is gone;
/// returns the new epoch.
const TAKE: &str = "UPDATE publisher_lease AS l
    SET epoch = epoch + 1, holder = $1, expires_at = clock_timestamp() + $2 * interval '1 millisecond',
        holder_pid = pg_backend_pid(),
        holder_started = (SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid())
    WHERE id = 1 AND (expires_at < clock_timestamp() OR NOT EXISTS (
        SELECT 1 FROM pg_stat_activity a WHERE a.pid = l.holder_pid AND a.backend_start = l.holder_started))
    RETURNING epoch";

/// Renews the lease of `epoch`, expired or not (nobody else has taken it),
/// from this session, which may be a new one.
const RENEW: &str = "UPDATE publisher_lease
    SET expires_at = clock_timestamp() + $2 * interval '1 millisecond', holder_pid = pg_backend_pid(),
        holder_started = (SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid())
    WHERE id = 1 AND epoch = $1 RETURNING epoch";

/// Gives up the lease of `epoch` (a graceful stop).
const RELEASE: &str = "UPDATE publisher_lease SET expires_at = '-infinity' WHERE id = 1 AND epoch = $1";

/// A lease through the `publisher_lease` row.
pub struct PostgresLease {
    options: PgConnectOptions,
    time: Duration,
    /// Who this node is, in the row and the logs.
    holder: String,
    state: Mutex<LeaseState>,
}

#[derive(Default)]
struct LeaseState {
    conn: Option<PgConnection>,
    /// The epoch this node took and has not seen taken over since.
    epoch: Option<i64>,
    /// The last answer of [`PublisherLease::hold`] and when it was found.
    answer: Option<Fence>,
    checked: Option<Instant>,
}

impl PostgresLease {
    /// A lease on the database at `url`, lasting `time` after each renewal
    /// (not taken until [`PublisherLease::hold`]).
    ///
    /// # Errors
    /// When `url` is not a PostgreSQL URL.
    pub fn new(url: &str, time: Duration) -> Result<Self, sqlx::Error> {
        let options = url.parse::<PgConnectOptions>()?.application_name(LEASE_APPLICATION_NAME);
        let holder = format!("{}:{}", std::process::id(), uuid::Uuid::new_v4().simple());
        Ok(Self { options, time, holder, state: Mutex::new(LeaseState::default()) })
    }

    /// How long an answer is trusted before the next renewal or try: a tenth
    /// of the lease's time, between 50 and 500 ms.
    fn recheck(&self) -> Duration {
        (self.time / 10).clamp(Duration::from_millis(50), Duration::from_millis(500))
    }

    fn time_millis(&self) -> f64 {
        self.time.as_secs_f64() * 1000.0
    }

    async fn connect(&self) -> Option<PgConnection> {
        let mut conn = match tokio::time::timeout(STATEMENT_LIMIT, PgConnection::connect_with(&self.options)).await {
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
        match tokio::time::timeout(STATEMENT_LIMIT, sqlx::query(SESSION_SETTINGS).execute(&mut conn)).await {
            Ok(Ok(_)) => Some(conn),
            _ => {
                tracing::debug!("publisher lease: could not set up its session");
                None
            }
        }
    }

    /// Runs `statement` with the epoch or holder and the lease time; `Err`
    /// when the connection failed (it is dropped), `Ok(None)` when no row matched.
    async fn update(state: &mut LeaseState, statement: Statement<'_>, time_millis: f64) -> Result<Option<i64>, ()> {
        let conn = state.conn.as_mut().ok_or(())?;
        let query = match statement {
            Statement::Take(holder) => sqlx::query_scalar::<_, i64>(TAKE).bind(holder.to_owned()),
            Statement::Renew(epoch) => sqlx::query_scalar::<_, i64>(RENEW).bind(epoch),
        };
        match tokio::time::timeout(STATEMENT_LIMIT, query.bind(time_millis).fetch_optional(&mut *conn)).await {
            Ok(Ok(epoch)) => Ok(epoch),
            Ok(Err(err)) => {
                tracing::debug!(error = %err, "publisher lease: its statement failed");
                state.conn = None;
                Err(())
            }
            Err(_) => {
                // The statement may still run: dropping the session ends it.
                tracing::debug!("publisher lease: its statement timed out");
                state.conn = None;
                Err(())
            }
        }
    }

    /// Renews or takes the lease; the fence while held.
    async fn check(&self, state: &mut LeaseState) -> Option<Fence> {
        if state.conn.is_none() {
            state.conn = self.connect().await;
        }
        if let Some(epoch) = state.epoch {
            match Self::update(state, Statement::Renew(epoch), self.time_millis()).await {
                Ok(Some(_)) => return Some(Fence::Epoch(epoch)),
                Ok(None) => {
                    tracing::warn!(epoch, "lost the publisher lease: another node took it over");
                    state.epoch = None;
                }
                // Not renewed now; kept for the next try, and until then this
                // node does not publish (its fence would tell it anyway).
                Err(()) => return None,
            }
        }
        match Self::update(state, Statement::Take(&self.holder), self.time_millis()).await {
            Ok(Some(epoch)) => {
                tracing::info!(epoch, "took the publisher lease: this node publishes");
                state.epoch = Some(epoch);
                Some(Fence::Epoch(epoch))
            }
            Ok(None) | Err(()) => None,
        }
    }
}

enum Statement<'a> {
    Take(&'a str),
    Renew(i64),
}

#[async_trait]
impl PublisherLease for PostgresLease {
    async fn hold(&self) -> Option<Fence> {
        let mut state = self.state.lock().await;
        if state.checked.is_some_and(|at| at.elapsed() < self.recheck()) {
            return state.answer;
        }
        let answer = self.check(&mut state).await;
        state.answer = answer;
        state.checked = Some(Instant::now());
        answer
    }

    async fn release(&self) {
        let mut state = self.state.lock().await;
        let (Some(epoch), Some(conn)) = (state.epoch, state.conn.as_mut()) else {
            return;
        };
        let released = sqlx::query(RELEASE).bind(epoch).execute(&mut *conn);
        if matches!(tokio::time::timeout(STATEMENT_LIMIT, released).await, Ok(Ok(_))) {
            tracing::info!(epoch, "gave up the publisher lease");
        }
        state.epoch = None;
        state.answer = None;
        state.checked = Some(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    //! Against a real server: `SMARTSCHEDULER_TEST_POSTGRES_URL` (default
    //! `postgres://postgres@127.0.0.1:5432/postgres`), in a fresh database
    //! with the migrations applied. Skipped when unreachable, unless `CI=true`.

    use super::*;
    use crate::postgres::PostgresStore;

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

    /// Runs `body` with the URL of a fresh, migrated database, then drops it.
    async fn with_database<F, Fut>(body: F)
    where
        F: FnOnce(String) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let Some((mut admin, base)) = admin().await else { return };
        let name = format!("ss_lease_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.unwrap();
        let (head, _) = base.rsplit_once('/').unwrap();
        let url = format!("{head}/{name}");
        let outcome = tokio::spawn(async move {
            PostgresStore::connect(&url).await.unwrap().close().await;
            body(url).await;
        })
        .await;
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut admin).await;
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic.into_panic());
        }
    }

    /// Ends the lease holder's session, as an operator, a pooler or a crash does.
    async fn terminate_holder_session(url: &str) -> bool {
        let mut probe = PgConnection::connect(url).await.unwrap();
        sqlx::query_scalar("SELECT pg_terminate_backend(holder_pid) FROM publisher_lease WHERE id = 1")
            .fetch_one(&mut probe)
            .await
            .unwrap()
    }

    async fn wait_until_held(lease: &PostgresLease, limit: Duration) -> (Fence, Duration) {
        let started = Instant::now();
        loop {
            if let Some(fence) = lease.hold().await {
                return (fence, started.elapsed());
            }
            assert!(started.elapsed() < limit, "the lease was not taken within {limit:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn one_holder_at_a_time_and_when_its_session_ends_another_takes_over_at_once_and_the_old_one_is_out() {
        with_database(|url| async move {
            let time = Duration::from_secs(30);
            let a = PostgresLease::new(&url, time).unwrap();
            let b = PostgresLease::new(&url, time).unwrap();
            let fence = a.hold().await.expect("the first to ask takes it");
            assert_eq!(fence, Fence::Epoch(1));
            assert_eq!(b.hold().await, None, "one holder at a time");
            for _ in 0..3 {
                tokio::time::sleep(a.recheck()).await;
                assert_eq!(a.hold().await, Some(fence), "renewed");
                assert_eq!(b.hold().await, None);
            }

            // The holder's lease session ends: no need to wait 30 s for expiry.
            assert!(terminate_holder_session(&url).await);
            let (taken, waited) = wait_until_held(&b, Duration::from_secs(5)).await;
            assert_eq!(taken, Fence::Epoch(2));
            assert!(waited < time, "{waited:?}");
            // The old holder reconnects, and its renewal finds another epoch.
            tokio::time::sleep(a.recheck()).await;
            assert_eq!(a.hold().await, None);
            tokio::time::sleep(a.recheck()).await;
            assert_eq!(a.hold().await, None, "and it cannot take it back while b renews");
            assert_eq!(b.hold().await, Some(taken));
        })
        .await;
    }

    #[tokio::test]
    async fn a_holder_that_stops_renewing_loses_the_lease_when_it_expires_and_cannot_renew_after() {
        with_database(|url| async move {
            let time = Duration::from_millis(1000);
            let a = PostgresLease::new(&url, time).unwrap();
            let b = PostgresLease::new(&url, time).unwrap();
            let first = a.hold().await.unwrap();

            // `a` freezes (it simply stops calling); `b` takes over once the
            // lease has expired, not before.
            let (second, waited) = wait_until_held(&b, time * 3).await;
            assert!(waited >= time / 2, "not taken while still fresh: {waited:?}");
            assert_eq!(second, Fence::Epoch(2));

            // `a` thaws: its renewal finds another epoch.
            assert_eq!(a.hold().await, None);
            tokio::time::sleep(b.recheck()).await;
            assert_eq!(b.hold().await, Some(second));
            assert_ne!(first, second);
        })
        .await;
    }

    #[tokio::test]
    async fn a_released_lease_is_taken_at_once() {
        with_database(|url| async move {
            let time = Duration::from_secs(30);
            let a = PostgresLease::new(&url, time).unwrap();
            let b = PostgresLease::new(&url, time).unwrap();
            assert!(a.hold().await.is_some());
            a.release().await;
            assert_eq!(a.hold().await, None, "given up");
            let (fence, waited) = wait_until_held(&b, Duration::from_secs(5)).await;
            assert_eq!(fence, Fence::Epoch(2));
            assert!(waited < time, "without waiting for the 30 s to pass: {waited:?}");
        })
        .await;
    }
}
