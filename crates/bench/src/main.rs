//! `ss-bench`: a load generator for SmartScheduler.
//!
//! - `persist`: N concurrent `POST /api/jobs/{id}/assign` (setup not timed):
//!   assignments per second and HTTP latency percentiles.
//! - `fanout`: N WebSocket clients speaking the SignalR JSON protocol join
//!   `dispatch/{region}`, then E assignments are made in that region: the
//!   latency from sending the assign request to each client receiving its
//!   `JobAssigned`, and the messages delivered per second to the group.
//!
//! Each scenario prints one human line and one JSON line (`{"scenario":…}`).
//! The exit status is 1 when an assignment, a connection or a delivery failed.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use futures_util::{stream, SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::{watch, Semaphore};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::header::AUTHORIZATION;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The SignalR record separator.
const RS: u8 = 0x1e;

#[derive(Debug, Parser)]
#[command(name = "ss-bench", about = "Load generator for the SmartScheduler API and hub")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Time N concurrent assignments over HTTP.
    Persist(PersistArgs),
    /// Fan E assignments out to N hub clients in one dispatch group.
    Fanout(FanoutArgs),
}

#[derive(Debug, Clone, Args)]
struct Target {
    /// Base URL of the service, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    base: String,
    /// Bearer token (Admin, or a Dispatcher of the region).
    #[arg(long, env = "SS_BENCH_TOKEN", hide_env_values = true)]
    token: String,
    /// Region of the jobs, contractors and dispatch group.
    #[arg(long, default_value = "north")]
    region: String,
}

#[derive(Debug, Args)]
struct PersistArgs {
    #[command(flatten)]
    target: Target,
    /// Assignments to make (as many jobs and contractors are created first).
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
}

#[derive(Debug, Args)]
struct FanoutArgs {
    #[command(flatten)]
    target: Target,
    /// Hub clients joined to the dispatch group.
    #[arg(long, default_value_t = 100)]
    clients: usize,
    /// Assignments (events) made once every client has joined.
    #[arg(long, default_value_t = 100)]
    events: usize,
    /// Assign requests in flight at once.
    #[arg(long, default_value_t = 4)]
    assign_concurrency: usize,
    /// Clients connecting (negotiate, upgrade, handshake, join) at once.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// Seconds to wait for the last deliveries after the last assignment.
    #[arg(long, default_value_t = 30)]
    drain_timeout: u64,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Persist(args) => persist(args).await,
        Command::Fanout(args) => fanout(args).await,
    };
    match result {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("ss-bench: {e:#}");
            std::process::exit(2);
        }
    }
}

// ---------------------------------------------------------------- HTTP

fn http_client(pool: usize) -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder().pool_max_idle_per_host(pool.max(1)).timeout(Duration::from_secs(60)).build()?)
}

async fn post(client: &reqwest::Client, t: &Target, path: &str, body: &Value) -> Result<(u16, Value)> {
    let res =
        client.post(format!("{}{path}", t.base.trim_end_matches('/'))).bearer_auth(&t.token).json(body).send().await?;
    let status = res.status().as_u16();
    let text = res.text().await?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
}

fn id_of(value: &Value) -> Result<String> {
    value["id"].as_str().map(str::to_owned).ok_or_else(|| anyhow!("no id in {value}"))
}

/// Creates `n` (job, contractor) pairs in the region, `concurrency` at a time.
async fn create_pairs(
    client: &reqwest::Client,
    t: &Target,
    n: usize,
    concurrency: usize,
) -> Result<Vec<(String, String)>> {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let results: Vec<Result<(String, String)>> = stream::iter(0..n)
        .map(|i| {
            let run = &run;
            async move {
                let (s, job) = post(
                    client,
                    t,
                    "/api/jobs",
                    &json!({"jobType": "Flooring", "region": t.region, "durationMinutes": 120, "title": format!("bench {run} {i}")}),
                )
                .await?;
                if s != 201 {
                    bail!("POST /api/jobs: {s} {job}");
                }
                let (s, contractor) = post(
                    client,
                    t,
                    "/api/contractors",
                    &json!({"name": format!("bench {run} {i}"), "region": t.region, "skills": ["hardwood"]}),
                )
                .await?;
                if s != 201 {
                    bail!("POST /api/contractors: {s} {contractor}");
                }
                Ok((id_of(&job)?, id_of(&contractor)?))
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    results.into_iter().collect()
}

/// One assignment; `Ok(true)` on 201.
async fn assign(client: &reqwest::Client, t: &Target, job: &str, contractor: &str) -> Result<bool> {
    let body =
        json!({"contractorId": contractor, "startUtc": "2026-12-01T09:00:00Z", "endUtc": "2026-12-01T11:00:00Z"});
    let (status, answer) = post(client, t, &format!("/api/jobs/{job}/assign"), &body).await?;
    if status != 201 {
        eprintln!("ss-bench: assign {job}: {status} {answer}");
    }
    Ok(status == 201)
}

// ---------------------------------------------------------------- statistics

struct Percentiles {
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

/// Nearest-rank percentiles, in milliseconds.
fn percentiles(mut samples: Vec<Duration>) -> Percentiles {
    samples.sort_unstable();
    let at = |p: f64| -> f64 {
        if samples.is_empty() {
            return f64::NAN;
        }
        let rank = ((p * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
        samples[rank - 1].as_secs_f64() * 1000.0
    };
    Percentiles { p50: at(0.50), p99: at(0.99), p999: at(0.999), max: at(1.0) }
}

fn round(x: f64, digits: i32) -> Value {
    if x.is_finite() {
        let f = 10f64.powi(digits);
        json!((x * f).round() / f)
    } else {
        Value::Null
    }
}

/// `{"scenario":NAME,…fields}` on one line, the scenario first (serde_json sorts keys).
fn json_line(scenario: &str, fields: Value) -> String {
    let body = fields.to_string();
    let rest = body.strip_prefix('{').unwrap_or(&body);
    if rest == "}" {
        format!("{{\"scenario\":{}}}", json!(scenario))
    } else {
        format!("{{\"scenario\":{},{rest}", json!(scenario))
    }
}

// ---------------------------------------------------------------- persist

async fn persist(args: PersistArgs) -> Result<bool> {
    let t = &args.target;
    let client = http_client(args.concurrency)?;
    let pairs = create_pairs(&client, t, args.count, args.concurrency).await.context("setup")?;

    let started = Instant::now();
    let results: Vec<(Duration, bool)> = stream::iter(pairs.iter())
        .map(|(job, contractor)| {
            let client = &client;
            async move {
                let sent = Instant::now();
                let ok = assign(client, t, job, contractor).await.unwrap_or_else(|e| {
                    eprintln!("ss-bench: assign {job}: {e:#}");
                    false
                });
                (sent.elapsed(), ok)
            }
        })
        .buffer_unordered(args.concurrency.max(1))
        .collect()
        .await;
    let elapsed = started.elapsed().as_secs_f64();

    let ok = results.iter().filter(|(_, ok)| *ok).count();
    let errors = results.len() - ok;
    let rate = ok as f64 / elapsed;
    let p = percentiles(results.into_iter().filter(|(_, ok)| *ok).map(|(d, _)| d).collect());
    println!(
        "persist: {ok}/{} assignments in {elapsed:.2} s = {rate:.0} assignments/s at concurrency {}; HTTP latency p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms; {errors} errors",
        args.count, args.concurrency, p.p50, p.p99, p.p999, p.max
    );
    println!(
        "{}",
        json_line(
            "persist",
            json!({
                "count": args.count,
                "concurrency": args.concurrency,
                "ok": ok,
                "errors": errors,
                "seconds": round(elapsed, 3),
                "assignments_per_s": round(rate, 1),
                "latency_p50_ms": round(p.p50, 3),
                "latency_p99_ms": round(p.p99, 3),
                "latency_p999_ms": round(p.p999, 3),
                "latency_max_ms": round(p.max, 3),
            })
        )
    );
    Ok(errors == 0)
}

// ---------------------------------------------------------------- hub client

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A SignalR JSON-protocol connection: splits text frames into records on 0x1E.
struct HubConn {
    ws: Ws,
    tail: Vec<u8>,
    records: VecDeque<Value>,
}

impl HubConn {
    /// Negotiates, upgrades with the bearer token, and completes the handshake.
    async fn connect(http: &reqwest::Client, t: &Target) -> Result<Self> {
        let base = t.base.trim_end_matches('/');
        let res =
            http.post(format!("{base}/hubs/jobs/negotiate?negotiateVersion=1")).bearer_auth(&t.token).send().await?;
        let status = res.status();
        let body: Value = res.json().await.context("negotiate answer")?;
        if !status.is_success() {
            bail!("negotiate: {status} {body}");
        }
        let token =
            body["connectionToken"].as_str().ok_or_else(|| anyhow!("negotiate: no connectionToken in {body}"))?;
        let ws_base = base.replacen("http://", "ws://", 1).replacen("https://", "wss://", 1);
        let mut request = format!("{ws_base}/hubs/jobs?id={token}").into_client_request()?;
        request.headers_mut().insert(AUTHORIZATION, format!("Bearer {}", t.token).parse()?);
        let (ws, _) = tokio_tungstenite::connect_async(request).await.context("WebSocket upgrade")?;
        let mut conn = Self { ws, tail: Vec::new(), records: VecDeque::new() };
        conn.send_record(&json!({"protocol": "json", "version": 1})).await?;
        let first = conn.next_record().await?;
        if first.as_object().is_none_or(|o| !o.is_empty()) {
            bail!("handshake refused: {first}");
        }
        Ok(conn)
    }

    async fn send_record(&mut self, record: &Value) -> Result<()> {
        let mut text = record.to_string();
        text.push(RS as char);
        self.ws.send(Message::text(text)).await?;
        Ok(())
    }

    /// The next record; cancel-safe (records are queued before returning).
    async fn next_record(&mut self) -> Result<Value> {
        loop {
            if let Some(record) = self.records.pop_front() {
                return Ok(record);
            }
            let message = self.ws.next().await.ok_or_else(|| anyhow!("connection closed"))??;
            let data: &[u8] = match &message {
                Message::Text(text) => text.as_bytes(),
                Message::Binary(_) => bail!("unexpected binary frame"),
                Message::Close(frame) => bail!("connection closed: {frame:?}"),
                _ => continue, // WebSocket ping/pong: tungstenite answers pings itself.
            };
            let mut rest = data;
            while let Some(pos) = rest.iter().position(|&b| b == RS) {
                let mut record = std::mem::take(&mut self.tail);
                record.extend_from_slice(&rest[..pos]);
                self.records.push_back(serde_json::from_slice(&record).context("record is not JSON")?);
                rest = &rest[pos + 1..];
            }
            self.tail.extend_from_slice(rest);
        }
    }

    /// Invokes a hub method and waits for its completion (events that arrive
    /// meanwhile are dropped: nothing is assigned yet when this runs).
    async fn invoke(&mut self, id: &str, target: &str, arguments: Value) -> Result<Value> {
        self.send_record(&json!({"type": 1, "invocationId": id, "target": target, "arguments": arguments})).await?;
        loop {
            let record = self.next_record().await?;
            match record["type"].as_u64() {
                Some(3) if record["invocationId"] == id => {
                    if let Some(error) = record.get("error") {
                        bail!("{target} failed: {error}");
                    }
                    return Ok(record["result"].clone());
                }
                Some(7) => bail!("closed by the server: {record}"),
                _ => {}
            }
        }
    }
}

/// One client: connects and joins, reports that it has joined, then records
/// when each JobAssigned arrives until it has `events` of them or `stop`.
async fn run_client(
    http: reqwest::Client,
    t: Arc<Target>,
    gate: Arc<Semaphore>,
    joined: tokio::sync::mpsc::UnboundedSender<Result<()>>,
    events: usize,
    mut stop: watch::Receiver<bool>,
) -> Vec<(String, Instant)> {
    let setup = async {
        let _permit = gate.acquire().await?;
        let mut conn = HubConn::connect(&http, &t).await?;
        conn.invoke("1", "JoinDispatchGroup", json!([t.region])).await?;
        anyhow::Ok(conn)
    };
    let mut conn = match setup.await {
        Ok(conn) => {
            let _ = joined.send(Ok(()));
            conn
        }
        Err(e) => {
            let _ = joined.send(Err(e));
            return Vec::new();
        }
    };
    drop(joined);

    let mut received = Vec::with_capacity(events);
    let mut seen = HashSet::with_capacity(events);
    // The server closes a connection that sends nothing for 30 s.
    let mut keepalive = tokio::time::interval(Duration::from_secs(10));
    keepalive.tick().await;
    while received.len() < events {
        tokio::select! {
            record = conn.next_record() => {
                let record = match record {
                    Ok(record) => record,
                    Err(e) => {
                        eprintln!("ss-bench: client stopped reading: {e:#}");
                        break;
                    }
                };
                let at = Instant::now();
                match record["type"].as_u64() {
                    Some(1) if record["target"] == "JobAssigned" => {
                        if let Some(job) = record["arguments"][0]["jobId"].as_str() {
                            if seen.insert(job.to_owned()) {
                                received.push((job.to_owned(), at));
                            }
                        }
                    }
                    Some(7) => {
                        eprintln!("ss-bench: closed by the server: {record}");
                        break;
                    }
                    _ => {} // pings and anything else: keep reading
                }
            }
            _ = keepalive.tick() => {
                if conn.send_record(&json!({"type": 6})).await.is_err() {
                    break;
                }
            }
            _ = stop.changed() => break,
        }
    }
    let _ = conn.ws.close(None).await;
    received
}

// ---------------------------------------------------------------- fanout

async fn fanout(args: FanoutArgs) -> Result<bool> {
    let t = Arc::new(args.target.clone());
    let http = http_client(args.connect_concurrency.max(args.assign_concurrency))?;
    let pairs = create_pairs(&http, &t, args.events, 8).await.context("setup")?;

    // Connect and join every client.
    let connect_started = Instant::now();
    let gate = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let (joined_tx, mut joined_rx) = tokio::sync::mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = watch::channel(false);
    let clients: Vec<_> = (0..args.clients)
        .map(|_| {
            tokio::spawn(run_client(
                http.clone(),
                t.clone(),
                gate.clone(),
                joined_tx.clone(),
                args.events,
                stop_rx.clone(),
            ))
        })
        .collect();
    drop(joined_tx);
    let mut connected = 0usize;
    let mut connect_errors = 0usize;
    while let Some(result) = joined_rx.recv().await {
        match result {
            Ok(()) => connected += 1,
            Err(e) => {
                if connect_errors < 5 {
                    eprintln!("ss-bench: client failed to connect/join: {e:#}");
                }
                connect_errors += 1;
            }
        }
    }
    let connect_seconds = connect_started.elapsed().as_secs_f64();
    eprintln!(
        "ss-bench: {connected} clients joined dispatch/{} in {connect_seconds:.2} s ({connect_errors} failed)",
        t.region
    );

    // Assign, noting when each request is sent.
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::new(Mutex::new(HashMap::with_capacity(args.events)));
    let assign_started = Instant::now();
    let results: Vec<bool> = stream::iter(pairs.iter())
        .map(|(job, contractor)| {
            let (http, t, sent) = (&http, &t, &sent);
            async move {
                sent.lock().expect("sent times").insert(job.clone(), Instant::now());
                assign(http, t, job, contractor).await.unwrap_or_else(|e| {
                    eprintln!("ss-bench: assign {job}: {e:#}");
                    false
                })
            }
        })
        .buffer_unordered(args.assign_concurrency.max(1))
        .collect()
        .await;
    let assign_errors = results.iter().filter(|ok| !**ok).count();

    // Wait for the clients, up to the drain timeout.
    let stopper = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(args.drain_timeout)).await;
        let _ = stop_tx.send(true);
        stop_tx // keep the sender alive until here
    });
    let mut latencies = Vec::with_capacity(connected * args.events);
    let mut last_delivery = assign_started;
    let sent = sent.lock().expect("sent times").clone();
    for client in clients {
        for (job, at) in client.await? {
            if let Some(s) = sent.get(&job) {
                latencies.push(at.saturating_duration_since(*s));
                last_delivery = last_delivery.max(at);
            }
        }
    }
    stopper.abort();

    let delivered = latencies.len();
    let expected = connected * (args.events - assign_errors);
    let missing = expected.saturating_sub(delivered);
    let window = last_delivery.saturating_duration_since(assign_started).as_secs_f64();
    let rate = if window > 0.0 { delivered as f64 / window } else { f64::NAN };
    let p = percentiles(latencies);
    println!(
        "fanout: {connected} clients x {} events: {delivered}/{expected} deliveries in {window:.2} s = {rate:.0} msg/s; end-to-end latency p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms; {connect_errors} connect errors, {assign_errors} assign errors, {missing} missing",
        args.events, p.p50, p.p99, p.p999, p.max
    );
    println!(
        "{}",
        json_line(
            "fanout",
            json!({
                "clients": args.clients,
                "connected": connected,
                "events": args.events,
                "assign_concurrency": args.assign_concurrency,
                "connect_seconds": round(connect_seconds, 3),
                "deliveries": delivered,
                "expected": expected,
                "missing": missing,
                "connect_errors": connect_errors,
                "assign_errors": assign_errors,
                "seconds": round(window, 3),
                "messages_per_s": round(rate, 1),
                "latency_p50_ms": round(p.p50, 3),
                "latency_p99_ms": round(p.p99, 3),
                "latency_p999_ms": round(p.p999, 3),
                "latency_max_ms": round(p.max, 3),
            })
        )
    );
    Ok(connect_errors == 0 && assign_errors == 0 && missing == 0)
}
