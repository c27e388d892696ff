//! The tracing subscriber, set up once by `main`.

use tracing_subscriber::{fmt, EnvFilter};

/// Logs to stderr (stdout stays clean for `token`) as text, or as JSON lines when `format` is `json`.
/// `RUST_LOG` filters (default `info`).
pub fn init(format: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let builder = fmt().with_env_filter(filter).with_target(false).with_writer(std::io::stderr);
    let result = if format.eq_ignore_ascii_case("json") { builder.json().try_init() } else { builder.try_init() };
    // A second init (tests) keeps the first subscriber.
    let _ = result;
}
