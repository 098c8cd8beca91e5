//! The region and node routes: list regions, drain and undrain a region,
//! and a region's nodes (list, cordon, uncordon, drain), which the global
//! tier forwards to the region's `RegionAdmin` service.
//!
//! Owns reading each route's request (path, body, query string) into the
//! RPC's request message and handing it to the same code the gRPC
//! `Federation` service runs. It must never check, change or answer a
//! request on its own, nor reach a region by any other way than that code.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use meridian_proto::v1::federation_server::Federation;
use meridian_proto::v1::{
    CordonNodeRequest, DrainNodeRequest, DrainRegionRequest, ListNodesRequest, UncordonNodeRequest,
};
use serde_json::Value;

use super::errors::{ApiError, ErrorBody, fail};
use super::query::QueryMessage;
use super::{ApiResult, AppState, respond};
use crate::json;
use crate::openapi::proto;

/// ListRegions.
#[utoipa::path(
    get,
    path = "/v1/regions",
    tag = "regions",
    operation_id = "ListRegions",
    responses(
        (status = 200, description = "Every region with its lease, drain state and last \
            capacity", body = proto::ListRegionsResponse),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Failed", body = ErrorBody),
    )
)]
pub async fn regions(State(s): State<AppState>) -> ApiResult {
    let result = s.api.registry.list().await;
    respond(&s, "ListRegionsResponse", result).await
}

/// DrainRegion.
#[utoipa::path(
    post,
    path = "/v1/regions/{region}/drain",
    tag = "regions",
    operation_id = "DrainRegion",
    params(("region" = String, Path, description = "The region (wins over the body's)")),
    request_body(content = proto::DrainRegionRequest, content_type = "application/json",
        description = "Optional: `reason`, and `evacuate` to move unfinished jobs away"),
    responses(
        (status = 200, description = "The region after the change", body = proto::RegionInfo),
        (status = 503, description = "This replica does not lead", body = ErrorBody,
            headers(("meridian-leader" = String, description = "the leader's HTTP endpoint"))),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Failed", body = ErrorBody),
    )
)]
pub async fn drain(
    State(s): State<AppState>,
    Path(region): Path<String>,
    body: Bytes,
) -> ApiResult {
    let result = match json::parse::<DrainRegionRequest>("DrainRegionRequest", &body) {
        Ok(mut req) => {
            req.region = region;
            s.api.drain(&req, true).await
        }
        Err(e) => Err(e),
    };
    respond(&s, "RegionInfo", result).await
}

/// UndrainRegion.
#[utoipa::path(
    post,
    path = "/v1/regions/{region}/undrain",
    tag = "regions",
    operation_id = "UndrainRegion",
    params(("region" = String, Path, description = "The region")),
    responses(
        (status = 200, description = "The region after the change", body = proto::RegionInfo),
        (status = 503, description = "This replica does not lead", body = ErrorBody,
            headers(("meridian-leader" = String, description = "the leader's HTTP endpoint"))),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Failed", body = ErrorBody),
    )
)]
pub async fn undrain(State(s): State<AppState>, Path(region): Path<String>) -> ApiResult {
    let req = DrainRegionRequest {
        region,
        ..DrainRegionRequest::default()
    };
    let result = s.api.drain(&req, false).await;
    respond(&s, "RegionInfo", result).await
}

/// The answer of a call forwarded to a region: its response as JSON, or
/// its status as the JSON error body.
async fn forwarded<M: prost::Message>(
    s: &AppState,
    name: &str,
    result: Result<tonic::Response<M>, tonic::Status>,
) -> ApiResult {
    match result {
        Ok(answer) => respond(s, name, Ok(answer.into_inner())).await,
        Err(status) => Err(ApiError::from(status)),
    }
}

/// ListNodes (forwarded to the region).
#[utoipa::path(
    get,
    path = "/v1/regions/{region}/nodes",
    tag = "nodes",
    operation_id = "ListNodes",
    params(
        ("region" = String, Path, description = "The region"),
        ("states" = Option<Vec<String>>, Query, description = "Only nodes in these states \
            (`NODE_STATE_READY`, ...), repeated or comma-separated; `state` works too"),
        ("label_selector" = Option<Vec<String>>, Query, description = "A `LabelRequirement` \
            as JSON (or a JSON array of them), repeated"),
        ("page_size" = Option<u32>, Query, description = "1 to 1000; 0 or absent means 100"),
        ("page_token" = Option<String>, Query, description = "`next_page_token` of the \
            previous page"),
    ),
    responses(
        (status = 200, description = "One page of the region's nodes",
            body = proto::ListNodesResponse),
        (status = 404, description = "No such region", body = ErrorBody),
        (status = 503, description = "The region cannot be reached", body = ErrorBody),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Failed", body = ErrorBody),
    )
)]
pub async fn list_nodes(
    State(s): State<AppState>,
    Path(region): Path<String>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> ApiResult {
    let req =
        QueryMessage::read("ListNodesRequest", pairs, &[("state", "states")]).and_then(|mut m| {
            m.set("region", Value::String(region));
            m.into_message::<ListNodesRequest>()
        });
    match req {
        Ok(req) => {
            let result = s.api.list_nodes(tonic::Request::new(req)).await;
            forwarded(&s, "ListNodesResponse", result).await
        }
        Err(e) => Err(fail(&s, e).await),
    }
}

/// CordonNode (forwarded to the region).
#[utoipa::path(
    post,
    path = "/v1/regions/{region}/nodes/{node_id}/cordon",
    tag = "nodes",
    operation_id = "CordonNode",
    params(
        ("region" = String, Path, description = "The node's region"),
        ("node_id" = String, Path, description = "The node"),
    ),
    request_body(content = proto::CordonNodeRequest, content_type = "application/json",
        description = "Optional: `{\"reason\": \"...\"}`; region and node come from the path"),
    responses(
        (status = 200, description = "The node after the change",
            body = proto::CordonNodeResponse),
        (status = 404, description = "No such region or node", body = ErrorBody),
        (status = 503, description = "The region cannot be reached", body = ErrorBody),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Failed", body = ErrorBody),
    )
)]
pub async fn cordon(
    State(s): State<AppState>,
    Path((region, node_id)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    match json::parse::<CordonNodeRequest>("CordonNodeRequest", &body) {
        Ok(mut req) => {
            (req.region, req.node_id) = (region, node_id);
            let result = s.api.cordon_node(tonic::Request::new(req)).await;
            forwarded(&s, "CordonNodeResponse", result).await
        }
        Err(e) => Err(fail(&s, e).await),
    }
}

/// UncordonNode (forwarded to the region).
#[utoipa::path(
    post,
    path = "/v1/regions/{region}/nodes/{node_id}/uncordon",
    tag = "nodes",
    operation_id = "UncordonNode",
    params(
        ("region" = String, Path, description = "The node's region"),
        ("node_id" = String, Path, description = "The node"),
    ),
    responses(
        (status = 200, description = "The node after the change",
            body = proto::UncordonNodeResponse),
        (status = 404, description = "No such region or node", body = ErrorBody),
        (status = 503, description = "The region cannot be reached", body = ErrorBody),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Failed", body = ErrorBody),
    )
)]
pub async fn uncordon(
    State(s): State<AppState>,
    Path((region, node_id)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    match json::parse::<UncordonNodeRequest>("UncordonNodeRequest", &body) {
        Ok(mut req) => {
            (req.region, req.node_id) = (region, node_id);
            let result = s.api.uncordon_node(tonic::Request::new(req)).await;
            forwarded(&s, "UncordonNodeResponse", result).await
        }
        Err(e) => Err(fail(&s, e).await),
    }
}

/// DrainNode (forwarded to the region).
#[utoipa::path(
    post,
    path = "/v1/regions/{region}/nodes/{node_id}/drain",
    tag = "nodes",
    operation_id = "DrainNode",
    params(
        ("region" = String, Path, description = "The node's region"),
        ("node_id" = String, Path, description = "The node"),
    ),
    request_body(content = proto::DrainNodeRequest, content_type = "application/json",
        description = "Optional: `reason` and `deadline_ms`; region and node come from the \
            path"),
    responses(
        (status = 200, description = "The node after the change (cordoned and draining)",
            body = proto::DrainNodeResponse),
        (status = 404, description = "No such region or node", body = ErrorBody),
        (status = 503, description = "The region cannot be reached", body = ErrorBody),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Failed", body = ErrorBody),
    )
)]
pub async fn drain_node(
    State(s): State<AppState>,
    Path((region, node_id)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    match json::parse::<DrainNodeRequest>("DrainNodeRequest", &body) {
        Ok(mut req) => {
            (req.region, req.node_id) = (region, node_id);
            let result = s.api.drain_node(tonic::Request::new(req)).await;
            forwarded(&s, "DrainNodeResponse", result).await
        }
        Err(e) => Err(fail(&s, e).await),
    }
}
