//! Errors a console source reports, and how they are answered over HTTP.
//!
//! Owns the mapping from a source's failure to an HTTP status and the JSON
//! body `{ok: false, message}` the page shows next to the action. Must never
//! hide the source's message: the operator sees it as written.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// A failure of a console source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConsoleError {
    /// The thing asked for does not exist (unknown node, job or region).
    #[error("not found: {0}")]
    NotFound(String),
    /// The request was refused as invalid (a field named in the message).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// No session, or the token is unknown or revoked.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// Signed in, but the role does not allow it (the role named).
    #[error("permission denied: {0}")]
    Forbidden(String),
    /// The tier cannot answer now (not leader, store or peer unreachable).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Anything else, with the underlying error's message.
    #[error("{0}")]
    Failed(String),
}

impl ConsoleError {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            ConsoleError::NotFound(_) => StatusCode::NOT_FOUND,
            ConsoleError::Invalid(_) => StatusCode::BAD_REQUEST,
            ConsoleError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ConsoleError::Forbidden(_) => StatusCode::FORBIDDEN,
            ConsoleError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ConsoleError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let body = json!({ "ok": false, "message": self.to_string() });
        (self.status(), axum::Json(body)).into_response()
    }
}
