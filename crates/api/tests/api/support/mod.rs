//! Test support: a fresh service per test (port 0, in-memory SQLite), a
//! client with one method per endpoint, tokens per role, and assertions on
//! problem documents and the EventLog.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::header::CONTENT_TYPE;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::{json, Value};
use smartscheduler_api::{Application, ServeConfig};
use smartscheduler_infrastructure::{Claims, JwtTokens};
use uuid::Uuid;

/// The token secret of every test service.
pub const SECRET: &str = "black-box-test-secret-0123456789abcdef";

/// A start and end that every helper uses unless a test needs others.
pub const START: &str = "2030-01-15T09:00:00Z";
/// See [`START`].
pub const END: &str = "2030-01-15T11:00:00Z";

/// A running service and a client for it.
pub struct TestApp {
    /// `http://127.0.0.1:PORT`.
    pub address: String,
    /// Shared, keep-alive client (cheap to clone).
    pub client: reqwest::Client,
    tokens: JwtTokens,
}

/// Starts a fresh service (its own in-memory database) on a free port.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(ServeConfig::for_tests(SECRET), smartscheduler_application::HandlerRegistry::new()).await
}

/// Starts a service with `config` and extra event handlers (registered
/// before the hub's own).
pub async fn spawn_app_with(config: ServeConfig, handlers: smartscheduler_application::HandlerRegistry) -> TestApp {
    let app = Application::build_with(config, handlers).await.expect("the service builds");
    let port = app.port();
    tokio::spawn(app.run_until_stopped());
    let client = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().expect("a client");
    TestApp {
        address: format!("http://127.0.0.1:{port}"),
        client,
        tokens: JwtTokens::hs256(SECRET.as_bytes()).expect("a usable secret"),
    }
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("after the epoch").as_secs()
}

/// Claims valid for an hour.
pub fn claims(role: &str, regions: &[&str], contractor_id: Option<Uuid>) -> Claims {
    let now = now_secs();
    Claims {
        sub: format!("{}-user", role.to_lowercase()),
        role: role.to_owned(),
        regions: regions.iter().map(|r| (*r).to_owned()).collect(),
        contractor_id: contractor_id.map(|id| id.to_string()),
        exp: now + 3600,
        iat: Some(now),
        ..Claims::default()
    }
}

/// Signs `claims` with `secret`.
pub fn sign(secret: &str, claims: &Claims) -> String {
    JwtTokens::hs256(secret.as_bytes()).expect("a usable secret").issue(claims).expect("a signed token")
}

impl TestApp {
    // ------------------------------------------------------------------
    // Tokens
    // ------------------------------------------------------------------

    /// Signs `claims` with the service's secret.
    pub fn token(&self, claims: &Claims) -> String {
        self.tokens.issue(claims).expect("a signed token")
    }
    /// An Admin.
    pub fn admin(&self) -> String {
        self.token(&claims("Admin", &[], None))
    }
    /// A Dispatcher of `regions`.
    pub fn dispatcher(&self, regions: &[&str]) -> String {
        self.token(&claims("Dispatcher", regions, None))
    }
    /// A Contractor speaking for `contractor_id`.
    pub fn contractor(&self, contractor_id: Uuid) -> String {
        self.token(&claims("Contractor", &[], Some(contractor_id)))
    }
    /// An Admin token that expired an hour ago (well past any leeway).
    pub fn expired_admin(&self) -> String {
        let mut c = claims("Admin", &[], None);
        c.iat = Some(now_secs() - 7200);
        c.exp = now_secs() - 3600;
        self.token(&c)
    }
    /// An Admin token signed with a secret the service does not know.
    pub fn foreign_admin(&self) -> String {
        sign("some-other-secret-entirely-000000", &claims("Admin", &[], None))
    }

    // ------------------------------------------------------------------
    // Raw requests
    // ------------------------------------------------------------------

    /// A request to `path` (starting with `/`), with a bearer token if given.
    pub fn request(&self, method: Method, path: &str, token: Option<&str>) -> RequestBuilder {
        let builder = self.client.request(method, format!("{}{}", self.address, path));
        match token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    async fn send(&self, builder: RequestBuilder) -> Response {
        builder.send().await.expect("the request is answered")
    }

    /// Sends `request` (a whole HTTP/1.1 request, which should say
    /// `Connection: close`) over a plain socket; returns the status code,
    /// the head and the body of the answer. For what a client library does
    /// not send (chunked bodies of unknown length).
    pub async fn raw_http(&self, request: String) -> (u16, String, String) {
        let address = self.address.trim_start_matches("http://").to_owned();
        tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            let mut stream = std::net::TcpStream::connect(address).expect("a connection");
            stream.set_read_timeout(Some(Duration::from_secs(30))).expect("a timeout");
            // The server may answer before it has read everything.
            let _ = stream.write_all(request.as_bytes());
            let mut answer = Vec::new();
            let _ = stream.read_to_end(&mut answer);
            let answer = String::from_utf8_lossy(&answer).into_owned();
            let (head, body) = answer.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no HTTP answer: {answer:?}"));
            let status = head
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("no status line: {head:?}"));
            (status, head.to_owned(), body.to_owned())
        })
        .await
        .expect("the socket task did not panic")
    }

    /// `GET path` without a token.
    pub async fn get(&self, path: &str) -> Response {
        self.send(self.request(Method::GET, path, None)).await
    }

    // ------------------------------------------------------------------
    // One method per endpoint
    // ------------------------------------------------------------------

    /// `POST /api/contractors`.
    pub async fn post_contractor(&self, token: Option<&str>, body: &Value) -> Response {
        self.send(self.request(Method::POST, "/api/contractors", token).json(body)).await
    }
    /// `GET /api/contractors/{id}`.
    pub async fn get_contractor(&self, token: Option<&str>, id: &str) -> Response {
        self.send(self.request(Method::GET, &format!("/api/contractors/{id}"), token)).await
    }
    /// `GET /api/contractors?{query}`.
    pub async fn list_contractors(&self, token: Option<&str>, query: &str) -> Response {
        self.send(self.request(Method::GET, &format!("/api/contractors?{query}"), token)).await
    }
    /// `POST /api/jobs`.
    pub async fn post_job(&self, token: Option<&str>, body: &Value) -> Response {
        self.send(self.request(Method::POST, "/api/jobs", token).json(body)).await
    }
    /// `GET /api/jobs/{id}`.
    pub async fn get_job(&self, token: Option<&str>, id: &str) -> Response {
        self.send(self.request(Method::GET, &format!("/api/jobs/{id}"), token)).await
    }
    /// `GET /api/jobs?{query}`.
    pub async fn list_jobs(&self, token: Option<&str>, query: &str) -> Response {
        self.send(self.request(Method::GET, &format!("/api/jobs?{query}"), token)).await
    }
    /// `POST /api/jobs/{job_id}/assign`.
    pub async fn assign(&self, token: Option<&str>, job_id: &str, body: &Value) -> Response {
        self.send(self.request(Method::POST, &format!("/api/jobs/{job_id}/assign"), token).json(body)).await
    }
    /// `GET /api/events?{query}`.
    pub async fn list_events(&self, token: Option<&str>, query: &str) -> Response {
        self.send(self.request(Method::GET, &format!("/api/events?{query}"), token)).await
    }
    /// `GET /api/events/{id}`.
    pub async fn get_event(&self, token: Option<&str>, id: &str) -> Response {
        self.send(self.request(Method::GET, &format!("/api/events/{id}"), token)).await
    }
    /// `GET /health/live`.
    pub async fn live(&self) -> Response {
        self.get("/health/live").await
    }
    /// `GET /health/ready`.
    pub async fn ready(&self) -> Response {
        self.get("/health/ready").await
    }

    // ------------------------------------------------------------------
    // Fixtures (each asserts its own success)
    // ------------------------------------------------------------------

    /// Creates a contractor in `region` as Admin; returns its body.
    pub async fn create_contractor(&self, region: &str) -> Value {
        let response = self
            .post_contractor(
                Some(&self.admin()),
                &json!({ "name": "Ana Flores", "region": region, "skills": ["Flooring"] }),
            )
            .await;
        expect_json(response, StatusCode::CREATED).await
    }
    /// Creates a contractor and returns its id.
    pub async fn contractor_id(&self, region: &str) -> String {
        id_of(&self.create_contractor(region).await, "id")
    }
    /// Creates a 120-minute Flooring job in `region` as Admin; returns its body.
    pub async fn create_job(&self, region: &str) -> Value {
        let response = self
            .post_job(
                Some(&self.admin()),
                &json!({
                    "jobType": "Flooring",
                    "region": region,
                    "durationMinutes": 120,
                    "title": "Kitchen floor"
                }),
            )
            .await;
        expect_json(response, StatusCode::CREATED).await
    }
    /// Creates a job and returns its id.
    pub async fn job_id(&self, region: &str) -> String {
        id_of(&self.create_job(region).await, "id")
    }
    /// Assigns `job_id` to `contractor_id` from `start` to `end` as Admin;
    /// returns the Assignment.
    pub async fn assign_ok(&self, job_id: &str, contractor_id: &str, start: &str, end: &str) -> Value {
        let response = self
            .assign(
                Some(&self.admin()),
                job_id,
                &json!({ "contractorId": contractor_id, "startUtc": start, "endUtc": end }),
            )
            .await;
        expect_json(response, StatusCode::CREATED).await
    }

    // ------------------------------------------------------------------
    // The EventLog
    // ------------------------------------------------------------------

    /// Every EventLog row (Pending, Published or Failed), as Admin.
    pub async fn event_rows(&self) -> Vec<Value> {
        let response = self.list_events(Some(&self.admin()), "limit=1000").await;
        let page = expect_json(response, StatusCode::OK).await;
        page["items"].as_array().expect("items is an array").clone()
    }
    /// How many rows the EventLog holds.
    pub async fn event_count(&self) -> usize {
        self.event_rows().await.len()
    }
    /// Polls until at least `count` rows are Published (or `timeout` passes);
    /// returns the Published rows.
    pub async fn wait_for_published(&self, count: usize, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let response = self.list_events(Some(&self.admin()), "status=Published&limit=1000").await;
            let page = expect_json(response, StatusCode::OK).await;
            let items = page["items"].as_array().expect("items").clone();
            if items.len() >= count {
                return items;
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {count} events were Published after {timeout:?}; rows: {:#}",
                items.len(),
                Value::Array(self.event_rows().await)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    /// Polls `GET /api/events/{id}` until the row is Published.
    pub async fn wait_until_event_published(&self, event_id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let response = self.get_event(Some(&self.admin()), event_id).await;
            let row = expect_json(response, StatusCode::OK).await;
            if row["status"] == "Published" {
                return row;
            }
            assert!(Instant::now() < deadline, "event {event_id} is not Published after 5 s: {row:#}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

// ----------------------------------------------------------------------
// Assertions
// ----------------------------------------------------------------------

/// Asserts the status and returns the JSON body.
pub async fn expect_json(response: Response, status: StatusCode) -> Value {
    let actual = response.status();
    let text = response.text().await.expect("a body");
    assert_eq!(actual, status, "unexpected status; body: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Asserts that `response` is a problem document with `status`: content type
/// `application/problem+json`, and `type`, `title`, `status` (equal to the
/// HTTP status) and `detail`. Returns the document.
pub async fn expect_problem(response: Response, status: StatusCode) -> Value {
    let actual = response.status();
    let content_type = response.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let text = response.text().await.expect("a body");
    assert_eq!(actual, status, "unexpected status; body: {text}");
    assert!(
        content_type.starts_with("application/problem+json"),
        "content type of a {status} is {content_type:?}, not application/problem+json; body: {text}"
    );
    let problem: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    for field in ["type", "title", "detail"] {
        assert!(
            problem[field].as_str().is_some_and(|s| !s.is_empty()),
            "problem field {field} is missing or empty: {problem:#}"
        );
    }
    assert_eq!(problem["status"], json!(status.as_u16()), "problem status differs from the HTTP status: {problem:#}");
    problem
}

/// The string field `field` of `value`.
pub fn id_of(value: &Value, field: &str) -> String {
    value[field].as_str().unwrap_or_else(|| panic!("{field} is not a string in {value:#}")).to_owned()
}

/// The sorted keys of a JSON object.
pub fn keys(value: &Value) -> Vec<String> {
    let mut keys: Vec<String> =
        value.as_object().unwrap_or_else(|| panic!("not an object: {value:#}")).keys().cloned().collect();
    keys.sort();
    keys
}

/// Whether `value` is an RFC 3339 UTC time written with `Z`.
pub fn is_utc_z(value: &Value) -> bool {
    value.as_str().is_some_and(|s| {
        s.ends_with('Z') && time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).is_ok()
    })
}

/// Whether `value` is a UUID string.
pub fn is_uuid(value: &Value) -> bool {
    value.as_str().is_some_and(|s| Uuid::parse_str(s).is_ok())
}

/// Sends an assign request that must be refused with `status`, and checks
/// that it wrote nothing to the EventLog.
pub async fn assert_assign_refused(
    app: &TestApp,
    token: Option<&str>,
    job_id: &str,
    body: &Value,
    status: StatusCode,
) -> Value {
    let before = app.event_rows().await;
    let response = app.assign(token, job_id, body).await;
    let problem = expect_problem(response, status).await;
    let after = app.event_rows().await;
    assert_eq!(after.len(), before.len(), "a refused assignment ({status}) added an EventLog row: {after:#?}");
    problem
}

/// An assign request's body for `contractor_id`, from [`START`] to [`END`].
pub fn assign_body(contractor_id: &str) -> Value {
    json!({ "contractorId": contractor_id, "startUtc": START, "endUtc": END })
}
