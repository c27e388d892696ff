//! Presence shared by several nodes on one PostgreSQL database: the union
//! of their connections, each change made and heard once, and a dead node's
//! connections given up.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::postgres_store::Postgres;
use crate::support::Backend;
use smartscheduler_domain::ports::{PresenceLedger, PresenceNotifier};
use smartscheduler_domain::{Contractor, HeldConnections, Presence, PresenceChanged, SettleScope};
use smartscheduler_infrastructure::postgres::PostgresStore;
use smartscheduler_infrastructure::postgres_presence::{PostgresPresence, NODE_EXPIRY};
use sqlx::PgPool;

const GRACE: Duration = Duration::from_secs(1);

/// What a node's listener heard.
#[derive(Default)]
struct Heard(Mutex<Vec<(smartscheduler_domain::ContractorId, bool)>>);

impl PresenceNotifier for Heard {
    fn notify(&self, change: PresenceChanged) {
        self.0.lock().unwrap().push((change.contractor_id, change.online));
    }
}

impl Heard {
    fn all(&self) -> Vec<(smartscheduler_domain::ContractorId, bool)> {
        self.0.lock().unwrap().clone()
    }
}

fn held(contractor: &Contractor, connections: u32) -> HeldConnections {
    HeldConnections { contractor_id: contractor.id(), region: contractor.region().clone(), connections }
}

/// A node that has said it is alive.
async fn node(store: &PostgresStore) -> PostgresPresence {
    let node = PostgresPresence::new(store, GRACE);
    assert!(node.heartbeat().await.unwrap(), "a new node is unknown to the ledger");
    assert!(!node.heartbeat().await.unwrap(), "and known after its first heartbeat");
    node
}

/// Starts a listener and waits until its session listens.
async fn listening(node: &PostgresPresence, raw: &PgPool) -> Arc<Heard> {
    let before: i64 = listeners(raw).await;
    let heard = Arc::new(Heard::default());
    tokio::spawn(node.clone().listen(heard.clone()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while listeners(raw).await <= before {
        assert!(Instant::now() < deadline, "the listener should be listening");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    heard
}

async fn listeners(raw: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN%'",
    )
    .fetch_one(raw)
    .await
    .unwrap()
}

async fn until_heard(heard: &Heard, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while heard.all().len() < count {
        assert!(Instant::now() < deadline, "expected {count} changes, heard {:?}", heard.all());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn presence(node: &PostgresPresence, contractor: &Contractor) -> Presence {
    node.presence_of(&[contractor.id()]).await.unwrap()[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_connection_on_one_node_is_online_on_every_node_told_once_however_many_settle() {
    let Some(db) = Postgres::fresh().await else {
        return;
    };
    let ana = db.add_contractor("Ana", "north").await;
    let node_a = node(&db.store).await;
    let node_b = node(&db.store).await;
    let heard_a = listening(&node_a, &db.raw).await;
    let heard_b = listening(&node_b, &db.raw).await;
    assert_eq!(presence(&node_b, &ana).await, Presence::default(), "never seen");

    node_a.record(&[held(&ana, 1)]).await.unwrap();
    let settles: Vec<_> = (0..8)
        .map(|i| {
            let node = if i % 2 == 0 { node_a.clone() } else { node_b.clone() };
            tokio::spawn(async move { node.settle(SettleScope::Everyone).await.unwrap() })
        })
        .collect();
    let mut made = Vec::new();
    for settle in settles {
        made.extend(settle.await.unwrap());
    }

    assert_eq!(made.len(), 1, "one settle made the change: {made:?}");
    assert!(made[0].online && made[0].contractor_id == ana.id() && made[0].region == *ana.region());
    until_heard(&heard_a, 1).await;
    until_heard(&heard_b, 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(heard_a.all(), vec![(ana.id(), true)], "node A heard it once");
    assert_eq!(heard_b.all(), vec![(ana.id(), true)], "node B heard it once");
    let seen_from_b = presence(&node_b, &ana).await;
    assert!(seen_from_b.online && seen_from_b.connections == 1 && seen_from_b.last_seen_utc.is_some());
}

#[tokio::test]
async fn online_while_any_node_holds_one_and_offline_a_grace_after_the_last_closes() {
    let Some(db) = Postgres::fresh().await else {
        return;
    };
    let ana = db.add_contractor("Ana", "north").await;
    let node_a = node(&db.store).await;
    let node_b = node(&db.store).await;
    node_a.record(&[held(&ana, 1)]).await.unwrap();
    node_b.record(&[held(&ana, 2)]).await.unwrap();
    assert_eq!(node_a.settle(SettleScope::Everyone).await.unwrap().len(), 1);
    assert_eq!(presence(&node_a, &ana).await.connections, 3, "the union over nodes");

    node_a.record(&[held(&ana, 0)]).await.unwrap();
    tokio::time::sleep(GRACE + Duration::from_millis(100)).await;
    assert!(node_a.settle(SettleScope::Everyone).await.unwrap().is_empty(), "node B still holds two");
    node_b.record(&[held(&ana, 0)]).await.unwrap();
    assert!(node_b.settle(SettleScope::Everyone).await.unwrap().is_empty(), "within the grace");
    let within = presence(&node_a, &ana).await;
    assert!(within.online && within.connections == 0, "{within:?}");

    tokio::time::sleep(GRACE + Duration::from_millis(100)).await;
    let made = node_a.settle(SettleScope::Everyone).await.unwrap();
    assert_eq!(made.iter().map(|c| (c.contractor_id, c.online)).collect::<Vec<_>>(), vec![(ana.id(), false)]);
    assert!(node_b.settle(SettleScope::Everyone).await.unwrap().is_empty(), "told once");
    let after = presence(&node_b, &ana).await;
    assert!(!after.online && after.connections == 0 && after.last_seen_utc.is_some(), "{after:?}");
}

#[tokio::test]
async fn a_dead_nodes_connections_stop_counting_and_it_records_everything_again_when_back() {
    let Some(db) = Postgres::fresh().await else {
        return;
    };
    let ana = db.add_contractor("Ana", "north").await;
    let bo = db.add_contractor("Bo", "north").await;
    let dying = node(&db.store).await;
    let alive = node(&db.store).await;
    dying.record(&[held(&ana, 1)]).await.unwrap();
    alive.record(&[held(&bo, 1)]).await.unwrap();
    assert_eq!(alive.settle(SettleScope::Everyone).await.unwrap().len(), 2);

    // The dying node's last heartbeat was longer ago than the expiry and the grace.
    let silent = i64::try_from((NODE_EXPIRY + GRACE).as_millis()).unwrap() + 1000;
    let moved = sqlx::query(
        "UPDATE presence_nodes SET seen_at = seen_at - $1
         WHERE node_id IN (SELECT node_id FROM presence_connections WHERE contractor_id = $2)",
    )
    .bind(silent)
    .bind(ana.id().as_uuid())
    .execute(&db.raw)
    .await
    .unwrap();
    assert_eq!(moved.rows_affected(), 1);
    let made = alive.settle(SettleScope::Everyone).await.unwrap();
    assert_eq!(made.iter().map(|c| (c.contractor_id, c.online)).collect::<Vec<_>>(), vec![(ana.id(), false)]);
    assert_eq!(presence(&alive, &ana).await.connections, 0, "a dead node's connections do not count");
    assert!(presence(&alive, &bo).await.online, "a live node's still do");

    // Given up for dead and forgotten; when it beats again it is told to record all it holds.
    sqlx::query("DELETE FROM presence_nodes WHERE node_id NOT IN (SELECT node_id FROM presence_connections WHERE contractor_id = $1)")
        .bind(bo.id().as_uuid())
        .execute(&db.raw)
        .await
        .unwrap();
    assert!(dying.heartbeat().await.unwrap(), "the ledger had forgotten the node");
    dying.record(&[held(&ana, 1)]).await.unwrap();
    let made = alive.settle(SettleScope::Everyone).await.unwrap();
    assert_eq!(made.iter().map(|c| (c.contractor_id, c.online)).collect::<Vec<_>>(), vec![(ana.id(), true)]);
}

#[tokio::test]
async fn a_scoped_settle_changes_only_the_contractors_it_names() {
    let Some(db) = Postgres::fresh().await else {
        return;
    };
    let ana = db.add_contractor("Ana", "north").await;
    let bo = db.add_contractor("Bo", "south").await;
    let node = node(&db.store).await;
    node.record(&[held(&ana, 1), held(&bo, 1)]).await.unwrap();

    let made = node.settle(SettleScope::Only(&[ana.id()])).await.unwrap();
    assert_eq!(made.iter().map(|c| (c.contractor_id, c.online)).collect::<Vec<_>>(), vec![(ana.id(), true)]);
    assert!(node.settle(SettleScope::Only(&[])).await.unwrap().is_empty());
    let made = node.settle(SettleScope::Everyone).await.unwrap();
    assert_eq!(
        made.iter().map(|c| (c.contractor_id, c.region.clone())).collect::<Vec<_>>(),
        vec![(bo.id(), bo.region().clone())]
    );
}
