//! `cost`: the service's CPU time per operation at a steady rate (issue 18).
//!
//! Sets up what the operation needs over the HTTP API (not measured), sends `--warmup`
//! operations, then `--count` more open loop at `--rate` (each on its schedule, not after
//! the previous answer), and divides the service's CPU time (utime + stime of
//! `/proc/PID/stat`) from just before the first send to just after the last answer by the
//! count. With `--postgres DB` the same for PostgreSQL's processes: the backends of `DB`,
//! and every `postgres` process (which includes the server's other clients).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::stats::{cpu_ticks, json_line, round, Percentiles, PostgresCpu, PostgresSample};
use crate::{assign, create_pairs, http_client, Target};

/// Jobs a `get` run reads, round robin.
const GET_JOBS: usize = 100;

#[derive(Debug, Args)]
pub struct CostArgs {
    #[command(flatten)]
    target: Target,
    /// The service's process id (its /proc/PID/stat is sampled).
    #[arg(long)]
    server_pid: u32,
    /// What is costed.
    #[arg(long, value_enum)]
    operation: Operation,
    /// Operations per second, open loop.
    #[arg(long, default_value_t = 400.0)]
    rate: f64,
    /// Operations measured.
    #[arg(long, default_value_t = 3000)]
    count: usize,
    /// Operations sent at the rate first and not measured (connections, caches, pools warm up).
    #[arg(long, default_value_t = 300)]
    warmup: usize,
    /// Operations in flight at most (beyond it the schedule slips, and the run says so).
    #[arg(long, default_value_t = 256)]
    max_in_flight: usize,
    /// Also cost PostgreSQL's processes; the service's database, to tell its backends apart.
    #[arg(long, value_name = "DATABASE")]
    postgres: Option<String>,
    /// Clock ticks per second of /proc/PID/stat (`getconf CLK_TCK`).
    #[arg(long, default_value_t = 100)]
    clk_tck: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Operation {
    /// `POST /api/jobs/{id}/assign`, each on a fresh (job, contractor) pair.
    Assign,
    /// `GET /api/jobs/{id}`, authenticated, over a few jobs.
    Get,
    /// `GET /health/live`: the HTTP path alone, no token and no database,
    /// to tell a GET's own cost from the request's.
    Live,
}

impl Operation {
    fn name(self) -> &'static str {
        match self {
            Operation::Assign => "assign",
            Operation::Get => "get",
            Operation::Live => "live",
        }
    }
}

/// The operations of a run: operation i uses `pairs[i % len]`.
struct Work {
    operation: Operation,
    pairs: Vec<(String, String)>,
    client: reqwest::Client,
    target: Target,
}

impl Work {
    /// Creates the jobs and contractors (`assign`: one pair per operation, warm-up included).
    async fn set_up(args: &CostArgs) -> Result<Self> {
        let t = &args.target;
        let client = http_client(args.max_in_flight.min(64))?;
        let n = match args.operation {
            Operation::Assign => args.warmup + args.count,
            Operation::Get => GET_JOBS,
            Operation::Live => 1,
        };
        let started = Instant::now();
        let pairs = create_pairs(&client, t, std::slice::from_ref(&t.region), n, 16).await.context("setup")?;
        eprintln!("ss-bench: {n} jobs and contractors created in {:.1} s", started.elapsed().as_secs_f64());
        Ok(Self { operation: args.operation, pairs, client, target: t.clone() })
    }

    /// Operation `i`; `Ok(true)` when it succeeded.
    async fn run(&self, i: usize) -> Result<bool> {
        let (job, contractor) = &self.pairs[i % self.pairs.len()];
        match self.operation {
            Operation::Assign => assign(&self.client, &self.target, job, contractor).await,
            Operation::Get => self.get(&format!("/api/jobs/{job}"), true).await,
            Operation::Live => self.get("/health/live", false).await,
        }
    }

    /// A GET of `path`, with the token when `authenticated`; `Ok(true)` on 200.
    async fn get(&self, path: &str, authenticated: bool) -> Result<bool> {
        let url = format!("{}{path}", self.target.base.trim_end_matches('/'));
        let mut request = self.client.get(url);
        if authenticated {
            request = request.bearer_auth(&self.target.token);
        }
        let res = request.send().await?;
        let status = res.status();
        let _ = res.bytes().await?;
        if status != reqwest::StatusCode::OK {
            eprintln!("ss-bench: GET {path}: {status}");
        }
        Ok(status == reqwest::StatusCode::OK)
    }
}

/// How a stretch of operations went.
struct Phase {
    latencies: Vec<Duration>,
    errors: usize,
    /// First send → last answer.
    seconds: f64,
    /// The most an operation was sent after its due time.
    behind: Duration,
}

/// Sends operations `from..from + n` open loop at `rate`, at most `max_in_flight` at once,
/// and waits for every answer.
async fn open_loop(work: &Arc<Work>, from: usize, n: usize, rate: f64, max_in_flight: usize) -> Result<Phase> {
    let limit = Arc::new(Semaphore::new(max_in_flight.max(1)));
    let mut tasks = JoinSet::new();
    let mut outcomes = Vec::with_capacity(n);
    let started = Instant::now();
    let mut behind = Duration::ZERO;
    for k in 0..n {
        let due = started + Duration::from_secs_f64(k as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let permit = limit.clone().acquire_owned().await?;
        behind = behind.max(Instant::now().saturating_duration_since(due));
        let work = work.clone();
        tasks.spawn(async move {
            let _permit = permit;
            let sent = Instant::now();
            let ok = work.run(from + k).await.unwrap_or_else(|e| {
                eprintln!("ss-bench: {} {}: {e:#}", work.operation.name(), from + k);
                false
            });
            (sent.elapsed(), ok)
        });
        // Collect the finished ones as we go, so that the set stays small.
        while let Some(done) = tasks.try_join_next() {
            outcomes.push(done?);
        }
    }
    while let Some(done) = tasks.join_next().await {
        outcomes.push(done?);
    }
    let seconds = started.elapsed().as_secs_f64();
    let errors = outcomes.iter().filter(|(_, ok)| !ok).count();
    let latencies = outcomes.into_iter().filter(|(_, ok)| *ok).map(|(d, _)| d).collect();
    Ok(Phase { latencies, errors, seconds, behind })
}

pub async fn cost(args: CostArgs) -> Result<bool> {
    if args.rate <= 0.0 || args.count == 0 {
        bail!("--rate and --count must be positive");
    }
    let op = args.operation.name();
    let work = Arc::new(Work::set_up(&args).await?);
    if args.warmup > 0 {
        let warm = open_loop(&work, 0, args.warmup, args.rate, args.max_in_flight).await?;
        eprintln!("ss-bench: {} warm-up {op}s in {:.2} s, {} errors", args.warmup, warm.seconds, warm.errors);
    }

    let pg_before = args.postgres.as_deref().map(PostgresSample::read).transpose().context("postgres processes")?;
    let before = cpu_ticks(args.server_pid).context("server process")?;
    let phase = open_loop(&work, args.warmup, args.count, args.rate, args.max_in_flight).await?;
    let after = cpu_ticks(args.server_pid).context("server process")?;
    let pg = match (&args.postgres, pg_before) {
        (Some(database), Some(before)) => Some(PostgresSample::read(database)?.since(&before)),
        _ => None,
    };

    let per_op = |ticks: u64| ticks as f64 * 1e6 / args.clk_tck as f64 / args.count as f64;
    let server_us = per_op(after.saturating_sub(before));
    let resolution_us = per_op(1);
    let achieved = args.count as f64 / phase.seconds;
    let p = Percentiles::of(phase.latencies);
    let pg_human = pg.as_ref().map_or(String::new(), |pg| pg_human(pg, &per_op));
    println!(
        "cost [{op}]: {} at {} /s (achieved {achieved:.1} /s, max {:.0} ms behind schedule), {} errors: service CPU {server_us:.1} µs per {op} (resolution {resolution_us:.1} µs){pg_human}; HTTP {}",
        args.count,
        args.rate,
        phase.behind.as_secs_f64() * 1000.0,
        phase.errors,
        p.human(),
    );
    let mut fields = json!({
        "operation": op,
        "rate": args.rate,
        "count": args.count,
        "warmup": args.warmup,
        "errors": phase.errors,
        "seconds": round(phase.seconds, 3),
        "achieved_per_s": round(achieved, 1),
        "behind_schedule_max_ms": round(phase.behind.as_secs_f64() * 1000.0, 1),
        "clk_tck": args.clk_tck,
        "resolution_us_per_op": round(resolution_us, 2),
        "server_cpu_us_per_op": round(server_us, 1),
    });
    if let Some(pg) = &pg {
        fields["pg_database_cpu_us_per_op"] = round(per_op(pg.database_ticks), 1);
        fields["pg_all_cpu_us_per_op"] = round(per_op(pg.all_ticks), 1);
        fields["pg_processes_kept"] = json!(pg.kept);
        fields["pg_processes_appeared"] = json!(pg.appeared);
        fields["pg_processes_gone"] = json!(pg.gone);
    }
    p.insert_into(&mut fields, "latency");
    println!("{}", json_line("cost", fields));
    Ok(phase.errors == 0)
}

/// `; PostgreSQL … µs per op (its backends), … (all its processes)`, and what came and went.
fn pg_human(pg: &PostgresCpu, per_op: &dyn Fn(u64) -> f64) -> String {
    format!(
        "; PostgreSQL CPU {:.1} µs per op in the database's backends, {:.1} µs in all its processes ({} kept, {} appeared and counted whole, {} gone)",
        per_op(pg.database_ticks),
        per_op(pg.all_ticks),
        pg.kept,
        pg.appeared,
        pg.gone
    )
}
