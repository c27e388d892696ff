//! The cross-node bus on Redis pub/sub. The publishing node announces "the
//! log is published up to N"; every node's subscriber wakes its tailer,
//! which reads the events from the EventLog. Redis carries signals, not the
//! record: a message lost while Redis is down is made up by the tailer's
//! poll and by a catch-up when the subscription comes back, so an outage
//! delays other nodes and loses nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{watch, Notify};

/// The channel name.
pub const CHANNEL: &str = "smartscheduler:published";

/// A Redis connection for announcing and hearing published positions.
#[derive(Clone)]
pub struct RedisBus {
    client: redis::Client,
    up: Arc<AtomicBool>,
}

impl std::fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBus").field("up", &self.is_up()).finish()
    }
}

impl RedisBus {
    /// A bus on `url` (`redis://…`); it connects in the background.
    ///
    /// # Errors
    /// When the URL is not a Redis URL.
    pub fn new(url: &str) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| format!("SMARTSCHEDULER_REDIS_URL is not usable: {e}"))?;
        Ok(Self { client, up: Arc::new(AtomicBool::new(false)) })
    }

    /// Whether the subscription is connected (for `/health/ready`).
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Publishes every new value of `published` (runs forever). A failed
    /// publish is logged; the other nodes' polls make up for it.
    pub async fn announce(self, mut published: watch::Receiver<i64>) {
        let mut conn = None;
        while published.changed().await.is_ok() {
            let upto = *published.borrow_and_update();
            if conn.is_none() {
                conn = self.client.get_multiplexed_async_connection().await.ok();
            }
            let Some(c) = conn.as_mut() else {
                tracing::debug!(upto, "redis down: not announced");
                continue;
            };
            let sent: redis::RedisResult<i64> = redis::cmd("PUBLISH").arg(CHANNEL).arg(upto).query_async(c).await;
            if let Err(err) = sent {
                tracing::warn!(error = %err, "redis: could not announce published events");
                conn = None;
            }
        }
    }

    /// Subscribes and wakes `wake` on every announcement, and once after
    /// each (re)connection so the tailer catches up on what it missed. Runs
    /// forever, reconnecting with backoff.
    pub async fn listen(self, wake: Arc<Notify>) {
        let mut backoff = Duration::from_millis(200);
        loop {
            match self.client.get_async_pubsub().await {
                Ok(mut pubsub) => match pubsub.subscribe(CHANNEL).await {
                    Ok(()) => {
                        tracing::info!("redis: subscribed to {CHANNEL}");
                        self.up.store(true, Ordering::Relaxed);
                        backoff = Duration::from_millis(200);
                        wake.notify_one();
                        let mut messages = pubsub.on_message();
                        while messages.next().await.is_some() {
                            wake.notify_one();
                        }
                        tracing::warn!(
                            "redis: subscription lost; other nodes' events arrive by polling until it is back"
                        );
                    }
                    Err(err) => tracing::warn!(error = %err, "redis: subscribe failed"),
                },
                Err(err) => tracing::debug!(error = %err, "redis: not reachable"),
            }
            self.up.store(false, Ordering::Relaxed);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}
