//! The operator console at `/`: a static page (HTML, CSS, plain JavaScript)
//! embedded in the binary, so it works right after `cargo run` with no build
//! step. It talks to the API and the hub like any other client, with the
//! token pasted into it; nothing here is privileged.
//!
//! Files live in `crates/api/static/`. `vendor/signalr.min.js` is the official
//! browser bundle of `@microsoft/signalr` (MIT, see
//! `vendor/LICENSE.signalr.txt`), unmodified.

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

/// Same-origin only: the page loads nothing from elsewhere and connects to
/// its own origin (`'self'` covers `ws:`/`wss:` to the same host).
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Registers `/`, `/console.js`, `/console.css` and `/vendor/signalr.min.js`
/// (GET, and HEAD).
pub fn configure(cfg: &mut web::ServiceConfig) {
    let get_or_head = || web::route().guard(guard::Any(guard::Get()).or(guard::Head()));
    cfg.route("/", get_or_head().to(index))
        .route("/console.js", get_or_head().to(console_js))
        .route("/console.css", get_or_head().to(console_css))
        .route("/vendor/signalr.min.js", get_or_head().to(signalr_js));
}

async fn index(req: HttpRequest) -> HttpResponse {
    serve(&req, &INDEX_HTML)
}

async fn console_js(req: HttpRequest) -> HttpResponse {
    serve(&req, &CONSOLE_JS)
}

async fn console_css(req: HttpRequest) -> HttpResponse {
    serve(&req, &CONSOLE_CSS)
}

async fn signalr_js(req: HttpRequest) -> HttpResponse {
    serve(&req, &SIGNALR_JS)
}

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
