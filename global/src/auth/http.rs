//! Authentication of HTTP calls: axum middleware in front of the API
//! routes (the consoles sign in with a session instead, `auth::console`).
//!
//! Owns finding the operation of a matched API route (its OpenAPI operation
//! id, which is the RPC's name) and admitting the call by the same access
//! table as gRPC; 401 / 403 answered in the API's JSON error shape before
//! any handler runs, a refusal recorded in the audit log. It must never log
//! a header.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use meridian_console::Gate;

use super::Auth;
use crate::error::GlobalError;

type Operations = BTreeMap<(String, String), String>;

/// `(method, path template) -> operation id` of every API route, from the
/// OpenAPI document the router is built from.
fn operations() -> &'static Operations {
    static OPS: OnceLock<Operations> = OnceLock::new();
    OPS.get_or_init(|| {
        let mut ops = Operations::new();
        for (path, item) in crate::http::document().paths.paths {
            let methods = [
                ("GET", &item.get),
                ("POST", &item.post),
                ("PUT", &item.put),
                ("DELETE", &item.delete),
            ];
            for (method, op) in methods {
                if let Some(id) = op.as_ref().and_then(|o| o.operation_id.clone()) {
                    ops.insert((method.to_string(), path.clone()), id);
                }
            }
        }
        ops
    })
}

/// The operation id of the route `path` (a template, as axum matched it)
/// for `method`.
pub fn operation(method: &Method, path: &str) -> Option<&'static str> {
    operations()
        .get(&(method.as_str().to_string(), path.to_string()))
        .map(String::as_str)
}

/// Every API route as `(method, path template, operation id)`.
pub fn routes() -> Vec<(String, String, String)> {
    operations()
        .iter()
        .map(|((m, p), o)| (m.clone(), p.clone(), o.clone()))
        .collect()
}

fn refusal(error: &GlobalError) -> Response {
    let code = error.code();
    let status = crate::http::status_of(code);
    let mut response = (
        status,
        axum::Json(json!({
            "code": format!("{code:?}"),
            "message": error.to_string(),
            "field": null,
        })),
    )
        .into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    response
}

/// What the API middleware checks calls with.
#[derive(Clone)]
pub struct ApiAuth {
    /// Tokens and the audit log.
    pub auth: Auth,
    /// The federation console's sessions: a signed-in browser reads the
    /// API (the job page's live output) with its session cookie.
    pub console: Option<Arc<Gate>>,
}

/// Middleware of the API routes.
pub async fn api(State(api): State<ApiAuth>, req: Request, next: Next) -> Response {
    let auth = &api.auth;
    let path = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    // A matched path without a route for this method: axum answers 405
    // (with `Allow`) without running any handler.
    let Some(method) = operation(req.method(), &path) else {
        return next.run(req).await;
    };
    let mut header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // A read without a bearer header from a signed-in console page: as
    // the person signed in. Never a change (those need the console's CSRF
    // token, and go through its actions).
    if header.is_none()
        && matches!(*req.method(), Method::GET | Method::HEAD)
        && let Some(gate) = &api.console
    {
        header = gate.bearer_of(req.headers()).await;
    }
    match super::grpc::admit(auth, method, header.as_deref()).await {
        Ok(principal) => super::act_as(principal, next.run(req)).await,
        Err(error) => refusal(&error),
    }
}
