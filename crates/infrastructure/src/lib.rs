//! Adapters behind the domain's ports: sqlx storage (SQLite and PostgreSQL,
//! with the same semantics) and JWT bearer tokens.
//!
//! What it is not: no HTTP and no use-case logic. Driver errors are mapped to
//! the domain's `StoreError` here and never leave the crate.
//!
//! # Layout
//! - [`sql`]: every storage port, written once over a SQL backend.
//! - [`sqlite`]: the SQLite backend (embedded default; group commit).
//! - [`postgres`]: the PostgreSQL backend (several nodes; row locks, fenced claims).
//! - [`tokens`]: HS256 JWTs and the generated-secret file.
//! - [`database`]: picks the adapter from a URL and hands out the ports.
//! - [`used_connection_tokens`]: hub connection tokens already used, per node
//!   or shared by a cluster.

pub mod connection_tokens;
pub mod database;
mod errors;
pub mod postgres;
pub mod postgres_lease;
pub mod postgres_presence;
pub mod redis_bus;
pub mod sql;
pub mod sqlite;
pub mod sqlite_on_thread;
pub mod tokens;
pub mod used_connection_tokens;

pub use connection_tokens::SignedConnectionTokens;
pub use database::{Database, DatabaseError};
pub use tokens::{Claims, JwtTokens};
