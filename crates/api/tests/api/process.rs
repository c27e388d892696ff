//! Tests that run the real `smartscheduler` binary as a process: crash
//! safety under SIGKILL, graceful stop on SIGTERM, start-up logging.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const SECRET: &str = "process-test-secret-0123456789abcdef";

pub(super) struct Server {
    pub(super) child: Child,
    pub(super) base: String,
    /// Every stderr line, for assertions about logs.
    pub(super) lines: mpsc::Receiver<String>,
}

fn start(dir: &Path) -> Server {
    start_with(dir, &[])
}

/// Starts the binary with `env` added (or overriding the defaults below).
pub(super) fn start_with(dir: &Path, env: &[(&str, &str)]) -> Server {
    start_without(dir, &[], env)
}

/// Starts the binary without the variables `unset` (of the defaults below),
/// with `env` added.
fn start_without(dir: &Path, unset: &[&str], env: &[(&str, &str)]) -> Server {
    let mut command = Command::new(env!("CARGO_BIN_EXE_smartscheduler"));
    command
        .arg("serve")
        .env("SMARTSCHEDULER_BIND", "127.0.0.1:0")
        .env("SMARTSCHEDULER_DATABASE_URL", format!("sqlite://{}/db.sqlite", dir.display()))
        .env("SMARTSCHEDULER_JWT_SECRET", SECRET)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info");
    for name in unset {
        command.env_remove(name);
    }
    let mut child = command
        .envs(env.iter().copied())
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let line = match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => line,
            Err(err) => {
                // Leave no server running behind a failed test.
                let _ = child.kill();
                let _ = child.wait();
                panic!("no 'listening on' line within 30 s (the server exited, or said nothing): {err}");
            }
        };
        if let Some(at) = line.find("listening on http://") {
            let rest = &line[at + "listening on ".len()..];
            // Text or JSON logs: the address ends at a space, a colour code or a quote.
            let base: String = rest.chars().take_while(|c| !c.is_whitespace() && *c != '\u{1b}' && *c != '"').collect();
            return Server { child, base, lines: rx };
        }
    }
}

pub(super) fn token(role: &str, regions: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_smartscheduler"))
        .args(["token", "--role", role, "--jwt-secret", SECRET])
        .args(regions.iter().flat_map(|r| ["--region", r]))
        .output()
        .expect("token runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

async fn post(client: &reqwest::Client, url: String, token: &str, body: Value) -> reqwest::Result<reqwest::Response> {
    client.post(url).bearer_auth(token).json(&body).send().await
}

/// A new contractor named `name` and a new job, both in `north`.
pub(super) async fn contractor_and_job(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    name: &str,
) -> (Value, Value) {
    let contractor = post(client, format!("{base}/api/contractors"), token, json!({"name": name, "region": "north"}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let job = post(
        client,
        format!("{base}/api/jobs"),
        token,
        json!({"jobType": "Flooring", "region": "north", "durationMinutes": 60}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    (contractor, job)
}

/// Every EventLog row (one page of up to 1000 holds them all here).
async fn all_events(client: &reqwest::Client, base: &str, token: &str) -> Vec<Value> {
    let page: Value = client
        .get(format!("{base}/api/events?limit=1000"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    page["items"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_in_the_middle_of_a_burst_loses_no_committed_event_and_adds_none() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path());
    let admin = token("Admin", &[]);
    let client = reqwest::Client::new();
    const N: usize = 300;

    // Arrange: N jobs and N contractors, so every assignment can succeed.
    let mut pairs = Vec::with_capacity(N);
    for i in 0..N {
        let (c, j) = contractor_and_job(&client, &server.base, &admin, &format!("C{i}")).await;
        pairs.push((j["id"].as_str().unwrap().to_owned(), c["id"].as_str().unwrap().to_owned()));
    }

    // Act: fire the burst, SIGKILL once a third of it has answered.
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    for (job, contractor) in pairs.clone() {
        let client = client.clone();
        let url = format!("{}/api/jobs/{job}/assign", server.base);
        let admin = admin.clone();
        let done = done_tx.clone();
        tokio::spawn(async move {
            let body = json!({"contractorId": contractor, "startUtc": "2030-01-01T09:00:00Z", "endUtc": "2030-01-01T10:00:00Z"});
            let outcome = match post(&client, url, &admin, body).await {
                Ok(r) if r.status() == 201 => Some(r.json::<Value>().await.ok()),
                Ok(_) => Some(None),
                Err(_) => Some(None),
            };
            let _ = done.send((job, outcome.flatten()));
        });
    }
    drop(done_tx);
    let mut answered = Vec::new();
    let mut killed = false;
    while let Some((job, created)) = done_rx.recv().await {
        answered.push((job, created));
        if !killed && answered.len() >= N / 3 {
            server.child.kill().unwrap(); // SIGKILL
            killed = true;
        }
    }
    server.child.wait().unwrap();
    assert!(killed);
    let created: Vec<Value> = answered.iter().filter_map(|(_, c)| c.clone()).collect();
    assert!(created.len() >= N / 3, "at least the answers before the kill were 201");
    eprintln!("burst: {} of {N} answered 201 before the kill", created.len());
    assert!(created.len() < N, "the kill landed after the whole burst: nothing was tested");

    // Restart on the same database.
    let server = start(dir.path());
    let deadline = Instant::now() + Duration::from_secs(30);
    let rows = loop {
        let rows = all_events(&client, &server.base, &admin).await;
        if rows.iter().all(|r| r["status"] == "Published") {
            break rows;
        }
        assert!(Instant::now() < deadline, "Pending rows left 30 s after the restart");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // Assert: every 201 has exactly one Published row, with its sequence.
    let mut by_event = std::collections::HashMap::new();
    for row in &rows {
        assert!(
            by_event.insert(row["eventId"].as_str().unwrap().to_owned(), row.clone()).is_none(),
            "an event id appears twice"
        );
    }
    for assignment in &created {
        let row = by_event.get(assignment["eventId"].as_str().unwrap()).expect("every 201 has its EventLog row");
        assert_eq!(row["status"], "Published");
        assert_eq!(row["payload"]["assignmentId"], assignment["assignmentId"]);
        assert!(row["sequence"].as_i64().unwrap() > 0);
    }
    // No row without its assignment and no assignment without its row: the
    // assigned jobs and the rows are the same set, one row per job.
    let assigned: Value = client
        .get(format!("{}/api/jobs?status=Assigned&limit=1000", server.base))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut assigned_jobs: Vec<String> =
        assigned.as_array().unwrap().iter().map(|j| j["id"].as_str().unwrap().to_owned()).collect();
    let mut row_jobs: Vec<String> = rows.iter().map(|r| r["payload"]["jobId"].as_str().unwrap().to_owned()).collect();
    assigned_jobs.sort();
    row_jobs.sort();
    assert_eq!(assigned_jobs, row_jobs);
    // Sequences are unique.
    let mut sequences: Vec<i64> = rows.iter().map(|r| r["sequence"].as_i64().unwrap()).collect();
    sequences.sort_unstable();
    sequences.dedup();
    assert_eq!(sequences.len(), rows.len());
    drop(server);
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_service_cleanly_with_exit_code_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path());
    let client = reqwest::Client::new();
    assert_eq!(client.get(format!("{}/health/ready", server.base)).send().await.unwrap().status(), 200);

    let started = Instant::now();
    let status = Command::new("kill").args(["-TERM", &server.child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let exit = loop {
        if let Some(exit) = server.child.try_wait().unwrap() {
            break exit;
        }
        assert!(started.elapsed() < Duration::from_secs(12), "still running 12 s after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "exit status {exit:?}");
    let lines: Vec<String> = server.lines.try_iter().collect();
    assert!(lines.iter().any(|l| l.contains("stopped")), "logs: {lines:#?}");
}

/// The JSON log line of `message` whose spans include `request_id`, waiting
/// up to 10 s; every line read on the way is added to `seen`.
fn log_line(server: &Server, message: &str, request_id: &str, seen: &mut Vec<String>) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let line = server
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("no '{message}' log line for request {request_id} within 10 s"));
        let Ok(value) = serde_json::from_str::<Value>(&line) else {
            panic!("a log line that is not JSON: {line}");
        };
        seen.push(line);
        let spans = value["spans"].as_array().cloned().unwrap_or_default();
        if value["fields"]["message"] == message && spans.iter().any(|s| s["request_id"] == request_id) {
            return value;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_runs_from_the_assign_request_to_the_delivery_of_its_event_in_json_logs() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with(
        dir.path(),
        &[("SMARTSCHEDULER_LOG_FORMAT", "json"), ("RUST_LOG", "info,smartscheduler_application=debug")],
    );
    let admin = token("Admin", &[]);
    let client = reqwest::Client::new();
    let (contractor, job) = contractor_and_job(&client, &server.base, &admin, "Traced").await;

    let request_id = "trace-me-0123456789";
    let response = client
        .post(format!("{}/api/jobs/{}/assign", server.base, job["id"].as_str().unwrap()))
        .bearer_auth(&admin)
        .header("X-Request-Id", request_id)
        .json(&json!({
            "contractorId": contractor["id"],
            "startUtc": "2030-01-01T09:00:00Z",
            "endUtc": "2030-01-01T10:00:00Z"
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["x-request-id"], request_id);
    let assignment: Value = response.json().await.unwrap();

    // The delivery runs in the relay's task, yet its log line sits in the
    // request's trace: http_request > assign_job > deliver.
    let mut seen = Vec::new();
    let delivered = log_line(&server, "event delivered", request_id, &mut seen);
    let spans = delivered["spans"].as_array().unwrap();
    let names: Vec<&str> = spans.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["http_request", "assign_job", "deliver"], "{delivered}");
    let assign = &spans[1];
    assert_eq!(assign["job_id"], job["id"], "{delivered}");
    assert_eq!(assign["contractor_id"], contractor["id"], "{delivered}");
    assert_eq!(assign["assignment_id"], assignment["assignmentId"], "{delivered}");
    assert_eq!(assign["event_id"], assignment["eventId"], "{delivered}");
    assert_eq!(spans[2]["event_id"], assignment["eventId"], "{delivered}");
    assert!(spans[2]["sequence"].as_i64().is_some_and(|s| s >= 1), "{delivered}");
    // The token never reaches the logs.
    seen.extend(server.lines.try_iter());
    assert!(seen.iter().any(|l| l.contains("\"request\"")), "request lines are logged: {seen:#?}");
    assert!(seen.iter().all(|l| !l.contains(&admin)), "a log line holds the bearer token");
}

#[test]
fn the_token_command_refuses_a_contractor_without_an_id() {
    let out = Command::new(env!("CARGO_BIN_EXE_smartscheduler"))
        .args(["token", "--role", "Contractor", "--jwt-secret", SECRET])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--contractor-id"));
}

fn run(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_smartscheduler")).args(args).output().unwrap()
}

/// The claims of a token, decoded (the signature is the service's business).
fn claims(token: &str) -> Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).expect("a JWT has three parts");
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

#[test]
fn the_token_command_takes_a_role_in_any_case_and_signs_the_contracts_spelling() {
    let out = run(&["token", "--role", "dispatcher", "--region", "north", "--jwt-secret", SECRET]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let claims = claims(String::from_utf8_lossy(&out.stdout).trim());
    assert_eq!(claims["role"], "Dispatcher");
    assert_eq!(claims["regions"], serde_json::json!(["north"]));
    let out = run(&["token", "--role", "Dispatch", "--region", "north", "--jwt-secret", SECRET]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Admin, Dispatcher or Contractor"));
}

#[test]
fn the_token_command_refuses_a_dispatcher_without_a_region() {
    let out = run(&["token", "--role", "Dispatcher", "--jwt-secret", SECRET]);
    assert!(!out.status.success(), "a dispatcher token for no region was minted");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--region"));
}

#[test]
fn the_top_level_help_lists_the_sub_commands_not_every_serve_setting() {
    let top = String::from_utf8(run(&["--help"]).stdout).unwrap();
    assert!(top.contains("serve") && top.contains("token") && top.contains("demo"), "{top}");
    assert!(!top.contains("--database-url"), "the serve settings are repeated at the top: {top}");
    assert!(!top.contains("wired to the adapters"), "{top}");
    assert!(!top.contains("Boxed"), "an implementation note in the help: {top}");
    let serve = String::from_utf8(run(&["serve", "--help"]).stdout).unwrap();
    assert!(serve.contains("--database-url") && serve.contains("SMARTSCHEDULER_PUBLISHER_LEASE_MS"), "{serve}");
}

#[test]
fn demo_tells_to_start_the_service_only_when_nothing_answers_at_its_address() {
    let dir = tempfile::tempdir().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let running = listener.local_addr().unwrap().to_string();
    let stopped = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().to_string()
    };
    let demo = |bind: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_smartscheduler"))
            .arg("demo")
            .current_dir(dir.path())
            .env("SMARTSCHEDULER_JWT_SECRET", SECRET)
            .env("SMARTSCHEDULER_BIND", bind)
            .env_remove("SMARTSCHEDULER_DATABASE_URL")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let seeded = demo(&stopped);
    assert!(seeded.contains("start the service"), "{seeded}");
    let again = demo(&running);
    assert!(again.contains("the service is running there") && !again.contains("start the service"), "{again}");
    drop(listener);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_are_logged_below_error_so_callers_cannot_fill_the_error_log() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with(dir.path(), &[("SMARTSCHEDULER_LOG_FORMAT", "json"), ("RUST_LOG", "debug")]);
    let admin = token("Admin", &[]);
    let client = reqwest::Client::new();
    let (contractor, job) = contractor_and_job(&client, &server.base, &admin, "Logged").await;
    let assign = |job_id: String| {
        let body = json!({
            "contractorId": contractor["id"],
            "startUtc": "2030-01-01T09:00:00Z",
            "endUtc": "2030-01-01T10:00:00Z"
        });
        post(&client, format!("{}/api/jobs/{job_id}/assign", server.base), &admin, body)
    };
    let job_id = job["id"].as_str().unwrap().to_owned();
    assert_eq!(assign(job_id.clone()).await.unwrap().status(), 201);
    assert_eq!(assign(job_id).await.unwrap().status(), 409);
    assert_eq!(assign(uuid::Uuid::new_v4().to_string()).await.unwrap().status(), 404);
    let unauthenticated = client.get(format!("{}/api/jobs", server.base)).send().await.unwrap();
    assert_eq!(unauthenticated.status(), 401);
    let last = client
        .get(format!("{}/no/such/route", server.base))
        .header("X-Request-Id", "last-client-error")
        .send()
        .await
        .unwrap();
    assert_eq!(last.status(), 404);

    let mut seen = Vec::new();
    log_line(&server, "request", "last-client-error", &mut seen);
    seen.extend(server.lines.try_iter());
    let errors: Vec<&String> = seen.iter().filter(|l| l.contains(r#""level":"ERROR""#)).collect();
    assert!(errors.is_empty(), "client errors logged at ERROR: {errors:#?}");
    let statuses: Vec<i64> = seen
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["fields"]["message"] == "request")
        .filter_map(|v| v["fields"]["status"].as_i64())
        .collect();
    for status in [409, 404, 401] {
        assert!(statuses.contains(&status), "the {status} is still in the request log: {statuses:?}");
    }
}

/// Runs the binary with `args` and `env` until it exits (at most 30 s);
/// returns whether it succeeded and its stderr.
fn run_to_exit(args: &[&str], env: &[(&str, &str)], dir: &Path) -> (bool, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_smartscheduler"))
        .args(args)
        .env_remove("SMARTSCHEDULER_JWT_SECRET")
        .env("SMARTSCHEDULER_BIND", "127.0.0.1:0")
        .env("SMARTSCHEDULER_DATABASE_URL", "sqlite::memory:")
        .env("NO_COLOR", "1")
        .envs(env.iter().copied())
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`smartscheduler {}` still runs after 30 s", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status.success(), stderr)
}

#[test]
fn a_token_secret_shorter_than_32_bytes_is_refused_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let short = [("SMARTSCHEDULER_JWT_SECRET", "only-31-bytes-long-0123456789ab")];
    for args in [&["serve"][..], &["token", "--role", "Admin"][..]] {
        let (ok, stderr) = run_to_exit(args, &short, dir.path());
        assert!(!ok, "`{}` accepted a 31-byte secret; stderr: {stderr}", args.join(" "));
        assert!(stderr.contains("at least 32"), "`{}` does not say why: {stderr}", args.join(" "));
    }
    let exact = [("SMARTSCHEDULER_JWT_SECRET", "exactly-32-bytes-long-0123456789")];
    let (ok, stderr) = run_to_exit(&["token", "--role", "Admin"], &exact, dir.path());
    assert!(ok, "a 32-byte secret is refused: {stderr}");
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generated_secret_and_the_sqlite_database_are_owner_only() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_dir = data.display().to_string();
    let server = start_without(
        dir.path(),
        &["SMARTSCHEDULER_JWT_SECRET", "SMARTSCHEDULER_DATABASE_URL"],
        &[("SMARTSCHEDULER_DATA_DIR", &data_dir)],
    );
    let client = reqwest::Client::new();
    assert_eq!(client.get(format!("{}/health/ready", server.base)).send().await.unwrap().status(), 200);

    assert_eq!(mode(&data.join("jwt-secret")), 0o600, "the generated secret file");
    assert_eq!(mode(&data.join("smartscheduler.db")), 0o600, "the SQLite database");
    for side in ["smartscheduler.db-wal", "smartscheduler.db-shm"] {
        if data.join(side).exists() {
            assert_eq!(mode(&data.join(side)), 0o600, "{side}");
        }
    }
}

#[cfg(unix)]
#[test]
fn an_existing_secret_file_readable_by_others_is_made_owner_only_with_a_warning() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let file = data.join("jwt-secret");
    std::fs::write(&file, "a-shared-secret-left-readable-by-everyone").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();

    let data_dir = data.display().to_string();
    let (ok, stderr) =
        run_to_exit(&["token", "--role", "Admin"], &[("SMARTSCHEDULER_DATA_DIR", &data_dir)], dir.path());
    assert!(ok, "{stderr}");
    assert_eq!(mode(&file), 0o600);
    assert!(stderr.contains("readable by group or others") && stderr.contains("WARN"), "no warning: {stderr}");
}
