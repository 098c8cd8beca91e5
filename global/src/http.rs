//! The HTTP/JSON face of the federation API (axum), plus `/metrics` and
//! `/healthz`, and the listener that serves it.
//!
//! Owns routes and the mapping of errors to HTTP: a bad request is a 400
//! with a JSON body `{code, message, field}` naming the field; a write on a
//! replica that does not lead is a 503 with the `meridian-leader` header
//! (the leader's HTTP endpoint); a request id reused with another spec is a
//! 409 with the same body. Every route calls the same code as the gRPC
//! service. It must never implement API behaviour of its own.
//!
//! Also owns the listener's guards, which run before any route: every error
//! the listener or the router answers (unknown route, wrong method, URL
//! too long, body too large, body not JSON, body too slow) carries the same
//! JSON body, and a client that is slow with its headers or its body is cut
//! off after a timeout so it cannot hold a connection and a handler forever.
//! Those timeouts are I/O deadlines on tokio's timer, not scheduling time,
//! so they never read the replica's `Clock`.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use meridian_proto::LEADER_METADATA_KEY;
use meridian_proto::v1::{
    CancelJobRequest, DrainRegionRequest, ListJobsRequest, SubmitJobRequest, SubmitJobsRequest,
};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
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
        let field = json!(self.error.field());
        let mut response = json_error(status, code, &self.error.to_string(), field);
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

/// Longest request target (path and query) routed; a longer one is a 414.
/// Below the HTTP parser's own limit (64 KiB), so the answer is ours and
/// carries the JSON body.
pub const MAX_URI_BYTES: usize = 8 * 1024;

/// Largest request body read; a larger one is a 413. The same limit axum's
/// body extractors apply by default, so moving the read here changes no
/// accepted size.
pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

/// Deadlines of the HTTP listener.
#[derive(Debug, Clone, Copy)]
pub struct HttpTimeouts {
    /// Time a client has to send a request's headers, from its first byte
    /// (or from the end of the previous request); then the connection is
    /// closed without an answer.
    pub header: Duration,
    /// Time a client has to send a request's whole body once its headers
    /// are in; then it is answered 408 and the connection is closed.
    pub body: Duration,
}

/// The JSON error body every refusal of the listener and the router
/// carries, in the shape of [`ApiError`]'s.
fn error_body(status: StatusCode, message: &str) -> Response {
    let code = match status {
        StatusCode::NOT_FOUND => Code::NotFound,
        StatusCode::METHOD_NOT_ALLOWED | StatusCode::NOT_IMPLEMENTED => Code::Unimplemented,
        StatusCode::REQUEST_TIMEOUT => Code::DeadlineExceeded,
        StatusCode::PAYLOAD_TOO_LARGE | StatusCode::TOO_MANY_REQUESTS => Code::ResourceExhausted,
        StatusCode::CONFLICT => Code::AlreadyExists,
        StatusCode::SERVICE_UNAVAILABLE => Code::Unavailable,
        s if s.is_client_error() => Code::InvalidArgument,
        _ => Code::Internal,
    };
    json_error(status, code, message, Value::Null)
}

/// The `{code, message, field}` body of every error answer.
fn json_error(status: StatusCode, code: Code, message: &str, field: Value) -> Response {
    let body = json!({
        "code": format!("{code:?}"),
        "message": message,
        "field": field,
    });
    (status, axum::Json(body)).into_response()
}

/// Whether a response's body is plain text or absent, i.e. one of axum's
/// own refusals (404, 405, extractor rejections) rather than a JSON answer
/// or a console page.
fn is_bare(response: &Response) -> bool {
    match response.headers().get(header::CONTENT_TYPE) {
        None => true,
        Some(v) => v
            .to_str()
            .map(|t| t.trim_start().starts_with("text/plain"))
            .unwrap_or(false),
    }
}

/// Gives every bare error answer the JSON error body, keeping its status
/// and headers (`Allow` of a 405) and its text as the message.
async fn json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) || !is_bare(&response) {
        return response;
    }
    let (parts, body) = response.into_parts();
    // The texts of axum's rejections are short; a failing read only loses
    // the detail, the status still says what happened.
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_lowercase()
    } else {
        text
    };
    let mut answer = error_body(status, &message);
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            answer.headers_mut().insert(name.clone(), value.clone());
        }
    }
    answer
}

/// Whether a request carries a body, judged from its headers so nothing is
/// read: a GET without a body needs no Content-Type.
fn has_body(headers: &HeaderMap) -> bool {
    if headers.contains_key(header::TRANSFER_ENCODING) {
        return true;
    }
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|n| n > 0)
}

/// Whether a Content-Type names JSON, parameters (`; charset=utf-8`)
/// allowed.
fn is_json(content_type: Option<&HeaderValue>) -> bool {
    content_type
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}

/// A refusal after which the connection must not be reused: the unread
/// rest of the body would be taken for the next request.
fn closing(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Refuses a URL too long, a body that is not JSON or too large, and a body
/// that does not arrive in time; otherwise hands the request on with its
/// body read whole, so no handler ever waits on a slow client.
async fn guard(body_timeout: Duration, request: Request, next: Next) -> Response {
    let uri_len = request
        .uri()
        .path_and_query()
        .map_or(0, |p| p.as_str().len());
    if uri_len > MAX_URI_BYTES {
        return error_body(
            StatusCode::URI_TOO_LONG,
            &format!("the URL has {uri_len} bytes; at most {MAX_URI_BYTES} are accepted"),
        );
    }
    if !has_body(request.headers()) {
        return next.run(request).await;
    }
    if !is_json(request.headers().get(header::CONTENT_TYPE)) {
        return closing(error_body(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "a request body must be JSON: send Content-Type: application/json",
        ));
    }
    let (parts, body) = request.into_parts();
    let read = async {
        let mut stream = body.into_data_stream();
        let mut buffered = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                error_body(
                    StatusCode::BAD_REQUEST,
                    &format!("reading the body failed: {e}"),
                )
            })?;
            if buffered.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(error_body(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!("the body exceeds {MAX_BODY_BYTES} bytes"),
                ));
            }
            buffered.extend_from_slice(&chunk);
        }
        Ok(Bytes::from(buffered))
    };
    match tokio::time::timeout(body_timeout, read).await {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Ok(Err(refusal)) => closing(refusal),
        Err(_) => closing(error_body(
            StatusCode::REQUEST_TIMEOUT,
            &format!(
                "the request body did not arrive within {} ms",
                body_timeout.as_millis()
            ),
        )),
    }
}

/// Wraps a router (the API merged with the console) in the listener's
/// guards; unknown routes and wrong methods get the JSON error body too.
pub fn with_guards(router: Router, body_timeout: Duration) -> Router {
    router
        .layer(middleware::from_fn(move |request, next| {
            guard(body_timeout, request, next)
        }))
        .layer(middleware::from_fn(json_errors))
}

/// Serves `app` on `listener` until `stop` turns true, then lets the
/// connections finish their requests. Headers must arrive within
/// `timeouts.header` (HTTP/1; hyper closes the connection), bodies within
/// `timeouts.body` (408).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    timeouts: HttpTimeouts,
    mut stop: watch::Receiver<bool>,
) {
    let app = with_guards(app, timeouts.body);
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header);
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|s| *s) => break,
        };
        // Reap finished connections so the set holds only live ones.
        while connections.try_join_next().is_some() {}
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(err) => {
                // Out of descriptors and the like: pause rather than spin,
                // as axum's own server does.
                tracing::warn!(error = %err, "accepting an HTTP connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let connection = builder
            .serve_connection_with_upgrades(
                TokioIo::new(stream),
                TowerToHyperService::new(app.clone()),
            )
            .into_owned();
        let mut stop = stop.clone();
        connections.spawn(async move {
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(err) = result {
                        tracing::debug!(error = %err, "HTTP connection ended");
                    }
                    return;
                }
                _ = stop.wait_for(|s| *s) => connection.as_mut().graceful_shutdown(),
            }
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "HTTP connection ended");
            }
        });
    }
    while connections.join_next().await.is_some() {}
}
