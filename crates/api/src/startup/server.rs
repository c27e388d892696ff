//! The HTTP side: the listener, the API's one state, and the actix App with
//! its middlewares, served by the realtime crate's `http_server`.

use std::net::TcpListener;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::middleware::from_fn;
use actix_web::{web, App};
use anyhow::Context;
use smartscheduler_application::{AssignJob, Catalog};

use super::{Auth, Delivery, Storage};
use crate::http;
use crate::state::AppState;

/// Binds the listener (port 0 picks a free one). Bound before the hub
/// starts: a cluster node names its address in connection tokens.
///
/// # Errors
/// The address is in use or invalid.
pub(crate) fn listen(bind: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(bind).with_context(|| format!("cannot listen on {bind}"))
}

/// Builds the API's state and the HTTP server on `listener`, not yet polled.
///
/// # Errors
/// The server cannot take the listener.
pub(crate) fn server(
    listener: TcpListener,
    cors_origins: &[String],
    shutdown_timeout: Duration,
    auth: Auth,
    storage: &Storage,
    delivery: &Delivery,
) -> anyhow::Result<Server> {
    let Storage { db, event_log, topology } = storage;
    let cors_origins = cors_origins.to_vec();
    let catalog = Catalog::new(db.contractors(), db.jobs(), db.assignment_reads());
    let assign = AssignJob::new(db.jobs(), db.contractors(), db.assignments(), delivery.publisher.clone())
        .with_acknowledgement_deadline(delivery.acknowledgement_deadline);
    let state = web::Data::new(AppState {
        catalog,
        assign,
        event_log: event_log.clone(),
        verifier: auth.verifier,
        database: db.clone(),
        bus: topology.bus().cloned(),
        hub: delivery.hub.clone(),
    });
    // The hub's own handlers (realtime crate) take its context directly.
    let hub_data = web::Data::new(delivery.hub.clone());

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
    smartscheduler_realtime::http_server(&delivery.hub, listener, make_app, shutdown_timeout)
        .context("cannot serve HTTP")
}
