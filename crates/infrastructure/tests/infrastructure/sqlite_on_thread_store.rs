//! The shared store suite (`support`) against SQLite with reads on the
//! calling thread (`SqliteOnThreadStore`, opt-in): the same behaviour as
//! the sqlx readers, test for test.

use crate::support::{Backend, Db};
use smartscheduler_infrastructure::sqlite_on_thread::SqliteOnThreadStore;
use sqlx::SqlitePool;
use tempfile::TempDir;

/// SQLite files, each in its own temporary folder, read on the calling thread.
struct SqliteOnThread;

impl Backend for SqliteOnThread {
    type Store = SqliteOnThreadStore;
    type Raw = SqlitePool;
    type Guard = TempDir;

    async fn fresh() -> Option<Db<Self>> {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let url = format!("sqlite://{}/test.db", dir.path().display());
        let store = SqliteOnThreadStore::connect(&url).await.expect("the store opens a new file and migrates it");
        let raw = SqlitePool::connect(&url).await.expect("a raw connection to the same file");
        Some(Db { store, raw, guard: dir })
    }

    async fn count(raw: &SqlitePool, table: &str) -> i64 {
        let sql = format!("SELECT COUNT(*) FROM {table}");
        sqlx::query_scalar(&sql).fetch_one(raw).await.expect("count rows")
    }
}

crate::support::store_suite!(SqliteOnThread);

#[tokio::test]
async fn an_in_memory_database_is_refused_as_a_second_connection_would_not_see_it() {
    let refused = SqliteOnThreadStore::connect("sqlite::memory:").await;
    assert!(refused.is_err(), "{refused:?}");
}
