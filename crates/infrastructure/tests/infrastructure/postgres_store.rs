//! Black-box tests of `PostgresStore` through the domain's ports: the shared
//! suite (`support`) plus what only a server shared by several nodes can show.
//!
//! Every test creates its own database `ss_test_<random>` on the server at
//! `SMARTSCHEDULER_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`) and drops it at the end. When
//! the server cannot be reached, the tests are skipped with a message on
//! stderr, unless `CI=true`: then they fail.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::{event_ids, ids_of, later, plan, published, range, sequences, Backend, Counts, Db};
use smartscheduler_domain::ports::{
    AssignmentStore, ClaimedEvent, CommitAssignmentError, EventLog, EventQuery, EventStatus, Fence, IdempotencyKey,
    StoreError, UsedConnectionTokens,
};
use smartscheduler_domain::{EventId, JobStatus, Sequence, Timestamp};
use smartscheduler_infrastructure::database::redact;
use smartscheduler_infrastructure::postgres::PostgresStore;
use smartscheduler_infrastructure::used_connection_tokens::PostgresUsedConnectionTokens;
use smartscheduler_infrastructure::Database;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, Executor, PgConnection, PgPool};
use tokio::sync::Barrier;

/// The server used when `SMARTSCHEDULER_TEST_POSTGRES_URL` is not set.
const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The URL of a database to connect to for creating and dropping the test
/// databases.
fn base_url() -> String {
    std::env::var("SMARTSCHEDULER_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

/// `url` pointing at `database` instead.
fn with_database(url: &str, database: &str) -> String {
    let (head, query) = match url.split_once('?') {
        Some((head, query)) => (head, Some(query)),
        None => (url, None),
    };
    let authority = head.find("://").map_or(0, |i| i + 3);
    let path = head[authority..].find('/').map_or(head.len(), |i| authority + i);
    match query {
        Some(query) => format!("{}/{database}?{query}", &head[..path]),
        None => format!("{}/{database}", &head[..path]),
    }
}

/// Whether this runs in CI (`CI=true`), where PostgreSQL must be there.
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|ci| ci.eq_ignore_ascii_case("true") || ci == "1")
}

/// Connects to the server, giving up after a few seconds.
async fn connect_admin(url: &str) -> Result<PgConnection, String> {
    match tokio::time::timeout(Duration::from_secs(10), PgConnection::connect(url)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out after 10 s".to_owned()),
    }
}

/// A database made for one test, dropped (best effort) when this is dropped,
/// even when the test panics.
pub(crate) struct TestDatabase {
    base: String,
    name: String,
    url: String,
}

impl TestDatabase {
    /// Creates the database, or returns `None` (after saying why) when the
    /// server cannot be reached outside CI.
    async fn create() -> Option<Self> {
        let base = base_url();
        let mut admin = match connect_admin(&base).await {
            Ok(conn) => conn,
            Err(e) if in_ci() => panic!(
                "PostgreSQL is required when CI=true but is not reachable at {}: {e}. \
                 Start a PostgreSQL server there or point SMARTSCHEDULER_TEST_POSTGRES_URL at one.",
                redact(&base)
            ),
            Err(e) => {
                eprintln!("skipped: PostgreSQL not reachable at {} ({e})", redact(&base));
                return None;
            }
        };
        let name = format!("ss_test_{}", uuid::Uuid::new_v4().simple());
        admin
            .execute(format!(r#"CREATE DATABASE "{name}""#).as_str())
            .await
            .unwrap_or_else(|e| panic!("create the test database {name}: {e}"));
        let _ = admin.close().await;
        let url = with_database(&base, &name);
        Some(Self { base, name, url })
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let base = self.base.clone();
        let sql = format!(r#"DROP DATABASE IF EXISTS "{}" WITH (FORCE)"#, self.name);
        // Drop runs inside the test's runtime, which cannot be blocked on: a
        // thread with its own runtime does the work.
        let dropper = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            runtime.block_on(async {
                if let Ok(mut admin) = connect_admin(&base).await {
                    if let Err(e) = admin.execute(sql.as_str()).await {
                        eprintln!("could not drop a test database: {e}");
                    }
                    let _ = admin.close().await;
                }
            });
        });
        let _ = dropper.join();
    }
}

/// A fresh PostgreSQL database per test.
pub(crate) struct Postgres;

impl Backend for Postgres {
    type Store = PostgresStore;
    type Raw = PgPool;
    type Guard = TestDatabase;

    async fn fresh() -> Option<Db<Self>> {
        let database = TestDatabase::create().await?;
        let store = PostgresStore::connect(&database.url)
            .await
            .expect("the store connects to the new database and migrates it");
        let raw = PgPoolOptions::new()
            .max_connections(2)
            .connect(&database.url)
            .await
            .expect("a raw connection to the same database");
        Some(Db { store, raw, guard: database })
    }

    async fn count(raw: &PgPool, table: &str) -> i64 {
        let sql = format!("SELECT COUNT(*) FROM {table}");
        sqlx::query_scalar(&sql).fetch_one(raw).await.expect("count rows")
    }
}

crate::support::store_suite!(Postgres);

// ---------------------------------------------------------------------------
// Several nodes on one database
// ---------------------------------------------------------------------------

/// Waits until `n` sessions of this database wait for a lock.
async fn until_waiting_for_locks(raw: &PgPool, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(raw)
        .await
        .expect("read pg_stat_activity");
        if waiting >= n {
            return;
        }
        assert!(Instant::now() < deadline, "{n} sessions should be waiting for a lock, {waiting} are");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_claiming_at_once_never_share_a_row_or_a_sequence() {
    let Some(db) = Postgres::fresh().await else {
        return;
    };
    let events = db.commit_events(10).await;
    let node_a = db.store.clone();
    let node_b = PostgresStore::connect(&db.guard.url).await.expect("a second node on the same database");
    // Hold the sequence counter so that both claims are certainly in flight
    // at once: each has locked its rows and waits for the counter.
    let mut counter = db.raw.begin().await.unwrap();
    sqlx::query("SELECT last FROM event_sequence WHERE id = 1 FOR UPDATE").execute(&mut *counter).await.unwrap();
    let a = tokio::spawn(async move { node_a.claim_due(later(), 5, Fence::Unfenced).await });
    let b = tokio::spawn({
        let node_b = node_b.clone();
        async move { node_b.claim_due(later(), 5, Fence::Unfenced).await }
    });
    until_waiting_for_locks(&db.raw, 2).await;
    counter.rollback().await.unwrap();
    let a = a.await.unwrap().unwrap();
    let b = b.await.unwrap().unwrap();

    assert_eq!(a.len(), 5, "{a:?}");
    assert_eq!(b.len(), 5, "{b:?}");
    let ids_a: HashSet<EventId> = event_ids(&a).into_iter().collect();
    let ids_b: HashSet<EventId> = event_ids(&b).into_iter().collect();
    assert!(ids_a.is_disjoint(&ids_b), "a row went to both nodes");
    let mut all: Vec<EventId> = ids_a.union(&ids_b).copied().collect();
    all.sort();
    let mut expected = ids_of(&events);
    expected.sort();
    assert_eq!(all, expected, "every due row went to one node");
    for claimed in [&a, &b] {
        let commit_order: Vec<EventId> =
            ids_of(&events).into_iter().filter(|id| event_ids(claimed).contains(id)).collect();
        assert_eq!(event_ids(claimed), commit_order, "each in commit order");
    }
    // One node took the counter first and got 1..=5, the other 6..=10.
    let (first, second) = if a[0].sequence < b[0].sequence { (&a, &b) } else { (&b, &a) };
    assert_eq!(sequences(first), (1..=5).map(Sequence).collect::<Vec<_>>());
    assert_eq!(sequences(second), (6..=10).map(Sequence).collect::<Vec<_>>());
    node_b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_relays_racing_publish_every_row_once_and_never_reuse_a_sequence() {
    const ROWS: i64 = 40;
    let Some(db) = Postgres::fresh().await else {
        return;
    };
    let events = db.commit_events(ROWS).await;
    let second = PostgresStore::connect(&db.guard.url).await.expect("a second node on the same database");
    let nodes = [db.store.clone(), second.clone()];
    let barrier = Arc::new(Barrier::new(nodes.len()));
    let mut relays = Vec::new();
    for node in nodes {
        let barrier = Arc::clone(&barrier);
        // A relay: claim a few due rows, "deliver" them, mark them published,
        // until nothing is due. A row the other node claimed meanwhile may be
        // claimed again; only the latest claim can publish it.
        relays.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut claims: Vec<Vec<ClaimedEvent>> = Vec::new();
            loop {
                let claimed = node.claim_due(later(), 3, Fence::Unfenced).await.expect("claim_due");
                if claimed.is_empty() {
                    return claims;
                }
                node.mark_published(published(&claimed), later(), Fence::Unfenced).await.expect("mark_published");
                claims.push(claimed);
            }
        }));
    }
    let mut claims = Vec::new();
    for relay in relays {
        claims.extend(relay.await.expect("the relay does not panic"));
    }

    let mut handed_out: Vec<Sequence> = Vec::new();
    for claim in &claims {
        let s = sequences(claim);
        assert!(s.windows(2).all(|w| w[1].0 == w[0].0 + 1), "one claim takes one block of sequences: {s:?}");
        handed_out.extend(s);
    }
    let distinct: HashSet<Sequence> = handed_out.iter().copied().collect();
    assert_eq!(distinct.len(), handed_out.len(), "a sequence was reused");

    let listed = db.list(Some(Sequence(0)), None, 1000).await;
    assert_eq!(listed.len(), ROWS as usize, "every row is published once");
    assert!(listed.iter().all(|e| e.status == EventStatus::Published));
    let mut listed_ids: Vec<EventId> = listed.iter().map(|e| e.event_id).collect();
    listed_ids.sort();
    let mut expected = ids_of(&events);
    expected.sort();
    assert_eq!(listed_ids, expected);
    for entry in &listed {
        let sequence = entry.sequence.expect("a published row has a sequence");
        assert!(distinct.contains(&sequence), "published with a sequence one of its claims got");
    }
    second.close().await;
}

// ---------------------------------------------------------------------------
// Connecting
// ---------------------------------------------------------------------------

#[tokio::test]
async fn the_database_opens_postgres_and_postgresql_urls() {
    let Some(db) = Postgres::fresh().await else {
        return;
    };
    let url = db.guard.url.clone();
    let other_scheme = url.replacen("postgres://", "postgresql://", 1);
    for url in [url, other_scheme] {
        let database = Database::connect(&url).await.unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(database, Database::Postgres(_)));
        database.ping().await.expect("the database answers");
        database.contractors().list(None, 10).await.expect("the ports work");
        database.close().await;
    }
}

#[tokio::test]
async fn a_closed_store_is_unavailable() {
    let Some(db) = Postgres::fresh().await else {
        return;
    };
    db.store.ping().await.expect("the store answers");

    db.store.close().await;

    assert!(matches!(db.store.ping().await, Err(StoreError::Unavailable(_))));
    assert!(matches!(db.store.claim_due(later(), 10, Fence::Unfenced).await, Err(StoreError::Unavailable(_))));
}

#[test]
fn the_test_database_url_replaces_only_the_database_name() {
    assert_eq!(
        with_database("postgres://postgres@127.0.0.1:5432/postgres", "x"),
        "postgres://postgres@127.0.0.1:5432/x"
    );
    assert_eq!(
        with_database("postgresql://u:p@host/db?sslmode=disable", "x"),
        "postgresql://u:p@host/x?sslmode=disable"
    );
    assert_eq!(with_database("postgres://host", "x"), "postgres://host/x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_connection_token_used_on_one_node_is_refused_on_every_other_and_expired_records_are_purged() {
    let Some(db) = Postgres::fresh().await else {
        return;
    };
    let other = PostgresStore::connect(&db.guard.url).await.expect("a second node on the same database");
    let node_a = PostgresUsedConnectionTokens::new(&db.store);
    let node_b = PostgresUsedConnectionTokens::new(&other);
    let until = Timestamp::now().plus_millis(15_000);

    assert_eq!(node_a.mark_used("conn-1", until).await, Ok(true), "the first use");
    assert_eq!(node_b.mark_used("conn-1", until).await, Ok(false), "a second use on another node");
    assert_eq!(node_a.mark_used("conn-1", until).await, Ok(false), "a second use on the same node");

    // Racing uses of one token on both nodes: exactly one is the first.
    let mut racers = tokio::task::JoinSet::new();
    for i in 0..8 {
        let node = if i % 2 == 0 { node_a.clone() } else { node_b.clone() };
        racers.spawn(async move { node.mark_used("conn-2", until).await });
    }
    let firsts = racers.join_all().await.into_iter().filter(|r| *r == Ok(true)).count();
    assert_eq!(firsts, 1);

    // A record past its end is deleted by a node's next purge (its first use).
    assert_eq!(node_a.mark_used("expired", Timestamp::now().plus_millis(-1_000)).await, Ok(true));
    let node_c = PostgresUsedConnectionTokens::new(&db.store);
    assert_eq!(node_c.mark_used("conn-3", until).await, Ok(true));
    let left: Vec<String> = sqlx::query_scalar("SELECT token_id FROM used_connection_tokens ORDER BY token_id")
        .fetch_all(&db.raw)
        .await
        .expect("read the used tokens");
    assert_eq!(left, ["conn-1", "conn-2", "conn-3"]);
}

// ---------------------------------------------------------------------------
// The fenced publisher lease
// ---------------------------------------------------------------------------

/// Moves the lease to the next epoch, as a takeover does; returns the new epoch.
async fn take_over(raw: &PgPool) -> i64 {
    sqlx::query_scalar(
        "UPDATE publisher_lease SET epoch = epoch + 1, expires_at = clock_timestamp() + interval '1 minute'
         WHERE id = 1 RETURNING epoch",
    )
    .fetch_one(raw)
    .await
    .expect("take the lease over")
}

#[tokio::test]
async fn an_old_holder_cannot_publish_what_it_claimed_after_a_takeover_and_the_new_holder_publishes_it() {
    let Some(db) = Postgres::fresh().await else {
        return;
    };
    let events = db.commit_events(3).await;
    let old = Fence::Epoch(take_over(&db.raw).await);
    let claimed = db.store.claim_due(later(), 10, old).await.expect("the holder claims");
    assert_eq!(claimed.len(), 3);

    // Another node takes the lease over while the old holder stalls.
    let new = Fence::Epoch(take_over(&db.raw).await);

    // The old holder thaws: every write it tries is refused, and changes nothing.
    assert_eq!(db.store.mark_published(published(&claimed), later(), old).await, Err(StoreError::LeaseLost));
    assert_eq!(db.store.claim_due(later(), 10, old).await, Err(StoreError::LeaseLost));
    assert_eq!(db.store.claim(events.clone(), old).await, Err(StoreError::LeaseLost));
    assert_eq!(
        db.store.record_failure(events[0].event_id(), "late".into(), None, old).await,
        Err(StoreError::LeaseLost)
    );
    assert_eq!(db.store.backlog().await.unwrap(), (3, 0), "all three still Pending");

    // The new holder claims the rows again, after the old sequences, and publishes them.
    let again = db.store.claim_due(later(), 10, new).await.expect("the new holder claims");
    assert_eq!(event_ids(&again), event_ids(&claimed));
    assert!(again[0].sequence > claimed[2].sequence, "{again:?} after {claimed:?}");
    db.store.mark_published(published(&again), later(), new).await.expect("the new holder publishes");
    let log = db.store.list(EventQuery { after_sequence: None, status: None, limit: 100 }).await.unwrap();
    assert!(log.iter().all(|e| e.status == EventStatus::Published));
    assert_eq!(sequences_of(&log), sequences(&again));
    // The old sequences were given up: a follower waiting on them moves on.
    assert!(db.store.held_sequences(claimed[0].sequence, claimed[2].sequence).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_takeover_waits_for_a_fenced_write_in_flight_and_a_write_after_it_is_refused() {
    let Some(db) = Postgres::fresh().await else {
        return;
    };
    db.commit_events(2).await;
    let old = Fence::Epoch(take_over(&db.raw).await);
    // A holder's claim is in flight: it has checked its fence (the row is
    // held FOR SHARE) and waits for the sequence counter, held here.
    let mut counter = db.raw.begin().await.unwrap();
    sqlx::query("SELECT last FROM event_sequence WHERE id = 1 FOR UPDATE").execute(&mut *counter).await.unwrap();
    let store = db.store.clone();
    let in_flight = tokio::spawn(async move { store.claim_due(later(), 1, old).await });
    until_waiting_for_locks(&db.raw, 1).await;
    // The takeover queues behind the claim (second lock waiter) ...
    let other_node = PgPoolOptions::new().max_connections(1).connect(&db.guard.url).await.unwrap();
    let takeover = tokio::spawn(async move { take_over(&other_node).await });
    until_waiting_for_locks(&db.raw, 2).await;
    assert!(!takeover.is_finished());
    counter.rollback().await.unwrap();
    // ... so the claim commits first, under the old epoch, and the takeover after it.
    let claimed = in_flight.await.unwrap().expect("the claim in flight completes");
    assert_eq!(claimed.len(), 1);
    let new = Fence::Epoch(takeover.await.unwrap());
    assert_ne!(old, new);
    assert_eq!(db.store.claim_due(later(), 1, old).await, Err(StoreError::LeaseLost));
    assert_eq!(db.store.claim_due(later(), 10, new).await.unwrap().len(), 2, "the new holder takes both");
}

fn sequences_of(log: &[smartscheduler_domain::ports::EventLogEntry]) -> Vec<Sequence> {
    log.iter().filter_map(|e| e.sequence).collect()
}

/// Four nodes, each committing its burst as a group, racing for the same
/// jobs and the same contractors: every group locks rows the others hold,
/// in another mix. Each job goes to one node, each contractor is booked
/// once for the hour, every loser gets its 409 and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn groups_of_four_nodes_crossing_on_jobs_and_contractors_settle_each_race_once() {
    const NODES: usize = 4;
    const JOBS: usize = 12;
    let Some(db) = Postgres::fresh().await else {
        return;
    };
    let mut nodes = vec![db.store.clone()];
    for _ in 1..NODES {
        nodes.push(PostgresStore::connect(&db.guard.url).await.expect("another node on the same database"));
    }
    let mut jobs = Vec::new();
    let mut contractors = Vec::new();
    for i in 0..JOBS {
        jobs.push(db.add_job("north").await);
        contractors.push(db.add_contractor(&format!("Contractor {i}"), "north").await);
    }
    // Node n assigns job j to contractor (j + n) % JOBS, every range the same
    // hour: each job is raced by four nodes, and each contractor too.
    let barrier = Arc::new(Barrier::new(NODES * JOBS));
    let mut tasks = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        for (j, job) in jobs.iter().enumerate() {
            let contractor = &contractors[(j + n) % JOBS];
            let (assigned, assignment, event) = plan(job, contractor, range(0, 60));
            let (node, barrier) = (node.clone(), Arc::clone(&barrier));
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                let result = node.commit_assignment(&assigned, &assignment, &event, None).await;
                (result, assigned.id(), assignment.contractor_id())
            }));
        }
    }
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.expect("the task does not panic"));
    }

    let mut won_jobs = HashSet::new();
    let mut booked = HashSet::new();
    for (result, job, contractor) in &results {
        match result {
            Ok(()) => {
                assert!(won_jobs.insert(*job), "a job was assigned twice: {results:?}");
                assert!(booked.insert(*contractor), "a contractor was booked twice for one hour: {results:?}");
            }
            Err(CommitAssignmentError::JobAlreadyAssigned | CommitAssignmentError::ContractorBusy) => {}
            Err(other) => panic!("a race must end in a 409, not {other:?} (a deadlock?)"),
        }
    }
    assert!(!won_jobs.is_empty());
    let n = won_jobs.len() as i64;
    assert_eq!(db.counts().await, Counts { assignments: n, events: n, event_groups: 2 * n });
    for job in &jobs {
        let expected = if won_jobs.contains(&job.id()) { JobStatus::Assigned } else { JobStatus::Unassigned };
        assert_eq!(db.stored_job(job.id()).await.status(), expected);
    }
    for node in &nodes[1..] {
        node.close().await;
    }
}

/// One idempotency key sent to four nodes at once, with four different jobs:
/// the check inside each group finds it free, and the key's unique index
/// settles it: one commit, and each loser writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_idempotency_key_raced_on_four_nodes_is_stored_once() {
    const NODES: usize = 4;
    let Some(db) = Postgres::fresh().await else {
        return;
    };
    let mut nodes = vec![db.store.clone()];
    for _ in 1..NODES {
        nodes.push(PostgresStore::connect(&db.guard.url).await.expect("another node on the same database"));
    }
    let barrier = Arc::new(Barrier::new(NODES));
    let mut tasks = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let job = db.add_job("north").await;
        let contractor = db.add_contractor(&format!("Contractor {i}"), "north").await;
        let (assigned, assignment, event) = plan(&job, &contractor, range(0, 60));
        let key = IdempotencyKey { scope: "dispatcher-1".into(), key: "retry-7".into(), fingerprint: format!("f{i}") };
        let (node, barrier) = (node.clone(), Arc::clone(&barrier));
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            node.commit_assignment(&assigned, &assignment, &event, Some(key)).await
        }));
    }
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.expect("the task does not panic"));
    }
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "{results:?}");
    for result in results.iter().filter(|r| r.is_err()) {
        assert_eq!(result, &Err(CommitAssignmentError::IdempotencyKeyTaken));
    }
    assert_eq!(db.counts().await, Counts { assignments: 1, events: 1, event_groups: 2 });
    assert_eq!(db.count("idempotency_keys").await, 1);
    for node in &nodes[1..] {
        node.close().await;
    }
}
