//! Errors of the load suite and whether a retry may help.
//!
//! Owns the one error type every scenario returns. An invariant violation is
//! its own kind: it is the only failure `--quick` turns into a non-zero exit
//! on purpose, and it must never be confused with a slow run.

use meridian_store::Retryable;

/// What can stop a load run.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The system under load broke an invariant of docs/architecture.md.
    #[error("invariant violated: {}", .0.join("; "))]
    Invariant(Vec<String>),
    /// The local federation could not be started or controlled.
    #[error("federation: {0}")]
    Federation(String),
    /// A call to the federation failed.
    #[error("rpc {what}: {status}")]
    Rpc {
        /// Which call.
        what: String,
        /// Its status.
        status: tonic::Status,
    },
    /// The store used by the in-process placement scenario failed.
    #[error("store: {0}")]
    Store(String),
    /// Reading or writing a report or a data directory failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The command line asks for something this scenario cannot do.
    #[error("usage: {0}")]
    Usage(String),
    /// Drawing a plot failed.
    #[error("plot: {0}")]
    Plot(String),
}

impl LoadError {
    /// An I/O error with what was being done.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        LoadError::Io {
            what: what.into(),
            source,
        }
    }

    /// A failed call.
    pub fn rpc(what: impl Into<String>, status: tonic::Status) -> Self {
        LoadError::Rpc {
            what: what.into(),
            status,
        }
    }
}

impl Retryable for LoadError {
    /// A failed call answers as control's retry rule says; nothing else is
    /// worth a retry.
    fn is_retryable(&self) -> bool {
        match self {
            LoadError::Rpc { status, .. } => {
                meridian_control::RpcVerdict::of(status).is_retryable()
            }
            _ => false,
        }
    }
}

/// Results of the load suite.
pub type Result<T> = std::result::Result<T, LoadError>;
