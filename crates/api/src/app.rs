//! The composition root: the one place that names concrete adapters and
//! wires them to the ports. `main` and the tests both start the service
//! through [`Application`].

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::middleware::from_fn;
use actix_web::{web, App};
use anyhow::Context;
use smartscheduler_application::publishing::outbox;
use smartscheduler_application::tailer::FollowedPosition;
use smartscheduler_application::{AssignJob, Catalog, HandlerRegistry, TokenVerifier};
use smartscheduler_domain::ports::EventLog;
use smartscheduler_infrastructure::redis_bus::RedisBus;
use smartscheduler_infrastructure::tokens::JwksVerifier;
use smartscheduler_infrastructure::{Database, JwtTokens, SignedConnectionTokens};
use smartscheduler_realtime::{HubConfig, HubContext, HubDelivery, WebSocketAdapter};
use tokio::sync::Notify;

use crate::config::{HubWebSocket, ServeConfig};
use crate::http;
use crate::state::AppState;
use crate::topology::{DeliveryTopology, Wired};

/// A built, not yet running, service.
pub struct Application {
    port: u16,
    host: String,
    server: Server,
    relay: tokio::task::JoinHandle<()>,
    stop_relay: Arc<Notify>,
    shutdown_timeout: Duration,
    background: Vec<tokio::task::JoinHandle<()>>,
    db: Database,
    hub: HubContext,
}

impl Application {
    /// Connects the database (applying migrations), wires the adapters,
    /// starts the relay and binds the listener.
    ///
    /// # Errors
    /// Bad configuration, an unreachable database, or an address in use.
    pub async fn build(config: ServeConfig) -> anyhow::Result<Self> {
        Self::build_with(config, HandlerRegistry::new()).await
    }

    /// Like [`Application::build`], with extra event handlers registered
    /// before the built-in ones (tests use this to inject failures).
    ///
    /// # Errors
    /// As [`Application::build`].
    pub async fn build_with(config: ServeConfig, handlers: HandlerRegistry) -> anyhow::Result<Self> {
        crate::http::metrics::handle();
        let secret = config.secret.resolve()?;
        let issuer = config.secret.jwt_issuer.as_deref();
        let audience = config.secret.jwt_audience.as_deref();
        let verifier: Arc<dyn TokenVerifier> = match &config.secret.jwt_jwks_file {
            Some(path) => Arc::new(JwksVerifier::from_file(path, issuer, audience).map_err(anyhow::Error::msg)?),
            None => Arc::new(
                JwtTokens::hs256(secret.as_bytes())
                    .context("the token secret is not usable")?
                    .expecting(issuer, audience),
            ),
        };

        let database_url = config.database_url();
        let db = Database::connect(&database_url).await?;
        let event_log: Arc<dyn EventLog> = db.event_log();
        let delivery = &config.delivery;
        let bus = config.redis_url.as_deref().map(RedisBus::new).transpose().map_err(anyhow::Error::msg)?;
        let topology =
            DeliveryTopology::choose(&db, &database_url, bus, Duration::from_millis(delivery.publisher_lease_ms))?;

        let listener = TcpListener::bind(&config.bind).with_context(|| format!("cannot listen on {}", config.bind))?;
        let address = listener.local_addr()?;
        let hub_config = HubConfig {
            outbound_capacity: delivery.hub_queue_messages as usize,
            outbound_max_bytes: delivery.hub_queue_bytes,
            reconnect_window: Duration::from_secs(delivery.reconnect_window_seconds),
            negotiate_per_minute: delivery.hub_negotiate_per_minute,
            connections_per_user: delivery.hub_connections_per_user,
            invocations_per_second: delivery.hub_invocations_per_second,
            max_message_bytes: delivery.hub_max_message_bytes,
            poll_timeout: Duration::from_secs(delivery.hub_poll_seconds),
            disconnect_timeout: Duration::from_secs(delivery.hub_disconnect_seconds),
            node_url: topology.node_url(delivery.node_url.as_deref(), address),
            websocket: match delivery.hub_websocket {
                HubWebSocket::ActixWs => WebSocketAdapter::ActixWs,
                HubWebSocket::Dedicated => WebSocketAdapter::Dedicated,
            },
            ..HubConfig::default()
        };
        let tickets = Arc::new(SignedConnectionTokens::new(secret.as_bytes()));
        let follow_from = topology.follow_from(event_log.as_ref()).await?;
        let followed = Arc::new(FollowedPosition::starting_at(follow_from));
        let mut hub =
            HubContext::start(event_log.clone(), verifier.clone(), tickets, db.used_connection_tokens(), hub_config);
        if let DeliveryTopology::Cluster { .. } = topology {
            // Replays stop where this node's follower is.
            hub = hub.with_followed_position(followed.clone());
        }
        let hub_delivery = Arc::new(HubDelivery::new(hub.hub.clone()));
        let handlers = topology.handlers(handlers, &hub_delivery);
        let relay_config =
            topology.relay_config(delivery.max_delivery_attempts, Duration::from_millis(delivery.retry_backoff_ms));
        let (publisher, relay) = outbox(event_log.clone(), handlers, relay_config);
        let Wired { relay, mut background } =
            topology.wire(relay, event_log.clone(), hub_delivery, follow_from, followed)?;
        let stop_relay = Arc::new(Notify::new());
        let stop = stop_relay.clone();
        let relay = tokio::spawn(relay.run(async move { stop.notified().await }));

        background.push(tokio::spawn(smartscheduler_application::maintenance::run_retention(
            event_log.clone(),
            db.assignments(),
            Duration::from_secs(u64::from(delivery.event_retention_days) * 24 * 3600),
            Duration::from_secs(3600),
        )));
        let shutdown_timeout = Duration::from_secs(delivery.shutdown_timeout_seconds);
        let catalog = Catalog::new(db.contractors(), db.jobs(), db.assignment_reads());
        let assign = AssignJob::new(db.jobs(), db.contractors(), db.assignments(), publisher);

        let state = web::Data::new(AppState {
            catalog,
            assign,
            event_log: event_log.clone(),
            verifier,
            database: db.clone(),
            bus: topology.bus().cloned(),
            hub: hub.clone(),
        });
        // The hub's own handlers (realtime crate) take its context directly.
        let hub_data = web::Data::new(hub.clone());
        let cors_origins = config.cors_origins.clone();

        let make_app = move || {
            // The last `wrap` is the outermost: the request log sees the
            // final status, and the edge bounds a request before CORS or
            // routing spend anything on it.
            App::new()
                .wrap(http::cors::cors(&cors_origins))
                .wrap(from_fn(http::cors::refusals_as_problems))
                .wrap(from_fn(http::edge::bound_request))
                .wrap(from_fn(http::request_log::log_request))
                .app_data(state.clone())
                .app_data(hub_data.clone())
                .configure(http::configure)
                .configure(smartscheduler_realtime::http::configure)
                .default_service(web::to(http::problem::not_found))
        };
        let server = smartscheduler_realtime::http_server(&hub, listener, make_app, shutdown_timeout)
            .context("cannot serve HTTP")?;

        Ok(Self {
            port: address.port(),
            host: address.ip().to_string(),
            server,
            relay,
            stop_relay,
            shutdown_timeout,
            background,
            db,
            hub,
        })
    }

    /// The port it listens on (useful with port 0).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until SIGTERM or SIGINT, then stops the relay (publishing what
    /// it holds) and closes the database.
    ///
    /// # Errors
    /// When the server fails.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        tracing::info!("listening on http://{}:{}", self.host, self.port);
        let handle = self.server.handle();
        let hub = self.hub.hub.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!("stopping: closing hub connections (allowReconnect) and draining");
            let _ = hub.shutdown().await;
            handle.stop(true).await;
        });
        let result = self.server.await;
        self.stop_relay.notify_one();
        for task in &self.background {
            task.abort();
        }
        if tokio::time::timeout(self.shutdown_timeout, self.relay).await.is_err() {
            tracing::warn!("the relay did not stop in time; Pending rows are published at the next start");
        }
        self.db.close().await;
        tracing::info!("stopped");
        Ok(result?)
    }
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
