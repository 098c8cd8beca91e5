//! Store errors and the one question every caller asks of them: retry or not.
//!
//! Owns the error vocabulary of the FoundationDB data model (conflicts, unknown
//! commit results, limits) for every backend. It must never hide a backend
//! failure behind a retryable kind: a wrong "retryable" loops forever, a wrong
//! "permanent" loses work.

use std::fmt;

/// Says whether an error is transient (retry with backoff) or permanent.
///
/// Every error type in Meridian that can be retried implements this one
/// method; retry loops, backoff and error policies ask nothing else.
pub trait Retryable {
    /// True when the same operation may succeed if tried again later.
    fn is_retryable(&self) -> bool;
}

impl<T: Retryable + ?Sized> Retryable for &T {
    fn is_retryable(&self) -> bool {
        (**self).is_retryable()
    }
}

impl<T: Retryable + ?Sized> Retryable for Box<T> {
    fn is_retryable(&self) -> bool {
        (**self).is_retryable()
    }
}

impl<T: Retryable + ?Sized> Retryable for std::sync::Arc<T> {
    fn is_retryable(&self) -> bool {
        (**self).is_retryable()
    }
}

/// Which FoundationDB limit a request exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Keys are at most [`crate::limits::MAX_KEY_BYTES`].
    KeySize,
    /// Values are at most [`crate::limits::MAX_VALUE_BYTES`].
    ValueSize,
    /// The writes of one transaction add up to at most [`crate::limits::MAX_TRANSACTION_BYTES`].
    TransactionSize,
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Limit::KeySize => "key_too_large",
            Limit::ValueSize => "value_too_large",
            Limit::TransactionSize => "transaction_too_large",
        })
    }
}

/// An error from the store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// Another transaction committed a conflicting write first; nothing of this
    /// transaction was applied. Safe to retry.
    #[error("not_committed: transaction conflicted with a concurrent commit")]
    NotCommitted,
    /// The commit may or may not have been applied. Retrying is only safe when
    /// the transaction is idempotent (see `Database::run_once`).
    #[error("commit_unknown_result: the commit may or may not have been applied")]
    CommitUnknownResult,
    /// The transaction lived longer than the 5 s limit; nothing was applied.
    #[error("transaction_too_old: transaction older than {limit_ms} ms")]
    TransactionTooOld {
        /// The limit in force, in milliseconds.
        limit_ms: u64,
    },
    /// A request exceeded one of the FoundationDB limits; nothing was applied.
    #[error("{limit}: {actual} bytes exceeds the limit of {max} bytes")]
    LimitExceeded {
        /// Which limit.
        limit: Limit,
        /// The size of the offending request.
        actual: usize,
        /// The limit in force.
        max: usize,
    },
    /// A versionstamped key or value did not carry a valid placeholder offset.
    #[error("invalid versionstamp operation: {0}")]
    InvalidVersionstamp(String),
    /// The transaction handle was used after it committed or was dropped.
    #[error("transaction already finished")]
    TransactionFinished,
    /// The store URL could not be understood.
    #[error("invalid store url {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The database is busy beyond its wait budget (another process holds the
    /// write lock). Transient.
    #[error("store busy: {0}")]
    Busy(String),
    /// The backend failed in a way that retrying will not fix (I/O error,
    /// corruption, misuse).
    #[error("store backend error: {0}")]
    Backend(String),
    /// The backend failed in a way that may go away (a lost connection, a
    /// timeout talking to the cluster).
    #[error("store backend transient error: {0}")]
    BackendTransient(String),
}

impl Retryable for StoreError {
    fn is_retryable(&self) -> bool {
        matches!(
            self,
            StoreError::NotCommitted
                | StoreError::CommitUnknownResult
                | StoreError::TransactionTooOld { .. }
                | StoreError::Busy(_)
                | StoreError::BackendTransient(_)
        )
    }
}

impl StoreError {
    /// True when the commit may have been applied although it reported failure.
    pub fn maybe_committed(&self) -> bool {
        matches!(self, StoreError::CommitUnknownResult)
    }

    /// The error code FoundationDB uses for the same condition, where one exists.
    pub fn fdb_code(&self) -> Option<i32> {
        match self {
            StoreError::NotCommitted => Some(1020),
            StoreError::CommitUnknownResult => Some(1021),
            StoreError::TransactionTooOld { .. } => Some(1007),
            StoreError::LimitExceeded {
                limit: Limit::KeySize,
                ..
            } => Some(2102),
            StoreError::LimitExceeded {
                limit: Limit::ValueSize,
                ..
            } => Some(2103),
            StoreError::LimitExceeded {
                limit: Limit::TransactionSize,
                ..
            } => Some(2101),
            _ => None,
        }
    }
}

/// Result alias for store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// An error type a transaction closure may return.
///
/// Closures passed to `Database::run` return their own error types (for example
/// a `Fenced` error from the control kit); the retry loop needs to see the store
/// error inside, if any, to decide whether to run the closure again.
pub trait TxError: From<StoreError> {
    /// The store error this error carries, if it is one.
    fn as_store_error(&self) -> Option<&StoreError>;
}

impl TxError for StoreError {
    fn as_store_error(&self) -> Option<&StoreError> {
        Some(self)
    }
}
