//! Black-box tests of `SqliteStore` through the domain's ports, against real
//! SQLite files: every test gets a fresh database in its own temporary folder.
//! The test bodies are shared with the PostgreSQL suite (`support`).

use crate::support::{at, contractor, event_ids, job, later, plan, range, Backend, Db};
use smartscheduler_domain::ports::{AssignmentStore, ContractorRepository, EventLog, Fence, JobRepository};
use smartscheduler_infrastructure::sqlite::SqliteStore;
use sqlx::SqlitePool;
use tempfile::TempDir;

/// SQLite files, each in its own temporary folder.
struct Sqlite;

impl Backend for Sqlite {
    type Store = SqliteStore;
    type Raw = SqlitePool;
    type Guard = TempDir;

    async fn fresh() -> Option<Db<Self>> {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let url = format!("sqlite://{}/test.db", dir.path().display());
        let store = SqliteStore::connect(&url).await.expect("the store opens a new file and migrates it");
        let raw = SqlitePool::connect(&url).await.expect("a raw connection to the same file");
        Some(Db { store, raw, guard: dir })
    }

    async fn count(raw: &SqlitePool, table: &str) -> i64 {
        let sql = format!("SELECT COUNT(*) FROM {table}");
        sqlx::query_scalar(&sql).fetch_one(raw).await.expect("count rows")
    }
}

crate::support::store_suite!(Sqlite);

// ---------------------------------------------------------------------------
// In memory
// ---------------------------------------------------------------------------

#[tokio::test]
async fn an_in_memory_database_migrates_and_stores() {
    let store = SqliteStore::connect("sqlite::memory:").await.expect("an in-memory store");
    let ana = contractor("Ana", "north", at(0));
    let j = job("north", at(1));

    ContractorRepository::insert(&store, &ana).await.unwrap();
    JobRepository::insert(&store, &j).await.unwrap();
    let (assigned, assignment, event) = plan(&j, &ana, range(0, 60));
    store.commit_assignment(&assigned, &assignment, &event, None).await.unwrap();

    assert_eq!(ContractorRepository::get(&store, ana.id()).await.unwrap(), Some(ana));
    assert_eq!(JobRepository::get(&store, j.id()).await.unwrap(), Some(assigned));
    let claimed = store.claim_due(later(), 10, Fence::Unfenced).await.unwrap();
    assert_eq!(event_ids(&claimed), vec![event.event_id()]);
    store.ping().await.expect("the store answers");
}
