//! The schedule routes: create, list, get, pause, resume, delete.
//!
//! Owns reading each route's request (body, query string, path) into the
//! RPC's request message and handing it to the same code the gRPC
//! `Federation` service runs. It must never check, change or answer a
//! request on its own: validation and leadership are the service's.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use meridian_proto::v1::{
    CreateScheduleRequest, DeleteScheduleResponse, GetScheduleResponse, ListSchedulesRequest,
    PauseScheduleResponse, ResumeScheduleResponse,
};

use super::errors::ErrorBody;
use super::query::QueryMessage;
use super::{ApiResult, AppState, respond};
use crate::json;
use crate::openapi::proto;

/// CreateSchedule.
#[utoipa::path(
    post,
    path = "/v1/schedules",
    tag = "schedules",
    operation_id = "CreateSchedule",
    request_body(content = proto::CreateScheduleRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The schedule, new (`created`) or the one the id \
            already named with this spec", body = proto::CreateScheduleResponse),
        (status = 409, description = "The id names a schedule with another spec",
            body = ErrorBody),
        (status = 503, description = "This replica does not lead; `meridian-leader` names \
            the leader's HTTP endpoint", body = ErrorBody,
            headers(("meridian-leader" = String, description = "the leader's HTTP endpoint"))),
        (status = "4XX", description = "Refused; `field` names the offending field \
            (`spec.cron`, `spec.time_zone`, `spec.job.task_count`, ...)", body = ErrorBody),
        (status = "5XX", description = "Failed", body = ErrorBody),
    )
)]
pub async fn create(State(s): State<AppState>, body: Bytes) -> ApiResult {
    let result = match json::parse::<CreateScheduleRequest>("CreateScheduleRequest", &body) {
        Ok(req) => s.api.create_schedule(&req).await,
        Err(e) => Err(e),
    };
    respond(&s, "CreateScheduleResponse", result).await
}

/// ListSchedules, its request in the query string.
#[utoipa::path(
    get,
    path = "/v1/schedules",
    tag = "schedules",
    operation_id = "ListSchedules",
    params(
        ("tenant" = Option<String>, Query, description = "Only schedules of this tenant"),
        ("page_size" = Option<u32>, Query, description = "1 to 1000; 0 or absent means 100"),
        ("page_token" = Option<String>, Query, description = "`next_page_token` of the \
            previous page"),
    ),
    responses(
        (status = 200, description = "One page of schedules, by id",
            body = proto::ListSchedulesResponse),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Failed", body = ErrorBody),
    )
)]
pub async fn list(
    State(s): State<AppState>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> ApiResult {
    let result = match QueryMessage::read("ListSchedulesRequest", pairs, &[])
        .and_then(QueryMessage::into_message::<ListSchedulesRequest>)
    {
        Ok(req) => s.api.list_visible_schedules(&req).await,
        Err(e) => Err(e),
    };
    respond(&s, "ListSchedulesResponse", result).await
}

/// GetSchedule.
#[utoipa::path(
    get,
    path = "/v1/schedules/{schedule_id}",
    tag = "schedules",
    operation_id = "GetSchedule",
    params(("schedule_id" = String, Path, description = "The schedule")),
    responses(
        (status = 200, description = "The schedule with its next tick",
            body = proto::GetScheduleResponse),
        (status = 404, description = "No such schedule", body = ErrorBody),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Failed", body = ErrorBody),
    )
)]
pub async fn get(State(s): State<AppState>, Path(schedule_id): Path<String>) -> ApiResult {
    let result = s
        .api
        .visible_schedule(&schedule_id)
        .await
        .map(|schedule| GetScheduleResponse {
            schedule: Some(schedule),
        });
    respond(&s, "GetScheduleResponse", result).await
}

/// DeleteSchedule.
#[utoipa::path(
    delete,
    path = "/v1/schedules/{schedule_id}",
    tag = "schedules",
    operation_id = "DeleteSchedule",
    params(("schedule_id" = String, Path, description = "The schedule")),
    responses(
        (status = 200, description = "The schedule as it was; its jobs are kept",
            body = proto::DeleteScheduleResponse),
        (status = 404, description = "No such schedule", body = ErrorBody),
        (status = 503, description = "This replica does not lead", body = ErrorBody,
            headers(("meridian-leader" = String, description = "the leader's HTTP endpoint"))),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Failed", body = ErrorBody),
    )
)]
pub async fn delete(State(s): State<AppState>, Path(schedule_id): Path<String>) -> ApiResult {
    let result = s
        .api
        .delete_schedule(&schedule_id)
        .await
        .map(|schedule| DeleteScheduleResponse {
            schedule: Some(schedule),
        });
    respond(&s, "DeleteScheduleResponse", result).await
}

/// PauseSchedule.
#[utoipa::path(
    post,
    path = "/v1/schedules/{schedule_id}/pause",
    tag = "schedules",
    operation_id = "PauseSchedule",
    params(("schedule_id" = String, Path, description = "The schedule")),
    request_body(content = proto::PauseScheduleRequest, content_type = "application/json",
        description = "Optional: `{}`"),
    responses(
        (status = 200, description = "The schedule, paused",
            body = proto::PauseScheduleResponse),
        (status = 404, description = "No such schedule", body = ErrorBody),
        (status = 503, description = "This replica does not lead", body = ErrorBody,
            headers(("meridian-leader" = String, description = "the leader's HTTP endpoint"))),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Failed", body = ErrorBody),
    )
)]
pub async fn pause(
    State(s): State<AppState>,
    Path(schedule_id): Path<String>,
    body: Bytes,
) -> ApiResult {
    let result = match json::parse::<meridian_proto::v1::PauseScheduleRequest>(
        "PauseScheduleRequest",
        &body,
    ) {
        Ok(_) => s
            .api
            .pause_schedule(&schedule_id, true)
            .await
            .map(|schedule| PauseScheduleResponse {
                schedule: Some(schedule),
            }),
        Err(e) => Err(e),
    };
    respond(&s, "PauseScheduleResponse", result).await
}

/// ResumeSchedule.
#[utoipa::path(
    post,
    path = "/v1/schedules/{schedule_id}/resume",
    tag = "schedules",
    operation_id = "ResumeSchedule",
    params(("schedule_id" = String, Path, description = "The schedule")),
    request_body(content = proto::ResumeScheduleRequest, content_type = "application/json",
        description = "Optional: `{}`"),
    responses(
        (status = 200, description = "The schedule, resumed from now (ticks that passed \
            while it was paused are not run)", body = proto::ResumeScheduleResponse),
        (status = 404, description = "No such schedule", body = ErrorBody),
        (status = 503, description = "This replica does not lead", body = ErrorBody,
            headers(("meridian-leader" = String, description = "the leader's HTTP endpoint"))),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Failed", body = ErrorBody),
    )
)]
pub async fn resume(
    State(s): State<AppState>,
    Path(schedule_id): Path<String>,
    body: Bytes,
) -> ApiResult {
    let result = match json::parse::<meridian_proto::v1::ResumeScheduleRequest>(
        "ResumeScheduleRequest",
        &body,
    ) {
        Ok(_) => s
            .api
            .pause_schedule(&schedule_id, false)
            .await
            .map(|schedule| ResumeScheduleResponse {
                schedule: Some(schedule),
            }),
        Err(e) => Err(e),
    };
    respond(&s, "ResumeScheduleResponse", result).await
}
