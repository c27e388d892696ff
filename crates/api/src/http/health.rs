//! `GET /health/live` and `GET /health/ready`.

use actix_web::HttpResponse;
use serde_json::json;

use super::ApiError;

use crate::state::State;

/// The process is up.
#[utoipa::path(get, path = "/health/live", tag = "operations",
    responses((status = 200, description = "Live.", body = crate::openapi::Liveness)))]
pub async fn live() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "live" }))
}

/// The service can serve: the database answers (503 otherwise). With Redis
/// configured and down it still serves (events reach other nodes by polling)
/// and says `degraded`.
#[utoipa::path(get, path = "/health/ready", tag = "operations",
    responses(
        (status = 200, description = "Ready (or degraded: Redis down, events reach other nodes by polling).", body = crate::openapi::Readiness),
        (status = 503, description = "The database does not answer.", body = crate::openapi::Problem, content_type = "application/problem+json",
            headers(("Retry-After" = String, description = "Seconds to wait."))),
    ))]
pub async fn ready(state: State) -> Result<HttpResponse, ApiError> {
    // Whatever the database answers, an error means "not ready": a dropped
    // database or a revoked role is as unready as a refused connection.
    state.database.ping().await.map_err(|err| ApiError::Unavailable(Box::new(err)))?;
    Ok(HttpResponse::Ok().json(match &state.bus {
        None => json!({ "status": "ready", "database": "up" }),
        Some(bus) if bus.is_up() => json!({ "status": "ready", "database": "up", "redis": "up" }),
        Some(_) => json!({ "status": "degraded", "database": "up", "redis": "down" }),
    }))
}
