//! Per-user and per-connection limits of the hub: negotiations per minute
//! (the official client's automatic reconnect restarts at 0 ms after every
//! success, so one page tripping over a bad frame could storm the server),
//! open connections per user, and invocations per second per connection.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Counters shared by every connection of this node.
#[derive(Debug)]
pub struct Limits {
    negotiate_per_minute: u32,
    connections_per_user: usize,
    windows: Mutex<HashMap<String, (Instant, u32)>>,
    open: Mutex<HashMap<String, usize>>,
}

/// One open connection of a user; dropping it gives the slot back.
#[derive(Debug)]
pub struct ConnectionPermit {
    limits: Arc<Limits>,
    subject: String,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.subject) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.subject);
            }
        }
    }
}

impl Limits {
    /// Limits with these bounds.
    pub fn new(negotiate_per_minute: u32, connections_per_user: usize) -> Arc<Self> {
        Arc::new(Self {
            negotiate_per_minute,
            connections_per_user,
            windows: Mutex::new(HashMap::new()),
            open: Mutex::new(HashMap::new()),
        })
    }

    /// Counts a negotiation (or a connection without one) of `subject`;
    /// `false` past the per-minute bound.
    pub fn allow_negotiate(&self, subject: &str) -> bool {
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if windows.len() > 100_000 {
            windows.retain(|_, (start, _)| now.duration_since(*start) < Duration::from_secs(60));
        }
        let (start, count) = windows.entry(subject.to_owned()).or_insert((now, 0));
        if now.duration_since(*start) >= Duration::from_secs(60) {
            *start = now;
            *count = 0;
        }
        *count += 1;
        *count <= self.negotiate_per_minute
    }

    /// A slot for one more connection of `subject`, or `None` at the bound.
    pub fn open_connection(self: &Arc<Self>, subject: &str) -> Option<ConnectionPermit> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(subject.to_owned()).or_insert(0);
        if *count >= self.connections_per_user {
            return None;
        }
        *count += 1;
        Some(ConnectionPermit { limits: self.clone(), subject: subject.to_owned() })
    }
}

/// A token bucket: `rate` per second, bursts up to `burst`.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimiter {
    /// A full bucket.
    pub fn new(rate: u32, burst: u32) -> Self {
        Self {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            last: Instant::now(),
        }
    }

    /// Takes a token; `false` when none is left.
    pub fn allow(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiations_are_counted_per_user_per_minute() {
        let limits = Limits::new(3, 10);
        assert!((0..3).all(|_| limits.allow_negotiate("a")));
        assert!(!limits.allow_negotiate("a"), "the fourth in a minute is refused");
        assert!(limits.allow_negotiate("b"), "another user has their own budget");
    }

    #[test]
    fn connection_slots_come_back_when_a_connection_ends() {
        let limits = Limits::new(60, 2);
        let first = limits.open_connection("a").unwrap();
        let _second = limits.open_connection("a").unwrap();
        assert!(limits.open_connection("a").is_none());
        drop(first);
        assert!(limits.open_connection("a").is_some());
    }

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let mut bucket = RateLimiter::new(1, 3);
        assert!((0..3).all(|_| bucket.allow()));
        assert!(!bucket.allow());
    }
}
