//! `GET /health/live` and `GET /health/ready`.

use actix_web::{web, HttpResponse};
use serde_json::json;
use smartscheduler_infrastructure::Database;

use super::ApiError;

/// The process is up.
pub async fn live() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "live" }))
}

/// The service can serve: the database answers (503 otherwise).
pub async fn ready(db: web::Data<Database>) -> Result<HttpResponse, ApiError> {
    db.ping().await?;
    Ok(HttpResponse::Ok().json(json!({ "status": "ready", "database": "up" })))
}
