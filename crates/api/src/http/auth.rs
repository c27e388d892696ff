//! The bearer-token extractor: `Authenticated(principal)` in a handler's
//! arguments makes the route require a valid token (401 otherwise).

use std::future::{ready, Ready};

use actix_web::{dev::Payload, http::header, FromRequest, HttpRequest};
use smartscheduler_application::AuthError;
use smartscheduler_domain::Principal;

use super::ApiError;
use crate::state::State;

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Authenticated(pub Principal);

/// The bearer token of an `Authorization` header, if any.
pub fn bearer(req: &HttpRequest) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

impl FromRequest for Authenticated {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let Some(state) = req.app_data::<State>() else {
            return ready(Err(ApiError::Internal("no token verifier configured".into())));
        };
        let result = match bearer(req) {
            None => Err(AuthError::Missing.into()),
            Some(token) => state.verifier.verify(token).map(Authenticated).map_err(ApiError::from),
        };
        ready(result)
    }
}
