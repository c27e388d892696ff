//! `POST /api/contractors`, `GET /api/contractors/{id}`, `GET /api/contractors?region=R`,
//! and `GET /api/contractors/{id}/assignments`.

use actix_web::{http::header, web, HttpResponse};
use serde::{Deserialize, Serialize};
use smartscheduler_application::CreateContractorRequest;
use smartscheduler_domain::{Assignment, ContractorId, Job, PersonName, Region, Skill};

use super::auth::Authenticated;
use super::ApiError;

use crate::state::State;

/// The body of `POST /api/contractors`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateContractorBody {
    /// 1 to 200 characters.
    #[schema(min_length = 1, max_length = 200)]
    name: String,
    /// The contractor's region.
    #[schema(pattern = r"^[A-Za-z0-9._-]{1,64}$")]
    region: String,
    /// Up to 50 skills of 1 to 64 characters.
    #[serde(default)]
    #[schema(max_items = 50)]
    skills: Vec<String>,
}

/// Creates a contractor: 201 with `Location`.
#[utoipa::path(post, path = "/api/contractors", operation_id = "createContractor", tag = "contractors",
    request_body = CreateContractorBody,
    responses(
        (status = 201, description = "Created.", body = crate::openapi::Contractor,
            headers(("Location" = String, description = "The contractor's URL."))),
    ),
    security(("bearer" = [])))]
pub async fn create(
    Authenticated(principal): Authenticated,
    state: State,
    body: web::Json<CreateContractorBody>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let request = CreateContractorRequest {
        name: PersonName::new(&body.name)?,
        region: Region::new(&body.region)?,
        skills: body.skills.iter().map(|s| Skill::new(s)).collect::<Result<_, _>>()?,
    };
    let contractor = state.catalog.create_contractor(&principal, request).await?;
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, format!("/api/contractors/{}", contractor.id())))
        .json(contractor))
}

/// One contractor.
#[utoipa::path(get, path = "/api/contractors/{id}", operation_id = "getContractor", tag = "contractors",
    params(("id" = String, Path, description = "The contractor's id (a UUID).")),
    responses(
        (status = 200, description = "The contractor.", body = crate::openapi::Contractor),
        (status = 404, description = "No contractor has this id.", body = crate::openapi::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn get(
    Authenticated(principal): Authenticated,
    state: State,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id: ContractorId = id.parse().map_err(|_| ApiError::not_found("no contractor has this id"))?;
    let contractor = state
        .catalog
        .contractor(&principal, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("contractor {id} does not exist")))?;
    Ok(HttpResponse::Ok().json(contractor))
}

/// The query of `GET /api/contractors`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only this region's contractors.
    #[param(pattern = r"^[A-Za-z0-9._-]{1,64}$")]
    region: Option<String>,
    /// Page size: 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// Contractors, optionally of one region.
#[utoipa::path(get, path = "/api/contractors", operation_id = "listContractors", tag = "contractors",
    params(ListQuery),
    responses((status = 200, description = "The contractors, oldest first.", body = Vec<crate::openapi::Contractor>)),
    security(("bearer" = [])))]
pub async fn list(
    Authenticated(principal): Authenticated,
    state: State,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let region = query.region.as_deref().map(Region::new).transpose()?;
    let limit = super::limit(query.limit)?;
    Ok(HttpResponse::Ok().json(state.catalog.contractors(&principal, region, limit).await?))
}

/// The query of `GET /api/contractors/{id}/assignments`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AssignmentsQuery {
    /// Page size: 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// One item of a contractor's assignments: the contract's Assignment with its job.
#[derive(Serialize)]
struct AssignmentWithJob {
    #[serde(flatten)]
    assignment: Assignment,
    job: Job,
}

/// A contractor's assignments with their jobs, newest first.
#[utoipa::path(get, path = "/api/contractors/{id}/assignments", operation_id = "listContractorAssignments", tag = "contractors",
    params(("id" = String, Path, description = "The contractor's id (a UUID)."), AssignmentsQuery),
    responses(
        (status = 200, description = "The assignments, newest first.", body = crate::openapi::ContractorAssignments),
        (status = 404, description = "No contractor has this id.", body = crate::openapi::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn assignments(
    Authenticated(principal): Authenticated,
    state: State,
    id: web::Path<String>,
    query: web::Query<AssignmentsQuery>,
) -> Result<HttpResponse, ApiError> {
    let id: ContractorId = id.parse().map_err(|_| ApiError::not_found("no contractor has this id"))?;
    let limit = super::limit(query.limit)?;
    let items: Vec<AssignmentWithJob> = state
        .catalog
        .assignments_of(&principal, id, limit)
        .await?
        .into_iter()
        .map(|(assignment, job)| AssignmentWithJob { assignment, job })
        .collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "items": items })))
}
