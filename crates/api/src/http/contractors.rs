//! `POST /api/contractors`, `GET /api/contractors/{id}`, `GET /api/contractors?region=R`.

use actix_web::{http::header, web, HttpResponse};
use serde::Deserialize;
use smartscheduler_application::{Catalog, CreateContractorRequest};
use smartscheduler_domain::{ContractorId, PersonName, Region, Skill};

use super::auth::Authenticated;
use super::ApiError;

/// The body of `POST /api/contractors`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateContractorBody {
    name: String,
    region: String,
    #[serde(default)]
    skills: Vec<String>,
}

/// Creates a contractor: 201 with `Location`.
pub async fn create(
    Authenticated(principal): Authenticated,
    catalog: web::Data<Catalog>,
    body: web::Json<CreateContractorBody>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let request = CreateContractorRequest {
        name: PersonName::new(&body.name)?,
        region: Region::new(&body.region)?,
        skills: body.skills.iter().map(|s| Skill::new(s)).collect::<Result<_, _>>()?,
    };
    let contractor = catalog.create_contractor(&principal, request).await?;
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, format!("/api/contractors/{}", contractor.id())))
        .json(contractor))
}

/// One contractor.
pub async fn get(
    Authenticated(principal): Authenticated,
    catalog: web::Data<Catalog>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id: ContractorId = id.parse().map_err(|_| ApiError::not_found("no contractor has this id"))?;
    let contractor = catalog
        .contractor(&principal, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("contractor {id} does not exist")))?;
    Ok(HttpResponse::Ok().json(contractor))
}

/// The query of `GET /api/contractors`.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    region: Option<String>,
    limit: Option<u32>,
}

/// Contractors, optionally of one region.
pub async fn list(
    Authenticated(principal): Authenticated,
    catalog: web::Data<Catalog>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let region = query.region.as_deref().map(Region::new).transpose()?;
    let limit = super::limit(query.limit)?;
    Ok(HttpResponse::Ok().json(catalog.contractors(&principal, region, limit).await?))
}
