//! Persisted assignments per second at the storage port, without HTTP:
//! `commit_assignment` (the assignment, its JobAssigned row and audience, in
//! one transaction) from C concurrent tasks, then the relay's work on those
//! rows (`claim` and `mark_published` in batches of 256), on SQLite or
//! PostgreSQL. Prints one human line and one JSON line.
//!
//! ```sh
//! cargo run --release -p smartscheduler-infrastructure --example commit_rate -- sqlite 20000 64
//! cargo run --release -p smartscheduler-infrastructure --example commit_rate -- postgres://postgres@127.0.0.1/postgres 20000 64
//! ```
//! With `postgres://…` it creates and drops a scratch database on that server.

use std::sync::Arc;
use std::time::Instant;

use smartscheduler_domain::ports::{Fence, PublishedRow};
use smartscheduler_domain::{
    AssignmentSource, Contractor, DomainEvent, DurationMinutes, Job, JobType, NewAssignment, PersonName, Region,
    TimeRange, Timestamp,
};
use smartscheduler_infrastructure::Database;
use tokio::sync::Semaphore;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let target = args.get(1).cloned().unwrap_or_else(|| "sqlite".into());
    let count: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(20_000);
    let concurrency: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(64);

    let dir = tempfile::tempdir()?;
    let (url, scratch) = if target == "sqlite" {
        (format!("sqlite://{}/rate.db", dir.path().display()), None)
    } else {
        let name = format!("commit_rate_{}", uuid::Uuid::new_v4().simple());
        let admin = sqlx::PgPool::connect(&target).await?;
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&admin).await?;
        let base = target.rsplit_once('/').map_or(target.as_str(), |(b, _)| b);
        (format!("{base}/{name}"), Some((admin, name)))
    };
    let db = Database::connect(&url).await?;
    let (jobs, contractors, store, log) = (db.jobs(), db.contractors(), db.assignments(), db.event_log());

    // Setup (not timed): one job and one contractor per assignment.
    let region = Region::new("north")?;
    let now = Timestamp::now();
    let mut plans = Vec::with_capacity(count);
    for i in 0..count {
        let job =
            Job::create(JobType::new("Flooring")?, None, region.clone(), DurationMinutes::new(60)?, None, None, now);
        let contractor = Contractor::create(PersonName::new(&format!("C{i}"))?, region.clone(), vec![], now)?;
        jobs.insert(&job).await?;
        contractors.insert(&contractor).await?;
        let mut assigned = job.clone();
        let range = TimeRange::new(now, now.plus_millis(3_600_000))?;
        let request =
            NewAssignment { contractor_id: contractor.id(), range, source: AssignmentSource::Manual, audit_id: None };
        let (assignment, event) = assigned.assign(&contractor, request, now)?;
        plans.push((assigned, assignment, DomainEvent::from(event)));
    }

    let gate = Arc::new(Semaphore::new(concurrency));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(count);
    let mut events = Vec::with_capacity(count);
    for (job, assignment, event) in plans {
        events.push(event.clone());
        let store = Arc::clone(&store);
        let permit = Arc::clone(&gate).acquire_owned().await?;
        tasks.push(tokio::spawn(async move {
            let result = store.commit_assignment(&job, &assignment, &event, None).await;
            drop(permit);
            result
        }));
    }
    for task in tasks {
        task.await?.map_err(|e| anyhow::anyhow!("commit failed: {e}"))?;
    }
    let committed = started.elapsed();

    let relay_started = Instant::now();
    for chunk in events.chunks(256) {
        let claimed = log.claim(chunk.to_vec(), Fence::Unfenced).await?;
        let rows = claimed
            .into_iter()
            .map(|c| PublishedRow { event_id: c.event.event_id(), sequence: c.sequence, groups: c.event.audience() })
            .collect();
        log.mark_published(rows, Timestamp::now(), Fence::Unfenced).await?;
    }
    let relayed = relay_started.elapsed();

    let engine = if target == "sqlite" { "sqlite" } else { "postgres" };
    let commit_rate = count as f64 / committed.as_secs_f64();
    let relay_rate = count as f64 / relayed.as_secs_f64();
    println!(
        "commit_rate {engine}: {count} assignments committed in {:.2} s = {commit_rate:.0}/s at concurrency \
         {concurrency}; relay claim+mark_published {relay_rate:.0} events/s",
        committed.as_secs_f64()
    );
    println!(
        "{}",
        serde_json::json!({
            "scenario": "commit_rate", "engine": engine, "count": count, "concurrency": concurrency,
            "commits_per_second": commit_rate.round(), "relay_events_per_second": relay_rate.round(),
        })
    );
    drop(db);
    if let Some((admin, name)) = scratch {
        sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)")).execute(&admin).await?;
    }
    Ok(())
}
