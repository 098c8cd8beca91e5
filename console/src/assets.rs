//! The script and stylesheet, embedded in the binary.
//!
//! Owns serving them with their content types and a short cache lifetime.
//! Must never point the browser anywhere outside the serving process.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

const SCRIPT: &str = include_str!("../assets/console.js");
const STYLE: &str = include_str!("../assets/console.css");

/// Routes for `/console/assets/*`.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/console/assets/console.js", get(script))
        .route("/console/assets/console.css", get(style))
}

async fn script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=60"),
        ],
        SCRIPT,
    )
}

async fn style() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=60"),
        ],
        STYLE,
    )
}
