//! The HTTP API of the contract: routes, authentication and errors.

pub mod assignments;
pub mod auth;
pub mod console;
pub mod contractors;
pub mod cors;
pub mod edge;
pub mod events;
pub mod health;
pub mod jobs;
pub mod metrics;
pub mod presence;
pub mod problem;
pub mod request_log;

use actix_web::http::Method;
use actix_web::web;

pub use problem::ApiError;

/// Largest accepted JSON body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Default and largest page size of list endpoints.
pub const DEFAULT_LIMIT: u32 = 100;
/// Largest page size of list endpoints.
pub const MAX_LIMIT: u32 = 1000;

/// Declares the routes once: [`ROUTES`] lists them (the OpenAPI test checks
/// the document against it) and `register` registers exactly those, one
/// resource per path, so that another method on a known path is a 405.
macro_rules! routes {
    ($( $path:literal => { $( $method:ident => $handler:path ),+ $(,)? } ),* $(,)?) => {
        /// Every route this module registers, as (method, path).
        pub const ROUTES: &[(&str, &str)] = &[ $( $( (stringify!($method), $path), )+ )* ];

        fn register(cfg: &mut web::ServiceConfig) {
            $(
                cfg.service(
                    web::resource($path)
                        $( .route(web::method(Method::$method).to($handler)) )+
                        .default_service(web::to(|| problem::method_not_allowed(&[ $( stringify!($method) ),+ ]))),
                );
            )*
        }
    };
}

routes! {
    "/api/contractors" => { POST => contractors::create, GET => contractors::list },
    "/api/contractors/{id}" => { GET => contractors::get },
    "/api/contractors/{id}/assignments" => { GET => contractors::assignments },
    "/api/jobs" => { POST => jobs::create, GET => jobs::list },
    "/api/jobs/{id}" => { GET => jobs::get },
    "/api/jobs/{id}/assign" => { POST => jobs::assign },
    "/api/assignments/{id}" => { GET => assignments::get },
    "/api/presence" => { GET => presence::get },
    "/api/events" => { GET => events::list },
    "/api/events/{id}" => { GET => events::get },
    "/api/events/{id}/retry" => { POST => events::retry },
    "/api/openapi.json" => { GET => crate::openapi::document },
    "/health/live" => { GET => health::live },
    "/health/ready" => { GET => health::ready },
    "/metrics" => { GET => metrics::render },
}

/// Registers the API routes and the console.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(problem::json_config()).app_data(problem::query_config()).app_data(problem::path_config());
    register(cfg);
    cfg.configure(console::configure);
}

/// Checks an optional page size against [`MAX_LIMIT`].
pub(crate) fn limit(value: Option<u32>) -> Result<u32, ApiError> {
    match value {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::validation(format!("limit: must be between 1 and {MAX_LIMIT}"))),
    }
}
