//! What one read costs the process at a steady rate, through sqlx's SQLite
//! driver (each connection on a worker thread of its own: a command there
//! and the answer back) and through the opt-in reads on the calling thread
//! (`SMARTSCHEDULER_SQLITE_READS=on-thread`, rusqlite: no hop). The read is
//! the one `GET /api/jobs/{id}` makes, through the storage port, on a file
//! database with the service's settings. Paced at 400 reads/s, as `ss-bench cost` paces
//! requests; CPU from `/proc/self/stat`, context switches from every
//! thread's `/proc/self/task/*/status`. docs/benchmarks.md, "Cost per
//! operation", has the figures and what they say about issue 18's goals.
//!
//! ```sh
//! cargo run --release -p smartscheduler-infrastructure --example sqlite_hops -- 2000
//! ```

use std::time::Duration;

use smartscheduler_domain::{DurationMinutes, Job, JobId, JobType, Region, Timestamp};
use smartscheduler_infrastructure::database::SqliteReads;
use smartscheduler_infrastructure::Database;

const RATE_PER_S: u64 = 400;

/// The process's CPU time (user + system), in microseconds.
fn cpu_us() -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("").split_whitespace().collect();
    // utime and stime are fields 14 and 15, i.e. 11 and 12 after the command name.
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    Ok(ticks * 1_000_000 / 100)
}

/// Context switches of every thread of the process so far.
fn switches() -> anyhow::Result<u64> {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task")? {
        let status = std::fs::read_to_string(task?.path().join("status")).unwrap_or_default();
        total += status
            .lines()
            .filter(|l| l.contains("ctxt_switches"))
            .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
            .sum::<u64>();
    }
    Ok(total)
}

/// Runs `read` `count` times at [`RATE_PER_S`]; CPU µs and switches per read.
async fn paced<F, Fut>(count: u32, mut read: F) -> anyhow::Result<(f64, f64)>
where
    F: FnMut(u32) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE_PER_S));
    for i in 0..count / 10 {
        tick.tick().await;
        read(i).await?;
    }
    let (cpu, switched) = (cpu_us()?, switches()?);
    for i in 0..count {
        tick.tick().await;
        read(i).await?;
    }
    let per = f64::from(count);
    Ok(((cpu_us()? - cpu) as f64 / per, (switches()? - switched) as f64 / per))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let count: u32 = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(2000);
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("hops.db");
    let db = Database::connect(&format!("sqlite://{}", path.display())).await?;
    let jobs = db.jobs();
    let mut ids: Vec<JobId> = Vec::new();
    for _ in 0..100 {
        let job = Job::create(
            JobType::new("Flooring")?,
            None,
            Region::new("north")?,
            DurationMinutes::new(60)?,
            None,
            None,
            Timestamp::now(),
        );
        jobs.insert(&job).await?;
        ids.push(job.id());
    }

    // The pacing alone (a timer wake-up and nothing else), to subtract.
    let pacing = paced(count, |_| async { Ok(()) }).await?;

    // The same read through each setting's storage port.
    let on_thread = Database::connect_with(&format!("sqlite://{}", path.display()), SqliteReads::OnThread).await?;
    let mut measured = Vec::new();
    for reader in [jobs, on_thread.jobs()] {
        measured.push(
            paced(count, |i| {
                let (jobs, id) = (reader.clone(), ids[i as usize % ids.len()]);
                async move {
                    anyhow::ensure!(jobs.get(id).await?.is_some());
                    Ok(())
                }
            })
            .await?,
        );
    }
    let (through_sqlx, on_this_thread) = (measured[0], measured[1]);

    println!("one job read at {RATE_PER_S}/s, {count} reads each (per read, the pacing's own cost subtracted):");
    println!("  pacing alone: {:.1} us of CPU, {:.1} context switches per tick", pacing.0, pacing.1);
    for (name, (cpu, switched)) in [("sqlx (worker thread)", through_sqlx), ("on-thread (rusqlite)", on_this_thread)] {
        println!("  {name}: {:.1} us of CPU, {:.1} context switches", cpu - pacing.0, switched - pacing.1);
    }
    println!(
        "{}",
        serde_json::json!({
            "scenario": "sqlite_hops", "rate": RATE_PER_S, "count": count,
            "pacing_cpu_us_per_tick": pacing.0, "pacing_switches_per_tick": pacing.1,
            "sqlx_cpu_us_per_read": through_sqlx.0, "sqlx_switches_per_read": through_sqlx.1,
            "on_thread_cpu_us_per_read": on_this_thread.0, "on_thread_switches_per_read": on_this_thread.1,
        })
    );
    Ok(())
}
