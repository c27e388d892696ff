//! `GET /api/assignments/{id}`: an assignment with where its acknowledgement stands.

use actix_web::{web, HttpResponse};
use serde::Serialize;
use smartscheduler_domain::{AcknowledgementStatus, Assignment, AssignmentId, Timestamp};

use super::auth::Authenticated;
use super::ApiError;
use crate::state::State;

/// The contract's Assignment with `acknowledgement` added.
#[derive(Serialize)]
struct AssignmentWithAcknowledgement<'a> {
    #[serde(flatten)]
    assignment: &'a Assignment,
    acknowledgement: AcknowledgementView,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AcknowledgementView {
    status: AcknowledgementStatus,
    acknowledged_at_utc: Option<Timestamp>,
    deadline_utc: Option<Timestamp>,
}

/// One assignment, with whether the contractor has acknowledged it.
#[utoipa::path(get, path = "/api/assignments/{id}", operation_id = "getAssignment", tag = "assignments",
    params(("id" = String, Path, description = "The assignment's id (a UUID).")),
    responses(
        (status = 200, description = "The assignment and its acknowledgement.",
            body = crate::openapi::AssignmentWithAcknowledgement),
        (status = 404, description = "No assignment has this id.", body = crate::openapi::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn get(
    Authenticated(principal): Authenticated,
    state: State,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id: AssignmentId = id.parse().map_err(|_| ApiError::not_found("no assignment has this id"))?;
    let assignment = state
        .catalog
        .assignment(&principal, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("assignment {id} does not exist")))?;
    let ack = assignment.acknowledgement();
    Ok(HttpResponse::Ok().json(AssignmentWithAcknowledgement {
        assignment: &assignment,
        acknowledgement: AcknowledgementView {
            status: ack.status(Timestamp::now()),
            acknowledged_at_utc: ack.acknowledged_at_utc,
            deadline_utc: ack.deadline_utc,
        },
    }))
}
