//! Housekeeping: events past their retention and idempotency keys past
//! their 24 hours are deleted, at start and then every `every`.

use std::sync::Arc;
use std::time::Duration;

use smartscheduler_domain::ports::{AssignmentStore, EventLog};
use smartscheduler_domain::{Chain, Timestamp};

use smartscheduler_domain::ports::IDEMPOTENCY_WINDOW_MILLIS;

/// Runs forever (spawn it; abort it at shutdown).
pub async fn run_retention(
    log: Arc<dyn EventLog>,
    store: Arc<dyn AssignmentStore>,
    keep_events: Duration,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = Timestamp::now();
        match log.purge(now.plus_millis(-(keep_events.as_millis() as i64))).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "purged events past their retention"),
            Err(err) => tracing::warn!(error = %Chain(&err), "could not purge old events"),
        }
        match store.purge_idempotency(now.plus_millis(-IDEMPOTENCY_WINDOW_MILLIS)).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "purged expired idempotency keys"),
            Err(err) => tracing::warn!(error = %Chain(&err), "could not purge idempotency keys"),
        }
    }
}
