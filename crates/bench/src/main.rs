//! `ss-bench`: a load generator for SmartScheduler and its peers.
//!
//! - `persist`: N concurrent `POST /api/jobs/{id}/assign` (setup not timed):
//!   assignments per second and HTTP latency percentiles.
//! - `fanout`: N WebSocket clients join groups (our hub: `dispatch/{region}`,
//!   also over Long Polling or SSE with `--transport`;
//!   `--peer socketio`: rooms; `--peer floor`: no groups), some optionally
//!   stalled (joined, never read again); then E events are published (our hub:
//!   real assignments over HTTP; the peers: `POST /publish`), closed loop or at
//!   a set rate: HTTP latency of the publishes, end-to-end delivery latency
//!   (publish sent → event read by a client), messages delivered per second.
//! - `idle`: N joined connections held idle: the server's RSS per connection
//!   and the CPU it spends on keep-alives (from `/proc/PID`).
//! - `cost`: assignments or GETs open loop at a steady rate: the server's CPU
//!   time per operation (from `/proc/PID`), optionally PostgreSQL's too.
//!
//! Each scenario prints one human line and one JSON line (`{"scenario":…}`).
//! The exit status is 1 when a publish, a connection or a delivery failed.

mod conn;
mod cost;
mod stats;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use futures_util::{stream, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;

use crate::conn::{Conn, Endpoint, Event, Group, Peer, Transport, KEEPALIVE};
use crate::stats::{json_line, round, Percentiles, ProcSample};

#[derive(Debug, Parser)]
#[command(name = "ss-bench", about = "Load generator for the SmartScheduler API and hub, and its peers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Time N concurrent assignments over HTTP.
    Persist(PersistArgs),
    /// Publish E events to N subscribers spread over groups; delivery latency and rate.
    Fanout(FanoutArgs),
    /// Hold N joined connections idle: server RSS per connection, CPU on keep-alives.
    Idle(IdleArgs),
    /// Operations at a steady rate: the server's CPU time per operation.
    Cost(cost::CostArgs),
}

#[derive(Debug, Clone, Args)]
struct Target {
    /// Base URL of the server, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    base: String,
    /// Bearer token (Admin, or a Dispatcher of the regions); our hub only.
    #[arg(long, env = "SS_BENCH_TOKEN", hide_env_values = true, default_value = "")]
    token: String,
    /// Region of the jobs, contractors and dispatch group (with --regions 1).
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

#[derive(Debug, Clone, Args)]
struct Connections {
    /// Server to subscribe to: our hub, or a peer.
    #[arg(long, value_enum, default_value = "signalr")]
    peer: Peer,
    /// How the connections reach our hub (the peers: websockets only).
    #[arg(long, value_enum, default_value = "websockets")]
    transport: Transport,
    /// Subscriber connections.
    #[arg(long, default_value_t = 100)]
    clients: usize,
    /// Groups (regions `r000`, `r001`, …; with 1, `--region`); client i joins region i mod R.
    #[arg(long, default_value_t = 1)]
    regions: usize,
    /// Connections opened (connect, upgrade, handshake, join) at once.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// Local addresses to connect from, round robin (e.g. 127.0.0.1,127.0.0.2): more ephemeral ports.
    #[arg(long, value_delimiter = ',')]
    source_addrs: Vec<IpAddr>,
}

#[derive(Debug, Args)]
struct FanoutArgs {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    conns: Connections,
    /// Events published once every client has joined (event j goes to region j mod R).
    #[arg(long, default_value_t = 100)]
    events: usize,
    /// Publishes in flight at once (closed loop, when --rate is 0).
    #[arg(long, alias = "assign-concurrency", default_value_t = 4)]
    concurrency: usize,
    /// Publishes per second, open loop (0: closed loop at --concurrency).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Open loop: publishes in flight at most (beyond it the schedule slips, and the run says so).
    #[arg(long, default_value_t = 2048)]
    max_in_flight: usize,
    /// Fraction of the clients that join a contractor's group (`contractor/{id}`) instead of a region's.
    #[arg(long, default_value_t = 0.0)]
    contractor_fraction: f64,
    /// Fraction of the clients that join and then never read their socket again.
    #[arg(long, default_value_t = 0.0)]
    stalled_fraction: f64,
    /// The stalled clients also join every region's group, with a 4 KiB
    /// receive buffer, so every event goes to them; once the server's socket
    /// buffer is full their queues fill up and our hub closes them as too
    /// slow (on loopback after about 7,600 events). Our hub only.
    #[arg(long)]
    stalled_join_all: bool,
    /// Seconds to wait for the last deliveries after the last publish.
    #[arg(long, default_value_t = 30)]
    drain_timeout: u64,
}

#[derive(Debug, Args)]
struct IdleArgs {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    conns: Connections,
    /// The server's process id (its /proc/PID/status and /proc/PID/stat are sampled).
    #[arg(long)]
    server_pid: u32,
    /// Seconds to wait after the last join before the "after" sample.
    #[arg(long, default_value_t = 5)]
    settle: u64,
    /// Seconds held idle while the server's CPU time is measured.
    #[arg(long, default_value_t = 60)]
    hold: u64,
    /// Clock ticks per second of /proc/PID/stat (`getconf CLK_TCK`).
    #[arg(long, default_value_t = 100)]
    clk_tck: u64,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Persist(args) => persist(args).await,
        Command::Fanout(args) => fanout(args).await,
        Command::Idle(args) => idle(args).await,
        Command::Cost(args) => cost::cost(args).await,
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

/// An HTTP client that drops pooled connections after 1 s idle: the service closes them after
/// its keep-alive (5 s), and a request sent on one just as it is closed fails
/// ("connection closed before message completed"), which a steady low rate hits now and then.
fn http_client(pool: usize) -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(pool.max(1))
        .pool_idle_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(60))
        .build()?)
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

/// Creates `n` (job, contractor) pairs, pair i in `regions[i % len]`, `concurrency` at a time.
async fn create_pairs(
    client: &reqwest::Client,
    t: &Target,
    regions: &[String],
    n: usize,
    concurrency: usize,
) -> Result<Vec<(String, String)>> {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let results: Vec<Result<(String, String)>> = stream::iter(0..n)
        .map(|i| {
            let run = &run;
            let region = &regions[i % regions.len()];
            async move {
                let (s, job) = post(
                    client,
                    t,
                    "/api/jobs",
                    &json!({"jobType": "Flooring", "region": region, "durationMinutes": 120, "title": format!("bench {run} {i}")}),
                )
                .await?;
                if s != 201 {
                    bail!("POST /api/jobs: {s} {job}");
                }
                let (s, contractor) = post(
                    client,
                    t,
                    "/api/contractors",
                    &json!({"name": format!("bench {run} {i}"), "region": region, "skills": ["hardwood"]}),
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

// ---------------------------------------------------------------- persist

async fn persist(args: PersistArgs) -> Result<bool> {
    let t = &args.target;
    let client = http_client(args.concurrency)?;
    let pairs = create_pairs(&client, t, std::slice::from_ref(&t.region), args.count, args.concurrency)
        .await
        .context("setup")?;

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
    let p = Percentiles::of(results.into_iter().filter(|(_, ok)| *ok).map(|(d, _)| d).collect());
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

// ---------------------------------------------------------------- subscribers

/// The region names of a run: `--region` alone, or `r000`, `r001`, ….
fn region_names(t: &Target, regions: usize) -> Vec<String> {
    if regions <= 1 {
        vec![t.region.clone()]
    } else {
        (0..regions).map(|i| format!("r{i:03}")).collect()
    }
}

/// What every subscriber task shares.
struct Shared {
    peer: Peer,
    transport: Transport,
    http: reqwest::Client,
    /// Long Polling and SSE: a client per source address (each made with `Transport::http_client`).
    link_http: Vec<(Option<IpAddr>, reqwest::Client)>,
    endpoint: Endpoint,
    gate: Semaphore,
    /// Event number of each `jobId` (empty when nothing is published).
    index: HashMap<String, u32>,
    /// When each event's publish was sent: nanoseconds since `epoch`, plus one (0: not yet).
    sent: Vec<AtomicU64>,
    epoch: Instant,
}

/// One subscriber's part.
struct Plan {
    group: Group,
    source: Option<IpAddr>,
    /// Events it should receive before it stops by itself.
    expected: usize,
    /// Joins, then never reads again.
    stalled: bool,
    /// Groups it joins after the first (a stalled client with --stalled-join-all).
    also: Vec<Group>,
    /// A 4 KiB receive buffer (a stalled client with --stalled-join-all).
    small_window: bool,
}

#[derive(Default)]
struct Report {
    latencies_us: Vec<u32>,
    duplicates: usize,
    last: Option<Instant>,
    /// Bytes read from the server once joined (`Conn::bytes_received`).
    bytes: u64,
}

impl Shared {
    /// The HTTP client a connection from `source` uses.
    fn http_for(&self, source: Option<IpAddr>) -> &reqwest::Client {
        self.link_http.iter().find(|(ip, _)| *ip == source).map_or(&self.http, |(_, client)| client)
    }
}

async fn subscriber(
    shared: Arc<Shared>,
    plan: Plan,
    joined: mpsc::UnboundedSender<Result<()>>,
    mut stop: watch::Receiver<bool>,
) -> Report {
    let setup = async {
        let _permit = shared.gate.acquire().await?;
        // A client that never reads and should be found slow: a small receive
        // window, so its own kernel holds little of what is sent to it (the
        // server's send buffer still holds a few MB on loopback).
        let recv_buffer = plan.small_window.then_some(4096);
        let mut conn = Conn::open(
            shared.peer,
            shared.transport,
            shared.http_for(plan.source),
            &shared.endpoint,
            plan.source,
            recv_buffer,
            &plan.group,
        )
        .await?;
        for (i, group) in plan.also.iter().enumerate() {
            conn.join_group(group, i as u64 + 2).await?;
        }
        anyhow::Ok(conn)
    };
    let mut conn = match setup.await {
        Ok(conn) => {
            let _ = joined.send(Ok(()));
            conn
        }
        Err(e) => {
            let _ = joined.send(Err(e));
            return Report::default();
        }
    };
    drop(joined);
    let mut report = Report::default();
    if plan.stalled {
        let _ = stop.changed().await;
        drop(conn); // closed without reading what is queued
        return report;
    }
    let bytes_joined = conn.bytes_received();
    let mut seen = vec![0u64; shared.sent.len().div_ceil(64)];
    let mut received = 0usize;
    let mut keepalive = tokio::time::interval(KEEPALIVE);
    keepalive.tick().await;
    while received < plan.expected {
        tokio::select! {
            event = conn.next_event() => {
                let id = match event {
                    Ok(Event::Job(id)) => id,
                    Ok(Event::Other) => continue,
                    Err(e) => {
                        eprintln!("ss-bench: a client stopped reading: {e:#}");
                        break;
                    }
                };
                let at = Instant::now();
                let Some(&n) = shared.index.get(&id) else { continue };
                let (word, bit) = (n as usize / 64, 1u64 << (n % 64));
                if seen[word] & bit != 0 {
                    report.duplicates += 1;
                    continue;
                }
                seen[word] |= bit;
                received += 1;
                let sent = shared.sent[n as usize].load(Ordering::Acquire);
                if sent > 0 {
                    let latency = at.saturating_duration_since(shared.epoch).as_nanos() as u64 + 1 - sent;
                    report.latencies_us.push((latency / 1000).min(u64::from(u32::MAX)) as u32);
                    report.last = Some(at);
                }
            }
            _ = keepalive.tick() => {
                if conn.keepalive().await.is_err() {
                    break;
                }
            }
            _ = stop.changed() => break,
        }
    }
    report.bytes = conn.bytes_received() - bytes_joined;
    conn.close().await;
    report
}

/// Subscribers, connecting `connect_concurrency` at a time.
struct Subscribers {
    active: Vec<tokio::task::JoinHandle<Report>>,
    stalled: Vec<tokio::task::JoinHandle<Report>>,
    stop: watch::Sender<bool>,
    connected: usize,
    connect_errors: usize,
    connect_seconds: f64,
}

impl Subscribers {
    /// Opens them all and waits until each has joined or failed.
    async fn open(shared: &Arc<Shared>, plans: Vec<Plan>) -> Self {
        let started = Instant::now();
        let (joined_tx, mut joined_rx) = mpsc::unbounded_channel();
        let (stop, stop_rx) = watch::channel(false);
        let (mut active, mut stalled) = (Vec::new(), Vec::new());
        for plan in plans {
            let is_stalled = plan.stalled;
            let task = tokio::spawn(subscriber(shared.clone(), plan, joined_tx.clone(), stop_rx.clone()));
            if is_stalled {
                stalled.push(task)
            } else {
                active.push(task)
            }
        }
        drop(joined_tx);
        let (mut connected, mut connect_errors) = (0usize, 0usize);
        while let Some(result) = joined_rx.recv().await {
            match result {
                Ok(()) => connected += 1,
                Err(e) => {
                    if connect_errors < 5 {
                        eprintln!("ss-bench: a client failed to connect/join: {e:#}");
                    }
                    connect_errors += 1;
                }
            }
            let done = connected + connect_errors;
            if done % 2000 == 0 {
                eprintln!("ss-bench: {done} clients connected or failed");
            }
        }
        let connect_seconds = started.elapsed().as_secs_f64();
        eprintln!("ss-bench: {connected} clients joined in {connect_seconds:.2} s ({connect_errors} failed)");
        Self { active, stalled, stop, connected, connect_errors, connect_seconds }
    }

    /// Waits for the active ones (they stop once they have all their events,
    /// or after `drain`), then closes the stalled ones.
    async fn finish(self, drain: Duration) -> Result<Vec<Report>> {
        let stop = Arc::new(self.stop);
        let timer = {
            let stop = stop.clone();
            tokio::spawn(async move {
                tokio::time::sleep(drain).await;
                let _ = stop.send(true);
            })
        };
        let mut reports = Vec::with_capacity(self.active.len());
        for task in self.active {
            reports.push(task.await?);
        }
        timer.abort();
        let _ = stop.send(true);
        for task in self.stalled {
            task.await?;
        }
        Ok(reports)
    }
}

fn shared(args: &Connections, t: &Target, endpoint: Endpoint, job_ids: &[String]) -> Result<Arc<Shared>> {
    if args.peer == Peer::Signalr && t.token.is_empty() {
        bail!("our hub needs a token: --token or SS_BENCH_TOKEN");
    }
    if args.transport != Transport::WebSockets && args.peer != Peer::Signalr {
        bail!("--transport {} is for our hub only (--peer signalr)", args.transport.name());
    }
    let link_http = if args.transport == Transport::WebSockets {
        Vec::new()
    } else if args.source_addrs.is_empty() {
        vec![(None, Transport::http_client(None)?)]
    } else {
        args.source_addrs.iter().map(|&ip| Ok((Some(ip), Transport::http_client(Some(ip))?))).collect::<Result<_>>()?
    };
    Ok(Arc::new(Shared {
        peer: args.peer,
        transport: args.transport,
        http: http_client(args.connect_concurrency)?,
        link_http,
        endpoint,
        gate: Semaphore::new(args.connect_concurrency.max(1)),
        index: job_ids.iter().enumerate().map(|(n, id)| (id.clone(), n as u32)).collect(),
        sent: (0..job_ids.len()).map(|_| AtomicU64::new(0)).collect(),
        epoch: Instant::now(),
    }))
}

// ---------------------------------------------------------------- fanout

/// How events are published.
enum Publisher {
    /// Our hub: a real assignment (job, contractor) over HTTP.
    Assign(Vec<(String, String)>),
    /// A peer: `POST {base}/publish` with a prepared body.
    Post(String, Vec<String>),
}

/// A JobAssigned payload shaped and sized like ours (docs/realtime.md).
fn peer_payload(job: &str, contractor: &str, region: &str, sequence: usize) -> Value {
    let id = || uuid::Uuid::new_v4().to_string();
    json!({
        "type": "JobAssigned", "schemaVersion": 1, "eventId": id(), "sequence": sequence + 1,
        "occurredAtUtc": "2026-11-28T14:15:21.992Z", "jobId": job, "contractorId": contractor, "assignmentId": id(),
        "startUtc": "2026-12-01T09:00:00Z", "endUtc": "2026-12-01T11:00:00Z", "region": region,
        "source": "manual", "auditId": null,
        "job": {"id": job, "jobType": "Flooring", "title": format!("bench job {sequence}"), "region": region,
                "status": "Assigned", "durationMinutes": 120}
    })
}

async fn fanout(args: FanoutArgs) -> Result<bool> {
    let t = Arc::new(args.target.clone());
    let c = &args.conns;
    let peer = c.peer;
    if args.stalled_join_all && c.transport != Transport::WebSockets {
        bail!("--stalled-join-all needs --transport websockets (it sets the socket's receive buffer)");
    }
    let regions = region_names(&t, c.regions);
    let http = http_client(args.concurrency.max(64))?;
    let endpoint = Endpoint::new(&t.base, &t.token).await?;

    // The events: real jobs on our hub; made-up ones for the peers. Event j is in region j mod R.
    let region_of = |j: usize| &regions[j % regions.len()];
    let (job_ids, contractor_ids, publisher) = if peer == Peer::Signalr {
        let started = Instant::now();
        let pairs = create_pairs(&http, &t, &regions, args.events, 16).await.context("setup")?;
        eprintln!("ss-bench: {} jobs and contractors created in {:.1} s", pairs.len(), started.elapsed().as_secs_f64());
        let (jobs, contractors) = pairs.iter().cloned().unzip();
        (jobs, contractors, Publisher::Assign(pairs))
    } else {
        let new_ids = || (0..args.events).map(|_| uuid::Uuid::new_v4().to_string()).collect::<Vec<_>>();
        let (jobs, contractors) = (new_ids(), new_ids());
        let bodies = (0..args.events)
            .map(|j| {
                let payload = peer_payload(&jobs[j], &contractors[j], region_of(j), j);
                match peer {
                    // Like our hub: to the region's dispatchers and to the contractor.
                    Peer::Socketio => json!({
                        "room": [Group::Dispatch(region_of(j).clone()).name(), Group::Contractor(contractors[j].clone()).name()],
                        "payload": payload,
                    })
                    .to_string(),
                    _ => payload.to_string(),
                }
            })
            .collect();
        (jobs, contractors, Publisher::Post(format!("{}/publish", endpoint.base), bodies))
    };
    let shared = shared(c, &t, endpoint, &job_ids)?;

    // Subscribe: the first clients are the stalled ones (one per region while there are fewer
    // of them than regions), the last ones the contractors (the one of event k for the k-th).
    let stalled_count = ((c.clients as f64) * args.stalled_fraction).round() as usize;
    let contractor_count = ((c.clients as f64) * args.contractor_fraction).round() as usize;
    let dispatchers = c.clients.saturating_sub(contractor_count);
    let per_region = |r: usize| (r..args.events).step_by(regions.len()).count();
    let plans = (0..c.clients)
        .map(|i| {
            let (group, expected) = if i < dispatchers || args.events == 0 {
                (Group::Dispatch(regions[i % regions.len()].clone()), per_region(i % regions.len()))
            } else {
                (Group::Contractor(contractor_ids[(i - dispatchers) % args.events].clone()), 1)
            };
            Plan {
                group,
                source: (!c.source_addrs.is_empty()).then(|| c.source_addrs[i % c.source_addrs.len()]),
                expected: if peer.has_groups() { expected } else { args.events },
                stalled: i < stalled_count,
                also: if i < stalled_count && args.stalled_join_all {
                    let own = i % regions.len();
                    regions
                        .iter()
                        .enumerate()
                        .filter(|(r, _)| *r != own)
                        .map(|(_, r)| Group::Dispatch(r.clone()))
                        .collect()
                } else {
                    Vec::new()
                },
                small_window: i < stalled_count && args.stalled_join_all,
            }
        })
        .collect::<Vec<_>>();
    let expected_total: usize = plans.iter().filter(|p| !p.stalled).map(|p| p.expected).sum();
    // Deliveries each event should make (to subtract those of failed publishes).
    let expected_per_event: Vec<usize> = {
        let active = plans.iter().filter(|p| !p.stalled).count();
        let mut per_region = vec![0usize; regions.len()];
        let mut per_contractor: HashMap<&str, usize> = HashMap::new();
        for (i, plan) in plans.iter().enumerate().filter(|(_, p)| !p.stalled) {
            match &plan.group {
                Group::Dispatch(_) => per_region[i % regions.len()] += 1,
                Group::Contractor(id) => *per_contractor.entry(id.as_str()).or_default() += 1,
            }
        }
        (0..args.events)
            .map(|j| match peer.has_groups() {
                true => per_region[j % regions.len()] + per_contractor.get(contractor_ids[j].as_str()).unwrap_or(&0),
                false => active,
            })
            .collect()
    };
    let subs = Subscribers::open(&shared, plans).await;

    // Publish: closed loop (--concurrency in flight) or open loop (--rate).
    let open_loop = args.rate > 0.0;
    let limit = Arc::new(Semaphore::new(if open_loop { args.max_in_flight } else { args.concurrency }.max(1)));
    let publisher = Arc::new(publisher);
    let mut tasks = JoinSet::new();
    let started = Instant::now();
    let mut behind = Duration::ZERO;
    let mut last_send = started;
    let mut outcomes = Vec::with_capacity(args.events);
    for j in 0..args.events {
        let permit = if open_loop {
            let due = started + Duration::from_secs_f64(j as f64 / args.rate);
            tokio::time::sleep_until(due.into()).await;
            let permit = limit.clone().acquire_owned().await?;
            behind = behind.max(Instant::now().saturating_duration_since(due));
            permit
        } else {
            limit.clone().acquire_owned().await?
        };
        tasks.spawn(publish_one(publisher.clone(), http.clone(), t.clone(), shared.clone(), j, permit));
        last_send = Instant::now();
        // Collect the finished ones as we go, so that the set stays small.
        while let Some(done) = tasks.try_join_next() {
            outcomes.push(done?);
        }
    }
    while let Some(done) = tasks.join_next().await {
        outcomes.push(done?);
    }
    let mut http_latencies = Vec::with_capacity(args.events);
    let mut failed = vec![false; args.events];
    let mut last_answer = started;
    for outcome in outcomes {
        if outcome.ok {
            http_latencies.push(outcome.latency);
        } else {
            failed[outcome.event] = true;
        }
        last_answer = last_answer.max(outcome.at);
    }
    let publish_errors = failed.iter().filter(|f| **f).count();
    let publish_seconds = last_answer.saturating_duration_since(started).as_secs_f64();
    let send_seconds = last_send.saturating_duration_since(started).as_secs_f64();

    // Deliveries.
    let (connected, connect_errors, connect_seconds) = (subs.connected, subs.connect_errors, subs.connect_seconds);
    let reports = subs.finish(Duration::from_secs(args.drain_timeout)).await?;
    let expected = if publish_errors == 0 {
        expected_total
    } else {
        expected_total - failed.iter().zip(&expected_per_event).filter(|(f, _)| **f).map(|(_, n)| n).sum::<usize>()
    };
    let duplicates: usize = reports.iter().map(|r| r.duplicates).sum();
    let bytes: u64 = reports.iter().map(|r| r.bytes).sum();
    let last_delivery = reports.iter().filter_map(|r| r.last).max().unwrap_or(started);
    let latencies: Vec<u32> = reports.into_iter().flat_map(|r| r.latencies_us).collect();
    let delivered = latencies.len();
    let missing = expected.saturating_sub(delivered);
    let window = last_delivery.saturating_duration_since(started).as_secs_f64();
    let rate = if window > 0.0 { delivered as f64 / window } else { f64::NAN };
    let ok_publishes = args.events - publish_errors;
    let publishes_per_s = ok_publishes as f64 / publish_seconds.max(f64::MIN_POSITIVE);
    let http_p = Percentiles::of(http_latencies);
    let p = Percentiles::of_micros(latencies);
    let bytes_per_event = if delivered > 0 { bytes as f64 / delivered as f64 } else { f64::NAN };
    println!(
        "fanout [{}{}]: {connected} clients ({stalled_count} stalled, {contractor_count} in contractor groups) in {} regions x {} events{}: {delivered}/{expected} deliveries in {window:.2} s = {rate:.0} msg/s; publishes {publishes_per_s:.0}/s, HTTP {}; delivery {}; {connect_errors} connect errors, {publish_errors} publish errors, {missing} missing, {duplicates} duplicates; {bytes_per_event:.0} bytes read per delivery",
        peer.name(),
        if c.transport == Transport::WebSockets { String::new() } else { format!(" over {}", c.transport.name()) },
        if peer.has_groups() { regions.len() } else { 1 },
        args.events,
        if open_loop { format!(" at {} /s (max {:.0} ms behind schedule)", args.rate, behind.as_secs_f64() * 1000.0) } else { format!(", {} in flight", args.concurrency) },
        http_p.human(),
        p.human(),
    );
    let mut fields = json!({
        "peer": peer.name(),
        "transport": c.transport.name(),
        "clients": c.clients,
        "connected": connected,
        "stalled": stalled_count,
        "stalled_join_all": args.stalled_join_all,
        "contractors": contractor_count,
        "regions": regions.len(),
        "events": args.events,
        "rate": if open_loop { json!(args.rate) } else { Value::Null },
        "concurrency": if open_loop { Value::Null } else { json!(args.concurrency) },
        "behind_schedule_max_ms": round(behind.as_secs_f64() * 1000.0, 1),
        "send_seconds": round(send_seconds, 3),
        "publish_seconds": round(publish_seconds, 3),
        "publishes_per_s": round(publishes_per_s, 1),
        "connect_seconds": round(connect_seconds, 3),
        "deliveries": delivered,
        "expected": expected,
        "missing": missing,
        "duplicates": duplicates,
        "connect_errors": connect_errors,
        "publish_errors": publish_errors,
        "seconds": round(window, 3),
        "messages_per_s": round(rate, 1),
        "bytes_per_event": round(bytes_per_event, 1),
    });
    http_p.insert_into(&mut fields, "http");
    p.insert_into(&mut fields, "latency");
    println!("{}", json_line("fanout", fields));
    Ok(connect_errors == 0 && publish_errors == 0 && missing == 0 && duplicates == 0)
}

/// How one publish went.
struct Outcome {
    event: usize,
    ok: bool,
    /// Request sent → answer read.
    latency: Duration,
    /// When the answer was read.
    at: Instant,
}

/// Publishes event `j`, noting when it was sent.
async fn publish_one(
    publisher: Arc<Publisher>,
    http: reqwest::Client,
    t: Arc<Target>,
    shared: Arc<Shared>,
    j: usize,
    _permit: tokio::sync::OwnedSemaphorePermit,
) -> Outcome {
    let sent = Instant::now();
    shared.sent[j].store(sent.saturating_duration_since(shared.epoch).as_nanos() as u64 + 1, Ordering::Release);
    let result = match &*publisher {
        Publisher::Assign(pairs) => assign(&http, &t, &pairs[j].0, &pairs[j].1).await,
        Publisher::Post(url, bodies) => {
            async {
                let res =
                    http.post(url).header("content-type", "application/json").body(bodies[j].clone()).send().await?;
                let status = res.status();
                let _ = res.bytes().await?;
                if !status.is_success() {
                    eprintln!("ss-bench: publish {j}: {status}");
                }
                anyhow::Ok(status.is_success())
            }
            .await
        }
    };
    let ok = result.unwrap_or_else(|e| {
        eprintln!("ss-bench: publish {j}: {e:#}");
        false
    });
    let at = Instant::now();
    Outcome { event: j, ok, latency: at - sent, at }
}

// ---------------------------------------------------------------- idle

async fn idle(args: IdleArgs) -> Result<bool> {
    let t = &args.target;
    let c = &args.conns;
    let regions = region_names(t, c.regions);
    let endpoint = Endpoint::new(&t.base, &t.token).await?;
    let shared = shared(c, t, endpoint, &[])?;
    let before = ProcSample::read(args.server_pid).context("server process")?;
    let plans = (0..c.clients)
        .map(|i| Plan {
            group: Group::Dispatch(regions[i % regions.len()].clone()),
            source: (!c.source_addrs.is_empty()).then(|| c.source_addrs[i % c.source_addrs.len()]),
            expected: usize::MAX,
            stalled: false,
            also: Vec::new(),
            small_window: false,
        })
        .collect();
    let subs = Subscribers::open(&shared, plans).await;
    tokio::time::sleep(Duration::from_secs(args.settle)).await;
    let after = ProcSample::read(args.server_pid)?;
    tokio::time::sleep(Duration::from_secs(args.hold)).await;
    let end = ProcSample::read(args.server_pid)?;
    let (connected, connect_errors, connect_seconds) = (subs.connected, subs.connect_errors, subs.connect_seconds);
    subs.finish(Duration::ZERO).await?;

    let per_conn = (after.rss_kib as f64 - before.rss_kib as f64) / connected.max(1) as f64;
    let cpu_seconds = end.cpu_ticks.saturating_sub(after.cpu_ticks) as f64 / args.clk_tck as f64;
    let cpu_percent = 100.0 * cpu_seconds / args.hold as f64;
    println!(
        "idle [{}]: {connected} joined connections ({connect_errors} failed, {connect_seconds:.1} s to open): server RSS {} KiB -> {} KiB = {per_conn:.1} KiB per connection; {cpu_seconds:.2} s CPU over {} s idle ({cpu_percent:.2}% of a core); RSS at the end {} KiB",
        c.peer.name(),
        before.rss_kib,
        after.rss_kib,
        args.hold,
        end.rss_kib,
    );
    println!(
        "{}",
        json_line(
            "idle",
            json!({
                "peer": c.peer.name(),
                "transport": c.transport.name(),
                "clients": c.clients,
                "connected": connected,
                "connect_errors": connect_errors,
                "connect_seconds": round(connect_seconds, 3),
                "rss_before_kib": before.rss_kib,
                "rss_after_kib": after.rss_kib,
                "rss_end_kib": end.rss_kib,
                "kib_per_connection": round(per_conn, 2),
                "hold_seconds": args.hold,
                "cpu_seconds": round(cpu_seconds, 3),
                "cpu_percent": round(cpu_percent, 3),
            })
        )
    );
    Ok(connect_errors == 0)
}
