//! Trace export: the real binary, pointed by the standard OTEL_* variables at
//! a tiny OTLP/HTTP receiver inside the test, exports its spans as JSON.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::process::{contractor_and_job, start_with, token, Server};

/// An OTLP/HTTP receiver on 127.0.0.1:0: every `POST /v1/traces` body, parsed.
struct Receiver {
    endpoint: String,
    exports: mpsc::UnboundedReceiver<Value>,
    /// Every span received so far, flattened with its resource's attributes.
    spans: Vec<Span>,
}

/// One exported span, as the assertions need it.
#[derive(Debug, Clone)]
struct Span {
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: Value,
    service_name: Option<String>,
}

impl Span {
    fn attribute(&self, key: &str) -> Option<&str> {
        attribute(&self.attributes, key)
    }
}

fn attribute<'a>(attributes: &'a Value, key: &str) -> Option<&'a str> {
    attributes.as_array()?.iter().find(|a| a["key"] == key)?["value"]["stringValue"].as_str()
}

impl Receiver {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let (tx, exports) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(serve_connection(socket, tx.clone()));
            }
        });
        Self { endpoint, exports, spans: Vec::new() }
    }

    /// Waits up to 15 s for a span that `wanted` accepts.
    async fn span(&mut self, what: &str, wanted: impl Fn(&Span) -> bool) -> Span {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(span) = self.spans.iter().find(|s| wanted(s)) {
                return span.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.exports.recv()).await {
                Ok(Some(export)) => self.spans.extend(spans_of(&export)),
                _ => panic!("no exported span: {what}; received: {:#?}", self.spans),
            }
        }
    }

    /// Takes in what has arrived, without waiting.
    fn collect(&mut self) {
        while let Ok(export) = self.exports.try_recv() {
            self.spans.extend(spans_of(&export));
        }
    }
}

/// Answers OTLP requests on one keep-alive connection.
async fn serve_connection(socket: tokio::net::TcpStream, exports: mpsc::UnboundedSender<Value>) {
    let mut socket = BufReader::new(socket);
    loop {
        let mut request_line = String::new();
        if socket.read_line(&mut request_line).await.unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0;
        let mut content_type = String::new();
        loop {
            let mut line = String::new();
            socket.read_line(&mut line).await.unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').unwrap();
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().unwrap(),
                "content-type" => content_type = value.trim().to_owned(),
                _ => {}
            }
        }
        let mut body = vec![0; length];
        socket.read_exact(&mut body).await.unwrap();
        assert!(request_line.starts_with("POST /v1/traces "), "{request_line}");
        assert_eq!(content_type, "application/json", "OTEL_EXPORTER_OTLP_PROTOCOL=http/json");
        exports.send(serde_json::from_slice(&body).expect("an OTLP JSON export")).unwrap();
        let answer = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
        socket.get_mut().write_all(answer.as_bytes()).await.unwrap();
    }
}

/// The spans of one `ExportTraceServiceRequest` in OTLP JSON.
fn spans_of(export: &Value) -> Vec<Span> {
    let mut spans = Vec::new();
    for resource_spans in export["resourceSpans"].as_array().into_iter().flatten() {
        let service_name = attribute(&resource_spans["resource"]["attributes"], "service.name").map(str::to_owned);
        for scope_spans in resource_spans["scopeSpans"].as_array().into_iter().flatten() {
            for span in scope_spans["spans"].as_array().into_iter().flatten() {
                spans.push(Span {
                    name: span["name"].as_str().unwrap_or_default().to_owned(),
                    trace_id: span["traceId"].as_str().unwrap_or_default().to_lowercase(),
                    span_id: span["spanId"].as_str().unwrap_or_default().to_lowercase(),
                    parent_span_id: span["parentSpanId"].as_str().unwrap_or_default().to_lowercase(),
                    attributes: span["attributes"].clone(),
                    service_name: service_name.clone(),
                });
            }
        }
    }
    spans
}

/// The binary with trace export to `receiver`, batches sent every `delay_ms`.
fn start_exporting(dir: &Path, receiver: &Receiver, delay_ms: &str) -> Server {
    start_with(
        dir,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_SERVICE_NAME", "smartscheduler-under-test"),
            ("OTEL_BSP_SCHEDULE_DELAY", delay_ms),
        ],
    )
}

/// Assigns a new job to a new contractor; the answer's body (with `eventId`).
async fn assign(server: &Server, traceparent: Option<&str>) -> Value {
    let admin = token("Admin", &[]);
    let client = reqwest::Client::new();
    let (contractor, job) = contractor_and_job(&client, &server.base, &admin, "Traced").await;
    let mut request = client
        .post(format!("{}/api/jobs/{}/assign", server.base, job["id"].as_str().unwrap()))
        .bearer_auth(&admin)
        .json(&json!({
            "contractorId": contractor["id"],
            "startUtc": "2030-01-01T09:00:00Z",
            "endUtc": "2030-01-01T10:00:00Z"
        }));
    if let Some(traceparent) = traceparent {
        request = request.header("traceparent", traceparent);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 201);
    response.json().await.unwrap()
}

/// The request, use-case and delivery spans of the assignment whose event is
/// `event_id`, in that order, once all three have arrived.
async fn assignment_spans(receiver: &mut Receiver, event_id: &str) -> [Span; 3] {
    let deliver = receiver
        .span("deliver with the event id", |s| s.name == "deliver" && s.attribute("event_id") == Some(event_id))
        .await;
    let assign = receiver
        .span("assign_job with the event id", |s| s.name == "assign_job" && s.attribute("event_id") == Some(event_id))
        .await;
    let request = receiver
        .span("the assignment's http_request", |s| s.name == "http_request" && s.span_id == assign.parent_span_id)
        .await;
    [request, assign, deliver]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assignment_request_and_the_delivery_of_its_event_are_exported_as_one_trace_naming_the_event() {
    // Arrange
    let mut receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start_exporting(dir.path(), &receiver, "100");

    // Act
    let assignment = assign(&server, None).await;

    // Assert
    let event_id = assignment["eventId"].as_str().unwrap();
    let [request, assign, deliver] = assignment_spans(&mut receiver, event_id).await;
    assert_eq!(deliver.trace_id, request.trace_id, "the delivery runs on the relay's task, yet in the request's trace");
    assert_eq!(assign.trace_id, request.trace_id);
    assert_eq!(deliver.parent_span_id, assign.span_id, "delivered inside a child of the use case's span");
    assert_eq!(assign.attribute("assignment_id"), assignment["assignmentId"].as_str());
    assert!(request.attribute("request_id").is_some(), "{request:?}");
    assert!(request.parent_span_id.is_empty(), "no traceparent: the request starts its trace");
    assert_eq!(deliver.service_name.as_deref(), Some("smartscheduler-under-test"), "OTEL_SERVICE_NAME");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_a_w3c_traceparent_continues_the_callers_trace_to_the_delivery() {
    // Arrange
    let mut receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start_exporting(dir.path(), &receiver, "100");
    let callers_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let callers_span = "00f067aa0ba902b7";

    // Act
    let assignment = assign(&server, Some(&format!("00-{callers_trace}-{callers_span}-01"))).await;

    // Assert
    let [request, assign, deliver] = assignment_spans(&mut receiver, assignment["eventId"].as_str().unwrap()).await;
    assert_eq!(request.trace_id, callers_trace);
    assert_eq!(request.parent_span_id, callers_span, "the request span is a child of the caller's");
    assert_eq!(assign.trace_id, callers_trace);
    assert_eq!(deliver.trace_id, callers_trace);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_still_batched_are_exported_when_the_service_stops_on_sigterm() {
    // Arrange: batches every 10 minutes, so only the stop can send them.
    let mut receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut server = start_exporting(dir.path(), &receiver, "600000");
    let assignment = assign(&server, None).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    receiver.collect();
    assert!(receiver.spans.is_empty(), "exported before the stop: {:#?}", receiver.spans);

    // Act
    let status = std::process::Command::new("kill").args(["-TERM", &server.child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let started = Instant::now();
    while server.child.try_wait().unwrap().is_none() {
        assert!(started.elapsed() < Duration::from_secs(15), "still running 15 s after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Assert
    let [request, _, deliver] = assignment_spans(&mut receiver, assignment["eventId"].as_str().unwrap()).await;
    assert_eq!(deliver.trace_id, request.trace_id);
}
