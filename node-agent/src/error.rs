//! Errors of the node agent and their retry classification.
//!
//! Owns [`AgentError`] and its answer to [`Retryable`]. Must never decide
//! what to do about an error: callers (the node loop) do.

use std::path::PathBuf;

use meridian_control::Retryable;

/// Anything that can go wrong inside the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The region could not be reached (connect failure, broken channel).
    #[error("cannot reach the region: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// A call to the region failed with a gRPC status.
    #[error("region call failed: {0}")]
    Rpc(#[from] tonic::Status),
    /// A call to the region did not answer within the agent's call timeout.
    #[error("region call timed out")]
    Timeout,
    /// The region says this agent's node epoch is stale: stop the tasks
    /// started under it, then register again.
    #[error("node epoch {epoch} is fenced")]
    Fenced { epoch: u64 },
    /// A local file could not be read or written.
    #[error("{context} {path}: {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The persisted state file is not valid.
    #[error("state file {path} is corrupt: {source}")]
    CorruptState {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A command-line or configuration value is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl AgentError {
    pub(crate) fn io(
        context: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        AgentError::Io {
            context,
            path: path.into(),
            source,
        }
    }
}

impl Retryable for AgentError {
    fn is_retryable(&self) -> bool {
        match self {
            AgentError::Transport(_) | AgentError::Timeout => true,
            AgentError::Rpc(status) => !matches!(
                status.code(),
                tonic::Code::InvalidArgument
                    | tonic::Code::FailedPrecondition
                    | tonic::Code::PermissionDenied
                    | tonic::Code::Unimplemented
            ),
            AgentError::Fenced { .. }
            | AgentError::Io { .. }
            | AgentError::CorruptState { .. }
            | AgentError::Config(_) => false,
        }
    }
}
