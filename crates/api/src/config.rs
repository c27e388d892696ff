//! Configuration: every setting from an environment variable with a flag of
//! the same name, read here and passed inward as plain typed structs.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use smartscheduler_infrastructure::tokens::{load_or_create_secret, SecretFileOrigin};

/// SmartScheduler events: when a dispatcher assigns a flooring job, the
/// region's dispatchers and the contractor know at once (HTTP API, SignalR hub
/// at /hubs/jobs, console at /).
#[derive(Debug, Parser)]
#[command(name = "smartscheduler", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// What to do; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// `serve`'s settings, also accepted without the sub-command.
    #[command(flatten)]
    pub serve: ServeConfig,
}

/// The sub-commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service (the default).
    // Boxed: far larger than the other commands (clippy's large_enum_variant).
    Serve(Box<ServeConfig>),
    /// Print a signed bearer token for local use.
    Token(TokenArgs),
    /// Seed sample regions, contractors and jobs, and print tokens to try the console with.
    Demo(DemoArgs),
}

/// Settings of `serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Address to listen on; port 0 picks a free port (the chosen address is logged).
    #[arg(long, env = "SMARTSCHEDULER_BIND", default_value = "127.0.0.1:8080")]
    pub bind: String,
    /// `sqlite://PATH`, `sqlite::memory:` or `postgres://…`; default: a SQLite file under ./data/.
    #[arg(long, env = "SMARTSCHEDULER_DATABASE_URL")]
    pub database_url: Option<String>,
    /// `redis://…` for fan-out across nodes; unset: one node, in-process fan-out.
    #[arg(long, env = "SMARTSCHEDULER_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Where SQLite's reads run: `worker` (sqlx's worker thread per
    /// connection, the default) or `on-thread` (the asking thread, no hop).
    #[arg(long, env = "SMARTSCHEDULER_SQLITE_READS", value_enum, default_value_t = SqliteReads::Worker)]
    pub sqlite_reads: SqliteReads,
    /// The token secret.
    #[command(flatten)]
    pub secret: SecretArgs,
    /// Origins allowed to call the API and the hub from a browser (comma-separated, exact).
    #[arg(long, env = "SMARTSCHEDULER_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
    /// `text` (default) or `json` logs.
    #[arg(long, env = "SMARTSCHEDULER_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
    /// Delivery settings.
    #[command(flatten)]
    pub delivery: DeliveryArgs,
    /// Trace export (OpenTelemetry).
    #[command(flatten)]
    pub traces: TraceArgs,
}

/// Trace export over OTLP/HTTP, by the OpenTelemetry variables' names. With
/// neither an endpoint nor `OTEL_TRACES_EXPORTER`, nothing is exported.
/// The SDK reads the other standard variables itself (`OTEL_BSP_*`,
/// `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_RESOURCE_ATTRIBUTES`).
#[derive(Debug, Clone, Default, Args)]
pub struct TraceArgs {
    /// OTLP/HTTP base URL, e.g. `http://localhost:4318` (`/v1/traces` is appended); turns export on.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otel_exporter_otlp_endpoint: Option<String>,
    /// The traces URL, used as is (wins over the base URL).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")]
    pub otel_exporter_otlp_traces_endpoint: Option<String>,
    /// OTLP encoding; `grpc` is not supported.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_PROTOCOL", value_enum, default_value_t = OtlpProtocol::HttpProtobuf)]
    pub otel_exporter_otlp_protocol: OtlpProtocol,
    /// `otlp` exports (to http://localhost:4318 without an endpoint); `none` never does.
    #[arg(long, env = "OTEL_TRACES_EXPORTER", value_enum)]
    pub otel_traces_exporter: Option<TracesExporter>,
    /// The `service.name` of the exported spans.
    #[arg(long, env = "OTEL_SERVICE_NAME", default_value = "smartscheduler")]
    pub otel_service_name: String,
}

/// The OTLP/HTTP encodings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum OtlpProtocol {
    /// Protobuf, the specification's default.
    #[default]
    #[value(name = "http/protobuf")]
    HttpProtobuf,
    /// JSON.
    #[value(name = "http/json")]
    HttpJson,
}

/// Values of `OTEL_TRACES_EXPORTER` this service knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TracesExporter {
    /// Export over OTLP.
    Otlp,
    /// Export nothing.
    None,
}

impl TraceArgs {
    /// Whether spans are exported: `OTEL_TRACES_EXPORTER` decides when set,
    /// else an endpoint does.
    pub fn enabled(&self) -> bool {
        match self.otel_traces_exporter {
            Some(exporter) => exporter == TracesExporter::Otlp,
            None => self.otel_exporter_otlp_endpoint.is_some() || self.otel_exporter_otlp_traces_endpoint.is_some(),
        }
    }

    /// The URL spans are posted to, per the specification's rules; `None`:
    /// the SDK's default (`http://localhost:4318/v1/traces`).
    pub fn traces_url(&self) -> Option<String> {
        self.otel_exporter_otlp_traces_endpoint.clone().or_else(|| {
            self.otel_exporter_otlp_endpoint.as_deref().map(|base| format!("{}/v1/traces", base.trim_end_matches('/')))
        })
    }
}

impl DeliveryArgs {
    /// How long a contractor has to acknowledge; `None` when escalation is off.
    pub fn acknowledgement_deadline(&self) -> Option<Duration> {
        (self.ack_deadline_seconds > 0).then(|| Duration::from_secs(self.ack_deadline_seconds))
    }
}

/// How events are delivered and kept, and the hub's limits.
#[derive(Debug, Clone, Args)]
pub struct DeliveryArgs {
    /// Delivery attempts before an event becomes Failed.
    #[arg(long, env = "SMARTSCHEDULER_MAX_DELIVERY_ATTEMPTS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_delivery_attempts: u32,
    /// First retry delay in milliseconds; doubles per attempt (with jitter), up to 60 s.
    #[arg(long, env = "SMARTSCHEDULER_RETRY_BACKOFF_MS", default_value_t = 200)]
    pub retry_backoff_ms: u64,
    /// Seconds the assigned contractor has to acknowledge a JobAssigned before dispatchers are told (0: never).
    #[arg(long, env = "SMARTSCHEDULER_ACK_DEADLINE_SECONDS", default_value_t = 300)]
    pub ack_deadline_seconds: u64,
    /// Seconds a contractor whose last hub connection closed still counts as online (absorbs reconnects).
    #[arg(long, env = "SMARTSCHEDULER_PRESENCE_GRACE_SECONDS", default_value_t = 10)]
    pub presence_grace_seconds: u64,
    /// Days published events are kept for replay; older positions must reload over HTTP.
    #[arg(long, env = "SMARTSCHEDULER_EVENT_RETENTION_DAYS", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..))]
    pub event_retention_days: u32,
    /// Messages queued per hub connection before it is closed as too slow.
    #[arg(long, env = "SMARTSCHEDULER_HUB_QUEUE_MESSAGES", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub hub_queue_messages: u32,
    /// Bytes queued per hub connection before it is closed as too slow.
    #[arg(long, env = "SMARTSCHEDULER_HUB_QUEUE_BYTES", default_value_t = 1024 * 1024)]
    pub hub_queue_bytes: usize,
    /// Seconds a dropped stateful-reconnect connection waits for its client.
    #[arg(long, env = "SMARTSCHEDULER_RECONNECT_WINDOW_SECONDS", default_value_t = 15)]
    pub reconnect_window_seconds: u64,
    /// Hub negotiations (and connections without one) per user per minute.
    #[arg(long, env = "SMARTSCHEDULER_HUB_NEGOTIATE_PER_MINUTE", default_value_t = 600)]
    pub hub_negotiate_per_minute: u32,
    /// Open hub connections per user on one node.
    #[arg(long, env = "SMARTSCHEDULER_HUB_CONNECTIONS_PER_USER", default_value_t = 100)]
    pub hub_connections_per_user: usize,
    /// Hub invocations per second per connection (bursts up to twice that).
    #[arg(long, env = "SMARTSCHEDULER_HUB_INVOCATIONS_PER_SECOND", default_value_t = 20)]
    pub hub_invocations_per_second: u32,
    /// Largest hub message accepted from a client, in bytes.
    #[arg(long, env = "SMARTSCHEDULER_HUB_MAX_MESSAGE_BYTES", default_value_t = 32 * 1024)]
    pub hub_max_message_bytes: usize,
    /// Seconds a Long Polling poll waits for records before an empty answer.
    #[arg(long, env = "SMARTSCHEDULER_HUB_POLL_SECONDS", default_value_t = 90, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub hub_poll_seconds: u64,
    /// Seconds without a poll after which a Long Polling connection is closed.
    #[arg(long, env = "SMARTSCHEDULER_HUB_DISCONNECT_SECONDS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub hub_disconnect_seconds: u64,
    /// Which adapter serves hub WebSockets: actix-ws (on the HTTP workers) or
    /// dedicated (tungstenite on socket threads of their own).
    #[arg(long, env = "SMARTSCHEDULER_HUB_WEBSOCKET", value_enum, default_value_t = HubWebSocket::ActixWs)]
    pub hub_websocket: HubWebSocket,
    /// Several nodes: this node's URL as the other nodes reach it, to which
    /// they forward its Long Polling and SSE requests (default: http:// and
    /// the bound address).
    #[arg(long, env = "SMARTSCHEDULER_NODE_URL")]
    pub node_url: Option<String>,
    /// Seconds a graceful stop waits for connections and the relay.
    #[arg(long, env = "SMARTSCHEDULER_SHUTDOWN_TIMEOUT_SECONDS", default_value_t = 10)]
    pub shutdown_timeout_seconds: u64,
    /// Several nodes (PostgreSQL): milliseconds the publisher lease lasts after
    /// its holder's last renewal; a frozen or cut-off holder loses it then.
    #[arg(long, env = "SMARTSCHEDULER_PUBLISHER_LEASE_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(200..=600_000))]
    pub publisher_lease_ms: u64,
}

impl Default for DeliveryArgs {
    fn default() -> Self {
        Self {
            max_delivery_attempts: 10,
            retry_backoff_ms: 200,
            ack_deadline_seconds: 300,
            presence_grace_seconds: 10,
            event_retention_days: 30,
            hub_queue_messages: 1024,
            hub_queue_bytes: 1024 * 1024,
            reconnect_window_seconds: 15,
            hub_negotiate_per_minute: 600,
            hub_connections_per_user: 100,
            hub_invocations_per_second: 20,
            hub_max_message_bytes: 32 * 1024,
            hub_poll_seconds: 90,
            hub_disconnect_seconds: 15,
            hub_websocket: HubWebSocket::ActixWs,
            node_url: None,
            shutdown_timeout_seconds: 10,
            publisher_lease_ms: 5000,
        }
    }
}

/// Where the token secret comes from.
#[derive(Debug, Clone, Args)]
pub struct SecretArgs {
    /// HS256 secret for bearer tokens; unset: one is generated once and kept under ./data/.
    #[arg(long, env = "SMARTSCHEDULER_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Folder for the default database and the generated secret.
    #[arg(long, env = "SMARTSCHEDULER_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// Required `iss` of bearer tokens (unset: not checked).
    #[arg(long, env = "SMARTSCHEDULER_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required `aud` of bearer tokens (unset: not checked).
    #[arg(long, env = "SMARTSCHEDULER_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// A JWKS file of an external identity provider: bearer tokens are then
    /// RS256/ES256 (…) signed by its keys, chosen by `kid`, instead of HS256.
    #[arg(long, env = "SMARTSCHEDULER_JWT_JWKS_FILE")]
    pub jwt_jwks_file: Option<PathBuf>,
}

/// Settings of `token`.
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// `Admin`, `Dispatcher` or `Contractor` (any case).
    #[arg(long)]
    pub role: String,
    /// A region the dispatcher dispatches (repeat for several; a dispatcher needs one).
    #[arg(long = "region")]
    pub regions: Vec<String>,
    /// The contractor the token speaks for.
    #[arg(long)]
    pub contractor_id: Option<uuid::Uuid>,
    /// Subject; defaults to the role in lower case.
    #[arg(long)]
    pub sub: Option<String>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    pub ttl: u64,
    /// The token secret.
    #[command(flatten)]
    pub secret: SecretArgs,
}

/// Settings of `demo`: the database and secret settings of `serve`, so that
/// both reach the same database and sign with the same secret.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// `sqlite://PATH`, `sqlite::memory:` or `postgres://…`; default: a SQLite file under ./data/.
    #[arg(long, env = "SMARTSCHEDULER_DATABASE_URL")]
    pub database_url: Option<String>,
    /// The token secret.
    #[command(flatten)]
    pub secret: SecretArgs,
    /// The address `serve` listens on, for the URLs printed.
    #[arg(long, env = "SMARTSCHEDULER_BIND", default_value = "127.0.0.1:8080")]
    pub bind: String,
    /// Lifetime of the printed tokens, in seconds.
    #[arg(long, default_value_t = 8 * 3600)]
    pub ttl: u64,
}

impl DemoArgs {
    /// The database URL, with `serve`'s default.
    pub fn database_url(&self) -> String {
        database_url_or_default(self.database_url.as_deref(), &self.secret)
    }
}

/// `url`, or `sqlite://{data_dir}/smartscheduler.db`.
fn database_url_or_default(url: Option<&str>, secret: &SecretArgs) -> String {
    url.map_or_else(|| format!("sqlite://{}/smartscheduler.db", secret.data_dir.display()), str::to_owned)
}

impl ServeConfig {
    /// The database URL, defaulting to `sqlite://{data_dir}/smartscheduler.db`.
    pub fn database_url(&self) -> String {
        database_url_or_default(self.database_url.as_deref(), &self.secret)
    }

    /// Settings for tests: port 0, in-memory SQLite, a fixed secret.
    pub fn for_tests(secret: &str) -> Self {
        Self {
            bind: "127.0.0.1:0".into(),
            database_url: Some("sqlite::memory:".into()),
            redis_url: None,
            sqlite_reads: SqliteReads::Worker,
            secret: SecretArgs {
                jwt_secret: Some(secret.into()),
                data_dir: PathBuf::from("data"),
                jwt_issuer: None,
                jwt_audience: None,
                jwt_jwks_file: None,
            },
            cors_origins: Vec::new(),
            log_format: "text".into(),
            delivery: DeliveryArgs::default(),
            traces: TraceArgs::default(),
        }
    }
}

/// Shortest token secret accepted, in bytes: HS256 keys shorter than its
/// 256-bit output are easier to guess than the signature is to forge (RFC 7518, 3.2).
pub const MIN_SECRET_BYTES: usize = 32;

impl SecretArgs {
    /// The configured secret, or the one kept under the data folder
    /// (created on first use, with a warning; made owner-only, with a
    /// warning, when group or others could read it).
    ///
    /// # Errors
    /// When the secret is shorter than [`MIN_SECRET_BYTES`], or its file
    /// cannot be read or written.
    pub fn resolve(&self) -> anyhow::Result<String> {
        if let Some(secret) = self.jwt_secret.as_deref().filter(|s| !s.is_empty()) {
            anyhow::ensure!(
                secret.len() >= MIN_SECRET_BYTES,
                "SMARTSCHEDULER_JWT_SECRET is {} bytes long; it must be at least {MIN_SECRET_BYTES} \
                 (for example: openssl rand -base64 32)",
                secret.len()
            );
            return Ok(secret.to_owned());
        }
        let path = self.data_dir.join("jwt-secret");
        let stored = load_or_create_secret(&path)
            .map_err(|e| anyhow::anyhow!("cannot use the token secret file {}: {e}", path.display()))?;
        anyhow::ensure!(
            stored.secret.len() >= MIN_SECRET_BYTES,
            "the token secret in {} is {} bytes long; it must be at least {MIN_SECRET_BYTES} \
             (delete the file to have one generated)",
            path.display(),
            stored.secret.len()
        );
        if let SecretFileOrigin::Tightened { previous_mode } = stored.origin {
            tracing::warn!(
                path = %path.display(),
                previous_mode = format_args!("{previous_mode:o}"),
                "the token secret file was readable by group or others: its mode is now 600 (rotate the secret if others may have read it)"
            );
        }
        tracing::warn!(
            path = %path.display(),
            created = stored.origin == SecretFileOrigin::Created,
            "SMARTSCHEDULER_JWT_SECRET is not set: using a generated secret kept in this file (set the variable in production)"
        );
        Ok(stored.secret)
    }
}

/// Where SQLite's reads run (`SMARTSCHEDULER_SQLITE_READS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SqliteReads {
    /// sqlx's worker thread of each connection.
    Worker,
    /// The asking thread (rusqlite): no hop; SQLite files only.
    #[value(name = "on-thread")]
    OnThread,
}

impl From<SqliteReads> for smartscheduler_infrastructure::database::SqliteReads {
    fn from(reads: SqliteReads) -> Self {
        match reads {
            SqliteReads::Worker => Self::Worker,
            SqliteReads::OnThread => Self::OnThread,
        }
    }
}

/// The hub's WebSocket adapters (`SMARTSCHEDULER_HUB_WEBSOCKET`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HubWebSocket {
    /// actix-ws, on the HTTP workers.
    #[value(name = "actix-ws")]
    ActixWs,
    /// tungstenite on the bare socket, on socket threads of their own.
    Dedicated,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn traces(endpoint: Option<&str>, traces_endpoint: Option<&str>, exporter: Option<TracesExporter>) -> TraceArgs {
        TraceArgs {
            otel_exporter_otlp_endpoint: endpoint.map(str::to_owned),
            otel_exporter_otlp_traces_endpoint: traces_endpoint.map(str::to_owned),
            otel_traces_exporter: exporter,
            ..TraceArgs::default()
        }
    }

    #[test]
    fn traces_are_exported_only_when_an_endpoint_or_the_otlp_exporter_is_named() {
        assert!(!traces(None, None, None).enabled(), "unset: no export, no layer");
        assert!(traces(Some("http://c:4318"), None, None).enabled());
        assert!(traces(None, Some("http://c:4318/v1/traces"), None).enabled());
        assert!(traces(None, None, Some(TracesExporter::Otlp)).enabled());
        assert!(!traces(Some("http://c:4318"), None, Some(TracesExporter::None)).enabled());
    }

    #[test]
    fn the_traces_url_is_the_base_endpoint_plus_v1_traces_unless_given_whole() {
        assert_eq!(traces(Some("http://c:4318"), None, None).traces_url().unwrap(), "http://c:4318/v1/traces");
        assert_eq!(
            traces(Some("http://c:4318/otlp/"), None, None).traces_url().unwrap(),
            "http://c:4318/otlp/v1/traces"
        );
        let whole = traces(Some("http://c:4318"), Some("http://t:1/x"), None);
        assert_eq!(whole.traces_url().unwrap(), "http://t:1/x");
        assert_eq!(traces(None, None, Some(TracesExporter::Otlp)).traces_url(), None, "the SDK's default");
    }
}
