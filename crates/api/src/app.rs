//! The service's life: [`Application`] is built by running the composition
//! root's phases ([`crate::startup`]), then served until a stop signal.
//! `main` and the tests both start the service through it.

use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use smartscheduler_application::HandlerRegistry;
use smartscheduler_infrastructure::Database;
use smartscheduler_realtime::HubContext;
use tokio::sync::Notify;

use crate::config::ServeConfig;
use crate::startup::{self, Delivery};

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
        let auth = startup::auth(&config.secret)?;
        let storage = startup::storage(&config).await?;
        let listener = startup::listen(&config.bind)?;
        let address = listener.local_addr()?;
        let delivery = startup::delivery(&config.delivery, &auth, &storage, address, handlers).await?;
        let shutdown_timeout = Duration::from_secs(config.delivery.shutdown_timeout_seconds);
        let server = startup::server(listener, &config.cors_origins, shutdown_timeout, auth, &storage, &delivery)?;

        let Delivery { hub, relay, stop_relay, background, .. } = delivery;
        Ok(Self {
            port: address.port(),
            host: address.ip().to_string(),
            server,
            relay,
            stop_relay,
            shutdown_timeout,
            background,
            db: storage.db,
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
        if let Some(presence) = &self.hub.presence {
            if tokio::time::timeout(Duration::from_secs(2), presence.leave()).await.is_err() {
                tracing::warn!("presence: leaving took too long; other nodes find this one dead instead");
            }
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
