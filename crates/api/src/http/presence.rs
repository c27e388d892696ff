//! `GET /api/presence?region=R`: every contractor of a region, and whether
//! it is online (a hub connection now, or within the grace after its last).

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use smartscheduler_domain::{ContractorId, Region, Timestamp};

use super::auth::Authenticated;
use super::ApiError;
use crate::state::State;

/// Most contractors one region lists.
const MAX_CONTRACTORS: u32 = 10_000;

/// The query of `GET /api/presence`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PresenceQuery {
    /// The region (required).
    #[param(pattern = r"^[A-Za-z0-9._-]{1,64}$")]
    region: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ContractorPresence {
    contractor_id: ContractorId,
    name: String,
    online: bool,
    connections: u32,
    last_seen_utc: Option<Timestamp>,
}

/// Who of a region's contractors is online.
#[utoipa::path(get, path = "/api/presence", operation_id = "getPresence", tag = "contractors",
    params(PresenceQuery),
    responses(
        (status = 200, description = "Every contractor of the region with its presence.", body = crate::openapi::RegionPresence),
        (status = 400, description = "No region, or not a valid one.", body = crate::openapi::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn get(
    Authenticated(principal): Authenticated,
    state: State,
    query: web::Query<PresenceQuery>,
) -> Result<HttpResponse, ApiError> {
    let region = query.region.as_deref().ok_or_else(|| ApiError::validation("region: required"))?;
    let region = Region::new(region).map_err(ApiError::from)?;
    if !principal.dispatches(&region) {
        return Err(ApiError::Forbidden(format!("you do not dispatch region '{region}'")));
    }
    let contractors = state.catalog.contractors(&principal, Some(region.clone()), MAX_CONTRACTORS).await?;
    let ids: Vec<ContractorId> = contractors.iter().map(|c| c.id()).collect();
    let presence = match &state.hub.presence {
        Some(tracker) => tracker.presence_of(&ids).await?,
        None => vec![Default::default(); ids.len()],
    };
    let listed: Vec<ContractorPresence> = contractors
        .iter()
        .zip(presence)
        .map(|(contractor, presence)| ContractorPresence {
            contractor_id: contractor.id(),
            name: contractor.name().as_str().to_owned(),
            online: presence.online,
            connections: presence.connections,
            last_seen_utc: presence.last_seen_utc,
        })
        .collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "region": region, "contractors": listed })))
}
