//! What Long Polling and Server-Sent Events share: the client-to-server
//! half, which is an HTTP `POST [hub]?id=TOKEN` per send, and the registry
//! that finds a connection's session by its token. The registry is owned by
//! the [`crate::HubContext`] and passed to the handlers, nothing global.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use smartscheduler_domain::Principal;
use tokio::sync::mpsc;

/// One Long Polling or SSE connection, as its HTTP requests find it.
pub struct HttpSession {
    /// Who negotiated it: every request for it must be them (or carry no token).
    principal: Principal,
    /// POST bodies to the connection loop.
    inbound: mpsc::Sender<Bytes>,
    /// Whether a POST is being taken now: a second one at once is a 409.
    posting: AtomicBool,
    /// The Long Polling half; absent for Server-Sent Events.
    pub(crate) polls: Option<Arc<super::long_polling::Polls>>,
}

/// Why a POST was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendRefused {
    /// Another POST of this connection is being taken (409).
    Busy,
    /// The connection has ended (404).
    Gone,
}

impl HttpSession {
    /// A session and the connection loop's end of its POSTs.
    pub(crate) fn new(
        principal: Principal,
        polls: Option<Arc<super::long_polling::Polls>>,
    ) -> (Arc<Self>, mpsc::Receiver<Bytes>) {
        // One body at a time: a POST is answered once the loop has it.
        let (inbound, bodies) = mpsc::channel(1);
        (Arc::new(Self { principal, inbound, posting: AtomicBool::new(false), polls }), bodies)
    }

    /// Who negotiated it.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// Claims the right to send: `None` while another POST holds it.
    pub fn start_send(self: &Arc<Self>) -> Option<SendClaim> {
        (!self.posting.swap(true, Ordering::AcqRel)).then(|| SendClaim { session: self.clone() })
    }
}

/// One POST's right to send, released when dropped (also when the client
/// goes away mid-request).
pub struct SendClaim {
    session: Arc<HttpSession>,
}

impl SendClaim {
    /// Hands a POST body to the connection loop, waiting while it is busy
    /// with the previous one.
    ///
    /// # Errors
    /// [`SendRefused::Gone`] when the connection has ended.
    pub async fn send(&self, body: Bytes) -> Result<(), SendRefused> {
        self.session.inbound.send(body).await.map_err(|_| SendRefused::Gone)
    }
}

impl Drop for SendClaim {
    fn drop(&mut self) {
        self.session.posting.store(false, Ordering::Release);
    }
}

/// The Long Polling and SSE connections of this node, by connection token.
#[derive(Default)]
pub struct HttpSessions {
    sessions: Mutex<HashMap<String, Arc<HttpSession>>>,
}

impl HttpSessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<HttpSession>>> {
        // Nothing panics while it is held.
        self.sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The session of `token`, if it lives on this node.
    pub fn get(&self, token: &str) -> Option<Arc<HttpSession>> {
        self.lock().get(token).cloned()
    }

    /// Adds a session under `token`.
    pub(crate) fn insert(&self, token: String, session: Arc<HttpSession>) {
        self.lock().insert(token, session);
    }

    /// Forgets `token`'s session, if it is still `session` (a token is used once,
    /// so it is; the check keeps a late removal harmless).
    pub(crate) fn remove(&self, token: &str, session: &Arc<HttpSession>) {
        let mut sessions = self.lock();
        if sessions.get(token).is_some_and(|known| Arc::ptr_eq(known, session)) {
            sessions.remove(token);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn someone() -> Principal {
        Principal {
            subject: "someone".into(),
            role: smartscheduler_domain::Role::Dispatcher,
            regions: vec![],
            contractor_id: None,
        }
    }

    #[tokio::test]
    async fn a_second_post_while_one_is_taken_is_refused_and_the_first_still_arrives() {
        let (session, mut bodies) = HttpSession::new(someone(), None);
        let first = session.start_send().expect("the first POST may send");
        assert!(session.start_send().is_none(), "a concurrent POST is refused");
        first.send(Bytes::from_static(b"a")).await.unwrap();
        drop(first);
        assert_eq!(bodies.recv().await.unwrap(), Bytes::from_static(b"a"));
        let second = session.start_send().expect("free again once the first is done");
        drop(bodies);
        assert_eq!(second.send(Bytes::from_static(b"b")).await, Err(SendRefused::Gone));
    }

    #[test]
    fn a_session_is_found_by_its_token_until_removed() {
        let sessions = HttpSessions::default();
        let (session, _bodies) = HttpSession::new(someone(), None);
        sessions.insert("t".into(), session.clone());
        assert!(sessions.get("t").is_some());
        let (other, _) = HttpSession::new(someone(), None);
        sessions.remove("t", &other);
        assert!(sessions.get("t").is_some(), "only its own session is removed");
        sessions.remove("t", &session);
        assert!(sessions.get("t").is_none());
    }
}
