//! Errors of the node agent.
//!
//! Owns [`AgentError`] and how it maps onto control's retry rule
//! ([`AgentError::verdict`]). Must never classify a gRPC status itself (the
//! rule does), nor decide what to do about an error: callers (the node
//! loop) do.

use std::path::PathBuf;

use meridian_control::{Retryable, RpcVerdict};

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

impl AgentError {
    /// What control's retry rule says about this error. Failures that never
    /// left this host (fencing, files, configuration) are not retried.
    pub fn verdict(&self) -> RpcVerdict {
        match self {
            AgentError::Transport(e) => RpcVerdict::of_transport(e),
            AgentError::Rpc(status) => RpcVerdict::of(status),
            // The call's deadline ran out: the replica is slow or frozen.
            AgentError::Timeout => RpcVerdict::RetryNow,
            AgentError::Fenced { .. }
            | AgentError::Io { .. }
            | AgentError::CorruptState { .. }
            | AgentError::Config(_) => RpcVerdict::Fail,
        }
    }
}

impl Retryable for AgentError {
    fn is_retryable(&self) -> bool {
        self.verdict().is_retryable()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_refusals_are_not_retryable_whatever_their_code_was_before() {
        assert!(!AgentError::Rpc(tonic::Status::not_found("node")).is_retryable());
        assert!(!AgentError::Rpc(tonic::Status::internal("bug")).is_retryable());
        assert!(AgentError::Rpc(tonic::Status::unavailable("election")).is_retryable());
        assert_eq!(AgentError::Timeout.verdict(), RpcVerdict::RetryNow);
    }
}
