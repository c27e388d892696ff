//! The tracing subscriber, set up once by `main`: logs always, and spans
//! exported over OTLP when the OpenTelemetry variables ask for it
//! ([`otlp`]; unset, its layer is not even installed).

pub mod otlp;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter};

use crate::config::TraceArgs;

/// What `init` set up that must be stopped cleanly: the span exporter.
#[must_use = "call shutdown() at exit, or buffered spans are lost"]
pub struct Telemetry {
    traces: Option<otlp::Traces>,
}

impl Telemetry {
    /// Exports the spans still buffered and stops the exporter (blocks up to
    /// its timeout). Call it outside the async runtime, once the server has stopped.
    pub fn shutdown(self) {
        if let Some(traces) = self.traces {
            traces.shutdown();
        }
    }
}

/// Logs to stderr (stdout stays clean for `token`) as text, or as JSON lines
/// when `format` is `json`; with `traces` enabled, spans are exported too.
/// `RUST_LOG` filters both (default `info`).
///
/// # Errors
/// When the span exporter cannot be built (an invalid endpoint).
pub fn init(format: &str, traces: Option<&TraceArgs>) -> anyhow::Result<Telemetry> {
    let traces = traces.filter(|t| t.enabled()).map(otlp::Traces::start).transpose()?;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,opentelemetry=warn"));
    let registry = tracing_subscriber::registry().with(filter).with(traces.as_ref().map(otlp::Traces::layer));
    let logs = fmt::layer().with_target(false).with_writer(std::io::stderr);
    let result = if format.eq_ignore_ascii_case("json") {
        registry.with(logs.json()).try_init()
    } else {
        registry.with(logs).try_init()
    };
    // A second init (tests) keeps the first subscriber.
    let _ = result;
    Ok(Telemetry { traces })
}
