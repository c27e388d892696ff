//! The `smartscheduler` service: configuration, the HTTP API and the
//! composition of adapters behind the ports.
//!
//! What it is not: no business rule lives here. Handlers parse, call a use
//! case, and map its typed error to problem+json.
//!
//! # Layout
//! - [`config`]: the command line and environment (clap), read once here.
//! - [`app`]: `Application::build / port() / run_until_stopped()`, used by
//!   `main` and the tests alike.
//! - [`startup`]: the composition root, one module per phase (auth,
//!   storage, delivery, server).
//! - [`http`]: routes, the bearer-token extractor and problem+json errors.
//! - [`telemetry`]: the tracing subscriber: logs, and spans over OTLP when asked.

pub mod app;
pub mod config;
pub mod http;
pub mod openapi;
pub mod startup;
pub mod state;
pub mod telemetry;

pub use app::Application;
pub use config::{Cli, Command, ServeConfig, TokenArgs};
