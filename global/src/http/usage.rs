//! The usage route: GetUsage with its request in the query string.
//!
//! Owns reading the query string into `GetUsageRequest` and handing it to
//! the same code the gRPC `Federation` service runs. It must never check,
//! change or answer a request on its own: validation is the service's.

use axum::extract::{Query, State};
use meridian_proto::v1::GetUsageRequest;

use super::errors::ErrorBody;
use super::query::QueryMessage;
use super::{ApiResult, AppState, respond};
use crate::openapi::proto;

/// GetUsage, its request in the query string.
#[utoipa::path(
    get,
    path = "/v1/usage",
    tag = "usage",
    operation_id = "GetUsage",
    params(
        ("since_unix_ms" = u64, Query, description = "Start of the range (Unix ms), rounded \
            down to the hour; required"),
        ("until_unix_ms" = Option<u64>, Query, description = "End of the range (Unix ms), \
            rounded up to the hour; absent or 0 means now; at most 366 days after \
            `since_unix_ms`"),
        ("tenant" = Option<String>, Query, description = "Only this tenant"),
        ("region" = Option<String>, Query, description = "Only this region"),
        ("hourly" = Option<bool>, Query, description = "Also one record per tenant, region \
            and hour with usage"),
    ),
    responses(
        (status = 200, description = "Usage per tenant and region over the range, their \
            total, and with `hourly` the hours", body = proto::GetUsageResponse),
        (status = 400, description = "Refused; `field` names the offending field \
            (`since_unix_ms`, `until_unix_ms`, `tenant`, `region`)", body = ErrorBody),
        (status = "5XX", description = "Failed", body = ErrorBody),
    )
)]
pub async fn get_usage(
    State(s): State<AppState>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> ApiResult {
    let result = match QueryMessage::read(
        "GetUsageRequest",
        pairs,
        &[("since", "since_unix_ms"), ("until", "until_unix_ms")],
    )
    .and_then(QueryMessage::into_message::<GetUsageRequest>)
    {
        Ok(req) => s.api.usage(&req).await,
        Err(e) => Err(e),
    };
    respond(&s, "GetUsageResponse", result).await
}
