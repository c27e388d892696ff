//! Presence shared by a cluster's nodes, in PostgreSQL (the store every
//! node already has; Redis is optional). Why here and what it costs:
//! `docs/deployment.md`, "Presence in a cluster".
//!
//! Each node writes its connection counts (`presence_connections`) and a
//! heartbeat (`presence_nodes`). A node that has not beaten for
//! [`NODE_EXPIRY`] is dead: its connections stop counting, and they count
//! as last seen at its last heartbeat, so its contractors go offline a
//! grace after that unless they reconnected elsewhere. Settling compares
//! that union with what dispatchers were last told (`contractor_presence`)
//! and changes the rows that differ, under a transaction-scoped advisory
//! lock so nodes settle one at a time; the same statement sends each change
//! with `pg_notify`, which PostgreSQL delivers only if the change commits.
//! Every node listens on [`CHANNEL`] and hands what it hears to its hub.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use smartscheduler_domain::ports::{PresenceLedger, PresenceNotifier, StoreError};
use smartscheduler_domain::{ContractorId, HeldConnections, Presence, PresenceChanged, Region, SettleScope, Timestamp};
use sqlx::postgres::PgListener;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::errors::{corrupt, store_error};
use crate::postgres::PostgresStore;

/// The `LISTEN` channel of presence changes.
pub const CHANNEL: &str = "smartscheduler_presence";

/// A node silent this long is dead. Ten heartbeats: a busy node is not
/// mistaken for a dead one, and a dead node's contractors are offline
/// within this plus the grace (20 s by default), inside the 30 s promised.
pub const NODE_EXPIRY: Duration = Duration::from_secs(10);

/// A dead node's rows are deleted this long after its last heartbeat,
/// well after its contractors were settled offline.
const FORGET_AFTER: Duration = Duration::from_secs(300);

/// The advisory lock key that makes nodes settle one at a time.
const SETTLE_LOCK: i64 = 0x5353_5052_4553_454E; // "SSPRESEN"

/// The database's clock, in unix milliseconds.
const NOW_MS: &str = "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT";

/// Over a contractor's `presence_connections c` joined to their
/// `presence_nodes n`, with `clock.now_ms` and the node expiry as `$1`: its
/// connections on live nodes, and when it was last seen (a node's last
/// heartbeat while it held some, else when its last one there closed).
/// Settling and reading share them, so both mean the same by online.
const LIVE_CONNECTIONS: &str = "COALESCE(SUM(c.connections) FILTER (WHERE n.seen_at > clock.now_ms - $1), 0)";
const LAST_SEEN: &str = "MAX(CASE WHEN c.connections > 0 THEN n.seen_at ELSE c.closed_at END)";

/// Presence in PostgreSQL, as one node of the cluster sees it.
#[derive(Clone)]
pub struct PostgresPresence {
    pool: PgPool,
    node: Uuid,
    grace: Duration,
}

impl PostgresPresence {
    /// A new node (its own id) on `store`'s database, with `grace` after a last close.
    pub fn new(store: &PostgresStore, grace: Duration) -> Self {
        Self { pool: store.pool().clone(), node: Uuid::now_v7(), grace }
    }

    /// Hands every change any node settles to `notifier`, for this node's
    /// hub. Runs until aborted; reconnects when the connection drops (a
    /// change sent meanwhile is not heard: presence is not durable, and
    /// `GET /api/presence` reads the state).
    pub async fn listen(self, notifier: Arc<dyn PresenceNotifier>) {
        loop {
            match self.subscribe().await {
                Ok(mut listener) => loop {
                    match listener.recv().await {
                        Ok(notification) => match parse_change(notification.payload()) {
                            Ok(change) => notifier.notify(change),
                            Err(err) => tracing::warn!(error = %err, "presence: a change that does not parse"),
                        },
                        Err(err) => {
                            tracing::warn!(error = %err, "presence: the listening connection failed; reconnecting");
                            break;
                        }
                    }
                },
                Err(err) => tracing::warn!(error = %err, "presence: cannot listen for changes; retrying"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn subscribe(&self) -> Result<PgListener, sqlx::Error> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(CHANNEL).await?;
        Ok(listener)
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

#[async_trait]
impl PresenceLedger for PostgresPresence {
    async fn record(&self, held: &[HeldConnections]) -> Result<(), StoreError> {
        // Sorted, so that two nodes creating the same rows take them in one order.
        let mut held: Vec<&HeldConnections> = held.iter().collect();
        held.sort_by_key(|h| h.contractor_id.as_uuid());
        let contractors: Vec<Uuid> = held.iter().map(|h| h.contractor_id.as_uuid()).collect();
        let counts: Vec<i32> = held.iter().map(|h| i32::try_from(h.connections).unwrap_or(i32::MAX)).collect();
        let statement = format!(
            "WITH held AS (SELECT * FROM unnest($2::uuid[], $3::int[]) AS h (contractor_id, connections)),
             known AS (INSERT INTO contractor_presence (contractor_id, online)
                       SELECT contractor_id, false FROM held ON CONFLICT (contractor_id) DO NOTHING)
             INSERT INTO presence_connections (contractor_id, node_id, connections, closed_at)
             SELECT contractor_id, $1, connections, {NOW_MS} FROM held
             ON CONFLICT (contractor_id, node_id)
             DO UPDATE SET connections = EXCLUDED.connections, closed_at = EXCLUDED.closed_at"
        );
        sqlx::query(&statement)
            .bind(self.node)
            .bind(contractors)
            .bind(counts)
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn heartbeat(&self) -> Result<bool, StoreError> {
        let beat = format!(
            "INSERT INTO presence_nodes (node_id, seen_at) VALUES ($1, {NOW_MS})
             ON CONFLICT (node_id) DO UPDATE SET seen_at = EXCLUDED.seen_at
             RETURNING (xmax = 0) AS inserted"
        );
        let inserted: bool =
            sqlx::query_scalar(&beat).bind(self.node).fetch_one(&self.pool).await.map_err(store_error)?;
        let forget = format!("DELETE FROM presence_nodes WHERE seen_at < {NOW_MS} - $1");
        sqlx::query(&forget).bind(millis(FORGET_AFTER)).execute(&self.pool).await.map_err(store_error)?;
        Ok(inserted)
    }

    async fn settle(&self, scope: SettleScope<'_>) -> Result<Vec<PresenceChanged>, StoreError> {
        // A scoped settle reads only its contractors' rows (by primary key).
        let (only_connections, only_told, contractors): (&str, &str, Vec<Uuid>) = match scope {
            SettleScope::Everyone => ("", "", Vec::new()),
            SettleScope::Only([]) => return Ok(Vec::new()),
            SettleScope::Only(these) => (
                "AND c.contractor_id = ANY($3)",
                "AND p.contractor_id = ANY($3)",
                these.iter().map(ContractorId::as_uuid).collect(),
            ),
        };
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(SETTLE_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        // A statement after the lock: it sees every settle committed before.
        let statement = format!(
            "WITH clock AS (SELECT {NOW_MS} AS now_ms),
             seen AS (
                 SELECT c.contractor_id, {LIVE_CONNECTIONS} AS live, {LAST_SEEN} AS last_seen
                 FROM presence_connections c JOIN presence_nodes n ON n.node_id = c.node_id CROSS JOIN clock
                 WHERE true {only_connections}
                 GROUP BY c.contractor_id),
             due AS (
                 SELECT p.contractor_id, s.last_seen,
                        COALESCE(s.live > 0 OR s.last_seen > clock.now_ms - $2, false) AS online
                 FROM contractor_presence p CROSS JOIN clock LEFT JOIN seen s ON s.contractor_id = p.contractor_id
                 WHERE true {only_told}),
             changed AS (
                 UPDATE contractor_presence p SET online = due.online, last_seen = COALESCE(due.last_seen, p.last_seen)
                 FROM due WHERE due.contractor_id = p.contractor_id AND p.online <> due.online
                 RETURNING p.contractor_id, p.online)
             SELECT changed.contractor_id, k.region, changed.online, clock.now_ms,
                    pg_notify('{CHANNEL}', json_build_object('contractorId', changed.contractor_id, 'region', k.region,
                        'online', changed.online, 'atMs', clock.now_ms)::text)
             FROM changed JOIN contractors k ON k.id = changed.contractor_id CROSS JOIN clock"
        );
        let mut query = sqlx::query(&statement).bind(millis(NODE_EXPIRY)).bind(millis(self.grace));
        if !contractors.is_empty() {
            query = query.bind(contractors);
        }
        let rows = query.fetch_all(&mut *tx).await.map_err(store_error)?;
        tx.commit().await.map_err(store_error)?;
        rows.iter()
            .map(|row| {
                let region = row.try_get::<&str, _>("region").map_err(store_error)?;
                let region = Region::new(region).map_err(corrupt)?;
                Ok(PresenceChanged::new(
                    ContractorId::from_uuid(row.try_get("contractor_id").map_err(store_error)?),
                    region,
                    row.try_get("online").map_err(store_error)?,
                    Timestamp::from_unix_millis(row.try_get("now_ms").map_err(store_error)?),
                ))
            })
            .collect()
    }

    async fn presence_of(&self, contractors: &[ContractorId]) -> Result<Vec<Presence>, StoreError> {
        let ids: Vec<Uuid> = contractors.iter().map(ContractorId::as_uuid).collect();
        let statement = format!(
            "WITH clock AS (SELECT {NOW_MS} AS now_ms)
             SELECT p.contractor_id, p.online, p.last_seen, clock.now_ms,
                    {LIVE_CONNECTIONS}::BIGINT AS live, {LAST_SEEN} AS seen
             FROM contractor_presence p CROSS JOIN clock
                  LEFT JOIN presence_connections c ON c.contractor_id = p.contractor_id
                  LEFT JOIN presence_nodes n ON n.node_id = c.node_id
             WHERE p.contractor_id = ANY($2)
             GROUP BY p.contractor_id, p.online, p.last_seen, clock.now_ms"
        );
        let rows = sqlx::query(&statement)
            .bind(millis(NODE_EXPIRY))
            .bind(&ids)
            .fetch_all(&self.pool)
            .await
            .map_err(store_error)?;
        let mut found = std::collections::HashMap::with_capacity(rows.len());
        for row in &rows {
            let id: Uuid = row.try_get("contractor_id").map_err(store_error)?;
            let live: i64 = row.try_get("live").map_err(store_error)?;
            let now: i64 = row.try_get("now_ms").map_err(store_error)?;
            let seen: Option<i64> = row.try_get("seen").map_err(store_error)?;
            let told: Option<i64> = row.try_get("last_seen").map_err(store_error)?;
            let last_seen = if live > 0 { Some(now) } else { seen.max(told) };
            found.insert(
                id,
                Presence {
                    online: row.try_get("online").map_err(store_error)?,
                    connections: u32::try_from(live).unwrap_or(u32::MAX),
                    last_seen_utc: last_seen.map(Timestamp::from_unix_millis),
                },
            );
        }
        Ok(ids.iter().map(|id| found.get(id).copied().unwrap_or_default()).collect())
    }
}

/// A change as [`PostgresPresence::settle`] sends it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SentChange {
    contractor_id: Uuid,
    region: String,
    online: bool,
    at_ms: i64,
}

fn parse_change(payload: &str) -> Result<PresenceChanged, String> {
    let sent: SentChange = serde_json::from_str(payload).map_err(|e| e.to_string())?;
    let region = Region::new(&sent.region).map_err(|e| e.to_string())?;
    Ok(PresenceChanged::new(
        ContractorId::from_uuid(sent.contractor_id),
        region,
        sent.online,
        Timestamp::from_unix_millis(sent.at_ms),
    ))
}
