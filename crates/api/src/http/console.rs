//! The operator console at `/`: a static page (HTML, CSS, plain JavaScript)
//! embedded in the binary, so it works right after `cargo run` with no build
//! step. It talks to the API and the hub like any other client, with the
//! token pasted into it; nothing here is privileged.
//!
//! Files live in `crates/api/static/`. `vendor/signalr.min.js` is the official
//! browser bundle of `@microsoft/signalr` (MIT, see
//! `vendor/LICENSE.signalr.txt`), unmodified; `vendor/signalr-protocol-msgpack.min.js`
//! that of `@microsoft/signalr-protocol-msgpack` (MIT, bundling `@msgpack/msgpack`,
//! ISC; see `vendor/LICENSE.signalr-protocol-msgpack.txt`), unmodified.

use std::sync::OnceLock;

use actix_web::http::header::{self, HeaderValue};
use actix_web::{guard, web, HttpRequest, HttpResponse};

/// One embedded file.
struct Asset {
    body: &'static [u8],
    content_type: &'static str,
    /// A hash of the body, computed on first use.
    etag: OnceLock<String>,
}

impl Asset {
    const fn new(body: &'static [u8], content_type: &'static str) -> Self {
        Self { body, content_type, etag: OnceLock::new() }
    }

    /// A strong validator: FNV-1a over the body, so that any change of a
    /// file (even at the same length) is picked up by the next request.
    fn etag(&self) -> &str {
        self.etag.get_or_init(|| {
            let hash = self
                .body
                .iter()
                .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3));
            format!("\"{hash:016x}\"")
        })
    }
}

static INDEX_HTML: Asset = Asset::new(include_bytes!("../../static/index.html"), "text/html; charset=utf-8");
static CONSOLE_JS: Asset = Asset::new(include_bytes!("../../static/console.js"), "text/javascript; charset=utf-8");
static CONSOLE_CSS: Asset = Asset::new(include_bytes!("../../static/console.css"), "text/css; charset=utf-8");
static SIGNALR_JS: Asset =
    Asset::new(include_bytes!("../../static/vendor/signalr.min.js"), "text/javascript; charset=utf-8");
static SIGNALR_MSGPACK_JS: Asset =
    Asset::new(include_bytes!("../../static/vendor/signalr-protocol-msgpack.min.js"), "text/javascript; charset=utf-8");

/// Same-origin only: the page loads nothing from elsewhere and connects to
/// its own origin (`'self'` covers `ws:`/`wss:` to the same host).
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The console's files by path: `configure` registers these, and only these.
static ASSETS: [(&str, &Asset); 5] = [
    ("/", &INDEX_HTML),
    ("/console.js", &CONSOLE_JS),
    ("/console.css", &CONSOLE_CSS),
    ("/vendor/signalr.min.js", &SIGNALR_JS),
    ("/vendor/signalr-protocol-msgpack.min.js", &SIGNALR_MSGPACK_JS),
];

/// The routes `configure` registers, as (method, path); HEAD is answered too.
pub fn routes() -> impl Iterator<Item = (&'static str, &'static str)> {
    ASSETS.iter().map(|(path, _)| ("GET", *path))
}

/// Registers the console's files (GET, and HEAD; other methods are a 405).
pub fn configure(cfg: &mut web::ServiceConfig) {
    for (path, asset) in &ASSETS {
        let asset: &'static Asset = asset;
        cfg.service(
            web::resource(*path)
                .route(
                    web::route()
                        .guard(guard::Any(guard::Get()).or(guard::Head()))
                        .to(move |req: HttpRequest| async move { serve(&req, asset) }),
                )
                .default_service(web::to(not_allowed)),
        );
    }
}

async fn not_allowed() -> Result<HttpResponse, super::ApiError> {
    super::problem::method_not_allowed(&["GET", "HEAD"]).await
}

// The OpenAPI descriptions of the files (the handler is the closure above).

/// The console: paste a token, pick a region, see contractors and jobs,
/// assign, and watch JobAssigned arrive live.
#[utoipa::path(get, path = "/", tag = "operations",
    responses(
        (status = 200, description = "The console's page.", content_type = "text/html"),
        (status = 304, description = "The client's copy (If-None-Match) is current."),
    ))]
#[allow(dead_code)]
pub fn index() {}

/// The console's script.
#[utoipa::path(get, path = "/console.js", tag = "operations",
    responses(
        (status = 200, description = "The console's script.", content_type = "text/javascript"),
        (status = 304, description = "The client's copy (If-None-Match) is current."),
    ))]
#[allow(dead_code)]
pub fn console_js() {}

/// The console's style sheet.
#[utoipa::path(get, path = "/console.css", tag = "operations",
    responses(
        (status = 200, description = "The console's style sheet.", content_type = "text/css"),
        (status = 304, description = "The client's copy (If-None-Match) is current."),
    ))]
#[allow(dead_code)]
pub fn console_css() {}

/// The official `@microsoft/signalr` browser bundle the console uses.
#[utoipa::path(get, path = "/vendor/signalr.min.js", tag = "operations",
    responses(
        (status = 200, description = "The SignalR browser client (MIT).", content_type = "text/javascript"),
        (status = 304, description = "The client's copy (If-None-Match) is current."),
    ))]
#[allow(dead_code)]
pub fn signalr_js() {}

/// The official `@microsoft/signalr-protocol-msgpack` browser bundle: the
/// console's MessagePack hub protocol.
#[utoipa::path(get, path = "/vendor/signalr-protocol-msgpack.min.js", tag = "operations",
    responses(
        (status = 200, description = "The SignalR MessagePack hub protocol for the browser (MIT).", content_type = "text/javascript"),
        (status = 304, description = "The client's copy (If-None-Match) is current."),
    ))]
#[allow(dead_code)]
pub fn signalr_msgpack_js() {}

/// The file, or 304 when the client's copy is current. `no-cache`: browsers
/// revalidate every time, so a new binary's console is picked up at once.
fn serve(req: &HttpRequest, asset: &Asset) -> HttpResponse {
    let etag = asset.etag();
    let current = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|tag| tag.trim() == etag));
    let mut response = if current { HttpResponse::NotModified() } else { HttpResponse::Ok() };
    response
        .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-cache")))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")))
        .insert_header((header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")))
        .insert_header((header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY)))
        .insert_header((header::ETAG, etag));
    if current {
        return response.finish();
    }
    response.insert_header((header::CONTENT_TYPE, asset.content_type)).body(asset.body)
}
