//! The HTTP API of the contract: routes, authentication and errors.

pub mod auth;
pub mod console;
pub mod contractors;
pub mod events;
pub mod health;
pub mod jobs;
pub mod metrics;
pub mod problem;

use actix_web::web;

pub use problem::ApiError;

/// Largest accepted JSON body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Default and largest page size of list endpoints.
pub const DEFAULT_LIMIT: u32 = 100;
/// Largest page size of list endpoints.
pub const MAX_LIMIT: u32 = 1000;

/// Registers the API routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(problem::json_config())
        .app_data(problem::query_config())
        .app_data(problem::path_config())
        .service(
            web::scope("/api")
                .route("/contractors", web::post().to(contractors::create))
                .route("/contractors", web::get().to(contractors::list))
                .route("/contractors/{id}", web::get().to(contractors::get))
                .route("/jobs", web::post().to(jobs::create))
                .route("/jobs", web::get().to(jobs::list))
                .route("/jobs/{id}", web::get().to(jobs::get))
                .route("/jobs/{id}/assign", web::post().to(jobs::assign))
                .route("/events", web::get().to(events::list))
                .route("/events/{id}", web::get().to(events::get))
                .route("/events/{id}/retry", web::post().to(events::retry)),
        )
        .route("/health/live", web::get().to(health::live))
        .route("/health/ready", web::get().to(health::ready))
        .route("/metrics", web::get().to(metrics::render))
        .configure(console::configure);
}

/// Checks an optional page size against [`MAX_LIMIT`].
pub(crate) fn limit(value: Option<u32>) -> Result<u32, ApiError> {
    match value {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::validation(format!("limit: must be between 1 and {MAX_LIMIT}"))),
    }
}
