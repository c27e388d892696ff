//! Span export over OTLP/HTTP, protobuf or JSON (no gRPC), and the W3C
//! `traceparent` a request may carry.
//!
//! tracing-opentelemetry turns every tracing span into an OpenTelemetry span,
//! a tracing parent into the same trace: the relay's `deliver` span, a child
//! of the request's `assign_job` span (see `smartscheduler_application::publishing`),
//! lands in the request's trace with nothing OpenTelemetry-specific outside
//! this module and the request middleware. The SDK's batch processor exports
//! from its own thread, outside any async runtime, hence the blocking client.

use std::time::Duration;

use actix_web::http::header::HeaderMap;
use anyhow::Context as _;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, Tracer};
use opentelemetry_sdk::Resource;
use tracing::Subscriber;
use tracing_opentelemetry::{OpenTelemetryLayer, OpenTelemetrySpanExt};
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use crate::config::{OtlpProtocol, TraceArgs};

/// The OTLP specification's default export timeout.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Spans of background polls, not exported: the relay scans the EventLog
/// every 500 ms and maintenance purges it, each a trace of its own that
/// mostly finds nothing (two idle traces a second). Their failures are logged;
/// what a scan claims is delivered in `deliver` spans, which are exported.
const BACKGROUND_POLLS: [&str; 2] = ["claim_due", "purge"];

/// The running exporter.
pub struct Traces {
    provider: SdkTracerProvider,
}

impl Traces {
    /// Builds the exporter and its batch processor (`OTEL_BSP_*` apply).
    /// Call it before the async runtime starts: the blocking client must
    /// not be built inside one.
    ///
    /// # Errors
    /// An endpoint that is not a URL, or a client that cannot be built.
    pub fn start(args: &TraceArgs) -> anyhow::Result<Self> {
        let client = ReqwestBlocking(
            reqwest::blocking::Client::builder()
                .timeout(EXPORT_TIMEOUT)
                .build()
                .context("the OTLP HTTP client cannot be built")?,
        );
        let protocol = match args.otel_exporter_otlp_protocol {
            OtlpProtocol::HttpProtobuf => Protocol::HttpBinary,
            OtlpProtocol::HttpJson => Protocol::HttpJson,
        };
        let mut builder = SpanExporter::builder().with_http().with_http_client(client).with_protocol(protocol);
        if let Some(url) = args.traces_url() {
            builder = builder.with_endpoint(url);
        }
        let exporter = builder.build().context("the OTLP span exporter cannot be built")?;
        let resource = Resource::builder().with_service_name(args.otel_service_name.clone()).build();
        let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build();
        Ok(Self { provider })
    }

    /// The tracing layer that turns spans (but `BACKGROUND_POLLS`) into exported ones.
    pub fn layer<S>(&self) -> impl Layer<S>
    where
        S: Subscriber + for<'span> LookupSpan<'span>,
    {
        let spans: OpenTelemetryLayer<S, Tracer> =
            tracing_opentelemetry::layer().with_tracer(self.provider.tracer("smartscheduler"));
        spans.with_filter(filter_fn(|meta| !(meta.is_span() && BACKGROUND_POLLS.contains(&meta.name()))))
    }

    /// Exports what is buffered, then stops.
    pub fn shutdown(self) {
        if let Err(err) = self.provider.shutdown() {
            tracing::warn!(error = %err, "could not export the last spans");
        }
    }
}

/// Makes `span` continue the caller's trace when the request carries a W3C
/// `traceparent` (and `tracestate`). Call it before the span is entered.
/// Without the layer (export off), it does nothing.
pub fn continue_callers_trace(span: &tracing::Span, headers: &HeaderMap) {
    if !headers.contains_key("traceparent") {
        return;
    }
    let callers = TraceContextPropagator::new().extract(&ActixHeaders(headers));
    // Refused only when export is off (no layer) or the span is disabled: nothing to continue.
    let _ = span.set_parent(callers);
}

/// actix's header map as the propagator reads headers.
struct ActixHeaders<'a>(&'a HeaderMap);

impl Extractor for ActixHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The workspace's reqwest as the exporter's HTTP client (the exporter's own
/// reqwest feature would bring a second reqwest major version).
#[derive(Debug)]
struct ReqwestBlocking(reqwest::blocking::Client);

#[async_trait::async_trait]
impl HttpClient for ReqwestBlocking {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let (parts, body) = request.into_parts();
        let response =
            self.0.request(parts.method, parts.uri.to_string()).headers(parts.headers).body(body.to_vec()).send()?;
        let mut answer = Response::builder().status(response.status());
        if let Some(headers) = answer.headers_mut() {
            *headers = response.headers().clone();
        }
        Ok(answer.body(response.bytes()?)?)
    }
}
