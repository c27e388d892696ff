//! The adapter from published events to hub groups: registered on the
//! in-process publisher, it serializes each event ONCE into a shared frame
//! and queues it to the event's audience.

use async_trait::async_trait;
use smartscheduler_application::{EventHandler, HandlerError};
use smartscheduler_domain::PublishedEvent;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::hub::{Frame, HubHandle};
use crate::protocol;

/// Sends published events to their groups on this node.
pub struct HubDelivery {
    hub: HubHandle,
}

impl HubDelivery {
    /// Delivery through `hub`.
    pub fn new(hub: HubHandle) -> Self {
        Self { hub }
    }
}

#[async_trait]
impl EventHandler for HubDelivery {
    fn name(&self) -> &str {
        "hub"
    }

    async fn handle(&self, event: &PublishedEvent) -> Result<(), HandlerError> {
        let text = protocol::invocation(event.event.event_type().as_str(), event);
        let frame =
            Frame { text: Utf8Bytes::from(text), sequence: event.sequence.0, groups: event.event.audience().into() };
        self.hub.broadcast(frame).await.map_err(|e| HandlerError(e.to_string()))
    }
}
