//! What cluster-wide presence costs PostgreSQL: the statements each node
//! runs (`PostgresPresence`), timed against one server with N contractors
//! spread over two nodes. Prints one human line per step and one JSON line;
//! the figures are in `docs/deployment.md`, "Presence in a cluster".
//!
//! ```sh
//! cargo run --release -p smartscheduler-infrastructure --example presence_cost -- postgres://postgres@127.0.0.1/postgres 10000
//! ```
//! It creates and drops a scratch database on that server.

use std::time::{Duration, Instant};

use smartscheduler_domain::ports::PresenceLedger;
use smartscheduler_domain::{ContractorId, HeldConnections, Region, SettleScope};
use smartscheduler_infrastructure::postgres_presence::PostgresPresence;
use smartscheduler_infrastructure::Database;

/// Connections recorded per statement, as a node records them under a connect storm.
const BATCH: usize = 256;
const REGIONS: usize = 50;
const REPEATS: usize = 30;

/// The median wall time of `REPEATS` runs of `step`, in milliseconds.
async fn median_ms<F, Fut>(mut step: F) -> anyhow::Result<f64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut times = Vec::with_capacity(REPEATS);
    for _ in 0..REPEATS {
        let started = Instant::now();
        step().await?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[REPEATS / 2])
}

fn held(contractors: &[(ContractorId, Region)], connections: u32) -> Vec<HeldConnections> {
    contractors
        .iter()
        .map(|(id, region)| HeldConnections { contractor_id: *id, region: region.clone(), connections })
        .collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let target = args.get(1).cloned().unwrap_or_else(|| "postgres://postgres@127.0.0.1/postgres".into());
    let count: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(10_000);

    let name = format!("presence_cost_{}", uuid::Uuid::new_v4().simple());
    let admin = sqlx::PgPool::connect(&target).await?;
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&admin).await?;
    let base = target.rsplit_once('/').map_or(target.as_str(), |(b, _)| b);
    let db = Database::connect(&format!("{base}/{name}")).await?;
    let Database::Postgres(store) = &db else { anyhow::bail!("a postgres:// URL is needed") };

    // Setup (not timed): N contractors over 50 regions.
    let raw = sqlx::PgPool::connect(&format!("{base}/{name}")).await?;
    sqlx::query(
        "INSERT INTO contractors (id, name, region, skills, created_at)
         SELECT gen_random_uuid(), 'C' || i, 'r' || lpad((i % $2)::text, 3, '0'), '[]', 0 FROM generate_series(1, $1) AS i",
    )
    .bind(i64::try_from(count)?)
    .bind(i64::try_from(REGIONS)?)
    .execute(&raw)
    .await?;
    let rows: Vec<(uuid::Uuid, String)> = sqlx::query_as("SELECT id, region FROM contractors").fetch_all(&raw).await?;
    let contractors: Vec<(ContractorId, Region)> = rows
        .into_iter()
        .map(|(id, region)| Ok((ContractorId::from_uuid(id), Region::new(&region)?)))
        .collect::<anyhow::Result<_>>()?;
    let region_000: Vec<ContractorId> =
        contractors.iter().filter(|(_, r)| r.as_str() == "r000").map(|(id, _)| *id).collect();

    // Grace 0: a contractor whose last connection closed is offline at the next settle.
    let nodes = [PostgresPresence::new(store, Duration::ZERO), PostgresPresence::new(store, Duration::ZERO)];
    for node in &nodes {
        node.heartbeat().await?;
    }
    let halves: Vec<&[(ContractorId, Region)]> = contractors.chunks(count.div_ceil(2)).collect();

    // A connect storm: every contractor's first connection, recorded in batches.
    let started = Instant::now();
    for (node, half) in nodes.iter().zip(&halves) {
        for batch in half.chunks(BATCH) {
            node.record(&held(batch, 1)).await?;
        }
    }
    let record_us = started.elapsed().as_secs_f64() * 1e6 / count as f64;
    let started = Instant::now();
    let online = nodes[0].settle(SettleScope::Everyone).await?.len();
    let settle_all_online_ms = started.elapsed().as_secs_f64() * 1000.0;
    anyhow::ensure!(online == count, "{online} of {count} came online");

    // Steady state, nothing changes: what each node pays every second.
    let settle_steady_ms = median_ms(|| async {
        anyhow::ensure!(nodes[1].settle(SettleScope::Everyone).await?.is_empty());
        Ok(())
    })
    .await?;
    // A connection of one contractor changed: the settle the tracker makes at once.
    let one = [contractors[0].0];
    let settle_one_ms = median_ms(|| async {
        anyhow::ensure!(nodes[1].settle(SettleScope::Only(&one)).await?.is_empty());
        Ok(())
    })
    .await?;
    let heartbeat_ms = median_ms(|| async {
        nodes[0].heartbeat().await?;
        Ok(())
    })
    .await?;
    let presence_region_ms = median_ms(|| async {
        nodes[1].presence_of(&region_000).await?;
        Ok(())
    })
    .await?;

    // A disconnect storm: every last connection closes.
    for (node, half) in nodes.iter().zip(&halves) {
        for batch in half.chunks(BATCH) {
            node.record(&held(batch, 0)).await?;
        }
    }
    let started = Instant::now();
    let offline = nodes[1].settle(SettleScope::Everyone).await?.len();
    let settle_all_offline_ms = started.elapsed().as_secs_f64() * 1000.0;
    anyhow::ensure!(offline == count, "{offline} of {count} went offline");

    println!("presence on PostgreSQL, {count} contractors on 2 nodes, {} in a region:", region_000.len());
    println!("  record a connection (batches of {BATCH}): {record_us:.1} us per contractor");
    println!("  settle, all coming online at once: {settle_all_online_ms:.1} ms; all going offline: {settle_all_offline_ms:.1} ms");
    println!("  settle, nothing changing (each node, every second): {settle_steady_ms:.2} ms (median of {REPEATS})");
    println!("  settle of one contractor whose connections changed: {settle_one_ms:.2} ms");
    println!("  heartbeat: {heartbeat_ms:.2} ms; GET /api/presence's read of a region: {presence_region_ms:.2} ms");
    println!(
        "{}",
        serde_json::json!({
            "scenario": "presence_cost", "contractors": count, "nodes": 2, "record_us_per_contractor": record_us,
            "settle_all_online_ms": settle_all_online_ms, "settle_all_offline_ms": settle_all_offline_ms,
            "settle_steady_ms": settle_steady_ms, "settle_one_ms": settle_one_ms, "heartbeat_ms": heartbeat_ms, "presence_of_region_ms": presence_region_ms,
        })
    );
    drop(raw);
    drop(db);
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)")).execute(&admin).await?;
    Ok(())
}
