//! The job routes: submit (one or a batch), list, get, cancel, hold,
//! release, priority, and a task's logs.
//!
//! Owns reading each route's request (body, query string, path) into the
//! RPC's request message and handing it to the same code the gRPC
//! `Federation` service runs. It must never check, change or answer a
//! request on its own: validation, idempotency and leadership are the
//! service's.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use meridian_proto::v1::federation_server::Federation;
use meridian_proto::v1::{
    CancelJobRequest, GetTaskLogsRequest, HoldJobRequest, ListJobTasksRequest, ListJobsRequest,
    ReleaseJobRequest, SetJobPriorityRequest, SubmitJobRequest, SubmitJobsRequest,
};
use serde_json::{Value, json};

use super::errors::{ApiError, ErrorBody};
use super::query::QueryMessage;
use super::{ApiResult, AppState, respond};
use crate::json;
use crate::openapi::proto;

/// The `traceparent` header of a request, when readable.
fn traceparent(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(meridian_control::trace::TRACEPARENT)
        .and_then(|v| v.to_str().ok())
}

/// SubmitJob.
#[utoipa::path(
    post,
    path = "/v1/jobs",
    tag = "jobs",
    operation_id = "SubmitJob",
    params(("traceparent" = Option<String>, Header,
        description = "W3C trace context; the job keeps its trace id")),
    request_body(content = proto::SubmitJobRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The job, new (`created`) or the one the request id \
            already named", body = proto::SubmitJobResponse),
        (status = 409, description = "The request id names a job with another spec",
            body = ErrorBody),
        (status = 503, description = "This replica does not lead; `meridian-leader` names \
            the leader's HTTP endpoint", body = ErrorBody,
            headers(("meridian-leader" = String, description = "the leader's HTTP endpoint"))),
        (status = "4XX", description = "Refused; `field` names the offending field",
            body = ErrorBody),
        (status = "5XX", description = "Failed", body = ErrorBody),
    )
)]
pub async fn submit(State(s): State<AppState>, headers: HeaderMap, body: Bytes) -> ApiResult {
    let result = match json::parse::<SubmitJobRequest>("SubmitJobRequest", &body) {
        Ok(req) => s.api.submit_traced(req, traceparent(&headers)).await,
        Err(e) => Err(e),
    };
    respond(&s, "SubmitJobResponse", result).await
}

/// SubmitJobs.
#[utoipa::path(
    post,
    path = "/v1/jobs/batch",
    tag = "jobs",
    operation_id = "SubmitJobs",
    params(("traceparent" = Option<String>, Header,
        description = "W3C trace context; every job of the batch keeps its trace id")),
    request_body(content = proto::SubmitJobsRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "One result per item, in request order; a bad item \
            fails alone", body = proto::SubmitJobsResponse),
        (status = 503, description = "This replica does not lead", body = ErrorBody,
            headers(("meridian-leader" = String, description = "the leader's HTTP endpoint"))),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Failed", body = ErrorBody),
    )
)]
pub async fn submit_batch(State(s): State<AppState>, headers: HeaderMap, body: Bytes) -> ApiResult {
    let result = match json::parse::<SubmitJobsRequest>("SubmitJobsRequest", &body) {
        Ok(req) => s.api.submit_batch_traced(req, traceparent(&headers)).await,
        Err(e) => Err(e),
    };
    respond(&s, "SubmitJobsResponse", result).await
}

/// ListJobs, its request in the query string.
#[utoipa::path(
    get,
    path = "/v1/jobs",
    tag = "jobs",
    operation_id = "ListJobs",
    params(
        ("tenant" = Option<String>, Query, description = "Only jobs of this tenant"),
        ("states" = Option<Vec<String>>, Query, description = "Only jobs in these states \
            (`JOB_STATE_PENDING`, ...), repeated or comma-separated; `state` works too"),
        ("region" = Option<String>, Query, description = "Only jobs held by this region"),
        ("label_selector" = Option<Vec<String>>, Query, description = "A `LabelRequirement` \
            as JSON (or a JSON array of them), repeated: only jobs whose labels satisfy all"),
        ("page_size" = Option<u32>, Query, description = "1 to 1000; 0 or absent means 100"),
        ("page_token" = Option<String>, Query, description = "`next_page_token` of the \
            previous page"),
        ("include_tasks" = Option<bool>, Query, description = "Fill in tasks and history"),
    ),
    responses(
        (status = 200, description = "One page of jobs", body = proto::ListJobsResponse),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Failed", body = ErrorBody),
    )
)]
pub async fn list(
    State(s): State<AppState>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> ApiResult {
    let result = match QueryMessage::read("ListJobsRequest", pairs, &[("state", "states")])
        .and_then(QueryMessage::into_message::<ListJobsRequest>)
    {
        Ok(req) => s.api.list_visible_jobs(&req).await,
        Err(e) => Err(e),
    };
    respond(&s, "ListJobsResponse", result).await
}

/// ListJobs, its request in the body.
#[utoipa::path(
    post,
    path = "/v1/jobs/list",
    tag = "jobs",
    operation_id = "ListJobsByBody",
    request_body(content = proto::ListJobsRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "One page of jobs", body = proto::ListJobsResponse),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Failed", body = ErrorBody),
    )
)]
pub async fn list_post(State(s): State<AppState>, body: Bytes) -> ApiResult {
    let result = match json::parse::<ListJobsRequest>("ListJobsRequest", &body) {
        Ok(req) => s.api.list_visible_jobs(&req).await,
        Err(e) => Err(e),
    };
    respond(&s, "ListJobsResponse", result).await
}

/// GetJob.
#[utoipa::path(
    get,
    path = "/v1/jobs/{job_id}",
    tag = "jobs",
    operation_id = "GetJob",
    params(("job_id" = String, Path, description = "The job")),
    responses(
        (status = 200, description = "The job with its tasks and history", body = proto::Job),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Failed", body = ErrorBody),
    )
)]
pub async fn get_job(State(s): State<AppState>, Path(job_id): Path<String>) -> ApiResult {
    let result = s.api.visible_job(&job_id).await;
    respond(&s, "Job", result).await
}

/// CancelJob.
#[utoipa::path(
    post,
    path = "/v1/jobs/{job_id}/cancel",
    tag = "jobs",
    operation_id = "CancelJob",
    params(("job_id" = String, Path, description = "The job (wins over `job_id` in the body)")),
    request_body(content = proto::CancelJobRequest, content_type = "application/json",
        description = "Optional: `{\"reason\": \"...\"}`"),
    responses(
        (status = 200, description = "The job after the request was recorded",
            body = proto::CancelJobResponse),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 503, description = "This replica does not lead", body = ErrorBody,
            headers(("meridian-leader" = String, description = "the leader's HTTP endpoint"))),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Failed", body = ErrorBody),
    )
)]
pub async fn cancel(
    State(s): State<AppState>,
    Path(job_id): Path<String>,
    body: Bytes,
) -> ApiResult {
    let result = match json::parse::<CancelJobRequest>("CancelJobRequest", &body) {
        Ok(mut req) => {
            req.job_id = job_id;
            s.api.cancel(&req).await
        }
        Err(e) => Err(e),
    };
    respond(&s, "CancelJobResponse", result).await
}

/// HoldJob.
#[utoipa::path(
    post,
    path = "/v1/jobs/{job_id}/hold",
    tag = "jobs",
    operation_id = "HoldJob",
    params(("job_id" = String, Path, description = "The job (wins over `job_id` in the body)")),
    request_body(content = proto::HoldJobRequest, content_type = "application/json",
        description = "Optional: `{\"reason\": \"...\"}`"),
    responses(
        (status = 200, description = "The job, held", body = proto::HoldJobResponse),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 409, description = "The job is no longer pending at the global tier \
            (FAILED_PRECONDITION)", body = ErrorBody),
        (status = 503, description = "This replica does not lead", body = ErrorBody,
            headers(("meridian-leader" = String, description = "the leader's HTTP endpoint"))),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Failed", body = ErrorBody),
    )
)]
pub async fn hold(State(s): State<AppState>, Path(job_id): Path<String>, body: Bytes) -> ApiResult {
    let result = match json::parse::<HoldJobRequest>("HoldJobRequest", &body) {
        Ok(mut req) => {
            req.job_id = job_id;
            s.api.hold(&req).await
        }
        Err(e) => Err(e),
    };
    respond(&s, "HoldJobResponse", result).await
}

/// ReleaseJob.
#[utoipa::path(
    post,
    path = "/v1/jobs/{job_id}/release",
    tag = "jobs",
    operation_id = "ReleaseJob",
    params(("job_id" = String, Path, description = "The job (wins over `job_id` in the body)")),
    request_body(content = proto::ReleaseJobRequest, content_type = "application/json",
        description = "Optional: `{}`"),
    responses(
        (status = 200, description = "The job, released (unchanged when it was not held)",
            body = proto::ReleaseJobResponse),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 503, description = "This replica does not lead", body = ErrorBody,
            headers(("meridian-leader" = String, description = "the leader's HTTP endpoint"))),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Failed", body = ErrorBody),
    )
)]
pub async fn release(
    State(s): State<AppState>,
    Path(job_id): Path<String>,
    body: Bytes,
) -> ApiResult {
    let result = match json::parse::<ReleaseJobRequest>("ReleaseJobRequest", &body) {
        Ok(mut req) => {
            req.job_id = job_id;
            s.api.release(&req).await
        }
        Err(e) => Err(e),
    };
    respond(&s, "ReleaseJobResponse", result).await
}

/// SetJobPriority.
#[utoipa::path(
    post,
    path = "/v1/jobs/{job_id}/priority",
    tag = "jobs",
    operation_id = "SetJobPriority",
    params(("job_id" = String, Path, description = "The job (wins over `job_id` in the body)")),
    request_body(content = proto::SetJobPriorityRequest, content_type = "application/json",
        description = "`{\"priority\": N}`"),
    responses(
        (status = 200, description = "The job with its new priority",
            body = proto::SetJobPriorityResponse),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 409, description = "The job is no longer pending at the global tier \
            (FAILED_PRECONDITION)", body = ErrorBody),
        (status = 503, description = "This replica does not lead", body = ErrorBody,
            headers(("meridian-leader" = String, description = "the leader's HTTP endpoint"))),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Failed", body = ErrorBody),
    )
)]
pub async fn set_priority(
    State(s): State<AppState>,
    Path(job_id): Path<String>,
    body: Bytes,
) -> ApiResult {
    let result = match json::parse::<SetJobPriorityRequest>("SetJobPriorityRequest", &body) {
        Ok(mut req) => {
            req.job_id = job_id;
            s.api.set_priority(&req).await
        }
        Err(e) => Err(e),
    };
    respond(&s, "SetJobPriorityResponse", result).await
}

/// ListJobTasks: the job from the path; `states` (repeatable), `page_size`
/// and `page_token` from the query string.
#[utoipa::path(
    get,
    path = "/v1/jobs/{job_id}/tasks",
    tag = "jobs",
    operation_id = "ListJobTasks",
    params(
        ("job_id" = String, Path, description = "The job"),
        ("states" = Option<Vec<String>>, Query, description = "Only tasks in these states \
            (`TASK_STATE_RUNNING`, ...; repeatable); absent means every state"),
        ("page_size" = Option<u32>, Query, description = "Tasks per page, 1 to 1000; \
            0 or absent means 100"),
        ("page_token" = Option<String>, Query, description = "`next_page_token` of the \
            previous page"),
    ),
    responses(
        (status = 200, description = "One page of the job's tasks in index order, from its \
            region", body = proto::ListJobTasksResponse),
        (status = 404, description = "No such job, or its region no longer holds it",
            body = ErrorBody),
        (status = 409, description = "The job is in no region yet", body = ErrorBody),
        (status = 503, description = "The job's region cannot be reached", body = ErrorBody),
        (status = "4XX", description = "Refused; the message names the field", body = ErrorBody),
        (status = "5XX", description = "Failed", body = ErrorBody),
    )
)]
pub async fn job_tasks(
    State(s): State<AppState>,
    Path(job_id): Path<String>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> ApiResult {
    let req = QueryMessage::read("ListJobTasksRequest", pairs, &[]).and_then(|mut m| {
        m.set("job_id", json!(job_id));
        m.into_message::<ListJobTasksRequest>()
    });
    let req = match req {
        Ok(req) => req,
        Err(e) => return Err(super::errors::fail(&s, e).await),
    };
    match s.api.list_job_tasks(tonic::Request::new(req)).await {
        Ok(answer) => respond(&s, "ListJobTasksResponse", Ok(answer.into_inner())).await,
        Err(status) => Err(ApiError::from(status)),
    }
}

/// GetTaskLogs: the task from the path, `attempt` and `max_bytes` from the
/// query string.
#[utoipa::path(
    get,
    path = "/v1/jobs/{job_id}/tasks/{index}/logs",
    tag = "jobs",
    operation_id = "GetTaskLogs",
    params(
        ("job_id" = String, Path, description = "The job"),
        ("index" = u32, Path, description = "Index of the task within its job"),
        ("attempt" = Option<u32>, Query, description = "Attempt number; 0 or absent means \
            the latest"),
        ("max_bytes" = Option<u32>, Query, description = "At most this many trailing bytes \
            of each stream; 0 or absent means all that is retained"),
    ),
    responses(
        (status = 200, description = "The captured output tails (base64)",
            body = proto::GetTaskLogsResponse),
        (status = 404, description = "No such job, or the region has no output for the \
            attempt", body = ErrorBody),
        (status = 503, description = "The task's region cannot be reached", body = ErrorBody),
        (status = "4XX", description = "Refused; an index of no placed task names \
            `task.index`", body = ErrorBody),
        (status = "5XX", description = "Failed", body = ErrorBody),
    )
)]
pub async fn task_logs(
    State(s): State<AppState>,
    Path((job_id, index)): Path<(String, String)>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> ApiResult {
    // The index goes through the JSON mapping like any field, so a path
    // segment that is no number is refused naming `task.index`.
    let index = index
        .parse::<u32>()
        .map_or(Value::String(index), Value::from);
    let req = QueryMessage::read("GetTaskLogsRequest", pairs, &[]).and_then(|mut m| {
        m.set("task", json!({ "job_id": job_id, "index": index }));
        m.into_message::<GetTaskLogsRequest>()
    });
    let req = match req {
        Ok(req) => req,
        Err(e) => return Err(super::errors::fail(&s, e).await),
    };
    match s.api.get_task_logs(tonic::Request::new(req)).await {
        Ok(answer) => respond(&s, "GetTaskLogsResponse", Ok(answer.into_inner())).await,
        Err(status) => Err(ApiError::from(status)),
    }
}
