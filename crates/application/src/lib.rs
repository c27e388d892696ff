//! SmartScheduler's use cases, the in-process publisher with handler
//! registration, and the outbox relay that delivers committed events.
//!
//! What it is not: it holds no adapter. It knows the domain and its ports
//! only; the api crate wires real adapters in.
//!
//! # Layout
//! - [`assign_job`]: the assign-a-job use case.
//! - [`catalog`]: contractors and jobs (create, get, list), with access rules.
//! - [`publishing`]: handler registration, the publisher and the outbox relay.
//! - [`auth`]: the token verifier port.
//! - [`tailer`]: follows the EventLog into local delivery (several nodes).
//! - [`maintenance`]: retention of events and idempotency keys.

pub mod acknowledgements;
pub mod assign_job;
pub mod auth;
pub mod catalog;
pub mod maintenance;
pub mod presence;
pub mod publishing;
pub mod tailer;

pub use acknowledgements::{AcknowledgeAssignment, AcknowledgeError, AcknowledgedAt};
pub use assign_job::{AssignJob, AssignJobError, AssignJobRequest, Assigned, IdempotencyRequest};
pub use auth::{AuthError, ConnectionTicket, ConnectionTokens, TokenVerifier, MAX_CONNECTION_TOKEN_LEN};
pub use catalog::{Catalog, CatalogError, CreateContractorRequest, CreateJobRequest};
pub use presence::{MemoryPresenceLedger, PresenceGuard, PresenceTracker};
pub use publishing::{
    outbox, EventHandler, HandlerError, HandlerRegistry, InProcessPublisher, OutboxRelay, RelayConfig,
};
