//! Presence changes to the hub: `PresenceChanged` goes to the region's
//! dispatchers as a hub message that is not an event (no sequence, no
//! replay; see [`crate::hub::Frame::message`]).

use std::sync::Arc;

use smartscheduler_domain::ports::PresenceNotifier;
use smartscheduler_domain::PresenceChanged;

use crate::hub::{Frame, HubHandle};

/// Sends presence changes to the hub's groups on this node.
pub struct HubPresence {
    hub: HubHandle,
}

impl HubPresence {
    /// Sends through `hub`.
    pub fn new(hub: HubHandle) -> Self {
        Self { hub }
    }
}

impl PresenceNotifier for HubPresence {
    fn notify(&self, change: PresenceChanged) {
        let frame = Arc::new(Frame::message("PresenceChanged", &change, change.audience().into()));
        let hub = self.hub.clone();
        // Called from a connection's end (a drop): hand the send to a task.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = hub.broadcast(frame).await;
            });
        }
    }
}
