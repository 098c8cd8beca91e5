//! What the console tests share: an open gate, and reading the CSRF token
//! a page carries, as the console's script does.

#![allow(dead_code)]

use std::sync::Arc;

use axum::body::{Body, to_bytes};
use axum::http::Request;
use meridian_console::Gate;
use tower::ServiceExt;

/// A gate without sign-in.
pub fn open() -> Arc<Gate> {
    Gate::open().expect("an open gate")
}

/// The CSRF token in a page's `<meta name="csrf-token">`.
pub fn csrf_in(html: &str) -> String {
    let at = html
        .find("name=\"csrf-token\" content=\"")
        .expect("a csrf-token meta in the page")
        + "name=\"csrf-token\" content=\"".len();
    html[at..]
        .split('"')
        .next()
        .expect("a closing quote")
        .to_string()
}

/// The CSRF token of `router`'s console page at `page`, read without a
/// session (an open console's).
pub async fn csrf(router: &axum::Router, page: &str) -> String {
    let response = router
        .clone()
        .oneshot(Request::get(page).body(Body::empty()).expect("request"))
        .await
        .expect("response");
    let bytes = to_bytes(response.into_body(), 1 << 20).await.expect("body");
    csrf_in(&String::from_utf8_lossy(&bytes))
}
