//! Long Polling, as ASP.NET Core serves it: `GET [hub]?id=TOKEN` takes
//! what the server has queued, `POST` carries what the client sends
//! ([`super::http_session`]), `DELETE` ends the connection. The first poll
//! is answered at once (it confirms the connection); later ones wait until
//! records are queued or the poll timeout passes (then an empty `200`). A
//! new poll ends a pending one with `204`, which tells a client its
//! connection is over. With no socket to watch, a connection whose client
//! stops polling for the disconnect timeout is closed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, Notify};

use super::http_session::{HttpSession, HttpSessions};
use super::{Incoming, Lost, Transport};
use crate::protocol::Encoded;

/// What a poll is answered with.
#[derive(Debug, PartialEq, Eq)]
pub enum PollAnswer {
    /// `200` with the records queued (binary: MessagePack).
    Records {
        /// Every record queued, in order.
        body: Bytes,
        /// Whether they are MessagePack.
        binary: bool,
    },
    /// `200` with an empty body: nothing within the poll timeout; poll again.
    Nothing,
    /// `204`: the connection is over (closed, deleted, or this poll was
    /// replaced by a newer one).
    Over,
}

#[derive(Default)]
struct PollState {
    queued: Vec<Bytes>,
    queued_bytes: usize,
    binary: bool,
    /// The connection loop has ended: what is queued is all there will be.
    ended: bool,
    /// The client sent `DELETE`.
    deleted: bool,
    /// The pending poll's number, if one is waiting.
    pending: Option<u64>,
    polls_seen: u64,
    /// Since when no poll has been waiting (`None` while one is).
    idle_since: Option<Instant>,
}

/// The server-to-client half of one Long Polling connection, shared by its
/// polls and its connection loop.
pub struct Polls {
    state: Mutex<PollState>,
    /// Wakes a waiting poll (records, end, a newer poll) and the loop (room, a poll's end).
    changed: Notify,
    poll_timeout: Duration,
    disconnect_timeout: Duration,
    /// Records queued past which the loop waits for a poll to take them.
    max_queued_records: usize,
    /// Bytes queued past which the loop waits for a poll to take them.
    max_queued_bytes: usize,
}

/// Ends a poll's wait in the state, however the poll ends (also when its
/// client drops the request).
struct PendingPoll<'a> {
    polls: &'a Polls,
    number: u64,
}

impl Drop for PendingPoll<'_> {
    fn drop(&mut self) {
        let mut state = self.polls.lock();
        if state.pending == Some(self.number) {
            state.pending = None;
            state.idle_since = Some(Instant::now());
        }
        drop(state);
        self.polls.changed.notify_waiters();
    }
}

impl Polls {
    /// The polls of a new connection, counted as polled just now (its first
    /// poll is answered at once). What waits for a poll is bounded as a
    /// connection's queue is (in records and in bytes): past that the
    /// connection's writes wait, its queue in the hub fills, and it is
    /// closed as a slow client.
    pub fn new(
        poll_timeout: Duration,
        disconnect_timeout: Duration,
        max_queued_records: usize,
        max_queued_bytes: usize,
    ) -> Arc<Self> {
        let state = PollState { idle_since: Some(Instant::now()), ..PollState::default() };
        Arc::new(Self {
            state: Mutex::new(state),
            changed: Notify::new(),
            poll_timeout,
            disconnect_timeout,
            max_queued_records,
            max_queued_bytes,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PollState> {
        // Nothing panics while it is held.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// One poll after the first: the records queued, at once or as soon as
    /// there are some, or nothing after the poll timeout.
    pub async fn poll(&self) -> PollAnswer {
        let number = {
            let mut state = self.lock();
            state.polls_seen += 1;
            state.pending = Some(state.polls_seen);
            state.idle_since = None;
            state.polls_seen
        };
        // A poll that was waiting sees it is replaced.
        self.changed.notify_waiters();
        let _pending = PendingPoll { polls: self, number };
        let deadline = tokio::time::sleep(self.poll_timeout);
        tokio::pin!(deadline);
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut state = self.lock();
                if state.pending != Some(number) || state.deleted {
                    return PollAnswer::Over;
                }
                if !state.queued.is_empty() {
                    let mut body = BytesMut::with_capacity(state.queued_bytes);
                    for record in state.queued.drain(..) {
                        body.extend_from_slice(&record);
                    }
                    state.queued_bytes = 0;
                    let binary = state.binary;
                    drop(state);
                    self.changed.notify_waiters();
                    return PollAnswer::Records { body: body.freeze(), binary };
                }
                if state.ended {
                    return PollAnswer::Over;
                }
            }
            tokio::select! {
                () = &mut changed => {}
                () = &mut deadline => return PollAnswer::Nothing,
            }
        }
    }

    /// The client's `DELETE`: the connection ends, and a waiting poll gets `204`.
    pub fn delete(&self) {
        self.lock().deleted = true;
        self.changed.notify_waiters();
    }

    /// Whether the client is gone: it said `DELETE`, or no poll has come
    /// for the disconnect timeout. Else when to look again (`None`: when
    /// something changes).
    fn client_gone(&self) -> Result<bool, Option<Instant>> {
        let state = self.lock();
        if state.deleted {
            return Ok(true);
        }
        match state.idle_since {
            Some(since) if since.elapsed() >= self.disconnect_timeout => Ok(true),
            Some(since) => Err(Some(since + self.disconnect_timeout)),
            None => Err(None),
        }
    }

    /// Waits until the client is gone (see [`Self::client_gone`]).
    async fn until_client_gone(&self) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            match self.client_gone() {
                Ok(_) => return,
                Err(Some(at)) => {
                    tokio::select! {
                        () = &mut changed => {}
                        () = tokio::time::sleep_until(at) => {}
                    }
                }
                Err(None) => changed.await,
            }
        }
    }
}

/// A hub connection's [`Transport`] over Long Polling.
pub struct LongPolling {
    polls: Arc<Polls>,
    bodies: mpsc::Receiver<Bytes>,
    /// To take its session out of the registry when the connection is over.
    sessions: Arc<HttpSessions>,
    session: Arc<HttpSession>,
    token: String,
}

impl LongPolling {
    /// The transport of `session` (registered under `token`), reading its POSTs from `bodies`.
    pub(crate) fn new(
        session: Arc<HttpSession>,
        bodies: mpsc::Receiver<Bytes>,
        sessions: Arc<HttpSessions>,
        token: String,
    ) -> Self {
        let polls = session.polls.clone().expect("a Long Polling session has polls");
        Self { polls, bodies, sessions, session, token }
    }
}

impl Transport for LongPolling {
    fn name(&self) -> &'static str {
        "LongPolling"
    }

    fn carries_binary(&self) -> bool {
        true
    }

    async fn recv(&mut self) -> Incoming {
        tokio::select! {
            body = self.bodies.recv() => match body {
                Some(body) => Incoming::Data(body),
                None => Incoming::Closed,
            },
            () = self.polls.until_client_gone() => Incoming::Closed,
        }
    }

    /// Queues the records for the next poll, first waiting (as a socket
    /// write would) while more than the bound is queued and not polled.
    async fn send(&mut self, records: impl IntoIterator<Item = Encoded>) -> Result<(), Lost> {
        loop {
            let changed = self.polls.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut state = self.polls.lock();
                if state.deleted {
                    return Err(Lost);
                }
                let full = state.queued_bytes >= self.polls.max_queued_bytes
                    || state.queued.len() >= self.polls.max_queued_records;
                if !full {
                    for record in records {
                        state.binary = matches!(record, Encoded::Binary(_));
                        state.queued_bytes += record.len();
                        state.queued.push(record.bytes().clone());
                    }
                    break;
                }
            }
            changed.await;
        }
        self.polls.changed.notify_waiters();
        Ok(())
    }

    /// Queues `last` for the next poll, after which polls get `204`. The
    /// session stays findable until its client has polled it empty or gone
    /// away.
    async fn close(self, last: Option<Encoded>) {
        {
            let mut state = self.polls.lock();
            if let Some(last) = last {
                state.binary = matches!(last, Encoded::Binary(_));
                state.queued_bytes += last.len();
                state.queued.push(last.bytes().clone());
            }
            state.ended = true;
        }
        self.polls.changed.notify_waiters();
        let Self { polls, sessions, session, token, .. } = self;
        actix_rt::spawn(async move {
            polls.until_client_gone().await;
            sessions.remove(&token, &session);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn polls() -> Arc<Polls> {
        Polls::new(Duration::from_secs(90), Duration::from_secs(15), 64, 1024)
    }

    fn queue(polls: &Polls, record: &'static str) {
        let mut state = polls.lock();
        state.queued_bytes += record.len();
        state.queued.push(Bytes::from_static(record.as_bytes()));
        drop(state);
        polls.changed.notify_waiters();
    }

    #[tokio::test(start_paused = true)]
    async fn a_poll_takes_everything_queued_in_order() {
        let polls = polls();
        queue(&polls, "a\u{1e}");
        queue(&polls, "b\u{1e}");
        let answer = polls.poll().await;
        assert_eq!(answer, PollAnswer::Records { body: Bytes::from_static(b"a\x1eb\x1e"), binary: false });
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_poll_gets_what_is_queued_later_and_an_idle_one_gets_nothing_after_the_timeout() {
        let polls = polls();
        let waiting = tokio::spawn({
            let polls = polls.clone();
            async move { polls.poll().await }
        });
        tokio::task::yield_now().await;
        queue(&polls, "late\u{1e}");
        assert_eq!(
            waiting.await.unwrap(),
            PollAnswer::Records { body: Bytes::from_static(b"late\x1e"), binary: false }
        );
        assert_eq!(polls.poll().await, PollAnswer::Nothing, "nothing queued within the poll timeout");
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_poll_ends_the_waiting_one_with_204_and_delete_ends_the_next() {
        let polls = polls();
        let first = tokio::spawn({
            let polls = polls.clone();
            async move { polls.poll().await }
        });
        tokio::task::yield_now().await;
        let second = tokio::spawn({
            let polls = polls.clone();
            async move { polls.poll().await }
        });
        assert_eq!(first.await.unwrap(), PollAnswer::Over);
        tokio::task::yield_now().await;
        polls.delete();
        assert_eq!(second.await.unwrap(), PollAnswer::Over);
        assert_eq!(polls.client_gone(), Ok(true));
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_stops_polling_is_gone_after_the_disconnect_timeout_and_not_while_it_polls() {
        let polls = polls();
        assert!(matches!(polls.client_gone(), Err(Some(_))), "just polled");
        let waiting = tokio::spawn({
            let polls = polls.clone();
            async move { polls.poll().await }
        });
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(polls.client_gone(), Err(None), "a poll is waiting: not gone, however long");
        assert_eq!(waiting.await.unwrap(), PollAnswer::Nothing);
        tokio::time::sleep(Duration::from_secs(14)).await;
        assert!(polls.client_gone().is_err());
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(polls.client_gone(), Ok(true));
    }
}
