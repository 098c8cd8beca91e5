//! The regional tier's error type and its retry classification.
//!
//! Owns the answer to "retry or not" for every failure of a regional
//! transaction. Must never classify a fencing failure as retryable: a fenced
//! owner that retries would keep writing after losing its authority.

use meridian_control::lease::LeaseError;
use meridian_store::{Retryable, StoreError, TxError};

use crate::model::Corrupt;

/// A failure inside the regional tier.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RegionalError {
    /// The store failed (retryable or not, as the store says).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A lease operation failed, or a fence check found a newer owner.
    #[error(transparent)]
    Lease(#[from] LeaseError),
    /// The shard layout changed since the decision was made.
    #[error("shard layout changed: expected generation {expected}, found {found}")]
    Resharded {
        /// Generation the caller decided under.
        expected: u64,
        /// Generation in the store.
        found: u64,
    },
    /// A stored record could not be decoded.
    #[error(transparent)]
    Corrupt(#[from] Corrupt),
    /// A request named something invalid.
    #[error("invalid argument {field}: {message}")]
    Invalid {
        /// Proto path of the offending field.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// Something named does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// A bug or a broken invariant of this process (never retried).
    #[error("internal error: {0}")]
    Internal(String),
}

impl RegionalError {
    /// True when a newer owner (shard leader, layout) superseded the caller.
    pub fn is_fenced(&self) -> bool {
        matches!(
            self,
            RegionalError::Lease(LeaseError::Fenced { .. }) | RegionalError::Resharded { .. }
        )
    }

    pub(crate) fn invalid(field: &str, message: impl Into<String>) -> Self {
        RegionalError::Invalid {
            field: field.to_string(),
            message: message.into(),
        }
    }
}

impl Retryable for RegionalError {
    fn is_retryable(&self) -> bool {
        match self {
            RegionalError::Store(e) => e.is_retryable(),
            RegionalError::Lease(e) => e.is_retryable(),
            RegionalError::Resharded { .. }
            | RegionalError::Corrupt(_)
            | RegionalError::Invalid { .. }
            | RegionalError::NotFound(_)
            | RegionalError::Internal(_) => false,
        }
    }
}

impl TxError for RegionalError {
    fn as_store_error(&self) -> Option<&StoreError> {
        match self {
            RegionalError::Store(e) => Some(e),
            RegionalError::Lease(LeaseError::Store(e)) => Some(e),
            _ => None,
        }
    }
}

impl From<RegionalError> for tonic::Status {
    fn from(err: RegionalError) -> Self {
        match &err {
            RegionalError::Invalid { .. } => tonic::Status::invalid_argument(err.to_string()),
            RegionalError::NotFound(_) => tonic::Status::not_found(err.to_string()),
            RegionalError::Lease(LeaseError::Fenced { .. }) | RegionalError::Resharded { .. } => {
                tonic::Status::unavailable(err.to_string())
            }
            e if e.is_retryable() => tonic::Status::unavailable(err.to_string()),
            _ => tonic::Status::internal(err.to_string()),
        }
    }
}

/// Result of the regional tier.
pub type Result<T, E = RegionalError> = std::result::Result<T, E>;
