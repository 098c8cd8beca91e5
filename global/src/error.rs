//! Errors of the global tier and how they are told to callers.
//!
//! Owns the mapping from domain errors to gRPC status codes (the conventions
//! of `common.proto`: INVALID_ARGUMENT naming the field, UNAVAILABLE with the
//! `meridian-leader` hint from a replica that does not lead, ALREADY_EXISTS
//! for a request id reused with another spec). It must never turn a
//! retryable store error into a permanent one, nor the reverse.

use meridian_control::lease::LeaseError;
use meridian_proto::{LEADER_METADATA_KEY, RETRY_AFTER_MS_METADATA_KEY};
use meridian_store::{Retryable, StoreError, TxError};
use tonic::{Code, Status};

/// Result alias of the global tier.
pub type Result<T, E = GlobalError> = std::result::Result<T, E>;

/// An error of the global tier.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GlobalError {
    /// A request field is invalid; `field` is its proto path.
    #[error("{field}: {message}")]
    Invalid {
        /// Proto path of the offending field, e.g. `spec.task_count`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The named object does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// This replica does not lead; `leader` is the leader's gRPC endpoint
    /// when known.
    #[error("not the leader")]
    NotLeader {
        /// Endpoint of the current leader, if known.
        leader: Option<String>,
    },
    /// This replica's leadership was taken over while it was writing.
    #[error("leadership lost: {0}")]
    Fenced(String),
    /// A cursor older than what the server retains.
    #[error("cursor out of range: {0}")]
    OutOfRange(String),
    /// The caller's authority was superseded (a stream opened with a stale
    /// region lease epoch).
    #[error("stale epoch: {0}")]
    StaleEpoch(String),
    /// Too much work is waiting already: shed at the door so the work in
    /// flight (and the leader's lease renewals) keep their latency. Retry
    /// with backoff.
    #[error("overloaded: {0}")]
    Overloaded(String),
    /// A request id already used for a job of the tenant, now with another
    /// spec: the key is taken, so this spec cannot be submitted under it.
    /// Not retryable; the caller picks a new request id for the new spec.
    #[error(
        "request id {request_id:?} was used for job {job_id} with a different spec; \
         submit another spec under a new request id"
    )]
    RequestIdReused {
        /// The reused request id.
        request_id: String,
        /// The job the request id already names.
        job_id: String,
    },
    /// An object of that id exists already with another definition (a
    /// schedule created again under its id with another spec). Not
    /// retryable: the new definition needs a new id.
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// The object is not in a state that allows the request (a hold or a
    /// priority change of a job already routed to a region). Not
    /// retryable as is.
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// No valid bearer token: none presented, unknown, malformed or
    /// revoked (`auth`). The message never repeats the token.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The caller's token lacks the role the call needs; the message names
    /// that role (and tenant, for a tenant-scoped call).
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// A tenant is over its submit rate or its cap of queued jobs
    /// (`limits`): retry after `retry_after_ms`.
    #[error("tenant limit: {message}")]
    TenantLimited {
        /// Which limit, for people.
        message: String,
        /// When a retry may succeed.
        retry_after_ms: u64,
    },
    /// A stored record could not be decoded.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl GlobalError {
    /// An [`GlobalError::Invalid`] for `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        GlobalError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The field an `Invalid` error names.
    pub fn field(&self) -> Option<&str> {
        match self {
            GlobalError::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }

    /// The gRPC code this error is answered with.
    pub fn code(&self) -> Code {
        match self {
            GlobalError::Invalid { .. } => Code::InvalidArgument,
            GlobalError::NotFound(_) => Code::NotFound,
            GlobalError::NotLeader { .. } | GlobalError::Fenced(_) => Code::Unavailable,
            GlobalError::OutOfRange(_) => Code::OutOfRange,
            GlobalError::StaleEpoch(_) | GlobalError::FailedPrecondition(_) => {
                Code::FailedPrecondition
            }
            GlobalError::Overloaded(_) | GlobalError::TenantLimited { .. } => {
                Code::ResourceExhausted
            }
            GlobalError::Unauthenticated(_) => Code::Unauthenticated,
            GlobalError::PermissionDenied(_) => Code::PermissionDenied,
            GlobalError::RequestIdReused { .. } | GlobalError::AlreadyExists(_) => {
                Code::AlreadyExists
            }
            GlobalError::Corrupt(_) => Code::Internal,
            GlobalError::Store(e) if e.is_retryable() => Code::Unavailable,
            GlobalError::Store(_) => Code::Internal,
        }
    }
}

impl Retryable for GlobalError {
    fn is_retryable(&self) -> bool {
        match self {
            GlobalError::Store(e) => e.is_retryable(),
            GlobalError::NotLeader { .. }
            | GlobalError::Fenced(_)
            | GlobalError::Overloaded(_)
            | GlobalError::TenantLimited { .. } => true,
            _ => false,
        }
    }
}

impl TxError for GlobalError {
    fn as_store_error(&self) -> Option<&StoreError> {
        match self {
            GlobalError::Store(e) => Some(e),
            _ => None,
        }
    }
}

impl From<LeaseError> for GlobalError {
    fn from(e: LeaseError) -> Self {
        match e {
            LeaseError::Store(s) => GlobalError::Store(s),
            LeaseError::Fenced { .. } => GlobalError::Fenced(e.to_string()),
            LeaseError::Corrupt(c) => GlobalError::Corrupt(c),
        }
    }
}

impl From<prost::DecodeError> for GlobalError {
    fn from(e: prost::DecodeError) -> Self {
        GlobalError::Corrupt(e.to_string())
    }
}

impl From<GlobalError> for Status {
    fn from(e: GlobalError) -> Self {
        let mut status = Status::new(e.code(), e.to_string());
        if let GlobalError::NotLeader {
            leader: Some(leader),
        } = &e
            && let Ok(value) = leader.parse()
        {
            status.metadata_mut().insert(LEADER_METADATA_KEY, value);
        }
        if let GlobalError::TenantLimited { retry_after_ms, .. } = &e {
            status
                .metadata_mut()
                .insert(RETRY_AFTER_MS_METADATA_KEY, (*retry_after_ms).into());
        }
        status
    }
}
