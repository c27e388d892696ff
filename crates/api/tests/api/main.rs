//! The API's integration tests, one binary: the real service on port 0
//! (in-memory SQLite unless a test says otherwise) driven over HTTP, plus
//! the binary itself as a process. One module per area.

mod authorization_matrix;
mod contractor_reads;
mod delivery;
mod hostile_http;
mod http_api;
mod negotiate;
mod process;
mod support;
mod upgrade;
