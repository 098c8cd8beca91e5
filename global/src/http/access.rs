//! The access routes: tokens (create, list, revoke) and the audit log.
//!
//! Owns reading each route's request (body, query string, path) into the
//! RPC's request message and handing it to the same code the gRPC
//! `Federation` service runs. It must never check, change or answer a
//! request on its own, and never log a request or an answer (a created
//! token's secret is in one).

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use meridian_proto::v1::{
    CreateTokenRequest, ListAuditRecordsRequest, ListTokensRequest, RevokeTokenRequest,
};

use super::errors::ErrorBody;
use super::query::QueryMessage;
use super::{ApiResult, AppState, respond};
use crate::json;
use crate::openapi::proto;

/// CreateToken.
#[utoipa::path(
    post,
    path = "/v1/tokens",
    tag = "access",
    operation_id = "CreateToken",
    request_body(content = proto::CreateTokenRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The token, with its secret (shown this once)",
            body = proto::CreateTokenResponse),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Not an admin token", body = ErrorBody),
        (status = "4XX", description = "Refused; `field` names the offending field",
            body = ErrorBody),
        (status = "5XX", description = "Failed", body = ErrorBody),
    )
)]
pub async fn create(State(s): State<AppState>, body: Bytes) -> ApiResult {
    let result = match json::parse::<CreateTokenRequest>("CreateTokenRequest", &body) {
        Ok(req) => s.api.create_token(&req).await,
        Err(e) => Err(e),
    };
    respond(&s, "CreateTokenResponse", result).await
}

/// ListTokens, its request in the query string.
#[utoipa::path(
    get,
    path = "/v1/tokens",
    tag = "access",
    operation_id = "ListTokens",
    params(("include_revoked" = Option<bool>, Query, description = "Also list revoked tokens")),
    responses(
        (status = 200, description = "Every token, by id, without secrets",
            body = proto::ListTokensResponse),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Failed", body = ErrorBody),
    )
)]
pub async fn list(
    State(s): State<AppState>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> ApiResult {
    let result = match QueryMessage::read("ListTokensRequest", pairs, &[])
        .and_then(QueryMessage::into_message::<ListTokensRequest>)
    {
        Ok(req) => s.api.list_tokens(&req).await,
        Err(e) => Err(e),
    };
    respond(&s, "ListTokensResponse", result).await
}

/// RevokeToken.
#[utoipa::path(
    post,
    path = "/v1/tokens/{token_id}/revoke",
    tag = "access",
    operation_id = "RevokeToken",
    params(("token_id" = String, Path, description = "The token's id (16 hex digits)")),
    responses(
        (status = 200, description = "The token, revoked", body = proto::RevokeTokenResponse),
        (status = 404, description = "No such token", body = ErrorBody),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Failed", body = ErrorBody),
    )
)]
pub async fn revoke(State(s): State<AppState>, Path(token_id): Path<String>) -> ApiResult {
    let result = s.api.revoke_token(&RevokeTokenRequest { token_id }).await;
    respond(&s, "RevokeTokenResponse", result).await
}

/// ListAuditRecords, its request in the query string.
#[utoipa::path(
    get,
    path = "/v1/audit",
    tag = "access",
    operation_id = "ListAuditRecords",
    params(
        ("principal" = Option<String>, Query, description = "Only records of this token id"),
        ("action" = Option<String>, Query, description = "Only records of this RPC"),
        ("target" = Option<String>, Query, description = "Only records of this target"),
        ("since_unix_ms" = Option<u64>, Query, description = "Only records at or after"),
        ("limit" = Option<u32>, Query, description = "1 to 1000; absent means 100"),
        ("page_token" = Option<String>, Query, description = "`next_page_token` of the \
            previous page"),
    ),
    responses(
        (status = 200, description = "One page of records, oldest first",
            body = proto::ListAuditRecordsResponse),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Failed", body = ErrorBody),
    )
)]
pub async fn audit(
    State(s): State<AppState>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> ApiResult {
    let result = match QueryMessage::read("ListAuditRecordsRequest", pairs, &[])
        .and_then(QueryMessage::into_message::<ListAuditRecordsRequest>)
    {
        Ok(req) => s.api.list_audit(&req).await,
        Err(e) => Err(e),
    };
    respond(&s, "ListAuditRecordsResponse", result).await
}
