//! The API's integration tests, one binary: the real service on port 0
//! (in-memory SQLite unless a test says otherwise) driven over HTTP, plus
//! the binary itself as a process. One module per area.

mod acknowledgements;
mod assignments;
mod authorization_matrix;
mod contractor_reads;
mod contractors;
mod delivery;
mod events;
mod hostile_http;
mod idempotency;
mod jobs;
mod negotiate;
mod presence;
mod process;
mod service;
mod support;
mod telemetry;
mod upgrade;
