//! The admin page at `GET /admin`: one static HTML file (`assets/admin.html`) that shows the
//! cluster through the HTTP API. The page holds no data, so it is served without the API key;
//! every call it makes sends the key the operator types in, and the API checks it as for any
//! other client.

use axum::Router;
use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::service::Broker;

const PAGE: &str = include_str!("../assets/admin.html");

/// Inline script and style only, calls to this origin only, never framed (the page acts with
/// an API key: no clickjacking).
const POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
    connect-src 'self'; img-src data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// The `/admin` route (no API key: see the module docs).
pub fn routes() -> Router<Broker> {
    Router::new().route("/admin", get(page))
}

async fn page() -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, "text/html; charset=utf-8"),
            (CACHE_CONTROL, "no-cache"),
            (CONTENT_SECURITY_POLICY, POLICY),
        ],
        PAGE,
    )
}
