//! The infrastructure's integration tests, one binary: the storage adapters
//! through the domain's ports (SQLite files, PostgreSQL), and the token
//! checks (JWKS, property tests). One module per area.

mod fuzz_tokens;
mod jwks;
mod postgres_presence;
mod postgres_store;
mod sqlite_on_thread_store;
mod sqlite_store;
mod support;
