//! The HTTP/JSON face of the federation API (axum), plus `/metrics`,
//! `/healthz` and `/openapi.json`, and the listener that serves it.
//!
//! Owns the route table, declared once: each route is registered through
//! `utoipa-axum` from its handler's `#[utoipa::path]`, so the OpenAPI
//! document served at `/openapi.json` lists exactly what the router serves.
//! Every route calls the same code as the gRPC service; this module and its
//! children must never implement API behaviour of their own.
//!
//! - `jobs`: submit, batch, list, get, cancel, hold, release, priority,
//!   a job's tasks page by page, task logs.
//! - `watch`: WatchJobs as server-sent events.
//! - `logs`: FollowTaskLogs as server-sent events.
//! - `regions`: regions, region drain, and the nodes of a region.
//! - `schedules`: create, list, get, pause, resume and delete schedules.
//! - `usage`: usage per tenant and region over a range.
//! - `access`: tokens and the audit log.
//! - `query`: query strings read into request messages.
//! - `errors`: the `{code, message, field}` body and the status mapping.
//! - `guards`: the listener, its timeouts and its JSON refusals.

mod access;
mod errors;
mod guards;
mod jobs;
mod logs;
mod query;
mod regions;
mod schedules;
mod usage;
mod watch;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use errors::{ErrorBody, status_of};
pub use guards::{HttpTimeouts, MAX_BODY_BYTES, MAX_URI_BYTES, serve, with_guards};
pub use watch::LAST_EVENT_ID;

use crate::error::GlobalError;
use crate::federation::FederationService;
use crate::json;
use crate::openapi;
use errors::{ApiError, fail};

#[derive(Clone)]
struct AppState {
    api: FederationService,
    metrics: Option<PrometheusHandle>,
    /// The OpenAPI document, rendered once.
    openapi: Arc<Value>,
}

type ApiResult = Result<axum::Json<Value>, ApiError>;

/// A result of the service as the JSON of response message `name`.
async fn respond<M: prost::Message>(
    state: &AppState,
    name: &str,
    result: Result<M, GlobalError>,
) -> ApiResult {
    match result.and_then(|m| json::render(name, &m)) {
        Ok(v) => Ok(axum::Json(v)),
        Err(e) => Err(fail(state, e).await),
    }
}

/// Every route with its OpenAPI operation. A route registered any other
/// way would be served without being described; the test comparing the
/// route table with the document catches that.
fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::frame())
        .routes(routes!(jobs::submit, jobs::list))
        .routes(routes!(jobs::submit_batch))
        .routes(routes!(jobs::list_post))
        .routes(routes!(watch::watch))
        .routes(routes!(jobs::get_job))
        .routes(routes!(jobs::cancel))
        .routes(routes!(jobs::hold))
        .routes(routes!(jobs::release))
        .routes(routes!(jobs::set_priority))
        .routes(routes!(jobs::job_tasks))
        .routes(routes!(jobs::task_logs))
        .routes(routes!(logs::follow))
        .routes(routes!(regions::regions))
        .routes(routes!(regions::drain))
        .routes(routes!(regions::undrain))
        .routes(routes!(regions::list_nodes))
        .routes(routes!(regions::cordon))
        .routes(routes!(regions::uncordon))
        .routes(routes!(regions::drain_node))
        .routes(routes!(schedules::create, schedules::list))
        .routes(routes!(schedules::get, schedules::delete))
        .routes(routes!(schedules::pause))
        .routes(routes!(schedules::resume))
        .routes(routes!(usage::get_usage))
        .routes(routes!(access::create, access::list))
        .routes(routes!(access::revoke))
        .routes(routes!(access::audit))
        .routes(routes!(render_metrics))
        .routes(routes!(healthz))
        .routes(routes!(openapi_json))
}

/// The OpenAPI document of the HTTP API.
pub fn document() -> utoipa::openapi::OpenApi {
    routes().into_openapi()
}

/// The router's route table as axum prints it (its `Debug`), which names
/// every path it routes whichever way it was registered: a test compares
/// it with the OpenAPI document without trusting either.
pub fn route_table() -> String {
    let (router, _) = routes().split_for_parts();
    format!("{router:?}")
}

/// The HTTP router over a Federation service.
///
/// `console` is the federation console's gate, whose signed-in sessions
/// may read the API (see `auth::http::ApiAuth`).
pub fn router(
    api: FederationService,
    metrics: Option<PrometheusHandle>,
    console: Option<Arc<meridian_console::Gate>>,
) -> Router {
    let (router, document) = routes().split_for_parts();
    // The document is serialisable by construction; should that ever fail,
    // `/openapi.json` says so instead of taking the API down.
    let openapi = serde_json::to_value(&document).unwrap_or_else(
        |e| json!({ "error": format!("the OpenAPI document does not render: {e}") }),
    );
    let auth = crate::auth::http::ApiAuth {
        auth: api.auth.clone(),
        console,
    };
    router
        .route_layer(axum::middleware::from_fn_with_state(
            auth,
            crate::auth::http::api,
        ))
        .with_state(AppState {
            api,
            metrics,
            openapi: Arc::new(openapi),
        })
}

/// Prometheus metrics of this process.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    operation_id = "Metrics",
    responses(
        (status = 200, description = "Prometheus text exposition format",
            content_type = "text/plain", body = String),
        (status = 404, description = "This process records no metrics", body = ErrorBody),
    )
)]
async fn render_metrics(State(s): State<AppState>) -> Response {
    match &s.metrics {
        Some(handle) => {
            let mut text = handle.render();
            // The usage counters come from the store, the same on every
            // replica; a store that cannot be read leaves them out of this
            // scrape rather than failing the process's own metrics.
            match crate::usage::prometheus::render(&s.api.db, &s.api.keys).await {
                Ok(usage) => text.push_str(&usage),
                Err(e) => tracing::warn!(error = %e, "usage counters not rendered"),
            }
            text.into_response()
        }
        None => (StatusCode::NOT_FOUND, "no metrics recorder in this process").into_response(),
    }
}

/// Liveness of this replica and whether it leads.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    operation_id = "Healthz",
    responses(
        (status = 200, description = "`{\"status\": \"ok\", \"leader\": true|false}`",
            body = Object),
    )
)]
async fn healthz(State(s): State<AppState>) -> axum::Json<BTreeMap<&'static str, Value>> {
    let mut body = BTreeMap::new();
    body.insert("status", json!("ok"));
    body.insert("leader", json!(s.api.leadership.is_leader()));
    axum::Json(body)
}

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    operation_id = "OpenApi",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API",
        body = Object)),
)]
async fn openapi_json(State(s): State<AppState>) -> axum::Json<Value> {
    axum::Json(s.openapi.as_ref().clone())
}
