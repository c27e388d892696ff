//! `POST /api/jobs`, `GET /api/jobs/{id}`, `GET /api/jobs?region=R&status=S`,
//! and `POST /api/jobs/{jobId}/assign`.

use actix_web::{http::header, web, HttpRequest, HttpResponse};
use serde::Deserialize;
use smartscheduler_application::{AssignJobRequest, CreateJobRequest, IdempotencyRequest};
use smartscheduler_domain::values::Address;
use smartscheduler_domain::{
    AssignmentSource, AuditId, ContractorId, DurationMinutes, JobId, JobStatus, JobType, Region, TimeRange, Timestamp,
    Title,
};

use super::auth::Authenticated;
use super::ApiError;

use crate::state::State;

/// The body of `POST /api/jobs`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateJobBody {
    /// The kind of work, e.g. `Flooring`.
    #[schema(min_length = 1, max_length = 64)]
    job_type: String,
    /// Where it is; you must dispatch this region.
    #[schema(pattern = r"^[A-Za-z0-9._-]{1,64}$")]
    region: String,
    /// How long the work takes.
    #[schema(minimum = 1, maximum = 10080)]
    duration_minutes: i64,
    /// A short title.
    #[schema(max_length = 200)]
    title: Option<String>,
    /// RFC 3339, UTC.
    #[schema(format = DateTime)]
    desired_start_utc: Option<String>,
    /// Where the work is.
    #[schema(max_length = 500)]
    address: Option<String>,
}

/// Creates a job in one of the caller's regions: 201 with `Location`.
#[utoipa::path(post, path = "/api/jobs", operation_id = "createJob", tag = "jobs",
    request_body = CreateJobBody,
    responses(
        (status = 201, description = "Created, Unassigned.", body = crate::openapi::Job,
            headers(("Location" = String, description = "The job's URL."))),
    ),
    security(("bearer" = [])))]
pub async fn create(
    Authenticated(principal): Authenticated,
    state: State,
    body: web::Json<CreateJobBody>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let request = CreateJobRequest {
        job_type: JobType::new(&body.job_type)?,
        region: Region::new(&body.region)?,
        duration_minutes: DurationMinutes::new(body.duration_minutes)?,
        title: body.title.as_deref().map(Title::new).transpose()?,
        desired_start_utc: body
            .desired_start_utc
            .as_deref()
            .map(|s| Timestamp::parse_rfc3339("desiredStartUtc", s))
            .transpose()?,
        address: body.address.as_deref().map(Address::new).transpose()?,
    };
    let job = state.catalog.create_job(&principal, request).await?;
    Ok(HttpResponse::Created().insert_header((header::LOCATION, format!("/api/jobs/{}", job.id()))).json(job))
}

fn job_id(raw: &str) -> Result<JobId, ApiError> {
    raw.parse().map_err(|_| ApiError::not_found("no job has this id"))
}

/// One job: for the back office, or for the contractor it is assigned to.
#[utoipa::path(get, path = "/api/jobs/{id}", operation_id = "getJob", tag = "jobs",
    params(("id" = String, Path, description = "The job's id (a UUID).")),
    responses(
        (status = 200, description = "The job.", body = crate::openapi::Job),
        (status = 404, description = "No job has this id.", body = crate::openapi::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn get(
    Authenticated(principal): Authenticated,
    state: State,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = job_id(&id)?;
    let job = state
        .catalog
        .job(&principal, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("job {id} does not exist")))?;
    Ok(HttpResponse::Ok().json(job))
}

/// The query of `GET /api/jobs`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only this region's jobs.
    #[param(pattern = r"^[A-Za-z0-9._-]{1,64}$")]
    region: Option<String>,
    /// `Unassigned` or `Assigned`.
    #[param(value_type = Option<crate::openapi::JobStatus>)]
    status: Option<String>,
    /// Page size: 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// Jobs, optionally of one region and status.
#[utoipa::path(get, path = "/api/jobs", operation_id = "listJobs", tag = "jobs",
    params(ListQuery),
    responses((status = 200, description = "The jobs, oldest first.", body = Vec<crate::openapi::Job>)),
    security(("bearer" = [])))]
pub async fn list(
    Authenticated(principal): Authenticated,
    state: State,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let region = query.region.as_deref().map(Region::new).transpose()?;
    let status = query.status.as_deref().map(JobStatus::parse).transpose()?;
    let limit = super::limit(query.limit)?;
    Ok(HttpResponse::Ok().json(state.catalog.jobs(&principal, region, status, limit).await?))
}

/// The body of `POST /api/jobs/{jobId}/assign`.
#[derive(Debug, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AssignBody {
    /// Who gets the job.
    #[schema(format = Uuid)]
    contractor_id: String,
    /// RFC 3339, UTC.
    #[schema(format = DateTime)]
    start_utc: String,
    /// RFC 3339, UTC; after `startUtc`.
    #[schema(format = DateTime)]
    end_utc: String,
    /// `manual` (default) or `auto`.
    #[schema(value_type = Option<crate::openapi::AssignmentSource>)]
    source: Option<String>,
    /// An external audit record.
    #[schema(format = Uuid)]
    audit_id: Option<String>,
}

impl AssignBody {
    fn validate(&self, job_id: JobId) -> Result<AssignJobRequest, ApiError> {
        let contractor_id: ContractorId = self.contractor_id.parse()?;
        let start = Timestamp::parse_rfc3339("startUtc", &self.start_utc)?;
        let end = Timestamp::parse_rfc3339("endUtc", &self.end_utc)?;
        Ok(AssignJobRequest {
            job_id,
            contractor_id,
            range: TimeRange::new(start, end)?,
            source: self.source.as_deref().map(AssignmentSource::parse).transpose()?.unwrap_or_default(),
            audit_id: self.audit_id.as_deref().map(str::parse::<AuditId>).transpose()?,
            idempotency: None,
        })
    }
}

/// Assigns a job: 201 with the Assignment. Never waits for delivery.
#[utoipa::path(post, path = "/api/jobs/{id}/assign", operation_id = "assignJob", tag = "jobs",
    params(
        ("id" = String, Path, description = "The job's id (a UUID)."),
        ("Idempotency-Key" = Option<String>, Header,
            description = "1 to 255 visible ASCII characters: a repeat with the same key and body within 24 h answers as the first did."),
    ),
    request_body = AssignBody,
    responses(
        (status = 201, description = "Assigned; JobAssigned is committed with it and delivered after commit.", body = crate::openapi::Assignment,
            headers(("Idempotent-Replayed" = String, description = "`true` when this is the first answer to the same Idempotency-Key."))),
        (status = 404, description = "The job or the contractor does not exist.", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The job is already assigned, or the contractor has an overlapping assignment.", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 422, description = "This Idempotency-Key was used with another body.", body = crate::openapi::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn assign(
    req: HttpRequest,
    Authenticated(principal): Authenticated,
    state: State,
    id: web::Path<String>,
    body: web::Json<AssignBody>,
) -> Result<HttpResponse, ApiError> {
    if !principal.is_back_office() {
        return Err(ApiError::Forbidden("only admins and dispatchers assign jobs".into()));
    }
    let job_id = job_id(&id)?;
    let mut request = body.validate(job_id)?;
    if let Some(key) = idempotency_key(&req)? {
        // The job and the body as parsed: a repeat matches whatever its spacing.
        let fingerprint = serde_json::to_string(&serde_json::json!({ "jobId": job_id, "body": &*body }))
            .map_err(|e| ApiError::Internal(Box::new(e)))?;
        request.idempotency = Some(IdempotencyRequest { key, fingerprint });
    }
    let done = state.assign.execute(&principal, request).await?;
    let mut response = HttpResponse::Created();
    if done.replayed {
        response.insert_header(("Idempotent-Replayed", "true"));
    }
    Ok(response.json(done.assignment))
}

/// Longest accepted `Idempotency-Key`.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// The `Idempotency-Key` header: 1 to 255 visible ASCII characters.
fn idempotency_key(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    let Some(value) = req.headers().get("idempotency-key") else {
        return Ok(None);
    };
    let key = value.to_str().map_err(|_| ApiError::validation("Idempotency-Key: must be visible ASCII"))?.trim();
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::validation(format!(
            "Idempotency-Key: must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} visible ASCII characters"
        )));
    }
    Ok(Some(key.to_owned()))
}
