//! How errors are told over HTTP: the `{code, message, field}` body and the
//! status each gRPC code maps to.
//!
//! Owns that mapping for every answer, the API's own (a [`GlobalError`] or
//! the [`Status`] of a call forwarded to a region) and the listener's
//! refusals (unknown route, wrong method, URL too long, ...), so a client
//! reads one shape whatever refused it. It must never decide whether a
//! request fails: it only renders a failure the API or the listener chose.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use meridian_proto::LEADER_METADATA_KEY;
use serde::Serialize;
use tonic::{Code, Status};
use utoipa::ToSchema;

use crate::error::GlobalError;

use super::AppState;

/// The body of every error answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The gRPC status code the same failure has on the gRPC API, by its
    /// name (`InvalidArgument`, `NotFound`, `OutOfRange`, ...).
    code: String,
    /// What went wrong, for people.
    message: String,
    /// The proto path of the offending request field (for example
    /// `spec.resources.cpu_millis`) when one field is to blame; null
    /// otherwise.
    field: Option<String>,
}

/// The HTTP status of a failure that has gRPC code `code`.
pub fn status_of(code: Code) -> StatusCode {
    match code {
        Code::InvalidArgument => StatusCode::BAD_REQUEST,
        Code::NotFound => StatusCode::NOT_FOUND,
        // The only OUT_OF_RANGE of this API is a watch cursor older than
        // the retained history: that position is gone for good, and a
        // client must re-list rather than retry, which is what 410 says.
        Code::OutOfRange => StatusCode::GONE,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::FailedPrecondition | Code::AlreadyExists => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// An error of the API, answered as JSON.
pub struct ApiError {
    code: Code,
    message: String,
    field: Option<String>,
    leader_http: Option<String>,
    /// A tenant limit's retry hint, answered as `Retry-After` (seconds,
    /// rounded up) and `retry-after-ms`.
    retry_after_ms: Option<u64>,
}

impl ApiError {
    /// The `{code, message, field}` body of this error, for an answer or
    /// a server-sent event.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            code: format!("{:?}", self.code),
            message: self.message.clone(),
            field: self.field.clone(),
        }
    }
}

impl From<GlobalError> for ApiError {
    fn from(error: GlobalError) -> Self {
        ApiError {
            code: error.code(),
            message: error.to_string(),
            field: error.field().map(str::to_owned),
            leader_http: None,
            retry_after_ms: match &error {
                GlobalError::TenantLimited { retry_after_ms, .. } => Some(*retry_after_ms),
                _ => None,
            },
        }
    }
}

impl From<Status> for ApiError {
    /// A status of a call the global tier forwarded (or answered) over
    /// gRPC. By the API's convention an INVALID_ARGUMENT message starts
    /// with the proto path of the field it names (`field: what is wrong`),
    /// which is how the field is recovered here.
    fn from(status: Status) -> Self {
        let field = (status.code() == Code::InvalidArgument)
            .then(|| status.message().split_once(": "))
            .flatten()
            .map(|(path, _)| path)
            .filter(|path| !path.is_empty() && !path.contains(char::is_whitespace))
            .map(str::to_owned);
        ApiError {
            code: status.code(),
            message: status.message().to_string(),
            field,
            leader_http: None,
            retry_after_ms: status
                .metadata()
                .get(meridian_proto::RETRY_AFTER_MS_METADATA_KEY)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (status_of(self.code), axum::Json(self.body())).into_response();
        if let Some(leader) = self
            .leader_http
            .and_then(|l| HeaderValue::from_str(&l).ok())
        {
            response.headers_mut().insert(LEADER_METADATA_KEY, leader);
        }
        if let Some(ms) = self.retry_after_ms {
            let headers = response.headers_mut();
            headers.insert(
                axum::http::header::RETRY_AFTER,
                ms.div_ceil(1000).max(1).into(),
            );
            headers.insert(meridian_proto::RETRY_AFTER_MS_METADATA_KEY, ms.into());
        }
        response
    }
}

/// `error` as an answer; a replica that does not lead names the leader's
/// HTTP endpoint in the `meridian-leader` header, as the gRPC API names its
/// gRPC endpoint.
pub async fn fail(state: &AppState, error: GlobalError) -> ApiError {
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
    ApiError {
        leader_http,
        ..ApiError::from(error)
    }
}

/// The JSON error body every refusal of the listener and the router
/// carries, in the shape of [`ApiError`]'s.
pub fn refusal(status: StatusCode, message: &str) -> Response {
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
    let error = ApiError {
        code,
        message: message.to_string(),
        field: None,
        leader_http: None,
        retry_after_ms: None,
    };
    (status, axum::Json(error.body())).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_past_retention_is_gone_and_keeps_the_json_body() {
        let error = ApiError::from(GlobalError::OutOfRange("trimmed".into()));
        assert_eq!(error.body().code, "OutOfRange");
        let response = error.into_response();
        assert_eq!(response.status(), StatusCode::GONE);
    }

    #[test]
    fn a_forwarded_invalid_argument_names_its_field() {
        let error = ApiError::from(Status::from(GlobalError::invalid(
            "task.index",
            "no such task, or not placed",
        )));
        assert_eq!(error.body().field.as_deref(), Some("task.index"));
        let prose = ApiError::from(Status::invalid_argument("bad things: happened"));
        assert_eq!(prose.body().field, None);
    }
}
