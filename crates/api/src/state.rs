//! What the API's handlers share: one application state, built once by the
//! composition root and given to actix as one app data value. (The hub's
//! own handlers, in the realtime crate, take its `HubContext` directly.)

use std::sync::Arc;

use actix_web::web;
use smartscheduler_application::{AssignJob, Catalog, TokenVerifier};
use smartscheduler_domain::ports::EventLog;
use smartscheduler_infrastructure::redis_bus::RedisBus;
use smartscheduler_infrastructure::Database;
use smartscheduler_realtime::HubContext;

/// The adapters and use cases behind the API's routes.
pub struct AppState {
    /// Contractors, jobs and their reads.
    pub catalog: Catalog,
    /// The assignment use case.
    pub assign: AssignJob,
    /// The EventLog, for `/api/events` and the backlog metrics.
    pub event_log: Arc<dyn EventLog>,
    /// Checks bearer tokens.
    pub verifier: Arc<dyn TokenVerifier>,
    /// The database, for readiness.
    pub database: Database,
    /// Redis, with several nodes, for readiness.
    pub bus: Option<RedisBus>,
    /// The hub, for its metrics.
    pub hub: HubContext,
}

/// How handlers take it.
pub type State = web::Data<AppState>;
