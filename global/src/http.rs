//! The HTTP/JSON face of the federation API (axum), plus `/metrics` and
//! `/healthz`.
//!
//! Owns routes and the mapping of errors to HTTP: a bad request is a 400
//! with a JSON body `{code, message, field}` naming the field; a write on a
//! replica that does not lead is a 503 with the `meridian-leader` header
//! (the leader's HTTP endpoint); a request id reused with another spec is a
//! 409 with the same body. Every route calls the same code as the gRPC
//! service. It must never implement API behaviour of its own.

use std::collections::BTreeMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use meridian_proto::LEADER_METADATA_KEY;
use meridian_proto::v1::{
    CancelJobRequest, DrainRegionRequest, ListJobsRequest, SubmitJobRequest, SubmitJobsRequest,
};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{Value, json};
use tonic::Code;

use crate::error::GlobalError;
use crate::federation::FederationService;
use crate::json;

#[derive(Clone)]
struct AppState {
    api: FederationService,
    metrics: Option<PrometheusHandle>,
}

/// An error answered as JSON.
struct ApiError {
    error: GlobalError,
    leader_http: Option<String>,
}

impl From<GlobalError> for ApiError {
    fn from(error: GlobalError) -> Self {
        ApiError {
            error,
            leader_http: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = self.error.code();
        let status = match code {
            Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::FailedPrecondition | Code::AlreadyExists => StatusCode::CONFLICT,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let body = json!({
            "code": format!("{code:?}"),
            "message": self.error.to_string(),
            "field": self.error.field(),
        });
        let mut response = (status, axum::Json(body)).into_response();
        if let Some(leader) = self
            .leader_http
            .and_then(|l| HeaderValue::from_str(&l).ok())
        {
            response.headers_mut().insert(LEADER_METADATA_KEY, leader);
        }
        response
    }
}

type ApiResult = Result<axum::Json<Value>, ApiError>;

async fn fail(state: &AppState, error: GlobalError) -> ApiError {
    let leader_http = if matches!(
        error,
        GlobalError::NotLeader { .. } | GlobalError::Fenced(_)
    ) {
        state
            .api
            .leadership
            .leader_info()
            .await
            .ok()
            .flatten()
            .map(|i| i.http)
            .filter(|h| !h.is_empty())
    } else {
        None
    };
    ApiError { error, leader_http }
}

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

/// The HTTP router over a Federation service.
pub fn router(api: FederationService, metrics: Option<PrometheusHandle>) -> Router {
    Router::new()
        .route("/v1/jobs", post(submit).get(list))
        .route("/v1/jobs/batch", post(submit_batch))
        .route("/v1/jobs/list", post(list_post))
        .route("/v1/jobs/{job_id}", get(get_job))
        .route("/v1/jobs/{job_id}/cancel", post(cancel))
        .route("/v1/regions", get(regions))
        .route("/v1/regions/{region}/drain", post(drain))
        .route("/v1/regions/{region}/undrain", post(undrain))
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(healthz))
        .with_state(AppState { api, metrics })
}

/// The `traceparent` header of a request, when readable.
fn traceparent(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(meridian_control::trace::TRACEPARENT)
        .and_then(|v| v.to_str().ok())
}

async fn submit(State(s): State<AppState>, headers: HeaderMap, body: Bytes) -> ApiResult {
    let result = match json::parse::<SubmitJobRequest>("SubmitJobRequest", &body) {
        Ok(req) => s.api.submit_traced(req, traceparent(&headers)).await,
        Err(e) => Err(e),
    };
    respond(&s, "SubmitJobResponse", result).await
}

async fn submit_batch(State(s): State<AppState>, headers: HeaderMap, body: Bytes) -> ApiResult {
    let result = match json::parse::<SubmitJobsRequest>("SubmitJobsRequest", &body) {
        Ok(req) => s.api.submit_batch_traced(req, traceparent(&headers)).await,
        Err(e) => Err(e),
    };
    respond(&s, "SubmitJobsResponse", result).await
}

async fn list(State(s): State<AppState>, Query(query): Query<Vec<(String, String)>>) -> ApiResult {
    let mut object = serde_json::Map::new();
    let mut states = Vec::new();
    for (key, value) in query {
        match key.as_str() {
            "state" | "states" => {
                states.extend(value.split(',').map(|v| Value::String(v.to_string())));
            }
            "include_tasks" => {
                let flag = value
                    .parse::<bool>()
                    .map(Value::Bool)
                    .unwrap_or(Value::String(value));
                object.insert(key, flag);
            }
            "page_size" => {
                let n = value
                    .parse::<u64>()
                    .map(Value::from)
                    .unwrap_or(Value::String(value));
                object.insert(key, n);
            }
            _ => {
                object.insert(key, Value::String(value));
            }
        }
    }
    if !states.is_empty() {
        object.insert("states".into(), Value::Array(states));
    }
    let result = match json::from_value::<ListJobsRequest>("ListJobsRequest", Value::Object(object))
    {
        Ok(req) => s.api.jobs.list(&req).await,
        Err(e) => Err(e),
    };
    respond(&s, "ListJobsResponse", result).await
}

async fn list_post(State(s): State<AppState>, body: Bytes) -> ApiResult {
    let result = match json::parse::<ListJobsRequest>("ListJobsRequest", &body) {
        Ok(req) => s.api.jobs.list(&req).await,
        Err(e) => Err(e),
    };
    respond(&s, "ListJobsResponse", result).await
}

async fn get_job(State(s): State<AppState>, Path(job_id): Path<String>) -> ApiResult {
    let result = s.api.jobs.get(&job_id).await;
    respond(&s, "Job", result).await
}

async fn cancel(State(s): State<AppState>, Path(job_id): Path<String>, body: Bytes) -> ApiResult {
    let result = match json::parse::<CancelJobRequest>("CancelJobRequest", &body) {
        Ok(mut req) => {
            req.job_id = job_id;
            s.api.cancel(&req).await
        }
        Err(e) => Err(e),
    };
    respond(&s, "CancelJobResponse", result).await
}

async fn regions(State(s): State<AppState>) -> ApiResult {
    let result = s.api.registry.list().await;
    respond(&s, "ListRegionsResponse", result).await
}

async fn drain(State(s): State<AppState>, Path(region): Path<String>, body: Bytes) -> ApiResult {
    let result = match json::parse::<DrainRegionRequest>("DrainRegionRequest", &body) {
        Ok(mut req) => {
            req.region = region;
            s.api.drain(&req, true).await
        }
        Err(e) => Err(e),
    };
    respond(&s, "RegionInfo", result).await
}

async fn undrain(State(s): State<AppState>, Path(region): Path<String>) -> ApiResult {
    let req = DrainRegionRequest {
        region,
        ..DrainRegionRequest::default()
    };
    let result = s.api.drain(&req, false).await;
    respond(&s, "RegionInfo", result).await
}

async fn render_metrics(State(s): State<AppState>) -> Response {
    match &s.metrics {
        Some(handle) => handle.render().into_response(),
        None => (StatusCode::NOT_FOUND, "no metrics recorder in this process").into_response(),
    }
}

async fn healthz(State(s): State<AppState>) -> axum::Json<BTreeMap<&'static str, Value>> {
    let mut body = BTreeMap::new();
    body.insert("status", json!("ok"));
    body.insert("leader", json!(s.api.leadership.is_leader()));
    axum::Json(body)
}
