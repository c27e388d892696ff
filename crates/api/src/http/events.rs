//! `GET /api/events?afterSequence=N&limit=L[&status=S]` and `GET /api/events/{eventId}`.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use smartscheduler_domain::ports::{EventLogEntry, EventQuery, EventStatus, RetryOutcome};
use smartscheduler_domain::Role;
use smartscheduler_domain::{EventId, Sequence};

use super::auth::Authenticated;
use super::ApiError;

use crate::state::State;

fn back_office(principal: &smartscheduler_domain::Principal) -> Result<(), ApiError> {
    if principal.is_back_office() {
        Ok(())
    } else {
        Err(ApiError::Forbidden("only admins and dispatchers may read the EventLog".into()))
    }
}

/// The query of `GET /api/events`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only published rows with a greater sequence, in sequence order.
    #[param(minimum = 0)]
    after_sequence: Option<i64>,
    /// Page size: 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// Only rows in this state.
    #[param(value_type = Option<crate::openapi::EventStatus>)]
    status: Option<String>,
}

/// A page of the EventLog.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventPage {
    items: Vec<EventLogEntry>,
    /// Pass as `afterSequence` to get the next page of published events.
    next_after_sequence: i64,
}

/// Lists EventLog rows. With `afterSequence`, published rows after it in
/// sequence order (a page to follow); without, every row in commit order.
#[utoipa::path(get, path = "/api/events", operation_id = "listEvents", tag = "events",
    params(ListQuery),
    responses((status = 200, description = "A page of the EventLog.", body = crate::openapi::EventPage)),
    security(("bearer" = [])))]
pub async fn list(
    Authenticated(principal): Authenticated,
    state: State,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    back_office(&principal)?;
    if query.after_sequence.is_some_and(|n| n < 0) {
        return Err(ApiError::validation("afterSequence: must be 0 or more"));
    }
    let status = match query.status.as_deref() {
        None => None,
        Some(s) => Some(
            EventStatus::parse(s)
                .ok_or_else(|| ApiError::validation("status: must be Pending, Published or Failed"))?,
        ),
    };
    let limit = super::limit(query.limit)?;
    let items =
        state.event_log.list(EventQuery { after_sequence: query.after_sequence.map(Sequence), status, limit }).await?;
    let next_after_sequence =
        items.iter().filter_map(|e| e.sequence).map(|s| s.0).max().unwrap_or(0).max(query.after_sequence.unwrap_or(0));
    Ok(HttpResponse::Ok().json(EventPage { items, next_after_sequence }))
}

/// One EventLog row.
#[utoipa::path(get, path = "/api/events/{id}", operation_id = "getEvent", tag = "events",
    params(("id" = String, Path, description = "The event's id (a UUID).")),
    responses(
        (status = 200, description = "The row.", body = crate::openapi::EventLogEntry),
        (status = 404, description = "No event has this id.", body = crate::openapi::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn get(
    Authenticated(principal): Authenticated,
    state: State,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    back_office(&principal)?;
    let id: EventId = id.parse().map_err(|_| ApiError::not_found("no event has this id"))?;
    let entry =
        state.event_log.get(id).await?.ok_or_else(|| ApiError::not_found(format!("event {id} does not exist")))?;
    Ok(HttpResponse::Ok().json(entry))
}

/// `POST /api/events/{eventId}/retry` (Admin): a Failed event is published
/// again (202 with the row, now Pending); 409 when it is not Failed.
#[utoipa::path(post, path = "/api/events/{id}/retry", operation_id = "retryEvent", tag = "events",
    params(("id" = String, Path, description = "The event's id (a UUID).")),
    responses(
        (status = 202, description = "Requeued: the row, now Pending.", body = crate::openapi::EventLogEntry),
        (status = 404, description = "No event has this id.", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The event is not Failed.", body = crate::openapi::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn retry(
    Authenticated(principal): Authenticated,
    state: State,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    if principal.role != Role::Admin {
        return Err(ApiError::Forbidden("only admins may retry events".into()));
    }
    let id: EventId = id.parse().map_err(|_| ApiError::not_found("no event has this id"))?;
    match state.event_log.retry(id).await? {
        RetryOutcome::Requeued => {
            tracing::info!(event_id = %id, subject = %principal.subject, "event requeued by an admin");
            let entry = state
                .event_log
                .get(id)
                .await?
                .ok_or_else(|| ApiError::not_found(format!("event {id} does not exist")))?;
            Ok(HttpResponse::Accepted().json(entry))
        }
        RetryOutcome::NotFound => Err(ApiError::not_found(format!("event {id} does not exist"))),
        RetryOutcome::NotFailed => {
            Err(ApiError::Conflict(format!("event {id} is not Failed; only Failed events can be retried")))
        }
    }
}
