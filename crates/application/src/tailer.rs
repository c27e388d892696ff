//! Following the EventLog: with several nodes on one database, every node
//! delivers to its own hub clients by reading the published events in
//! `sequence` order, from where it last was. The node that publishes and
//! the cross-node bus only say "there is more up to N"; the log is the
//! source, so a lost or late signal delays delivery and loses nothing, and
//! every node delivers in the one publish order.

use std::sync::Arc;
use std::time::Duration;

use smartscheduler_domain::ports::{EventLog, EventQuery};
use smartscheduler_domain::{PublishedEvent, Sequence};
use tokio::sync::Notify;

use crate::publishing::EventHandler;

/// Reads published events after its position and hands them to a handler.
pub struct EventTailer {
    log: Arc<dyn EventLog>,
    handler: Arc<dyn EventHandler>,
    wake: Arc<Notify>,
    poll: Duration,
    batch: u32,
}

impl EventTailer {
    /// Follows `log` into `handler`; wakes on `wake`, and every `poll` anyway.
    pub fn new(log: Arc<dyn EventLog>, handler: Arc<dyn EventHandler>, wake: Arc<Notify>, poll: Duration) -> Self {
        Self { log, handler, wake, poll, batch: 1000 }
    }

    /// Starts after the highest published sequence (history is for joins
    /// with `afterSequence`) and follows forever.
    pub async fn run(self) {
        let mut position = loop {
            match self.highest_published().await {
                Some(highest) => break highest,
                None => {
                    tracing::warn!("tailer: the EventLog is unavailable; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        };
        let mut tick = tokio::time::interval(self.poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = self.wake.notified() => {}
                _ = tick.tick() => {}
            }
            position = self.catch_up(position).await;
        }
    }

    async fn highest_published(&self) -> Option<i64> {
        self.log.highest_published().await.ok().map(|s| s.0)
    }

    /// Delivers everything published after `position`; returns the new one.
    async fn catch_up(&self, mut position: i64) -> i64 {
        loop {
            let page = match self
                .log
                .list(EventQuery { after_sequence: Some(Sequence(position)), status: None, limit: self.batch })
                .await
            {
                Ok(page) => page,
                Err(err) => {
                    tracing::warn!(error = %err, "tailer: could not read the EventLog");
                    return position;
                }
            };
            let full = page.len() as u32 == self.batch;
            for entry in page {
                let Some(sequence) = entry.sequence else { continue };
                let event = PublishedEvent { event: entry.payload.event, sequence };
                if let Err(err) = self.handler.handle(&event).await {
                    tracing::warn!(error = %err, %sequence, "tailer: delivery to local clients failed");
                }
                position = sequence.0;
            }
            if !full {
                return position;
            }
        }
    }
}
