//! Percentiles, rounding and the one-line JSON results, plus the server-side
//! samples read from `/proc` (RSS, CPU time; the server's, and PostgreSQL's processes').

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Value};

/// Nearest-rank percentiles, in milliseconds.
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    /// From durations.
    pub fn of(samples: Vec<Duration>) -> Self {
        Self::of_micros(samples.into_iter().map(|d| d.as_micros().min(u32::MAX as u128) as u32).collect())
    }

    /// From microseconds.
    pub fn of_micros(mut samples: Vec<u32>) -> Self {
        samples.sort_unstable();
        let at = |p: f64| -> f64 {
            if samples.is_empty() {
                return f64::NAN;
            }
            let rank = ((p * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
            f64::from(samples[rank - 1]) / 1000.0
        };
        Self { p50: at(0.50), p99: at(0.99), p999: at(0.999), max: at(1.0) }
    }

    /// `p50 … ms, p99 … ms, p99.9 … ms, max … ms`.
    pub fn human(&self) -> String {
        format!("p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms", self.p50, self.p99, self.p999, self.max)
    }

    /// Adds `{prefix}_p50_ms` … `{prefix}_max_ms` to a JSON object.
    pub fn insert_into(&self, fields: &mut Value, prefix: &str) {
        for (name, value) in [("p50", self.p50), ("p99", self.p99), ("p999", self.p999), ("max", self.max)] {
            fields[format!("{prefix}_{name}_ms")] = round(value, 3);
        }
    }
}

/// `x` rounded to `digits` decimals; `null` when not finite.
pub fn round(x: f64, digits: i32) -> Value {
    if x.is_finite() {
        let f = 10f64.powi(digits);
        json!((x * f).round() / f)
    } else {
        Value::Null
    }
}

/// `{"scenario":NAME,…fields}` on one line, the scenario first (serde_json sorts keys).
pub fn json_line(scenario: &str, fields: Value) -> String {
    let body = fields.to_string();
    let rest = body.strip_prefix('{').unwrap_or(&body);
    if rest == "}" {
        format!("{{\"scenario\":{}}}", json!(scenario))
    } else {
        format!("{{\"scenario\":{},{rest}", json!(scenario))
    }
}

/// A process's resident set (`VmRSS`, KiB) and CPU time (user + system, in clock ticks).
#[derive(Debug, Clone, Copy)]
pub struct ProcSample {
    pub rss_kib: u64,
    pub cpu_ticks: u64,
}

impl ProcSample {
    /// Reads `/proc/{pid}/status` and `/proc/{pid}/stat`.
    pub fn read(pid: u32) -> std::io::Result<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let rss_kib = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| std::io::Error::other("no VmRSS"))?;
        Ok(Self { rss_kib, cpu_ticks: cpu_ticks(pid)? })
    }
}

/// A process's CPU time, user + system, in clock ticks (`/proc/{pid}/stat`).
pub fn cpu_ticks(pid: u32) -> std::io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let tick = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    Ok(tick(11) + tick(12))
}

/// The CPU ticks of every process named `postgres` (`/proc/PID/comm`), each marked when it is
/// a backend of one database: the server is shared, and its other clients' work is not ours.
pub struct PostgresSample {
    /// pid → (ticks, a backend of the database).
    processes: HashMap<u32, (u64, bool)>,
}

/// What the `postgres` processes spent between two samples.
pub struct PostgresCpu {
    /// Every `postgres` process (including other clients' backends and the shared writers).
    pub all_ticks: u64,
    /// The backends of the database only.
    pub database_ticks: u64,
    /// Processes in both samples.
    pub kept: usize,
    /// Started between the samples: all their ticks are counted, since a process's
    /// counters start at zero when it is forked.
    pub appeared: usize,
    /// Ended between the samples: what they spent after the first sample is lost.
    pub gone: usize,
}

impl PostgresSample {
    /// Reads every `/proc/PID`; a backend of `database` has it as a word of its title
    /// (`postgres: [CLUSTER:] USER DATABASE HOST(PORT) STATE`): give it a name no user has.
    pub fn read(database: &str) -> std::io::Result<Self> {
        let mut processes = HashMap::new();
        for entry in std::fs::read_dir("/proc")? {
            let Some(pid) = entry?.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else { continue };
            // A process may end between the listing and the reads: skip it.
            let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) else { continue };
            if comm.trim_end() != "postgres" {
                continue;
            }
            let Ok(ticks) = cpu_ticks(pid) else { continue };
            let title = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let title = String::from_utf8_lossy(&title);
            let ours = title.starts_with("postgres:") && title.split_whitespace().any(|word| word == database);
            processes.insert(pid, (ticks, ours));
        }
        Ok(Self { processes })
    }

    /// The ticks spent since `before`.
    pub fn since(&self, before: &Self) -> PostgresCpu {
        let mut cpu = PostgresCpu { all_ticks: 0, database_ticks: 0, kept: 0, appeared: 0, gone: 0 };
        for (pid, &(ticks, ours)) in &self.processes {
            let spent = match before.processes.get(pid) {
                Some(&(earlier, _)) => {
                    cpu.kept += 1;
                    ticks.saturating_sub(earlier)
                }
                None => {
                    cpu.appeared += 1;
                    ticks
                }
            };
            cpu.all_ticks += spent;
            if ours {
                cpu.database_ticks += spent;
            }
        }
        cpu.gone = before.processes.keys().filter(|pid| !self.processes.contains_key(pid)).count();
        cpu
    }
}
